//! Event-time watermarks: how far the stream's event time has certainly progressed.
//!
//! Each Kafka partition's watermark is the highest `ts` it delivered minus the allowed
//! lateness. The stream's watermark is the minimum over active partitions; a partition that
//! delivered nothing for the idle timeout stops holding it back. When every partition is idle,
//! the input has stopped (or paused): the watermark then advances with processing time from
//! the highest event time seen, `max_ts + (now - last_arrival)`, so the last windows close
//! instead of waiting for data that may never come. The watermark never goes back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct WatermarkConfig {
    pub lateness_ms: i64,
    pub idle_timeout: Duration,
}

impl Default for WatermarkConfig {
    fn default() -> Self {
        Self {
            lateness_ms: 1_000,
            idle_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PartitionClock {
    max_ts: i64,
    last_arrival: Instant,
}

#[derive(Debug)]
pub struct Watermarks {
    config: WatermarkConfig,
    partitions: HashMap<i32, PartitionClock>,
    current: Option<i64>,
}

impl Watermarks {
    pub fn new(config: WatermarkConfig) -> Self {
        Self {
            config,
            partitions: HashMap::new(),
            current: None,
        }
    }

    pub fn config(&self) -> WatermarkConfig {
        self.config
    }

    /// Records that `partition` delivered rows up to event time `max_ts` at `now`.
    pub fn observe(&mut self, partition: i32, max_ts: i64, now: Instant) {
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            max_ts,
            last_arrival: now,
        });
        clock.max_ts = clock.max_ts.max(max_ts);
        clock.last_arrival = now;
    }

    /// Recomputes the stream watermark at `now` and returns it.
    pub fn advance(&mut self, now: Instant) -> Option<i64> {
        let idle = self.config.idle_timeout;
        let active = self
            .partitions
            .values()
            .filter(|c| now.saturating_duration_since(c.last_arrival) < idle)
            .map(|c| c.max_ts)
            .min();
        let candidate = match active {
            Some(min) => Some(min - self.config.lateness_ms),
            None => {
                let max_ts = self.partitions.values().map(|c| c.max_ts).max();
                let last = self.partitions.values().map(|c| c.last_arrival).max();
                match (max_ts, last) {
                    (Some(m), Some(l)) => {
                        Some(m + now.saturating_duration_since(l).as_millis() as i64)
                    }
                    _ => None,
                }
            }
        };
        if let Some(c) = candidate {
            self.current = Some(self.current.map_or(c, |w| w.max(c)));
        }
        self.current
    }

    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// Highest event time seen on any partition.
    pub fn max_event_time(&self) -> Option<i64> {
        self.partitions.values().map(|c| c.max_ts).max()
    }

    /// True when no partition delivered anything for the idle timeout.
    pub fn input_idle(&self, now: Instant) -> bool {
        !self.partitions.is_empty()
            && self
                .partitions
                .values()
                .all(|c| now.saturating_duration_since(c.last_arrival) >= self.config.idle_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wm() -> Watermarks {
        Watermarks::new(WatermarkConfig {
            lateness_ms: 1_000,
            idle_timeout: Duration::from_secs(2),
        })
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
    fn idle_partition_stops_holding_back() {
        let mut w = wm();
        let t = Instant::now();
        w.observe(0, 10_000, t);
        w.observe(1, 5_000, t);
        assert_eq!(w.advance(t), Some(4_000));
        let later = t + Duration::from_secs(3);
        w.observe(0, 20_000, later);
        assert_eq!(w.advance(later), Some(19_000), "partition 1 is idle");
    }

    #[test]
    fn whole_input_idle_advances_with_processing_time() {
        let mut w = wm();
        let t = Instant::now();
        w.observe(0, 10_000, t);
        assert_eq!(w.advance(t + Duration::from_millis(1_500)), Some(9_000));
        assert!(!w.input_idle(t + Duration::from_millis(1_500)));
        assert_eq!(w.advance(t + Duration::from_secs(2)), Some(12_000));
        assert!(w.input_idle(t + Duration::from_secs(2)));
        assert_eq!(w.advance(t + Duration::from_secs(5)), Some(15_000));
    }

    #[test]
    fn never_goes_back() {
        let mut w = wm();
        let t = Instant::now();
        w.observe(0, 10_000, t);
        w.advance(t + Duration::from_secs(10));
        w.observe(0, 11_000, t + Duration::from_secs(10));
        assert_eq!(w.advance(t + Duration::from_secs(10)), Some(20_000));
    }
}
