//! The engine: continuous SQL queries over the micro-batch stream.
//!
//! Each micro-batch first moves the watermark, then flows through the queries in dependency
//! order: a query reads the stream `telemetry` or the rows another query emitted in the same
//! step. What a query emits is published on its `ResultStream`. The engine runs as one task
//! that owns all query state; control requests (submit, replace, parameters, ...) reach it
//! through an [`EngineHandle`], between micro-batches.

pub(crate) mod compile;
pub(crate) mod definition;
pub(crate) mod functions;
pub(crate) mod guard;
pub(crate) mod handover;
#[cfg(any(test, feature = "testing"))]
pub mod oracle;
pub(crate) mod pipeline;
pub(crate) mod results;
pub(crate) mod snapshot;
pub(crate) mod splice;
pub(crate) mod traces;
pub(crate) mod watermark;
pub(crate) mod windows;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::execution::TaskContext;
use pitwall_proto::schema::{col, telemetry_schema};
use tokio::sync::{mpsc, oneshot};

pub(crate) use self::compile::Compiler;
pub use self::definition::QueryDef;
use self::definition::{literal_text, parse_literal};
use self::pipeline::Pipeline;
pub(crate) use self::results::{ResultBatch, ResultStream};
use self::watermark::StreamWatermarks;
pub use self::watermark::WatermarkConfig;
use crate::error::{Error, Result};
use crate::ingest::MicroBatch;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub watermark: WatermarkConfig,
    /// A car's open lap closes after this much event time without samples from it.
    pub lap_gap_ms: i64,
    /// Rows each query keeps for subscribers who start from the buffer.
    pub result_buffer_rows: usize,
    /// Bytes (Arrow memory) each query keeps for subscribers who start from the buffer.
    pub result_buffer_bytes: usize,
    /// Batches a subscriber may fall behind before it is dropped.
    pub result_channel_batches: usize,
    /// How often the watermark is re-evaluated when no data arrives.
    pub tick: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            watermark: WatermarkConfig::default(),
            lap_gap_ms: 10_000,
            result_buffer_rows: 100_000,
            result_buffer_bytes: 16 << 20,
            result_channel_batches: 1024,
            tick: Duration::from_millis(50),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryStatus {
    Running,
    Paused,
    Failed,
}

