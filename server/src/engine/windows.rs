//! Window assignment and closing: which buffered partial aggregates a window holds, and when
//! the watermark closes it.
//!
//! Time windows (`date_bin`, hopping windows) close for every group at once, when the
//! watermark reaches their end. Lap windows close per car, when the watermark passes the first
//! sample of a later lap of that car (the lap's end), or when the car has sent nothing for the
//! inactivity gap in event time (it retired, or the stream ended).

use std::collections::{BTreeMap, HashMap};

use datafusion::arrow::array::RecordBatch;

use crate::error::Result;

/// What a stage's window is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WindowKind {
    /// `date_bin(size, ts)`: windows `[start, start + size)`.
    Tumbling { size_ms: i64 },
    /// `unnest(hop(ts, slide, size))`: overlapping windows `[start, start + size)`.
    Hopping { slide_ms: i64, size_ms: i64 },
    /// `GROUP BY driver, lap`: one window per car and lap.
    Lap { gap_ms: i64 },
}

impl WindowKind {
    pub(crate) fn describe(&self) -> String {
        match self {
            WindowKind::Tumbling { size_ms } => format!("tumbling window {}", fmt_ms(*size_ms)),
            WindowKind::Hopping { slide_ms, size_ms } => {
                format!(
                    "hopping window {} every {}",
                    fmt_ms(*size_ms),
                    fmt_ms(*slide_ms)
                )
            }
            WindowKind::Lap { gap_ms } => format!("lap window (gap {})", fmt_ms(*gap_ms)),
        }
    }
}

pub(crate) fn fmt_ms(ms: i64) -> String {
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Buffered partial aggregates of open time windows.
#[derive(Debug, Default)]
pub(crate) struct TimeWindows {
    size_ms: i64,
    /// window start -> partial rows
    open: BTreeMap<i64, Vec<RecordBatch>>,
    /// Every window ending at or before this is closed (the watermark at the last close).
    closed_through: Option<i64>,
}

impl TimeWindows {
    pub(crate) fn new(size_ms: i64) -> Self {
        Self {
            size_ms,
            ..Default::default()
        }
    }

    /// True when a row of the window starting at `start` arrives too late.
    pub(crate) fn is_late(&self, start: i64) -> bool {
        self.closed_through
            .is_some_and(|c| start + self.size_ms <= c)
    }

    pub(crate) fn insert(&mut self, start: i64, rows: RecordBatch) {
        self.open.entry(start).or_default().push(rows);
    }

    /// Removes and returns the windows the watermark has closed, oldest first.
    pub(crate) fn close(&mut self, watermark: i64) -> Vec<(i64, Vec<RecordBatch>)> {
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if *entry.key() + self.size_ms > watermark {
                break;
            }
            let start = *entry.key();
            closed.push((start, entry.remove()));
        }
        self.closed_through = Some(self.closed_through.map_or(watermark, |c| c.max(watermark)));
        closed
    }

    pub(crate) fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Partial-state rows held by the open windows.
    pub(crate) fn state_rows(&self) -> usize {
        self.open.values().flatten().map(|b| b.num_rows()).sum()
    }

    /// The open windows holding at least `min` partial batches (to be merged).
    pub(crate) fn crowded(&mut self, min: usize) -> Vec<&mut Vec<RecordBatch>> {
        self.open.values_mut().filter(|b| b.len() >= min).collect()
    }

    /// Takes out of every open window the rows `split` says are taken (`split` answers
    /// (taken, kept)): some cars' share, handed to another server.
    pub(crate) fn take_rows(&mut self, split: &mut Splitter<'_>) -> Result<TimeWindows> {
        let mut taken = TimeWindows::new(self.size_ms);
        for (start, rows) in self.open.iter_mut() {
            let t = split_batches(rows, split)?;
            if !t.is_empty() {
                taken.open.insert(*start, t);
            }
        }
        self.open.retain(|_, rows| !rows.is_empty());
        Ok(taken)
    }

    /// Adds windows taken from another pipeline of the same query.
    pub(crate) fn absorb(&mut self, other: TimeWindows) {
        for (start, rows) in other.open {
            self.open.entry(start).or_default().extend(rows);
        }
    }
}

