//! Labelled faults injected into a real session, so that what the detectors find can be counted.
//!
//! A clean race says nothing about recall: nothing in it is known to be broken. [`inject`]
//! takes a real session (canonical rows) and, by seed, breaks cars in eight ways that telemetry
//! engineers meet, each shaped after how the channel behaves in the real data (the 2023 British
//! GP: ~4 samples a second, RPM never above 13,100, speed 0-335 km/h, the gear reading lagging
//! a downshift by up to a second):
//!
//! | kind | what the data shows |
//! |---|---|
//! | `over_rev` | a burst of 3-8 samples at 13,500-14,700 RPM while accelerating in gear 4+ |
//! | `lock_up` | under braking from 140 km/h or more, the speed reading drops to 45-70% for 1-2 samples, then recovers |
//! | `flat_line` | `speed` or `rpm` stuck at its last value for 4-12 s while the car moves |
//! | `dropout` | none of the car's samples for 2-4.5 s |
//! | `gearbox` | the gear reading stuck for 5-10 s from a corner exit while the car shifts up two gears or more |
//! | `spike` | one sample with an impossible value: speed 400-700 km/h, RPM 16,000-30,000, throttle 110-255 %, gear 9-15 |
//! | `power_loss` | from the start of a green-flag lap to the car's last sample, speed and RPM down by 6-10 % at speed (none below 100 km/h), throttle unchanged |
//! | `drs_fault` | for 2-5 laps (the first one and another on which the car opened DRS) the flap never opens: `drs` 10-14 becomes 8, eligible |
//!
//! Faults go to cars and laps drawn by a ChaCha8 generator from the seed (the same faults for a
//! seed on every platform), never closer than 20 s to another fault of the same car, never on
//! lap 1-2 or a car's last lap. [`Labels`] say which car, what, when and on which laps; a
//! scorer reads them beside the alerts (`pitwall faults score`).
//!
//! Time stamps are not changed: a car that lost power reads slower at the same instants, its
//! laps do not get longer.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Int8Array, RecordBatch, StringArray,
};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Float32Type, Int8Type, Int32Type, TimestampMillisecondType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::schema::col;

/// What broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    OverRev,
    LockUp,
    FlatLine,
    Dropout,
    Spike,
    Gearbox,
    PowerLoss,
    DrsFault,
}

impl Kind {
    /// Every kind, sample-level ones first.
    pub const ALL: [Kind; 8] = [
        Kind::OverRev,
        Kind::LockUp,
        Kind::FlatLine,
        Kind::Dropout,
        Kind::Spike,
        Kind::Gearbox,
        Kind::PowerLoss,
        Kind::DrsFault,
    ];

    /// The name alerts and labels use (`over_rev`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Kind::OverRev => "over_rev",
            Kind::LockUp => "lock_up",
            Kind::FlatLine => "flat_line",
            Kind::Dropout => "dropout",
            Kind::Spike => "spike",
            Kind::Gearbox => "gearbox",
            Kind::PowerLoss => "power_loss",
            Kind::DrsFault => "drs_fault",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// A fault seen over a lap (found when the lap closes), not within seconds.
    pub fn lap_level(self) -> bool {
        matches!(self, Kind::PowerLoss | Kind::DrsFault)
    }
}

/// One injected fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    pub driver: String,
    pub kind: Kind,
    /// Event time of the first sample changed (ms since the epoch).
    pub start_ms: i64,
    /// Event time of the last sample changed (a dropout: the last sample removed).
    pub end_ms: i64,
    /// Laps the changed samples belong to.
    pub laps: Vec<i32>,
    /// Length of the first of those laps: a lap-level fault is found in time when its first
    /// alert comes within it.
    pub lap_ms: i64,
    /// Channel and size, for people ("rpm 13,912-14,480, 5 samples").
    pub detail: String,
}

/// A car's racing time (samples with a lap), for false alerts per car-hour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarSpan {
    pub driver: String,
    pub first_ms: i64,
    pub last_ms: i64,
}

/// The labels file: the faulty session's name, how it was made, and its faults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Labels {
    pub session: String,
    pub seed: u64,
    /// Rows of the faulty session (a scorer can wait until the archive has them all).
    pub rows: usize,
    pub cars: Vec<CarSpan>,
    pub faults: Vec<Fault>,
}

