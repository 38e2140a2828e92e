//! From game packets to telemetry rows: the packets of one frame joined per car.
//!
//! The game sends, every frame, a Motion, a Lap Data and a Car Telemetry packet for all cars,
//! and now and then a Session and a Participants packet. [`Frames`] keeps the latest of each
//! per session and, when a frame's Car Telemetry arrives, makes a row for each active car
//! whose Lap Data moved on since its last row (its lap timer ran or its lap changed: a car
//! standing in the garage makes none, a car on track one a frame), in the canonical telemetry
//! schema. There are no rows until the session's first Participants packet (the game sends
//! one every 5 seconds): before it the driver names are not known.
//!
//! | column | from |
//! |---|---|
//! | `session` | track and session UID, e.g. `monza-3c41f35fdad292e4` |
//! | `driver` | the Participants name (`car<N>` when the game hides it) |
//! | `lap` | Lap Data `currentLapNum` (0, before the start, is null) |
//! | `ts` | the session's start (its first packet's arrival less its `sessionTime`) plus `sessionTime` |
//! | `session_time` | `sessionTime`, seconds |
//! | `speed`, `rpm`, `gear` | Car Telemetry |
//! | `throttle` | Car Telemetry throttle × 100 (percent, as the timing feed) |
//! | `brake` | Car Telemetry brake above 0 |
//! | `drs` | 12 open, 0 closed (the timing feed's codes) |
//! | `x`, `y`, `z` | Motion world position X and Z (the game's ground plane, as a track map draws it) and Y (height), metres |
//! | `distance` | Lap Data `lapDistance`, metres |

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int8Builder, Int32Builder,
    RecordBatch, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::error::ArrowError;

use super::{CarLap, CarMotion, CarTelemetry, Header, Packet, Participants, Session};
use crate::schema::telemetry_schema;

/// Track names by the game's `trackId` (the specification's list).
const TRACKS: [&str; 42] = [
    "melbourne",
    "paul-ricard",
    "shanghai",
    "sakhir",
    "catalunya",
    "monaco",
    "montreal",
    "silverstone",
    "hockenheim",
    "hungaroring",
    "spa",
    "monza",
    "singapore",
    "suzuka",
    "abu-dhabi",
    "texas",
    "brazil",
    "austria",
    "sochi",
    "mexico",
    "baku",
    "sakhir-short",
    "silverstone-short",
    "texas-short",
    "suzuka-short",
    "hanoi",
    "zandvoort",
    "imola",
    "portimao",
    "jeddah",
    "miami",
    "las-vegas",
    "losail",
    "track-33",
    "track-34",
    "track-35",
    "track-36",
    "track-37",
    "track-38",
    "silverstone-reverse",
    "austria-reverse",
    "zandvoort-reverse",
];

/// What one session has told so far.
#[derive(Default)]
struct SessionState {
    /// Wall-clock ms at session time 0.
    start_ms: i64,
    /// The `session` column: track (once a Session packet told it) and UID.
    name: String,
    /// The active cars' `driver` names, once a Participants packet told them.
    drivers: Option<Vec<String>>,
    motion: Vec<CarMotion>,
    laps: Vec<CarLap>,
    /// Per car, the (lap, lap time) of its last row.
    sent: Vec<Option<(u8, u32)>>,
}

/// Joins the packets of each session into rows (see the module's table).
#[derive(Default)]
pub struct Frames {
    sessions: HashMap<u64, SessionState>,
}

impl Frames {
    /// Takes one decoded packet that arrived at `arrival_ms` (wall clock); returns the rows
    /// of its frame when it is a Car Telemetry packet of a session whose participants are
    /// known.
    pub fn push(
        &mut self,
        header: &Header,
        packet: Packet,
        arrival_ms: i64,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let state = self
            .sessions
            .entry(header.session_uid)
            .or_insert_with(|| SessionState {
                start_ms: arrival_ms - (f64::from(header.session_time) * 1000.0) as i64,
                name: session_name(None, header.session_uid),
                ..SessionState::default()
            });
        match packet {
            Packet::Motion(m) => state.motion = m,
            Packet::LapData(l) => state.laps = l,
            Packet::Session(s) => state.name = session_name(Some(&s), header.session_uid),
            Packet::Participants(p) => state.drivers = Some(drivers(&p)),
            Packet::CarTelemetry(t) if state.drivers.is_some() => {
                return state.rows(header, &t).map(Some);
            }
            Packet::CarTelemetry(_) => {}
            Packet::Event(_) | Packet::Other(_) => {}
        }
        Ok(None)
    }

    /// Forgets a session (after its `SEND` event, or when it went quiet).
    pub fn end(&mut self, session_uid: u64) {
        self.sessions.remove(&session_uid);
    }
}

