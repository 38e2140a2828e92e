//! What the end-to-end tests stand on: a real Kafka-protocol broker (the one named by
//! `PITWALL_TEST_KAFKA`, or tansu started here), the `pitwall` binary, and the server running
//! in-process on port 0.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::RecordBatch;
use pitwall_cli::client::{Client, ServerAddress};
use pitwall_server::{App, Config, RunningApp, ServerArgs};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// A tansu broker owned by the tests. It stops when its stdin closes, so it never outlives
/// the test process (even when that is killed).
pub(crate) struct OwnBroker {
    pub port: u16,
    pub dir: PathBuf,
    durable: bool,
    child: Option<(Child, ChildStdin)>,
}

impl OwnBroker {
    pub(crate) fn start(durable: bool, dir: &Path) -> Result<Self> {
        let mut b = Self {
            port: free_port(),
            dir: dir.to_path_buf(),
            durable,
            child: None,
        };
        b.restart()?;
        Ok(b)
    }

    pub(crate) fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// (Re)starts the broker on the same port and storage.
    pub(crate) fn restart(&mut self) -> Result<()> {
        let tansu = tansu_binary()?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let storage = if self.durable {
            "sqlite://tansu.db"
        } else {
            "memory://tansu/"
        };
        std::fs::create_dir_all(&self.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))?;
        // `read` returns when our end of the pipe closes; then the broker is killed.
        let script = format!(
            "'{}' broker --listener-url {url} --advertised-listener-url {url} --storage-engine {storage} & pid=$!; read _; kill -9 $pid; wait $pid",
            tansu.display()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting tansu")?;
        let stdin = child.stdin.take().expect("piped");
        self.child = Some((child, stdin));
        wait_for_broker(&self.bootstrap(), Duration::from_secs(20))
    }

