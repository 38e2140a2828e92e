//! The archive across crashes and outages: the server killed with SIGKILL and restarted, the
//! broker stopped mid-replay, the data dir unwritable for a while. Afterwards the archive holds
//! exactly the produced rows and the results of an uninterrupted run.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{AsArray, RecordBatch};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::ListingOptions;
use datafusion::prelude::SessionContext;
use pitwall_server::engine::oracle::{assert_same_rows, batch_result, canonical_rows};

use crate::engine::{stats, wait_for};
use crate::support::*;

/// The tests here restart servers and brokers and time their recovery: on a 2-core machine
/// they run one at a time (beside the lighter tests of the other modules), so that one's
/// load does not stretch another's broker past its timeouts.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().await
}

/// Prints the end of the servers' log when the test fails: CI keeps nothing else.
pub(crate) struct LogOnPanic(pub(crate) Vec<std::path::PathBuf>);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for path in &self.0 {
                let log = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                eprintln!("--- last lines of {} ---", path.display());
                for l in &lines[lines.len().saturating_sub(150)..] {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// Reads an archived table straight from its Parquet files (as DuckDB or pyarrow would).
pub(crate) async fn read_archive(data: &Path, dir: &str, partitions: &[&str]) -> Vec<RecordBatch> {
    try_read_archive(data, dir, partitions).await.unwrap()
}

/// [`read_archive`], or the error (a file merged away while it is read).
pub(crate) async fn try_read_archive(
    data: &Path,
    dir: &str,
    partitions: &[&str],
) -> datafusion::error::Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    let opts = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            partitions
                .iter()
                .map(|p| (p.to_string(), arrow::datatypes::DataType::Utf8))
                .collect(),
        );
    let url = format!("{}/{dir}/", data.display());
    ctx.register_listing_table("t", &url, opts, None, None)
        .await?;
    ctx.sql("SELECT * FROM t").await?.collect().await
}