/// What clients see of a query.
#[derive(Debug, Clone)]
pub struct QueryInfo {
    pub name: String,
    pub sql: String,
    pub status: QueryStatus,
    pub schema: SchemaRef,
    pub rows_emitted: u64,
    pub batches_emitted: u64,
    pub last_error: Option<String>,
    pub params: Vec<(String, String)>,
    /// The streams it reads joined by ", " (`telemetry`, or queries' names).
    pub input: String,
    /// The streams it reads, each once: one, or several for a `UNION ALL`.
    pub inputs: Vec<String>,
    pub kind: String,
    pub late_rows_dropped: u64,
    pub open_windows: u64,
    /// Rows held as window state (partial aggregates, rows waiting for the watermark).
    pub state_rows: u64,
    /// Rows of window functions not emitted yet (held for the watermark or their next rows).
    pub pending_rows: u64,
    pub subscribers: usize,
    pub emit_latency_ms: LatencySummary,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LatencySummary {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Engine-wide counters, shared with the stats endpoint.
#[derive(Debug, Default)]
pub(crate) struct EngineStats {
    pub watermark_ms: AtomicI64,
    pub max_event_ms: AtomicI64,
    pub late_rows: AtomicU64,
    pub steps: AtomicU64,
}

struct RunningQuery {
    def: QueryDef,
    pipeline: Pipeline,
    status: QueryStatus,
    results: Arc<ResultStream>,
    rows_emitted: u64,
    batches_emitted: u64,
    last_error: Option<String>,
    latencies_ms: VecDeque<f64>,
}

impl RunningQuery {
    fn info(&self) -> QueryInfo {
        let mut lat: Vec<f64> = self.latencies_ms.iter().copied().collect();
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            if lat.is_empty() {
                0.0
            } else {
                lat[((lat.len() - 1) as f64 * p).round() as usize]
            }
        };
        let inputs: Vec<String> = self
            .pipeline
            .compiled()
            .inputs()
            .into_iter()
            .map(String::from)
            .collect();
        QueryInfo {
            name: self.def.name.clone(),
            sql: self.def.sql.clone(),
            status: self.status,
            schema: self.pipeline.compiled().output_schema.clone(),
            rows_emitted: self.rows_emitted,
            batches_emitted: self.batches_emitted,
            last_error: self.last_error.clone(),
            params: self
                .def
                .params
                .iter()
                .map(|(k, v)| (k.clone(), literal_text(v)))
                .collect(),
            input: inputs.join(", "),
            inputs,
            kind: self.pipeline.compiled().kind.clone(),
            late_rows_dropped: self.pipeline.late_rows(),
            open_windows: self.pipeline.open_windows() as u64,
            state_rows: self.pipeline.state_rows() as u64,
            pending_rows: self.pipeline.pending_rows() as u64,
            subscribers: self.results.subscribers(),
            emit_latency_ms: LatencySummary {
                p50: pct(0.5),
                p99: pct(0.99),
                max: lat.last().copied().unwrap_or(0.0),
            },
        }
    }
}

/// Result streams by query name, readable without going through the engine task.
pub(crate) type ResultRegistry = Arc<RwLock<HashMap<String, Arc<ResultStream>>>>;

/// What one engine step emitted, per query (the archive takes these).
pub(crate) type StepOutput = Vec<(String, Vec<RecordBatch>)>;

pub struct Engine {
    config: EngineConfig,
    compiler: Compiler,
    queries: BTreeMap<String, RunningQuery>,
    order: Vec<String>,
    watermarks: StreamWatermarks,
    stats: Arc<EngineStats>,
    registry: ResultRegistry,
    task_ctx: Arc<TaskContext>,
    /// "topic/partition" -> next offset to read, for the rows this engine has processed.
    consumed: BTreeMap<String, i64>,
    thinner: traces::Thinner,
    /// Every car's telemetry thinned to 20 Hz, for the dashboard's traces and track map.
    traces: Arc<ResultStream>,
    /// The query files the server started from (name -> SQL), kept in every checkpoint.
    query_files: BTreeMap<String, String>,
    /// Car (driver) -> the (topic, partition) its rows come from (see [`handover`]).
    cars: HashMap<String, (String, i32)>,
    /// The archive shared with the other servers of a group (see [`handover`]).
    group: Option<Arc<dyn handover::GroupArchive>>,
    /// When the partitions' event time was last exchanged with the group.
    clock_at: Option<Instant>,
    /// "topic/partition" -> its epoch in a shared archive (see [`handover`]).
    epochs: BTreeMap<String, u64>,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Self> {
        let compiler = Compiler::new(telemetry_schema(), config.lap_gap_ms)?;
        let task_ctx = compiler.state().task_ctx();
        let thinner = traces::Thinner::new();
        let traces = Arc::new(ResultStream::new(
            thinner.schema(),
            config.result_buffer_rows,
            config.result_buffer_bytes,
            config.result_channel_batches,
        ));
        Ok(Self {
            thinner,
            traces,
            watermarks: StreamWatermarks::new(config.watermark),
            config,
            compiler,
            queries: BTreeMap::new(),
            order: Vec::new(),
            stats: Arc::default(),
            registry: Arc::default(),
            task_ctx,
            consumed: BTreeMap::new(),
            query_files: BTreeMap::new(),
            cars: HashMap::new(),
            group: None,
            clock_at: None,
            epochs: BTreeMap::new(),
        })
    }

    /// Shares state and event time with the other servers of a group through `archive`.
    pub(crate) fn set_group_archive(&mut self, archive: Arc<dyn handover::GroupArchive>) {
        self.group = Some(archive);
    }

    /// Records the query files the server started from (see `snapshot::resume`).
    pub fn set_query_files(&mut self, files: &[QueryDef]) {
        self.query_files = files
            .iter()
            .map(|f| (f.name.clone(), f.sql.clone()))
            .collect();
    }

