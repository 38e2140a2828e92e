//! Event-time watermarks: how far the stream's event time has certainly progressed.
//!
//! Each Kafka partition's watermark is the highest `ts` it delivered minus the allowed
//! lateness; the stream's watermark is the minimum over the assigned partitions. A partition
//! that has not delivered anything yet holds the watermark back (its data may be old) until it
//! has been at the end of its log for the idle timeout, counted from when rows first arrived
//! on any partition: a producer that starts writing to every partition at once reaches them at
//! slightly different moments, and the first rows of the slower ones are not late for that.
//! A partition that is at the end of its log and has received
//! nothing for the idle timeout stops holding it back. When every partition is idle the input
//! has stopped (or paused): the watermark then advances with processing time from the highest
//! event time seen, `max_ts + (confirmed - last_arrival)`, so the last windows close instead of
//! waiting for data that may never come. A consumer catching up on old data is never idle,
//! however long a fetch takes. The watermark never goes back.
//!
//! Idleness is a fact the source must keep confirming, not an assumption that lasts: a Kafka
//! consumer re-asks the broker where the end of each log is, and a partition counts as quiet
//! only up to the latest answer (`confirmed`). When the broker goes away the answers stop, and
//! so does the watermark, however long the outage: the rows produced meanwhile are not late
//! when they arrive. An in-process source (`confirmed` = None) is believed until it says
//! otherwise.
//!
//! A server may read two sources at once (a Kafka topic and the game's UDP port): each keeps
//! its own partitions' clocks ([`Watermarks`]) and the stream's watermark is the minimum over
//! the sources ([`StreamWatermarks`]) whose input is not idle, as within a source: a topic at
//! the end of its log does not hold back the game's laps. A source that has delivered no rows
//! yet holds nothing back when it is in-process (the game is not running) or quiet at the end
//! of its log (an empty topic).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct WatermarkConfig {
    pub lateness_ms: i64,
    pub idle_timeout: Duration,
    /// The source reports which partitions it owns (Kafka): until it has, nothing is known
    /// about the partitions not seen yet, and the watermark waits.
    pub require_assignment: bool,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        Self {
            lateness_ms: 1_000,
            idle_timeout: Duration::from_secs(1),
            require_assignment: false,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct PartitionClock {
    max_ts: Option<i64>,
    last_arrival: Option<Instant>,
    /// Since when the partition has been at the end of its log (None = behind, or unknown).
    caught_up_at: Option<Instant>,
    /// The source's latest confirmation that it still is (None: believed until told otherwise).
    confirmed_at: Option<Instant>,
}

#[derive(Debug)]
pub(crate) struct Watermarks {
    config: WatermarkConfig,
    partitions: HashMap<i32, PartitionClock>,
    /// The partitions this consumer owns (None = every partition seen so far).
    assigned: Option<BTreeSet<i32>>,
    current: Option<i64>,
    /// When rows first arrived on any partition.
    first_arrival: Option<Instant>,
    /// The lowest event time (minus the lateness) of the partitions another server of the
    /// group owns, or that wait for an owner: the watermark stays at or behind it
    /// (`engine::handover`).
    held: Option<i64>,
}

impl Watermarks {
    pub(crate) fn new(config: WatermarkConfig) -> Self {
        Self {
            config,
            partitions: HashMap::new(),
            assigned: None,
            current: None,
            first_arrival: None,
            held: None,
        }
    }

    /// Records that `partition` delivered rows up to event time `max_ts` at `now`.
    pub(crate) fn observe(&mut self, partition: i32, max_ts: i64, now: Instant) {
        let c = self.partitions.entry(partition).or_default();
        c.max_ts = Some(c.max_ts.map_or(max_ts, |m| m.max(max_ts)));
        c.last_arrival = Some(now);
        c.caught_up_at = None;
        c.confirmed_at = None;
        self.first_arrival.get_or_insert(now);
    }

    /// Records the consumer's assignment (when known) and which partitions are at the end of
    /// their log after the latest poll, as the source confirmed at `confirmed` (None: an
    /// in-process source, whose word holds until it says otherwise).
    pub(crate) fn progress(
        &mut self,
        assigned: Option<&[i32]>,
        caught_up: &[i32],
        confirmed: Option<Instant>,
        now: Instant,
    ) {
        if let Some(a) = assigned {
            self.assigned = Some(a.iter().copied().collect());
        }
        for (p, c) in self.partitions.iter_mut() {
            if !caught_up.contains(p) {
                c.caught_up_at = None;
                c.confirmed_at = None;
            }
        }
        let confirmed = confirmed.map(|c| c.min(now));
        let gap = self.config.idle_timeout;
        for p in caught_up {
            let c = self.partitions.entry(*p).or_default();
            // Unconfirmed for longer than the idle timeout (the broker was away, or the
            // consumer stuck): quiet is only known again from this confirmation on.
            if let (Some(prev), Some(new)) = (c.confirmed_at, confirmed)
                && new.saturating_duration_since(prev) > gap
            {
                c.caught_up_at = Some(new);
            }
            c.caught_up_at.get_or_insert(confirmed.unwrap_or(now));
            c.confirmed_at = match (c.confirmed_at, confirmed) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (_, b) => b,
            };
        }
    }

    /// Until when `c` is known to have been at the end of its log (None: it is not).
    fn known_quiet_until(c: &PartitionClock, now: Instant) -> Option<Instant> {
        c.caught_up_at?;
        Some(c.confirmed_at.unwrap_or(now).min(now))
    }

    fn relevant(&self) -> Vec<i32> {
        match &self.assigned {
            Some(a) => a.iter().copied().collect(),
            None => self.partitions.keys().copied().collect(),
        }
    }

    /// Since when `c` is known to have been quiet at the end of its log.
    fn quiet_since(c: &PartitionClock) -> Option<Instant> {
        let since = c.caught_up_at?;
        Some(c.last_arrival.map_or(since, |l| l.max(since)))
    }

    /// Quiet at the end of its log for the idle timeout, as confirmed within the idle timeout
    /// (an older claim is stale: the partition may have data by now).
    ///
    /// A claim confirmed before the newest rows of any partition arrived is stale too: the
    /// producer is evidently active, and this partition's rows may be on their way.
    /// `newest` is the latest arrival over `relevant` (see [`Self::newest_arrival`]).
    fn is_idle(&self, c: &PartitionClock, newest: Option<Instant>, now: Instant) -> bool {
        if let (Some(confirmed), Some(newest)) = (c.confirmed_at, newest)
            && confirmed < newest
        {
            return false;
        }
        match (Self::quiet_since(c), Self::known_quiet_until(c, now)) {
            (Some(since), Some(until)) => {
                now.saturating_duration_since(until) <= self.config.idle_timeout
                    && until.saturating_duration_since(since) >= self.config.idle_timeout
            }
            _ => false,
        }
    }

    /// Whether `c`, which has delivered nothing yet, may still deliver rows older than what the
    /// others did: unless it has been at the end of its log for the idle timeout since rows
    /// first arrived anywhere, it may (its first rows may be on their way).
    fn may_deliver_old_rows(&self, c: &PartitionClock, now: Instant) -> bool {
        let Some(since) = Self::quiet_since(c) else {
            return true;
        };
        let since = self.first_arrival.map_or(since, |f| f.max(since));
        now.saturating_duration_since(since) < self.config.idle_timeout
    }

    /// The latest arrival of rows on any of `relevant`.
    fn newest_arrival(&self, relevant: &[i32]) -> Option<Instant> {
        relevant
            .iter()
            .filter_map(|p| self.partitions.get(p)?.last_arrival)
            .max()
    }

    /// Recomputes the stream watermark at `now` and returns it.
    pub(crate) fn advance(&mut self, now: Instant) -> Option<i64> {
        if self.config.require_assignment && self.assigned.is_none() {
            return self.current;
        }
        let relevant = self.relevant();
        let newest = self.newest_arrival(&relevant);
        let mut active_min: Option<i64> = None;
        for p in &relevant {
            let c = self.partitions.get(p).copied().unwrap_or_default();
            let Some(t) = c.max_ts else {
                // Not read yet, or read nothing yet: it may hold old data.
                if self.may_deliver_old_rows(&c, now) {
                    return self.current;
                }
                continue;
            };
            if self.is_idle(&c, newest, now) {
                continue;
            }
            active_min = Some(active_min.map_or(t, |m| m.min(t)));
        }
        let candidate = match active_min {
            Some(m) => Some(m - self.config.lateness_ms),
            None => {
                let max_ts = relevant
                    .iter()
                    .filter_map(|p| self.partitions.get(p)?.max_ts)
                    .max();
                // Event time moves on with the time the input is known to have been quiet:
                // from the last arrival or, if later (after a restart, or an outage), from
                // when it was found at its end again.
                let last = relevant
                    .iter()
                    .filter_map(|p| Self::quiet_since(self.partitions.get(p)?))
                    .max();
                // Only as far as every partition is known to have stayed quiet.
                let until = relevant
                    .iter()
                    .filter_map(|p| Self::known_quiet_until(self.partitions.get(p)?, now))
                    .min();
                match (max_ts, last, until) {
                    (Some(m), Some(l), Some(u)) => {
                        Some(m + u.saturating_duration_since(l).as_millis() as i64)
                    }
                    _ => None,
                }
            }
        };
        let candidate = match (candidate, self.held) {
            (Some(c), Some(h)) => Some(c.min(h)),
            (c, _) => c,
        };
        if let Some(c) = candidate {
            if self.current.is_none_or(|w| c > w) {
                tracing::trace!(watermark = c, ?relevant, partitions = ?self.partitions, assigned = ?self.assigned, "watermark advanced");
            }
            self.current = Some(self.current.map_or(c, |w| w.max(c)));
        }
        self.current
    }

    /// Highest event time seen on any partition.
    pub(crate) fn max_event_time(&self) -> Option<i64> {
        self.partitions.values().filter_map(|c| c.max_ts).max()
    }

    /// The event time of each partition owned: None when quiet or nothing delivered yet.
    fn partition_clocks(&self, now: Instant) -> BTreeMap<i32, Option<i64>> {
        let relevant = self.relevant();
        let newest = self.newest_arrival(&relevant);
        relevant
            .iter()
            .map(|p| {
                let c = self.partitions.get(p).copied().unwrap_or_default();
                let t = c.max_ts.filter(|_| !self.is_idle(&c, newest, now));
                (*p, t)
            })
            .collect()
    }

    /// True when every partition is at the end of its log and quiet for the idle timeout.
    pub(crate) fn input_idle(&self, now: Instant) -> bool {
        let relevant = self.relevant();
        let newest = self.newest_arrival(&relevant);
        !relevant.is_empty()
            && relevant.iter().all(|p| {
                self.partitions
                    .get(p)
                    .is_some_and(|c| self.is_idle(c, newest, now))
            })
    }
}