/// What to inject.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// Faults of each kind (fewer when the session has no room left: see [`Labels`]).
    pub per_kind: usize,
    pub kinds: Vec<Kind>,
    /// Name of the faulty session (None: the input's).
    pub session: Option<String>,
}

/// Closest two faults of a car may be (ms).
const MARGIN_MS: i64 = 20_000;
/// Candidates drawn for one fault before giving up on it.
const ATTEMPTS: usize = 5_000;

/// Injects faults into `rows` (canonical schema, one session); returns the faulty rows, in the
/// input's order less the rows of dropouts, and their labels.
pub fn inject(rows: &RecordBatch, opts: &Options) -> Result<(RecordBatch, Labels), String> {
    let mut data = Channels::read(rows)?;
    let mut cars = Car::all(rows, &data)?;
    if cars.is_empty() {
        return Err("no car has a sample with a lap: nothing to inject into".into());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut faults = Vec::new();
    // Power losses run to the end of a car's race: placed first, the rest fits around them.
    let mut kinds = opts.kinds.clone();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.lap_level()));
    for kind in kinds {
        for _ in 0..opts.per_kind {
            let found = (0..ATTEMPTS).find_map(|_| {
                let c = rng.random_range(0..cars.len());
                let edit = candidate(kind, &cars[c], &data, &mut rng)?;
                cars[c].is_free(edit.busy.clone()).then_some((c, edit))
            });
            let Some((c, edit)) = found else { break };
            cars[c].busy.push(edit.busy.clone());
            faults.push(edit.apply(&mut data, &cars[c]));
        }
    }
    faults.sort_by(|a, b| (a.start_ms, &a.driver).cmp(&(b.start_ms, &b.driver)));
    let out = data.write(rows, opts.session.as_deref())?;
    let session = match &opts.session {
        Some(s) => s.clone(),
        None => first_string(rows, col::SESSION)?,
    };
    let labels = Labels {
        session,
        seed: opts.seed,
        rows: out.num_rows(),
        cars: cars.iter().map(|c| c.span(&data)).collect(),
        faults,
    };
    Ok((out, labels))
}

/// The channels faults change, as plain vectors indexed by row.
struct Channels {
    ts: Vec<i64>,
    lap: Vec<Option<i32>>,
    brake: Vec<bool>,
    speed: Vec<Option<f32>>,
    rpm: Vec<Option<f32>>,
    throttle: Vec<Option<f32>>,
    gear: Vec<Option<i8>>,
    drs: Vec<Option<i8>>,
    keep: Vec<bool>,
}

fn column<'a>(rows: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    rows.column_by_name(name)
        .ok_or_else(|| format!("column {name} missing: not the Pitwall schema"))
}

fn first_string(rows: &RecordBatch, name: &str) -> Result<String, String> {
    let a = column(rows, name)?
        .as_string_opt::<i32>()
        .ok_or_else(|| format!("column {name} is not text"))?;
    Ok(a.iter().flatten().next().unwrap_or_default().to_string())
}

impl Channels {
    fn read(rows: &RecordBatch) -> Result<Self, String> {
        let f32s = |name| -> Result<Vec<Option<f32>>, String> {
            let a = column(rows, name)?;
            Ok(a.as_primitive_opt::<Float32Type>()
                .ok_or_else(|| format!("column {name} is not Float32"))?
                .iter()
                .collect())
        };
        let i8s = |name| -> Result<Vec<Option<i8>>, String> {
            let a = column(rows, name)?;
            Ok(a.as_primitive_opt::<Int8Type>()
                .ok_or_else(|| format!("column {name} is not Int8"))?
                .iter()
                .collect())
        };
        let ts = column(rows, col::TS)?
            .as_primitive_opt::<TimestampMillisecondType>()
            .ok_or("column ts is not a millisecond timestamp")?;
        if ts.null_count() > 0 {
            return Err("a row has no ts".into());
        }
        let lap = column(rows, col::LAP)?
            .as_primitive_opt::<Int32Type>()
            .ok_or("column lap is not Int32")?;
        let brake = column(rows, col::BRAKE)?
            .as_boolean_opt()
            .ok_or("column brake is not Boolean")?;
        Ok(Self {
            ts: ts.values().to_vec(),
            lap: lap.iter().collect(),
            brake: brake.iter().map(|b| b.unwrap_or(false)).collect(),
            speed: f32s(col::SPEED)?,
            rpm: f32s(col::RPM)?,
            throttle: f32s(col::THROTTLE)?,
            gear: i8s(col::GEAR)?,
            drs: i8s(col::DRS)?,
            keep: vec![true; rows.num_rows()],
        })
    }

