//! Handing partitions over in a consumer group. When several servers share a topic (the same
//! `--group`), a rebalance moves partitions between them. The server giving a partition up
//! must leave exactly where its archive stops, so that the next owner neither reads again what
//! is archived here nor misses what is not:
//!
//! 1. On revoke (librdkafka's rebalance callback, on the consumer thread, before the partition
//!    goes), the engine gets a marker behind every batch already sent. It takes a checkpoint
//!    at once; the archive commits it and answers with the offsets it covers; those of the
//!    revoked partitions are committed to Kafka, synchronously, still inside the callback. The
//!    wait is bounded ([`HANDOVER_TIMEOUT`]): past it the partition goes with its last
//!    committed offset (the archive still commits the rows later, so the next owner archives
//!    the rows since that offset a second time; the warning says so).
//! 2. Messages polled for a revoked partition but not yet sent are dropped, and the engine and
//!    the consumer forget the partition's offsets: a later checkpoint or commit never carries
//!    them, so an old offset cannot overwrite the new owner's progress.
//! 3. A lost assignment (the session timed out: another member may own the partition already)
//!    stops the server (exit status 75, as `paused` does): what it processed since its last
//!    checkpoint is being read again by the next owner, and archiving it here too would count
//!    it twice. A restart resumes from the last checkpoint.
//! 4. On assign (librdkafka's callback after it), a marker makes the engine drop the cars of
//!    the partitions it no longer owns and take over those of the new ones from the newest
//!    checkpoint covering them (`engine::handover`, with a shared archive); the resume point is
//!    the latest of that checkpoint's offset, the group's committed offset and what this server
//!    processed itself. The consumer loop arms it before it admits any message of the new
//!    partitions (`IngestLoop::arm_assigned`), so a broker that resumes past it (tansu 0.6 mid
//!    record batch) is sought back, not believed.
//!
//! Every commit goes through [`CommitGate`]: only partitions assigned at that moment, and never
//! below an offset committed before, whichever thread commits.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::{Offsets, Quiet};
use crate::ingest::MicroBatch;

/// How long a revoke waits for the archive to commit the final checkpoint.
pub(crate) const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine's part of a revoke: take a checkpoint now (when `reply` is set) and answer
/// with the Kafka offsets it committed, then forget `partitions`.
#[derive(Debug, Clone)]
pub struct HandoverRequest {
    pub(crate) partitions: Vec<i32>,
    pub(crate) reply: Option<std::sync::mpsc::SyncSender<Offsets>>,
    /// An assignment (the marker of librdkafka's assign callback): the cars of the partitions
    /// owned now are taken over (`engine::handover`).
    pub(crate) adopt: Option<crate::engine::handover::AdoptRequest>,
}

/// Serialises every offset commit of one consumer and keeps them owned and monotonic.
#[derive(Default)]
pub(crate) struct CommitGate {
    /// (topic, partition) -> the highest offset committed by this consumer.
    floor: Mutex<Offsets>,
}