/// The stream's watermark over its sources, by topic (see the module's last paragraph).
#[derive(Debug)]
pub(crate) struct StreamWatermarks {
    config: WatermarkConfig,
    sources: BTreeMap<String, Watermarks>,
    current: Option<i64>,
}

/// The sources that run in the server's process (the bundled replay, the UDP port): they own
/// every partition they have, so no assignment is awaited.
fn in_process(topic: &str) -> bool {
    topic == crate::ingest::udp::TOPIC || topic == crate::ingest::embedded::TOPIC
}

impl StreamWatermarks {
    pub(crate) fn new(config: WatermarkConfig) -> Self {
        Self {
            config,
            sources: BTreeMap::new(),
            current: None,
        }
    }

    /// The event time of every partition owned here, per topic: None for one that is quiet
    /// (it holds nothing back), or that delivered nothing yet.
    pub(crate) fn partition_clocks(
        &self,
        now: Instant,
    ) -> Vec<(String, BTreeMap<i32, Option<i64>>)> {
        self.sources
            .iter()
            .filter(|(t, _)| !in_process(t))
            .map(|(t, s)| (t.clone(), s.partition_clocks(now)))
            .collect()
    }

    /// Holds `topic`'s part of the watermark at `floor` (event time reached elsewhere, minus
    /// the lateness as for a partition owned here); None releases it.
    pub(crate) fn hold_at(&mut self, topic: &str, floor: Option<i64>) {
        let lateness = self.config.lateness_ms;
        self.source(topic).held = floor.map(|f| f - lateness);
    }