    fn speed(&self, row: usize) -> f32 {
        self.speed[row].unwrap_or(0.0)
    }

    fn throttle(&self, row: usize) -> f32 {
        self.throttle[row].unwrap_or(0.0)
    }

    /// The input with the changed channels swapped in and dropped rows left out.
    fn write(&self, rows: &RecordBatch, session: Option<&str>) -> Result<RecordBatch, String> {
        let schema = rows.schema();
        let mut columns: Vec<ArrayRef> = rows.columns().to_vec();
        let mut set = |name: &str, array: ArrayRef| {
            if let Ok(i) = schema.index_of(name) {
                columns[i] = array;
            }
        };
        set(col::SPEED, Arc::new(Float32Array::from(self.speed.clone())));
        set(col::RPM, Arc::new(Float32Array::from(self.rpm.clone())));
        set(
            col::THROTTLE,
            Arc::new(Float32Array::from(self.throttle.clone())),
        );
        set(col::GEAR, Arc::new(Int8Array::from(self.gear.clone())));
        set(col::DRS, Arc::new(Int8Array::from(self.drs.clone())));
        if let Some(name) = session {
            set(
                col::SESSION,
                Arc::new(StringArray::from(vec![name; rows.num_rows()])),
            );
        }
        let batch = RecordBatch::try_new(schema, columns).map_err(|e| e.to_string())?;
        filter_record_batch(&batch, &BooleanArray::from(self.keep.clone()))
            .map_err(|e| e.to_string())
    }
}

/// One car: its rows in time order, where each lap sits in them, and the time its faults hold.
struct Car {
    driver: String,
    rows: Vec<usize>,
    /// Lap number → positions in `rows`.
    laps: BTreeMap<i32, Range<usize>>,
    busy: Vec<Range<i64>>,
}

impl Car {
    fn all(rows: &RecordBatch, data: &Channels) -> Result<Vec<Car>, String> {
        let driver = column(rows, col::DRIVER)?
            .as_string_opt::<i32>()
            .ok_or("column driver is not text")?;
        let mut by_driver: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for i in 0..rows.num_rows() {
            if driver.is_valid(i) {
                by_driver
                    .entry(driver.value(i).to_string())
                    .or_default()
                    .push(i);
            }
        }
        let mut cars = Vec::new();
        for (driver, mut idx) in by_driver {
            idx.sort_by_key(|&i| data.ts[i]);
            let mut laps: BTreeMap<i32, Range<usize>> = BTreeMap::new();
            for (p, &i) in idx.iter().enumerate() {
                if let Some(l) = data.lap[i] {
                    laps.entry(l).or_insert(p..p).end = p + 1;
                }
            }
            if !laps.is_empty() {
                cars.push(Car {
                    driver,
                    rows: idx,
                    laps,
                    busy: Vec::new(),
                });
            }
        }
        Ok(cars)
    }

    fn span(&self, data: &Channels) -> CarSpan {
        let first = self.laps.values().next().expect("a car has laps").start;
        let last = self.laps.values().next_back().expect("a car has laps").end - 1;
        CarSpan {
            driver: self.driver.clone(),
            first_ms: data.ts[self.rows[first]],
            last_ms: data.ts[self.rows[last]],
        }
    }

    fn is_free(&self, t: Range<i64>) -> bool {
        self.busy.iter().all(|b| {
            t.start >= b.end.saturating_add(MARGIN_MS) || t.end.saturating_add(MARGIN_MS) <= b.start
        })
    }

    /// Laps a fault may start on: not the first two, not the last.
    fn racing_laps(&self) -> Vec<i32> {
        let last = *self.laps.keys().next_back().expect("a car has laps");
        self.laps
            .keys()
            .copied()
            .filter(|&l| l >= 3 && l < last)
            .collect()
    }

