//! `pitwall replay` into a real broker, read back with a plain rdkafka consumer.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Float64Type, Int8Type, Int32Type, TimestampMillisecondType};
use pitwall_proto::TelemetrySample;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message};

use crate::support::*;

/// One sample as published, in comparable form (f32 values as their bits).
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    session: String,
    driver: String,
    lap: Option<i32>,
    ts: i64,
    session_time: Option<f64>,
    speed: Option<f32>,
    rpm: Option<f32>,
    gear: Option<i8>,
    throttle: Option<f32>,
    brake: Option<bool>,
    drs: Option<i8>,
}

fn expected_by_driver(rows: &RecordBatch) -> BTreeMap<String, Vec<Sample>> {
    let c = |n: &str| rows.column_by_name(n).unwrap().clone();
    let (session, driver) = (c("session"), c("driver"));
    let (session, driver) = (session.as_string::<i32>(), driver.as_string::<i32>());
    let lap = c("lap");
    let lap = lap.as_primitive::<Int32Type>();
    let ts = c("ts");
    let ts = ts.as_primitive::<TimestampMillisecondType>();
    let st = c("session_time");
    let st = st.as_primitive::<Float64Type>();
    let f = |n: &str| c(n).as_primitive::<Float32Type>().clone();
    let (speed, rpm, throttle) = (f("speed"), f("rpm"), f("throttle"));
    let gear = c("gear");
    let gear = gear.as_primitive::<Int8Type>();
    let drs = c("drs");
    let drs = drs.as_primitive::<Int8Type>();
    let brake = c("brake");
    let brake = brake.as_boolean();
    let opt = |a: &dyn Array, i: usize| a.is_valid(i);
    let mut out: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    for i in 0..rows.num_rows() {
        out.entry(driver.value(i).to_string())
            .or_default()
            .push(Sample {
                session: session.value(i).to_string(),
                driver: driver.value(i).to_string(),
                lap: opt(lap, i).then(|| lap.value(i)),
                ts: ts.value(i),
                session_time: opt(st, i).then(|| st.value(i)),
                speed: opt(&speed, i).then(|| speed.value(i)),
                rpm: opt(&rpm, i).then(|| rpm.value(i)),
                gear: opt(gear, i).then(|| gear.value(i)),
                throttle: opt(&throttle, i).then(|| throttle.value(i)),
                brake: opt(brake, i).then(|| brake.value(i)),
                drs: opt(drs, i).then(|| drs.value(i)),
            });
    }
    out
}

fn from_json(v: &serde_json::Value) -> Sample {
    let f32_of = |k: &str| v.get(k).and_then(|x| x.as_f64()).map(|x| x as f32);
    let date = v["Date"].as_str().expect("Date");
    Sample {
        session: v["Session"].as_str().unwrap().to_string(),
        driver: v["Driver"].as_str().unwrap().to_string(),
        lap: v
            .get("LapNumber")
            .and_then(|x| x.as_i64())
            .map(|x| x as i32),
        ts: chrono::DateTime::parse_from_rfc3339(date)
            .expect("ISO 8601 Date")
            .timestamp_millis(),
        session_time: v.get("SessionTime").and_then(|x| x.as_f64()),
        speed: f32_of("Speed"),
        rpm: f32_of("RPM"),
        gear: v.get("nGear").and_then(|x| x.as_i64()).map(|x| x as i8),
        throttle: f32_of("Throttle"),
        brake: v.get("Brake").and_then(|x| x.as_bool()),
        drs: v.get("DRS").and_then(|x| x.as_i64()).map(|x| x as i8),
    }
}

fn from_protobuf(s: &TelemetrySample) -> Sample {
    Sample {
        session: s.session.clone(),
        driver: s.driver.clone(),
        lap: s.lap,
        ts: s.date_ms.expect("date_ms"),
        session_time: s.session_time,
        speed: s.speed,
        rpm: s.rpm,
        gear: s.gear.map(|g| g as i8),
        throttle: s.throttle,
        brake: s.brake,
        drs: s.drs.map(|d| d as i8),
    }
}

