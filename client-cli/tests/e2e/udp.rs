//! EA F1 game telemetry over UDP: the bundled race encoded as F1 25 packets by
//! `pitwall udp play --from-session`, into `pitwall-server --udp` (no broker), gives the same
//! laps and scores as the race itself (the batch result the Kafka path is tested equal to).

use std::collections::{BTreeMap, BTreeSet};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, TimestampMillisecondType};
use pitwall_server::engine::oracle::batch_result;

use crate::engine::{stats, wait_until_done};
use crate::support::{
    broker, client, create_topic, free_port, pitwall, pitwall_binary, run_ok, server_args,
    session_rows, sql, start_server, unique,
};

fn testdata(file: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../proto/testdata/f1-udp")
        .join(file)
}

/// A server on the game's port only (no broker): Flight on a free port, HTTP on `http`
/// (`off`, or an address).
pub(crate) fn udp_server_args(udp: u16, http: &str, data: &std::path::Path) -> Vec<String> {
    let udp = format!("127.0.0.1:{udp}");
    [
        "pitwall-server",
        "--udp",
        &udp,
        "--flight-addr",
        "127.0.0.1:0",
    ]
    .iter()
    .chain(&["--http-addr", http, "--data-dir", data.to_str().unwrap()])
    .map(|s| s.to_string())
    .collect()
}

/// Per (driver, lap): every other column of a result, by name.
type ByLap = BTreeMap<(String, i32), BTreeMap<String, f64>>;

fn by_lap(batches: &[RecordBatch]) -> ByLap {
    let mut out = ByLap::new();
    for b in batches {
        let driver = b.column_by_name("driver").unwrap().as_string::<i32>();
        let lap = b
            .column_by_name("lap")
            .unwrap()
            .as_primitive::<arrow::datatypes::Int32Type>();
        for i in 0..b.num_rows() {
            let mut values = BTreeMap::new();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                let v = match f.name().as_str() {
                    "session" | "driver" | "lap" | "is_anomaly" => continue,
                    "lap_start" | "last_sample" => {
                        c.as_primitive::<TimestampMillisecondType>().value(i) as f64
                    }
                    _ if c.is_null(i) => f64::NAN,
                    _ => {
                        let c = arrow::compute::cast(c, &DataType::Float64).unwrap();
                        c.as_primitive::<Float64Type>().value(i)
                    }
                };
                values.insert(f.name().clone(), v);
            }
            out.insert((driver.value(i).to_string(), lap.value(i)), values);
        }
    }
    out
}

/// The same laps; counts equal; times shifted by one constant (the game's clock starts at the
/// session); speeds, RPM and scores equal within float tolerance.
fn assert_same_laps(name: &str, udp: &ByLap, race: &ByLap) {
    assert_eq!(
        udp.keys().collect::<Vec<_>>(),
        race.keys().collect::<Vec<_>>(),
        "{name}: the same (driver, lap) rows"
    );
    let mut shift: Option<f64> = None;
    for (key, u) in udp {
        let r = &race[key];
        for (column, &a) in u {
            let b = r[column];
            match column.as_str() {
                "lap_start" | "last_sample" => {
                    let d = a - b;
                    assert_eq!(
                        *shift.get_or_insert(d),
                        d,
                        "{name} {key:?} {column}: time shift"
                    );
                }
                "samples" => assert_eq!(a, b, "{name} {key:?} samples"),
                _ if a.is_nan() || b.is_nan() => {
                    assert!(a.is_nan() && b.is_nan(), "{name} {key:?} {column}")
                }
                _ => assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{name} {key:?} {column}: {a} over UDP, {b} in the race"
                ),
            }
        }
    }
}