    fn lap_ms(&self, data: &Channels, lap: i32) -> i64 {
        let r = &self.laps[&lap];
        data.ts[self.rows[r.end - 1]] - data.ts[self.rows[r.start]]
    }

    /// The lap a position lies on (positions outside every lap: none).
    fn lap_at(&self, data: &Channels, p: usize) -> Option<i32> {
        data.lap[self.rows[p]]
    }
}

#[derive(Debug, Clone, Copy)]
enum Channel {
    Speed,
    Rpm,
    Throttle,
    Gear,
    Drs,
}

/// A fault chosen but not applied yet: its changes and the time it holds on its car.
struct Edit {
    kind: Kind,
    start_ms: i64,
    end_ms: i64,
    busy: Range<i64>,
    /// Positions (in the car's rows) changed or dropped.
    changes: Vec<(usize, Change)>,
    detail: String,
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Set(Channel, f32),
    Drop,
}

impl Edit {
    fn new(kind: Kind, car: &Car, data: &Channels, changes: Vec<(usize, Change)>) -> Self {
        let first = data.ts[car.rows[changes.first().expect("an edit changes rows").0]];
        let last = data.ts[car.rows[changes.last().expect("an edit changes rows").0]];
        Self {
            kind,
            start_ms: first,
            end_ms: last,
            busy: first..last + 1,
            changes,
            detail: String::new(),
        }
    }

    fn with_detail(mut self, detail: String) -> Self {
        self.detail = detail;
        self
    }

    fn apply(self, data: &mut Channels, car: &Car) -> Fault {
        let mut laps: Vec<i32> = Vec::new();
        for &(p, change) in &self.changes {
            let row = car.rows[p];
            if let Some(l) = data.lap[row]
                && !laps.contains(&l)
            {
                laps.push(l);
            }
            match change {
                Change::Drop => data.keep[row] = false,
                Change::Set(Channel::Speed, v) => data.speed[row] = Some(v),
                Change::Set(Channel::Rpm, v) => data.rpm[row] = Some(v),
                Change::Set(Channel::Throttle, v) => data.throttle[row] = Some(v),
                Change::Set(Channel::Gear, v) => data.gear[row] = Some(v as i8),
                Change::Set(Channel::Drs, v) => data.drs[row] = Some(v as i8),
            }
        }
        laps.sort_unstable();
        Fault {
            driver: car.driver.clone(),
            kind: self.kind,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            lap_ms: laps.first().map_or(0, |&l| car.lap_ms(data, l)),
            laps,
            detail: self.detail,
        }
    }
}

/// A fault of `kind` on `car` at a random place, if the place drawn suits it.
fn candidate(kind: Kind, car: &Car, data: &Channels, rng: &mut ChaCha8Rng) -> Option<Edit> {
    let laps = car.racing_laps();
    if laps.is_empty() {
        return None;
    }
    let lap = laps[rng.random_range(0..laps.len())];
    match kind {
        Kind::PowerLoss => power_loss(car, data, lap, rng),
        Kind::DrsFault => drs_fault(car, data, lap, rng),
        _ => {
            let range = car.laps[&lap].clone();
            if range.len() < 4 {
                return None;
            }
            // A few places on the lap: most samples do not suit a given kind (a lock-up
            // needs a braking zone, a gearbox fault a corner exit).
            (0..40).find_map(|_| {
                let p = rng.random_range(range.start + 1..range.end - 2);
                sample_fault(kind, car, data, p, rng)
            })
        }
    }
}