/// `track-uid`, e.g. `monza-3c41f35fdad292e4` (`f1-uid` before the track is known).
fn session_name(session: Option<&Session>, uid: u64) -> String {
    let track = session
        .and_then(|s| usize::try_from(s.track_id).ok())
        .and_then(|t| TRACKS.get(t))
        .unwrap_or(&"f1");
    format!("{track}-{uid:016x}")
}

/// The active cars' names: the Participants name, else `car<N>`; a name two cars share
/// (online players the game shows as "Player") gets its car's number.
fn drivers(p: &Participants) -> Vec<String> {
    let active = usize::from(p.active_cars).min(p.cars.len());
    let names: Vec<String> = p.cars[..active]
        .iter()
        .enumerate()
        .map(|(i, c)| match c.name.trim() {
            "" => format!("car{i}"),
            n => n.to_string(),
        })
        .collect();
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if names.iter().filter(|m| *m == n).count() > 1 {
                format!("{n}-car{i}")
            } else {
                n.clone()
            }
        })
        .collect()
}

impl SessionState {
    fn rows(
        &mut self,
        header: &Header,
        telemetry: &[CarTelemetry],
    ) -> Result<RecordBatch, ArrowError> {
        let drivers = self.drivers.as_deref().unwrap_or_default();
        let active = drivers.len().min(telemetry.len());
        let seconds = f64::from(header.session_time);
        let ts = self.start_ms + (seconds * 1000.0).round() as i64;
        self.sent.resize(active.max(self.sent.len()), None);
        let mut b = Builders::new(active);
        for (i, t) in telemetry.iter().take(active).enumerate() {
            let Some(lap) = self.laps.get(i) else {
                continue;
            };
            let moved = Some((lap.lap, lap.current_lap_ms));
            if self.sent[i] == moved {
                continue;
            }
            self.sent[i] = moved;
            let pos = self.motion.get(i);
            b.session.append_value(&self.name);
            b.driver.append_value(&drivers[i]);
            b.lap
                .append_option((lap.lap > 0).then_some(i32::from(lap.lap)));
            b.ts.append_value(ts);
            b.session_time.append_value(seconds);
            b.speed.append_value(f32::from(t.speed_kmh));
            b.rpm.append_value(f32::from(t.rpm));
            b.gear.append_value(t.gear);
            b.throttle.append_value(t.throttle * 100.0);
            b.brake.append_value(t.brake > 0.0);
            b.drs.append_value(if t.drs { 12 } else { 0 });
            // The game's Y is up; the schema's x, y are the ground plane and z the height.
            b.x.append_option(pos.map(|p| p.x));
            b.y.append_option(pos.map(|p| p.z));
            b.z.append_option(pos.map(|p| p.y));
            b.distance.append_value(f64::from(lap.lap_distance));
        }
        b.finish()
    }
}

/// One builder per column of the telemetry schema, in its order.
struct Builders {
    session: StringBuilder,
    driver: StringBuilder,
    lap: Int32Builder,
    ts: TimestampMillisecondBuilder,
    session_time: Float64Builder,
    speed: Float32Builder,
    rpm: Float32Builder,
    gear: Int8Builder,
    throttle: Float32Builder,
    brake: BooleanBuilder,
    drs: Int8Builder,
    x: Float32Builder,
    y: Float32Builder,
    z: Float32Builder,
    distance: Float64Builder,
}

impl Builders {
    fn new(n: usize) -> Self {
        Builders {
            session: StringBuilder::with_capacity(n, n * 24),
            driver: StringBuilder::with_capacity(n, n * 10),
            lap: Int32Builder::with_capacity(n),
            ts: TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC"),
            session_time: Float64Builder::with_capacity(n),
            speed: Float32Builder::with_capacity(n),
            rpm: Float32Builder::with_capacity(n),
            gear: Int8Builder::with_capacity(n),
            throttle: Float32Builder::with_capacity(n),
            brake: BooleanBuilder::with_capacity(n),
            drs: Int8Builder::with_capacity(n),
            x: Float32Builder::with_capacity(n),
            y: Float32Builder::with_capacity(n),
            z: Float32Builder::with_capacity(n),
            distance: Float64Builder::with_capacity(n),
        }
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.session.finish()),
            Arc::new(self.driver.finish()),
            Arc::new(self.lap.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.session_time.finish()),
            Arc::new(self.speed.finish()),
            Arc::new(self.rpm.finish()),
            Arc::new(self.gear.finish()),
            Arc::new(self.throttle.finish()),
            Arc::new(self.brake.finish()),
            Arc::new(self.drs.finish()),
            Arc::new(self.x.finish()),
            Arc::new(self.y.finish()),
            Arc::new(self.z.finish()),
            Arc::new(self.distance.finish()),
        ];
        RecordBatch::try_new(telemetry_schema(), columns)
    }
}