    /// Kills the broker (like a crash: no clean shutdown).
    pub(crate) fn stop(&mut self) {
        if let Some((mut child, mut stdin)) = self.child.take() {
            let _ = stdin.write_all(b"\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

pub(crate) fn tansu_binary() -> Result<PathBuf> {
    if let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg("command -v tansu")
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return Ok(PathBuf::from(p));
        }
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let p = PathBuf::from(home).join(".cargo/bin/tansu");
    if p.exists() {
        return Ok(p);
    }
    bail!(
        "no broker: set PITWALL_TEST_KAFKA=HOST:PORT, or install tansu (scripts/broker.sh start installs it; \
         scripts/test.sh does everything)"
    )
}

pub(crate) fn free_port() -> u16 {
    pitwall_cli::process::free_port().expect("free port")
}

fn wait_for_broker(bootstrap: &str, within: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("socket.timeout.ms", "1000")
            .create()?;
        if admin
            .inner()
            .fetch_metadata(None, Duration::from_millis(1000))
            .is_ok()
        {
            return Ok(());
        }
        if started.elapsed() > within {
            bail!("the broker at {bootstrap} did not answer within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The shared broker: `PITWALL_TEST_KAFKA`, else one tansu (memory storage) for the whole run.
pub(crate) fn broker() -> String {
    static SHARED: OnceLock<Mutex<Option<OwnBroker>>> = OnceLock::new();
    if let Ok(b) = std::env::var("PITWALL_TEST_KAFKA")
        && !b.is_empty()
    {
        return b;
    }
    let cell = SHARED.get_or_init(|| Mutex::new(None));
    let mut guard = cell.lock().unwrap_or_else(|e| e.into_inner());
    if guard.is_none() {
        let dir = std::env::temp_dir().join(format!("pitwall-test-broker-{}", std::process::id()));
        *guard = Some(OwnBroker::start(false, &dir).expect("start tansu"));
    }
    guard.as_ref().expect("started").bootstrap()
}

/// A name no other test (or earlier run against the same broker) uses.
pub(crate) fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let res = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await?;
    for r in res {
        if let Err((t, e)) = r {
            bail!("create topic {t}: {e}");
        }
    }
    Ok(())
}

/// The `pitwall` binary under test: the one cargo built with this test, or the one in
/// `$PITWALL_TEST_BIN_DIR` (to test other builds, e.g. release binaries or a copy kept aside
/// while the tree changes).
pub(crate) fn pitwall_binary() -> PathBuf {
    match std::env::var_os("PITWALL_TEST_BIN_DIR") {
        Some(dir) => Path::new(&dir).join("pitwall"),
        None => PathBuf::from(env!("CARGO_BIN_EXE_pitwall")),
    }
}

pub(crate) fn pitwall() -> Command {
    Command::new(pitwall_binary())
}

/// The `pitwall-server` binary, built next to `pitwall`: `cargo test --workspace` builds it for
/// the server's own integration tests.
pub(crate) fn pitwall_server_binary() -> PathBuf {
    let p = pitwall_binary().with_file_name("pitwall-server");
    assert!(
        p.exists(),
        "{} is missing: run `cargo test --workspace` (scripts/test.sh), or `cargo build --workspace` first",
        p.display()
    );
    p
}

pub(crate) fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run command")
}

pub(crate) fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `pitwall replay` of the bundled session into `topic`, as fast as possible.
pub(crate) fn replay(bootstrap: &str, topic: &str, extra: &[&str]) -> String {
    let mut cmd = pitwall();
    cmd.args([
        "replay",
        "--brokers",
        bootstrap,
        "--topic",
        topic,
        "--max",
        "--quiet",
    ])
    .args(extra);
    run_ok(&mut cmd)
}

/// Server settings for tests: port 0, its own consumer group and data dir, quick idleness.
pub(crate) fn server_args(
    bootstrap: &str,
    topic: &str,
    data_dir: &Path,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "pitwall-server",
        "--brokers",
        bootstrap,
        "--topic",
        topic,
        "--group",
        &unique("group"),
        "--flight-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--idle-timeout-ms",
        "500",
        "--lap-gap-ms",
        "3000",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub(crate) async fn start_server(args: Vec<String>) -> RunningApp {
    let config = ServerArgs::load_from(args)
        .and_then(Config::resolve)
        .expect("config");
    App::build(config)
        .await
        .expect("build")
        .start()
        .await
        .expect("start")
}

pub(crate) async fn client(app: &RunningApp, token: Option<&str>) -> Client {
    let addr = ServerAddress {
        url: format!("http://{}", app.flight_addr),
        token: token.map(String::from),
        tls_ca: None,
    };
    Client::connect(&addr).await.expect("connect")
}

/// The bundled session cut to laps 1..=`last_lap` (with the lead-in), as the replay sends it.
pub(crate) fn session_rows(last_lap: i32) -> RecordBatch {
    let s = pitwall_cli::session::Session::bundled()
        .unwrap()
        .cut_laps(1, last_lap, 30_000)
        .unwrap();
    s.rows
}

/// Runs ad-hoc SQL and returns the batches.
pub(crate) async fn sql(client: &mut Client, q: &str) -> Vec<RecordBatch> {
    client.sql(q).await.unwrap_or_else(|e| panic!("{q}: {e:#}"))
}

/// `pitwall-server` as a separate process, so that it can be killed.
pub(crate) struct ServerProcess {
    child: Child,
    pub port: u16,
}

impl ServerProcess {
    pub(crate) fn start(
        bootstrap: &str,
        topic: &str,
        group: &str,
        data: &Path,
        extra: &[&str],
    ) -> Self {
        Self::start_on(
            free_port(),
            free_port(),
            bootstrap,
            topic,
            group,
            data,
            extra,
        )
    }

    /// Starts it on given ports (to start it again where clients look for it).
    pub(crate) fn start_on(
        port: u16,
        http_port: u16,
        bootstrap: &str,
        topic: &str,
        group: &str,
        data: &Path,
        extra: &[&str],
    ) -> Self {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .unwrap();
        let child = Command::new(pitwall_server_binary())
            .args(["--brokers", bootstrap, "--topic", topic, "--group", group])
            .args([
                "--flight-addr",
                &format!("127.0.0.1:{port}"),
                "--http-addr",
                &format!("127.0.0.1:{http_port}"),
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .args(["--lap-gap-ms", "3000", "--checkpoint-ms", "700"])
            .args(if extra.contains(&"--idle-timeout-ms") {
                &[][..]
            } else {
                &["--idle-timeout-ms", "500"][..]
            })
            .args(extra)
            .env("RUST_LOG", "info,pitwall_server::engine=debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, port }
    }

    pub(crate) async fn client(&self) -> Client {
        let addr = ServerAddress {
            url: format!("http://127.0.0.1:{}", self.port),
            token: None,
            tls_ca: None,
        };
        let started = Instant::now();
        loop {
            match Client::connect(&addr).await {
                Ok(c) => return c,
                Err(e) => {
                    assert!(
                        started.elapsed() < Duration::from_secs(60),
                        "server did not come up: {e:#}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    pub(crate) fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `signal` (SIGSTOP, SIGCONT...).
    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// Its exit status once it has exited on its own, within `within`.
    pub(crate) fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// SIGTERM: a clean stop writes a last checkpoint.
    pub(crate) fn stop(mut self) {
        assert!(
            pitwall_cli::process::terminate(&mut self.child, Duration::from_secs(60)),
            "server did not stop within 60 s of SIGTERM"
        );
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server on the embedded replay of the bundled race (no broker; 100x unless
/// `--embedded-speed` is given), Flight and HTTP on free ports.
pub(crate) async fn embedded_server(extra: &[&str]) -> pitwall_server::RunningApp {
    let data = std::env::temp_dir().join(unique("embedded"));
    let mut args: Vec<String> = [
        "pitwall-server",
        "--flight-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--embedded-speed") {
        args.extend(["--embedded-speed".to_string(), "100".to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    start_server(args).await
}