fn sample_fault(
    kind: Kind,
    car: &Car,
    data: &Channels,
    p: usize,
    rng: &mut ChaCha8Rng,
) -> Option<Edit> {
    let row = |q: usize| car.rows[q];
    let moving = |q: usize, min: f32| data.speed(row(q)) >= min;
    match kind {
        Kind::OverRev => {
            let r = row(p);
            let accelerating = data.throttle(r) >= 95.0
                && data.rpm[r].unwrap_or(0.0) >= 10_500.0
                && data.gear[r].unwrap_or(0) >= 4;
            let n = rng.random_range(3..=8);
            if !accelerating || !same_lap(car, data, p, p + n) {
                return None;
            }
            let values: Vec<f32> = (0..n)
                .map(|_| rng.random_range(13_500.0f32..14_700.0).round())
                .collect();
            let (lo, hi) = min_max(&values);
            let changes = (0..n)
                .map(|k| (p + k, Change::Set(Channel::Rpm, values[k])))
                .collect();
            Some(
                Edit::new(kind, car, data, changes)
                    .with_detail(format!("rpm {lo:.0}-{hi:.0}, {n} samples")),
            )
        }
        Kind::LockUp => {
            let braking = (p - 1..=p + 2).all(|q| data.brake[row(q)]);
            let decelerating = data.speed(row(p - 1)) > data.speed(row(p));
            if !braking || !decelerating || !moving(p, 140.0) {
                return None;
            }
            let n = rng.random_range(1..=2);
            let factor = rng.random_range(0.45f32..0.7);
            let changes = (0..n)
                .map(|k| {
                    let v = (data.speed(row(p + k)) * factor).round();
                    (p + k, Change::Set(Channel::Speed, v))
                })
                .collect();
            Some(Edit::new(kind, car, data, changes).with_detail(format!(
                "speed x{factor:.2} at {:.0} km/h, {n} samples",
                data.speed(row(p))
            )))
        }
        Kind::FlatLine => {
            if !moving(p, 120.0) {
                return None;
            }
            let (channel, values) = if rng.random_bool(0.5) {
                (Channel::Speed, &data.speed)
            } else {
                (Channel::Rpm, &data.rpm)
            };
            let stuck = values[row(p - 1)]?;
            let secs = rng.random_range(4.0..12.0);
            let span = within(car, data, p, secs)?;
            let changes = span.map(|q| (q, Change::Set(channel, stuck))).collect();
            Some(
                Edit::new(kind, car, data, changes)
                    .with_detail(format!("{channel:?} stuck at {stuck:.0} for {secs:.1} s")),
            )
        }
        Kind::Dropout => {
            if !moving(p, 100.0) {
                return None;
            }
            let secs = rng.random_range(2.0..4.5);
            let span = within(car, data, p, secs)?;
            let changes = span.map(|q| (q, Change::Drop)).collect();
            Some(
                Edit::new(kind, car, data, changes)
                    .with_detail(format!("no samples for {secs:.1} s")),
            )
        }
        Kind::Gearbox => gearbox(car, data, p, rng),
        Kind::Spike => {
            if !moving(p, 50.0) {
                return None;
            }
            let (channel, value) = match rng.random_range(0..4) {
                0 => (Channel::Speed, rng.random_range(400.0f32..700.0).round()),
                1 => (
                    Channel::Rpm,
                    rng.random_range(16_000.0f32..30_000.0).round(),
                ),
                2 => (Channel::Throttle, rng.random_range(110.0f32..255.0).round()),
                _ => (Channel::Gear, rng.random_range(9..=15) as f32),
            };
            let changes = vec![(p, Change::Set(channel, value))];
            Some(
                Edit::new(kind, car, data, changes)
                    .with_detail(format!("{channel:?} = {value:.0}")),
            )
        }
        Kind::PowerLoss | Kind::DrsFault => unreachable!("lap-level kinds are placed by lap"),
    }
}

/// Gear reading stuck from a corner exit (the throttle passing 80 %) for 5-10 s, while the car shifts up two or more.
fn gearbox(car: &Car, data: &Channels, p: usize, rng: &mut ChaCha8Rng) -> Option<Edit> {
    let (before, at) = (car.rows[p - 1], car.rows[p]);
    let gear = data.gear[at]?;
    let exit = data.throttle(before) < 80.0 && data.throttle(at) >= 80.0;
    if !exit || !(2..=5).contains(&gear) || data.speed(at) < 60.0 {
        return None;
    }
    let secs = rng.random_range(5.0..10.0);
    let span = within(car, data, p, secs)?;
    let top = span.clone().filter_map(|q| data.gear[car.rows[q]]).max()?;
    if top < gear + 2 {
        return None;
    }
    let changes = span
        .map(|q| (q, Change::Set(Channel::Gear, gear as f32)))
        .collect();
    Some(
        Edit::new(Kind::Gearbox, car, data, changes).with_detail(format!(
            "gear reads {gear} for {secs:.1} s (the car reached {top})"
        )),
    )
}

