//! The Kafka consumer: polls messages into micro-batches bounded by rows and by time, decodes
//! them, dead-letters what cannot be decoded, and hands each batch to the engine. Offsets are
//! committed only when downstream says the batch is safe (see `Committer`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::TimestampMillisecondType;
use pitwall_proto::schema::col;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer as RdBaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers};
use rdkafka::producer::{BaseProducer, BaseRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::dead_letter::DeadLetter;
use super::decode::{Decoder, RawMessage};
use super::{GroupStatus, IngestStats, MicroBatch, PartitionSlice};
use crate::error::Result;

pub(crate) mod handover;
mod orphans;
mod paused;
pub use handover::HandoverRequest;
use handover::{CommitGate, Handover};

/// The consumer's librdkafka context: reaching the end of a partition is how the watermark
/// learns the input is caught up, not an error worth a log line. The consumer's own context
/// also takes librdkafka's statistics (every second) for the consumer lag per partition.
#[derive(Default)]
pub(crate) struct Quiet {
    stats: Option<(Arc<IngestStats>, String)>,
    /// The consumer's: what a rebalance does with the partitions it takes away.
    handover: Option<Arc<Handover>>,
}

impl ClientContext for Quiet {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some((stats, topic)) = &self.stats else {
            return;
        };
        let lag = statistics
            .topics
            .get(topic)
            .map(|t| {
                t.partitions
                    .values()
                    .filter(|p| p.partition >= 0 && p.consumer_lag >= 0)
                    .map(|p| (p.partition, p.consumer_lag))
                    .collect()
            })
            .unwrap_or_default();
        stats.set_lag(lag);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(
            error,
            KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        ) {
            tracing::warn!("librdkafka: {error}: {reason}");
        }
    }
}

impl ConsumerContext for Quiet {
    fn pre_rebalance(&self, consumer: &RdBaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Some(h) = &self.handover {
            h.before(consumer, rebalance);
        }
    }

    fn post_rebalance(&self, _consumer: &RdBaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Some(h) = &self.handover {
            h.after(rebalance);
        }
    }
}

type BaseConsumer = RdBaseConsumer<Quiet>;