/// Reads `expected` messages; returns samples per key (in partition order) and checks that
/// every message's key is its driver and its header names the format.
fn consume(
    bootstrap: &str,
    topic: &str,
    expected: usize,
    format: &str,
) -> BTreeMap<String, Vec<Sample>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut by_key: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
    let mut partitions: HashMap<String, i32> = HashMap::new();
    let mut n = 0;
    let started = std::time::Instant::now();
    while n < expected {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "read {n} of {expected} messages"
        );
        let Some(m) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let m = m.unwrap();
        let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
        let header = m.headers().and_then(|h| {
            h.iter()
                .find(|h| h.key == "pitwall-format")
                .and_then(|h| h.value)
        });
        assert_eq!(header, Some(format.as_bytes()));
        let payload = m.payload().unwrap();
        let sample = if format == "json" {
            from_json(&serde_json::from_slice(payload).unwrap())
        } else {
            from_protobuf(&TelemetrySample::decode(payload).unwrap())
        };
        assert_eq!(sample.driver, key, "the key is the driver");
        let p = *partitions.entry(key.clone()).or_insert(m.partition());
        assert_eq!(p, m.partition(), "all of {key}'s samples in one partition");
        by_key.entry(key).or_default().push(sample);
        n += 1;
    }
    assert!(
        consumer.poll(Duration::from_millis(1000)).is_none(),
        "more messages than the source has rows"
    );
    by_key
}

