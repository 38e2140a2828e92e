//! EA F1 game UDP telemetry: the packets F1 23, F1 24 and F1 25 broadcast (packet formats
//! 2023, 2024, 2025; default port 20777), decoded into plain structs and encoded back.
//!
//! Every packet starts with a 29-byte little-endian header naming its format, its type
//! (`packetId`), the session, the session time and the frame it belongs to. Pitwall reads the
//! packets a telemetry row is made of: Motion (0: world position), Session (1: track, session
//! type), Lap Data (2: lap number, lap distance, lap and sector times, pit status), Event (3),
//! Participants (4: names, race numbers, teams) and Car Telemetry (6: speed, throttle, brake,
//! gear, RPM, DRS, temperatures); each car array has 22 slots. Other packet types of the
//! specification are recognised and skipped ([`Packet::Other`]). A datagram that is not one of
//! these packets — too short, too long for its type, an unknown format or packet id — is an
//! [`UdpError`] whose [`UdpError::reason`] is the label it is counted and dead-lettered under.
//!
//! The layouts are those of EA's public "F1 23/24/25 UDP specification"; fields Pitwall does
//! not use are skipped when decoding and written as zeros when encoding. [`encode`] writes
//! spec-exact packets of any of the three formats, so a recorded Pitwall session can be played
//! to a server as a game would send it, and decode(encode(p)) == p.

use std::fmt;

mod rows;
pub use rows::{FrameCounts, Frames, REORDER_WINDOW_MS};

/// The port the games send to by default.
pub const DEFAULT_PORT: u16 = 20777;
/// Bytes of the packet header.
pub const HEADER_LEN: usize = 29;
/// Car slots in every per-car array.
pub const CARS: usize = 22;
/// The packet formats this module reads and writes.
pub const FORMATS: [u16; 3] = [2023, 2024, 2025];

/// Packet ids.
pub mod id {
    pub const MOTION: u8 = 0;
    pub const SESSION: u8 = 1;
    pub const LAP_DATA: u8 = 2;
    pub const EVENT: u8 = 3;
    pub const PARTICIPANTS: u8 = 4;
    pub const CAR_TELEMETRY: u8 = 6;
    /// The highest id of the 2025 specification (Lap Positions).
    pub const LAST: u8 = 15;
}

/// Why a datagram is not a packet Pitwall can read.
#[derive(Debug, Clone, PartialEq)]
pub enum UdpError {
    /// Shorter than its header or than its packet type.
    Truncated { len: usize, expected: usize },
    /// Longer than its packet type.
    Oversize { len: usize, expected: usize },
    /// A `packetFormat` other than 2023, 2024, 2025.
    UnsupportedFormat(u16),
    /// A `packetId` the specification does not have.
    UnknownPacketId(u8),
    /// A `sessionTime` that is not a time since a session started (negative, not a number, or
    /// beyond [`MAX_SESSION_TIME_S`]).
    SessionTime(f32),
}

/// The longest session time read (about 11.5 days): longer is a corrupt header.
pub const MAX_SESSION_TIME_S: f32 = 1.0e6;

impl UdpError {
    /// The label the datagram is counted and dead-lettered under.
    pub fn reason(&self) -> &'static str {
        match self {
            UdpError::Truncated { .. } => "udp_truncated",
            UdpError::Oversize { .. } => "udp_oversize",
            UdpError::UnsupportedFormat(_) => "udp_format",
            UdpError::UnknownPacketId(_) => "udp_packet_id",
            UdpError::SessionTime(_) => "udp_session_time",
        }
    }
}

impl fmt::Display for UdpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UdpError::Truncated { len, expected } => {
                write!(
                    f,
                    "datagram of {len} bytes is truncated: expected {expected}"
                )
            }
            UdpError::Oversize { len, expected } => {
                write!(
                    f,
                    "datagram of {len} bytes is too long: expected {expected}"
                )
            }
            UdpError::UnsupportedFormat(v) => write!(
                f,
                "packet format {v} not supported (Pitwall reads the F1 23, 24 and 25 formats 2023, 2024, 2025)"
            ),
            UdpError::UnknownPacketId(v) => write!(f, "packet id {v} is not in the specification"),
            UdpError::SessionTime(t) => write!(
                f,
                "session time {t} s is not a time since a session started (0 to {MAX_SESSION_TIME_S})"
            ),
        }
    }
}

impl std::error::Error for UdpError {}

