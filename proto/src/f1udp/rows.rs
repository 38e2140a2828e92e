//! From game packets to telemetry rows: the packets of one frame joined per car.
//!
//! The game sends, every frame, a Motion, a Lap Data and a Car Telemetry packet for all cars,
//! and now and then a Session and a Participants packet. [`Frames`] gathers the packets of each
//! frame (by the frame counter that survives flashbacks) and, once a frame has its Lap Data
//! and its Car Telemetry, in whichever order they came, makes a row for each active car whose
//! Lap Data moved on since its last rows (its lap timer ran or its lap changed: a car standing
//! in the garage makes none, a car on track one a frame), in the canonical telemetry schema.
//! Positions come from the newest Motion packet. There are no rows until the session's first
//! Participants packet (the game sends one every 5 seconds): before it the driver names are
//! not known.
//!
//! UDP loses, repeats and reorders datagrams. A frame waits [`REORDER_WINDOW_MS`] of arrival
//! time for its packets and is then settled: a frame without its Lap Data or Car Telemetry by
//! then is counted lost, a packet that comes again is counted as a duplicate and ignored, and
//! one that comes after its frame settled is counted late and ignored ([`FrameCounts`]).
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

use std::collections::{BTreeMap, HashMap, VecDeque};
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

/// How long (arrival time) a frame waits for the rest of its packets. Then it is settled: a
/// packet of it arriving later is late and ignored, and it is counted lost if its Lap Data or
/// Car Telemetry never came.
pub const REORDER_WINDOW_MS: i64 = 500;
/// A session that sent nothing for this long is forgotten.
const SESSION_IDLE_MS: i64 = 60_000;
/// Sessions followed at once (a league server sees one per rig); beyond, the quietest goes.
const MAX_SESSIONS: usize = 64;
/// Frames waiting at once per session: half a second at 60 Hz is 30; a flood of made-up
/// frame numbers settles early instead of filling memory.
const MAX_PENDING_FRAMES: usize = 256;
/// A frame this far below the settled ones is the game counting afresh, not a late packet.
const RESTART_FRAMES: u32 = 10_000;
/// The most frames counted lost in one gap of the counter (two seconds at 60 Hz).
const MAX_UNSEEN: u64 = 120;
/// Steps between frames remembered to know the game's usual step (its send rate).
const STEPS: usize = 32;

/// What went missing or came twice, by frame (see [`Frames`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FrameCounts {
    /// Frames whose Lap Data or Car Telemetry never arrived (their cars' rows are missing),
    /// including frames of which nothing arrived, told by a gap in the frame counter larger
    /// than the session's usual step (not over a second of session time, when the game paused,
    /// nor past [`MAX_UNSEEN`] frames, when its counter leapt).
    pub lost: u64,
    /// Motion, Lap Data and Car Telemetry datagrams of a frame that had already brought that
    /// packet, ignored.
    pub duplicates: u64,
    /// Motion, Lap Data and Car Telemetry packets of a frame already settled, ignored.
    pub late: u64,
}

/// The packets of one frame that arrived so far.
struct PendingFrame {
    arrived_ms: i64,
    session_time: f32,
    /// Packet ids seen, one bit each.
    seen: u32,
    laps: Option<Vec<CarLap>>,
    telemetry: Option<Vec<CarTelemetry>>,
    /// Its rows were made.
    done: bool,
}

/// What one session has told so far.
#[derive(Default)]
struct SessionState {
    /// Wall-clock ms at session time 0.
    start_ms: i64,
    /// The `session` column: track (once a Session packet told it) and UID.
    name: String,
    /// The active cars' `driver` names, once a Participants packet told them.
    drivers: Option<Vec<String>>,
    /// The newest Motion packet, and its frame.
    motion: Vec<CarMotion>,
    motion_frame: u32,
    /// Per car, the (lap, lap time) of its last rows: a car whose Lap Data has not moved on
    /// makes no row (a frame that comes late does not repeat one).
    sent: Vec<VecDeque<(u8, u32)>>,
    /// Frames waiting for their packets, by the frame counter that survives flashbacks.
    frames: BTreeMap<u32, PendingFrame>,
    /// The newest settled frame, and its session time.
    settled: Option<(u32, f32)>,
    steps: VecDeque<u32>,
    last_arrival_ms: i64,
    /// The session-end event came: forgotten once its frames are settled.
    ended: bool,
}

