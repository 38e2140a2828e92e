//! Several servers in one consumer group: partitions handed over between them as they join,
//! are killed or paused and come back, with each row archived once across their archives and
//! the group's offsets at the end of every log; and each server listing the other's endpoint,
//! so that `pitwall watch` on one prints the rows of both.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};

use crate::archive::{
    LogOnPanic, assert_archive_holds_exactly, committed_offsets, one_at_a_time, read_archive,
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