/// Splits a batch into the rows taken and the rows kept.
pub(crate) type Splitter<'a> = dyn FnMut(&RecordBatch) -> Result<(RecordBatch, RecordBatch)> + 'a;

/// Splits every batch of `rows` with `split`: the rows kept stay in `rows`, the rows taken are
/// returned (empty batches left out of both).
pub(crate) fn split_batches(
    rows: &mut Vec<RecordBatch>,
    split: &mut Splitter<'_>,
) -> Result<Vec<RecordBatch>> {
    let (mut taken, mut kept) = (Vec::new(), Vec::new());
    for b in rows.drain(..) {
        let (t, k) = split(&b)?;
        if t.num_rows() > 0 {
            taken.push(t);
        }
        if k.num_rows() > 0 {
            kept.push(k);
        }
    }
    *rows = kept;
    Ok(taken)
}

/// One lap of one car: its partial rows and the event-time span of its samples.
#[derive(Debug, Default)]
struct LapWindow {
    rows: Vec<RecordBatch>,
    min_ts: Option<i64>,
}

#[derive(Debug, Default)]
struct CarLaps {
    open: BTreeMap<i64, LapWindow>,
    /// Laps up to and including this one are closed.
    closed_upto: Option<i64>,
    last_ts: i64,
}

/// Event time after which a silent key's state is released: a car (of a session, as every
/// key holds the session) whose last sample is this far behind the watermark has finished, as
/// every car of a looping replay's earlier rounds has. Its lap bookkeeping and its window
/// functions' context go; a sample of it older than that is late, a newer one starts afresh.
pub(crate) const RELEASE_IDLE_MS: i64 = 10 * 60 * 1000;

/// Buffered partial aggregates of open lap windows, per car (`car` is an opaque key: the
/// encoded driver and session values).
#[derive(Debug, Default)]
pub(crate) struct LapWindows {
    gap_ms: i64,
    cars: HashMap<Vec<u8>, CarLaps>,
    /// The latest sample of a released car: a car not tracked that sends a sample at or
    /// before it has its lap taken as closed (its rows are late).
    forgotten_upto: Option<i64>,
}

impl LapWindows {
    pub(crate) fn new(gap_ms: i64) -> Self {
        Self {
            gap_ms,
            cars: HashMap::new(),
            forgotten_upto: None,
        }
    }

    /// Records that `car` sent a sample of `lap` at `ts` (progress, not data).
    pub(crate) fn observe(&mut self, car: &[u8], lap: i64, ts: i64) {
        let c = match self.cars.get_mut(car) {
            Some(c) => c,
            None => {
                let released = self.forgotten_upto.is_some_and(|f| ts <= f);
                self.cars.entry(car.to_vec()).or_insert(CarLaps {
                    closed_upto: released.then_some(lap),
                    ..CarLaps::default()
                })
            }
        };
        c.last_ts = c.last_ts.max(ts);
        if c.closed_upto.is_some_and(|u| lap <= u) {
            return;
        }
        let w = c.open.entry(lap).or_default();
        w.min_ts = Some(w.min_ts.map_or(ts, |m| m.min(ts)));
    }

    pub(crate) fn is_late(&self, car: &[u8], lap: i64) -> bool {
        self.cars
            .get(car)
            .and_then(|c| c.closed_upto)
            .is_some_and(|u| lap <= u)
    }

    pub(crate) fn insert(&mut self, car: &[u8], lap: i64, rows: RecordBatch) {
        let c = match self.cars.get_mut(car) {
            Some(c) => c,
            None => self.cars.entry(car.to_vec()).or_default(),
        };
        c.open.entry(lap).or_default().rows.push(rows);
    }

