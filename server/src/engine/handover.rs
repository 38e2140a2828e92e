//! Cars handed between the servers of a consumer group. A Kafka partition holds whole cars
//! (the key is the car), so a car's state — its open windows, its window functions' context,
//! its partition's event time — can follow its partition from one server to the next:
//!
//! - The engine notes which partition each car's rows came from (`PartitionSlice::drivers`)
//!   and keeps that map in every checkpoint.
//! - When the consumer is assigned partitions (the assign marker, after librdkafka's
//!   callback), the cars of partitions it no longer owns are dropped (their state went with
//!   the final checkpoint of the revoke), and for each partition newly owned the newest
//!   checkpoint that covers it, among every writer of the shared archive (this one's too), is
//!   read: that partition's cars are cut out of it and added here, and the consumer resumes at
//!   its offset. A checkpoint's offset is the truth: its rows and results are archived, and
//!   the state goes on from exactly there.
//! - With a shared archive each server publishes its partitions' event-time progress; the
//!   watermark never passes a partition that another server (or nobody, while a dead member's
//!   partitions wait for a new owner) has not brought that far. So a car that moves never meets
//!   a watermark that has closed its laps without it.
//!
//! Queries whose state rows do not name a car (across cars: no `driver` in their keys) cannot
//! be cut: each server keeps its own state of them, over the cars it has.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use super::snapshot::{self, Batches, EngineState};
use super::{Engine, fingerprint};
use crate::engine::pipeline::Pipeline;
use crate::error::Result;

/// How often the partitions' event-time progress is exchanged.
const CLOCK_EVERY: Duration = Duration::from_millis(500);

/// The archive the servers of a group share (see `archive::shared`).
pub(crate) trait GroupArchive: Send + Sync {
    /// The newest committed checkpoint of every writer of the shared archive.
    fn checkpoints(&self) -> Vec<(EngineState, Batches)>;
    /// Publishes the event time each partition owned here had reached at a checkpoint just
    /// committed (None: quiet, it holds nothing back): a server that takes one over starts
    /// from that checkpoint, so nobody's watermark may pass it before.
    fn publish_clock(&self, topic: &str, own: &BTreeMap<i32, Option<i64>>);
    /// The lowest event time published for the partitions of `topic` not in `own`.
    fn clock_floor(&self, topic: &str, own: &BTreeSet<i32>) -> Option<i64>;
    /// Gives up the partitions of `topic` this server held and does not keep.
    fn release_except(&self, topic: &str, keep: &BTreeSet<i32>);
    /// Waits until no other running server holds partition `p` (its last owner handed it
    /// over, or is gone), then holds it.
    fn acquire(&self, topic: &str, p: i32);
}

/// The engine's part of an assignment: drop the cars of partitions not owned any more, take
/// in those of `new`, and answer where each of `new` resumes.
#[derive(Debug, Clone)]
pub(crate) struct AdoptRequest {
    pub(crate) assigned: Vec<i32>,
    pub(crate) new: Vec<i32>,
    pub(crate) reply: std::sync::mpsc::SyncSender<BTreeMap<i32, i64>>,
}

impl Engine {
    /// Notes which partition each car of a micro-batch came from.
    pub(crate) fn note_cars(&mut self, topic: &str, partitions: &[crate::ingest::PartitionSlice]) {
        for s in partitions {
            for d in &s.drivers {
                let place = (topic.to_string(), s.partition);
                if self.cars.get(d) != Some(&place) {
                    self.cars.insert(d.clone(), place);
                }
            }
        }
    }

    /// Car -> partition, as checkpoints keep it ("topic/partition" -> drivers).
    pub(crate) fn cars_by_partition(&self) -> BTreeMap<String, Vec<String>> {
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (d, (t, p)) in &self.cars {
            by.entry(snapshot::offset_key(t, *p))
                .or_default()
                .push(d.clone());
        }
        by.values_mut().for_each(|v| v.sort());
        by
    }

    pub(crate) fn restore_cars(&mut self, by: &BTreeMap<String, Vec<String>>) {
        for (key, drivers) in by {
            if let Some((t, p)) = snapshot::parse_offset_key(key) {
                for d in drivers {
                    self.cars.insert(d.clone(), (t.clone(), p));
                }
            }
        }
    }

    /// Drops the state of the cars of `partitions`: another server has them now.
    pub(crate) fn drop_cars(&mut self, topic: &str, partitions: &BTreeSet<i32>) {
        let drivers: HashSet<String> = self
            .cars
            .iter()
            .filter(|(_, (t, p))| t == topic && partitions.contains(p))
            .map(|(d, _)| d.clone())
            .collect();
        for p in partitions {
            self.consumed.remove(&snapshot::offset_key(topic, *p));
            self.epochs.remove(&snapshot::offset_key(topic, *p));
        }
        if drivers.is_empty() {
            return;
        }
        for (name, q) in self.queries.iter_mut() {
            match q.pipeline.take_cars(&drivers) {
                Ok(Some(_)) => {}
                Ok(None) => tracing::debug!(query = %name, "state across cars stays here"),
                Err(e) => tracing::warn!(query = %name, error = %e, "cars' state not cut"),
            }
        }
        self.cars.retain(|d, _| !drivers.contains(d));
        tracing::info!(
            ?partitions,
            cars = drivers.len(),
            "cars of partitions owned elsewhere dropped"
        );
    }

