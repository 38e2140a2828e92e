//! Query results: an append-only stream of record batches per continuous query, each stamped
//! with a sequence number and the watermark at emission, fanned out to any number of
//! subscribers, with a bounded in-memory replay buffer for those who join late. The buffer is
//! bounded by rows and by bytes: a query that emits a few rows per micro-batch holds many
//! small batches, whose buffers cost far more than their rows, so a row bound alone let the
//! replay buffers of a long session grow by ~26 MB per 1.5 h of a 20-car race.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use tokio::sync::broadcast;

/// One emission of a continuous query.
#[derive(Debug)]
pub struct ResultBatch {
    pub seq: u64,
    /// Stream watermark when the batch was emitted (ms since the epoch).
    pub watermark_ms: Option<i64>,
    pub emitted_at: SystemTime,
    pub batch: RecordBatch,
    /// The batch encoded for the wire, by the first subscriber that needs it, for the others.
    pub encoded: OnceLock<Arc<dyn Any + Send + Sync>>,
    /// The rows as a JSON array, made by the first dashboard stream that sends them.
    pub json: OnceLock<Arc<str>>,
}

struct Buffer {
    batches: VecDeque<Arc<ResultBatch>>,
    rows: usize,
    /// Arrow memory of the buffered batches (`get_array_memory_size`).
    bytes: usize,
    next_seq: u64,
    schema: SchemaRef,
}

/// The result stream of one query. Cheap to share; publishing never blocks on subscribers.
pub struct ResultStream {
    tx: broadcast::Sender<Arc<ResultBatch>>,
    buffer: Mutex<Buffer>,
    max_buffer_rows: usize,
    max_buffer_bytes: usize,
}

impl std::fmt::Debug for ResultStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultStream")
            .field("max_buffer_rows", &self.max_buffer_rows)
            .field("max_buffer_bytes", &self.max_buffer_bytes)
            .finish()
    }
}

impl ResultStream {
    /// A stream whose replay buffer keeps at most `max_buffer_rows` rows and
    /// `max_buffer_bytes` bytes of Arrow memory (always at least the newest batch).
    pub fn new(
        schema: SchemaRef,
        max_buffer_rows: usize,
        max_buffer_bytes: usize,
        channel_batches: usize,
    ) -> Self {
        let (tx, _) = broadcast::channel(channel_batches.max(1));
        Self {
            tx,
            buffer: Mutex::new(Buffer {
                batches: VecDeque::new(),
                rows: 0,
                bytes: 0,
                next_seq: 0,
                schema,
            }),
            max_buffer_rows,
            max_buffer_bytes,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        self.buffer.lock().expect("results lock").schema.clone()
    }

    /// Sets the schema of batches published from now on (after a query is replaced).
    pub fn set_schema(&self, schema: SchemaRef) {
        self.buffer.lock().expect("results lock").schema = schema;
    }

    /// Appends a batch and hands it to every subscriber; returns its sequence number.
    pub fn publish(&self, batch: RecordBatch, watermark_ms: Option<i64>) -> u64 {
        let mut buf = self.buffer.lock().expect("results lock");
        let seq = buf.next_seq;
        buf.next_seq += 1;
        let item = Arc::new(ResultBatch {
            seq,
            watermark_ms,
            emitted_at: SystemTime::now(),
            batch,
            encoded: OnceLock::new(),
            json: OnceLock::new(),
        });
        buf.rows += item.batch.num_rows();
        buf.bytes += item.batch.get_array_memory_size();
        buf.batches.push_back(item.clone());
        while (buf.rows > self.max_buffer_rows || buf.bytes > self.max_buffer_bytes)
            && buf.batches.len() > 1
        {
            if let Some(old) = buf.batches.pop_front() {
                buf.rows -= old.batch.num_rows();
                buf.bytes -= old.batch.get_array_memory_size();
            }
        }
        // Sending under the lock keeps subscribe() free of gaps and duplicates.
        let _ = self.tx.send(item);
        seq
    }

    /// Batches still in the replay buffer (oldest first) and a receiver for what follows.
    pub fn subscribe(
        &self,
        from_buffer_start: bool,
    ) -> (Vec<Arc<ResultBatch>>, broadcast::Receiver<Arc<ResultBatch>>) {
        let buf = self.buffer.lock().expect("results lock");
        let rx = self.tx.subscribe();
        let replay = if from_buffer_start {
            buf.batches.iter().cloned().collect()
        } else {
            Vec::new()
        };
        (replay, rx)
    }

    /// The replay buffer's batches (for ad-hoc SQL over recent results).
    pub fn snapshot(&self) -> Vec<RecordBatch> {
        let buf = self.buffer.lock().expect("results lock");
        buf.batches.iter().map(|b| b.batch.clone()).collect()
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn next_seq(&self) -> u64 {
        self.buffer.lock().expect("results lock").next_seq
    }

    /// Sequence number of the oldest batch still in the replay buffer (`next_seq` when empty).
    pub fn first_buffered_seq(&self) -> u64 {
        let buf = self.buffer.lock().expect("results lock");
        buf.batches.front().map_or(buf.next_seq, |b| b.seq)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(n: usize) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![1; n]))]).unwrap()
    }

    #[tokio::test]
    async fn late_subscribers_replay_the_buffer_then_follow() {
        let s = ResultStream::new(batch(0).schema(), 10, usize::MAX, 16);
        s.publish(batch(4), Some(1));
        s.publish(batch(4), Some(2));
        s.publish(batch(4), Some(3)); // 12 rows > 10: the oldest batch leaves the buffer
        let (replay, mut rx) = s.subscribe(true);
        assert_eq!(replay.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![1, 2]);
        s.publish(batch(1), Some(4));
        assert_eq!(rx.recv().await.unwrap().seq, 3);
        let (replay, _) = s.subscribe(false);
        assert!(replay.is_empty());
    }

    #[test]
    fn the_replay_buffer_is_bounded_by_bytes_as_well_as_rows() {
        let one = batch(1).get_array_memory_size();
        // Room for 100 rows but only for the bytes of three one-row batches.
        let s = ResultStream::new(batch(0).schema(), 100, 3 * one, 16);
        for wm in 0..10 {
            s.publish(batch(1), Some(wm));
        }
        let (replay, _) = s.subscribe(true);
        assert_eq!(
            replay.iter().map(|b| b.seq).collect::<Vec<_>>(),
            vec![7, 8, 9]
        );
        // A batch larger than the whole bound is still kept, alone.
        s.publish(batch(1000), Some(10));
        let (replay, _) = s.subscribe(true);
        assert_eq!(replay.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![10]);
        assert_eq!(s.snapshot()[0].num_rows(), 1000);
    }
}
