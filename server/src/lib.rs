//! Pitwall server: live telemetry in, continuous SQL results out.
//!
//! Telemetry enters from Kafka ([`ingest::kafka`], or the in-process replay of the bundled
//! session, [`ingest::embedded`]) and is gathered into micro-batches that are decoded straight
//! into Arrow record batches ([`ingest::decode`]); messages that cannot be decoded go to the
//! dead-letter sink. The [`engine`] moves the event-time watermark and runs every continuous
//! query, written in plain SQL and compiled by DataFusion into stages that keep only open
//! windows, over each micro-batch; what a query emits goes to its result stream. Result
//! streams are served live over Arrow Flight, with query control and Flight SQL on the same
//! port ([`flight`]).

pub mod config;
pub mod engine;
pub mod error;
pub mod flight;
pub mod ingest;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use crate::config::{Config, ServerArgs};
use crate::engine::{Engine, EngineHandle, QueryDef};
pub use crate::error::{Error, Result};
use crate::ingest::IngestStats;
use crate::ingest::dead_letter::DeadLetterSink;
use crate::ingest::decode::Decoder;

/// The default continuous queries, used when no queries directory is configured.
pub const BUILTIN_QUERIES: &[(&str, &str)] = &[
    ("lap_stats", include_str!("../../queries/lap_stats.sql")),
    ("lap_anomaly", include_str!("../../queries/lap_anomaly.sql")),
    ("over_rev", include_str!("../../queries/over_rev.sql")),
    ("lock_up", include_str!("../../queries/lock_up.sql")),
    ("speed_1s", include_str!("../../queries/speed_1s.sql")),
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

/// A server, built and ready to run.
pub struct App {
    config: Config,
    engine: Engine,
    ingest_stats: Arc<IngestStats>,
}

/// A server running in the background (tests start one in-process).
pub struct RunningApp {
    pub flight_addr: SocketAddr,
    pub engine: EngineHandle,
    pub ingest_stats: Arc<IngestStats>,
    shutdown: watch::Sender<bool>,
    stop_ingest: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    ingest_thread: Option<std::thread::JoinHandle<()>>,
}

impl App {
    /// Compiles the initial queries; a query that is refused is logged and left out.
    pub async fn build(config: Config) -> Result<Self> {
        let mut engine = Engine::new(config.engine.clone())?;
        let mut defs = initial_queries(config.queries_dir.as_deref())?;
        // A query may read another: submit in passes until nothing more can start.
        let mut last_err = Vec::new();
        while !defs.is_empty() {
            let before = defs.len();
            let mut waiting = Vec::new();
            last_err.clear();
            for def in defs {
                match engine.submit(def.clone()).await {
                    Ok(_) => {}
                    Err(e) => {
                        last_err.push((def.name.clone(), e.to_string()));
                        waiting.push(def);
                    }
                }
            }
            defs = waiting;
            if defs.len() == before {
                break;
            }
        }
        for (name, err) in &last_err {
            tracing::error!(query = %name, error = %err, "query refused; the others run");
        }
        Ok(Self {
            config,
            engine,
            ingest_stats: Arc::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Starts ingest, the engine and the endpoint in the background.
    pub async fn start(self) -> Result<RunningApp> {
        let App {
            config,
            engine,
            ingest_stats,
        } = self;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (handle, commands) = engine.handle();
        let (batch_tx, batch_rx) = mpsc::channel(4);
        let stop_ingest = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        let mut ingest_thread = None;
        let data_dir = config.data_dir.as_deref().map(Path::new);
        match &config.kafka {
            Some(kafka) => {
                let decoder = Decoder::new(config.decode.clone())?;
                let dead_letters = DeadLetterSink::new(data_dir, std::time::Duration::from_secs(5));
                let source = ingest::kafka::spawn(
                    kafka.clone(),
                    decoder,
                    dead_letters,
                    ingest_stats.clone(),
                    batch_tx,
                    stop_ingest.clone(),
                )?;
                ingest_thread = Some(source.thread);
                let committer = source.committer;
                tasks.push(tokio::spawn(engine.run(
                    batch_rx,
                    commands,
                    Some(Box::new(CommitAfterStep(committer))),
                    shutdown_rx.clone(),
                )));
            }
            None => {
                let session = ingest::embedded::bundled_session()?;
                let cfg = ingest::embedded::EmbeddedConfig {
                    speed: config.embedded_speed,
                    looping: config.embedded_loop,
                    tick: config.engine.tick,
                };
                let stats = ingest_stats.clone();
                tasks.push(tokio::spawn(async move {
                    if let Err(e) = ingest::embedded::run(session, cfg, stats, batch_tx).await {
                        tracing::error!(error = %e, "embedded replay stopped");
                    }
                }));
                tasks.push(tokio::spawn(engine.run(
                    batch_rx,
                    commands,
                    None,
                    shutdown_rx.clone(),
                )));
            }
        }
        let state = Arc::new(flight::FlightState {
            engine: handle.clone(),
            ingest: ingest_stats.clone(),
            subscriber_buffer: config.subscriber_buffer,
            subscribers_dropped: Default::default(),
            adhoc: flight::adhoc::AdhocLimits::default(),
            started: std::time::Instant::now(),
        });
        let (flight_addr, flight_task) = flight::serve(
            config.flight_addr,
            state,
            config.token.clone(),
            config.tls.clone(),
            shutdown_rx.clone(),
        )
        .await?;
        tasks.push(flight_task);
        Ok(RunningApp {
            flight_addr,
            engine: handle,
            ingest_stats,
            shutdown,
            stop_ingest,
            tasks,
            ingest_thread,
        })
    }

    /// Runs until Ctrl-C.
    pub async fn run_until_stopped(self) -> Result<()> {
        let running = self.start().await?;
        tracing::info!(addr = %running.flight_addr, "Pitwall is up");
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("stopping");
        running.stop().await;
        Ok(())
    }
}

impl RunningApp {
    pub async fn stop(mut self) {
        self.stop_ingest.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        for mut t in self.tasks.drain(..) {
            // The engine and the endpoint end on the shutdown signal; anything else is aborted.
            if tokio::time::timeout(std::time::Duration::from_secs(5), &mut t)
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

/// Without an archive, a micro-batch is done once the engine has run it: commit its offsets.
struct CommitAfterStep(ingest::kafka::Committer);

impl engine::StepSink for CommitAfterStep {
    fn on_step(
        &mut self,
        batch: Option<&ingest::MicroBatch>,
        _outputs: &engine::StepOutput,
        _wm: Option<i64>,
    ) {
        if let Some(b) = batch {
            self.0.commit(ingest::kafka::next_offsets(b));
        }
    }
}