/// The header every packet starts with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header {
    pub format: u16,
    /// Last two digits of the game's year (23, 24, 25).
    pub game_year: u8,
    pub game_major: u8,
    pub game_minor: u8,
    pub packet_version: u8,
    pub packet_id: u8,
    pub session_uid: u64,
    /// Seconds since the session started.
    pub session_time: f32,
    pub frame: u32,
    /// The frame counter that does not go back after a flashback.
    pub overall_frame: u32,
    pub player_car: u8,
    /// 255 when there is no second player.
    pub secondary_player_car: u8,
}

/// A car's position in the world, in metres.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CarMotion {
    pub x: f32,
    pub y: f32,
    pub z: f32,
}

/// The session: track and type.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Session {
    pub total_laps: u8,
    pub track_length_m: u16,
    /// The game's number; see [`Session::type_name`] (the numbering changed in 2024).
    pub session_type: u8,
    /// -1 = unknown.
    pub track_id: i8,
}

/// A car's lap: times in ms, distances in metres.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CarLap {
    pub last_lap_ms: u32,
    pub current_lap_ms: u32,
    pub sector1_ms: u32,
    pub sector2_ms: u32,
    /// Distance round the current lap (negative before the line at the start).
    pub lap_distance: f32,
    pub total_distance: f32,
    pub position: u8,
    pub lap: u8,
    /// 0 none, 1 pitting, 2 in the pit area.
    pub pit_status: u8,
    /// 0, 1, 2.
    pub sector: u8,
    /// 0 garage, 1 flying lap, 2 in lap, 3 out lap, 4 on track.
    pub driver_status: u8,
    /// 0 invalid, 1 inactive, 2 active, 3 finished, 4 DNF, 5 DSQ, 6 not classified, 7 retired.
    pub result_status: u8,
}

/// Event details Pitwall uses; others keep only their code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventDetails {
    None,
    /// FTLP: the car and its lap time in seconds.
    FastestLap {
        car: u8,
        lap_time_s: f32,
    },
    /// RTMT, TMPT, RCWN, DTSV, SGSV: the car concerned.
    Car(u8),
    /// OVTK.
    Overtake {
        overtaking: u8,
        overtaken: u8,
    },
    /// SPTP: the car and its speed in km/h.
    SpeedTrap {
        car: u8,
        speed_kmh: f32,
    },
    /// STLG: lights on.
    StartLights(u8),
    /// BUTN: button bit flags.
    Buttons(u32),
}

/// An event: its four-letter code (`SSTA` session start, `SEND` end, `FTLP` fastest lap,
/// `DRSE`/`DRSD` DRS enabled/disabled, `CHQF` chequered flag, ...) and details.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    pub code: [u8; 4],
    pub details: EventDetails,
}

/// A car's driver.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Participant {
    pub ai: bool,
    pub driver_id: u8,
    pub team_id: u8,
    pub race_number: u8,
    pub nationality: u8,
    /// As the game sends it (UTF-8); names of online players may be hidden by the game.
    pub name: String,
    /// False when the player keeps their telemetry private.
    pub telemetry_public: bool,
}

/// Who drives: the active cars and each slot's driver.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Participants {
    pub active_cars: u8,
    pub cars: Vec<Participant>,
}

/// A car's telemetry channels.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CarTelemetry {
    pub speed_kmh: u16,
    /// 0 to 1.
    pub throttle: f32,
    /// -1 (full left) to 1.
    pub steer: f32,
    /// 0 to 1.
    pub brake: f32,
    /// 0 to 100.
    pub clutch: u8,
    /// -1 reverse, 0 neutral, 1 to 8.
    pub gear: i8,
    pub rpm: u16,
    pub drs: bool,
    /// Rear left, rear right, front left, front right (°C).
    pub brake_temps_c: [u16; 4],
    pub tyre_surface_temps_c: [u8; 4],
    pub tyre_inner_temps_c: [u8; 4],
    pub engine_temp_c: u16,
    pub tyre_pressures_psi: [f32; 4],
}

/// A decoded packet.
#[derive(Debug, Clone, PartialEq)]
pub enum Packet {
    Motion(Vec<CarMotion>),
    Session(Session),
    LapData(Vec<CarLap>),
    Event(Event),
    Participants(Participants),
    CarTelemetry(Vec<CarTelemetry>),
    /// A packet type of the specification Pitwall does not read (its id).
    Other(u8),
}