    /// Removes and returns the laps the watermark has closed.
    pub(crate) fn close(&mut self, watermark: i64) -> Vec<(Vec<u8>, i64, Vec<RecordBatch>)> {
        let mut closed = Vec::new();
        for (car, c) in self.cars.iter_mut() {
            let inactive = c.last_ts + self.gap_ms <= watermark;
            // A lap ends where the next lap seen for this car starts.
            let laps: Vec<i64> = c.open.keys().copied().collect();
            let mut close_upto = None;
            for (i, lap) in laps.iter().enumerate() {
                let end = laps[i + 1..].iter().filter_map(|l| c.open[l].min_ts).min();
                if inactive || end.is_some_and(|e| e <= watermark) {
                    close_upto = Some(*lap);
                }
            }
            if let Some(upto) = close_upto {
                let keep = c.open.split_off(&(upto + 1));
                for (lap, w) in std::mem::replace(&mut c.open, keep) {
                    if !w.rows.is_empty() {
                        closed.push((car.clone(), lap, w.rows));
                    }
                }
                c.closed_upto = Some(c.closed_upto.map_or(upto, |u| u.max(upto)));
            }
        }
        closed.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        self.release_finished(watermark);
        closed
    }

    /// Forgets cars with no open lap that have been silent for [`RELEASE_IDLE_MS`].
    fn release_finished(&mut self, watermark: i64) {
        let mut forgotten = self.forgotten_upto;
        self.cars.retain(|_, c| {
            let keep = !c.open.is_empty() || c.last_ts.saturating_add(RELEASE_IDLE_MS) > watermark;
            if !keep {
                forgotten = Some(forgotten.map_or(c.last_ts, |f| f.max(c.last_ts)));
            }
            keep
        });
        self.forgotten_upto = forgotten;
    }

    pub(crate) fn open_windows(&self) -> usize {
        self.cars.values().map(|c| c.open.len()).sum()
    }

    /// Cars whose bookkeeping is held (open laps or not).
    #[cfg(test)]
    pub(crate) fn tracked(&self) -> usize {
        self.cars.len()
    }

    /// Partial-state rows held by the open laps.
    pub(crate) fn state_rows(&self) -> usize {
        self.cars
            .values()
            .flat_map(|c| c.open.values())
            .flat_map(|w| &w.rows)
            .map(|b| b.num_rows())
            .sum()
    }

    /// The open laps holding at least `min` partial batches (to be merged).
    pub(crate) fn crowded(&mut self, min: usize) -> Vec<&mut Vec<RecordBatch>> {
        self.cars
            .values_mut()
            .flat_map(|c| c.open.values_mut())
            .map(|w| &mut w.rows)
            .filter(|b| b.len() >= min)
            .collect()
    }

    /// Takes out the cars whose open laps' rows `split` takes (whole cars: a car's rows are
    /// all of one driver). A car with no rows in any open lap stays: nothing says whose it is,
    /// and the next owner learns its laps from the rows it reads.
    pub(crate) fn take_cars(&mut self, split: &mut Splitter<'_>) -> Result<LapWindows> {
        let mut taken = LapWindows::new(self.gap_ms);
        let mut moving = Vec::new();
        for (car, c) in &self.cars {
            let first = c
                .open
                .values()
                .flat_map(|w| &w.rows)
                .find(|b| b.num_rows() > 0);
            if let Some(b) = first
                && split(&b.slice(0, 1))?.0.num_rows() == 1
            {
                moving.push(car.clone());
            }
        }
        for car in moving {
            let c = self.cars.remove(&car).expect("car listed");
            taken.cars.insert(car, c);
        }
        Ok(taken)
    }