    pub fn registry(&self) -> ResultRegistry {
        self.registry.clone()
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermarks.current()
    }

    pub fn list(&self) -> Vec<QueryInfo> {
        self.order
            .iter()
            .filter_map(|n| self.queries.get(n))
            .map(RunningQuery::info)
            .collect()
    }

    pub fn info(&self, name: &str) -> Result<QueryInfo> {
        Ok(self.get(name)?.info())
    }

    fn get(&self, name: &str) -> Result<&RunningQuery> {
        self.queries.get(name).ok_or_else(|| self.not_found(name))
    }

    fn not_found(&self, name: &str) -> Error {
        let names: Vec<&str> = self.order.iter().map(String::as_str).collect();
        Error::NotFound(format!(
            "no query named {name}; running: {}",
            names.join(", ")
        ))
    }

    /// Adds and starts a query.
    pub async fn submit(&mut self, def: QueryDef) -> Result<QueryInfo> {
        if self.queries.contains_key(&def.name) {
            return Err(Error::AlreadyExists(format!(
                "a query named {} already runs: replace it, or drop it first",
                def.name
            )));
        }
        let compiled = self.compiler.compile(&def).await?;
        let schema = compiled.output_schema.clone();
        self.compiler.register_output(&def.name, schema.clone())?;
        let results = Arc::new(ResultStream::new(
            schema,
            self.config.result_buffer_rows,
            self.config.result_buffer_bytes,
            self.config.result_channel_batches,
        ));
        self.registry
            .write()
            .expect("registry lock")
            .insert(def.name.clone(), results.clone());
        let name = def.name.clone();
        self.queries.insert(
            name.clone(),
            RunningQuery {
                def,
                pipeline: Pipeline::new(compiled),
                status: QueryStatus::Running,
                results,
                rows_emitted: 0,
                batches_emitted: 0,
                last_error: None,
                latencies_ms: VecDeque::new(),
            },
        );
        self.reorder()?;
        tracing::info!(query = %name, "query started");
        self.info(&name)
    }