impl Packet {
    /// The packet id this packet is sent under.
    pub fn id(&self) -> u8 {
        match self {
            Packet::Motion(_) => id::MOTION,
            Packet::Session(_) => id::SESSION,
            Packet::LapData(_) => id::LAP_DATA,
            Packet::Event(_) => id::EVENT,
            Packet::Participants(_) => id::PARTICIPANTS,
            Packet::CarTelemetry(_) => id::CAR_TELEMETRY,
            Packet::Other(i) => *i,
        }
    }
}

impl Session {
    /// "Race", "Qualifying 1", ... by the numbering of `format` (2024 inserted the sprint
    /// shootouts at 10-14, moving the race from 10 to 15).
    pub fn type_name(&self, format: u16) -> &'static str {
        const COMMON: [&str; 10] = [
            "Unknown",
            "Practice 1",
            "Practice 2",
            "Practice 3",
            "Short Practice",
            "Qualifying 1",
            "Qualifying 2",
            "Qualifying 3",
            "Short Qualifying",
            "One-Shot Qualifying",
        ];
        const LATER_2023: [&str; 4] = ["Race", "Race 2", "Race 3", "Time Trial"];
        const LATER_2024: [&str; 9] = [
            "Sprint Shootout 1",
            "Sprint Shootout 2",
            "Sprint Shootout 3",
            "Short Sprint Shootout",
            "One-Shot Sprint Shootout",
            "Race",
            "Race 2",
            "Race 3",
            "Time Trial",
        ];
        let t = usize::from(self.session_type);
        let later: &[&str] = if format >= 2024 {
            &LATER_2024
        } else {
            &LATER_2023
        };
        COMMON
            .get(t)
            .or_else(|| later.get(t - COMMON.len()))
            .copied()
            .unwrap_or("Unknown")
    }
}

/// The per-format layout of the packets (byte offsets within a car record).
struct Layout {
    session_len: usize,
    lap_record: usize,
    /// lapDistance, totalDistance, carPosition (then lap, pit status, pit stops, sector follow).
    lap_distance: usize,
    driver_status: usize,
    participant_record: usize,
    name_len: usize,
    /// yourTelemetry.
    telemetry_public: usize,
}

const LAYOUT_2023: Layout = Layout {
    session_len: 644,
    lap_record: 50,
    lap_distance: 18,
    driver_status: 42,
    participant_record: 58,
    name_len: 48,
    telemetry_public: 55,
};
const LAYOUT_2024: Layout = Layout {
    session_len: 753,
    lap_record: 57,
    lap_distance: 20,
    driver_status: 44,
    participant_record: 60,
    name_len: 48,
    telemetry_public: 55,
};
const LAYOUT_2025: Layout = Layout {
    participant_record: 57,
    name_len: 32,
    telemetry_public: 39,
    ..LAYOUT_2024
};

const MOTION_RECORD: usize = 60;
const TELEMETRY_RECORD: usize = 60;
const EVENT_LEN: usize = 45;

fn layout(format: u16) -> Result<&'static Layout, UdpError> {
    match format {
        2023 => Ok(&LAYOUT_2023),
        2024 => Ok(&LAYOUT_2024),
        2025 => Ok(&LAYOUT_2025),
        other => Err(UdpError::UnsupportedFormat(other)),
    }
}

/// The exact size of packet `packet_id` in `format`, for the types Pitwall reads.
pub fn packet_len(format: u16, packet_id: u8) -> Result<Option<usize>, UdpError> {
    let l = layout(format)?;
    Ok(match packet_id {
        id::MOTION => Some(HEADER_LEN + CARS * MOTION_RECORD),
        id::SESSION => Some(l.session_len),
        id::LAP_DATA => Some(HEADER_LEN + CARS * l.lap_record + 2),
        id::EVENT => Some(EVENT_LEN),
        id::PARTICIPANTS => Some(HEADER_LEN + 1 + CARS * l.participant_record),
        id::CAR_TELEMETRY => Some(HEADER_LEN + CARS * TELEMETRY_RECORD + 3),
        i if i <= id::LAST => None,
        i => return Err(UdpError::UnknownPacketId(i)),
    })
}

/// Little-endian reads at byte offsets of a slice known to be long enough.
struct Le<'a>(&'a [u8]);