impl CommitGate {
    /// Commits what of `offsets` is for partitions assigned now and above the last commit.
    pub(crate) fn commit<C: ConsumerContext>(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<C>,
        offsets: &Offsets,
    ) -> KafkaResult<()> {
        let mut floor = self.floor.lock().expect("commit gate");
        let assigned = consumer.assignment()?;
        let mut tpl = TopicPartitionList::new();
        let mut taken = Offsets::new();
        for ((topic, partition), offset) in offsets {
            let owned = assigned.find_partition(topic, *partition).is_some();
            let above = floor
                .get(&(topic.clone(), *partition))
                .is_none_or(|f| offset > f);
            if owned && above {
                tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
                taken.insert((topic.clone(), *partition), *offset);
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        consumer.commit(&tpl, CommitMode::Sync)?;
        tracing::debug!(offsets = ?taken, "offsets committed");
        floor.extend(taken);
        Ok(())
    }

    /// The group has committed `offset` for a partition (another server's progress): this
    /// consumer never commits below it, whatever its own older checkpoints say.
    pub(crate) fn raise_floor(&self, topic: &str, partition: i32, offset: i64) {
        let mut floor = self.floor.lock().expect("commit gate");
        let f = floor
            .entry((topic.to_string(), partition))
            .or_insert(offset);
        *f = (*f).max(offset);
    }
}

/// The consumer context's side of a rebalance.
pub(crate) struct Handover {
    topic: String,
    /// None once the consumer loop ended: the engine then sees its input end.
    engine: Mutex<Option<mpsc::Sender<MicroBatch>>>,
    pub(crate) gate: std::sync::Arc<CommitGate>,
    fence: std::sync::Arc<super::paused::PauseFence>,
    /// What rebalances changed since the consumer loop last looked.
    changes: Mutex<Rebalanced>,
    /// `changes` holds something (read after every poll: no lock on that path).
    pending: AtomicBool,
    /// How long an assignment waits for the engine to take the new partitions' cars over.
    adopt_timeout: Duration,
}

/// What rebalances changed that the consumer loop has not taken in yet.
#[derive(Default)]
pub(crate) struct Rebalanced {
    /// Partitions given up.
    pub(crate) revoked: BTreeSet<i32>,
    /// Partitions assigned (None: no assignment).
    pub(crate) assigned: Option<Vec<i32>>,
}

impl Handover {
    pub(crate) fn new(
        topic: String,
        engine: mpsc::Sender<MicroBatch>,
        gate: std::sync::Arc<CommitGate>,
        fence: std::sync::Arc<super::paused::PauseFence>,
        adopt_timeout: Duration,
    ) -> Self {
        Self {
            adopt_timeout,
            fence,
            topic,
            engine: Mutex::new(Some(engine)),
            gate,
            changes: Mutex::default(),
            pending: AtomicBool::new(false),
        }
    }

    /// The consumer loop ended: no more markers (and the engine's input can end).
    pub(crate) fn close(&self) {
        self.engine.lock().expect("engine sender").take();
    }

    /// A rebalance happened that the consumer loop has not taken in yet.
    pub(crate) fn rebalanced(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    /// What rebalances changed since the last call.
    pub(crate) fn take(&self) -> Rebalanced {
        let mut changes = self.changes.lock().expect("rebalance changes");
        self.pending.store(false, Ordering::Relaxed);
        std::mem::take(&mut *changes)
    }

    fn record(&self, change: impl FnOnce(&mut Rebalanced)) {
        let mut changes = self.changes.lock().expect("rebalance changes");
        change(&mut changes);
        self.pending.store(true, Ordering::Relaxed);
    }

    /// librdkafka has assigned `rebalance`'s partitions: the consumer loop arms their resume
    /// points before it admits any of their messages.
    pub(crate) fn after(&self, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<i32> = tpl
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect();
            self.record(|c| c.assigned.get_or_insert_with(Vec::new).extend(partitions));
        }
    }

    /// The consumer loop took in an assignment (`assigned`, of which `new` are newly owned):
    /// the engine drops the cars of the partitions gone and takes over those of the new ones
    /// from their newest checkpoint; the answer is where each of those resumes.
    pub(crate) fn adopt(&self, assigned: Vec<i32>, new: Vec<i32>) -> BTreeMap<i32, i64> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let marker = MicroBatch::handover(
            &self.topic,
            HandoverRequest {
                partitions: Vec::new(),
                reply: None,
                adopt: Some(crate::engine::handover::AdoptRequest {
                    assigned,
                    new,
                    reply: tx,
                }),
            },
        );
        let engine = self.engine.lock().expect("engine sender").clone();
        if engine.is_none_or(|e| e.blocking_send(marker).is_err()) {
            return BTreeMap::new();
        }
        rx.recv_timeout(self.adopt_timeout).unwrap_or_else(|_| {
            tracing::warn!("the engine did not take the new partitions over in time; they resume at the group's commit");
            BTreeMap::new()
        })
    }

    /// librdkafka is about to take `rebalance`'s partitions away (see the module doc).
    pub(crate) fn before(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Quiet>,
        rebalance: &Rebalance<'_>,
    ) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions: Vec<i32> = tpl
            .elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition())
            .collect();
        if partitions.is_empty() {
            return;
        }
        self.record(|c| c.revoked.extend(partitions.iter().copied()));
        let lost = consumer.assignment_lost();
        let (reply, answer) = if lost {
            (None, None)
        } else {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            (Some(tx), Some(rx))
        };
        let marker = MicroBatch::handover(
            &self.topic,
            HandoverRequest {
                partitions: partitions.clone(),
                reply,
                adopt: None,
            },
        );
        if lost {
            // What was processed since the last checkpoint is being read again by the
            // partitions' next owner: archiving it here too would count it twice.
            tracing::error!(
                ?partitions,
                "assignment lost (the group's session timed out): this server stops without archiving or committing anything more; start it again to resume from its last checkpoint"
            );
            std::process::exit(super::paused::EXIT_PAUSED);
        }
        let engine = self.engine.lock().expect("engine sender").clone();
        if engine.is_none_or(|e| e.blocking_send(marker).is_err()) {
            return;
        }
        let Some(answer) = answer else {
            return;
        };
        match answer.recv_timeout(HANDOVER_TIMEOUT) {
            Ok(offsets) => {
                self.fence.wait_alive();
                let revoked: Offsets = offsets
                    .into_iter()
                    .filter(|((t, p), _)| *t == self.topic && partitions.contains(p))
                    .collect();
                match self.gate.commit(consumer, &revoked) {
                    Ok(()) => tracing::info!(offsets = ?revoked, "partitions handed over"),
                    Err(e) => {
                        tracing::warn!(error = %e, ?partitions, "handover commit failed: the next owner starts at the previous commit");
                    }
                }
            }
            Err(_) => {
                tracing::warn!(
                    ?partitions,
                    timeout_s = HANDOVER_TIMEOUT.as_secs(),
                    "no checkpoint committed in time for the revoked partitions: the next owner starts at the previous commit"
                );
            }
        }
    }
}