    /// New SQL for a running query: its subscribers stay connected; queries reading it are
    /// recompiled against its new output.
    pub async fn replace(&mut self, name: &str, sql: &str) -> Result<QueryInfo> {
        let current = self.get(name)?;
        let mut def = QueryDef::parse(name, sql)?;
        for (k, v) in &current.def.params {
            def.params.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let compiled = self.compiler.compile(&def).await?;
        let cycle = compiled
            .inputs()
            .into_iter()
            .find(|i| self.reads_transitively(i, name));
        if let Some(input) = cycle {
            return Err(Error::Refused(format!(
                "{name} cannot read {input}: that would be a cycle"
            )));
        }
        let schema = compiled.output_schema.clone();
        let q = self.queries.get_mut(name).expect("checked above");
        q.def = def;
        q.pipeline = Pipeline::new(compiled);
        q.status = QueryStatus::Running;
        q.last_error = None;
        q.results.set_schema(schema.clone());
        self.compiler.register_output(name, schema)?;
        self.reorder()?;
        self.recompile_readers(name).await;
        tracing::info!(query = %name, "query replaced");
        self.info(name)
    }

    /// Whether `input` is `target` or reads it, directly or through other queries.
    fn reads_transitively(&self, input: &str, target: &str) -> bool {
        let mut todo = vec![input];
        let mut seen = HashSet::new();
        while let Some(cur) = todo.pop() {
            if cur == target {
                return true;
            }
            if let (true, Some(q)) = (seen.insert(cur), self.queries.get(cur)) {
                todo.extend(q.pipeline.compiled().inputs());
            }
        }
        false
    }

    /// The queries that read `name`.
    fn readers(&self, name: &str) -> Vec<String> {
        self.order
            .iter()
            .filter(|n| {
                self.queries[*n]
                    .pipeline
                    .compiled()
                    .inputs()
                    .contains(&name)
            })
            .cloned()
            .collect()
    }

    async fn recompile_readers(&mut self, upstream: &str) {
        for reader in self.readers(upstream) {
            let def = self.queries[&reader].def.clone();
            match self.compiler.compile(&def).await {
                Ok(compiled) => {
                    let schema = compiled.output_schema.clone();
                    let q = self.queries.get_mut(&reader).expect("listed");
                    q.pipeline = Pipeline::new(compiled);
                    q.results.set_schema(schema.clone());
                    let _ = self.compiler.register_output(&reader, schema);
                }
                Err(e) => {
                    let q = self.queries.get_mut(&reader).expect("listed");
                    q.status = QueryStatus::Failed;
                    q.last_error = Some(format!("after {upstream} changed: {e}"));
                    tracing::warn!(query = %reader, error = %e, "reader of a replaced query failed to recompile");
                }
            }
        }
    }

    pub fn drop_query(&mut self, name: &str) -> Result<()> {
        self.get(name)?;
        let readers = self.readers(name);
        if !readers.is_empty() {
            return Err(Error::Refused(format!(
                "{} reads {name}: drop it first",
                readers.join(", ")
            )));
        }
        self.queries.remove(name);
        self.registry.write().expect("registry lock").remove(name);
        self.compiler.deregister_output(name)?;
        self.reorder()?;
        tracing::info!(query = %name, "query dropped");
        Ok(())
    }

    pub fn set_status(&mut self, name: &str, paused: bool) -> Result<QueryInfo> {
        let q = self
            .queries
            .get_mut(name)
            .ok_or_else(|| Error::NotFound(format!("no query named {name}")))?;
        if q.status == QueryStatus::Failed && !paused {
            // Resuming a failed query retries it with fresh state.
            q.last_error = None;
        }
        q.status = if paused {
            QueryStatus::Paused
        } else {
            QueryStatus::Running
        };
        self.info(name)
    }

    /// Changes parameters of a running query from the next micro-batch on; its window state
    /// is kept.
    pub async fn set_params(
        &mut self,
        name: &str,
        params: &[(String, String)],
    ) -> Result<QueryInfo> {
        let q = self.get(name)?;
        let mut def = q.def.clone();
        for (k, v) in params {
            let k = k.trim_start_matches('$');
            if !def.params.contains_key(k) {
                let known: Vec<&str> = def.params.keys().map(String::as_str).collect();
                return Err(Error::Refused(format!(
                    "{name} has no parameter ${k}; it has: {}",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                )));
            }
            let value = parse_literal(v).map_err(|e| Error::Refused(format!("{k}: {e}")))?;
            def.params.insert(k.to_string(), value);
        }
        let compiled = self.compiler.compile(&def).await?;
        let q = self.queries.get_mut(name).expect("checked above");
        q.def = def;
        q.pipeline.replace_plan(compiled);
        tracing::info!(query = %name, ?params, "parameters set");
        self.info(name)
    }

    fn reorder(&mut self) -> Result<()> {
        let mut order: Vec<String> = Vec::new();
        let mut remaining: Vec<String> = self.queries.keys().cloned().collect();
        while !remaining.is_empty() {
            let before = remaining.len();
            remaining.retain(|n| {
                let inputs = self.queries[n].pipeline.compiled().inputs();
                if inputs
                    .iter()
                    .all(|i| *i == "telemetry" || order.iter().any(|o| o == i))
                {
                    order.push(n.clone());
                    false
                } else {
                    true
                }
            });
            if remaining.len() == before {
                return Err(Error::Refused(format!(
                    "queries {} read each other in a cycle",
                    remaining.join(", ")
                )));
            }
        }
        self.order = order;
        Ok(())
    }

    /// One step: account for a micro-batch (if any), move the watermark, run every query.
    pub async fn step(&mut self, batch: Option<&MicroBatch>, now: Instant) -> StepOutput {
        let before = self.watermarks.current();
        let mut input: Vec<RecordBatch> = Vec::new();
        if let Some(b) = batch {
            if b.rows.num_rows() > 0 {
                if let (Some(wm), Some(ts)) = (before, b.rows.column_by_name(col::TS)) {
                    let late = ts
                        .as_primitive::<TimestampMillisecondType>()
                        .values()
                        .iter()
                        .filter(|t| **t < wm)
                        .count();
                    self.stats
                        .late_rows
                        .fetch_add(late as u64, Ordering::Relaxed);
                    if late > 0 {
                        tracing::debug!(late, watermark = wm, partitions = ?b.partitions, "late rows");
                    }
                }
                input.push(b.rows.clone());
            }
            match self.thinner.thin(&b.rows) {
                Ok(Some(t)) => {
                    self.traces.publish(t, before);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "traces: a batch could not be thinned"),
            }
            for p in &b.partitions {
                if let Some(ts) = p.max_ts {
                    self.watermarks.observe(&b.topic, p.partition, ts, now);
                }
            }
            self.watermarks.progress(
                &b.topic,
                b.assigned.as_deref(),
                &b.caught_up,
                b.caught_up_confirmed,
                now,
            );
            for p in &b.partitions {
                self.consumed.insert(
                    snapshot::offset_key(&b.topic, p.partition),
                    p.last_offset + 1,
                );
            }
            self.note_cars(&b.topic, &b.partitions);
        }
        self.exchange_clock(now);
        let wm = self.watermarks.advance(now);
        let idle = self.watermarks.input_idle(now);
        if let Some(wm) = wm {
            self.stats.watermark_ms.store(wm, Ordering::Relaxed);
        }
        if let Some(m) = self.watermarks.max_event_time() {
            self.stats.max_event_ms.store(m, Ordering::Relaxed);
        }
        self.stats.steps.fetch_add(1, Ordering::Relaxed);
        let mut emitted: HashMap<String, Vec<RecordBatch>> = HashMap::new();
        let mut outputs = Vec::new();
        for name in &self.order {
            let q = self.queries.get_mut(name).expect("ordered queries exist");
            if q.status != QueryStatus::Running {
                continue;
            }
            let branches = &q.pipeline.compiled().branches;
            let rows: Vec<&[RecordBatch]> = branches
                .iter()
                .map(|b| match b.input.as_str() {
                    "telemetry" => input.as_slice(),
                    source => emitted.get(source).map(Vec::as_slice).unwrap_or_default(),
                })
                .collect();
            match q.pipeline.process(&rows, wm, idle, &self.task_ctx).await {
                Ok(out) => {
                    for b in &out {
                        q.rows_emitted += b.num_rows() as u64;
                        q.batches_emitted += 1;
                        q.results.publish(b.clone(), wm);
                    }
                    if let (Some(b), false) = (batch, out.is_empty()) {
                        q.latencies_ms
                            .push_back(b.ready_at.elapsed().as_secs_f64() * 1000.0);
                        if q.latencies_ms.len() > 1000 {
                            q.latencies_ms.pop_front();
                        }
                    }
                    if !out.is_empty() {
                        outputs.push((name.clone(), out.clone()));
                    }
                    emitted.insert(name.clone(), out);
                }
                Err(e) => {
                    tracing::error!(query = %name, error = %e, "query failed; the others go on");
                    q.status = QueryStatus::Failed;
                    q.last_error = Some(e.to_string());
                }
            }
        }
        outputs
    }
}

/// What a restore found in a checkpoint.
#[derive(Debug, Default, Clone)]
pub(crate) struct RestoreReport {
    pub restored: Vec<String>,
    /// Queries whose SQL or parameters changed since the checkpoint: they start afresh.
    pub changed: Vec<String>,
    /// Queries in the checkpoint that no longer run.
    pub gone: Vec<String>,
}

fn fingerprint(def: &QueryDef) -> String {
    let params: Vec<String> = def
        .params
        .iter()
        .map(|(k, v)| format!("{k}={}", literal_text(v)))
        .collect();
    format!("{}\n--params: {}", def.sql, params.join(","))
}

impl Engine {
    /// The state of every open window, the watermark and the offsets processed so far.
    pub fn snapshot(&self) -> (snapshot::EngineState, snapshot::Batches) {
        let mut batches = snapshot::Batches::default();
        let queries = self
            .order
            .iter()
            .map(|n| {
                let q = &self.queries[n];
                snapshot::QueryState {
                    name: n.clone(),
                    fingerprint: fingerprint(&q.def),
                    late_rows: q.pipeline.late_rows(),
                    stages: q.pipeline.snapshot(&mut batches),
                    sql: Some(q.def.sql.clone()),
                    params: q
                        .def
                        .params
                        .iter()
                        .map(|(k, v)| (k.clone(), literal_text(v)))
                        .collect(),
                    paused: q.status == QueryStatus::Paused,
                }
            })
            .collect();
        let state = snapshot::EngineState {
            watermark: self.watermarks.snapshot(),
            consumed: self.consumed.clone(),
            queries,
            files: Some(self.query_files.clone()),
            cars: self.cars_by_partition(),
            epochs: self.epochs.clone(),
        };
        (state, batches)
    }