    /// Adds cars taken from another pipeline of the same query (replacing this one's, if any).
    pub(crate) fn absorb(&mut self, other: LapWindows) {
        self.cars.extend(other.cars);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::Int32Array;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn rows(n: i32) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int32, false)]));
        RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![n]))]).unwrap()
    }

    #[test]
    fn tumbling_windows_close_at_their_end() {
        let mut w = TimeWindows::new(1000);
        w.insert(0, rows(1));
        w.insert(1000, rows(2));
        assert!(w.close(999).is_empty());
        let closed = w.close(1000);
        assert_eq!(closed.iter().map(|c| c.0).collect::<Vec<_>>(), vec![0]);
        assert!(w.is_late(0));
        assert!(!w.is_late(1000));
        assert_eq!(w.close(5000).len(), 1);
        assert!(
            w.is_late(3000),
            "an empty window is closed too once the watermark passed it"
        );
    }

    #[test]
    fn laps_close_when_the_next_lap_starts_before_the_watermark() {
        let mut w = LapWindows::new(10_000);
        let car = b"VER".as_slice();
        for (lap, ts) in [(1, 0), (1, 500), (2, 1000), (2, 1500)] {
            w.observe(car, lap, ts);
            w.insert(car, lap, rows(lap as i32));
        }
        assert!(w.close(999).is_empty(), "lap 1 ends at 1000");
        let closed = w.close(1000);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].1, 1);
        assert!(w.is_late(car, 1));
        assert!(!w.is_late(car, 2));
        // No later lap: lap 2 closes after the inactivity gap.
        assert!(w.close(11_499).is_empty());
        assert_eq!(w.close(11_500).len(), 1);
    }

    #[test]
    fn cars_close_independently() {
        let mut w = LapWindows::new(60_000);
        w.observe(b"A", 1, 0);
        w.insert(b"A", 1, rows(1));
        w.observe(b"A", 2, 100);
        w.observe(b"B", 1, 0);
        w.insert(b"B", 1, rows(1));
        let closed = w.close(200);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].0, b"A".to_vec());
        assert_eq!(w.open_windows(), 2);
    }
}

mod checkpoint {
    //! Snapshot and restore of window buffers.
    use super::*;
    use crate::engine::snapshot::{Batches, CarState, LapState, LapWindowsState, TimeWindowsState};
    use crate::error::Result;

    impl TimeWindows {
        pub(crate) fn snapshot(&self, batches: &mut Batches) -> TimeWindowsState {
            TimeWindowsState {
                size_ms: self.size_ms,
                closed_through: self.closed_through,
                open: self
                    .open
                    .iter()
                    .map(|(s, b)| (*s, batches.put_all(b)))
                    .collect(),
            }
        }

        pub(crate) fn restore(state: &TimeWindowsState, batches: &Batches) -> Result<Self> {
            Ok(Self {
                size_ms: state.size_ms,
                closed_through: state.closed_through,
                open: state
                    .open
                    .iter()
                    .map(|(s, idx)| Ok((*s, batches.get_all(idx)?)))
                    .collect::<Result<_>>()?,
            })
        }
    }

    impl LapWindows {
        pub(crate) fn snapshot(&self, batches: &mut Batches) -> LapWindowsState {
            let mut cars: Vec<CarState> = self
                .cars
                .iter()
                .map(|(car, c)| CarState {
                    car: car.clone(),
                    closed_upto: c.closed_upto,
                    last_ts: c.last_ts,
                    open: c
                        .open
                        .iter()
                        .map(|(lap, w)| LapState {
                            lap: *lap,
                            min_ts: w.min_ts,
                            rows: batches.put_all(&w.rows),
                        })
                        .collect(),
                })
                .collect();
            cars.sort_by(|a, b| a.car.cmp(&b.car));
            LapWindowsState {
                gap_ms: self.gap_ms,
                cars,
                forgotten_upto: self.forgotten_upto,
            }
        }

        pub(crate) fn restore(state: &LapWindowsState, batches: &Batches) -> Result<Self> {
            let mut cars = HashMap::new();
            for c in &state.cars {
                let mut open = BTreeMap::new();
                for l in &c.open {
                    open.insert(
                        l.lap,
                        LapWindow {
                            rows: batches.get_all(&l.rows)?,
                            min_ts: l.min_ts,
                        },
                    );
                }
                cars.insert(
                    c.car.clone(),
                    CarLaps {
                        open,
                        closed_upto: c.closed_upto,
                        last_ts: c.last_ts,
                    },
                );
            }
            Ok(Self {
                gap_ms: state.gap_ms,
                cars,
                forgotten_upto: state.forgotten_upto,
            })
        }
    }
}
