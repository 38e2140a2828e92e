//! Partitions nobody consumes. In a group of several servers, a partition whose log grows
//! while the group's committed offset stays where it is has no live owner. With Apache Kafka
//! that lasts one session timeout; tansu 0.6.0 can keep it so for good: when a member dies,
//! the rebalance's SyncGroup answers the survivors with the previous generation's map (the
//! new leader's assignment is ignored, as in `scripts/repro-idle-group.sh`), so the dead
//! member's partitions stay assigned to it. A member that leaves and rejoins the group gets a
//! fresh assignment. This watch runs on its own thread (its round trips never hold up
//! polling) and raises a flag that the consumer loop's `AssignmentWatch` turns into a rejoin.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::BaseConsumer;

/// How often the group's offsets and the logs' ends are compared.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the watch learnt of one partition this server does not own.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen {
    committed: Option<i64>,
    since: Instant,
}

/// The pure part: which partitions have been behind their log's end with the same committed
/// offset for longer than `limit`.
#[derive(Default)]
pub(crate) struct Orphans {
    seen: BTreeMap<i32, Seen>,
}

impl Orphans {
    /// Takes one look: `committed` and `ends` per partition not assigned here.
    pub(crate) fn observe(
        &mut self,
        committed: &BTreeMap<i32, Option<i64>>,
        ends: &BTreeMap<i32, i64>,
        now: Instant,
        limit: Duration,
    ) -> Vec<i32> {
        self.seen.retain(|p, _| committed.contains_key(p));
        let mut orphaned = Vec::new();
        for (p, c) in committed {
            let behind = ends.get(p).is_some_and(|end| c.unwrap_or(0) < *end);
            if !behind {
                self.seen.remove(p);
                continue;
            }
            let s = self.seen.entry(*p).or_insert(Seen {
                committed: *c,
                since: now,
            });
            if s.committed != *c {
                *s = Seen {
                    committed: *c,
                    since: now,
                };
            }
            if now.saturating_duration_since(s.since) > limit {
                orphaned.push(*p);
            }
        }
        orphaned
    }

    /// After a rejoin every partition is looked at afresh.
    pub(crate) fn reset(&mut self) {
        self.seen.clear();
    }
}

/// Starts the watch's thread; `flag` goes up while some partition is orphaned.
pub(crate) fn spawn(
    consumer: Arc<BaseConsumer>,
    prober: BaseConsumer,
    topic: String,
    limit: Duration,
    flag: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("pitwall-orphans".into())
        .spawn(move || {
            let mut orphans = Orphans::default();
            let mut next = Instant::now() + CHECK_EVERY;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if Instant::now() < next {
                    continue;
                }
                next = Instant::now() + CHECK_EVERY;
                if flag.load(Ordering::Relaxed) {
                    // The consumer loop has not rejoined yet; look again afterwards.
                    orphans.reset();
                    continue;
                }
                let Some((committed, ends)) = look(&consumer, &prober, &topic) else {
                    continue;
                };
                let orphaned = orphans.observe(&committed, &ends, Instant::now(), limit);
                if !orphaned.is_empty() {
                    tracing::warn!(
                        partitions = ?orphaned,
                        "partitions not consumed by anyone in the group for {} s (their committed offsets stay behind the log's end): leaving and rejoining the group",
                        limit.as_secs()
                    );
                    orphans.reset();
                    flag.store(true, Ordering::Relaxed);
                }
            }
        })
}

/// The committed offset and log end of every partition of `topic` not assigned here (None
/// when the broker cannot say: nothing is judged on a partial look).
type Look = (BTreeMap<i32, Option<i64>>, BTreeMap<i32, i64>);

fn look(consumer: &BaseConsumer, prober: &BaseConsumer, topic: &str) -> Option<Look> {
    let timeout = Duration::from_secs(2);
    let metadata = prober.fetch_metadata(Some(topic), timeout).ok()?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)?
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    let assigned = consumer.assignment().ok()?;
    let others: Vec<i32> = partitions
        .into_iter()
        .filter(|p| assigned.find_partition(topic, *p).is_none())
        .collect();
    if others.is_empty() {
        return Some(Default::default());
    }
    let mut tpl = TopicPartitionList::new();
    for p in &others {
        tpl.add_partition(topic, *p);
    }
    let committed = consumer.committed_offsets(tpl, timeout).ok()?;
    let mut c = BTreeMap::new();
    let mut ends = BTreeMap::new();
    for p in others {
        let offset = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        c.insert(p, offset);
        let (_, high) = prober.fetch_watermarks(topic, p, timeout).ok()?;
        ends.insert(p, high);
    }
    Some((c, ends))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_behind_its_end_with_the_same_commit_past_the_limit_is_orphaned() {
        let limit = Duration::from_secs(20);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut o = Orphans::default();
        let committed = BTreeMap::from([(0, Some(10)), (1, Some(50)), (2, None)]);
        let ends = BTreeMap::from([(0, 50), (1, 50), (2, 0)]);
        // 1 is at its end, 2 is empty: never orphaned. 0 is, once 20 s have passed.
        assert!(o.observe(&committed, &ends, at(0), limit).is_empty());
        assert!(o.observe(&committed, &ends, at(20), limit).is_empty());
        assert_eq!(o.observe(&committed, &ends, at(21), limit), vec![0]);
        // A commit that moves restarts the clock: somebody consumes it.
        let moved = BTreeMap::from([(0, Some(11)), (1, Some(50)), (2, None)]);
        assert!(o.observe(&moved, &ends, at(22), limit).is_empty());
        assert!(o.observe(&moved, &ends, at(42), limit).is_empty());
        assert_eq!(o.observe(&moved, &ends, at(43), limit), vec![0]);
        // Never committed while its log has rows: orphaned as well.
        let mut o = Orphans::default();
        let none = BTreeMap::from([(3, None)]);
        let grown = BTreeMap::from([(3, 5)]);
        assert!(o.observe(&none, &grown, at(0), limit).is_empty());
        assert_eq!(o.observe(&none, &grown, at(21), limit), vec![3]);
        // Assigned here since (left the map): forgotten.
        assert!(
            o.observe(&BTreeMap::new(), &grown, at(22), limit)
                .is_empty()
        );
        assert!(o.observe(&none, &grown, at(23), limit).is_empty());
    }
}
