//! The page's live stream: one Server-Sent Events response multiplexing the result streams it
//! shows and the cars' traces.
//!
//! `GET /api/live?queries=lap_stats,over_rev&traces=true&epoch=E&since=lap_stats:41,over_rev:7`
//!
//! Events, each `data:` one line of JSON:
//! - `hello` `{"epoch", "streams": {name: next_seq}}` first;
//! - `rows` `{"q", "seq", "wm", "rows": [...]}` per result batch (the traces are `q` = `_traces`);
//! - `gap` `{"q", "missed"}` when the batches after the page's `since` left the replay buffer;
//! - `tick` `{"now", "wm"}` every second, so the page can tell a quiet stream from a dead one;
//! - `gone` `{"q"}` when a query is dropped; `dropped` `{"reason"}` last, when the page fell
//!   behind and was dropped (it reconnects with its `since`).
//!
//! A page that reconnects with the `epoch` it was given and its last sequence number per
//! stream gets exactly the batches it missed (from the replay buffers); with another epoch (the
//! server restarted) its `since` means nothing here and it gets the buffers as a new page does.
//! A page whose queue stays full for [`STALLED`], or that falls behind the broadcast channel, is
//! dropped (it reconnects and resumes); the engine never waits for it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::{HttpError, WebState};
use crate::engine::{ResultBatch, ResultStream};

/// The traces' name on the stream.
pub(crate) const TRACES: &str = "_traces";

/// Rows of a query a new page is sent from the replay buffer (the newest); traces: the last
/// minute or so of 20 cars at 20 Hz.
const FIRST_ROWS: usize = 5_000;
const FIRST_TRACE_ROWS: usize = 24_000;

/// How long a live event may wait for the page to read its queue before the page is dropped.
/// Meanwhile batches wait in the query's broadcast channel; a page that falls further behind
/// than that channel holds is dropped at once. The engine never waits either way.
const STALLED: Duration = Duration::from_secs(5);

#[derive(Debug, Deserialize)]
pub(crate) struct LiveParams {
    /// Comma-separated query names; all queries when absent.
    queries: Option<String>,
    /// Whether to send the traces (default true).
    traces: Option<bool>,
    /// The epoch the page's `since` numbers belong to.
    epoch: Option<String>,
    /// `name:seq,...`: the last sequence number the page has of each stream.
    since: Option<String>,
}

fn parse_since(text: Option<&str>) -> Result<BTreeMap<String, u64>, HttpError> {
    let mut out = BTreeMap::new();
    for part in text.unwrap_or("").split(',').filter(|p| !p.is_empty()) {
        let (name, seq) = part
            .rsplit_once(':')
            .and_then(|(n, s)| Some((n, s.parse::<u64>().ok()?)))
            .ok_or_else(|| HttpError::bad_request(format!("since: {part:?} is not NAME:SEQ")))?;
        out.insert(name.to_string(), seq);
    }
    Ok(out)
}

/// The streams a request names, each with where to start (`since`, when it still holds).
async fn streams(
    state: &WebState,
    p: &LiveParams,
) -> Result<Vec<(String, Arc<ResultStream>)>, HttpError> {
    let names: Vec<String> = match &p.queries {
        Some(q) => q
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(String::from)
            .collect(),
        None => state
            .flight
            .engine
            .list()
            .await?
            .into_iter()
            .map(|q| q.name)
            .collect(),
    };
    let mut out = Vec::new();
    for n in names {
        let s = state.flight.engine.results(&n).ok_or_else(|| {
            HttpError::not_found(format!("no query named {n}; GET /api/queries lists them"))
        })?;
        out.push((n, s));
    }
    if p.traces.unwrap_or(true) {
        out.push((TRACES.to_string(), state.flight.engine.traces.clone()));
    }
    Ok(out)
}