/// Laps 1-3 at 50x; `PITWALL_UDP_LAST_LAP=52 PITWALL_UDP_SPEED=10` plays the whole race.
#[tokio::test(flavor = "multi_thread")]
async fn a_race_played_as_game_packets_gives_the_races_laps_and_scores() {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.into());
    let last_lap: i32 = env("PITWALL_UDP_LAST_LAP", "3").parse().unwrap();
    let speed = env("PITWALL_UDP_SPEED", "50");
    let port = free_port();
    let data = std::env::temp_dir().join(unique("udp"));
    let app = start_server(udp_server_args(port, "off", &data)).await;
    let mut c = client(&app, None).await;
    // What is not a packet of F1 23-25 is counted by reason, and nothing else changes.
    let real_2025 = std::fs::read(testdata("f1-25/Motion.bin")).unwrap();
    let bad: Vec<Vec<u8>> = vec![
        vec![],
        b"not a game packet".to_vec(),
        std::fs::read(testdata("f1-22-23-24/2022-06.bin")).unwrap(),
        real_2025[..100].to_vec(),
        [real_2025.as_slice(), &[0; 9]].concat(),
        {
            let mut p = real_2025.clone();
            p[6] = 99;
            p
        },
    ];
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for datagram in &bad {
        socket.send_to(datagram, ("127.0.0.1", port)).unwrap();
    }
    let out = run_ok(pitwall().args([
        "udp",
        "play",
        "--from-session",
        "--laps",
        &format!("1-{last_lap}"),
        "--speed",
        &speed,
        "--to",
        &format!("127.0.0.1:{port}"),
    ]));
    println!("{}", out.trim());
    let rows = session_rows(last_lap);
    // Every sample arrived (none lost, none twice) and every lap closed.
    wait_until_done(&mut c, rows.num_rows() as u64).await;
    let refused: BTreeMap<String, u64> = stats(&mut c)
        .await
        .bad_messages
        .iter()
        .map(|b| (b.reason.clone(), b.count))
        .collect();
    let expected: BTreeMap<String, u64> = [
        // The empty datagram and the cut Motion packet.
        ("udp_truncated", 2),
        // The 2022 packet, and the text (its first two bytes read as format 28526).
        ("udp_format", 2),
        ("udp_oversize", 1),
        ("udp_packet_id", 1),
    ]
    .iter()
    .map(|(r, n)| (r.to_string(), *n))
    .collect();
    assert_eq!(refused, expected, "bad datagrams by reason");
    // ... and archived with their bytes, as dead letters.
    let q = "SELECT count(*), CAST(coalesce(sum(payload_bytes), 0) AS BIGINT) FROM archive.dead_letters WHERE topic = 'udp'";
    let bytes: i64 = bad.iter().map(|d| d.len() as i64).sum();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let b = sql(&mut c, q).await;
        let int = |i: usize| {
            b[0].column(i)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0)
        };
        if (int(0), int(1)) == (6, bytes) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} dead letters of {} bytes archived, not 6 of {bytes}",
            int(0),
            int(1)
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let queries = pitwall_server::initial_queries(None).unwrap();
    for q in ["lap_stats", "lap_anomaly"] {
        let udp = by_lap(&sql(&mut c, &format!("SELECT * FROM {q}")).await);
        let race = by_lap(&batch_result(&queries, q, &rows).await.unwrap());
        assert!(race.len() > 40, "{q}: {} laps", race.len());
        assert_same_laps(q, &udp, &race);
        println!("{q}: {} rows over UDP = the race's", udp.len());
    }
    app.stop().await;
}

