//! `pitwall udp`: EA F1 game telemetry (UDP) for a team.
//!
//! - `pitwall udp --listen ADDR --brokers B --topic T`: a bridge from a game (or several rigs
//!   sending to one address) to Kafka: each frame's rows, keyed by car, as `pitwall replay`
//!   publishes them; a progress line every second with packets/s, rows/s and refusals.
//! - `pitwall udp record --listen ADDR --out FILE`: the datagrams as they arrive, with their
//!   arrival times, into a file `udp play` sends again.
//! - `pitwall udp play (FILE | --from-session) --to ADDR [--speed N]`: a recording, or a
//!   Pitwall session (the bundled race, `--dir`, `--file`) encoded as F1 25 packets (Session,
//!   Participants, Motion when the session has positions, Lap Data, Car Telemetry, and the
//!   session start/end events): a full race of game traffic for tests and demos.

use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{ArrowPrimitiveType, Float32Type, Float64Type, Int8Type, Int32Type};
use clap::{Args, Subcommand};
use pitwall_proto::f1udp::{
    self, CarLap, CarMotion, CarTelemetry, Event, EventDetails, Frames, Header, Packet,
    Participant, Participants, Session as GameSession,
};
use pitwall_proto::schema::col;

use crate::session::Session;

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UdpArgs {
    #[command(subcommand)]
    pub command: Option<UdpCommand>,
    #[command(flatten)]
    pub bridge: BridgeArgs,
}

#[derive(Subcommand)]
pub enum UdpCommand {
    /// Record the datagrams arriving on an address, with their arrival times.
    Record {
        /// Address to listen on, e.g. 0.0.0.0:20777.
        #[arg(long)]
        listen: SocketAddr,
        /// File to write.
        #[arg(long)]
        out: PathBuf,
        /// Stop after this many seconds (default: Ctrl-C).
        #[arg(long)]
        seconds: Option<f64>,
    },
    /// Send a recording again, or a Pitwall session as F1 25 packets.
    Play(PlayArgs),
}

#[derive(Args)]
pub struct BridgeArgs {
    /// Address to listen on, e.g. 0.0.0.0:20777.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Kafka bootstrap servers.
    #[arg(long, env = "PITWALL_BROKERS", default_value = "127.0.0.1:19092")]
    pub brokers: String,
    /// Topic to publish to.
    #[arg(long, env = "PITWALL_TOPIC", default_value = "telemetry")]
    pub topic: String,
    /// Payload encoding.
    #[arg(long, value_enum, default_value_t = crate::wire::WireFormat::Json)]
    pub format: crate::wire::WireFormat,
    /// Stop after this many seconds (default: Ctrl-C).
    #[arg(long)]
    pub seconds: Option<f64>,
}

#[derive(Args)]
pub struct PlayArgs {
    /// A recording made by `pitwall udp record`.
    #[arg(
        required_unless_present = "from_session",
        conflicts_with = "from_session"
    )]
    pub recording: Option<PathBuf>,
    /// Encode a Pitwall session (the bundled race unless --dir or --file) as F1 25 packets.
    #[arg(long)]
    pub from_session: bool,
    /// Where to send, e.g. 127.0.0.1:20777.
    #[arg(long)]
    pub to: SocketAddr,
    /// Pace multiplier over real time.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// FastF1 export directory (with --from-session).
    #[arg(long, requires = "from_session", conflicts_with = "file")]
    pub dir: Option<PathBuf>,
    /// JSONL or Parquet file in the Pitwall schema (with --from-session).
    #[arg(long, requires = "from_session")]
    pub file: Option<PathBuf>,
    /// Only laps FIRST-LAST, from 30 s before the first (with --from-session).
    #[arg(long, value_name = "FIRST-LAST", requires = "from_session")]
    pub laps: Option<String>,
}