async fn round_trip(format: &str) {
    let bootstrap = broker();
    let topic = unique("replay");
    let out = replay(
        &bootstrap,
        &topic,
        &["--format", format, "--partitions", "4"],
    );
    let rows = pitwall_cli::session::Session::bundled().unwrap().rows;
    assert!(
        out.contains(&format!("published {} rows", rows.num_rows())),
        "{out}"
    );
    let expected = expected_by_driver(&rows);
    let got = tokio::task::spawn_blocking({
        let (b, t, f) = (bootstrap.clone(), topic.clone(), format.to_string());
        move || consume(&b, &t, rows.num_rows(), &f)
    })
    .await
    .unwrap();
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (driver, samples) in &expected {
        assert_eq!(got[driver].len(), samples.len(), "{driver}: row count");
        for (i, (g, e)) in got[driver].iter().zip(samples).enumerate() {
            assert_eq!(g, e, "{driver} sample {i} (in order)");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_replay_publishes_every_row_in_order_keyed_by_driver() {
    round_trip("json").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_replay_publishes_every_row_in_order_keyed_by_driver() {
    round_trip("protobuf").await;
}

#[test]
fn malformed_csv_is_one_line_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("laps.csv"),
        ",Time,Driver,DriverNumber,LapNumber,LapStartTime\n0,0 days 00:01:40,VER,1,1.0,0 days 00:00:00\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("1_telemetry.csv"),
        ",Date,RPM,Speed,nGear,Throttle,Brake,DRS,Source,Time,SessionTime\n\
         0,2023-07-09 13:01:02.743,10000,200,7,100,False,0,car,0 days 00:00:01.707000,0 days 00:00:01.707000\n\
         1,2023-07-09 13:01:03.103,fast,201,7,100,False,0,car,0 days 00:00:02.067000,0 days 00:00:02.067000\n",
    )
    .unwrap();
    let bootstrap = broker();
    let topic = unique("malformed");
    let out = run(pitwall().args([
        "replay",
        "--dir",
        dir.path().to_str().unwrap(),
        "--brokers",
        &bootstrap,
        "--topic",
        &topic,
        "--quiet",
    ]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("1_telemetry.csv"), "{err}");
    assert!(err.contains("1_telemetry.csv:3:"), "names the line: {err}");
    assert!(err.contains("'fast'"), "names the value: {err}");
    // Nothing was published to the (reachable) broker: the file is read before anything is sent.
    assert!(!err.contains("publish"), "{err}");
    let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let published = rdkafka::consumer::Consumer::fetch_watermarks(
        &consumer,
        &topic,
        0,
        std::time::Duration::from_secs(5),
    )
    .map_or(0, |(_, high)| high);
    assert_eq!(published, 0, "messages published from a malformed file");
}

/// Issue 24 point 18: the bundled race is GPL-3.0 data and the binaries are Apache-2.0, so
/// neither binary may hold any of its bytes; both read it at run time, and without it they say
/// in one line where they looked.
#[test]
fn the_binaries_carry_no_bundled_data_and_say_where_they_looked_without_it() {
    let data = std::fs::read(pitwall_proto::bundled::path().unwrap()).unwrap();
    let needles: Vec<&[u8]> = [1, 2, 3]
        .iter()
        .map(|q| &data[data.len() * q / 4..data.len() * q / 4 + 64])
        .collect();
    for bin in [pitwall_binary(), pitwall_server_binary()] {
        let image = std::fs::read(&bin).unwrap();
        for n in &needles {
            assert!(
                memchr::memmem::find(&image, n).is_none(),
                "{} holds bytes of the bundled race",
                bin.display()
            );
        }
    }
    let missing = "/nonexistent/bundled.parquet";
    let data_dir = tempfile::tempdir().unwrap();
    let out = run(pitwall()
        .args(["replay", "--brokers", "127.0.0.1:9", "--topic", "t"])
        .env(pitwall_proto::bundled::ENV, missing));
    let server = run(Command::new(pitwall_server_binary())
        .args([
            "--flight-addr",
            "127.0.0.1:0",
            "--http-addr",
            "off",
            "--data-dir",
        ])
        .arg(data_dir.path())
        .env(pitwall_proto::bundled::ENV, missing));
    for (what, out) in [("pitwall replay", out), ("pitwall-server", server)] {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert!(!out.status.success(), "{what} ran without the bundled race");
        assert!(
            last.contains(missing) && last.contains(pitwall_proto::bundled::ENV),
            "{what}: {err}"
        );
    }
}

/// Issue 24 point 4 (read, not run: CI has no Docker daemon): docker-compose.yml publishes
/// every port on the host's loopback only (nothing there sets a token), the broker and the
/// server have health checks, the server's is its readiness endpoint, and the looping demo
/// keeps a bounded archive.
#[test]
fn compose_publishes_on_loopback_with_health_checks_and_a_retention() {
    let compose = include_str!("../../../docker-compose.yml");
    let mut published = Vec::new();
    let mut in_ports = false;
    for line in compose.lines() {
        let t = line.trim();
        if t == "ports:" {
            in_ports = true;
        } else if in_ports && t.starts_with("- ") {
            published.push(t.trim_start_matches("- ").trim_matches('"').to_string());
        } else if !t.starts_with('#') {
            in_ports = false;
        }
    }
    assert!(published.len() >= 3, "{published:?}");
    for p in &published {
        assert!(
            p.starts_with("127.0.0.1:"),
            "{p} is published on every interface"
        );
    }
    // A service's lines: from `  NAME:` to the next line indented by exactly two spaces.
    let service = |name: &str| -> String {
        let header = format!("  {name}:");
        compose
            .lines()
            .skip_while(|l| *l != header)
            .skip(1)
            .take_while(|l| !(l.starts_with("  ") && !l.starts_with("   ") && !l.trim().is_empty()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(service("kafka").contains("healthcheck:"));
    let server = service("pitwall-server");
    assert!(!server.is_empty());
    assert!(
        server.contains("healthcheck:") && server.contains("/readyz"),
        "{server}"
    );
    assert!(server.contains("--retention-days"), "{server}");
    assert!(
        !server.contains("--token"),
        "no token: loopback only (checked above)"
    );
    // Two servers share the topic: one group, one archive (the same volume), each advertising
    // the host address its Flight port is published on.
    let second = service("pitwall-server-b");
    for (s, port) in [(&server, "50051"), (&second, "50052")] {
        for arg in [
            "--group\n      - pitwall",
            "--shared-archive",
            "- pitwall-data:/data",
        ] {
            assert!(s.contains(arg), "{arg} missing: {s}");
        }
        assert!(s.contains(&format!("grpc://127.0.0.1:{port}")), "{s}");
        assert!(s.contains(&format!("\"127.0.0.1:{port}:50051\"")), "{s}");
    }
}
