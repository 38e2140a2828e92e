//! The Kafka consumer: polls messages into micro-batches bounded by rows and by time, decodes
//! them, dead-letters what cannot be decoded, and hands each batch to the engine. Offsets are
//! committed only when downstream says the batch is safe (see [`Committer`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use pitwall_proto::schema::col;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer as RdBaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::dead_letter::DeadLetter;
use super::decode::{Decoder, RawMessage};
use super::{IngestStats, MicroBatch, PartitionSlice};
use crate::error::Result;

/// The consumer's librdkafka context: reaching the end of a partition is how the watermark
/// learns the input is caught up, not an error worth a log line.
pub struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for Quiet {}

type BaseConsumer = RdBaseConsumer<Quiet>;

/// Makes sure consumption resumes at or before the last checkpoint's offsets.
///
/// A broker asked for an offset in the middle of a record batch must return that batch; some
/// (tansu 0.6 among them) return the next one, which would skip the rest of the batch. The
/// first message of each resumed partition is checked; if it is past the checkpoint, the
/// partition is sought back (further each time) and the rows below the checkpoint are dropped
/// by the offset filter.
struct ResumeGuard {
    topic: String,
    /// partition -> (checkpoint offset, how far back the next seek goes, reached offset 0)
    pending: BTreeMap<i32, (i64, i64, bool)>,
}

impl ResumeGuard {
    fn new(topic: &str, skip_below: &BTreeMap<i32, i64>) -> Self {
        Self {
            topic: topic.to_string(),
            pending: skip_below
                .iter()
                .map(|(p, o)| (*p, (*o, 16_384, false)))
                .collect(),
        }
    }

    /// Whether to keep `m`; seeks back when the partition resumed past the checkpoint.
    fn admit(&mut self, consumer: &BaseConsumer, m: &BorrowedMessage<'_>) -> bool {
        let p = m.partition();
        let Some((target, back, exhausted)) = self.pending.get_mut(&p) else {
            return true;
        };
        if m.offset() <= *target || *exhausted {
            if m.offset() > *target {
                tracing::warn!(
                    partition = p,
                    from = *target,
                    to = m.offset(),
                    "messages below this offset are no longer in the topic"
                );
            }
            self.pending.remove(&p);
            return true;
        }
        let to = (*target - *back).max(0);
        tracing::warn!(
            partition = p,
            checkpoint = *target,
            got = m.offset(),
            seek = to,
            "resumed past the checkpoint; seeking back"
        );
        *exhausted = to == 0;
        *back *= 2;
        if let Err(e) = consumer.seek(&self.topic, p, Offset::Offset(to), Duration::from_secs(10)) {
            tracing::warn!(partition = p, error = %e, "seek failed; will retry");
        }
        false
    }

    /// A partition at the end of its log has nothing left to miss, unless the end is past
    /// the checkpoint and no message at or below it came: then the broker skipped them too.
    fn at_end(&mut self, consumer: &BaseConsumer, p: i32) {
        let Some((target, back, exhausted)) = self.pending.get_mut(&p) else {
            return;
        };
        let position = consumer.position().ok().and_then(|tpl| {
            tpl.find_partition(&self.topic, p)
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                })
        });
        match position {
            Some(pos) if pos > *target && !*exhausted => {
                let to = (*target - *back).max(0);
                tracing::warn!(
                    partition = p,
                    checkpoint = *target,
                    end = pos,
                    seek = to,
                    "resumed past the checkpoint; seeking back"
                );
                *exhausted = to == 0;
                *back *= 2;
                if let Err(e) =
                    consumer.seek(&self.topic, p, Offset::Offset(to), Duration::from_secs(10))
                {
                    tracing::warn!(partition = p, error = %e, "seek failed; will retry");
                }
            }
            _ => {
                self.pending.remove(&p);
            }
        }
    }
}

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From the oldest message still in the topic (nothing already there is skipped).
    Earliest,
    /// Only messages published after the server joined.
    Latest,
}