/// Runs `pitwall udp ...`; returns the line to print at the end.
pub async fn run(args: UdpArgs) -> Result<String> {
    match args.command {
        Some(UdpCommand::Record {
            listen,
            out,
            seconds,
        }) => tokio::task::spawn_blocking(move || record(listen, &out, seconds)).await?,
        Some(UdpCommand::Play(play)) => {
            tokio::task::spawn_blocking(move || run_play(&play)).await?
        }
        None => {
            let Some(listen) = args.bridge.listen else {
                bail!("pitwall udp: give --listen ADDR (a bridge to Kafka), or `record` / `play`");
            };
            tokio::task::spawn_blocking(move || bridge(listen, &args.bridge)).await?
        }
    }
}

fn run_play(args: &PlayArgs) -> Result<String> {
    if !(args.speed.is_finite() && args.speed > 0.0) {
        bail!("--speed {}: expected a number above 0", args.speed);
    }
    let packets = match &args.recording {
        Some(path) => read_recording(path)?,
        None => session_packets(&load_session(args)?)?,
    };
    let socket = UdpSocket::bind(if args.to.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    let (sent, bytes, elapsed) = send_paced(&socket, args.to, &packets, args.speed)?;
    Ok(format!(
        "sent {sent} packets ({:.1} MB) to {} in {:.1} s",
        bytes as f64 / 1e6,
        args.to,
        elapsed.as_secs_f64()
    ))
}

/// Sends `(ms since the first, datagram)` at `speed` times their pace.
fn send_paced(
    socket: &UdpSocket,
    to: SocketAddr,
    packets: &[(i64, Vec<u8>)],
    speed: f64,
) -> Result<(u64, u64, Duration)> {
    let started = Instant::now();
    let t0 = packets.first().map_or(0, |p| p.0);
    let (mut sent, mut bytes) = (0u64, 0u64);
    for (t, datagram) in packets {
        let due = Duration::from_secs_f64((t - t0).max(0) as f64 / 1000.0 / speed);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        socket
            .send_to(datagram, to)
            .with_context(|| format!("sending to {to}"))?;
        sent += 1;
        bytes += datagram.len() as u64;
    }
    Ok((sent, bytes, started.elapsed()))
}

/// A recording: `PWUDP1\n`, then per datagram its arrival (µs since the first, u64 LE), its
/// length (u32 LE) and its bytes.
const MAGIC: &[u8] = b"PWUDP1\n";

fn record(listen: SocketAddr, out: &PathBuf, seconds: Option<f64>) -> Result<String> {
    let socket = listen_on(listen)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut file = BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("--out {}", out.display()))?,
    );
    file.write_all(MAGIC)?;
    eprintln!(
        "recording datagrams on {} into {}",
        socket.local_addr()?,
        out.display()
    );
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs_f64(s));
    let mut first: Option<Instant> = None;
    let mut buf = vec![0u8; 65_536];
    let (mut n_datagrams, mut bytes) = (0u64, 0u64);
    while deadline.is_none_or(|d| Instant::now() < d) {
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        let at = first.get_or_insert_with(Instant::now).elapsed().as_micros() as u64;
        file.write_all(&at.to_le_bytes())?;
        file.write_all(&(n as u32).to_le_bytes())?;
        file.write_all(&buf[..n])?;
        n_datagrams += 1;
        bytes += n as u64;
    }
    file.flush()?;
    Ok(format!(
        "recorded {n_datagrams} datagrams ({bytes} bytes) into {}",
        out.display()
    ))
}

fn read_recording(path: &PathBuf) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut r =
        BufReader::new(std::fs::File::open(path).with_context(|| format!("{}", path.display()))?);
    let mut magic = [0u8; MAGIC.len()];
    r.read_exact(&mut magic)
        .ok()
        .filter(|()| magic == MAGIC)
        .with_context(|| format!("{}: not a `pitwall udp record` file", path.display()))?;
    let mut packets = Vec::new();
    let mut head = [0u8; 12];
    loop {
        match r.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e.into()),
        }
        let at = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(head[8..].try_into().expect("4 bytes")) as usize;
        if len > 65_536 {
            bail!(
                "{}: a datagram of {len} bytes: the file is damaged",
                path.display()
            );
        }
        let mut datagram = vec![0u8; len];
        r.read_exact(&mut datagram)
            .with_context(|| format!("{}: cut short", path.display()))?;
        packets.push(((at / 1000) as i64, datagram));
    }
    Ok(packets)
}

