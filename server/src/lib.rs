//! Pitwall server: live telemetry in, continuous SQL results out, everything archived.
//!
//! Telemetry enters from Kafka ([`ingest::kafka`], or the in-process replay of the bundled
//! session, [`ingest::embedded`]) and is gathered into micro-batches that are decoded straight
//! into Arrow record batches ([`ingest::decode`]); messages that cannot be decoded become dead
//! letters. The [`engine`] moves the event-time watermark and runs every continuous query,
//! written in plain SQL and compiled by DataFusion into stages that keep only open windows,
//! over each micro-batch; what a query emits goes to its result stream. Result streams are
//! served live over Arrow Flight, with query control and Flight SQL on the same port
//! ([`flight`]), and to people by the dashboard on an HTTP port, which also serves `/metrics`
//! (`web`). Raw rows, results and dead letters are written to Parquet with the engine's
//! checkpoints ([`archive`]), which is what makes a restart lose and repeat nothing.

// Every dependency the library declares is one it uses (the binaries and tests have their own
// imports; this lint is per compilation unit, so it is checked on the library only, outside
// its unit tests, which also see the dev-dependencies).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod archive;
pub(crate) mod config;
pub mod engine;
pub(crate) mod error;
pub mod flight;
pub mod ingest;
pub(crate) mod web;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::archive::{Archive, ArchiveCatalog, Store};
pub use crate::config::{Config, ServerArgs};
use crate::engine::snapshot::parse_offset_key;
use crate::engine::{Engine, EngineHandle, QueryDef};
pub use crate::error::{Error, Result};
use crate::ingest::IngestStats;
use crate::ingest::decode::Decoder;

/// The default continuous queries, used when no queries directory is configured.
pub const BUILTIN_QUERIES: &[(&str, &str)] = &[
    ("lap_stats", include_str!("../../queries/lap_stats.sql")),
    ("lap_anomaly", include_str!("../../queries/lap_anomaly.sql")),
    ("over_rev", include_str!("../../queries/over_rev.sql")),
    ("lock_up", include_str!("../../queries/lock_up.sql")),
    ("speed_1s", include_str!("../../queries/speed_1s.sql")),
    (
        "sample_checks",
        include_str!("../../queries/sample_checks.sql"),
    ),
    ("gear_checks", include_str!("../../queries/gear_checks.sql")),
    ("checks", include_str!("../../queries/checks.sql")),
    (
        "sample_alerts",
        include_str!("../../queries/sample_alerts.sql"),
    ),
    ("lap_health", include_str!("../../queries/lap_health.sql")),
    ("lap_alerts", include_str!("../../queries/lap_alerts.sql")),
    ("alerts", include_str!("../../queries/alerts.sql")),
];

/// The shipped queries that emit only when something is wrong (the fault detectors): on a clean
/// stretch of the race they are empty.
pub const FAULT_DETECTORS: &[&str] = &[
    "sample_checks",
    "gear_checks",
    "checks",
    "sample_alerts",
    "lap_alerts",
    "alerts",
];

/// The query definitions to start with: the directory's files, or the built-in ones.
pub fn initial_queries(dir: Option<&Path>) -> Result<Vec<QueryDef>> {
    match dir {
        Some(d) => QueryDef::load_dir(d),
        None => BUILTIN_QUERIES
            .iter()
            .map(|(n, sql)| QueryDef::parse(n, sql))
            .collect(),
    }
}

/// A server, built and ready to run: queries compiled, archive recovered.
pub struct App {
    config: Config,
    engine: Engine,
    ingest_stats: Arc<IngestStats>,
    store: Store,
    next_seq: u64,
    last_commit: Option<archive::CommitRecord>,
    /// The archive shared with the group's other servers (`--shared-archive`).
    group: Option<Arc<dyn engine::handover::GroupArchive>>,
}

/// A server running in the background (tests start one in-process).
pub struct RunningApp {
    pub flight_addr: SocketAddr,
    /// The dashboard's address (None when `--http-addr off`).
    pub http_addr: Option<SocketAddr>,
    pub engine: EngineHandle,
    pub archive_stats: Arc<archive::ArchiveStats>,
    shutdown: watch::Sender<bool>,
    stop_ingest: Arc<AtomicBool>,
    engine_task: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    ingest_thread: Option<std::thread::JoinHandle<()>>,
    archive: Option<Archive>,
}