    /// The assign marker (see the module doc): the resume offset of each newly owned partition
    /// found in a checkpoint.
    pub(crate) fn adopt(
        &mut self,
        topic: &str,
        request: &AdoptRequest,
        now: Instant,
    ) -> BTreeMap<i32, i64> {
        let assigned: BTreeSet<i32> = request.assigned.iter().copied().collect();
        let new: BTreeSet<i32> = request.new.iter().copied().collect();
        let mut gone: BTreeSet<i32> = self
            .cars
            .values()
            .filter(|(t, p)| t == topic && !assigned.contains(p))
            .map(|(_, p)| *p)
            .collect();
        let Some(group) = self.group.clone() else {
            self.drop_cars(topic, &gone);
            return BTreeMap::new();
        };
        // A newly owned partition's cars held here are an older state of them (a restored
        // checkpoint, or one this server had before another went on with them).
        gone.extend(new.iter().copied());
        self.drop_cars(topic, &gone);
        // The previous owner may not have handed over yet (a broker may assign before every
        // member has given its partitions up): its final checkpoint comes first.
        group.release_except(topic, &assigned);
        for p in &new {
            group.acquire(topic, *p);
        }
        let checkpoints = group.checkpoints();
        let mut resume = BTreeMap::new();
        for p in new {
            let key = snapshot::offset_key(topic, p);
            // The furthest on, and of those the latest owner's: a checkpoint taken over and
            // checkpointed again before any new row may have closed windows since.
            let epoch_of = |c: &EngineState| c.epochs.get(&key).copied().unwrap_or(0);
            let newest = checkpoints
                .iter()
                .filter_map(|c| Some(((c.0.consumed.get(&key).copied()?, epoch_of(&c.0)), c)))
                .max_by_key(|(rank, _)| *rank);
            let epoch = checkpoints
                .iter()
                .map(|c| epoch_of(&c.0))
                .max()
                .unwrap_or(0)
                + 1;
            self.epochs.insert(key.clone(), epoch);
            let Some(((offset, _), (state, batches))) = newest else {
                continue;
            };
            match self.take_in(topic, p, state, batches, now) {
                Ok(cars) => {
                    tracing::info!(
                        partition = p,
                        offset,
                        epoch,
                        cars,
                        "partition's cars taken over from its last checkpoint"
                    );
                    self.consumed.insert(key, offset);
                    resume.insert(p, offset);
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "partition's state not taken over; its cars start afresh")
                }
            }
        }
        resume
    }

    /// Adds the state of partition `p`'s cars from another checkpoint; returns how many cars.
    fn take_in(
        &mut self,
        topic: &str,
        p: i32,
        state: &EngineState,
        batches: &Batches,
        now: Instant,
    ) -> Result<usize> {
        let key = snapshot::offset_key(topic, p);
        let drivers: HashSet<String> = state
            .cars
            .get(&key)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for qs in &state.queries {
            let Some(q) = self.queries.get_mut(&qs.name) else {
                continue;
            };
            if fingerprint(&q.def) != qs.fingerprint || drivers.is_empty() {
                continue;
            }
            let mut theirs = Pipeline::new(q.pipeline.compiled().clone());
            theirs.restore(&qs.stages, 0, batches)?;
            if let Some(cars) = theirs.take_cars(&drivers)? {
                q.pipeline.put_cars(cars)?;
            }
        }
        for d in &drivers {
            self.cars.insert(d.clone(), (topic.to_string(), p));
        }
        if let Some(ts) = state
            .watermark
            .topics
            .get(topic)
            .and_then(|ps| ps.iter().find(|(q, _)| *q == p))
            .map(|(_, ts)| *ts)
        {
            self.watermarks.observe(topic, p, ts, now);
        }
        Ok(drivers.len())
    }

    /// Every [`CLOCK_EVERY`]: holds the watermark at the lowest event time the other
    /// servers' partitions had at their last checkpoints.
    pub(crate) fn exchange_clock(&mut self, now: Instant) {
        let Some(group) = self.group.clone() else {
            return;
        };
        if self
            .clock_at
            .is_some_and(|t| now.duration_since(t) < CLOCK_EVERY)
        {
            return;
        }
        self.clock_at = Some(now);
        for (topic, own) in self.watermarks.partition_clocks(now) {
            let floor = group.clock_floor(&topic, &own.keys().copied().collect());
            self.watermarks.hold_at(&topic, floor);
        }
    }

    /// The event time of the partitions owned here, per topic (published at each commit).
    pub(crate) fn partition_clocks(&self) -> Vec<(String, BTreeMap<i32, Option<i64>>)> {
        self.watermarks.partition_clocks(Instant::now())
    }
}

#[cfg(test)]
mod tests;