/// Where newly assigned partitions resume: the later of the group's committed offset and
/// what this consumer processed itself (`processed`, which it updates). The group's offset
/// also becomes the gate's floor: a checkpoint restored from before another server went on
/// with the partition still carries the older offset, which must never be committed.
pub(crate) fn resume_points<C: ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    gate: &CommitGate,
    topic: &str,
    partitions: &[i32],
    processed: &mut BTreeMap<i32, i64>,
    adopted: &BTreeMap<i32, i64>,
) -> BTreeMap<i32, i64> {
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let committed = match consumer.committed_offsets(tpl, Duration::from_secs(10)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "committed offsets unknown; resuming from this server's own progress");
            TopicPartitionList::new()
        }
    };
    let mut points = BTreeMap::new();
    for p in partitions {
        let group = committed
            .find_partition(topic, *p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        let own = processed.get(p).copied();
        let checkpoint = adopted.get(p).copied();
        if let Some(g) = group {
            gate.raise_floor(topic, *p, g);
        }
        if let (Some(g), Some(o)) = (group, own)
            && g > o
        {
            tracing::info!(
                partition = p,
                own = o,
                group = g,
                "another server went on with this partition; resuming at its commit"
            );
        }
        if let (Some(g), Some(c)) = (group, checkpoint)
            && g > c
        {
            tracing::warn!(
                partition = p,
                group = g,
                checkpoint = c,
                "the group's commit is past every checkpoint of the shared archive (a server outside it?): resuming at the commit"
            );
        }
        if let Some(next) = group.into_iter().chain(own).chain(checkpoint).max() {
            processed.insert(*p, next);
            points.insert(*p, next);
        }
    }
    points
}