#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub start: StartAt,
    /// Extra librdkafka settings for the consumer.
    pub options: Vec<(String, String)>,
    pub max_batch_rows: usize,
    pub max_batch_wait: Duration,
    pub dead_letter_topic: Option<String>,
}

/// Offsets to commit: (topic, partition) -> next offset to read.
pub type Offsets = BTreeMap<(String, i32), i64>;

/// Asks the consumer thread to commit offsets once the rows before them are safe.
#[derive(Clone)]
pub struct Committer {
    tx: std::sync::mpsc::Sender<Offsets>,
}

impl Committer {
    pub fn commit(&self, offsets: Offsets) {
        let _ = self.tx.send(offsets);
    }
}

/// Next offsets to read after a micro-batch (its last offset + 1 per partition).
pub fn next_offsets(batch: &MicroBatch) -> Offsets {
    batch
        .partitions
        .iter()
        .map(|p| ((batch.topic.clone(), p.partition), p.last_offset + 1))
        .collect()
}

pub struct KafkaSource {
    pub committer: Committer,
    pub thread: std::thread::JoinHandle<()>,
}

pub fn consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set(
            "auto.offset.reset",
            match config.start {
                StartAt::Earliest => "earliest",
                StartAt::Latest => "latest",
            },
        )
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("fetch.wait.max.ms", "10")
        .set("queued.min.messages", "200000");
    for (k, v) in &config.options {
        c.set(k, v);
    }
    c
}

/// Starts the consumer thread.
pub fn spawn(
    config: KafkaConfig,
    mut decoder: Decoder,
    stats: Arc<IngestStats>,
    tx: mpsc::Sender<MicroBatch>,
    stop: Arc<AtomicBool>,
    skip_below: BTreeMap<i32, i64>,
) -> Result<KafkaSource> {
    let consumer: BaseConsumer = consumer_config(&config).create_with_context(Quiet)?;
    consumer.subscribe(&[&config.topic])?;
    let mut probe_config = ClientConfig::new();
    probe_config.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.options {
        if !k.starts_with("group.") && !k.contains("session.timeout") && !k.contains("heartbeat") {
            probe_config.set(k, v);
        }
    }
    let prober: BaseConsumer = probe_config.create_with_context(Quiet)?;
    let dlq: Option<(BaseProducer, String)> = match &config.dead_letter_topic {
        Some(t) => {
            let mut pc = ClientConfig::new();
            pc.set("bootstrap.servers", &config.brokers);
            Some((pc.create()?, t.clone()))
        }
        None => None,
    };
    let (commit_tx, commit_rx) = std::sync::mpsc::channel::<Offsets>();
    tracing::info!(brokers = %config.brokers, topic = %config.topic, group = %config.group_id, "consuming");
    let thread = std::thread::Builder::new()
        .name("pitwall-ingest".into())
        .spawn(move || {
            let mut pending: Offsets = BTreeMap::new();
            let mut at_end: BTreeSet<i32> = BTreeSet::new();
            let mut last_assigned: Option<Vec<i32>> = None;
            let mut guard = ResumeGuard::new(&config.topic, &skip_below);
            let mut last_probe = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                while let Ok(o) = commit_rx.try_recv() {
                    pending.extend(o);
                }
                if !pending.is_empty() {
                    commit(&consumer, &mut pending);
                }
                let (messages, mut ends_changed) = poll_batch(&consumer, &config, &stop, &mut at_end, &mut guard);
                let assigned = assignment(&consumer, &config.topic);
                let assignment_changed = assigned != last_assigned;
                // With nothing arriving, ask the broker whether we are really at the end: an
                // unreachable broker means we do not know, and the watermark must wait.
                if messages.is_empty() && last_probe.elapsed() >= Duration::from_millis(200) {
                    last_probe = Instant::now();
                    let probed = probe_ends(&consumer, &prober, &config.topic, assigned.as_deref().unwrap_or(&[]));
                    if probed != at_end {
                        at_end = probed;
                        ends_changed = true;
                    }
                }
                if messages.is_empty() && !ends_changed && !assignment_changed {
                    continue;
                }
                                if assignment_changed || ends_changed {
                    tracing::debug!(?assigned, at_end = ?at_end, "partition progress");
                }
                last_assigned = assigned.clone();
                let mut batch = match decode_batch(&config, &messages, &mut decoder, dlq.as_ref(), &stats, &skip_below) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "micro-batch could not be decoded; it is skipped");
                        continue;
                    }
                };
                drop(messages);
                tracing::trace!(partitions = ?batch.partitions, rows = batch.rows.num_rows(), "micro-batch");
                batch.assigned = assigned;
                batch.caught_up = at_end.iter().copied().collect();
                if tx.blocking_send(batch).is_err() {
                    break;
                }
            }
            while let Ok(o) = commit_rx.recv_timeout(Duration::from_millis(200)) {
                pending.extend(o);
            }
            if !pending.is_empty() {
                commit(&consumer, &mut pending);
            }
            tracing::info!("consumer stopped");
        })?;
    Ok(KafkaSource {
        committer: Committer { tx: commit_tx },
        thread,
    })
}