    /// Offsets processed so far ("topic/partition" -> next offset).
    pub fn consumed(&self) -> &BTreeMap<String, i64> {
        &self.consumed
    }

    /// Partitions handed to another server (the checkpoint that hands them over is taken):
    /// their offsets leave the next checkpoints (see `ingest::kafka::handover`). With a shared
    /// archive their cars' state goes too: the next owner goes on with it from that checkpoint,
    /// and a window closed here as well would be emitted twice. Without one it stays until the
    /// next assignment says which partitions are kept (see [`handover`]).
    fn forget_partitions(&mut self, topic: &str, partitions: &[i32]) {
        for p in partitions {
            self.consumed.remove(&snapshot::offset_key(topic, *p));
        }
        if self.group.is_some() {
            self.drop_cars(topic, &partitions.iter().copied().collect());
        }
    }

    /// Resumes from a checkpoint: window state of queries whose SQL is unchanged, the
    /// watermark, and the offsets already processed.
    pub(crate) fn restore(
        &mut self,
        state: &snapshot::EngineState,
        batches: &snapshot::Batches,
    ) -> Result<RestoreReport> {
        let mut report = RestoreReport::default();
        for qs in &state.queries {
            let Some(q) = self.queries.get_mut(&qs.name) else {
                report.gone.push(qs.name.clone());
                continue;
            };
            if fingerprint(&q.def) != qs.fingerprint {
                report.changed.push(qs.name.clone());
                continue;
            }
            match q.pipeline.restore(&qs.stages, qs.late_rows, batches) {
                Ok(()) => report.restored.push(qs.name.clone()),
                Err(e) => {
                    tracing::warn!(query = %qs.name, error = %e, "window state not restored; the query starts afresh");
                    report.changed.push(qs.name.clone());
                }
            }
        }
        let legacy_topic = state
            .consumed
            .keys()
            .find_map(|k| snapshot::parse_offset_key(k))
            .map(|(t, _)| t);
        self.watermarks
            .restore(&state.watermark, legacy_topic.as_deref());
        self.consumed = state.consumed.clone();
        self.restore_cars(&state.cars);
        self.epochs = state.epochs.clone();
        Ok(report)
    }
}

/// A request to the engine task.
pub(crate) enum Command {
    List(oneshot::Sender<Vec<QueryInfo>>),
    Show(String, oneshot::Sender<Result<QueryInfo>>),
    Submit(QueryDef, oneshot::Sender<Result<QueryInfo>>),
    Replace(String, String, oneshot::Sender<Result<QueryInfo>>),
    Drop(String, oneshot::Sender<Result<()>>),
    SetStatus(String, bool, oneshot::Sender<Result<QueryInfo>>),
    SetParams(
        String,
        Vec<(String, String)>,
        oneshot::Sender<Result<QueryInfo>>,
    ),
}

/// Cloneable access to the engine task.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    pub(crate) registry: ResultRegistry,
    pub(crate) stats: Arc<EngineStats>,
    /// Every car's telemetry thinned to 20 Hz (`traces`).
    pub(crate) traces: Arc<ResultStream>,
}

impl EngineHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| Error::EngineStopped)?;
        rx.await.map_err(|_| Error::EngineStopped)
    }

    pub async fn list(&self) -> Result<Vec<QueryInfo>> {
        self.ask(Command::List).await
    }
    pub async fn show(&self, name: &str) -> Result<QueryInfo> {
        self.ask(|tx| Command::Show(name.to_string(), tx)).await?
    }
    pub async fn submit(&self, def: QueryDef) -> Result<QueryInfo> {
        self.ask(|tx| Command::Submit(def, tx)).await?
    }
    pub async fn replace(&self, name: &str, sql: &str) -> Result<QueryInfo> {
        self.ask(|tx| Command::Replace(name.to_string(), sql.to_string(), tx))
            .await?
    }
    pub async fn drop_query(&self, name: &str) -> Result<()> {
        self.ask(|tx| Command::Drop(name.to_string(), tx)).await?
    }
    pub async fn set_paused(&self, name: &str, paused: bool) -> Result<QueryInfo> {
        self.ask(|tx| Command::SetStatus(name.to_string(), paused, tx))
            .await?
    }
    pub async fn set_params(&self, name: &str, params: Vec<(String, String)>) -> Result<QueryInfo> {
        self.ask(|tx| Command::SetParams(name.to_string(), params, tx))
            .await?
    }

    pub fn results(&self, name: &str) -> Option<Arc<ResultStream>> {
        self.registry
            .read()
            .expect("registry lock")
            .get(name)
            .cloned()
    }
}