    fn source(&mut self, topic: &str) -> &mut Watermarks {
        let config = WatermarkConfig {
            require_assignment: self.config.require_assignment && !in_process(topic),
            ..self.config
        };
        if !self.sources.contains_key(topic) {
            self.sources
                .insert(topic.to_string(), Watermarks::new(config));
        }
        self.sources.get_mut(topic).expect("just inserted")
    }

    /// See [`Watermarks::observe`].
    pub(crate) fn observe(&mut self, topic: &str, partition: i32, max_ts: i64, now: Instant) {
        self.source(topic).observe(partition, max_ts, now);
    }

    /// See [`Watermarks::progress`].
    pub(crate) fn progress(
        &mut self,
        topic: &str,
        assigned: Option<&[i32]>,
        caught_up: &[i32],
        confirmed: Option<Instant>,
        now: Instant,
    ) {
        self.source(topic)
            .progress(assigned, caught_up, confirmed, now);
    }

    /// The minimum over the sources whose input is not idle (the maximum when every one is):
    /// a source that went quiet holds the others back no more than a quiet partition does. It
    /// waits while a source that may deliver rows has no watermark yet (an empty topic at its
    /// end may not, once quiet for the idle timeout).
    pub(crate) fn advance(&mut self, now: Instant) -> Option<i64> {
        let mut marks = Vec::with_capacity(self.sources.len());
        for (topic, s) in self.sources.iter_mut() {
            match s.advance(now) {
                // Held at another server's partition: not idle, whatever this server's are.
                Some(w) if s.held.is_some_and(|h| h <= w) => marks.push((w, false)),
                Some(w) => marks.push((w, s.input_idle(now))),
                // Nothing delivered yet: an in-process source (the game not running) or a
                // topic quiet at its end (empty) holds nothing back.
                None if s.max_event_time().is_none()
                    && (in_process(topic) || s.input_idle(now)) => {}
                None => return self.current,
            }
        }
        let active = marks.iter().filter(|(_, idle)| !idle).map(|(w, _)| *w);
        // Every input quiet: each source's watermark moves on with processing time, and the
        // stream's with the one furthest on, as over the partitions of one source.
        let mark = match active.clone().min() {
            Some(m) => Some(m),
            None => marks.iter().map(|(w, _)| *w).max(),
        };
        if let Some(m) = mark {
            self.current = Some(self.current.map_or(m, |w| w.max(m)));
        }
        self.current
    }