impl App {
    /// Compiles the initial queries (one that is refused is logged and left out), makes the
    /// archive consistent and restores the last checkpoint.
    pub async fn build(config: Config) -> Result<Self> {
        let mut engine = Engine::new(config.engine.clone())?;
        let mut group: Option<Arc<dyn engine::handover::GroupArchive>> = None;
        let store = if config.shared_archive {
            let session = config.kafka.as_ref().map_or(Duration::from_secs(45), |k| {
                ingest::kafka::session_timeout(&k.options)
            });
            let shared = Arc::new(archive::shared::SharedArchive::claim(
                std::path::Path::new(&config.data_dir),
                session,
            )?);
            let root = shared.writer_root();
            engine.set_group_archive(shared.clone());
            group = Some(shared);
            Store::open(&root.to_string_lossy())?
        } else {
            Store::open(&config.data_dir)?
        };
        let recovered = archive::recover(&store).await?;
        // What ran before the restart, run-time changes included, unless a query file was
        // edited since (see `engine::snapshot::resume`).
        let files = initial_queries(config.queries_dir.as_deref())?;
        engine.set_query_files(&files);
        let resumed = engine::snapshot::resume(files, recovered.state.as_ref().map(|(s, _)| s));
        if !resumed.from_checkpoint.is_empty() {
            tracing::info!(queries = ?resumed.from_checkpoint, "run-time query changes resumed from the checkpoint");
        }
        let mut defs = resumed.defs;
        // A query may read another: submit in passes until nothing more can start.
        let mut refused = Vec::new();
        while !defs.is_empty() {
            let before = defs.len();
            let mut waiting = Vec::new();
            refused.clear();
            for def in defs {
                if let Err(e) = engine.submit(def.clone()).await {
                    refused.push((def.name.clone(), e.to_string()));
                    waiting.push(def);
                }
            }
            defs = waiting;
            if defs.len() == before {
                break;
            }
        }
        for (name, err) in &refused {
            tracing::error!(query = %name, error = %err, "query refused; the others run");
        }
        for name in &resumed.paused {
            if let Err(e) = engine.set_status(name, true) {
                tracing::warn!(query = %name, error = %e, "not paused again");
            }
        }
        if recovered.deleted_orphans > 0 {
            tracing::info!(
                files = recovered.deleted_orphans,
                "deleted data files no commit counts (left by a crash)"
            );
        }
        if let Some((state, batches)) = &recovered.state {
            let report = engine.restore(state, batches)?;
            tracing::info!(
                checkpoint = recovered.next_seq - 1,
                restored = ?report.restored,
                changed = ?report.changed,
                "resumed from the last checkpoint"
            );
        }
        Ok(Self {
            config,
            engine,
            ingest_stats: Arc::default(),
            store,
            next_seq: recovered.next_seq,
            last_commit: recovered.last,
            group,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Starts ingest, the engine, the archive and the endpoint in the background.
    pub async fn start(self) -> Result<RunningApp> {
        let App {
            config,
            engine,
            ingest_stats,
            store,
            next_seq,
            last_commit,
            group,
        } = self;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (handle, commands) = engine.handle();
        let (batch_tx, batch_rx) = mpsc::channel(4);
        let stop_ingest = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let consumed: BTreeMap<(String, i32), i64> = engine
            .consumed()
            .iter()
            .filter_map(|(k, v)| Some((parse_offset_key(k)?, *v)))
            .collect();
        let (committer, ingest_thread) = start_ingest(
            &config,
            &ingest_stats,
            &consumed,
            batch_tx,
            &stop_ingest,
            &mut tasks,
        )
        .await?;
        let archive = Archive::start(
            store.clone(),
            config.archive.clone(),
            next_seq,
            last_commit,
            committer,
            group,
        )?;
        let sink = archive.sink(&config.archive);
        let archive_stats = archive.stats.clone();
        let engine_task = tokio::spawn(engine.run(
            batch_rx,
            commands,
            Some(Box::new(sink)),
            shutdown_rx.clone(),
        ));
        let state = Arc::new(flight::FlightState {
            engine: handle.clone(),
            ingest: ingest_stats.clone(),
            subscriber_buffer: config.subscriber_buffer,
            subscribers_dropped: Default::default(),
            adhoc: flight::adhoc::AdhocLimits::default(),
            archive: Some(Arc::new(if config.shared_archive {
                ArchiveCatalog::shared(Store::open(&config.data_dir)?)?
            } else {
                ArchiveCatalog::written_here(store)?
            })),
            archive_stats: Some(archive_stats.clone()),
            started: std::time::Instant::now(),
            members: match (&config.members_dir, &config.kafka) {
                (Some(dir), Some(k)) => Some(Arc::new(flight::members::Members::new(
                    dir,
                    &k.topic,
                    &k.group_id,
                    ingest_stats.clone(),
                ))),
                _ => None,
            },
        });
        let (flight_addr, flight_task) = flight::serve(
            config.flight_addr,
            state.clone(),
            config.token.clone(),
            config.tls.clone(),
            shutdown_rx.clone(),
        )
        .await?;
        tasks.push(flight_task);
        if let Some(members) = &state.members {
            let scheme = if config.tls.is_some() {
                "grpc+tls"
            } else {
                "grpc"
            };
            members.set_location(
                config
                    .advertise_addr
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{flight_addr}")),
            );
            tasks.push(members.clone().spawn(shutdown_rx.clone()));
        }
        let http_addr = match config.http_addr {
            Some(addr) => {
                let (addr, task) = serve_dashboard(addr, &config, state, &shutdown_rx).await?;
                tasks.push(task);
                Some(addr)
            }
            None => None,
        };
        Ok(RunningApp {
            flight_addr,
            http_addr,
            engine: handle,
            archive_stats,
            shutdown,
            stop_ingest,
            engine_task: Some(engine_task),
            tasks,
            ingest_thread,
            archive: Some(archive),
        })
    }

    /// Runs until Ctrl-C or SIGTERM, then stops cleanly (a last checkpoint included).
    pub async fn run_until_stopped(self) -> Result<()> {
        let running = self.start().await?;
        tracing::info!(addr = %running.flight_addr, "Pitwall is up");
        match running.http_addr {
            Some(a) => eprintln!("dashboard: http://{a}/"),
            None => eprintln!("dashboard: off"),
        }
        wait_for_signal().await;
        tracing::info!("stopping");
        running.stop().await;
        Ok(())
    }
}

/// A name for this run of the server, different at every start (dashboard streams' epoch).
fn epoch() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}-{:x}", nanos, std::process::id())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

impl RunningApp {
    /// Stops ingest, lets the engine take a last checkpoint, waits for the archive to write it.
    pub async fn stop(mut self) {
        self.stop_ingest.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        if let Some(mut t) = self.engine_task.take()
            && tokio::time::timeout(Duration::from_secs(10), &mut t)
                .await
                .is_err()
        {
            t.abort();
        }
        if let Some(a) = self.archive.take() {
            let _ = tokio::task::spawn_blocking(move || a.finish()).await;
        }
        for mut t in self.tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
                let _ = t.await;
            }
        }
        if let Some(t) = self.ingest_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Starts the input: the UDP port and/or the Kafka consumer thread (resuming past the
/// checkpoint's offsets), or else the bundled race replayed in-process (tasks added to `tasks`). Returns the Kafka offset
/// committer and consumer thread, when there is a consumer.
async fn start_ingest(
    config: &Config,
    stats: &Arc<IngestStats>,
    consumed: &BTreeMap<(String, i32), i64>,
    batch_tx: mpsc::Sender<ingest::MicroBatch>,
    stop: &Arc<AtomicBool>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Result<(
    Option<ingest::kafka::Committer>,
    Option<std::thread::JoinHandle<()>>,
)> {
    if let Some(addr) = config.udp {
        let socket = ingest::udp::bind(addr).await?;
        let (tick, stats, tx) = (config.engine.tick, stats.clone(), batch_tx.clone());
        let start = consumed
            .get(&(ingest::udp::TOPIC.to_string(), 0))
            .copied()
            .unwrap_or(0);
        tasks.push(tokio::spawn(async move {
            if let Err(e) = ingest::udp::run(socket, start, tick, 16 * 1024, stats, tx).await {
                tracing::error!(error = %e, "UDP source stopped");
            }
        }));
    }
    if let Some(kafka) = &config.kafka {
        let skip: BTreeMap<i32, i64> = consumed
            .iter()
            .filter(|((t, _), _)| *t == kafka.topic)
            .map(|((_, p), o)| (*p, *o))
            .collect();
        tracing::debug!(?skip, "resuming past the checkpoint's offsets");
        let decoder = Decoder::new(config.decode.clone())?;
        let source = ingest::kafka::spawn(
            kafka.clone(),
            decoder,
            stats.clone(),
            batch_tx,
            stop.clone(),
            skip,
        )?;
        return Ok((Some(source.committer), Some(source.thread)));
    }
    if config.udp.is_some() {
        return Ok((None, None));
    }
    let session = ingest::embedded::bundled_session()?;
    let cfg = ingest::embedded::EmbeddedConfig {
        speed: config.embedded_speed,
        looping: config.embedded_loop,
        tick: config.engine.tick,
    };
    let start = consumed
        .get(&(ingest::embedded::TOPIC.to_string(), 0))
        .copied()
        .unwrap_or(0);
    let stats = stats.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = ingest::embedded::run(session, cfg, stats, batch_tx, start).await {
            tracing::error!(error = %e, "embedded replay stopped");
        }
    }));
    Ok((None, None))
}

/// The dashboard and `/metrics` on `addr`, over the same state as the Flight endpoint.
async fn serve_dashboard(
    addr: SocketAddr,
    config: &Config,
    flight: Arc<flight::FlightState>,
    shutdown: &watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let web = Arc::new(web::WebState {
        flight,
        token: config.token.clone().map(Into::into),
        epoch: epoch(),
        streams: Default::default(),
        max_streams: config.max_dashboards,
        query_subscriptions: Default::default(),
        dropped: Default::default(),
        stream_buffer: 32,
        shutdown: shutdown.clone(),
    });
    web::serve(addr, web, shutdown.clone()).await
}

/// Logs go to stderr (stdout stays free for data), colored only on a terminal, filtered by
/// `RUST_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Allocator settings for a long-running server. glibc raises its mmap threshold as large
/// blocks are freed, after which Arrow's buffers (micro-batches, archive chunks) come from
/// the heap and leave it fragmented: at 200K rows/s RSS settled near 370 MB for ~100 MB in
/// use. A fixed 256 KB threshold gives large buffers back to the OS when freed (measured:
/// 225 MB, same CPU). No-op on other allocators.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers and only sets a glibc tunable; glibc serialises it
    // with its own allocator lock, so calling it while other threads allocate is sound.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}