/// Receives each step's input and output, e.g. the archive.
pub(crate) trait StepSink: Send {
    fn on_step(&mut self, engine: &Engine, batch: Option<&MicroBatch>, outputs: &StepOutput);
    /// Called once when the engine stops.
    fn on_shutdown(&mut self, _engine: &Engine) {}
}

impl Engine {
    /// Creates the handle and the channel the task listens on.
    pub(crate) fn handle(&self) -> (EngineHandle, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(64);
        (
            EngineHandle {
                tx,
                registry: self.registry.clone(),
                stats: self.stats.clone(),
                traces: self.traces.clone(),
            },
            rx,
        )
    }

    async fn handle_command(&mut self, cmd: Command) {
        match cmd {
            Command::List(tx) => {
                let _ = tx.send(self.list());
            }
            Command::Show(n, tx) => {
                let _ = tx.send(self.info(&n));
            }
            Command::Submit(def, tx) => {
                let _ = tx.send(self.submit(def).await);
            }
            Command::Replace(n, sql, tx) => {
                let _ = tx.send(self.replace(&n, &sql).await);
            }
            Command::Drop(n, tx) => {
                let _ = tx.send(self.drop_query(&n));
            }
            Command::SetStatus(n, paused, tx) => {
                let _ = tx.send(self.set_status(&n, paused));
            }
            Command::SetParams(n, p, tx) => {
                let _ = tx.send(self.set_params(&n, &p).await);
            }
        }
    }