/// From the start of a green-flag lap to the car's last sample, less speed and RPM at speed.
fn power_loss(car: &Car, data: &Channels, lap: i32, rng: &mut ChaCha8Rng) -> Option<Edit> {
    let last = *car.laps.keys().next_back()?;
    if lap < 12 || lap + 4 > last || !green_flag(car, data, lap) {
        return None;
    }
    let loss = rng.random_range(0.06f32..0.10);
    let start = car.laps[&lap].start;
    let end = car.laps[&last].end;
    let changes = (start..end)
        .flat_map(|q| {
            let r = car.rows[q];
            let v = data.speed(r);
            let f = 1.0 - loss * ((v - 100.0) / 150.0).clamp(0.0, 1.0);
            let mut c = vec![(q, Change::Set(Channel::Speed, (v * f).round()))];
            if let Some(rpm) = data.rpm[r] {
                c.push((q, Change::Set(Channel::Rpm, (rpm * f).round())));
            }
            c
        })
        .collect();
    let mut edit = Edit::new(Kind::PowerLoss, car, data, changes).with_detail(format!(
        "-{:.1} % speed at speed from lap {lap}",
        loss * 100.0
    ));
    edit.busy = edit.start_ms..i64::MAX - MARGIN_MS;
    Some(edit)
}

/// A lap run at race pace: no slower than 3 % over the car's median lap, never below 60 km/h
/// (no pit stop, no safety car).
fn green_flag(car: &Car, data: &Channels, lap: i32) -> bool {
    let mut all: Vec<i64> = car.laps.keys().map(|&l| car.lap_ms(data, l)).collect();
    all.sort_unstable();
    let median = all[all.len() / 2];
    let slowest = car.laps[&lap]
        .clone()
        .map(|q| data.speed(car.rows[q]))
        .fold(f32::MAX, f32::min);
    (car.lap_ms(data, lap) as f64) <= 1.03 * median as f64 && slowest > 60.0
}

/// DRS that stops opening for 2-5 laps: an actuator fault lasts until the car is fixed. The
/// laps changed are those on which the car opened DRS (the first one and at least one more).
fn drs_fault(car: &Car, data: &Channels, lap: i32, rng: &mut ChaCha8Rng) -> Option<Edit> {
    let n = rng.random_range(2..=5);
    let mut changes = Vec::new();
    let mut opened = 0;
    for l in lap..lap + n {
        let range = car.laps.get(&l)?.clone();
        let open: Vec<usize> = range
            .filter(|&q| data.drs[car.rows[q]].is_some_and(|d| d >= 10))
            .collect();
        if open.is_empty() && l == lap {
            return None;
        }
        opened += usize::from(!open.is_empty());
        changes.extend(
            open.into_iter()
                .map(|q| (q, Change::Set(Channel::Drs, 8.0))),
        );
    }
    if opened < 2 {
        return None;
    }
    let mut edit = Edit::new(Kind::DrsFault, car, data, changes)
        .with_detail(format!("DRS never opens on laps {lap}-{}", lap + n - 1));
    let first = car.laps[&lap].start;
    let last = car.laps[&(lap + n - 1)].end - 1;
    edit.busy = data.ts[car.rows[first]]..data.ts[car.rows[last]] + 1;
    Some(edit)
}

/// Positions from `p` for `secs` seconds, on laps, with no gap longer than 1.5 s inside (a
/// fault is not placed across a hole in the feed).
fn within(car: &Car, data: &Channels, p: usize, secs: f64) -> Option<Range<usize>> {
    let t0 = data.ts[car.rows[p]];
    let until = t0 + (secs * 1000.0) as i64;
    let mut end = p;
    while end < car.rows.len() && data.ts[car.rows[end]] < until {
        if car.lap_at(data, end).is_none()
            || (end > p && data.ts[car.rows[end]] - data.ts[car.rows[end - 1]] > 1_500)
        {
            return None;
        }
        end += 1;
    }
    (end < car.rows.len() && end - p >= 2).then_some(p..end)
}

fn same_lap(car: &Car, data: &Channels, from: usize, to: usize) -> bool {
    to < car.rows.len() && car.lap_at(data, from) == car.lap_at(data, to)
}

fn min_max(values: &[f32]) -> (f32, f32) {
    values
        .iter()
        .fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

#[cfg(test)]
mod tests;
