//! `pitwall bench`: the whole path under load, measured from outside.
//!
//! It starts a `pitwall-server` (the binary next to this one) against a real broker, publishes
//! N virtual cars at R samples per second each (values from the bundled real laps, `Date` set
//! to the produce time), subscribes over Flight to a pass-through query and to `speed_1s`, and
//! measures: the end-to-end latency of each row (produce time in the message, compared at the
//! Flight client), rows/s in and out, how long after the watermark passes a 1-second window's
//! end its row arrives, how long the last windows take to close once input stops, the server's
//! CPU time and peak RSS.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{
    ArrayRef, AsArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
};
use arrow::compute::take_record_batch;
use arrow::datatypes::TimestampMillisecondType;
use arrow_flight::decode::DecodedPayload;
use futures::StreamExt;
use hdrhistogram::Histogram;
use pitwall_proto as pb;
use pitwall_proto::schema::col;
use prost::Message as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use serde::Serialize;

use crate::client::{Client, ServerAddress};
use crate::process::{Usage, free_port, terminate, usage};
use crate::session::Session;
use crate::wire::{Encoded, WireFormat, encode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchFormat {
    /// One JSON object per sample (FastF1 names), as the old producer sent them.
    Json,
    /// One `TelemetryBatch` per car per tick: what a high-rate producer sends.
    ProtobufBatch,
    /// EA F1 25 game packets over UDP to `pitwall-server --udp`, no broker (`--rate` is the
    /// game's send rate; latency is measured on `over_rev`).
    F1Udp,
}

mod udp;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Kafka bootstrap servers (a running broker).
    #[arg(long, env = "PITWALL_BROKERS", default_value = "127.0.0.1:19092")]
    pub brokers: String,
    /// Seconds of measurement (after a warm-up of 5 s).
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Virtual cars.
    #[arg(long, default_value_t = 20)]
    pub cars: usize,
    /// Samples per second per car.
    #[arg(long, default_value_t = 60)]
    pub rate: u64,
    /// Payload encoding (default: json up to 20,000 rows/s, protobuf-batch above).
    #[arg(long, value_enum)]
    pub format: Option<BenchFormat>,
    /// Topic partitions.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Flight subscribers to the pass-through query (the first one measures latency).
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Also connect one subscriber that never reads.
    #[arg(long)]
    pub slow_subscriber: bool,
    /// The server binary (default: pitwall-server next to this program).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Dashboard pages to keep open during the run (each one live stream of what the race
    /// view shows and the traces, read as fast as it comes, as a browser tab does).
    #[arg(long, default_value_t = 0)]
    pub dashboards: usize,
    /// Extra server flag (repeatable), e.g. --server-arg=--linger-ms=2.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.50) as f64,
            p90: h.value_at_quantile(0.90) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            max: h.max() as f64,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ServerEmit {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub cars: usize,
    pub rate_per_car: u64,
    pub target_rows_per_s: u64,
    pub format: String,
    pub duration_s: f64,
    pub rows_produced: u64,
    pub rows_in_per_s: f64,
    pub rows_out_per_s: f64,
    pub sampled_rows_received: u64,
    /// End-to-end latency per row (produce -> Flight client), ms.
    pub latency_ms: Percentiles,
    /// Inside the server: micro-batch decoded -> results published (pass-through query), ms.
    pub server_emit_ms: ServerEmit,
    /// Results published -> received by the Flight client (per batch), ms.
    pub flight_delivery_ms: Percentiles,
    /// A 1-second window's row: arrival minus the moment the watermark passed its end, ms.
    pub window_emit_after_watermark_ms: Percentiles,
    /// After input stops: time until the last 1-second windows arrive, ms.
    pub last_windows_close_ms: Option<f64>,
    pub idle_timeout_ms: u64,
    /// Rows produced but not ingested when measurement ended.
    pub backlog_rows: i64,
    pub server_cpu_percent: f64,
    pub server_peak_rss_mb: f64,
    /// RSS at the end of the run (steady state).
    pub server_rss_end_mb: f64,
    pub subscribers: usize,
    pub slow_subscriber_dropped: Option<bool>,
    pub dashboards: usize,
    /// Bytes the dashboard streams received during the run, all together.
    pub dashboard_bytes: u64,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// Rows of one car's laps (all its samples, in time order), cycled for load.
struct CarSource {
    rows: RecordBatch,
    next: usize,
}

/// Builds one tick's rows: `counts[c]` samples of car `c`, stamped with the produce time.
fn tick_rows(
    cars: &mut [CarSource],
    names: &[String],
    counts: &[usize],
    session: &str,
    start_ms: i64,
    now: i64,
) -> Result<RecordBatch> {
    let mut parts = Vec::new();
    let mut drivers: Vec<&str> = Vec::new();
    for (c, &n) in counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let car = &mut cars[c];
        let len = car.rows.num_rows();
        let idx = UInt32Array::from_iter_values((0..n).map(|i| ((car.next + i) % len) as u32));
        car.next = (car.next + n) % len;
        parts.push(take_record_batch(&car.rows, &idx)?);
        drivers.extend(std::iter::repeat_n(names[c].as_str(), n));
    }
    let schema = pitwall_proto::schema::telemetry_schema();
    let batch = arrow::compute::concat_batches(&schema, &parts)?;
    let n = batch.num_rows();
    let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
    columns[schema.index_of(col::SESSION)?] = Arc::new(StringArray::from(vec![session; n]));
    columns[schema.index_of(col::DRIVER)?] = Arc::new(StringArray::from(drivers));
    columns[schema.index_of(col::TS)?] =
        Arc::new(TimestampMillisecondArray::from(vec![now; n]).with_timezone("UTC"));
    columns[schema.index_of(col::SESSION_TIME)?] =
        Arc::new(arrow::array::Float64Array::from(vec![
            (now - start_ms)
                as f64
                / 1000.0;
            n
        ]));
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// `cars` virtual cars from the bundled race's drivers (repeated, each copy starting at another
/// point of the race), and their names (`VER`, then `VER-2`, ...).
fn bench_cars(cars: usize) -> Result<(Vec<CarSource>, Vec<String>)> {
    let base = Session::bundled()?;
    let drivers = base.drivers();
    let driver_col = base
        .rows
        .column_by_name(col::DRIVER)
        .expect("driver")
        .as_string::<i32>()
        .clone();
    let mut sources = Vec::with_capacity(cars);
    let mut names = Vec::with_capacity(cars);
    for c in 0..cars {
        let d = &drivers[c % drivers.len()];
        let keep: arrow::array::BooleanArray = driver_col
            .iter()
            .map(|v| Some(v == Some(d.as_str())))
            .collect();
        let rows = arrow::compute::filter_record_batch(&base.rows, &keep)?;
        let next = (c / drivers.len()) * 997 % rows.num_rows();
        sources.push(CarSource { rows, next });
        names.push(if c < drivers.len() {
            d.clone()
        } else {
            format!("{d}-{}", c / drivers.len() + 1)
        });
    }
    Ok((sources, names))
}

/// Publishes one message, waiting while librdkafka's queue is full.
fn send(
    producer: &ThreadedProducer<rdkafka::producer::DefaultProducerContext>,
    topic: &str,
    headers: &OwnedHeaders,
    key: &str,
    payload: &[u8],
) -> Result<()> {
    let rec = BaseRecord::to(topic)
        .key(key)
        .payload(payload)
        .headers(headers.clone());
    crate::replay::send_waiting(producer, rec)
}

/// Publishes until `stop`, counting rows in `produced`.
fn produce(
    args: &BenchArgs,
    format: BenchFormat,
    topic: &str,
    session: &str,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
) -> Result<()> {
    let (mut cars, names) = bench_cars(args.cars)?;
    let producer: ThreadedProducer<rdkafka::producer::DefaultProducerContext> =
        crate::replay::client_config(&args.brokers, &[])?
            .set("linger.ms", "2")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "2000000")
            .set("queue.buffering.max.kbytes", "2097151")
            .create()
            .context("Kafka producer")?;
    let header = match format {
        BenchFormat::Json => "json",
        BenchFormat::ProtobufBatch | BenchFormat::F1Udp => "protobuf-batch",
    };
    let headers = OwnedHeaders::new().insert(Header {
        key: pitwall_proto::FORMAT_HEADER,
        value: Some(header),
    });
    let send = |key: &str, payload: &[u8]| send(&producer, topic, &headers, key, payload);
    let start = Instant::now();
    let start_ms = now_ms();
    let per_car = args.rate as f64;
    let mut sent_per_car = vec![0u64; args.cars];
    let mut encoded = Encoded::default();
    let tick = Duration::from_millis(5);
    while !stop.load(Ordering::Relaxed) {
        let due = (start.elapsed().as_secs_f64() * per_car) as u64;
        let counts: Vec<usize> = sent_per_car
            .iter()
            .map(|s| due.saturating_sub(*s) as usize)
            .collect();
        let total: usize = counts.iter().sum();
        if total > 0 {
            let now = now_ms();
            let rows = tick_rows(&mut cars, &names, &counts, session, start_ms, now)?;
            match format {
                BenchFormat::Json => {
                    encode(&rows, WireFormat::Json, &mut encoded)?;
                    let d = rows
                        .column_by_name(col::DRIVER)
                        .expect("driver")
                        .as_string::<i32>()
                        .clone();
                    for i in 0..encoded.len() {
                        send(d.value(i), encoded.payload(i))?;
                    }
                }
                BenchFormat::ProtobufBatch | BenchFormat::F1Udp => {
                    encode(&rows, WireFormat::Protobuf, &mut encoded)?;
                    let mut at = 0;
                    for (c, &n) in counts.iter().enumerate() {
                        if n == 0 {
                            continue;
                        }
                        let samples = (at..at + n)
                            .map(|i| pb::TelemetrySample::decode(encoded.payload(i)))
                            .collect::<std::result::Result<Vec<_>, _>>()?;
                        at += n;
                        send(&names[c], &pb::TelemetryBatch { samples }.encode_to_vec())?;
                    }
                }
            }
            for (s, c) in sent_per_car.iter_mut().zip(&counts) {
                *s += *c as u64;
            }
            produced.fetch_add(total as u64, Ordering::Relaxed);
        }
        std::thread::sleep(tick);
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

pub async fn run(args: &BenchArgs) -> Result<BenchReport> {
    let target = args.cars as u64 * args.rate;
    let format = args.format.unwrap_or(if target <= 20_000 {
        BenchFormat::Json
    } else {
        BenchFormat::ProtobufBatch
    });
    let suffix = format!("{}-{}", std::process::id(), now_ms() % 1_000_000);
    let topic = format!("bench-{suffix}");
    let udp = format == BenchFormat::F1Udp;
    let latency_query = latency_query(format);
    let server = if udp {
        BenchServer::start(args, Source::Udp(free_port()?), &suffix)?
    } else {
        let config = crate::replay::client_config(&args.brokers, &[])?;
        crate::replay::ensure_topic(&config, &topic, args.partitions).await?;
        BenchServer::start(args, Source::Kafka(&topic), &suffix)?
    };
    let mut control = server.connect().await?;
    if !udp {
        wait_assigned(&mut control, args.partitions).await?;
        submit_latency_query(&mut control, target).await?;
    }
    let flags = Flags::default();
    let mut subs = Vec::new();
    for i in 0..args.subscribers.max(1) {
        subs.push(latency_subscriber(&server.addr, latency_query, i == 0, &flags).await?);
    }
    let windows = window_subscriber(&server.addr, &flags).await?;
    let slow = if args.slow_subscriber {
        let mut c = Client::connect(&server.addr).await?;
        let s = c.subscribe(&ticket(latency_query)).await?;
        Some((c, s))
    } else {
        None
    };
    let m = measure(
        args,
        format,
        &topic,
        &format!("bench-{suffix}"),
        &server,
        &mut control,
        &flags,
    )
    .await?;
    let slow_dropped = slow.as_ref().map(|_| m.subscribers_dropped > 0);
    drop(server);
    let mut latency = None;
    for s in subs {
        latency = latency.or(s.await?);
    }
    let (window_h, last_arrival) = windows.await?;
    drop(slow);
    Ok(report(
        args,
        format,
        &m,
        latency,
        window_h,
        last_arrival,
        slow_dropped,
    ))
}

/// The server under test: its process, addresses and data directory (removed when dropped,
/// after the process is stopped).
struct BenchServer {
    child: Child,
    addr: ServerAddress,
    http_port: u16,
    data: PathBuf,
    /// The server's game port, when it is fed over UDP.
    udp_port: Option<u16>,
}

/// Where the server under test reads: this run's topic, or a UDP port.
enum Source<'a> {
    Kafka(&'a str),
    Udp(u16),
}

/// Windows close this long after their last input (`--idle-timeout-ms`).
const IDLE_TIMEOUT_MS: u64 = 1000;

impl BenchServer {
    fn start(args: &BenchArgs, source: Source<'_>, suffix: &str) -> Result<Self> {
        let bin = match &args.server_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("pitwall-server"),
        };
        if !bin.exists() {
            bail!(
                "{} not found: build it (cargo build --release) or pass --server-bin",
                bin.display()
            );
        }
        let data = std::env::temp_dir().join(format!("pitwall-bench-{suffix}"));
        let (port, http_port) = (free_port()?, free_port()?);
        let mut cmd = Command::new(&bin);
        let udp_port = match source {
            Source::Kafka(topic) => {
                cmd.args(["--brokers", &args.brokers, "--topic", topic])
                    .args(["--group", &format!("bench-{suffix}")])
                    // The topic is this run's own: from its start, so that every row produced
                    // is read and what is left unread at the end is backlog.
                    .args(["--start", "earliest"]);
                None
            }
            Source::Udp(p) => {
                cmd.args(["--udp", &format!("127.0.0.1:{p}")]);
                Some(p)
            }
        };
        cmd.args(["--flight-addr", &format!("127.0.0.1:{port}")])
            .args(["--http-addr", &format!("127.0.0.1:{http_port}")])
            .args(["--data-dir", data.to_str().unwrap_or("pitwall-bench")])
            .args(["--idle-timeout-ms", &IDLE_TIMEOUT_MS.to_string()])
            .args(&args.server_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Self {
            child,
            addr: ServerAddress {
                url: format!("http://127.0.0.1:{port}"),
                token: None,
                tls_ca: None,
            },
            http_port,
            data,
            udp_port,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A control connection, once the server answers (30 s at most).
    async fn connect(&self) -> Result<Client> {
        let started = Instant::now();
        loop {
            match Client::connect(&self.addr).await {
                Ok(c) => return Ok(c),
                Err(_) if started.elapsed() < Duration::from_secs(30) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(e.context("the server did not come up")),
            }
        }
    }
}

impl Drop for BenchServer {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(10));
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The pass-through query whose rows the latency is measured on; sampled so that the
/// client's own cost stays small at high rates.
async fn submit_latency_query(control: &mut Client, target: u64) -> Result<()> {
    let sample = target.div_ceil(20_000).max(1);
    let sql = if sample > 1 {
        format!("SELECT driver, ts FROM telemetry WHERE CAST(ts AS BIGINT) % {sample} = 0")
    } else {
        "SELECT driver, ts FROM telemetry".to_string()
    };
    let _: pb::QueryInfo = control
        .action(
            pb::actions::SUBMIT,
            &pb::SubmitQuery {
                name: "bench_latency".into(),
                sql,
            },
        )
        .await?;
    Ok(())
}

fn ticket(query: &str) -> pb::SubscribeTicket {
    pb::SubscribeTicket {
        query: query.into(),
        from_buffer_start: false,
        driver: String::new(),
    }
}

/// What the subscribers are told of the run's phase.
#[derive(Default, Clone)]
struct Flags {
    /// Set once warm-up is over.
    measuring: Arc<AtomicBool>,
    /// When input stopped (ms since the epoch; 0 while it runs).
    stopped_at: Arc<AtomicU64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000, 3).expect("histogram")
}

/// Latency (end to end, and the Flight delivery share) and rows received by one subscriber of
/// the pass-through query, while measuring. Only the `measured` subscriber records; the others
/// are load.
type Latency = (Histogram<u64>, Histogram<u64>, u64);

async fn latency_subscriber(
    addr: &ServerAddress,
    query: &str,
    measured: bool,
    flags: &Flags,
) -> Result<tokio::task::JoinHandle<Option<Latency>>> {
    let mut c = Client::connect(addr).await?;
    let mut stream = c.subscribe(&ticket(query)).await?.into_inner();
    let measuring = flags.measuring.clone();
    Ok(tokio::spawn(async move {
        let _keep = c;
        let (mut h, mut flight_h, mut n) = (histogram(), histogram(), 0u64);
        while let Some(item) = stream.next().await {
            let Ok(item) = item else { break };
            let meta = item.app_metadata();
            let DecodedPayload::RecordBatch(b) = item.payload else {
                continue;
            };
            if !measured || !measuring.load(Ordering::Relaxed) {
                continue;
            }
            let now = now_ms();
            if let Some(e) = serde_json::from_slice::<serde_json::Value>(&meta)
                .ok()
                .and_then(|m| m["emitted_at_ms"].as_i64())
            {
                let _ = flight_h.record((now - e).max(0) as u64);
            }
            let ts = b
                .column_by_name("ts")
                .expect("ts")
                .as_primitive::<TimestampMillisecondType>();
            for t in ts.values() {
                let _ = h.record((now - t).max(1) as u64);
            }
            n += b.num_rows() as u64;
        }
        measured.then_some((h, flight_h, n))
    }))
}

/// `speed_1s`'s rows: how long after the watermark passed a window's end its row arrived, and
/// when the last windows arrived once input stopped.
async fn window_subscriber(
    addr: &ServerAddress,
    flags: &Flags,
) -> Result<tokio::task::JoinHandle<(Histogram<u64>, i64)>> {
    let mut c = Client::connect(addr).await?;
    let mut stream = c.subscribe(&ticket("speed_1s")).await?.into_inner();
    let flags = flags.clone();
    Ok(tokio::spawn(async move {
        let _keep = c;
        let mut h = histogram();
        let (mut last_arrival, mut last_end) = (0i64, 0i64);
        while let Some(item) = stream.next().await {
            let Ok(item) = item else { break };
            let DecodedPayload::RecordBatch(b) = item.payload else {
                continue;
            };
            let now = now_ms();
            let ends = b.column_by_name("window_end").expect("window_end");
            let ends =
                arrow::compute::cast(ends, &arrow::datatypes::DataType::Int64).expect("cast");
            let ends = ends.as_primitive::<arrow::datatypes::Int64Type>();
            let stopped = flags.stopped_at.load(Ordering::Relaxed) > 0;
            if flags.measuring.load(Ordering::Relaxed) && !stopped {
                for e in ends.values() {
                    // The watermark passes a window's end one lateness (1 s) after it.
                    let _ = h.record((now - (e + 1_000)).max(1) as u64);
                }
            }
            if let Some(max_end) = ends.values().iter().max()
                && *max_end >= last_end
            {
                last_end = *max_end;
                last_arrival = now;
            }
            if stopped && !ends.is_empty() {
                last_arrival = now;
            }
        }
        (h, last_arrival)
    }))
}

/// What the server reported and used over the measured interval.
struct Measured {
    elapsed: f64,
    stats_start: pb::ServerStats,
    stats_end: pb::ServerStats,
    produced: u64,
    produced_total: u64,
    cpu_secs: f64,
    end: Usage,
    stop_ms: i64,
    dashboard_bytes: u64,
    /// Subscribers the server dropped, counted after input stopped.
    subscribers_dropped: u64,
}

/// Waits until the server's consumer owns all `partitions`: production starts after the group
/// join, so that neither the warm-up nor the measurement includes the server catching up on
/// what was produced while it joined.
async fn wait_assigned(control: &mut Client, partitions: i32) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s: pb::ServerStats = control.action(pb::actions::STATS, &pb::GetStats {}).await?;
        if s.partitions.len() >= partitions.max(1) as usize {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the server owns {} of {partitions} partitions after 60 s",
                s.partitions.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Produces for a 5 s warm-up and then `--duration` seconds with the dashboards open, stops
/// input and waits for the last windows to close on idleness.
async fn measure(
    args: &BenchArgs,
    format: BenchFormat,
    topic: &str,
    session: &str,
    server: &BenchServer,
    control: &mut Client,
    flags: &Flags,
) -> Result<Measured> {
    let dashboard_bytes = Arc::new(AtomicU64::new(0));
    let dashboards: Vec<_> = (0..args.dashboards)
        .map(|_| tokio::spawn(dashboard_page(server.http_port, dashboard_bytes.clone())))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producer = {
        let (a, t, s, st, p) = (
            args.clone(),
            topic.to_string(),
            session.to_string(),
            stop.clone(),
            produced.clone(),
        );
        let udp_port = server.udp_port;
        std::thread::spawn(move || match udp_port {
            Some(port) => udp::produce(&a, port, st, p),
            None => produce(&a, format, &t, &s, st, p),
        })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats_start: pb::ServerStats = control.action(pb::actions::STATS, &pb::GetStats {}).await?;
    let cpu0 = usage(server.pid())?.cpu_secs;
    let produced0 = produced.load(Ordering::Relaxed);
    let dashboard_bytes0 = dashboard_bytes.load(Ordering::Relaxed);
    let t0 = Instant::now();
    flags.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = usage(server.pid())?.cpu_secs;
    let dashboard_bytes = dashboard_bytes.load(Ordering::Relaxed) - dashboard_bytes0;
    dashboards.iter().for_each(|d| d.abort());
    let stats_end: pb::ServerStats = control.action(pb::actions::STATS, &pb::GetStats {}).await?;
    let produced_total = produced.load(Ordering::Relaxed);
    // Stop input; the last windows must close on idleness.
    stop.store(true, Ordering::Relaxed);
    producer
        .join()
        .map_err(|_| anyhow!("producer thread panicked"))??;
    let stop_ms = now_ms();
    flags.stopped_at.store(stop_ms as u64, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(IDLE_TIMEOUT_MS + 3_000)).await;
    let end = usage(server.pid())?;
    // Subscribers dropped are counted at the very end, after the slow reader had every chance.
    let last: pb::ServerStats = control.action(pb::actions::STATS, &pb::GetStats {}).await?;
    Ok(Measured {
        elapsed,
        stats_start,
        stats_end,
        produced: produced_total - produced0,
        produced_total,
        cpu_secs: cpu1 - cpu0,
        end,
        stop_ms,
        dashboard_bytes,
        subscribers_dropped: last.subscribers_dropped,
    })
}

/// The query whose rows the latency is measured on.
fn latency_query(format: BenchFormat) -> &'static str {
    match format {
        BenchFormat::F1Udp => udp::LATENCY_QUERY,
        BenchFormat::Json | BenchFormat::ProtobufBatch => "bench_latency",
    }
}

fn report(
    args: &BenchArgs,
    format: BenchFormat,
    m: &Measured,
    latency: Option<Latency>,
    window_h: Histogram<u64>,
    last_arrival: i64,
    slow_dropped: Option<bool>,
) -> BenchReport {
    let (latency, flight_latency, received) =
        latency.unwrap_or_else(|| (histogram(), histogram(), 0));
    let elapsed = m.elapsed;
    let (s0, s1) = (&m.stats_start, &m.stats_end);
    let out0: u64 = s0.queries.iter().map(|q| q.rows_emitted).sum();
    let out1: u64 = s1.queries.iter().map(|q| q.rows_emitted).sum();
    let emit = s1.queries.iter().find(|q| q.name == latency_query(format));
    BenchReport {
        cars: args.cars,
        rate_per_car: args.rate,
        target_rows_per_s: args.cars as u64 * args.rate,
        format: format!("{format:?}"),
        duration_s: elapsed,
        rows_produced: m.produced,
        rows_in_per_s: (s1.rows_ingested - s0.rows_ingested) as f64 / elapsed,
        rows_out_per_s: (out1 - out0) as f64 / elapsed,
        sampled_rows_received: received,
        latency_ms: Percentiles::of(&latency),
        flight_delivery_ms: Percentiles::of(&flight_latency),
        server_emit_ms: ServerEmit {
            p50: emit.map_or(0.0, |q| q.emit_latency_p50_ms),
            p99: emit.map_or(0.0, |q| q.emit_latency_p99_ms),
            max: emit.map_or(0.0, |q| q.emit_latency_max_ms),
        },
        window_emit_after_watermark_ms: Percentiles::of(&window_h),
        last_windows_close_ms: (last_arrival > m.stop_ms)
            .then(|| (last_arrival - m.stop_ms) as f64),
        idle_timeout_ms: IDLE_TIMEOUT_MS,
        backlog_rows: m.produced_total as i64 - s1.rows_ingested as i64,
        server_cpu_percent: m.cpu_secs / elapsed * 100.0,
        server_peak_rss_mb: m.end.peak_rss as f64 / (1024.0 * 1024.0),
        server_rss_end_mb: m.end.rss as f64 / (1024.0 * 1024.0),
        subscribers: args.subscribers.max(1),
        slow_subscriber_dropped: slow_dropped,
        dashboards: args.dashboards,
        dashboard_bytes: m.dashboard_bytes,
    }
}

/// A dashboard page on the race view: the live stream of what it shows (laps, anomaly scores,
/// over-revs, lock-ups) and the traces, read as it comes (and again after a drop), its bytes
/// counted.
async fn dashboard_page(http_port: u16, bytes: Arc<AtomicU64>) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let uri: hyper::Uri = format!(
        "http://127.0.0.1:{http_port}/api/live?queries=lap_stats,lap_anomaly,over_rev,lock_up"
    )
    .parse()
    .expect("a valid URI");
    loop {
        if let Ok(resp) = client.get(uri.clone()).await {
            let mut body = resp.into_body();
            while let Some(Ok(frame)) = body.frame().await {
                if let Ok(data) = frame.into_data() {
                    bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn print(r: &BenchReport) {
    let mut t = comfy_table::Table::new();
    t.set_header(["measure", "value"]);
    let rows: Vec<(&str, String)> = vec![
        (
            "load",
            format!(
                "{} cars x {} Hz = {} rows/s ({}), {} subscriber(s)",
                r.cars, r.rate_per_car, r.target_rows_per_s, r.format, r.subscribers
            ),
        ),
        ("rows/s in (ingested)", format!("{:.0}", r.rows_in_per_s)),
        (
            "rows/s out (all queries)",
            format!("{:.0}", r.rows_out_per_s),
        ),
        ("backlog at the end", format!("{} rows", r.backlog_rows)),
        (
            "latency p50 / p90 / p99 / max",
            format!(
                "{} / {} / {} / {} ms",
                r.latency_ms.p50, r.latency_ms.p90, r.latency_ms.p99, r.latency_ms.max
            ),
        ),
        (
            "of which in the engine p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                r.server_emit_ms.p50, r.server_emit_ms.p99, r.server_emit_ms.max
            ),
        ),
        (
            "of which Flight delivery p50 / p99 / max",
            format!(
                "{} / {} / {} ms",
                r.flight_delivery_ms.p50, r.flight_delivery_ms.p99, r.flight_delivery_ms.max
            ),
        ),
        (
            "1 s window after watermark p50 / p99 / max",
            format!(
                "{} / {} / {} ms",
                r.window_emit_after_watermark_ms.p50,
                r.window_emit_after_watermark_ms.p99,
                r.window_emit_after_watermark_ms.max
            ),
        ),
        (
            "last windows after input stops",
            r.last_windows_close_ms.map_or("not seen".into(), |v| {
                format!("{v:.0} ms (idle timeout {} ms)", r.idle_timeout_ms)
            }),
        ),
        (
            "server CPU",
            format!("{:.0}% of one core", r.server_cpu_percent),
        ),
        ("server peak RSS", format!("{:.0} MB", r.server_peak_rss_mb)),
        (
            "server RSS at the end",
            format!("{:.0} MB", r.server_rss_end_mb),
        ),
    ];
    for (k, v) in rows {
        t.add_row([k.to_string(), v]);
    }
    if let Some(d) = r.slow_subscriber_dropped {
        t.add_row(["slow subscriber dropped".to_string(), d.to_string()]);
    }
    if r.dashboards > 0 {
        t.add_row([
            "dashboard pages".to_string(),
            format!(
                "{}, {:.0} kB/s each",
                r.dashboards,
                r.dashboard_bytes as f64 / r.duration_s / r.dashboards as f64 / 1000.0
            ),
        ]);
    }
    println!("{t}");
}