impl Le<'_> {
    fn u8(&self, o: usize) -> u8 {
        self.0[o]
    }
    fn i8(&self, o: usize) -> i8 {
        i8::from_le_bytes([self.0[o]])
    }
    fn u16(&self, o: usize) -> u16 {
        u16::from_le_bytes(self.array(o))
    }
    fn u32(&self, o: usize) -> u32 {
        u32::from_le_bytes(self.array(o))
    }
    fn u64(&self, o: usize) -> u64 {
        u64::from_le_bytes(self.array(o))
    }
    fn f32(&self, o: usize) -> f32 {
        f32::from_le_bytes(self.array(o))
    }
    fn array<const N: usize>(&self, o: usize) -> [u8; N] {
        self.0[o..o + N].try_into().expect("in bounds")
    }
}

/// Little-endian writes at byte offsets of a zeroed buffer of the packet's size.
struct LeMut<'a>(&'a mut [u8]);

impl LeMut<'_> {
    fn put(&mut self, o: usize, bytes: &[u8]) {
        self.0[o..o + bytes.len()].copy_from_slice(bytes);
    }
}

/// Decodes one datagram.
pub fn decode(datagram: &[u8]) -> Result<(Header, Packet), UdpError> {
    if datagram.len() < HEADER_LEN {
        // The format is the first field: refuse a 2022 packet for its format, not its size.
        if datagram.len() >= 2 {
            layout(u16::from_le_bytes([datagram[0], datagram[1]]))?;
        }
        return Err(UdpError::Truncated {
            len: datagram.len(),
            expected: HEADER_LEN,
        });
    }
    let b = Le(datagram);
    let header = Header {
        format: b.u16(0),
        game_year: b.u8(2),
        game_major: b.u8(3),
        game_minor: b.u8(4),
        packet_version: b.u8(5),
        packet_id: b.u8(6),
        session_uid: b.u64(7),
        session_time: b.f32(15),
        frame: b.u32(19),
        overall_frame: b.u32(23),
        player_car: b.u8(27),
        secondary_player_car: b.u8(28),
    };
    let l = layout(header.format)?;
    if !(0.0..=MAX_SESSION_TIME_S).contains(&header.session_time) {
        return Err(UdpError::SessionTime(header.session_time));
    }
    let Some(expected) = packet_len(header.format, header.packet_id)? else {
        return Ok((header, Packet::Other(header.packet_id)));
    };
    let len = datagram.len();
    if len < expected {
        return Err(UdpError::Truncated { len, expected });
    }
    if len > expected {
        return Err(UdpError::Oversize { len, expected });
    }
    let packet = match header.packet_id {
        id::MOTION => Packet::Motion(cars(MOTION_RECORD, 0, |o| CarMotion {
            x: b.f32(o),
            y: b.f32(o + 4),
            z: b.f32(o + 8),
        })),
        id::SESSION => Packet::Session(Session {
            total_laps: b.u8(32),
            track_length_m: b.u16(33),
            session_type: b.u8(35),
            track_id: b.i8(36),
        }),
        id::LAP_DATA => Packet::LapData(cars(l.lap_record, 0, |o| decode_lap(&b, l, o))),
        id::EVENT => Packet::Event(decode_event(&b)),
        id::PARTICIPANTS => Packet::Participants(Participants {
            active_cars: b.u8(HEADER_LEN),
            cars: cars(l.participant_record, 1, |o| decode_participant(&b, l, o)),
        }),
        id::CAR_TELEMETRY => {
            Packet::CarTelemetry(cars(TELEMETRY_RECORD, 0, |o| decode_telemetry(&b, o)))
        }
        other => unreachable!("packet_len knows id {other}"),
    };
    Ok((header, packet))
}

/// The 22 records of a car array of `record` bytes, `skip` bytes after the header.
fn cars<T>(record: usize, skip: usize, f: impl Fn(usize) -> T) -> Vec<T> {
    (0..CARS)
        .map(|i| f(HEADER_LEN + skip + i * record))
        .collect()
}

fn decode_lap(b: &Le<'_>, l: &Layout, o: usize) -> CarLap {
    let sector = |ms: usize| u32::from(b.u16(ms)) + u32::from(b.u8(ms + 2)) * 60_000;
    let d = o + l.lap_distance;
    CarLap {
        last_lap_ms: b.u32(o),
        current_lap_ms: b.u32(o + 4),
        sector1_ms: sector(o + 8),
        sector2_ms: sector(o + 11),
        lap_distance: b.f32(d),
        total_distance: b.f32(d + 4),
        position: b.u8(d + 12),
        lap: b.u8(d + 13),
        pit_status: b.u8(d + 14),
        sector: b.u8(d + 16),
        driver_status: b.u8(o + l.driver_status),
        result_status: b.u8(o + l.driver_status + 1),
    }
}