/// `udp record` keeps every datagram, and `udp play` of the recording sends the same bytes
/// in the same order as the session's own encoding.
#[test]
fn a_recording_plays_back_the_datagrams_it_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("race.pwudp");
    let record_port = free_port();
    let mut recorder = std::process::Command::new(crate::support::pitwall_binary())
        .args([
            "udp",
            "record",
            "--listen",
            &format!("127.0.0.1:{record_port}"),
        ])
        .args(["--out", file.to_str().unwrap(), "--seconds", "6"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let to = format!("127.0.0.1:{record_port}");
    let args = [
        "udp",
        "play",
        "--from-session",
        "--laps",
        "1-1",
        "--speed",
        "100",
    ];
    run_ok(pitwall().args(args).args(["--to", &to]));
    assert!(recorder.wait().unwrap().success());
    // Play the recording to a socket of this test's and read it all.
    let receiver = pitwall_cli::udp::listen_on("127.0.0.1:0".parse().unwrap()).unwrap();
    receiver
        .set_read_timeout(Some(std::time::Duration::from_secs(2)))
        .unwrap();
    let to = receiver.local_addr().unwrap().to_string();
    let play = std::thread::spawn(move || {
        let file = file.to_str().unwrap().to_string();
        run_ok(pitwall().args(["udp", "play", &file, "--speed", "20", "--to", &to]))
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = receiver.recv(&mut buf) {
        got.push(buf[..n].to_vec());
    }
    println!("{}", play.join().unwrap().trim());
    let session = pitwall_cli::session::Session::bundled()
        .unwrap()
        .cut_laps(1, 1, 30_000)
        .unwrap();
    let sent: Vec<Vec<u8>> = pitwall_cli::udp::session_packets(&session)
        .unwrap()
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert!(sent.len() > 1000, "{} packets", sent.len());
    assert_eq!(got.len(), sent.len(), "datagrams played back");
    assert!(got == sent, "the same bytes in the same order");
}

/// A team's setup: `pitwall udp --listen` publishes the game's rows to Kafka keyed by car,
/// and a server on that topic gives the race's laps and scores.
#[tokio::test(flavor = "multi_thread")]
async fn a_bridge_publishes_the_games_rows_to_kafka() {
    let bootstrap = broker();
    let topic = unique("udp-bridge");
    create_topic(&bootstrap, &topic, 4).await.unwrap();
    let port = free_port();
    let bridge = std::process::Command::new(pitwall_binary())
        .args(["udp", "--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--brokers",
            &bootstrap,
            "--topic",
            &topic,
            "--seconds",
            "12",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let args = [
        "udp",
        "play",
        "--from-session",
        "--laps",
        "1-2",
        "--speed",
        "50",
    ];
    run_ok(
        pitwall()
            .args(args)
            .args(["--to", &format!("127.0.0.1:{port}")]),
    );
    let out = bridge.wait_with_output().unwrap();
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{progress}");
    assert!(
        progress.contains("packets/s"),
        "a progress line: {progress}"
    );
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let dir = tempfile::tempdir().unwrap();
    let app = start_server(server_args(&bootstrap, &topic, dir.path(), &[])).await;
    let mut c = client(&app, None).await;
    let rows = session_rows(2);
    wait_until_done(&mut c, rows.num_rows() as u64).await;
    let queries = pitwall_server::initial_queries(None).unwrap();
    for q in ["lap_stats", "lap_anomaly"] {
        let bridged = by_lap(&sql(&mut c, &format!("SELECT * FROM {q}")).await);
        let race = by_lap(&batch_result(&queries, q, &rows).await.unwrap());
        assert_same_laps(q, &bridged, &race);
        println!(
            "{q}: {} rows through the bridge = the race's",
            bridged.len()
        );
    }
    app.stop().await;
}

/// One server on a Kafka topic and on the game's UDP port at once: the race replayed into
/// Kafka and the same laps played as game packets (a session named `f1-<uid>`: the encoder
/// names no track) give two sessions, each with the race's laps.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_reads_kafka_and_the_game_at_once() {
    let bootstrap = broker();
    let topic = unique("udp-and-kafka");
    create_topic(&bootstrap, &topic, 4).await.unwrap();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let udp = format!("127.0.0.1:{port}");
    let app = start_server(server_args(
        &bootstrap,
        &topic,
        dir.path(),
        &["--udp", &udp],
    ))
    .await;
    let mut c = client(&app, None).await;
    crate::support::replay(&bootstrap, &topic, &["--laps", "1-2"]);
    let args = ["udp", "play", "--from-session", "--laps", "1-2"];
    run_ok(pitwall().args(args).args(["--speed", "50", "--to", &udp]));
    let rows = session_rows(2);
    wait_until_done(&mut c, 2 * rows.num_rows() as u64).await;
    let queries = pitwall_server::initial_queries(None).unwrap();
    let race = by_lap(&batch_result(&queries, "lap_stats", &rows).await.unwrap());
    for (source, filter) in [("UDP", "LIKE"), ("Kafka", "NOT LIKE")] {
        let q = format!("SELECT * FROM lap_stats WHERE session {filter} 'f1-%'");
        let got = by_lap(&sql(&mut c, &q).await);
        assert_same_laps(source, &got, &race);
        println!("lap_stats over {source}: {} rows = the race's", got.len());
    }
    app.stop().await;
}

/// A seeded generator for the network's faults (SplitMix64: the test needs no more).
struct Faults(u64);

impl Faults {
    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d4_049b_b133_111e);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A row's values without its time: (driver, lap (-1 for none), distance, speed, rpm) as bits.
type RowValues = (String, i32, u64, u32, u32);

fn row_values(batches: &[RecordBatch]) -> Vec<(RowValues, f64)> {
    let mut out = Vec::new();
    for b in batches {
        let col = |n: &str| b.column_by_name(n).unwrap();
        let driver = col("driver").as_string::<i32>();
        let lap = col("lap").as_primitive::<arrow::datatypes::Int32Type>();
        let distance = col("distance").as_primitive::<Float64Type>();
        let speed = col("speed").as_primitive::<arrow::datatypes::Float32Type>();
        let rpm = col("rpm").as_primitive::<arrow::datatypes::Float32Type>();
        let t = col("session_time").as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            let key = (
                driver.value(i).to_string(),
                if lap.is_null(i) { -1 } else { lap.value(i) },
                distance.value(i).to_bits(),
                speed.value(i).to_bits(),
                rpm.value(i).to_bits(),
            );
            out.push((key, t.value(i)));
        }
    }
    out
}

/// The game's datagrams over a bad network, at 10x: 5% dropped, 5% sent twice, 5% delayed by
/// up to 100 ms (reordered). The server stays up; every frame that lost its Lap Data or Car
/// Telemetry is counted lost, every repeat counted and ignored, none late; no row comes twice
/// or is invented, and the rows missing are the lost frames' cars.
#[tokio::test(flavor = "multi_thread")]
async fn lost_repeated_and_reordered_datagrams_are_counted_not_doubled() {
    use pitwall_proto::f1udp::{self, Frames};
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let app = start_server(udp_server_args(port, "off", data.path())).await;
    let mut c = client(&app, None).await;
    let session = pitwall_cli::session::Session::bundled()
        .unwrap()
        .cut_laps(1, 2, 30_000)
        .unwrap();
    let packets = pitwall_cli::udp::session_packets(&session).unwrap();
    // The rows the game's packets make on a perfect network, with their frame's session time.
    let mut clean = Frames::default();
    let mut clean_rows = Vec::new();
    for (t, d) in &packets {
        let (h, p) = f1udp::decode(d).unwrap();
        clean_rows.extend(clean.push(&h, p, *t).unwrap());
    }
    let clean_rows = row_values(&clean_rows);
    let (sends, faults) = bad_network(&packets);
    let (lost_times, duplicates) = expected_counts(&packets, &sends);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let started = std::time::Instant::now();
    for (due, i) in &sends {
        let due = std::time::Duration::from_secs_f64(due / 1000.0);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        socket.send_to(&packets[*i].1, ("127.0.0.1", port)).unwrap();
    }
    // Every frame settles half a second after it arrived.
    let want_lost = lost_times.len() as u64;
    let s = crate::engine::wait_for(&mut c, "every frame settled", |s| {
        s.bad_messages
            .iter()
            .any(|b| b.reason == "udp_frame_lost" && b.count >= want_lost)
    })
    .await;
    let ingested = s.rows_ingested;
    wait_until_done(&mut c, ingested).await;
    let counted: BTreeMap<String, u64> = stats(&mut c)
        .await
        .bad_messages
        .iter()
        .map(|b| (b.reason.clone(), b.count))
        .collect();
    println!("{} datagrams: {faults}; counted {counted:?}", packets.len());
    let expected: BTreeMap<String, u64> = [
        ("udp_frame_lost", want_lost),
        ("udp_duplicate", u64::from(duplicates)),
    ]
    .iter()
    .map(|(r, n)| (r.to_string(), *n))
    .collect();
    assert_eq!(counted, expected, "lost frames and repeats, nothing late");
    // The rows: from the archive once it holds them all.
    let got = loop {
        let q = "SELECT arrow_cast(driver, 'Utf8') AS driver, lap, distance, speed, rpm, session_time FROM archive.telemetry";
        let b = sql(&mut c, q).await;
        let rows = row_values(&b);
        if rows.len() as u64 == ingested {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    assert_rows_of_arrived_frames(&got, &clean_rows, &lost_times);
    assert!(got.len() * 10 > clean_rows.len() * 8, "most rows arrive");
    app.stop().await;
}

/// The network: (due ms, datagram index) in the order they arrive, at 10x: 5% dropped, 5%
/// sent twice, 5% delayed by up to 100 ms; and what it did, in words.
fn bad_network(packets: &[(i64, Vec<u8>)]) -> (Vec<(f64, usize)>, String) {
    let mut faults = Faults(2026);
    let mut sends: Vec<(f64, usize)> = Vec::new();
    let (mut dropped, mut twice, mut delayed) = (0, 0, 0);
    for (i, (t, _)) in packets.iter().enumerate() {
        let due = *t as f64 / 10.0;
        if faults.next() < 0.05 {
            dropped += 1;
            continue;
        }
        let delay = if faults.next() < 0.05 {
            delayed += 1;
            1.0 + faults.next() * 99.0
        } else {
            0.0
        };
        sends.push((due + delay, i));
        if faults.next() < 0.05 {
            twice += 1;
            sends.push((due + faults.next() * 20.0, i));
        }
    }
    sends.sort_by(|a, b| a.0.total_cmp(&b.0));
    let what = format!("{dropped} dropped, {twice} sent twice, {delayed} delayed by up to 100 ms");
    (sends, what)
}

/// What the server should count from what arrives: the frames whose Lap Data or Car
/// Telemetry never came (by their session time, ms), and the Lap Data and Car Telemetry
/// datagrams that came again.
fn expected_counts(packets: &[(i64, Vec<u8>)], sends: &[(f64, usize)]) -> (BTreeSet<u32>, u32) {
    use pitwall_proto::f1udp::{decode, id};
    let mut arrived: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
    let mut frames_sent: BTreeMap<u32, f32> = BTreeMap::new();
    for (_, d) in packets {
        let (h, _) = decode(d).unwrap();
        if h.packet_id == id::LAP_DATA || h.packet_id == id::CAR_TELEMETRY {
            frames_sent.insert(h.overall_frame, h.session_time);
        }
    }
    for (_, i) in sends {
        let (h, _) = decode(&packets[*i].1).unwrap();
        let a = arrived.entry(h.overall_frame).or_default();
        match h.packet_id {
            id::LAP_DATA => a.0 += 1,
            id::CAR_TELEMETRY => a.1 += 1,
            _ => {}
        }
    }
    let lost_times = frames_sent
        .iter()
        .filter(|(f, _)| arrived.get(f).is_none_or(|(l, t)| *l == 0 || *t == 0))
        .map(|(_, t)| (f64::from(*t) * 1000.0).round() as u32)
        .collect();
    let duplicates = arrived
        .values()
        .map(|(l, t)| l.saturating_sub(1) + t.saturating_sub(1))
        .sum();
    (lost_times, duplicates)
}

/// Every row the server made is a row of the perfect network's, at most once; the rows
/// missing are of frames that were lost.
fn assert_rows_of_arrived_frames(
    got: &[(RowValues, f64)],
    clean_rows: &[(RowValues, f64)],
    lost_times: &BTreeSet<u32>,
) {
    let mut want: BTreeMap<&RowValues, Vec<f64>> = BTreeMap::new();
    for (k, t) in clean_rows {
        want.entry(k).or_default().push(*t);
    }
    for (k, t) in got {
        let left = want
            .get_mut(k)
            .unwrap_or_else(|| panic!("{k:?}: not a row of the race"));
        // Equal values at several times: this row is the one nearest (a row whose frame was
        // lost comes with the car's next frame).
        let nearest =
            (0..left.len()).min_by(|a, b| (left[*a] - t).abs().total_cmp(&(left[*b] - t).abs()));
        left.remove(nearest.unwrap_or_else(|| panic!("{k:?}: twice")));
    }
    let missing: Vec<(&RowValues, f64)> = want
        .iter()
        .flat_map(|(k, ts)| ts.iter().map(move |t| (*k, *t)))
        .collect();
    for (k, t) in &missing {
        let ms = ((*t * 1000.0).round()) as u32;
        assert!(
            lost_times.contains(&ms),
            "{k:?} at {t} s is missing, but its frame came"
        );
    }
    println!(
        "rows: {} of the race's {}; the {} missing are cars of the {} lost frames",
        got.len(),
        clean_rows.len(),
        missing.len(),
        lost_times.len()
    );
}

/// 100,000 datagrams that are mostly not game packets (random bytes, real captures with
/// random edits, real captures under random headers) into the live port: every one is read
/// and counted, the server stays up, and a lap played afterwards gives all its rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_hundred_thousand_random_datagrams_leave_the_port_working() {
    let port = free_port();
    let data = tempfile::tempdir().unwrap();
    let app = start_server(udp_server_args(port, "off", data.path())).await;
    let mut c = client(&app, None).await;
    let captures: Vec<Vec<u8>> = ["f1-25", "f1-22-23-24"]
        .iter()
        .flat_map(|d| std::fs::read_dir(testdata(d)).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|f| f.extension().is_some_and(|e| e == "bin"))
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    let mut r = Faults(100_000);
    let mut pick = |n: usize| (r.next() * n as f64) as usize;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    const N: u64 = 100_000;
    for i in 0..N {
        let d: Vec<u8> = match i % 3 {
            0 => (0..pick(1500)).map(|_| pick(256) as u8).collect(),
            1 => {
                let mut d = captures[pick(captures.len())].clone();
                for _ in 0..=pick(8) {
                    let at = pick(d.len());
                    d[at] = pick(256) as u8;
                }
                d.truncate(d.len() - pick(4) * pick(d.len()) / 4);
                d
            }
            _ => {
                let mut d = captures[pick(captures.len())].clone();
                let at = pick(29);
                d[at] = pick(256) as u8;
                d
            }
        };
        socket.send_to(&d, ("127.0.0.1", port)).unwrap();
        if i % 500 == 499 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    let s =
        crate::engine::wait_for(&mut c, "every datagram read", |s| s.messages_ingested == N).await;
    let refused: u64 = s.bad_messages.iter().map(|b| b.count).sum();
    println!(
        "{N} datagrams read: {} rows, {refused} counted by reason {:?}",
        s.rows_ingested,
        s.bad_messages
            .iter()
            .map(|b| (b.reason.as_str(), b.count))
            .collect::<Vec<_>>()
    );
    let before = s.rows_ingested;
    let args = ["udp", "play", "--from-session", "--laps", "1-1"];
    run_ok(
        pitwall()
            .args(args)
            .args(["--speed", "100", "--to", &format!("127.0.0.1:{port}")]),
    );
    let lap = session_rows(1).num_rows() as u64;
    crate::engine::wait_for(&mut c, "the lap's rows", |s| {
        s.rows_ingested == before + lap
    })
    .await;
    app.stop().await;
}

/// As an operator would: the server on a topic and the game's port, killed with SIGKILL
/// three times while the game plays laps 1-3 at 10x, each time started again at once with
/// the same flags. The session goes on under its name, no lap is archived twice, and the laps
/// that ran wholly after the last restart equal the race's.
#[tokio::test(flavor = "multi_thread")]
async fn killed_three_times_while_the_game_plays_the_server_goes_on() {
    use crate::support::ServerProcess;
    let bootstrap = broker();
    let topic = unique("udp-restarts");
    create_topic(&bootstrap, &topic, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (port, http, udp) = (free_port(), free_port(), free_port());
    let to = format!("127.0.0.1:{udp}");
    let extra = ["--udp", to.as_str()];
    let group = unique("group");
    let start = || ServerProcess::start_on(port, http, &bootstrap, &topic, &group, &data, &extra);
    let mut server = start();
    server.client().await;
    let play = std::thread::spawn({
        let to = to.clone();
        move || {
            let args = ["udp", "play", "--from-session", "--laps", "1-3"];
            run_ok(pitwall().args(args).args(["--speed", "10", "--to", &to]))
        }
    });
    for (kill, at) in [4, 8, 12].iter().enumerate() {
        let since = if kill == 0 { 0 } else { [4, 8, 12][kill - 1] };
        tokio::time::sleep(std::time::Duration::from_secs(at - since)).await;
        let s = stats(&mut server.client().await).await;
        println!(
            "kill -9 #{} at {at} s: {} rows since the last start",
            kill + 1,
            s.rows_ingested
        );
        server.kill9();
        server = start();
    }
    println!("{}", play.join().unwrap().trim());
    let mut c = server.client().await;
    let last = session_rows(3);
    // Everything that came after the last restart is in: every lap closed.
    crate::engine::wait_for(&mut c, "every lap closed", |s| {
        s.rows_ingested > 0
            && s.queries
                .iter()
                .all(|q| q.open_windows == 0 && q.pending_rows == 0)
    })
    .await;
    let q = "SELECT arrow_cast(session, 'Utf8') AS session, arrow_cast(driver, 'Utf8') AS driver, lap, samples FROM archive.results_lap_stats";
    let laps = loop {
        let b = sql(&mut c, q).await;
        if b.iter().map(RecordBatch::num_rows).sum::<usize>() > 0 {
            break b;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let mut seen: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut sessions = BTreeSet::new();
    for b in &laps {
        let session = b.column(0).as_string::<i32>();
        let driver = b.column(1).as_string::<i32>();
        let lap = b.column(2).as_primitive::<arrow::datatypes::Int32Type>();
        let samples = b.column(3).as_primitive::<arrow::datatypes::Int64Type>();
        for i in 0..b.num_rows() {
            sessions.insert(session.value(i).to_string());
            let key = (driver.value(i).to_string(), lap.value(i));
            assert!(
                seen.insert(key.clone(), samples.value(i)).is_none(),
                "{key:?} archived twice"
            );
        }
    }
    assert_eq!(
        sessions.len(),
        1,
        "one session through the restarts: {sessions:?}"
    );
    let queries = pitwall_server::initial_queries(None).unwrap();
    let race = by_lap(&batch_result(&queries, "lap_stats", &last).await.unwrap());
    let lap3: Vec<_> = race.keys().filter(|(_, l)| *l == 3).collect();
    for key in &lap3 {
        assert_eq!(
            seen.get(key).map(|s| *s as f64),
            Some(race[key]["samples"]),
            "{key:?}: ran after the last restart"
        );
    }
    println!(
        "{} laps archived once each, one session; the {} laps 3 equal the race's",
        seen.len(),
        lap3.len()
    );
    server.stop();
}