/// `GET /api/live`.
pub(crate) async fn stream(
    State(state): State<Arc<WebState>>,
    Query(p): Query<LiveParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, HttpError> {
    let streams = streams(&state, &p).await?;
    let mut since = parse_since(p.since.as_deref())?;
    if p.epoch.as_deref() != Some(state.epoch.as_str()) {
        since.clear();
    }
    let open = state.streams.fetch_add(1, Ordering::Relaxed);
    let guard = OpenStream(state.clone());
    if open >= state.max_streams {
        return Err(HttpError(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{open} dashboard streams are open, the most --max-dashboards allows; close a tab and retry"
            ),
        ));
    }
    let (tx, rx) = mpsc::channel::<Event>(state.stream_buffer.max(8));
    let (kill_tx, kill_rx) = oneshot::channel::<String>();
    let killer = Killer(
        Arc::new(std::sync::Mutex::new(Some(kill_tx))),
        state.clone(),
    );
    let hello: BTreeMap<&str, u64> = streams
        .iter()
        .map(|(n, s)| (n.as_str(), s.next_seq()))
        .collect();
    let _ = tx
        .send(event(
            "hello",
            &json!({"epoch": state.epoch, "streams": hello}),
        ))
        .await;
    for (name, results) in streams {
        let from = since.get(&name).copied();
        tokio::spawn(forward(name, results, from, tx.clone(), killer.clone()));
    }
    tokio::spawn(tick(state.clone(), tx));
    let shutdown = state.shutdown.clone();
    let body = futures::stream::unfold(Some((rx, kill_rx, guard)), move |st| {
        let mut shutdown = shutdown.clone();
        async move {
            let (mut rx, mut kill_rx, guard) = st?;
            tokio::select! {
                biased;
                _ = shutdown.wait_for(|s| *s) => None,
                reason = &mut kill_rx => {
                    let reason = reason.unwrap_or_default();
                    Some((Ok(event("dropped", &json!({"reason": reason}))), None))
                }
                e = rx.recv() => e.map(|e| (Ok(e), Some((rx, kill_rx, guard)))),
            }
        }
    });
    Ok(Sse::new(body).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// Counts an open stream for as long as its response lives.
struct OpenStream(Arc<WebState>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a page's subscription to a query's broadcast (told apart from Flight's in metrics).
struct QuerySubscription(Arc<WebState>);

impl QuerySubscription {
    fn new(state: Arc<WebState>) -> Self {
        state.query_subscriptions.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for QuerySubscription {
    fn drop(&mut self) {
        self.0.query_subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Ends a stream with a reason, once.
#[derive(Clone)]
struct Killer(
    Arc<std::sync::Mutex<Option<oneshot::Sender<String>>>>,
    Arc<WebState>,
);

impl Killer {
    fn kill(&self, reason: String) {
        if let Some(tx) = self.0.lock().expect("killer lock").take() {
            self.1.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%reason, "dashboard stream dropped");
            let _ = tx.send(reason);
        }
    }
}

fn event(kind: &str, data: &Value) -> Event {
    Event::default().event(kind).data(data.to_string())
}

/// The `rows` event of a result batch; the rows' JSON is made once for every page.
fn rows_event(name: &str, item: &ResultBatch) -> Event {
    let rows = item.json.get_or_init(|| {
        super::api::rows_json(std::slice::from_ref(&item.batch))
            .unwrap_or_else(|e| {
                tracing::warn!(query = name, error = %e.1, "rows not sent to dashboards");
                "[]".into()
            })
            .into()
    });
    let head = json!({"q": name, "seq": item.seq, "wm": item.watermark_ms}).to_string();
    // `{"q":..,"seq":..,"wm":..` + `,"rows":[...]}`
    Event::default()
        .event("rows")
        .data(format!("{},\"rows\":{rows}}}", &head[..head.len() - 1]))
}

/// What a new page gets of a replay buffer: its newest batches up to a number of rows.
fn newest(replay: Vec<Arc<ResultBatch>>, max_rows: usize) -> Vec<Arc<ResultBatch>> {
    let mut rows = 0;
    let keep = replay
        .iter()
        .rev()
        .take_while(|b| {
            rows += b.batch.num_rows();
            rows <= max_rows
        })
        .count();
    let skip = replay.len() - keep;
    replay.into_iter().skip(skip).collect()
}

/// One stream of one page: the replay (what the page missed, or the newest rows for a new
/// page), then live batches as they are published.
async fn forward(
    name: String,
    results: Arc<ResultStream>,
    since: Option<u64>,
    tx: mpsc::Sender<Event>,
    killer: Killer,
) {
    let (replay, mut rx) = results.subscribe(true);
    let _counted = (name != TRACES).then(|| QuerySubscription::new(killer.1.clone()));
    let replay = match since {
        Some(last) => {
            let first = replay.first().map_or(results.next_seq(), |b| b.seq);
            if last + 1 < first {
                let missed = first - last - 1;
                let _ = tx
                    .send(event("gap", &json!({"q": name, "missed": missed})))
                    .await;
            }
            replay.into_iter().filter(|b| b.seq > last).collect()
        }
        None if name == TRACES => newest(replay, FIRST_TRACE_ROWS),
        None => newest(replay, FIRST_ROWS),
    };
    // Buffered batches are held anyway: the page takes them at its own pace, within STALLED.
    for item in replay {
        if !send(&tx, rows_event(&name, &item), &killer).await {
            return;
        }
    }
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            r = rx.recv() => match r {
                Ok(item) => if !send(&tx, rows_event(&name, &item), &killer).await {
                    return;
                },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    killer.kill(format!("too slow: fell {n} batches of {name} behind"));
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    let _ = tx.try_send(event("gone", &json!({"q": name})));
                    return;
                }
            }
        }
    }
}

/// Queues an event for the page; false when the page is gone or was too slow (and is dropped).
async fn send(tx: &mpsc::Sender<Event>, e: Event, killer: &Killer) -> bool {
    match tx.send_timeout(e, STALLED).await {
        Ok(()) => true,
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
            killer.kill(format!(
                "too slow: {} events waited over {} s to be read",
                tx.max_capacity(),
                STALLED.as_secs()
            ));
            false
        }
        Err(mpsc::error::SendTimeoutError::Closed(_)) => false,
    }
}

/// A `tick` every second: the server's clock and the watermark (skipped while the page's
/// queue is full: the page is busy with rows).
async fn tick(state: Arc<WebState>, tx: mpsc::Sender<Event>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = every.tick() => {
                let wm = state.flight.engine.stats.watermark_ms.load(Ordering::Relaxed);
                let now = chrono::Utc::now().timestamp_millis();
                let e = event("tick", &json!({"now": now, "wm": (wm != 0).then_some(wm)}));
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(e) {
                    return;
                }
            }
        }
    }
}
