//! The engine fed through a real broker: streaming results equal the same SQL in batch, with
//! samples in order and out of order within the allowed lateness; bad input is dead-lettered
//! and changes nothing else.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use pitwall_cli::client::Client;
use pitwall_proto as pb;
use pitwall_server::engine::oracle::{assert_same_rows, batch_result, canonical_rows};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::support::*;

pub(crate) async fn stats(client: &mut Client) -> pb::ServerStats {
    client
        .action(pb::actions::STATS, &pb::GetStats {})
        .await
        .expect("stats")
}

/// Polls the server's stats until `done` holds; fails after two minutes.
pub(crate) async fn wait_for(
    client: &mut Client,
    what: &str,
    done: impl Fn(&pb::ServerStats) -> bool,
) -> pb::ServerStats {
    let started = std::time::Instant::now();
    loop {
        let s = stats(client).await;
        if done(&s) {
            return s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}; last stats: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `rows` rows were ingested and every window has closed.
pub(crate) async fn wait_until_done(client: &mut Client, rows: u64) {
    wait_for(client, "all rows ingested and emitted", |s| {
        s.rows_ingested == rows
            && s.queries
                .iter()
                .all(|q| q.open_windows == 0 && q.pending_rows == 0)
    })
    .await;
}

/// Compares every shipped query's live results with the same SQL run in batch over `rows`.
pub(crate) async fn assert_streaming_equals_batch(client: &mut Client, rows: &RecordBatch) {
    let queries = pitwall_server::initial_queries(None).unwrap();
    for q in &queries {
        let streamed = sql(client, &format!("SELECT * FROM {}", q.name)).await;
        let batch = batch_result(&queries, &q.name, rows).await.unwrap();
        let (s, b) = (canonical_rows(&streamed), canonical_rows(&batch));
        // The fault detectors find nothing on a clean race.
        if !pitwall_server::FAULT_DETECTORS.contains(&q.name.as_str()) {
            assert!(!b.is_empty(), "{}: the batch result is empty", q.name);
        }
        assert_same_rows(&q.name, &s, &b);
        println!("{}: {} rows, streamed = batch", q.name, s.len());
    }
}

async fn streaming_equals_batch(jitter_ms: &str) {
    let bootstrap = broker();
    let topic = unique("stream");
    replay(
        &bootstrap,
        &topic,
        &[
            "--laps",
            "1-3",
            "--partitions",
            "4",
            "--jitter-ms",
            jitter_ms,
        ],
    );
    let rows = session_rows(3);
    let data = tempfile::tempdir().unwrap();
    let app = start_server(server_args(&bootstrap, &topic, data.path(), &[])).await;
    let mut client = client(&app, None).await;
    wait_until_done(&mut client, rows.num_rows() as u64).await;
    let s = stats(&mut client).await;
    assert_eq!(s.late_rows, 0, "jitter stays within the allowed lateness");
    assert_streaming_equals_batch(&mut client, &rows).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_equals_batch_through_the_broker() {
    streaming_equals_batch("0").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_equals_batch_with_samples_out_of_order_within_lateness() {
    streaming_equals_batch("800").await;
}

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[expect(
    clippy::too_many_lines,
    reason = "one end-to-end scenario, its steps in the order a user takes them; to be split into named steps"
)]
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_counted_dead_lettered_and_changes_nothing_else() {
    let bootstrap = broker();
    let topic = unique("bad");
    create_topic(&bootstrap, &topic, 1).await.unwrap();
    // 8,000 valid samples (the start of the bundled race) among 10,000 messages.
    let all = session_rows(2);
    let valid = all.slice(0, 8_000);
    let mut encoded = pitwall_cli::wire::Encoded::default();
    pitwall_cli::wire::encode(&valid, pitwall_cli::wire::WireFormat::Json, &mut encoded).unwrap();
    let drivers = valid
        .column_by_name("driver")
        .unwrap()
        .as_string::<i32>()
        .clone();
    let mut rng = Rng(0x5eed);
    let mut messages: Vec<(String, Vec<u8>, Option<&str>)> = Vec::new(); // key, payload, expected bad kind
    let mut next_valid = 0;
    for i in 0..10_000 {
        let bad = next_valid >= 8_000
            || (i > 0
                && rng.next().is_multiple_of(5)
                && messages.iter().filter(|m| m.2.is_some()).count() < 2_000);
        if !bad {
            messages.push((
                drivers.value(next_valid).to_string(),
                encoded.payload(next_valid).to_vec(),
                None,
            ));
            next_valid += 1;
            continue;
        }
        let good = encoded.payload(i % 8_000);
        let (payload, kind) = match rng.next() % 4 {
            0 => (
                (0..(rng.next() % 300 + 1))
                    .map(|_| rng.next() as u8)
                    .collect(),
                "random bytes",
            ),
            1 => (good[..good.len() / 2].to_vec(), "truncated"),
            2 => (
                br#"{"Driver":"VER","Speed":"fast","RPM":11000,"Date":"2023-07-09T14:10:00Z"}"#
                    .to_vec(),
                "wrong type",
            ),
            _ => (
                br#"{"Driver":"VER","Speed":250.0,"Date":"2023-07-09T14:10:00Z"}"#.to_vec(),
                "missing field",
            ),
        };
        messages.push(("VER".into(), payload, Some(kind)));
    }
    assert_eq!(next_valid, 8_000);
    // One 10 MB payload in the middle, in place of a bad one.
    let at = (5_000..).find(|&i| messages[i].2.is_some()).unwrap();
    messages[at] = ("VER".into(), vec![b'{'; 10 << 20], Some("oversize"));
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.max.bytes", "20000000")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    // Enqueue in order (one partition keeps it), then wait for every delivery.
    let mut deliveries = Vec::with_capacity(messages.len());
    for (key, payload, kind) in &messages {
        let headers = OwnedHeaders::new().insert(Header {
            key: "pitwall-format",
            value: Some("json"),
        });
        let rec = FutureRecord::to(&topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        let delivery = producer.send_result(rec).map_err(|(e, _)| e).unwrap();
        deliveries.push((delivery, kind.is_some()));
    }
    let mut bad_offsets = BTreeSet::new();
    for (delivery, bad) in deliveries {
        let offset = delivery.await.unwrap().map_err(|(e, _)| e).unwrap().offset;
        if bad {
            bad_offsets.insert(offset);
        }
    }
    let n_bad = bad_offsets.len() as u64;
    assert!(n_bad >= 1_900, "{n_bad} bad messages");
    let data = tempfile::tempdir().unwrap();
    let app = start_server(server_args(&bootstrap, &topic, data.path(), &[])).await;
    let mut client = client(&app, None).await;
    wait_for(&mut client, "all 10,000 messages read", |s| {
        s.messages_ingested == 10_000
    })
    .await;
    wait_until_done(&mut client, 8_000).await;
    let s = stats(&mut client).await;
    let by_reason: BTreeMap<String, u64> = s
        .bad_messages
        .iter()
        .map(|b| (b.reason.clone(), b.count))
        .collect();
    println!("bad messages by reason: {by_reason:?}");
    assert_eq!(
        by_reason.values().sum::<u64>(),
        n_bad,
        "every bad message counted once"
    );
    assert_eq!(by_reason.get("oversize"), Some(&1));
    for reason in ["truncated", "wrong_type", "missing_field"] {
        assert!(
            by_reason.get(reason).copied().unwrap_or(0) > 0,
            "{reason} counted"
        );
    }
    assert_streaming_equals_batch(&mut client, &valid).await;
    app.stop().await;
    // The dead letters: one row per bad message, with its offset, reason and raw bytes.
    let dir = data.path().join("dead_letters");
    let mut offsets = BTreeSet::new();
    let mut rows = 0;
    for f in std::fs::read_dir(&dir).unwrap() {
        let path = f.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("parquet") {
            continue;
        }
        let file = std::fs::File::open(&path).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        for b in reader {
            let b = b.unwrap();
            rows += b.num_rows();
            let o = b
                .column_by_name("offset")
                .unwrap()
                .as_primitive::<arrow::datatypes::Int64Type>();
            let reasons = b
                .column_by_name("reason")
                .unwrap()
                .as_string::<i32>()
                .clone();
            let errors = b
                .column_by_name("error")
                .unwrap()
                .as_string::<i32>()
                .clone();
            let payloads = b
                .column_by_name("payload")
                .unwrap()
                .as_binary::<i32>()
                .clone();
            for i in 0..b.num_rows() {
                if !bad_offsets.contains(&o.value(i)) {
                    println!(
                        "a valid message was dead-lettered: offset {} {} {} {:?}",
                        o.value(i),
                        reasons.value(i),
                        errors.value(i),
                        String::from_utf8_lossy(payloads.value(i))
                    );
                }
            }
            offsets.extend(o.values().iter().copied());
            assert_eq!(
                b.column_by_name("topic")
                    .unwrap()
                    .as_string::<i32>()
                    .value(0),
                topic
            );
            assert!(b.column_by_name("payload").unwrap().null_count() == 0);
        }
    }
    assert_eq!(rows as u64, n_bad);
    assert_eq!(
        offsets, bad_offsets,
        "every bad message dead-lettered with its offset"
    );
}

/// Issue 24 point 11: what clients change through Flight at run time (a query submitted,
/// one dropped, one paused, a parameter set) is what the server runs after a restart, and the
/// window state of a query whose SQL did not change comes back with it.
#[tokio::test(flavor = "multi_thread")]
async fn run_time_query_changes_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let args: Vec<String> = [
        "pitwall-server",
        "--flight-addr",
        "127.0.0.1:0",
        "--http-addr",
        "off",
        "--embedded-speed",
        "50",
        "--checkpoint-ms",
        "200",
        "--data-dir",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([data.path().display().to_string()])
    .collect();
    let sql = data.path().join("gears.sql");
    std::fs::write(
        &sql,
        "SELECT driver, ts, gear FROM telemetry WHERE gear >= 8",
    )
    .unwrap();
    let app = start_server(args.clone()).await;
    let url = format!("http://{}", app.flight_addr);
    let cli = |a: &[&str]| run_ok(pitwall().args(["--server", &url]).args(a));
    cli(&["set", "over_rev", "threshold=11500"]);
    cli(&["pause", "lock_up"]);
    cli(&["drop", "speed_1s"]);
    cli(&["submit", "gears", sql.to_str().unwrap()]);
    // Wait for a checkpoint taken after the changes, then a clean stop.
    let taken = app
        .archive_stats
        .checkpoints
        .load(std::sync::atomic::Ordering::Relaxed);
    let started = std::time::Instant::now();
    while app
        .archive_stats
        .checkpoints
        .load(std::sync::atomic::Ordering::Relaxed)
        < taken + 2
    {
        assert!(started.elapsed() < Duration::from_secs(60), "no checkpoint");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = app.engine.list().await.unwrap();
    app.stop().await;

    let app = start_server(args).await;
    let after = app.engine.list().await.unwrap();
    let names = |qs: &[pitwall_server::engine::QueryInfo]| {
        qs.iter().map(|q| q.name.clone()).collect::<BTreeSet<_>>()
    };
    assert_eq!(names(&after), names(&before));
    assert!(names(&after).contains("gears") && !names(&after).contains("speed_1s"));
    let q = |name: &str| after.iter().find(|q| q.name == name).unwrap().clone();
    assert_eq!(q("gears").sql, std::fs::read_to_string(&sql).unwrap());
    assert!(
        q("over_rev")
            .params
            .contains(&("threshold".to_string(), "11500".to_string())),
        "{:?}",
        q("over_rev").params
    );
    assert_eq!(
        q("lock_up").status,
        pitwall_server::engine::QueryStatus::Paused
    );
    assert_eq!(
        q("lap_stats").status,
        pitwall_server::engine::QueryStatus::Running
    );
    println!(
        "after the restart: {:?}; over_rev {:?}; lock_up {:?}",
        names(&after),
        q("over_rev").params,
        q("lock_up").status
    );
    app.stop().await;
}
