//! Live subscriptions: a `DoGet` that streams a query's result batches for as long as the
//! client stays.
//!
//! Each subscriber has a forwarding task between the query's broadcast channel and its gRPC
//! stream, with a bounded buffer. The engine never waits for a subscriber: one that falls
//! behind the broadcast channel, or lets its own buffer fill, is dropped with
//! `RESOURCE_EXHAUSTED` and a message saying why; the others are not affected. A client that
//! goes away is noticed at once and its task ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use arrow_flight::FlightData;
use arrow_flight::utils::batches_to_flight_data;
use bytes::Bytes;
use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::Stream;
use pitwall_proto::SubscribeTicket;
use tokio::sync::{broadcast, mpsc, oneshot};
use tonic::Status;

use super::FlightState;
use crate::engine::ResultBatch;

pub(crate) type FlightDataStream =
    Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// How long the replay of a query's buffer waits for a subscriber to read.
const REPLAY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Largest number of rows per Flight message (bigger batches are sliced).
const MAX_ROWS_PER_MESSAGE: usize = 8192;

/// `app_metadata` of a result batch: its sequence number, the watermark at emission and the
/// wall-clock emission time (ms since the epoch; clients measure delivery against it).
fn metadata(item: &ResultBatch) -> Bytes {
    let emitted_at_ms = item
        .emitted_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    Bytes::from(
        serde_json::json!({
            "seq": item.seq,
            "watermark_ms": item.watermark_ms,
            "emitted_at_ms": emitted_at_ms,
        })
        .to_string(),
    )
}

/// The batch as Flight messages (no schema message), metadata on the first.
fn encode(batch: &RecordBatch, meta: Bytes) -> Result<Vec<FlightData>, Status> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let len = (batch.num_rows() - offset).min(MAX_ROWS_PER_MESSAGE);
        let slice = batch.slice(offset, len);
        let mut data = batches_to_flight_data(&batch.schema(), vec![slice])
            .map_err(|e| Status::internal(e.to_string()))?;
        data.remove(0); // the schema message
        out.extend(data);
        offset += len;
        if offset >= batch.num_rows() {
            break;
        }
    }
    if let Some(first) = out.first_mut() {
        first.app_metadata = meta;
    }
    Ok(out)
}

fn schema_message(schema: &SchemaRef) -> Result<FlightData, Status> {
    let mut data =
        batches_to_flight_data(schema, vec![]).map_err(|e| Status::internal(e.to_string()))?;
    Ok(data.remove(0))
}

/// Messages for one result batch for this subscriber (shared encoding when unfiltered).
fn messages(item: &ResultBatch, driver: Option<&str>) -> Result<Vec<FlightData>, Status> {
    match driver {
        None => {
            let cached = item
                .encoded
                .get_or_init(|| Arc::new(encode(&item.batch, metadata(item))));
            match cached.downcast_ref::<Result<Vec<FlightData>, Status>>() {
                Some(Ok(m)) => Ok(m.clone()),
                Some(Err(e)) => Err(e.clone()),
                None => Err(Status::internal("result cache holds something else")),
            }
        }
        Some(d) => {
            let col = item
                .batch
                .column_by_name("driver")
                .expect("checked at subscribe")
                .as_string::<i32>();
            let keep: BooleanArray = col.iter().map(|v| Some(v == Some(d))).collect();
            let batch = filter_record_batch(&item.batch, &keep)
                .map_err(|e| Status::internal(e.to_string()))?;
            if batch.num_rows() == 0 {
                Ok(Vec::new())
            } else {
                encode(&batch, metadata(item))
            }
        }
    }
}

pub(crate) fn subscribe(
    state: &Arc<FlightState>,
    ticket: SubscribeTicket,
) -> Result<FlightDataStream, Status> {
    let results = state.engine.results(&ticket.query).ok_or_else(|| {
        Status::not_found(format!(
            "no query named {}; `pitwall queries` lists them",
            ticket.query
        ))
    })?;
    let driver = (!ticket.driver.is_empty()).then(|| ticket.driver.clone());
    if driver.is_some() && results.schema().index_of("driver").is_err() {
        return Err(Status::invalid_argument(format!(
            "{} has no driver column to filter on",
            ticket.query
        )));
    }
    let (replay, rx) = results.subscribe(ticket.from_buffer_start);
    let (tx, out) = mpsc::channel::<Result<FlightData, Status>>(state.subscriber_buffer.max(2));
    let (kill, killed) = oneshot::channel::<Status>();
    let forwarder = Forwarder {
        tx,
        kill: Some(kill),
        state: state.clone(),
        query: ticket.query.clone(),
        driver,
        schema: None,
    };
    tokio::spawn(forwarder.run(results.schema(), replay, rx));
    Ok(output(out, killed))
}