fn commit(consumer: &BaseConsumer, pending: &mut Offsets) {
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in pending.iter() {
        if tpl
            .add_partition_offset(topic, *partition, Offset::Offset(*offset))
            .is_err()
        {
            return;
        }
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => pending.clear(),
        Err(e) => tracing::warn!(error = %e, "offset commit failed; will retry"),
    }
}

/// The partitions whose position has reached the broker's high watermark. Any broker error
/// (e.g. it is down) yields none: being cut off is not being caught up.
/// `prober` is a separate client, so that its requests never queue behind (or time out) the
/// consumer's fetches.
fn probe_ends(
    consumer: &BaseConsumer,
    prober: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> BTreeSet<i32> {
    let positions = consumer.position().ok();
    let mut ends = BTreeSet::new();
    for &p in partitions {
        let (low, high) = match prober.fetch_watermarks(topic, p, Duration::from_millis(500)) {
            Ok(w) => w,
            Err(_) => return BTreeSet::new(),
        };
        let pos = positions
            .as_ref()
            .and_then(|tpl| tpl.find_partition(topic, p))
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        if high <= low || pos.is_some_and(|o| o >= high) {
            ends.insert(p);
        }
    }
    ends
}

/// The partitions of `topic` this consumer owns, sorted (None if unknown).
fn assignment(consumer: &BaseConsumer, topic: &str) -> Option<Vec<i32>> {
    let tpl = consumer.assignment().ok()?;
    let mut parts: Vec<i32> = tpl
        .elements()
        .iter()
        .filter(|e| e.topic() == topic)
        .map(|e| e.partition())
        .collect();
    parts.sort_unstable();
    Some(parts)
}

/// Polls up to a micro-batch of messages; keeps `at_end` (partitions at the end of their log)
/// current and says whether it changed.
fn poll_batch<'c>(
    consumer: &'c BaseConsumer,
    config: &KafkaConfig,
    stop: &AtomicBool,
    at_end: &mut BTreeSet<i32>,
    guard: &mut ResumeGuard,
) -> (Vec<BorrowedMessage<'c>>, bool) {
    let mut messages = Vec::new();
    let mut changed = false;
    let started = Instant::now();
    while messages.len() < config.max_batch_rows && !stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        if elapsed >= config.max_batch_wait {
            break;
        }
        // Block for the first message up to the whole window; after that, take what is queued.
        let left = config.max_batch_wait - elapsed;
        let wait = if messages.is_empty() && !changed {
            left
        } else {
            left.min(Duration::from_millis(5))
        };
        match consumer.poll(wait) {
            Some(Ok(m)) => {
                if guard.admit(consumer, &m) {
                    changed |= at_end.remove(&m.partition());
                    messages.push(m);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                guard.at_end(consumer, p);
                changed |= at_end.insert(p);
            }
            Some(Err(e)) => {
                // Cut off from the broker we cannot know we are at the end of the log: the
                // watermark waits instead of advancing on idleness.
                tracing::warn!(error = %e, "kafka consumer error");
                if !at_end.is_empty() {
                    at_end.clear();
                    changed = true;
                }
                break;
            }
            None if messages.is_empty() && !changed => {}
            None => break,
        }
    }
    (messages, changed)
}

