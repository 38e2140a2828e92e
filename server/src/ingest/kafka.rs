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
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::dead_letter::{DeadLetter, DeadLetterSink};
use super::decode::{Decoder, RawMessage};
use super::{IngestStats, MicroBatch, PartitionSlice};
use crate::error::Result;

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
    mut dead_letters: DeadLetterSink,
    stats: Arc<IngestStats>,
    tx: mpsc::Sender<MicroBatch>,
    stop: Arc<AtomicBool>,
) -> Result<KafkaSource> {
    let consumer: BaseConsumer = consumer_config(&config).create()?;
    consumer.subscribe(&[&config.topic])?;
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
            while !stop.load(Ordering::Relaxed) {
                while let Ok(o) = commit_rx.try_recv() {
                    pending.extend(o);
                }
                if !pending.is_empty() {
                    commit(&consumer, &mut pending);
                }
                let (messages, ends_changed) = poll_batch(&consumer, &config, &stop, &mut at_end);
                let assigned = assignment(&consumer, &config.topic);
                let assignment_changed = assigned != last_assigned;
                if messages.is_empty() && !ends_changed && !assignment_changed {
                    continue;
                }
                last_assigned = assigned.clone();
                let mut batch = match decode_batch(&config, &messages, &mut decoder, &mut dead_letters, dlq.as_ref(), &stats) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "micro-batch could not be decoded; it is skipped");
                        continue;
                    }
                };
                drop(messages);
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
            if let Err(e) = dead_letters.close() {
                tracing::error!(error = %e, "cannot close the dead-letter file");
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
                changed |= at_end.remove(&m.partition());
                messages.push(m);
            }
            Some(Err(KafkaError::PartitionEOF(p))) => changed |= at_end.insert(p),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka consumer error");
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
    dead_letters: &mut DeadLetterSink,
    dlq: Option<&(BaseProducer, String)>,
    stats: &IngestStats,
) -> Result<MicroBatch> {
    let raw: Vec<RawMessage<'_>> = messages
        .iter()
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
    if !decoded.bad.is_empty() {
        let letters: Vec<DeadLetter> = decoded
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
        if let Err(e) = dead_letters.write(&letters) {
            tracing::error!(error = %e, "cannot write dead letters");
        }
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
    } else {
        dead_letters.write(&[])?;
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
        ready_at: Instant::now(),
    })
}