/// A packet of the feed, at `ms` since the session's first row.
struct Feed {
    header: Header,
    start_ms: i64,
    frame: u32,
    packets: Vec<(i64, Vec<u8>)>,
}

impl Feed {
    fn push(&mut self, ts_ms: i64, packet: &Packet) -> Result<()> {
        let t = ts_ms - self.start_ms;
        let header = Header {
            session_time: t as f32 / 1000.0,
            frame: self.frame,
            overall_frame: self.frame,
            ..self.header
        };
        self.packets.push((t, f1udp::encode(&header, packet)?));
        Ok(())
    }
}

/// A socket listening for game datagrams on `addr`, with a 4 MB receive buffer (as the
/// server's `--udp`): the kernel's default (about 208 kB) overflows while this process waits
/// for the CPU. The kernel caps it at `net.core.rmem_max`.
pub fn listen_on(addr: SocketAddr) -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_recv_buffer_size(4 << 20)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("--listen {addr}"))?;
    Ok(socket.into())
}

/// The header of an F1 25 packet of session `session_uid` (game 1.18, car 0 the player's),
/// before its packet id, time and frame are set.
pub(crate) fn f1_25_header(session_uid: u64) -> Header {
    Header {
        format: 2025,
        game_year: 25,
        game_major: 1,
        game_minor: 18,
        packet_version: 1,
        packet_id: 0,
        session_uid,
        session_time: 0.0,
        frame: 0,
        overall_frame: 0,
        player_car: 0,
        secondary_player_car: 255,
    }
}

/// Each car's latest values, as the game would send them for every frame.
#[derive(Default, Clone)]
pub(crate) struct Car {
    pub(crate) telemetry: CarTelemetry,
    pub(crate) lap: CarLap,
    pub(crate) motion: CarMotion,
    /// (lap, its first sample's ts).
    lap_start: Option<(u8, i64)>,
}

/// A session as F1 25 packets: one frame per distinct timestamp, carrying the new sample of
/// each car that has one (the others as they were: a receiver tells them by their lap timer).
pub fn session_packets(session: &Session) -> Result<Vec<(i64, Vec<u8>)>> {
    let drivers = session.drivers();
    if drivers.len() > f1udp::CARS {
        bail!(
            "{} cars: a game packet holds at most {}",
            drivers.len(),
            f1udp::CARS
        );
    }
    let index: BTreeMap<&str, usize> = drivers
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    let Some((first, last)) = session.time_span() else {
        bail!("the session has no rows");
    };
    let rows = &session.rows;
    let has_position = rows
        .column_by_name(col::X)
        .is_some_and(|x| x.null_count() < x.len());
    let uid = session_uid(&session.name);
    let mut feed = Feed {
        header: f1_25_header(uid),
        start_ms: first,
        frame: 0,
        packets: Vec::new(),
    };
    let max_lap = rows
        .column_by_name(col::LAP)
        .and_then(|l| arrow::compute::max(l.as_primitive::<Int32Type>()))
        .unwrap_or(0);
    let game_session = GameSession {
        total_laps: max_lap.clamp(0, 255) as u8,
        track_length_m: 0,
        session_type: 15,
        track_id: -1,
    };
    let participants = participants(&drivers);
    let mut cars = vec![Car::default(); drivers.len()];
    let mut next_info = first;
    feed.push(
        first,
        &Packet::Event(Event {
            code: *b"SSTA",
            details: EventDetails::None,
        }),
    )?;
    let ts = session.ts();
    let mut pos = 0;
    while pos < rows.num_rows() {
        let t = ts.value(pos);
        let end = pos + ts.values()[pos..].partition_point(|v| *v == t);
        if t >= next_info {
            feed.push(t, &Packet::Session(game_session))?;
            feed.push(t, &Packet::Participants(participants.clone()))?;
            next_info = t + 5_000;
        }
        for row in pos..end {
            let driver = rows
                .column_by_name(col::DRIVER)
                .expect("driver")
                .as_string::<i32>()
                .value(row);
            update_car(&mut cars[index[driver]], rows, row, t);
        }
        if has_position {
            feed.push(t, &Packet::Motion(cars.iter().map(|c| c.motion).collect()))?;
        }
        feed.push(t, &Packet::LapData(cars.iter().map(|c| c.lap).collect()))?;
        feed.push(
            t,
            &Packet::CarTelemetry(cars.iter().map(|c| c.telemetry).collect()),
        )?;
        feed.frame += 1;
        pos = end;
    }
    feed.push(
        last,
        &Packet::Event(Event {
            code: *b"SEND",
            details: EventDetails::None,
        }),
    )?;
    Ok(feed.packets)
}