fn decode_batch(
    config: &KafkaConfig,
    messages: &[BorrowedMessage<'_>],
    decoder: &mut Decoder,
    dlq: Option<&(BaseProducer, String)>,
    stats: &IngestStats,
    skip_below: &BTreeMap<i32, i64>,
) -> Result<MicroBatch> {
    // Messages below the last checkpoint's offsets were processed and archived before a
    // restart: read again, they are skipped, not counted twice.
    let raw: Vec<RawMessage<'_>> = messages
        .iter()
        .filter(|m| {
            skip_below
                .get(&m.partition())
                .is_none_or(|&s| m.offset() >= s)
        })
        .map(|m| RawMessage {
            payload: m.payload().unwrap_or(&[]),
            key: m.key(),
            partition: m.partition(),
            offset: m.offset(),
            timestamp_ms: m.timestamp().to_millis(),
            format_header: m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == pitwall_proto::FORMAT_HEADER)
                    .and_then(|h| h.value)
            }),
        })
        .collect();
    let decoded = decoder.decode(&raw)?;
    let bytes: u64 = raw.iter().map(|m| m.payload.len() as u64).sum();
    stats.count(raw.len() as u64, bytes, decoded.rows.num_rows() as u64);
    let mut letters: Vec<DeadLetter> = Vec::new();
    if !decoded.bad.is_empty() {
        letters = decoded
            .bad
            .iter()
            .map(|b| {
                let m = &raw[b.index];
                stats.add_bad(b.reason, 1);
                DeadLetter::new(
                    &config.topic,
                    m.partition,
                    m.offset,
                    m.key,
                    m.payload,
                    b.reason,
                    b.error.clone(),
                    m.timestamp_ms,
                )
            })
            .collect();
        tracing::debug!(count = letters.len(), "dead letters");
        if let Some((producer, topic)) = dlq {
            for l in &letters {
                let headers = rdkafka::message::OwnedHeaders::new()
                    .insert(rdkafka::message::Header {
                        key: "pitwall-reason",
                        value: Some(l.reason),
                    })
                    .insert(rdkafka::message::Header {
                        key: "pitwall-error",
                        value: Some(l.error.as_str()),
                    })
                    .insert(rdkafka::message::Header {
                        key: "pitwall-source",
                        value: Some(&format!("{}/{}/{}", l.topic, l.partition, l.offset)),
                    });
                let mut rec = BaseRecord::to(topic).payload(&l.payload).headers(headers);
                if let Some(k) = &l.key {
                    rec = rec.key(k);
                }
                if let Err((e, _)) = producer.send(rec) {
                    tracing::warn!(error = %e, "cannot publish a dead letter");
                }
            }
            producer.poll(Duration::ZERO);
        }
    }
    // Per-partition progress: offsets of every message, event time of valid rows.
    let mut slices: BTreeMap<i32, PartitionSlice> = BTreeMap::new();
    for m in &raw {
        let s = slices.entry(m.partition).or_insert(PartitionSlice {
            partition: m.partition,
            first_offset: m.offset,
            last_offset: m.offset,
            max_ts: None,
        });
        s.first_offset = s.first_offset.min(m.offset);
        s.last_offset = s.last_offset.max(m.offset);
    }
    if let Some(ts) = decoded.rows.column_by_name(col::TS) {
        let ts = ts.as_primitive::<TimestampMillisecondType>();
        for (row, &msg) in decoded.row_message.iter().enumerate() {
            let s = slices
                .get_mut(&raw[msg].partition)
                .expect("slice per partition");
            let t = ts.value(row);
            s.max_ts = Some(s.max_ts.map_or(t, |m| m.max(t)));
        }
    }
    Ok(MicroBatch {
        topic: config.topic.clone(),
        rows: decoded.rows,
        partitions: slices.into_values().collect(),
        assigned: None,
        caught_up: Vec::new(),
        dead_letters: letters,
        ready_at: Instant::now(),
    })
}
