//! Several servers in one consumer group: partitions handed over between them as they join,
//! are killed or paused and come back, with each row archived once across their archives and
//! the group's offsets at the end of every log; and each server listing the other's endpoint,
//! so that `pitwall watch` on one prints the rows of both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};

use crate::archive::{
    LogOnPanic, assert_archive_holds_exactly, assert_results_equal, committed_offsets,
    one_at_a_time, read_archive, try_read_archive,
};
use crate::engine::stats;
use crate::support::*;

/// Group settings for servers that come and go: dynamic members (tansu 0.6.0 keeps a killed
/// static member's partitions until it returns), a killed one gone after 6 s, and a rebalance
/// that waits at most 12 s for members that do not rejoin.
const GROUP_SETTINGS: [&str; 8] = [
    "--instance-id",
    "off",
    "--kafka-opt",
    "session.timeout.ms=6000",
    "--kafka-opt",
    "heartbeat.interval.ms=500",
    "--kafka-opt",
    "max.poll.interval.ms=12000",
];

/// Where each log of `topic` ends (partition -> offset after its last message), read to
/// the end: tansu 0.6 reports a high watermark at the start of the last record batch.
fn log_ends(bootstrap: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    use rdkafka::Message;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("ends"))
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut ends: BTreeMap<i32, i64> = (0..partitions).map(|p| (p, 0)).collect();
    let mut done = std::collections::BTreeSet::new();
    let started = Instant::now();
    while done.len() < partitions as usize {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "logs not read to their end"
        );
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let e = ends.get_mut(&m.partition()).unwrap();
                *e = (*e).max(m.offset() + 1);
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            _ => {}
        }
    }
    ends
}

/// Rows in a server's `archive.telemetry` (0 before its first checkpoint).
async fn archived_rows(server: &ServerProcess) -> i64 {
    let mut c = server.client().await;
    match c.sql("SELECT count(*) FROM archive.telemetry").await {
        Ok(b) => b.first().map_or(0, |b| {
            b.column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(0)
        }),
        Err(_) => 0,
    }
}