fn decode_event(b: &Le<'_>) -> Event {
    let code: [u8; 4] = b.array(HEADER_LEN);
    let d = HEADER_LEN + 4;
    let details = match &code {
        b"FTLP" => EventDetails::FastestLap {
            car: b.u8(d),
            lap_time_s: b.f32(d + 1),
        },
        b"RTMT" | b"TMPT" | b"RCWN" | b"DTSV" | b"SGSV" => EventDetails::Car(b.u8(d)),
        b"OVTK" => EventDetails::Overtake {
            overtaking: b.u8(d),
            overtaken: b.u8(d + 1),
        },
        b"SPTP" => EventDetails::SpeedTrap {
            car: b.u8(d),
            speed_kmh: b.f32(d + 1),
        },
        b"STLG" => EventDetails::StartLights(b.u8(d)),
        b"BUTN" => EventDetails::Buttons(b.u32(d)),
        _ => EventDetails::None,
    };
    Event { code, details }
}

fn decode_participant(b: &Le<'_>, l: &Layout, o: usize) -> Participant {
    let name = &b.0[o + 7..o + 7 + l.name_len];
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Participant {
        ai: b.u8(o) != 0,
        driver_id: b.u8(o + 1),
        team_id: b.u8(o + 3),
        race_number: b.u8(o + 5),
        nationality: b.u8(o + 6),
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        telemetry_public: b.u8(o + l.telemetry_public) != 0,
    }
}

fn decode_telemetry(b: &Le<'_>, o: usize) -> CarTelemetry {
    CarTelemetry {
        speed_kmh: b.u16(o),
        throttle: b.f32(o + 2),
        steer: b.f32(o + 6),
        brake: b.f32(o + 10),
        clutch: b.u8(o + 14),
        gear: b.i8(o + 15),
        rpm: b.u16(o + 16),
        drs: b.u8(o + 18) != 0,
        brake_temps_c: std::array::from_fn(|i| b.u16(o + 22 + 2 * i)),
        tyre_surface_temps_c: std::array::from_fn(|i| b.u8(o + 30 + i)),
        tyre_inner_temps_c: std::array::from_fn(|i| b.u8(o + 34 + i)),
        engine_temp_c: b.u16(o + 38),
        tyre_pressures_psi: std::array::from_fn(|i| b.f32(o + 40 + 4 * i)),
    }
}

/// Encodes a packet as the game sends it in `header.format` (the header's packet id is
/// taken from the packet). Car arrays shorter than 22 leave the other slots zero; fields this
/// module does not model are zero.
pub fn encode(header: &Header, packet: &Packet) -> Result<Vec<u8>, UdpError> {
    let l = layout(header.format)?;
    let len = packet_len(header.format, packet.id())?.unwrap_or(HEADER_LEN);
    let mut buf = vec![0u8; len];
    let mut w = LeMut(&mut buf);
    w.put(0, &header.format.to_le_bytes());
    w.put(2, &[header.game_year, header.game_major, header.game_minor]);
    w.put(5, &[header.packet_version, packet.id()]);
    w.put(7, &header.session_uid.to_le_bytes());
    w.put(15, &header.session_time.to_le_bytes());
    w.put(19, &header.frame.to_le_bytes());
    w.put(23, &header.overall_frame.to_le_bytes());
    w.put(27, &[header.player_car, header.secondary_player_car]);
    match packet {
        Packet::Motion(cars) => put_cars(&mut w, cars, MOTION_RECORD, 0, |w, o, c| {
            w.put(o, &c.x.to_le_bytes());
            w.put(o + 4, &c.y.to_le_bytes());
            w.put(o + 8, &c.z.to_le_bytes());
        }),
        Packet::Session(s) => {
            w.put(32, &[s.total_laps]);
            w.put(33, &s.track_length_m.to_le_bytes());
            w.put(35, &[s.session_type, s.track_id.to_le_bytes()[0]]);
        }
        Packet::LapData(cars) => {
            put_cars(&mut w, cars, l.lap_record, 0, |w, o, c| {
                encode_lap(w, l, o, c)
            });
            // No time-trial personal best or rival car.
            w.put(len - 2, &[255, 255]);
        }
        Packet::Event(e) => encode_event(&mut w, e),
        Packet::Participants(p) => {
            w.put(HEADER_LEN, &[p.active_cars]);
            put_cars(&mut w, &p.cars, l.participant_record, 1, |w, o, c| {
                encode_participant(w, l, o, c)
            });
        }
        Packet::CarTelemetry(cars) => {
            put_cars(&mut w, cars, TELEMETRY_RECORD, 0, encode_telemetry);
            // No MFD panel open, no suggested gear.
            w.put(len - 3, &[255, 255, 0]);
        }
        Packet::Other(_) => {}
    }
    Ok(buf)
}