/// The task between one subscriber and its query's result stream: it queues the subscriber's
/// messages (the schema first, then the replayed and live batches) and drops the subscriber
/// when its queue is full.
struct Forwarder {
    tx: mpsc::Sender<Result<FlightData, Status>>,
    /// Ends the subscriber's stream with a status.
    kill: Option<oneshot::Sender<Status>>,
    state: Arc<FlightState>,
    query: String,
    driver: Option<String>,
    /// The schema the subscriber has been sent last.
    schema: Option<SchemaRef>,
}

impl Forwarder {
    async fn run(
        mut self,
        initial: SchemaRef,
        replay: Vec<Arc<ResultBatch>>,
        mut rx: broadcast::Receiver<Arc<ResultBatch>>,
    ) {
        // The schema goes first, so a client knows the columns before any row.
        match schema_message(&initial) {
            Ok(m) => {
                let _ = self.tx.try_send(Ok(m));
                self.schema = Some(initial);
            }
            Err(e) => {
                let _ = self.tx.try_send(Err(e));
                return;
            }
        }
        // The buffer's batches are sent as fast as the client reads them (the buffer is
        // bounded and may hold more batches than a subscriber may have waiting); a client that
        // reads nothing for REPLAY_PATIENCE is dropped.
        for item in replay {
            if !self.forward(&item, true).await {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = self.tx.closed() => return,
                r = rx.recv() => match r {
                    Ok(item) => {
                        if !self.forward(&item, false).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        self.drop_with(Status::resource_exhausted(format!(
                            "subscriber too slow: fell {n} result batches behind; dropped (resubscribe to continue)"
                        )));
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Queues one result batch (its schema first when it changed); false when the
    /// subscription is over. A live batch that finds the buffer full drops the subscriber;
    /// a replayed one waits for room, up to [`REPLAY_PATIENCE`].
    async fn forward(&mut self, item: &ResultBatch, replaying: bool) -> bool {
        let mut msgs = Vec::new();
        if self.schema.as_ref() != Some(item.batch.schema_ref()) {
            match schema_message(item.batch.schema_ref()) {
                Ok(m) => msgs.push(m),
                Err(e) => {
                    let _ = self.tx.try_send(Err(e));
                    return false;
                }
            }
            self.schema = Some(item.batch.schema());
        }
        match messages(item, self.driver.as_deref()) {
            Ok(m) => msgs.extend(m),
            Err(e) => {
                let _ = self.tx.try_send(Err(e));
                return false;
            }
        }
        for m in msgs {
            // Whether the buffer stayed full; a closed channel is a client gone.
            let full = if replaying {
                match self.tx.send_timeout(Ok(m), REPLAY_PATIENCE).await {
                    Ok(()) => false,
                    Err(mpsc::error::SendTimeoutError::Timeout(_)) => true,
                    Err(mpsc::error::SendTimeoutError::Closed(_)) => return false,
                }
            } else {
                match self.tx.try_send(Ok(m)) {
                    Ok(()) => false,
                    Err(mpsc::error::TrySendError::Full(_)) => true,
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            };
            if full {
                let capacity = self.state.subscriber_buffer;
                self.drop_with(Status::resource_exhausted(format!(
                    "subscriber too slow: {capacity} messages were waiting to be read; dropped (resubscribe to continue)"
                )));
                return false;
            }
        }
        true
    }

    fn drop_with(&mut self, status: Status) {
        self.state
            .subscribers_dropped
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(query = %self.query, reason = %status.message(), "subscriber dropped");
        if let Some(k) = self.kill.take() {
            let _ = k.send(status);
        }
    }
}

/// The subscriber's stream: what the forwarder queued; if it dropped the subscriber, it ends
/// with the reason.
fn output(
    mut out: mpsc::Receiver<Result<FlightData, Status>>,
    killed: oneshot::Receiver<Status>,
) -> FlightDataStream {
    let mut killed = Some(killed);
    let mut done = false;
    let stream = futures::stream::poll_fn(move |cx| {
        if done {
            return Poll::Ready(None);
        }
        if let Some(k) = killed.as_mut()
            && let Poll::Ready(r) = Pin::new(k).poll(cx)
        {
            killed = None;
            if let Ok(status) = r {
                done = true;
                return Poll::Ready(Some(Err(status)));
            }
        }
        let r = out.poll_recv(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            done = true;
        }
        r
    });
    Box::pin(stream)
}