    pub(crate) fn current(&self) -> Option<i64> {
        self.current
    }

    /// Highest event time seen on any source.
    pub(crate) fn max_event_time(&self) -> Option<i64> {
        self.sources
            .values()
            .filter_map(Watermarks::max_event_time)
            .max()
    }

    /// True when every source's input is idle (see [`Watermarks::input_idle`]).
    pub(crate) fn input_idle(&self, now: Instant) -> bool {
        !self.sources.is_empty() && self.sources.values().all(|s| s.input_idle(now))
    }

    pub(crate) fn snapshot(&self) -> crate::engine::snapshot::WatermarkState {
        crate::engine::snapshot::WatermarkState {
            current: self.current,
            partitions: Vec::new(),
            topics: self
                .sources
                .iter()
                .map(|(t, s)| (t.clone(), s.snapshot().partitions))
                .collect(),
        }
    }

    /// Restores the event-time progress of a checkpoint. One written before there were
    /// several sources has its partitions without a topic: they are `legacy_topic`'s.
    pub(crate) fn restore(
        &mut self,
        state: &crate::engine::snapshot::WatermarkState,
        legacy_topic: Option<&str>,
    ) {
        self.current = state.current;
        let legacy = legacy_topic
            .filter(|_| !state.partitions.is_empty())
            .map(|t| (t.to_string(), state.partitions.clone()));
        for (topic, partitions) in state.topics.clone().into_iter().chain(legacy) {
            self.source(&topic)
                .restore(&crate::engine::snapshot::WatermarkState {
                    current: state.current,
                    partitions,
                    topics: BTreeMap::new(),
                });
        }
    }
}

impl Watermarks {
    pub(crate) fn snapshot(&self) -> crate::engine::snapshot::WatermarkState {
        let mut partitions: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .filter_map(|(p, c)| Some((*p, c.max_ts?)))
            .collect();
        partitions.sort_unstable();
        crate::engine::snapshot::WatermarkState {
            current: self.current,
            partitions,
            topics: BTreeMap::new(),
        }
    }

