//! `pitwall bench --format f1-udp`: the game's path under load. The virtual cars are sent as a
//! game sends them, F1 25 packets over UDP straight to `pitwall-server --udp` (no broker): every
//! frame (at `--rate` frames per second) a Motion, a Lap Data and a Car Telemetry packet for all
//! cars, and a Participants packet every 5 seconds. A row's `ts` is the server's arrival clock
//! at the session's start plus the frame's session time, and the session time is the sender's
//! clock when it sends the frame, so `now - ts` at the Flight client is the time from datagram
//! to result row.

use std::net::UdpSocket;

use pitwall_proto::f1udp::{self, CarMotion, Header, Packet};

use super::*;

/// The query the latency is measured on: the game's over-revs.
pub(super) const LATENCY_QUERY: &str = "over_rev";

/// Sends frames to `127.0.0.1:port` until `stop`, counting rows (cars × frames) in `produced`.
pub(super) fn produce(
    args: &BenchArgs,
    port: u16,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
) -> Result<()> {
    if args.cars > f1udp::CARS {
        bail!(
            "--cars {}: a game packet holds at most {}",
            args.cars,
            f1udp::CARS
        );
    }
    let (sources, names) = bench_cars(args.cars)?;
    let mut cars: Vec<(CarSource, crate::udp::Car)> = sources
        .into_iter()
        .map(|s| (s, crate::udp::Car::default()))
        .collect();
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.connect(("127.0.0.1", port))?;
    let participants = Packet::Participants(crate::udp::participants(&names));
    let header = crate::udp::f1_25_header(now_ms() as u64);
    let start = Instant::now();
    let period = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let mut frame = 0u32;
    while !stop.load(Ordering::Relaxed) {
        if let Some(wait) = (period * frame).checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let elapsed = start.elapsed();
        let header = Header {
            session_time: elapsed.as_secs_f32(),
            frame,
            overall_frame: frame,
            ..header
        };
        for (source, car) in &mut cars {
            let row = source.next;
            source.next = (row + 1) % source.rows.num_rows();
            crate::udp::update_car(car, &source.rows, row, elapsed.as_millis() as i64);
        }
        let motion: Vec<CarMotion> = cars.iter().map(|(_, c)| c.motion).collect();
        let info = u64::from(frame)
            .is_multiple_of(5 * args.rate.max(1))
            .then_some(&participants);
        let packets = [
            Packet::Motion(motion),
            Packet::LapData(cars.iter().map(|(_, c)| c.lap).collect()),
            Packet::CarTelemetry(cars.iter().map(|(_, c)| c.telemetry).collect()),
        ];
        for p in info.into_iter().chain(&packets) {
            socket.send(&f1udp::encode(&header, p)?)?;
        }
        produced.fetch_add(args.cars as u64, Ordering::Relaxed);
        frame += 1;
    }
    Ok(())
}