/// Commits offsets on a thread of its own. A commit waits for the group coordinator, which can
/// take long (a coordinator moving, a broker restarting); consumption must not wait with it.
/// Offsets arriving meanwhile are merged: a later commit covers an earlier one, and a failed
/// one is retried. (Asynchronous commits would not need the thread, but rdkafka 0.39 never
/// reports their outcome: fede1024/rust-rdkafka#856.)
fn spawn_committer(
    consumer: Arc<BaseConsumer>,
    gate: Arc<CommitGate>,
    fence: Arc<paused::PauseFence>,
    rx: std::sync::mpsc::Receiver<Offsets>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pitwall-commit".into())
        .spawn(move || {
            let mut pending = Offsets::new();
            let mut stopping_since: Option<Instant> = None;
            loop {
                let received = rx.recv_timeout(Duration::from_millis(200));
                let disconnected = matches!(
                    received,
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
                );
                let mut add = |o: Offsets| {
                    for (k, v) in o {
                        let e = pending.entry(k).or_insert(v);
                        *e = (*e).max(v);
                    }
                };
                if let Ok(o) = received {
                    add(o);
                }
                while let Ok(o) = rx.try_recv() {
                    add(o);
                }
                if !pending.is_empty() {
                    fence.wait_alive();
                    match gate.commit(&consumer, &pending) {
                        Ok(()) => pending.clear(),
                        Err(e) => {
                            tracing::warn!(error = %e, "offset commit failed; will retry");
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
                // After a stop the last checkpoint's offsets still come; then this ends.
                if stop.load(Ordering::Relaxed) {
                    let since = *stopping_since.get_or_insert_with(Instant::now);
                    let quiet = pending.is_empty() && since.elapsed() > Duration::from_secs(1);
                    if quiet || since.elapsed() > Duration::from_secs(10) {
                        break;
                    }
                }
                if disconnected && pending.is_empty() {
                    break;
                }
            }
            if !pending.is_empty() {
                tracing::warn!(offsets = ?pending, "stopping with offsets not committed: they will be read again and skipped");
            }
        })
}

/// Makes sure consumption resumes at or before the last checkpoint's offsets.
///
/// A broker asked for an offset in the middle of a record batch must return that batch; some
/// (tansu 0.6 among them) return the next one, which would skip the rest of the batch. The
/// first message of each resumed partition is checked; if it is past the checkpoint, the
/// partition is sought back (further each time) and the rows below the checkpoint are dropped
/// by the offset filter. tansu 0.6 also reports the end of a log as the start of its last
/// record batch, and answers a fetch from inside that batch with nothing at all (no message,
/// no end-of-partition event): a partition resumed there, which the probe of log ends finds
/// at its end having delivered nothing, is sought back the same way.
struct ResumeGuard {
    topic: String,
    pending: BTreeMap<i32, Resume>,
}

/// A resumed partition whose first message has not come yet.
struct Resume {
    /// The checkpoint's offset: the first one not processed yet.
    target: i64,
    /// How far back the next seek goes.
    back: i64,
    /// A seek reached offset 0: whatever comes is all there is.
    exhausted: bool,
    /// When the last seek back was issued.
    sought: Option<Instant>,
}

impl Resume {
    fn new(target: i64) -> Self {
        Self {
            target,
            back: 16_384,
            exhausted: false,
            sought: None,
        }
    }

    /// Seeks back further than the last time. `why` is logged as a warning when the broker
    /// certainly skipped messages, as information when it may simply be the end of the log.
    fn seek_back(&mut self, consumer: &BaseConsumer, topic: &str, p: i32, why: &str, sure: bool) {
        let to = (self.target - self.back).max(0);
        if sure {
            tracing::warn!(
                partition = p,
                checkpoint = self.target,
                seek = to,
                "{why}; seeking back"
            );
        } else {
            tracing::info!(
                partition = p,
                checkpoint = self.target,
                seek = to,
                "{why}; seeking back"
            );
        }
        self.exhausted = to == 0;
        self.back *= 2;
        self.sought = Some(Instant::now());
        if let Err(e) = consumer.seek(topic, p, Offset::Offset(to), Duration::from_secs(10)) {
            tracing::warn!(partition = p, error = %e, "seek failed; will retry");
        }
    }
}

impl ResumeGuard {
    fn new(topic: &str, skip_below: &BTreeMap<i32, i64>) -> Self {
        Self {
            topic: topic.to_string(),
            pending: skip_below
                .iter()
                .map(|(p, o)| (*p, Resume::new(*o)))
                .collect(),
        }
    }

    /// Whether to keep `m`; seeks back when the partition resumed past the checkpoint.
    fn admit(&mut self, consumer: &BaseConsumer, m: &BorrowedMessage<'_>) -> bool {
        let p = m.partition();
        let Some(r) = self.pending.get_mut(&p) else {
            return true;
        };
        if m.offset() <= r.target || r.exhausted {
            if m.offset() > r.target {
                tracing::warn!(
                    partition = p,
                    from = r.target,
                    to = m.offset(),
                    "messages below this offset are no longer in the topic"
                );
            }
            self.pending.remove(&p);
            return true;
        }
        let why = format!("resumed past the checkpoint (got {})", m.offset());
        r.seek_back(consumer, &self.topic, p, &why, true);
        false
    }

    /// Checks `partition`'s first message again: it was (re)assigned after a rebalance, and
    /// everything before `next` has been processed already.
    fn arm(&mut self, partition: i32, next: i64) {
        let r = self
            .pending
            .entry(partition)
            .or_insert_with(|| Resume::new(next));
        r.target = r.target.max(next);
    }

    /// `partition` was revoked: nothing of it is awaited any more.
    fn disarm(&mut self, partition: i32) {
        self.pending.remove(&partition);
    }

    /// A partition at the end of its log has nothing left to miss, unless the end is past
    /// the checkpoint and no message at or below it came: then the broker skipped them too.
    fn at_end(&mut self, consumer: &BaseConsumer, p: i32) {
        let Some(r) = self.pending.get_mut(&p) else {
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
            Some(pos) if pos > r.target && !r.exhausted => {
                let why = format!("resumed past the checkpoint (end at {pos})");
                r.seek_back(consumer, &self.topic, p, &why, true);
            }
            _ => {
                self.pending.remove(&p);
            }
        }
    }

    /// The broker says `p`'s log ends where it resumed, or before, and nothing came from it
    /// yet: it may be a fetch from inside the last record batch that the broker answers with
    /// nothing (tansu 0.6). Seeking back costs re-reading (and dropping) a few thousand
    /// messages where the log really ends there. A seek gets a few seconds to deliver before
    /// the next; after one to offset 0, an empty answer means there is nothing to miss.
    fn probed_at_end(&mut self, consumer: &BaseConsumer, p: i32) {
        let Some(r) = self.pending.get_mut(&p) else {
            return;
        };
        if r.exhausted {
            self.pending.remove(&p);
        } else if r
            .sought
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(3))
        {
            r.seek_back(
                consumer,
                &self.topic,
                p,
                "nothing came from where the partition resumed",
                false,
            );
        }
    }

    /// A seek back is under way for `p`: it is not at its end, whatever the broker says.
    fn settling(&self, p: i32) -> bool {
        self.pending.get(&p).is_some_and(|r| r.sought.is_some())
    }
}

/// The consumer's poll interval, which is also its rebalance timeout (see `consumer_config`).
const MAX_POLL_INTERVAL_MS: u64 = 60_000;

/// Where a new consumer group starts.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
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
    /// How long a micro-batch stays open after its first message.
    pub linger: Duration,
    pub dead_letter_topic: Option<String>,
    /// Static group membership (`group.instance.id`); None = dynamic.
    pub instance_id: Option<String>,
}

/// Offsets to commit: (topic, partition) -> next offset to read.
pub(crate) type Offsets = BTreeMap<(String, i32), i64>;

/// Asks the consumer thread to commit offsets once the rows before them are safe.
#[derive(Clone)]
pub(crate) struct Committer {
    tx: std::sync::mpsc::Sender<Offsets>,
    fence: Arc<paused::PauseFence>,
}

impl Committer {
    pub(crate) fn commit(&self, offsets: Offsets) {
        let _ = self.tx.send(offsets);
    }

    /// Before a checkpoint commits: returns once the process is known not to have been
    /// paused past the session timeout (see `paused`).
    pub(crate) fn wait_alive(&self) {
        self.fence.wait_alive();
    }
}

pub struct KafkaSource {
    pub(crate) committer: Committer,
    pub thread: std::thread::JoinHandle<()>,
}

pub(crate) fn consumer_config(config: &KafkaConfig) -> ClientConfig {
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
        // The session timeout stays librdkafka's (45 s): shorter ones expire members whose
        // coordinator is merely slow to answer heartbeats under load, and a group that keeps
        // rebalancing consumes nothing. The poll interval is also the rebalance timeout: how
        // long a rejoin may wait for members that are gone (Kafka's 5 minutes would stall a
        // restarted instance that long). The ingest thread polls continuously, so a minute
        // without a poll means it is stuck.
        .set("max.poll.interval.ms", MAX_POLL_INTERVAL_MS.to_string())
        .set("fetch.wait.max.ms", "10")
        .set("queued.min.messages", "200000")
        // librdkafka prefetches up to 64 MB by default; 16 MB is still over a second of input
        // at 200K rows/s and keeps the consumer's share of memory small.
        .set("queued.max.messages.kbytes", "16384");
    // A static member id: a server restarted after a crash takes its old member's place (and
    // partitions) at once. It also avoids a group coordinator fault seen with tansu 0.6.0,
    // where a dynamic member that rejoins after its predecessors died ends up "steady" with
    // no partitions (see `scripts/repro-idle-group.sh`).
    if let Some(id) = &config.instance_id {
        c.set("group.instance.id", id);
    }
    for (k, v) in &config.options {
        c.set(k, v);
    }
    c
}

/// Starts the consumer thread.
pub fn spawn(
    config: KafkaConfig,
    decoder: Decoder,
    stats: Arc<IngestStats>,
    tx: mpsc::Sender<MicroBatch>,
    stop: Arc<AtomicBool>,
    skip_below: BTreeMap<i32, i64>,
) -> Result<KafkaSource> {
    let gate = Arc::new(CommitGate::default());
    let fence = paused::PauseFence::spawn(
        AssignmentWatch::session_timeout(&config.options),
        stop.clone(),
    )?;
    let handover = Arc::new(Handover::new(
        config.topic.clone(),
        tx.clone(),
        gate.clone(),
        fence.clone(),
        // Taking partitions over may wait a session timeout for their previous owner.
        AssignmentWatch::session_timeout(&config.options) + Duration::from_secs(30),
    ));
    let consumer: Arc<BaseConsumer> = Arc::new(
        consumer_config(&config)
            .set("statistics.interval.ms", "1000")
            .create_with_context(Quiet {
                stats: Some((stats.clone(), config.topic.clone())),
                handover: Some(handover.clone()),
            })?,
    );
    consumer.subscribe(&[&config.topic])?;
    let mut probe_config = ClientConfig::new();
    probe_config.set("bootstrap.servers", &config.brokers);
    for (k, v) in &config.options {
        // Group settings are the consumer's only (the prober has no group; a lone poll
        // interval below the default session timeout would even refuse to create it).
        let group_only = [
            "group.",
            "session.timeout",
            "heartbeat",
            "max.poll.interval",
        ];
        if !group_only.iter().any(|g| k.starts_with(g)) {
            probe_config.set(k, v);
        }
    }
    let prober = Prober::spawn(
        consumer.clone(),
        probe_config.create_with_context(Quiet::default())?,
        config.topic.clone(),
        stop.clone(),
    )?;
    let watch = AssignmentWatch::new(&config.options);
    orphans::spawn(
        consumer.clone(),
        probe_config.create_with_context(Quiet::default())?,
        config.topic.clone(),
        watch.limit,
        watch.orphaned.clone(),
        stop.clone(),
    )?;
    let dlq: Option<(BaseProducer, String)> = match &config.dead_letter_topic {
        Some(t) => {
            let mut pc = ClientConfig::new();
            pc.set("bootstrap.servers", &config.brokers);
            Some((pc.create()?, t.clone()))
        }
        None => None,
    };
    let (commit_tx, commit_rx) = std::sync::mpsc::channel::<Offsets>();
    let committer = spawn_committer(
        consumer.clone(),
        gate,
        fence.clone(),
        commit_rx,
        stop.clone(),
    )?;
    tracing::info!(
        brokers = %config.brokers,
        topic = %config.topic,
        group = %config.group_id,
        "consuming"
    );
    let ingest = IngestLoop {
        guard: ResumeGuard::new(&config.topic, &skip_below),
        watch,
        processed: skip_below,
        config,
        consumer,
        prober,
        decoder,
        dlq,
        stats,
        tx,
        stop,
        at_end: BTreeMap::new(),
        last_assigned: None,
        last_probe: Instant::now(),
        last_message: BTreeMap::new(),
        new_assignment: true,
        handover,
    };
    let thread = std::thread::Builder::new()
        .name("pitwall-ingest".into())
        .spawn(move || {
            ingest.run();
            // The last checkpoint's offsets are the committer's to finish (it gives up after a
            // few seconds rather than hold the stop).
            let _ = committer.join();
            tracing::info!("consumer stopped");
        })?;
    Ok(KafkaSource {
        committer: Committer {
            tx: commit_tx,
            fence,
        },
        thread,
    })
}

/// The consumer thread: polls micro-batches, follows the assignment and which partitions are
/// at the end of their log, and hands each batch, decoded, to the engine.
struct IngestLoop {
    config: KafkaConfig,
    consumer: Arc<BaseConsumer>,
    prober: Prober,
    decoder: Decoder,
    dlq: Option<(BaseProducer, String)>,
    stats: Arc<IngestStats>,
    tx: mpsc::Sender<MicroBatch>,
    stop: Arc<AtomicBool>,
    /// Partitions at the end of their log -> when the broker last said so.
    at_end: BTreeMap<i32, Instant>,
    last_assigned: Option<Vec<i32>>,
    guard: ResumeGuard,
    /// Partition -> next offset not processed yet. A rebalance (a broker restart, a session
    /// timeout, another instance joining) resumes at the committed offset, which lags what was
    /// processed: what comes again below this is skipped, not counted, archived or windowed
    /// twice.
    processed: BTreeMap<i32, i64>,
    last_probe: Instant,
    /// Partition -> when its latest message was polled (a probe that started before it cannot
    /// say the partition is at its end).
    last_message: BTreeMap<i32, Instant>,
    /// The assignment changed since the last probe was asked.
    new_assignment: bool,
    watch: AssignmentWatch,
    handover: Arc<Handover>,
}

impl IngestLoop {
    fn run(mut self) {
        while !self.stop.load(Ordering::Relaxed) {
            if !self.step() {
                break;
            }
        }
        self.handover.close();
    }

    /// One round: poll a micro-batch, follow the assignment, send what changed, ask or read
    /// the end-of-log probe. False when ingest must stop (the engine is gone, or a batch could
    /// not be decoded).
    fn step(&mut self) -> bool {
        // While a probe is out, come back soon to hand its answer to the engine.
        let max_idle_wait = self.prober.busy.then_some(Duration::from_millis(2));
        let consumer = self.consumer.clone();
        let handover = self.handover.clone();
        let (mut messages, ends_changed, held) = poll_batch(
            &consumer,
            &self.config,
            &self.stop,
            &mut self.at_end,
            &mut self.guard,
            max_idle_wait,
            &|| handover.rebalanced(),
        );
        // A rebalance ended the batch: what was polled before it is settled first, then the
        // new partitions' resume points are armed, and only then is the message that came
        // after it admitted (it may be past the resume point).
        let changes = self.handover.take();
        self.forget_revoked(&mut messages, &changes.revoked);
        self.arm_assigned(changes.assigned);
        if let Some(m) = held
            && self.guard.admit(&consumer, &m)
        {
            self.at_end.remove(&m.partition());
            messages.push(m);
        }
        let now = Instant::now();
        for m in &messages {
            self.last_message.insert(m.partition(), now);
        }
        let assigned = assignment(&consumer, &self.config.topic);
        self.watch
            .observe(&consumer, &self.config, assigned.as_deref(), &self.stats);
        let assignment_changed = self.follow_assignment(&assigned);
        let probe_due = (messages.is_empty() || !self.at_end.is_empty())
            && self.last_probe.elapsed() >= PROBE_INTERVAL;
        if !messages.is_empty() || ends_changed || assignment_changed {
            if assignment_changed || ends_changed {
                tracing::debug!(?assigned, at_end = ?self.at_end, "partition progress");
            }
            self.last_assigned = assigned.clone();
            if !self.send_batch(&messages, assigned.clone()) {
                return false;
            }
        }
        drop(messages);
        // While any partition is (or may be) at its end, keep asking the broker whether it
        // really is, and tell the engine each answer: idleness lasts only as long as it is
        // confirmed, and a quiet partition that received rows meanwhile must hold the
        // watermark again before the others' rows move it past them. An unreachable broker
        // means we do not know, and the watermark waits. The round trips run on the prober's
        // thread: polling goes on meanwhile.
        if probe_due && !self.prober.busy {
            self.last_probe = Instant::now();
            self.prober.ask(
                assigned.clone().unwrap_or_default(),
                std::mem::take(&mut self.new_assignment),
            );
        }
        match self.prober.answer() {
            Some((asked_at, probed)) => self.take_probe_answer(asked_at, probed, assigned),
            None => true,
        }
    }

    /// Partitions a rebalance took away (see [`handover`]): their messages polled but not
    /// sent are dropped, and what this consumer knew of them forgotten, so that the next time
    /// one is assigned it resumes where its last owner's commit says.
    fn forget_revoked(&mut self, messages: &mut Vec<BorrowedMessage<'_>>, revoked: &BTreeSet<i32>) {
        if revoked.is_empty() {
            return;
        }
        messages.retain(|m| !revoked.contains(&m.partition()));
        for p in revoked {
            self.processed.remove(p);
            self.at_end.remove(p);
            self.last_message.remove(p);
            self.guard.disarm(*p);
        }
        if let Some(a) = self.last_assigned.as_mut() {
            a.retain(|p| !revoked.contains(p));
        }
    }

    /// Arms the resume guard for the partitions just assigned (before any of their messages
    /// is admitted), at the later of the group's committed offset and this consumer's own
    /// progress.
    fn arm_assigned(&mut self, assigned: Option<Vec<i32>>) {
        let Some(new) = assigned else {
            return;
        };
        let owned = assignment(&self.consumer, &self.config.topic).unwrap_or_default();
        let adopted = self.handover.adopt(owned, new.clone());
        let points = handover::resume_points(
            &self.consumer,
            &self.handover.gate,
            &self.config.topic,
            &new,
            &mut self.processed,
            &adopted,
        );
        for (p, next) in points {
            self.guard.arm(p, next);
        }
    }

    /// Whether the assignment changed since the last batch sent.
    fn follow_assignment(&mut self, assigned: &Option<Vec<i32>>) -> bool {
        if *assigned == self.last_assigned {
            return false;
        }
        self.new_assignment = true;
        true
    }

    /// The probe's answer: the partitions at their end as of `asked_at`. A partition that
    /// delivered rows since the question is not at its end, nor one sought back; one whose
    /// end-of-log event came since is. The engine hears of it when anything is (still) at its
    /// end.
    fn take_probe_answer(
        &mut self,
        asked_at: Instant,
        probed: BTreeSet<i32>,
        assigned: Option<Vec<i32>>,
    ) -> bool {
        for p in &probed {
            self.guard.probed_at_end(&self.consumer, *p);
        }
        let mut next: BTreeMap<i32, Instant> = probed
            .into_iter()
            .filter(|p| self.last_message.get(p).is_none_or(|t| *t < asked_at))
            .filter(|p| !self.guard.settling(*p))
            .map(|p| (p, asked_at))
            .collect();
        for (p, t) in &self.at_end {
            if *t > asked_at {
                next.insert(*p, *t);
            }
        }
        let changed = next.keys().ne(self.at_end.keys());
        self.at_end = next;
        if changed || !self.at_end.is_empty() {
            return self.send_batch(&[], assigned);
        }
        true
    }

    /// Decodes `messages` into a micro-batch with the consumer's progress and hands it to the
    /// engine; false when the engine is gone or the batch could not be decoded.
    fn send_batch(&mut self, messages: &[BorrowedMessage<'_>], assigned: Option<Vec<i32>>) -> bool {
        let decoded = decode_batch(
            &self.config,
            messages,
            &mut self.decoder,
            self.dlq.as_ref(),
            &self.stats,
            &self.processed,
        );
        let mut batch = match decoded {
            Ok(b) => b,
            Err(e) => {
                // Not one message could be decoded into the batch (see `Decoder::decode`): the
                // offsets stay where they are, and ingest stops rather than skip input. A
                // restart reads it again from the last checkpoint.
                tracing::error!(error = %e, "micro-batch could not be decoded; ingest stops here");
                let mut status = self.stats.group();
                status.stopped = Some(format!(
                    "ingest stopped: a micro-batch could not be decoded: {e}"
                ));
                self.stats.set_group(status);
                return false;
            }
        };
        for s in &batch.partitions {
            let next = self.processed.entry(s.partition).or_insert(0);
            *next = (*next).max(s.last_offset + 1);
        }
        tracing::trace!(partitions = ?batch.partitions, rows = batch.rows.num_rows(), "micro-batch");
        batch.assigned = assigned;
        batch.caught_up = self.at_end.keys().copied().collect();
        batch.caught_up_confirmed = self.at_end.values().min().copied();
        self.tx.blocking_send(batch).is_ok()
    }
}

/// The consumer group's session timeout the `options` give (librdkafka's default unless set).
pub(crate) fn session_timeout(options: &[(String, String)]) -> Duration {
    AssignmentWatch::session_timeout(options)
}

/// Notices a consumer that owns no partition for longer than a rebalance can take (the
/// session timeout, or the rebalance timeout if longer, plus [`AssignmentWatch::GRACE`]):
/// it says so (a warning, `pitwall stats`, `/readyz`) and leaves and rejoins its group,
/// then again after twice as long, up to every [`AssignmentWatch::MAX_BACKOFF`]. An
/// instance with nothing to own (more servers than partitions) is told so the same way.
struct AssignmentWatch {
    limit: Duration,
    since: Option<Instant>,
    next_rejoin: Duration,
    status: GroupStatus,
    /// Raised by the `orphans` watch: a partition has no live owner in the group.
    orphaned: Arc<AtomicBool>,
    last_rejoin: Option<Instant>,
}

impl AssignmentWatch {
    const GRACE: Duration = Duration::from_secs(15);
    const MAX_BACKOFF: Duration = Duration::from_secs(600);

    /// A librdkafka setting in milliseconds from `options`, or `default`.
    fn ms(options: &[(String, String)], key: &str, default: u64) -> u64 {
        options
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(default)
    }

    /// The group's session timeout (librdkafka's default unless set).
    fn session_timeout(options: &[(String, String)]) -> Duration {
        Duration::from_millis(Self::ms(options, "session.timeout.ms", 45_000))
    }

    fn new(options: &[(String, String)]) -> Self {
        let session = Self::session_timeout(options);
        let rebalance = Duration::from_millis(Self::ms(
            options,
            "max.poll.interval.ms",
            MAX_POLL_INTERVAL_MS,
        ));
        let limit = session.max(rebalance) + Self::GRACE;
        Self {
            limit,
            since: Some(Instant::now()),
            next_rejoin: limit,
            status: GroupStatus {
                kafka: true,
                ..GroupStatus::default()
            },
            orphaned: Arc::default(),
            last_rejoin: None,
        }
    }

    /// Leaves the group and joins it again (a new member, a fresh assignment).
    fn rejoin(&mut self, consumer: &BaseConsumer, config: &KafkaConfig) {
        consumer.unsubscribe();
        if let Err(e) = consumer.subscribe(&[&config.topic]) {
            tracing::warn!(error = %e, "rejoining the group failed; will retry");
        }
        self.status.rejoins += 1;
        self.last_rejoin = Some(Instant::now());
    }

    fn observe(
        &mut self,
        consumer: &BaseConsumer,
        config: &KafkaConfig,
        assigned: Option<&[i32]>,
        stats: &IngestStats,
    ) {
        let assigned = assigned.unwrap_or_default();
        let before = self.status.clone();
        self.status.assigned = assigned.to_vec();
        // At most one rejoin per limit for orphaned partitions (the watch already waited one).
        if self.orphaned.load(Ordering::Relaxed)
            && self.last_rejoin.is_none_or(|t| t.elapsed() > self.limit)
        {
            self.rejoin(consumer, config);
            self.orphaned.store(false, Ordering::Relaxed);
        }
        if !assigned.is_empty() {
            if self.status.stuck {
                tracing::info!(partitions = ?assigned, "partitions assigned again");
            }
            self.since = None;
            self.next_rejoin = self.limit;
            self.status.stuck = false;
        } else {
            let since = *self.since.get_or_insert_with(Instant::now);
            let idle = since.elapsed();
            self.status.stuck = idle > self.limit;
            if idle > self.next_rejoin {
                tracing::warn!(
                    topic = %config.topic,
                    group = %config.group_id,
                    "no partitions assigned for {} s (more servers than partitions, or a stuck group): leaving and rejoining the group",
                    idle.as_secs()
                );
                self.rejoin(consumer, config);
                self.next_rejoin = (self.next_rejoin * 2).min(idle + Self::MAX_BACKOFF);
            }
        }
        self.status.unassigned_since = self.since;
        if self.status != before {
            stats.set_group(self.status.clone());
        }
    }
}

/// The partitions whose position has reached the broker's high watermark. Any broker error
/// (e.g. it is down) yields none: being cut off is not being caught up.
/// `prober` is a separate client, so that its requests never queue behind (or time out) the
/// consumer's fetches.
///
/// librdkafka knows a position only once a message was consumed; a partition that has
/// delivered nothing since it was assigned is where the group's committed offset put it
/// (cached in `start_offsets`, cleared by the caller on a new assignment). Without this, a
/// partition resumed exactly at its end would never count as caught up, and the last windows
/// would never close.
fn probe_ends(
    consumer: &BaseConsumer,
    prober: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
    start_offsets: &mut BTreeMap<i32, i64>,
) -> BTreeSet<i32> {
    let positions = consumer.position().ok();
    let position = |p: i32| {
        positions
            .as_ref()
            .and_then(|tpl| tpl.find_partition(topic, p))
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            })
    };
    let unknown: Vec<i32> = partitions
        .iter()
        .copied()
        .filter(|p| position(*p).is_none() && !start_offsets.contains_key(p))
        .collect();
    if !unknown.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for p in &unknown {
            tpl.add_partition(topic, *p);
        }
        if let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_millis(500)) {
            for e in committed.elements() {
                if let Offset::Offset(o) = e.offset() {
                    start_offsets.insert(e.partition(), o);
                }
            }
        }
    }
    let mut ends = BTreeSet::new();
    for &p in partitions {
        let (low, high) = match prober.fetch_watermarks(topic, p, Duration::from_millis(500)) {
            Ok(w) => w,
            Err(_) => return BTreeSet::new(),
        };
        let pos = position(p).or_else(|| start_offsets.get(&p).copied());
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

/// Asks the broker where each log ends, on its own thread, so that the round trips never hold
/// up polling (at 100 ms intervals they would add their time to the latency of every row that
/// arrives meanwhile).
struct Prober {
    tx: std::sync::mpsc::Sender<(Vec<i32>, bool)>,
    rx: std::sync::mpsc::Receiver<(Instant, BTreeSet<i32>)>,
    /// A question is out and its answer not yet taken.
    busy: bool,
}

impl Prober {
    fn spawn(
        consumer: Arc<BaseConsumer>,
        prober: BaseConsumer,
        topic: String,
        stop: Arc<AtomicBool>,
    ) -> Result<Self> {
        let (tx, questions) = std::sync::mpsc::channel::<(Vec<i32>, bool)>();
        let (answers, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pitwall-probe".into())
            .spawn(move || {
                let mut start_offsets: BTreeMap<i32, i64> = BTreeMap::new();
                while !stop.load(Ordering::Relaxed) {
                    let (partitions, new_assignment) =
                        match questions.recv_timeout(Duration::from_millis(200)) {
                            Ok(q) => q,
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                        };
                    if new_assignment {
                        start_offsets.clear();
                    }
                    let asked_at = Instant::now();
                    let ends =
                        probe_ends(&consumer, &prober, &topic, &partitions, &mut start_offsets);
                    if answers.send((asked_at, ends)).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Self {
            tx,
            rx,
            busy: false,
        })
    }

    fn ask(&mut self, partitions: Vec<i32>, new_assignment: bool) {
        self.busy = self.tx.send((partitions, new_assignment)).is_ok();
    }

    /// The answer to the question out, once it has come: when it was asked, and the
    /// partitions at their end then.
    fn answer(&mut self) -> Option<(Instant, BTreeSet<i32>)> {
        let a = self.rx.try_recv().ok()?;
        self.busy = false;
        Some(a)
    }
}

/// How often an idle consumer asks the broker where the end of each log is.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Polls up to a micro-batch of messages; keeps `at_end` (partitions at the end of their log,
/// and when the broker said so) current and says whether its set changed. A rebalance
/// (`rebalanced`) ends the batch; a message polled after it is handed back unadmitted.
fn poll_batch<'c>(
    consumer: &'c BaseConsumer,
    config: &KafkaConfig,
    stop: &AtomicBool,
    at_end: &mut BTreeMap<i32, Instant>,
    guard: &mut ResumeGuard,
    max_idle_wait: Option<Duration>,
    rebalanced: &dyn Fn() -> bool,
) -> (Vec<BorrowedMessage<'c>>, bool, Option<BorrowedMessage<'c>>) {
    let mut messages = Vec::new();
    let mut changed = false;
    let started = Instant::now();
    let mut first_at: Option<Instant> = None;
    while messages.len() < config.max_batch_rows && !stop.load(Ordering::Relaxed) {
        let elapsed = started.elapsed();
        if elapsed >= config.max_batch_wait {
            break;
        }
        // Block for the first message up to the whole window; after it, linger only briefly:
        // low rates get small, fresh batches; high rates fill batches while the engine works.
        let left = config.max_batch_wait - elapsed;
        let wait = match first_at {
            None if !changed => max_idle_wait.map_or(left, |w| left.min(w)),
            None => left.min(Duration::from_millis(1)),
            Some(t) => match config.linger.checked_sub(t.elapsed()) {
                Some(l) => l.min(left),
                None => break,
            },
        };
        let polled = consumer.poll(wait);
        if rebalanced() {
            let held = match polled {
                Some(Ok(m)) => Some(m),
                _ => None,
            };
            return (messages, true, held);
        }
        match polled {
            Some(Ok(m)) => {
                if guard.admit(consumer, &m) {
                    changed |= at_end.remove(&m.partition()).is_some();
                    first_at.get_or_insert_with(Instant::now);
                    messages.push(m);
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                guard.at_end(consumer, p);
                if !guard.settling(p) {
                    changed |= at_end.insert(p, Instant::now()).is_none();
                }
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
            None if messages.is_empty() && !changed && max_idle_wait.is_none() => {}
            None => break,
        }
    }
    (messages, changed, None)
}

/// For each (partition, offset) in delivery order, whether it is delivered for the first time:
/// at or above the partition's next unprocessed offset in `skip_below`, and above every offset
/// of that partition kept before it. Offsets of a partition are processed once, in order.
fn first_deliveries(
    skip_below: &BTreeMap<i32, i64>,
    messages: impl Iterator<Item = (i32, i64)>,
) -> Vec<bool> {
    let mut next = skip_below.clone();
    messages
        .map(|(p, offset)| {
            let n = next.entry(p).or_insert(i64::MIN);
            let keep = offset >= *n;
            if keep {
                *n = offset + 1;
            }
            keep
        })
        .collect()
}

fn decode_batch(
    config: &KafkaConfig,
    messages: &[BorrowedMessage<'_>],
    decoder: &mut Decoder,
    dlq: Option<&(BaseProducer, String)>,
    stats: &IngestStats,
    skip_below: &BTreeMap<i32, i64>,
) -> Result<MicroBatch> {
    // Messages below these offsets were processed already (before a restart, or before a
    // rebalance): read again, they are skipped, not counted twice. So is a second copy of an
    // offset within this batch (a fetch that was under way when a seek-back was issued).
    let fresh = first_deliveries(
        skip_below,
        messages.iter().map(|m| (m.partition(), m.offset())),
    );
    let raw: Vec<RawMessage<'_>> = messages
        .iter()
        .zip(fresh)
        .filter_map(|(m, keep)| keep.then_some(m))
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
                DeadLetter::new(&config.topic, m, b.reason, b.error.clone())
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
            drivers: Vec::new(),
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
    note_drivers(&decoded, &raw, &mut slices);
    Ok(MicroBatch {
        topic: config.topic.clone(),
        rows: decoded.rows,
        partitions: slices.into_values().collect(),
        assigned: None,
        caught_up: Vec::new(),
        caught_up_confirmed: None,
        dead_letters: letters,
        ready_at: Instant::now(),
        handover: None,
    })
}

/// Which cars each partition delivered: a car's window state moves with its partition when
/// servers hand partitions over (`engine::handover`).
fn note_drivers(
    decoded: &crate::ingest::decode::Decoded,
    raw: &[RawMessage<'_>],
    slices: &mut BTreeMap<i32, PartitionSlice>,
) {
    use datafusion::arrow::array::Array;
    let Some(drivers) = decoded
        .rows
        .column_by_name(col::DRIVER)
        .and_then(|d| d.as_string_opt::<i32>())
    else {
        return;
    };
    let mut last: Option<(i32, &str)> = None;
    for (row, &msg) in decoded.row_message.iter().enumerate() {
        if drivers.is_null(row) {
            continue;
        }
        let seen = (raw[msg].partition, drivers.value(row));
        if last == Some(seen) {
            continue;
        }
        last = Some(seen);
        let s = slices.get_mut(&seen.0).expect("slice per partition");
        if !s.drivers.iter().any(|d| d == seen.1) {
            s.drivers.push(seen.1.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::first_deliveries;

    #[test]
    fn each_offset_is_taken_once_and_in_order() {
        let skip_below = BTreeMap::from([(0, 100)]);
        let delivered = [
            (0, 98),  // processed before the restart
            (0, 100), // the next one
            (0, 101),
            (1, 7),   // a partition with no checkpoint yet
            (0, 100), // a second copy (an overlapping fetch after a seek)
            (0, 101),
            (0, 102),
            (1, 7),
            (1, 8),
        ];
        assert_eq!(
            first_deliveries(&skip_below, delivered.into_iter()),
            [false, true, true, true, false, false, true, false, true]
        );
    }
}