/// Joins the packets of each session into rows (see the module's table and [`FrameCounts`]).
#[derive(Default)]
pub struct Frames {
    sessions: HashMap<u64, SessionState>,
    counts: FrameCounts,
}

impl Frames {
    /// Takes one decoded packet that arrived at `arrival_ms` (wall clock); returns the rows
    /// of its frame when this packet completed the frame's Lap Data and Car Telemetry (and the
    /// session's participants are known).
    pub fn push(
        &mut self,
        header: &Header,
        packet: Packet,
        arrival_ms: i64,
    ) -> Result<Option<RecordBatch>, ArrowError> {
        let state = session(&mut self.sessions, header, arrival_ms);
        let frame = header.overall_frame;
        if let Some((s, _)) = state.settled
            && frame <= s
        {
            if s - frame < RESTART_FRAMES {
                if matches!(
                    packet,
                    Packet::Motion(_) | Packet::LapData(_) | Packet::CarTelemetry(_)
                ) {
                    self.counts.late += 1;
                    return Ok(None);
                }
            } else {
                state.restart();
            }
        }
        let id = packet.id();
        match packet {
            Packet::Event(e) => {
                state.ended |= &e.code == b"SEND";
                return Ok(None);
            }
            Packet::Session(s) => {
                state.name = session_name(Some(&s), header.session_uid);
                return Ok(None);
            }
            Packet::Participants(p) => {
                state.drivers = Some(drivers(&p));
                // Frames that were waiting only for the names.
                return state.complete_waiting();
            }
            Packet::Other(_) => return Ok(None),
            Packet::Motion(_) | Packet::LapData(_) | Packet::CarTelemetry(_) => {}
        }
        let pending = state.frames.entry(frame).or_insert(PendingFrame {
            arrived_ms: arrival_ms,
            session_time: header.session_time,
            seen: 0,
            laps: None,
            telemetry: None,
            done: false,
        });
        if pending.seen & (1 << id) != 0 {
            self.counts.duplicates += 1;
            return Ok(None);
        }
        pending.seen |= 1 << id;
        match packet {
            Packet::LapData(l) => pending.laps = Some(l),
            Packet::CarTelemetry(t) => pending.telemetry = Some(t),
            Packet::Motion(m) if frame >= state.motion_frame => {
                (state.motion, state.motion_frame) = (m, frame);
            }
            _ => {}
        }
        let rows = state.complete(frame)?;
        state.settle(arrival_ms - REORDER_WINDOW_MS, &mut self.counts);
        Ok(rows)
    }

    /// Settles the frames that waited long enough by `now_ms` and forgets the sessions that
    /// ended or went quiet (call it now and then: a frame's loss is counted when it settles).
    pub fn settle(&mut self, now_ms: i64) {
        let counts = &mut self.counts;
        self.sessions.retain(|_, s| {
            s.settle(now_ms - REORDER_WINDOW_MS, counts);
            let quiet = now_ms - s.last_arrival_ms;
            let over = s.ended && s.frames.is_empty() && quiet > REORDER_WINDOW_MS;
            !(quiet > SESSION_IDLE_MS || over)
        });
    }

    /// The counts so far, and from now on from zero.
    pub fn take_counts(&mut self) -> FrameCounts {
        std::mem::take(&mut self.counts)
    }
}

/// The session of `header`, new if it is: beyond [`MAX_SESSIONS`] the quietest goes.
fn session<'a>(
    sessions: &'a mut HashMap<u64, SessionState>,
    header: &Header,
    arrival_ms: i64,
) -> &'a mut SessionState {
    let uid = header.session_uid;
    if !sessions.contains_key(&uid) && sessions.len() >= MAX_SESSIONS {
        let quietest = sessions.iter().min_by_key(|(_, s)| s.last_arrival_ms);
        if let Some(&k) = quietest.map(|(k, _)| k) {
            sessions.remove(&k);
        }
    }
    let state = sessions.entry(uid).or_insert_with(|| SessionState {
        start_ms: arrival_ms - (f64::from(header.session_time) * 1000.0) as i64,
        name: session_name(None, uid),
        ..SessionState::default()
    });
    state.last_arrival_ms = arrival_ms;
    state
}