/// A stable session UID from the session's name (FNV-1a: any stable hash does; the game's own
/// UIDs are random).
fn session_uid(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The Participants packet of the session's drivers, in car order.
pub(crate) fn participants(drivers: &[String]) -> Participants {
    Participants {
        active_cars: drivers.len() as u8,
        cars: drivers
            .iter()
            .map(|d| Participant {
                ai: true,
                name: d.clone(),
                telemetry_public: true,
                ..Participant::default()
            })
            .collect(),
    }
}

/// Column `c` of `rows` at `row`, when the column exists and the value is not null.
fn value<T: ArrowPrimitiveType>(rows: &RecordBatch, c: &str, row: usize) -> Option<T::Native> {
    let a = rows.column_by_name(c)?.as_primitive::<T>();
    a.is_valid(row).then(|| a.value(row))
}

/// Row `row` (at `ts`) as its car's new values.
pub(crate) fn update_car(car: &mut Car, rows: &RecordBatch, row: usize, ts: i64) {
    let f32_of = |c: &str| value::<Float32Type>(rows, c, row).unwrap_or(0.0);
    let i8_of = |c: &str| value::<Int8Type>(rows, c, row).unwrap_or(0);
    let lap = value::<Int32Type>(rows, col::LAP, row).map_or(0, |l| l.clamp(0, 255) as u8);
    let start = match car.lap_start {
        Some((l, s)) if l == lap => s,
        _ => ts,
    };
    car.lap_start = Some((lap, start));
    let brake = rows
        .column_by_name(col::BRAKE)
        .map(|a| a.as_boolean())
        .is_some_and(|a| a.is_valid(row) && a.value(row));
    let distance = value::<Float64Type>(rows, col::DISTANCE, row).map_or(0.0, |d| d as f32);
    car.telemetry = CarTelemetry {
        speed_kmh: f32_of(col::SPEED).round().clamp(0.0, 65_535.0) as u16,
        rpm: f32_of(col::RPM).round().clamp(0.0, 65_535.0) as u16,
        throttle: f32_of(col::THROTTLE) / 100.0,
        brake: if brake { 1.0 } else { 0.0 },
        gear: i8_of(col::GEAR),
        drs: i8_of(col::DRS) >= 10,
        ..car.telemetry
    };
    car.lap = CarLap {
        lap,
        current_lap_ms: (ts - start).clamp(0, i64::from(u32::MAX)) as u32,
        lap_distance: distance,
        total_distance: distance,
        result_status: 2,
        driver_status: 4,
        ..car.lap
    };
    car.motion = CarMotion {
        // The game's Y is up: the schema's y (ground plane) is the game's Z.
        x: f32_of(col::X),
        y: f32_of(col::Z),
        z: f32_of(col::Y),
    };
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The session `play --from-session` encodes.
fn load_session(args: &PlayArgs) -> Result<Session> {
    let session = match (&args.dir, &args.file) {
        (Some(dir), _) => Session::from_dir(dir, None)?,
        (None, Some(file)) => Session::from_file(file, None)?,
        (None, None) => Session::bundled()?,
    };
    match &args.laps {
        Some(range) => {
            let (lo, hi) = crate::session::parse_lap_range(range)?;
            session.cut_laps(lo, hi, 30_000)
        }
        None => Ok(session),
    }
}

/// Counts of what the bridge did since it started, and since its last progress line.
#[derive(Default)]
struct Tally {
    packets: u64,
    rows: u64,
    refused: BTreeMap<&'static str, u64>,
    frames: f1udp::FrameCounts,
}

impl Tally {
    fn add_frames(&mut self, c: f1udp::FrameCounts) {
        self.frames.lost += c.lost;
        self.frames.duplicates += c.duplicates;
        self.frames.late += c.late;
    }
}

/// The bridge: datagrams on `listen` to rows on Kafka, keyed by car.
fn bridge(listen: SocketAddr, args: &BridgeArgs) -> Result<String> {
    use rdkafka::message::{Header as KafkaHeader, OwnedHeaders};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

    let socket = listen_on(listen)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut config = crate::replay::client_config(&args.brokers, &[])?;
    config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5");
    let producer: ThreadedProducer<DefaultProducerContext> =
        config.create().context("Kafka producer")?;
    let headers = OwnedHeaders::new().insert(KafkaHeader {
        key: pitwall_proto::FORMAT_HEADER,
        value: Some(args.format.header()),
    });
    eprintln!(
        "bridging {} to {} topic {}",
        socket.local_addr()?,
        args.brokers,
        args.topic
    );
    let deadline = args
        .seconds
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let (mut total, mut window) = (Tally::default(), Tally::default());
    let mut frames = Frames::default();
    let mut encoded = crate::wire::Encoded::default();
    let mut buf = vec![0u8; 4096];
    let mut last_line = Instant::now();
    while deadline.is_none_or(|d| Instant::now() < d) {
        if last_line.elapsed() >= Duration::from_secs(1) {
            frames.settle(unix_ms());
            let counts = frames.take_counts();
            window.add_frames(counts);
            total.add_frames(counts);
            eprintln!("{}", progress(&window, last_line.elapsed()));
            window = Tally::default();
            last_line = Instant::now();
        }
        let n = match socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e.into()),
        };
        window.packets += 1;
        let rows = match f1udp::decode(&buf[..n]) {
            Ok((header, packet)) => frames.push(&header, packet, unix_ms())?,
            Err(e) => {
                *window.refused.entry(e.reason()).or_default() += 1;
                *total.refused.entry(e.reason()).or_default() += 1;
                None
            }
        };
        total.packets += 1;
        let Some(rows) = rows.filter(|r| r.num_rows() > 0) else {
            continue;
        };
        crate::wire::encode(&rows, args.format, &mut encoded)?;
        let drivers = rows
            .column_by_name(col::DRIVER)
            .expect("driver")
            .as_string::<i32>();
        for i in 0..encoded.len() {
            let record = BaseRecord::to(&args.topic)
                .key(drivers.value(i))
                .payload(encoded.payload(i))
                .headers(headers.clone());
            crate::replay::send_waiting(&producer, record)?;
        }
        window.rows += rows.num_rows() as u64;
        total.rows += rows.num_rows() as u64;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the producer")?;
    frames.settle(unix_ms() + f1udp::REORDER_WINDOW_MS);
    total.add_frames(frames.take_counts());
    let f = total.frames;
    Ok(format!(
        "bridged {} packets into {} rows on {}; refused: {:?}; frames lost {}, duplicates {}, late {}",
        total.packets, total.rows, args.topic, total.refused, f.lost, f.duplicates, f.late
    ))
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

fn progress(window: &Tally, elapsed: Duration) -> String {
    let s = elapsed.as_secs_f64().max(1e-3);
    let refused: u64 = window.refused.values().sum();
    let f = window.frames;
    format!(
        "{:.0} packets/s, {:.0} rows/s, {refused} refused {:?}, frames lost {}, duplicates {}, late {}",
        window.packets as f64 / s,
        window.rows as f64 / s,
        window.refused,
        f.lost,
        f.duplicates,
        f.late
    )
}