/// Per driver: (row count, sorted canonical rows) of telemetry, from the archive or the source.
fn by_driver(batches: &[RecordBatch]) -> BTreeMap<String, Vec<String>> {
    let columns = [
        "driver",
        "session",
        "lap",
        "ts",
        "session_time",
        "speed",
        "rpm",
        "gear",
        "throttle",
        "brake",
        "drs",
    ];
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for b in batches {
        let b = b
            .project(
                &columns
                    .iter()
                    .map(|c| b.schema().index_of(c).unwrap())
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let driver = b.column(0).as_string::<i32>().clone();
        let text = arrow::util::pretty::pretty_format_batches(std::slice::from_ref(&b))
            .unwrap()
            .to_string();
        for (i, line) in text
            .lines()
            .skip(3)
            .filter(|l| l.starts_with('|'))
            .enumerate()
        {
            // Cells without the padding, which depends on the widest value of each batch.
            let row: Vec<&str> = line.split('|').map(str::trim).collect();
            out.entry(driver.value(i).to_string())
                .or_default()
                .push(row.join("|"));
        }
    }
    for rows in out.values_mut() {
        rows.sort();
    }
    out
}

pub(crate) fn assert_archive_holds_exactly(archived: &[RecordBatch], source: &RecordBatch) {
    let (got, want) = (by_driver(archived), by_driver(std::slice::from_ref(source)));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let mut lost = 0;
    let mut duplicated = 0;
    for (d, rows) in &want {
        let g = &got[d];
        let mut counts: BTreeMap<&String, i64> = BTreeMap::new();
        for r in rows {
            *counts.entry(r).or_default() += 1;
        }
        for r in g {
            *counts.entry(r).or_default() -= 1;
        }
        let (l, dup): (i64, i64) = (
            counts.values().filter(|c| **c > 0).sum(),
            counts.values().filter(|c| **c < 0).map(|c| -c).sum(),
        );
        if l + dup > 0 {
            let sample: Vec<(&&String, &i64)> =
                counts.iter().filter(|(_, c)| **c != 0).take(3).collect();
            println!(
                "{d}: {} archived, {} produced, {l} lost, {dup} duplicated, e.g. {sample:?}",
                g.len(),
                rows.len()
            );
        }
        lost += l;
        duplicated += dup;
    }
    println!(
        "archive: {} drivers, {} rows, lost {lost}, duplicated {duplicated}",
        want.len(),
        want.values().map(Vec::len).sum::<usize>()
    );
    assert_eq!((lost, duplicated), (0, 0));
}

/// Waits until the archive holds `rows` raw rows and no window is open, then stops cleanly.
async fn finish(server: ServerProcess, rows: u64) {
    let mut c = server.client().await;
    let started = Instant::now();
    let mut over_since: Option<Instant> = None;
    loop {
        let s = stats(&mut c).await;
        // Until the first checkpoint there is no archive.telemetry table yet.
        let n = match c.sql("SELECT count(*) FROM archive.telemetry").await {
            Ok(b) => b.first().map_or(0, |b| {
                b.column(0)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .value(0)
            }),
            Err(_) => 0,
        };
        if n as u64 == rows && s.queries.iter().all(|q| q.open_windows == 0) {
            break;
        }
        // More rows than produced for a while (a merge's inputs and output are both listed
        // for a moment): the comparison that follows says which rows.
        if n as u64 <= rows {
            over_since = None;
        } else if over_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(10) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "archive has {n} of {rows} rows; stats {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    server.stop();
}

async fn assert_results_equal_batch(data: &Path, rows: &RecordBatch) {
    assert_results_equal(
        &[data],
        &["lap_anomaly", "lap_stats", "speed_1s", "lock_up"],
        rows,
    )
    .await;
}

/// The results of `names` archived in `archives` together are those of the queries run once
/// over `rows` in batch.
pub(crate) async fn assert_results_equal(archives: &[&Path], names: &[&str], rows: &RecordBatch) {
    let queries = pitwall_server::initial_queries(None).unwrap();
    for q in names.iter().copied() {
        let mut archived = Vec::new();
        for data in archives
            .iter()
            .filter(|d| d.join(format!("results/query={q}")).exists())
        {
            archived.extend(read_archive(data, &format!("results/query={q}"), &["session"]).await);
        }
        // Put `session` back where the query has it, for comparison.
        let batch = batch_result(&queries, q, rows).await.unwrap();
        let names: Vec<String> = batch[0]
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let archived: Vec<RecordBatch> = archived
            .iter()
            .map(|b| {
                b.project(
                    &names
                        .iter()
                        .map(|n| b.schema().index_of(n).unwrap())
                        .collect::<Vec<_>>(),
                )
                .unwrap()
            })
            .collect();
        assert_same_rows(q, &canonical_rows(&archived), &canonical_rows(&batch));
        println!(
            "results_{q}: {} rows, equal to an uninterrupted run",
            canonical_rows(&batch).len()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_five_times_the_archive_is_exact_and_results_are_uninterrupted() {
    let _serial = one_at_a_time().await;
    // The server is what crashes here; tansu's memory storage keeps the test fast (its sqlite
    // storage stalls for minutes on consumer-group requests after a large backlog).
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = broker();
    let topic = unique("crash");
    // The whole race, all 20 cars, in Kafka first.
    replay(&bootstrap, &topic, &["--partitions", "4"]);
    let rows = pitwall_cli::session::Session::bundled().unwrap().rows;
    let data = dir.path().join("data");
    let _log = LogOnPanic(vec![
        data.with_extension("log"),
        dir.path().join("broker/broker.log"),
    ]);
    let group = unique("group");
    let mut rng = 0x2545F4914F6CDD1Du64;
    let settings = [
        // The broker's minimum: a killed member leaves the group after 6 s. With a dynamic
        // member: tansu answers a static member's JoinGroup and SyncGroup 3 s each, and takes
        // 6 s without a heartbeat for a missed session; the restarts here do not wait for the
        // group anyway.
        "--instance-id",
        "off",
        "--kafka-opt",
        "session.timeout.ms=6000",
        "--kafka-opt",
        "heartbeat.interval.ms=500",
        // Small files merged all along (~90 merges over the run), so that kills land during
        // merges too.
        "--compact-min-files",
        "3",
        "--housekeeping-ms",
        "300",
    ];
    for kill in 1..=5 {
        let server = ServerProcess::start(&bootstrap, &topic, &group, &data, &settings);
        let mut c = server.client().await;
        // A random moment once the server is busy (after the group has rebalanced).
        let started = Instant::now();
        while stats(&mut c).await.rows_ingested == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the restarted server consumes nothing"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let after = Duration::from_millis(200 + rng % 3_000);
        tokio::time::sleep(after).await;
        let s = stats(&mut c).await;
        println!(
            "kill -9 #{kill} {after:?} into consuming: {} rows ingested since the restart",
            s.rows_ingested
        );
        server.kill9();
    }
    let server = ServerProcess::start(&bootstrap, &topic, &group, &data, &settings);
    finish(server, rows.num_rows() as u64).await;
    let archived = read_archive(&data, "telemetry", &["session", "driver"]).await;
    assert_archive_holds_exactly(&archived, &rows);
    assert_results_equal_batch(&data, &rows).await;
}

/// The rows `pitwall replay --cars N` publishes (one round).
fn fleet_rows(cars: usize) -> RecordBatch {
    let session = pitwall_cli::session::Session::bundled().unwrap();
    let mut fleet = pitwall_cli::fleet::Fleet::new(&session, Some(cars), false).unwrap();
    let mut chunks = Vec::new();
    while let Some(c) = fleet.next_chunk(64 * 1024).unwrap() {
        chunks.push(c);
    }
    arrow::compute::concat_batches(&chunks[0].schema(), &chunks).unwrap()
}

/// As an operator would (issue 24, point 0): the server started with its default group
/// settings, a 6-car replay at 500x into a 4-partition topic that does not exist yet, and the
/// server killed with SIGKILL five times, 1-3 s apart, each time started again at once with
/// the same flags. The last one must consume everything, each row once. (Without static
/// membership tansu 0.6.0 left it idle for good: `scripts/repro-idle-group.sh`.)
#[tokio::test(flavor = "multi_thread")]
async fn killed_five_times_during_a_replay_the_restarted_server_consumes_it_all() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = broker();
    let topic = unique("restarts");
    let group = unique("group");
    let data = dir.path().join("data");
    let _log = LogOnPanic(vec![data.with_extension("log")]);
    let (port, http) = (free_port(), free_port());
    let start = || ServerProcess::start_on(port, http, &bootstrap, &topic, &group, &data, &[]);
    let mut server = start();
    stats(&mut server.client().await).await;
    let replay = pitwall()
        .args(["replay", "--brokers", &bootstrap, "--topic", &topic])
        .args([
            "--partitions",
            "4",
            "--cars",
            "6",
            "--speed",
            "500",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut rng = 0x9E3779B97F4A7C15u64;
    for kill in 1..=5 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let after = Duration::from_millis(1_000 + rng % 2_000);
        tokio::time::sleep(after).await;
        println!("kill -9 #{kill} after {after:?}");
        server.kill9();
        server = start();
        // Until it answers.
        stats(&mut server.client().await).await;
    }
    let out = replay.wait_with_output().unwrap();
    assert!(out.status.success());
    println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    let rows = fleet_rows(6);
    finish(server, rows.num_rows() as u64).await;
    let archived = read_archive(&data, "telemetry", &["session", "driver"]).await;
    assert_archive_holds_exactly(&archived, &rows);
}

/// A server that owns no partition for longer than a rebalance takes says so (`stats`,
/// `/readyz`, a warning), rejoins its group, and takes over once a partition is free: here a
/// second server in the group of a 1-partition topic, whose owner is then killed.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_partitions_says_so_and_takes_over_when_one_frees() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = broker();
    let topic = unique("unassigned");
    let group = unique("group");
    create_topic(&bootstrap, &topic, 1).await.unwrap();
    // Short timeouts: the watch fires at max(session, rebalance timeout) + 15 s = 27 s. (Not
    // 6 s: tansu takes 3 s to answer a static member's JoinGroup and 3 s for its SyncGroup,
    // and then counts the member's session as missed.)
    // Dynamic members: tansu 0.6.0 keeps a killed static member (and its partition) until
    // a rebalance it never starts; the restarts of `killed_five_times_during_a_replay…`
    // cover static membership.
    let settings = [
        "--instance-id",
        "off",
        "--kafka-opt",
        "session.timeout.ms=12000",
        "--kafka-opt",
        "heartbeat.interval.ms=500",
        "--kafka-opt",
        "max.poll.interval.ms=12000",
    ];
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let _log = LogOnPanic(vec![
        a_dir.with_extension("log"),
        b_dir.with_extension("log"),
    ]);
    let start = |dir: &Path| {
        let http = free_port();
        let server = ServerProcess::start_on(
            free_port(),
            http,
            &bootstrap,
            &topic,
            &group,
            dir,
            &settings,
        );
        (
            server,
            crate::web::Http::new(([127, 0, 0, 1], http).into(), None),
        )
    };
    let (a, a_http) = start(&a_dir);
    let (b, b_http) = start(&b_dir);
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    assert_eq!(b_http.get("/readyz").await.0, 200);
    // The group gives the partition to one of them (the first member id in order).
    let started = Instant::now();
    let (owner, idle) = loop {
        let (sa, sb) = (stats(&mut ca).await, stats(&mut cb).await);
        let stuck = |s: &pitwall_proto::ServerStats| s.group_stuck && s.group_rejoins >= 1;
        if sa.partitions == [0] && stuck(&sb) {
            break ((a, ca, a_http), (b, cb, b_http, sb, b_dir));
        }
        if sb.partitions == [0] && stuck(&sa) {
            break ((b, cb, b_http), (a, ca, a_http, sa, a_dir));
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no owner and idle server after 120 s: {sa:?} {sb:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (idle, mut idle_client, idle_http, s, idle_dir) = idle;
    assert!(s.partitions.is_empty() && s.unassigned_s > 27.0, "{s:?}");
    let (status, body) = idle_http.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("no partitions assigned for "), "{body}");
    assert_eq!(owner.2.get("/readyz").await.0, 200);
    let log = std::fs::read_to_string(idle_dir.with_extension("log")).unwrap();
    assert!(
        log.contains("no partitions assigned for"),
        "no warning logged"
    );
    drop(owner.1);
    owner.0.kill9();
    let s = wait_for(
        &mut idle_client,
        "the idle server to take the partition",
        |s| s.partitions == [0],
    )
    .await;
    assert!(!s.group_stuck && s.unassigned_s == 0.0, "{s:?}");
    assert_eq!(idle_http.get("/readyz").await, (200, "ready\n".to_string()));
    idle.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_outage_of_30_s_mid_replay_loses_nothing() {
    let _serial = one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = OwnBroker::start(true, &dir.path().join("broker")).unwrap();
    let bootstrap = broker.bootstrap();
    let topic = unique("outage");
    create_topic(&bootstrap, &topic, 4).await.unwrap();
    let data = dir.path().join("data");
    let _log = LogOnPanic(vec![
        data.with_extension("log"),
        dir.path().join("broker/broker.log"),
    ]);
    // Producer and consumer reconnect on their own schedules (librdkafka backs off up to
    // 10 s): the consumer back first and at the end of the log must not call the input idle
    // before the producer's backlog arrives.
    let server = ServerProcess::start(
        &bootstrap,
        &topic,
        &unique("group"),
        &data,
        &["--idle-timeout-ms", "15000"],
    );
    let replay = pitwall()
        .args([
            "replay",
            "--brokers",
            &bootstrap,
            "--topic",
            &topic,
            "--laps",
            "1-2",
            "--speed",
            "8",
            "--quiet",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    broker.stop();
    println!("broker stopped mid-replay");
    tokio::time::sleep(Duration::from_secs(30)).await;
    broker.restart().unwrap();
    println!("broker started again");
    let out = tokio::task::spawn_blocking(move || replay.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "the replay survives the outage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = session_rows(2);
    finish(server, rows.num_rows() as u64).await;
    let archived = read_archive(&data, "telemetry", &["session", "driver"]).await;
    assert_archive_holds_exactly(&archived, &rows);
    assert_results_equal_batch(&data, &rows).await;
    broker.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_data_dir_commits_no_offsets_and_loses_nothing() {
    let _serial = one_at_a_time().await;
    let bootstrap = broker();
    let topic = unique("unwritable");
    replay(&bootstrap, &topic, &["--laps", "1-1", "--partitions", "2"]);
    let rows = session_rows(1);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _log = LogOnPanic(vec![
        data.with_extension("log"),
        dir.path().join("broker/broker.log"),
    ]);
    std::fs::create_dir_all(&data).unwrap();
    // A file where the archive needs a directory: writes fail, for root too.
    let blocker = data.join("telemetry");
    std::fs::write(&blocker, b"in the way").unwrap();
    let group = unique("group");
    let server = ServerProcess::start(&bootstrap, &topic, &group, &data, &[]);
    let mut c = server.client().await;
    let started = Instant::now();
    let error = loop {
        let s = stats(&mut c).await;
        if !s.archive_error.is_empty() && s.rows_ingested > 0 {
            break s.archive_error;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no archive error reported: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("archive error while unwritable: {error}");
    assert!(
        error.contains("cannot") && error.contains("retrying") && error.lines().count() == 1,
        "{error}"
    );
    // Watched long enough for ten checkpoints (every 700 ms here) and for a timer-driven
    // commit (librdkafka's auto-commit interval is 5 s) to have fired, had either committed.
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(7) {
        assert!(
            committed_offsets(&bootstrap, &topic, &group, 2).is_empty(),
            "offsets committed while unwritable, {:?} after the first error",
            watched.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        !stats(&mut c).await.archive_error.is_empty(),
        "still unwritable"
    );
    std::fs::remove_file(&blocker).unwrap();
    finish(server, rows.num_rows() as u64).await;
    assert!(
        !committed_offsets(&bootstrap, &topic, &group, 2).is_empty(),
        "offsets committed once written"
    );
    let archived = read_archive(&data, "telemetry", &["session", "driver"]).await;
    assert_archive_holds_exactly(&archived, &rows);
}

/// Offsets the consumer group has committed (partition -> offset), valid ones only.
pub(crate) fn committed_offsets(
    bootstrap: &str,
    topic: &str,
    group: &str,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Wherever ingest resumes, it takes each offset once and in order. tansu 0.6 makes this
/// hard at the end of a log: a consumer resumed in the second-to-last record batch is handed
/// the last batch two or three times within a millisecond (the crash test once archived such
/// a copy of 225 rows), and one resumed inside the last batch gets nothing at all, not even an
/// end-of-partition event, because the broker reports the end of the log as the start of that
/// batch. The resume points step through the last 8,000 offsets of a one-partition topic, so
/// both cases come up whatever the producer's batch sizes were.
#[tokio::test(flavor = "multi_thread")]
async fn resumed_anywhere_ingest_takes_each_offset_once() {
    use pitwall_server::ingest::decode::Decoder;
    use pitwall_server::ingest::kafka;
    use std::sync::atomic::{AtomicBool, Ordering};

    let _serial = one_at_a_time().await;
    let bootstrap = broker();
    let topic = unique("resume");
    replay(&bootstrap, &topic, &["--laps", "1-10", "--partitions", "1"]);
    let end = session_rows(10).num_rows() as i64;
    let dir = tempfile::tempdir().unwrap();
    let config =
        pitwall_server::ServerArgs::load_from(server_args(&bootstrap, &topic, dir.path(), &[]))
            .and_then(pitwall_server::Config::resolve)
            .unwrap();
    for start in (1..=10).map(|k| end - k * 800).chain([end - 1, end]) {
        let mut kafka_config = config.kafka.clone().unwrap();
        kafka_config.group_id = unique("group");
        // Micro-batches long enough to hold a copy that comes a few milliseconds later (as
        // they do when the engine holds ingest back, or with a longer `--linger-ms`).
        kafka_config.linger = Duration::from_millis(50);
        kafka_config.max_batch_wait = Duration::from_millis(200);
        // Where a checkpoint at `start` left the group.
        commit_offset(&bootstrap, &topic, &kafka_config.group_id, start);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let stop = Arc::new(AtomicBool::new(false));
        let source = kafka::spawn(
            kafka_config,
            Decoder::new(config.decode.clone()).unwrap(),
            Arc::default(),
            tx,
            stop.clone(),
            BTreeMap::from([(0, start)]),
        )
        .unwrap();
        let (mut next, mut rows) = (start, 0);
        let started = Instant::now();
        // To the end of the log, then a while longer for copies to show.
        let mut at_end: Option<Instant> = None;
        while at_end.is_none_or(|t| t.elapsed() < Duration::from_secs(1)) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "resumed at {start} of {end}: {rows} rows came, next offset {next}"
            );
            if next == end {
                at_end.get_or_insert_with(Instant::now);
            }
            let Ok(Some(batch)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
            else {
                continue;
            };
            for s in &batch.partitions {
                assert_eq!(
                    s.first_offset, next,
                    "resumed at {start} of {end}: offsets not taken once and in order"
                );
                next = s.last_offset + 1;
            }
            rows += batch.rows.num_rows() as i64;
            assert_eq!(
                rows,
                next - start,
                "resumed at {start} of {end}: a micro-batch took some offset twice"
            );
        }
        stop.store(true, Ordering::Relaxed);
        drop(rx);
        source.thread.join().unwrap();
        println!("resumed at {start} of {end}: each of {rows} offsets once");
    }
}

/// Commits `offset` for partition 0 of `topic` as consumer group `group`.
fn commit_offset(bootstrap: &str, topic: &str, group: &str, offset: i64) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Offset(offset))
        .unwrap();
    consumer.commit(&tpl, CommitMode::Sync).unwrap();
    assert_eq!(
        committed_offsets(bootstrap, topic, group, 1),
        BTreeMap::from([(0, offset)])
    );
}