    /// Runs until `shutdown` fires: micro-batches as they come, a tick when none do, and
    /// control requests in between.
    pub(crate) async fn run(
        mut self,
        mut batches: mpsc::Receiver<MicroBatch>,
        mut commands: mpsc::Receiver<Command>,
        mut sink: Option<Box<dyn StepSink>>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut input_open = true;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                Some(cmd) = commands.recv() => self.handle_command(cmd).await,
                b = batches.recv(), if input_open => match b {
                    Some(b) => {
                        let out = self.step(Some(&b), Instant::now()).await;
                        if let Some(s) = sink.as_mut() {
                            s.on_step(&self, Some(&b), &out);
                        }
                        if let Some(h) = &b.handover {
                            self.forget_partitions(&b.topic, &h.partitions);
                            if let Some(a) = &h.adopt {
                                let resume = self.adopt(&b.topic, a, Instant::now());
                                let _ = a.reply.send(resume);
                            }
                        }
                    }
                    None => {
                        tracing::info!("input ended; windows close as the watermark advances");
                        input_open = false;
                    }
                },
                _ = tick.tick() => {
                    let out = self.step(None, Instant::now()).await;
                    if let Some(s) = sink.as_mut() {
                        s.on_step(&self, None, &out);
                    }
                }
            }
        }
        if let Some(s) = sink.as_mut() {
            s.on_shutdown(&self);
        }
    }
}

#[cfg(test)]
mod tests;
