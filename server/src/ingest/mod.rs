//! Ingest: the first leg of the data path. Telemetry arrives as Kafka messages (or from the
//! embedded replay of the bundled session), is gathered into micro-batches bounded by rows and
//! by time, decoded straight into Arrow record batches of the canonical schema, and handed to
//! the engine. Messages that cannot be decoded never stop a batch: they are counted by reason
//! and written to the dead-letter sink.

pub(crate) mod dead_letter;
pub mod decode;
pub mod embedded;
pub mod kafka;
pub(crate) mod udp;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;

/// The rows of one partition in a micro-batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSlice {
    pub partition: i32,
    /// Offsets of the first and last message taken from this partition (inclusive).
    pub first_offset: i64,
    pub last_offset: i64,
    /// Highest event time among its valid rows (None if all were bad).
    pub max_ts: Option<i64>,
    /// The cars (`driver`) among its rows: a car's state follows its partition from one
    /// server to another (Kafka only; empty for other sources).
    pub drivers: Vec<String>,
}

/// A batch of decoded rows from one poll cycle.
#[derive(Debug, Clone)]
pub struct MicroBatch {
    pub topic: String,
    /// Valid rows in the canonical telemetry schema.
    pub rows: RecordBatch,
    pub partitions: Vec<PartitionSlice>,
    /// The partitions the consumer owns now (None when the source has no such notion).
    pub assigned: Option<Vec<i32>>,
    /// Partitions at the end of their log after this poll (nothing more to read right now).
    pub caught_up: Vec<i32>,
    /// When the source last confirmed that all of `caught_up` are at their end (a Kafka
    /// consumer re-asks the broker while idle); None for an in-process source, whose word
    /// holds until it says otherwise. See `crate::engine::watermark`.
    pub caught_up_confirmed: Option<Instant>,
    /// Messages that could not be decoded (archived with the batch).
    pub dead_letters: Vec<dead_letter::DeadLetter>,
    /// When the batch was complete (decoded and ready for the engine).
    pub ready_at: Instant,
    /// Partitions the consumer is giving up (a marker with no rows; see `kafka::handover`).
    pub handover: Option<kafka::HandoverRequest>,
}

impl MicroBatch {
    /// The marker of a revoke: no rows, only the partitions going away.
    pub(crate) fn handover(topic: &str, request: kafka::HandoverRequest) -> Self {
        Self {
            topic: topic.to_string(),
            rows: RecordBatch::new_empty(pitwall_proto::schema::telemetry_schema()),
            partitions: Vec::new(),
            assigned: None,
            caught_up: Vec::new(),
            caught_up_confirmed: None,
            dead_letters: Vec::new(),
            ready_at: Instant::now(),
            handover: Some(request),
        }
    }
}

/// Counters of what ingest has seen, shared with the stats endpoint.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub rows: AtomicU64,
    pub micro_batches: AtomicU64,
    bad: Mutex<BTreeMap<&'static str, u64>>,
    /// Consumer lag per partition (messages), from librdkafka's statistics.
    lag: Mutex<BTreeMap<i32, i64>>,
    group: Mutex<GroupStatus>,
}

/// The consumer's place in its group, as `pitwall stats`, `/metrics` and `/readyz` show it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct GroupStatus {
    /// A Kafka consumer (false for the embedded replay, which owns all its input).
    pub kafka: bool,
    /// Partitions assigned now.
    pub assigned: Vec<i32>,
    /// Since when none are (None while some are).
    pub unassigned_since: Option<std::time::Instant>,
    /// Unassigned for longer than the session timeout plus a bound: something is wrong.
    pub stuck: bool,
    /// Times the consumer left and rejoined its group because it was stuck.
    pub rejoins: u64,
    /// Why ingest stopped, when it stopped on an error (a restart resumes from the checkpoint).
    pub stopped: Option<String>,
}

impl IngestStats {
    pub fn add_bad(&self, reason: &'static str, n: u64) {
        *self
            .bad
            .lock()
            .expect("stats lock")
            .entry(reason)
            .or_default() += n;
    }

    pub fn bad_by_reason(&self) -> Vec<(String, u64)> {
        self.bad
            .lock()
            .expect("stats lock")
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect()
    }

    /// Replaces the consumer lag of the partitions the consumer owns.
    pub fn set_lag(&self, lag: BTreeMap<i32, i64>) {
        *self.lag.lock().expect("stats lock") = lag;
    }

    pub(crate) fn set_group(&self, status: GroupStatus) {
        *self.group.lock().expect("stats lock") = status;
    }

    pub(crate) fn group(&self) -> GroupStatus {
        self.group.lock().expect("stats lock").clone()
    }

    pub fn lag_by_partition(&self) -> BTreeMap<i32, i64> {
        self.lag.lock().expect("stats lock").clone()
    }

    pub fn bad_total(&self) -> u64 {
        self.bad.lock().expect("stats lock").values().sum()
    }

    pub fn count(&self, messages: u64, bytes: u64, rows: u64) {
        self.messages.fetch_add(messages, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.rows.fetch_add(rows, Ordering::Relaxed);
        if messages > 0 {
            self.micro_batches.fetch_add(1, Ordering::Relaxed);
        }
    }
}