/// The most frequent of the recent steps between frames (the smallest of equals).
fn usual_step(steps: &VecDeque<u32>) -> Option<u32> {
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    for s in steps {
        *counts.entry(*s).or_default() += 1;
    }
    let most = counts.values().copied().max()?;
    counts.into_iter().find(|(_, n)| *n == most).map(|(s, _)| s)
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
    /// The frame counter went back a long way: the game counts afresh.
    fn restart(&mut self) {
        self.frames.clear();
        self.settled = None;
        self.steps.clear();
        self.motion_frame = 0;
    }

    /// The rows of `frame` if it now has its Lap Data and Car Telemetry and the drivers are
    /// known (once: later packets of it are duplicates or make nothing).
    fn complete(&mut self, frame: u32) -> Result<Option<RecordBatch>, ArrowError> {
        let Some(p) = self.frames.get_mut(&frame) else {
            return Ok(None);
        };
        if p.done || p.laps.is_none() || p.telemetry.is_none() || self.drivers.is_none() {
            return Ok(None);
        }
        p.done = true;
        let (laps, telemetry) = (p.laps.take().unwrap_or_default(), p.telemetry.take());
        let seconds = f64::from(p.session_time);
        self.rows(seconds, &laps, &telemetry.unwrap_or_default())
            .map(Some)
    }

    /// The rows of the frames that have their packets but waited for the participants.
    fn complete_waiting(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        let waiting: Vec<u32> = self
            .frames
            .iter()
            .filter(|(_, p)| !p.done && p.laps.is_some() && p.telemetry.is_some())
            .map(|(f, _)| *f)
            .collect();
        let mut batches = Vec::new();
        for f in waiting {
            batches.extend(self.complete(f)?);
        }
        match batches.len() {
            0 => Ok(None),
            1 => Ok(batches.pop()),
            _ => arrow::compute::concat_batches(&telemetry_schema(), &batches).map(Some),
        }
    }

    /// Settles, in frame order, the frames that arrived before `cutoff_ms` (and the oldest
    /// beyond [`MAX_PENDING_FRAMES`]), counting the lost.
    fn settle(&mut self, cutoff_ms: i64, counts: &mut FrameCounts) {
        loop {
            let crowded = self.frames.len() > MAX_PENDING_FRAMES;
            let Some(entry) = self.frames.first_entry() else {
                break;
            };
            if entry.get().arrived_ms > cutoff_ms && !crowded {
                break;
            }
            let frame = *entry.key();
            let p = entry.remove();
            if !p.done && (p.laps.is_none() || p.telemetry.is_none()) {
                counts.lost += 1;
            }
            if let Some((s, t)) = self.settled {
                // Frames stop while the game is paused or in its menus, and a counter that
                // leaps (or a clock that goes back) is not a stream of lost frames.
                let gap = p.session_time - t;
                let unseen = self.unseen_between(frame - s);
                if (0.0..=1.0).contains(&gap) && unseen <= MAX_UNSEEN {
                    counts.lost += unseen;
                }
            }
            self.settled = Some((frame, p.session_time));
        }
    }

    /// How many frames of which nothing arrived a step of `step` frames skipped: the step
    /// over the session's usual one (the game counts rendered frames and sends every n-th,
    /// at its send rate), rounded.
    fn unseen_between(&mut self, step: u32) -> u64 {
        let usual = usual_step(&self.steps);
        if self.steps.len() == STEPS {
            self.steps.pop_front();
        }
        self.steps.push_back(step);
        usual.map_or(0, |u| {
            ((f64::from(step) / f64::from(u)).round() as u64).saturating_sub(1)
        })
    }

    fn rows(
        &mut self,
        seconds: f64,
        laps: &[CarLap],
        telemetry: &[CarTelemetry],
    ) -> Result<RecordBatch, ArrowError> {
        let drivers = self.drivers.as_deref().unwrap_or_default();
        let active = drivers.len().min(telemetry.len());
        let ts = self.start_ms + (seconds * 1000.0).round() as i64;
        self.sent
            .resize(active.max(self.sent.len()), VecDeque::new());
        let mut b = Builders::new(active);
        for (i, t) in telemetry.iter().take(active).enumerate() {
            let Some(lap) = laps.get(i) else {
                continue;
            };
            let moved = (lap.lap, lap.current_lap_ms);
            let sent = &mut self.sent[i];
            if sent.contains(&moved) {
                continue;
            }
            if sent.len() == 8 {
                sent.pop_front();
            }
            sent.push_back(moved);
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