    /// Restores the event-time progress of a checkpoint (arrival times start afresh).
    pub(crate) fn restore(&mut self, state: &crate::engine::snapshot::WatermarkState) {
        self.current = state.current;
        for (p, ts) in &state.partitions {
            self.partitions.entry(*p).or_default().max_ts = Some(*ts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wm() -> Watermarks {
        Watermarks::new(WatermarkConfig {
            lateness_ms: 1_000,
            idle_timeout: Duration::from_secs(2),
            require_assignment: false,
        })
    }

    #[test]
    fn after_a_restore_the_watermark_waits_for_the_assignment() {
        let mut w = Watermarks::new(WatermarkConfig {
            require_assignment: true,
            ..WatermarkConfig::default()
        });
        let t = Instant::now();
        // A checkpoint taken before partition 0 delivered anything.
        w.restore(&crate::engine::snapshot::WatermarkState {
            current: None,
            partitions: vec![(1, 50_000), (2, 60_000)],
            ..Default::default()
        });
        assert_eq!(
            w.advance(t),
            None,
            "partition 0 may exist and hold older rows"
        );
        w.progress(Some(&[]), &[], None, t);
        assert_eq!(w.advance(t), None, "no partitions yet (rebalancing)");
        w.progress(Some(&[0, 1, 2]), &[], None, t);
        assert_eq!(w.advance(t), None, "partition 0 not read yet");
        w.observe(0, 10_000, t);
        assert_eq!(w.advance(t), Some(9_000));
    }

    #[test]
    fn minimum_over_partitions_minus_lateness() {
        let mut w = wm();
        let t = Instant::now();
        w.observe(0, 10_000, t);
        w.observe(1, 7_000, t);
        assert_eq!(w.advance(t), Some(6_000));
        w.observe(1, 12_000, t);
        assert_eq!(w.advance(t), Some(9_000));
    }

    #[test]
    fn an_assigned_partition_not_read_yet_holds_the_watermark() {
        let mut w = wm();
        let t = Instant::now();
        w.progress(Some(&[0, 1]), &[], None, t);
        w.observe(0, 10_000, t);
        assert_eq!(
            w.advance(t + Duration::from_secs(60)),
            None,
            "partition 1 may still hold old rows"
        );
        w.progress(None, &[1], None, t);
        assert_eq!(
            w.advance(t + Duration::from_millis(1_900)),
            None,
            "partition 1 is at the end of its log, but rows only just started arriving on 0"
        );
        assert_eq!(
            w.advance(t + Duration::from_secs(2)),
            Some(9_000),
            "partition 1 is empty: at the end of its log for the idle timeout"
        );
    }

    #[test]
    fn first_rows_reaching_partitions_at_different_moments_are_not_late() {
        let mut w = wm();
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        // The consumer started long before the producer: every partition empty, at its end.
        w.progress(Some(&[0, 1]), &[0, 1], Some(t), t);
        w.progress(Some(&[0, 1]), &[0, 1], Some(at(10_000)), at(10_000));
        // The producer writes to both; partition 0's rows are fetched first.
        w.observe(0, 20_000, at(10_050));
        w.progress(Some(&[0, 1]), &[1], Some(at(10_100)), at(10_100));
        assert_eq!(
            w.advance(at(10_100)),
            None,
            "partition 1's first rows may be on their way"
        );
        w.observe(1, 12_000, at(10_300));
        assert_eq!(
            w.advance(at(10_300)),
            Some(11_000),
            "not late: 12,000 counts"
        );
    }

    #[test]
    fn idle_partition_stops_holding_back_only_at_the_end_of_its_log() {
        let mut w = wm();
        let t = Instant::now();
        w.observe(0, 10_000, t);
        w.observe(1, 5_000, t);
        assert_eq!(w.advance(t), Some(4_000));
        let later = t + Duration::from_secs(3);
        w.observe(0, 20_000, later);
        assert_eq!(
            w.advance(later),
            Some(4_000),
            "partition 1 is behind, not idle"
        );
        w.progress(None, &[1], None, t);
        assert_eq!(
            w.advance(later),
            Some(19_000),
            "partition 1 is caught up and quiet"
        );
    }

    #[test]
    fn whole_input_idle_advances_with_processing_time() {
        let mut w = wm();
        let t = Instant::now();
        w.observe(0, 10_000, t);
        w.progress(None, &[0], None, t);
        assert_eq!(w.advance(t + Duration::from_millis(1_500)), Some(9_000));
        assert!(!w.input_idle(t + Duration::from_millis(1_500)));
        assert_eq!(w.advance(t + Duration::from_secs(2)), Some(12_000));
        assert!(w.input_idle(t + Duration::from_secs(2)));
        assert_eq!(w.advance(t + Duration::from_secs(5)), Some(15_000));
    }

    #[test]
    fn a_partition_no_longer_reported_at_its_end_is_not_idle() {
        let mut w = wm();
        let t = Instant::now();
        w.observe(0, 10_000, t);
        w.progress(None, &[0], None, t);
        // The broker went away: nobody knows where the end is any more.
        w.progress(None, &[], None, t + Duration::from_millis(100));
        assert_eq!(w.advance(t + Duration::from_secs(30)), Some(9_000));
        assert!(!w.input_idle(t + Duration::from_secs(30)));
    }

    #[test]
    fn idleness_lasts_only_as_long_as_the_source_confirms_it() {
        let mut w = wm();
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        w.observe(0, 10_000, t);
        w.progress(None, &[0], Some(at(100)), at(100));
        w.progress(None, &[0], Some(at(1_500)), at(1_500));
        // Confirmed quiet for 1.4 s only: not idle yet, whatever the clock says now.
        assert_eq!(w.advance(at(1_600)), Some(9_000));
        assert!(!w.input_idle(at(1_600)));
        w.progress(None, &[0], Some(at(2_500)), at(2_500));
        assert!(w.input_idle(at(2_500)));
        assert_eq!(w.advance(at(2_600)), Some(12_400));
        // The broker goes away: no more confirmations, the watermark stays where it was
        // confirmed, however long the outage lasts.
        assert_eq!(w.advance(at(4_000)), Some(12_400));
        assert!(!w.input_idle(at(40_000)), "a stale claim is not idleness");
        assert_eq!(w.advance(at(40_000)), Some(12_400));
        // Back, still at the end: quiet counts again from there, not across the outage.
        w.progress(None, &[0], Some(at(41_000)), at(41_000));
        assert_eq!(w.advance(at(41_000)), Some(12_400));
        w.progress(None, &[0], Some(at(42_000)), at(42_000));
        w.progress(None, &[0], Some(at(43_500)), at(43_500));
        assert_eq!(w.advance(at(43_500)), Some(12_500));
    }

    #[test]
    fn restored_and_at_the_end_it_idles_from_when_it_was_found_there() {
        let mut w = wm();
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        // A checkpoint taken when everything had been read; nothing arrives after the restart.
        w.restore(&crate::engine::snapshot::WatermarkState {
            current: Some(9_000),
            partitions: vec![(0, 10_000), (1, 8_000)],
            ..Default::default()
        });
        w.progress(Some(&[0, 1]), &[0, 1], Some(at(100)), at(100));
        assert_eq!(w.advance(at(100)), Some(9_000));
        w.progress(Some(&[0, 1]), &[0, 1], Some(at(1_100)), at(1_100));
        w.progress(Some(&[0, 1]), &[0, 1], Some(at(2_100)), at(2_100));
        assert!(w.input_idle(at(2_100)));
        assert_eq!(w.advance(at(3_100)), Some(12_000));
    }

    #[test]
    fn a_quiet_partition_whose_claim_went_stale_holds_the_watermark_again() {
        let mut w = wm();
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        w.observe(0, 10_000, t);
        w.observe(1, 5_000, t);
        for ms in [0, 1_000, 2_000] {
            w.progress(None, &[1], Some(at(ms)), at(ms));
        }
        w.observe(0, 20_000, at(2_000));
        assert_eq!(w.advance(at(2_000)), Some(19_000), "1 is confirmed quiet");
        w.observe(0, 30_000, at(5_000));
        assert_eq!(
            w.advance(at(5_000)),
            Some(19_000),
            "1 was last confirmed 3 s ago: it may have rows by now"
        );
    }

    #[test]
    fn a_claim_older_than_the_newest_rows_holds_the_watermark() {
        let mut w = wm();
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        w.observe(0, 10_000, t);
        w.observe(1, 5_000, t);
        for ms in [0, 1_000, 2_000] {
            w.progress(None, &[1], Some(at(ms)), at(ms));
        }
        // Rows of partition 0 arrive after partition 1 was last found at its end.
        w.observe(0, 20_000, at(2_050));
        assert_eq!(
            w.advance(at(2_050)),
            Some(4_000),
            "1's rows may be on their way"
        );
        w.progress(None, &[1], Some(at(2_100)), at(2_100));
        assert_eq!(w.advance(at(2_100)), Some(19_000), "confirmed again since");
    }

    #[test]
    fn a_slow_fetch_while_catching_up_is_not_idleness() {
        let mut w = wm();
        let t = Instant::now();
        w.observe(0, 10_000, t);
        assert_eq!(w.advance(t + Duration::from_secs(30)), Some(9_000));
    }

    #[test]
    fn never_goes_back() {
        let mut w = wm();
        let t = Instant::now();
        w.observe(0, 10_000, t);
        w.progress(None, &[0], None, t);
        w.advance(t + Duration::from_secs(10));
        w.observe(0, 11_000, t + Duration::from_secs(10));
        assert_eq!(w.advance(t + Duration::from_secs(10)), Some(20_000));
    }

    /// A server on a Kafka topic (`cars`) and the game's UDP port.
    fn kafka_and_udp() -> StreamWatermarks {
        StreamWatermarks::new(WatermarkConfig {
            lateness_ms: 1_000,
            idle_timeout: Duration::from_secs(2),
            require_assignment: true,
        })
    }

    /// Kafka and the game's UDP port in one server: partition 0 of each is its own clock, the
    /// stream waits for the slower, and a UDP port that never received rows holds nothing back.
    #[test]
    fn two_sources_each_keep_their_partitions() {
        let mut w = kafka_and_udp();
        let t = Instant::now();
        w.progress("udp", None, &[0], None, t);
        assert_eq!(w.advance(t), None, "Kafka has not been assigned yet");
        w.progress("cars", Some(&[0]), &[], None, t);
        w.observe("cars", 0, 10_000, t);
        assert_eq!(w.advance(t), Some(9_000), "no UDP rows: nothing held back");
        w.observe("udp", 0, 50_000, t);
        w.observe("cars", 0, 12_000, t);
        assert_eq!(w.advance(t), Some(11_000), "Kafka's partition 0 is behind");
        w.observe("udp", 0, 5_000, t);
        assert_eq!(w.advance(t), Some(11_000), "never goes back");
        // Kafka goes quiet at the end of its log: the game's clock leads.
        let later = t + Duration::from_secs(3);
        for s in 0..=3 {
            let at = t + Duration::from_secs(s);
            w.progress("cars", Some(&[0]), &[0], Some(at), at);
        }
        assert_eq!(
            w.advance(later),
            Some(49_000),
            "an idle source holds nothing back"
        );
        // Then the game stops too: the stream moves on with the furthest source's clock.
        w.progress("udp", None, &[0], None, later);
        for s in 4..=6 {
            let at = t + Duration::from_secs(s);
            w.progress("cars", Some(&[0]), &[0], Some(at), at);
        }
        let end = t + Duration::from_secs(6);
        assert_eq!(w.advance(end), Some(53_000), "every source idle");
        let state = w.snapshot();
        assert_eq!(
            state.topics,
            [
                ("cars".to_string(), vec![(0, 12_000)]),
                ("udp".to_string(), vec![(0, 50_000)])
            ]
            .into()
        );
        let mut r = StreamWatermarks::new(WatermarkConfig::default());
        r.restore(&state, None);
        assert_eq!(
            (r.current(), r.max_event_time()),
            (Some(53_000), Some(50_000))
        );
    }

    /// An empty topic, quiet at its end, does not hold back the game's rows.
    #[test]
    fn an_empty_topic_holds_nothing_back() {
        let mut w = kafka_and_udp();
        let t = Instant::now();
        w.observe("udp", 0, 50_000, t);
        w.progress("udp", None, &[], None, t);
        w.progress("cars", Some(&[0]), &[0], Some(t), t);
        assert_eq!(w.advance(t), None, "the topic may still deliver old rows");
        for s in 1..=3 {
            let at = t + Duration::from_secs(s);
            w.progress("cars", Some(&[0]), &[0], Some(at), at);
        }
        let later = t + Duration::from_secs(3);
        assert_eq!(w.advance(later), Some(49_000), "empty and quiet");
    }

    /// A checkpoint from before `topics` restores its partitions under its offsets' topic.
    #[test]
    fn an_older_checkpoint_restores_under_its_topic() {
        let mut w = StreamWatermarks::new(WatermarkConfig::default());
        w.restore(
            &crate::engine::snapshot::WatermarkState {
                current: Some(4_000),
                partitions: vec![(0, 5_000), (1, 7_000)],
                ..Default::default()
            },
            Some("cars"),
        );
        assert_eq!(w.snapshot().topics["cars"], vec![(0, 5_000), (1, 7_000)]);
    }
}
