//! Turns a recorded session into the stream of rows a replay publishes: cars interleaved by
//! event time, the field multiplied by virtual cars, and the session repeated when looping.
//!
//! Virtual car `k` of base car `VER` is `VER-k` (k = 2, 3, ...), running the same laps
//! `k - 1` times [`VIRTUAL_CAR_OFFSET_MS`] later. Loop round `r` (r = 2, 3, ...) is session
//! `NAME-rR`, shifted after the previous round's end.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use anyhow::{Result, bail};
use arrow::array::{
    Array, ArrayRef, Float64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::take_record_batch;
use pitwall_proto::schema::col;

use crate::session::Session;

/// Start offset between successive copies of the field.
pub const VIRTUAL_CAR_OFFSET_MS: i64 = 1_013;
/// Gap between the end of one loop round and the start of the next.
pub const LOOP_GAP_MS: i64 = 5_000;

/// One copy of the field: which base rows it replays and how it renames and shifts them.
struct Copy {
    rows: Arc<Vec<u32>>,
    offset_ms: i64,
    /// Name per base driver index, for this copy.
    names: Vec<Arc<str>>,
}

pub struct Fleet {
    base: RecordBatch,
    base_ts: Vec<i64>,
    base_driver_idx: Vec<u16>,
    copies: Vec<Copy>,
    session: String,
    span_ms: i64,
    looping: bool,
    // iteration state
    round: u32,
    cursors: Vec<usize>,
    heap: BinaryHeap<Reverse<(i64, usize)>>,
}

impl Fleet {
    /// `cars`: how many cars to replay (None = the recorded field).
    pub fn new(session: &Session, cars: Option<usize>, looping: bool) -> Result<Self> {
        let base = session.rows.clone();
        let drivers = session.drivers();
        if drivers.is_empty() {
            bail!("the session has no rows");
        }
        let driver_col = base
            .column_by_name(col::DRIVER)
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .expect("driver is utf8");
        let base_driver_idx: Vec<u16> = driver_col
            .iter()
            .map(|d| {
                drivers
                    .binary_search(&d.unwrap_or("").to_string())
                    .unwrap_or(0) as u16
            })
            .collect();
        let base_ts = session.ts().values().to_vec();
        let n_drivers = drivers.len();
        let cars = cars.unwrap_or(n_drivers).max(1);
        let n_copies = cars.div_ceil(n_drivers);
        let mut copies = Vec::with_capacity(n_copies);
        let all_rows: Arc<Vec<u32>> = Arc::new((0..base.num_rows() as u32).collect());
        for k in 0..n_copies {
            let included = (cars - k * n_drivers).min(n_drivers);
            let rows = if included == n_drivers {
                all_rows.clone()
            } else {
                Arc::new(
                    (0..base.num_rows() as u32)
                        .filter(|&r| (base_driver_idx[r as usize] as usize) < included)
                        .collect(),
                )
            };
            let names = drivers
                .iter()
                .map(|d| {
                    if k == 0 {
                        Arc::from(d.as_str())
                    } else {
                        Arc::from(format!("{d}-{}", k + 1))
                    }
                })
                .collect();
            copies.push(Copy {
                rows,
                offset_ms: k as i64 * VIRTUAL_CAR_OFFSET_MS,
                names,
            });
        }
        let (first, last) = session.time_span().expect("non-empty");
        let span_ms = last - first + (n_copies as i64 - 1) * VIRTUAL_CAR_OFFSET_MS + LOOP_GAP_MS;
        let mut fleet = Self {
            base,
            base_ts,
            base_driver_idx,
            copies,
            session: session.name.clone(),
            span_ms,
            looping,
            round: 0,
            cursors: Vec::new(),
            heap: BinaryHeap::new(),
        };
        fleet.start_round();
        Ok(fleet)
    }

    /// Rows per round (all copies).
    pub fn rows_per_round(&self) -> usize {
        self.copies.iter().map(|c| c.rows.len()).sum()
    }

    fn start_round(&mut self) {
        self.cursors = vec![0; self.copies.len()];
        self.heap.clear();
        for (k, c) in self.copies.iter().enumerate() {
            if let Some(&r) = c.rows.first() {
                self.heap
                    .push(Reverse((self.base_ts[r as usize] + c.offset_ms, k)));
            }
        }
    }

    /// The next `max_rows` rows in event-time order, or None at the end (never, when looping).
    pub fn next_chunk(&mut self, max_rows: usize) -> Result<Option<RecordBatch>> {
        if self.heap.is_empty() {
            if !self.looping {
                return Ok(None);
            }
            self.round += 1;
            self.start_round();
        }
        let mut picks: Vec<(usize, u32)> = Vec::with_capacity(max_rows);
        while picks.len() < max_rows {
            let Some(Reverse((_, k))) = self.heap.pop() else {
                break;
            };
            let copy = &self.copies[k];
            let row = copy.rows[self.cursors[k]];
            picks.push((k, row));
            self.cursors[k] += 1;
            if let Some(&next) = copy.rows.get(self.cursors[k]) {
                self.heap
                    .push(Reverse((self.base_ts[next as usize] + copy.offset_ms, k)));
            }
        }
        if picks.is_empty() {
            return Ok(None);
        }
        self.build(&picks).map(Some)
    }

    fn build(&self, picks: &[(usize, u32)]) -> Result<RecordBatch> {
        let idx = UInt32Array::from_iter_values(picks.iter().map(|(_, r)| *r));
        let taken = take_record_batch(&self.base, &idx)?;
        let shift = |k: usize| self.copies[k].offset_ms + self.round as i64 * self.span_ms;
        let schema = taken.schema();
        let mut cols: Vec<ArrayRef> = taken.columns().to_vec();
        if self.copies.len() > 1 || self.round > 0 {
            let ts = TimestampMillisecondArray::from_iter_values(
                picks
                    .iter()
                    .map(|(k, r)| self.base_ts[*r as usize] + shift(*k)),
            )
            .with_timezone("UTC");
            let st_idx = schema.index_of(col::SESSION_TIME)?;
            let st = cols[st_idx]
                .as_any()
                .downcast_ref::<Float64Array>()
                .expect("f64");
            let st: Float64Array = st
                .iter()
                .zip(picks)
                .map(|(v, (k, _))| v.map(|v| v + shift(*k) as f64 / 1000.0))
                .collect();
            let drivers =
                StringArray::from_iter_values(picks.iter().map(|(k, r)| {
                    &*self.copies[*k].names[self.base_driver_idx[*r as usize] as usize]
                }));
            cols[schema.index_of(col::TS)?] = Arc::new(ts);
            cols[st_idx] = Arc::new(st);
            cols[schema.index_of(col::DRIVER)?] = Arc::new(drivers);
        }
        if self.round > 0 {
            let name = format!("{}-r{}", self.session, self.round + 1);
            cols[schema.index_of(col::SESSION)?] =
                Arc::new(StringArray::from(vec![name.as_str(); picks.len()]));
        }
        debug_assert!(cols.iter().all(|c| c.len() == picks.len()));
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

/// Reorders a chunk as a network would: each row is delayed by a pseudo-random amount below
/// `max_ms` of event time, so a car's samples can arrive out of order (within the chunk).
pub fn jitter(chunk: &RecordBatch, max_ms: i64, seed: u64) -> Result<RecordBatch> {
    if max_ms <= 0 || chunk.num_rows() < 2 {
        return Ok(chunk.clone());
    }
    let ts = chunk
        .column_by_name(col::TS)
        .expect("ts")
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .expect("ts");
    let mut keyed: Vec<(i64, u32)> = (0..chunk.num_rows())
        .map(|i| {
            let h = (seed.wrapping_add(i as u64)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
            (ts.value(i) + (h % max_ms as u64) as i64, i as u32)
        })
        .collect();
    keyed.sort_unstable();
    let idx = UInt32Array::from_iter_values(keyed.into_iter().map(|(_, i)| i));
    Ok(take_record_batch(chunk, &idx)?)
}