/// Waits until `server` owns at least one partition; returns them.
async fn owns_some(server: &ServerProcess, what: &str) -> Vec<i32> {
    let mut c = server.client().await;
    let started = Instant::now();
    loop {
        let s = stats(&mut c).await;
        if !s.partitions.is_empty() {
            return s.partitions;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{what}: no partition after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Lines of a server's log that contain `needle`.
fn log_lines(data: &Path, needle: &str) -> usize {
    std::fs::read_to_string(data.with_extension("log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// Two servers, A and B, in one group on a 6-partition topic (both listed in one members
/// directory), while the race is replayed at 20x: A alone, then B joined.
struct Pair {
    bootstrap: String,
    topic: String,
    group: String,
    a_dir: PathBuf,
    b_dir: PathBuf,
    settings: Vec<String>,
    replay: Option<std::thread::JoinHandle<RecordBatch>>,
    _log: LogOnPanic,
    _dir: tempfile::TempDir,
}

impl Pair {
    async fn start() -> (Self, ServerProcess, ServerProcess) {
        let bootstrap = broker();
        let (topic, group) = (unique("group"), unique("group"));
        create_topic(&bootstrap, &topic, 6).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
        let members = dir.path().join("members");
        let mut settings: Vec<String> = GROUP_SETTINGS.iter().map(|s| s.to_string()).collect();
        settings.extend(["--members-dir".into(), members.display().to_string()]);
        let mut pair = Self {
            _log: LogOnPanic(vec![
                a_dir.with_extension("log"),
                b_dir.with_extension("log"),
            ]),
            bootstrap,
            topic,
            group,
            a_dir,
            b_dir,
            settings,
            replay: None,
            _dir: dir,
        };
        let a = pair.server(&pair.a_dir);
        println!("A owns {:?}", owns_some(&a, "A alone").await);
        pair.replay = Some({
            let (bootstrap, topic) = (pair.bootstrap.clone(), pair.topic.clone());
            std::thread::spawn(move || replay_paced(&bootstrap, &topic))
        });
        tokio::time::sleep(Duration::from_secs(4)).await;
        let b = pair.restart_b("B joined").await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        (pair, a, b)
    }

    fn server(&self, data: &Path) -> ServerProcess {
        let settings: Vec<&str> = self.settings.iter().map(String::as_str).collect();
        ServerProcess::start(&self.bootstrap, &self.topic, &self.group, data, &settings)
    }

    /// Starts B (again) on its data dir, once it owns partitions.
    async fn restart_b(&self, what: &str) -> ServerProcess {
        let b = self.server(&self.b_dir);
        println!("{what} and owns {:?}", owns_some(&b, what).await);
        b
    }

    /// After the replay: both archived it all; stopped, their archives hold each row once
    /// and the offsets are at the ends of the logs.
    async fn finish(&mut self, a: ServerProcess, b: ServerProcess, check: bool) {
        let produced = self.replay.take().unwrap().join().unwrap();
        wait_archived(&a, &b, produced.num_rows() as i64).await;
        if check {
            watch_follows_every_server(&a, &b).await;
        }
        a.stop();
        b.stop();
        let dirs = [self.a_dir.as_path(), self.b_dir.as_path()];
        assert_each_row_once(&dirs, &produced, &self.bootstrap, &self.topic, &self.group).await;
    }
}

/// B joins (A hands half the partitions over), B is killed with SIGKILL (A takes them back
/// from B's last commit once the session times out), B starts again at once on its data dir
/// (A hands them over again). Afterwards each server lists the other, `pitwall watch` on A
/// prints B's rows too, the two archives together hold each produced row exactly once, and
/// the group's committed offset of every partition is the end of its log.
#[tokio::test(flavor = "multi_thread")]
async fn servers_in_one_group_hand_partitions_over_and_archive_each_row_once() {
    let _serial = one_at_a_time().await;
    let (mut pair, a, b) = Pair::start().await;
    // Long enough for the watch to find B and C (it looks every 5 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    b.kill9();
    println!("B killed with SIGKILL");
    // A takes B's partitions back once B's session times out.
    println!("A owns all 6 again after {:?}", owns_all(&a).await);
    let b = pair.restart_b("B restarted").await;
    pair.finish(a, b, true).await;
    let handed = log_lines(&pair.a_dir, "partitions handed over")
        + log_lines(&pair.b_dir, "partitions handed over");
    println!("clean handovers logged: {handed}");
    assert!(handed >= 2, "A to B twice: {handed} handovers logged");
}

/// Until the two servers' archives hold `rows` rows together.
async fn wait_archived(a: &ServerProcess, b: &ServerProcess, rows: i64) {
    let started = Instant::now();
    loop {
        let (na, nb) = (archived_rows(a).await, archived_rows(b).await);
        if na + nb >= rows {
            println!("archived: A {na}, B {nb}, produced {rows}");
            return;
        }
        if started.elapsed() > Duration::from_secs(120) {
            // The comparison that follows says which rows.
            println!("archived A {na} + B {nb} < {rows} produced after 120 s");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The servers' archives (stopped) hold each produced row once, and the group's committed
/// offset of every partition is the end of its log.
async fn assert_each_row_once(
    dirs: &[&Path],
    produced: &RecordBatch,
    bootstrap: &str,
    topic: &str,
    group: &str,
) {
    let mut archived = Vec::new();
    for d in dirs {
        archived.extend(read_archive(d, "telemetry", &["session", "driver"]).await);
    }
    assert_archive_holds_exactly(&archived, produced);
    let ends = log_ends(bootstrap, topic, 6);
    let mut committed = committed_offsets(bootstrap, topic, group, 6);
    // An empty partition has nothing to commit.
    for (p, end) in &ends {
        if *end == 0 {
            committed.entry(*p).or_insert(0);
        }
    }
    println!("log ends {ends:?}, committed {committed:?}");
    assert_eq!(
        committed, ends,
        "committed offsets are the ends of the logs"
    );
}

/// B paused with SIGSTOP past the session timeout while it owns partitions: A takes them
/// over; continued with SIGCONT, B stops at once (exit status 75) without committing what it
/// processed before the pause, which A reads again. Started again, it resumes from its last
/// checkpoint: each row archived once, offsets at the ends of the logs.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_paused_past_its_session_timeout_stops_instead_of_committing() {
    let _serial = one_at_a_time().await;
    let (mut pair, a, mut b) = Pair::start().await;
    b.signal(rustix::process::Signal::STOP);
    let paused = Instant::now();
    let took = owns_all(&a).await;
    println!("B paused; A owns all 6 after {took:?}");
    b.signal(rustix::process::Signal::CONT);
    let status = b
        .exited(Duration::from_secs(20))
        .expect("B goes on after the pause");
    println!(
        "B continued after {:.1} s: exit status {:?}",
        paused.elapsed().as_secs_f64(),
        status.code()
    );
    assert_eq!(status.code(), Some(75));
    let reason = "longer than the consumer group's session timeout";
    assert_eq!(log_lines(&pair.b_dir, reason), 1);
    let b = pair.restart_b("B restarted").await;
    pair.finish(a, b, false).await;
}

/// Until `server` owns all 6 partitions; how long that took.
async fn owns_all(server: &ServerProcess) -> Duration {
    let mut c = server.client().await;
    let started = Instant::now();
    loop {
        let s = stats(&mut c).await;
        if s.partitions.len() == 6 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "not all partitions after 90 s: {:?}",
            s.partitions
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The race's laps 1-12 at 20x into `topic` (about a minute: servers join and die meanwhile); returns the rows published.
fn replay_paced(bootstrap: &str, topic: &str) -> RecordBatch {
    let mut cmd = pitwall();
    cmd.args(["replay", "--brokers", bootstrap, "--topic", topic])
        .args(["--laps", "1-12", "--speed", "20", "--quiet"]);
    run_ok(&mut cmd);
    session_rows(12)
}

/// Either server lists both as endpoints of a query (`GetFlightInfo`), and `pitwall watch` on
/// one prints the other's rows too: every `over_rev` row in either server's replay buffer.
/// (`over_rev` is row by row: a server that took partitions over with its watermark past
/// their rows still emits them, where its windows drop them as late.)
async fn watch_follows_every_server(a: &ServerProcess, b: &ServerProcess) {
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let location = |s: &ServerProcess| format!("grpc://127.0.0.1:{}", s.port);
    // Records are rewritten every second: both own partitions by now.
    let started = Instant::now();
    loop {
        let (of_a, of_b) = (
            ca.other_endpoints("over_rev").await.unwrap(),
            cb.other_endpoints("over_rev").await.unwrap(),
        );
        if of_a == [location(b)] && of_b == [location(a)] {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "endpoints: A lists {of_a:?}, B lists {of_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // `pitwall stats` on A names B and B's partitions.
    let (sa, sb) = (stats(&mut ca).await, stats(&mut cb).await);
    assert_eq!(sa.members.len(), 1, "{:?}", sa.members);
    assert_eq!(
        (&sa.members[0].location, &sa.members[0].partitions),
        (&location(b), &sb.partitions)
    );
    let printed =
        run_ok(pitwall().args(["--server", &format!("http://127.0.0.1:{}", a.port), "stats"]));
    let member = printed.lines().find(|l| l.starts_with("member:")).unwrap();
    println!("pitwall stats on A: {member}");
    let keys = |batches: Vec<RecordBatch>| -> Vec<String> {
        let mut v: Vec<String> = batches
            .iter()
            .flat_map(|b| {
                let d = b.column(0).as_string::<i32>().clone();
                let l = b
                    .column(1)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .clone();
                let r = b
                    .column(2)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .clone();
                (0..b.num_rows()).map(move |i| {
                    // A null lap prints as nothing in CSV.
                    let lap = if l.is_null(i) {
                        String::new()
                    } else {
                        l.value(i).to_string()
                    };
                    format!("{},{lap},{}", d.value(i), r.value(i))
                })
            })
            .collect();
        v.sort();
        v
    };
    let q = "SELECT driver, CAST(lap AS BIGINT), CAST(rpm AS BIGINT) FROM over_rev";
    let (in_a, in_b) = (keys(sql(&mut ca, q).await), keys(sql(&mut cb, q).await));
    assert!(
        !in_a.is_empty() && !in_b.is_empty(),
        "{} and {} rows",
        in_a.len(),
        in_b.len()
    );
    let out = run_ok(pitwall().args([
        "--server",
        &format!("http://127.0.0.1:{}", a.port),
        "watch",
        "over_rev",
        "--from-start",
        "--format",
        "csv",
        "--limit",
        &(in_a.len() + in_b.len()).to_string(),
    ]));
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let column = |name: &str| header.iter().position(|c| *c == name).unwrap();
    let (d, l, r) = (column("driver"), column("lap"), column("rpm"));
    let mut watched: Vec<String> = lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let rpm = f[r].parse::<f64>().unwrap() as i64;
            format!("{},{},{rpm}", f[d], f[l])
        })
        .collect();
    watched.sort();
    let mut both: Vec<String> = in_a.iter().chain(&in_b).cloned().collect();
    both.sort();
    assert_eq!(watched, both, "pitwall watch on A prints A's and B's rows");
    println!(
        "pitwall watch over_rev on A: {} rows, {} of them B's",
        watched.len(),
        in_b.len()
    );
}

/// The writers' parts of a shared archive.
fn writer_roots(shared: &Path) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = std::fs::read_dir(shared.join("writers"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    roots.sort();
    roots
}

/// Raw rows in every writer's part of a shared archive (None while a merge replaces files
/// under the listing).
async fn shared_rows(shared: &Path) -> Option<usize> {
    let mut n = 0;
    for root in writer_roots(shared) {
        if root.join("telemetry").exists() {
            let rows = try_read_archive(&root, "telemetry", &["session", "driver"]).await;
            n += rows.ok()?.iter().map(|b| b.num_rows()).sum::<usize>();
        }
    }
    Some(n)
}

/// Until the shared archive holds `rows` raw rows and no server has a window open.
async fn settle(shared: &Path, servers: &[&ServerProcess], rows: usize) {
    let started = Instant::now();
    loop {
        let archived = shared_rows(shared).await.unwrap_or(0);
        let mut open = 0;
        for s in servers {
            let mut c = s.client().await;
            open += stats(&mut c)
                .await
                .queries
                .iter()
                .map(|q| q.open_windows)
                .sum::<u64>();
        }
        if archived >= rows && open == 0 {
            println!(
                "settled after {:?}: {archived} rows archived, no window open",
                started.elapsed()
            );
            return;
        }
        if started.elapsed() > Duration::from_secs(180) {
            println!("after 180 s: {archived} of {rows} rows archived, {open} windows open");
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Three servers sharing one archive (`--shared-archive`) on a 6-partition topic while the
/// race is replayed: A, then B and C join; B is killed with SIGKILL; C is paused with SIGSTOP
/// past the session timeout and continued (it stops, status 75); D joins and B starts again.
/// Partitions move with their cars' state (open laps, the previous lap `lap_anomaly`
/// compares with) and the watermark waits for partitions without an owner. Afterwards the
/// archive's `lap_stats` and `lap_anomaly` (all writers together) are the rows one process
/// computes over the same input, every raw row is archived once, and the group's committed
/// offsets are the ends of the logs.
#[tokio::test(flavor = "multi_thread")]
async fn three_servers_sharing_an_archive_compute_what_one_does_under_churn() {
    let _serial = one_at_a_time().await;
    let bootstrap = broker();
    let (topic, group) = (unique("churn"), unique("churn"));
    create_topic(&bootstrap, &topic, 6).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    let mut settings: Vec<&str> = GROUP_SETTINGS.to_vec();
    settings.push("--shared-archive");
    // Every server appends to one log beside the archive (`shared.log`).
    let _log = LogOnPanic(vec![shared.with_extension("log")]);
    let start = |_name: &str| ServerProcess::start(&bootstrap, &topic, &group, &shared, &settings);
    let a = start("a");
    println!("A owns {:?}", owns_some(&a, "A").await);
    // `pitwall watch` on A, from before the first row to the end, following every server.
    let watches: Vec<(&str, std::process::Child, PathBuf)> = ["lap_stats", "lap_anomaly"]
        .into_iter()
        .map(|q| {
            let out = dir.path().join(format!("{q}.csv"));
            let child = pitwall()
                .args(["--server", &format!("http://127.0.0.1:{}", a.port)])
                .args(["watch", q, "--format", "csv"])
                .stdout(std::fs::File::create(&out).unwrap())
                .stderr(std::fs::File::create(out.with_extension("err")).unwrap())
                .spawn()
                .unwrap();
            (q, child, out)
        })
        .collect();
    let replay = {
        let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
        std::thread::spawn(move || replay_paced(&bootstrap, &topic))
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = start("b");
    println!("B joined and owns {:?}", owns_some(&b, "B").await);
    let mut c = start("c");
    println!("C joined and owns {:?}", owns_some(&c, "C").await);
    // A lists both, and the watch (which looks every 5 s) follows them: rows of a server
    // killed before any watch found it are in the archive only.
    listed_by(&a, &[&b, &c]).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    b.kill9();
    println!("B killed with SIGKILL");
    c.signal(rustix::process::Signal::STOP);
    println!("C paused; A owns all 6 after {:?}", owns_all(&a).await);
    c.signal(rustix::process::Signal::CONT);
    let status = c
        .exited(Duration::from_secs(20))
        .expect("C stops after the pause");
    println!("C continued: exit status {:?}", status.code());
    assert_eq!(status.code(), Some(75));
    let d = start("d");
    println!("D joined and owns {:?}", owns_some(&d, "D").await);
    let b = start("b2");
    println!("B restarted and owns {:?}", owns_some(&b, "B again").await);
    let produced = replay.join().unwrap();
    settle(&shared, &[&a, &b, &d], produced.num_rows()).await;
    for s in [&a, &b, &d] {
        let n = archived_rows(s).await;
        println!("archive.telemetry on {}: {n} rows", s.port);
        assert_eq!(
            n,
            produced.num_rows() as i64,
            "archive.* read from any server"
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (q, mut child, out) in watches {
        let _ = child.kill();
        let _ = child.wait();
        println!(
            "{q} watch stderr: {}",
            std::fs::read_to_string(out.with_extension("err")).unwrap()
        );
        assert_watched_as_batch(q, &std::fs::read_to_string(out).unwrap(), &produced).await;
    }
    let taken = log_lines(&shared, "taken over from its last checkpoint");
    println!("partitions taken over with their cars' state: {taken}");
    a.stop();
    b.stop();
    d.stop();
    let roots = writer_roots(&shared);
    println!("writers: {}", roots.len());
    let roots: Vec<&Path> = roots.iter().map(PathBuf::as_path).collect();
    assert_each_row_once(&roots, &produced, &bootstrap, &topic, &group).await;
    assert_results_equal(&roots, &["lap_stats", "lap_anomaly"], &produced).await;
    assert!(taken > 0, "no partition was taken over with its state");
}

/// Until `server` lists every one of `others` as an endpoint of its queries.
async fn listed_by(server: &ServerProcess, others: &[&ServerProcess]) {
    let mut c = server.client().await;
    let started = Instant::now();
    loop {
        let listed = c.other_endpoints("lap_stats").await.unwrap();
        if others
            .iter()
            .all(|o| listed.contains(&format!("grpc://127.0.0.1:{}", o.port)))
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The rows `pitwall watch` printed (CSV) are the batch result's, each at least once (a row a
/// killed server emitted after its last checkpoint comes again from the server that took its
/// partition over from that checkpoint); prints how many came twice.
async fn assert_watched_as_batch(query: &str, csv: &str, produced: &RecordBatch) {
    let queries = pitwall_server::initial_queries(None).unwrap();
    let batch = pitwall_server::engine::oracle::batch_result(&queries, query, produced)
        .await
        .unwrap();
    // Compared on the key and one value, rounded as CSV prints it.
    let value = if query == "lap_stats" {
        "mean_speed"
    } else {
        "anomaly_score"
    };
    let mut want: Vec<String> = batch
        .iter()
        .flat_map(|b| {
            let d = arrow::compute::cast(
                b.column_by_name("driver").unwrap(),
                &arrow::datatypes::DataType::Utf8,
            )
            .unwrap();
            let l = arrow::compute::cast(
                b.column_by_name("lap").unwrap(),
                &arrow::datatypes::DataType::Int64,
            )
            .unwrap();
            let v = arrow::compute::cast(
                b.column_by_name(value).unwrap(),
                &arrow::datatypes::DataType::Float64,
            )
            .unwrap();
            let (d, l, v) = (
                d.as_string::<i32>().clone(),
                l.as_primitive::<arrow::datatypes::Int64Type>().clone(),
                v.as_primitive::<arrow::datatypes::Float64Type>().clone(),
            );
            (0..b.num_rows()).map(move |i| {
                let v = if v.is_null(i) {
                    String::new()
                } else {
                    format!("{:.3}", v.value(i))
                };
                format!("{},{},{v}", d.value(i), l.value(i))
            })
        })
        .collect();
    want.sort();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = |name: &str| header.iter().position(|c| *c == name).unwrap();
    let (d, l, v) = (column("driver"), column("lap"), column(value));
    let mut seen: Vec<String> = lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let v = f[v]
                .parse::<f64>()
                .map_or(String::new(), |v| format!("{v:.3}"));
            format!("{},{},{v}", f[d], f[l])
        })
        .collect();
    seen.sort();
    let printed = seen.len();
    seen.dedup();
    println!(
        "pitwall watch {query} on A: {printed} rows printed, {} distinct, {} twice; batch {}",
        seen.len(),
        printed - seen.len(),
        want.len()
    );
    let missing: Vec<&String> = want
        .iter()
        .filter(|w| seen.binary_search(w).is_err())
        .collect();
    let extra: Vec<&String> = seen
        .iter()
        .filter(|s| want.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{query} watched: missing {missing:?}, not in the batch result {extra:?}"
    );
}