fn put_cars<T>(
    w: &mut LeMut<'_>,
    cars: &[T],
    record: usize,
    skip: usize,
    f: impl Fn(&mut LeMut<'_>, usize, &T),
) {
    for (i, c) in cars.iter().take(CARS).enumerate() {
        f(w, HEADER_LEN + skip + i * record, c);
    }
}

fn encode_lap(w: &mut LeMut<'_>, l: &Layout, o: usize, c: &CarLap) {
    let sector = |w: &mut LeMut<'_>, at: usize, ms: u32| {
        w.put(at, &((ms % 60_000) as u16).to_le_bytes());
        w.put(at + 2, &[(ms / 60_000).min(255) as u8]);
    };
    w.put(o, &c.last_lap_ms.to_le_bytes());
    w.put(o + 4, &c.current_lap_ms.to_le_bytes());
    sector(w, o + 8, c.sector1_ms);
    sector(w, o + 11, c.sector2_ms);
    let d = o + l.lap_distance;
    w.put(d, &c.lap_distance.to_le_bytes());
    w.put(d + 4, &c.total_distance.to_le_bytes());
    w.put(d + 12, &[c.position, c.lap, c.pit_status]);
    w.put(d + 16, &[c.sector]);
    w.put(o + l.driver_status, &[c.driver_status, c.result_status]);
}

fn encode_event(w: &mut LeMut<'_>, e: &Event) {
    w.put(HEADER_LEN, &e.code);
    let d = HEADER_LEN + 4;
    match e.details {
        EventDetails::None => {}
        EventDetails::FastestLap { car, lap_time_s } => {
            w.put(d, &[car]);
            w.put(d + 1, &lap_time_s.to_le_bytes());
        }
        EventDetails::Car(car) | EventDetails::StartLights(car) => w.put(d, &[car]),
        EventDetails::Overtake {
            overtaking,
            overtaken,
        } => w.put(d, &[overtaking, overtaken]),
        EventDetails::SpeedTrap { car, speed_kmh } => {
            w.put(d, &[car]);
            w.put(d + 1, &speed_kmh.to_le_bytes());
        }
        EventDetails::Buttons(bits) => w.put(d, &bits.to_le_bytes()),
    }
}

fn encode_participant(w: &mut LeMut<'_>, l: &Layout, o: usize, c: &Participant) {
    w.put(
        o,
        &[
            u8::from(c.ai),
            c.driver_id,
            255,
            c.team_id,
            0,
            c.race_number,
        ],
    );
    w.put(o + 6, &[c.nationality]);
    // The name, cut at a character boundary so it stays UTF-8 and NUL-terminated.
    let mut end = c.name.len().min(l.name_len - 1);
    while !c.name.is_char_boundary(end) {
        end -= 1;
    }
    w.put(o + 7, &c.name.as_bytes()[..end]);
    w.put(o + l.telemetry_public, &[u8::from(c.telemetry_public)]);
}

fn encode_telemetry(w: &mut LeMut<'_>, o: usize, c: &CarTelemetry) {
    w.put(o, &c.speed_kmh.to_le_bytes());
    w.put(o + 2, &c.throttle.to_le_bytes());
    w.put(o + 6, &c.steer.to_le_bytes());
    w.put(o + 10, &c.brake.to_le_bytes());
    w.put(o + 14, &[c.clutch, c.gear.to_le_bytes()[0]]);
    w.put(o + 16, &c.rpm.to_le_bytes());
    w.put(o + 18, &[u8::from(c.drs)]);
    for i in 0..4 {
        w.put(o + 22 + 2 * i, &c.brake_temps_c[i].to_le_bytes());
        w.put(o + 40 + 4 * i, &c.tyre_pressures_psi[i].to_le_bytes());
    }
    w.put(o + 30, &c.tyre_surface_temps_c);
    w.put(o + 34, &c.tyre_inner_temps_c);
    w.put(o + 38, &c.engine_temp_c.to_le_bytes());
}

#[cfg(test)]
mod tests;
