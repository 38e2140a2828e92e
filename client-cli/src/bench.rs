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
use crate::session::Session;
use crate::wire::{Encoded, WireFormat, encode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchFormat {
    /// One JSON object per sample (FastF1 names), as the old producer sent them.
    Json,
    /// One `TelemetryBatch` per car per tick: what a high-rate producer sends.
    ProtobufBatch,
}

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

/// CPU seconds (user + system), peak RSS and current RSS (bytes) of a process, from /proc.
fn proc_usage(pid: u32) -> Result<(f64, u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or(&stat);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((ticks / hz, kb("VmHWM:") * 1024, kb("VmRSS:") * 1024))
}

struct ServerChild(Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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

/// Publishes until `stop`; returns rows produced.
fn produce(
    args: &BenchArgs,
    format: BenchFormat,
    topic: &str,
    session: &str,
    stop: Arc<AtomicBool>,
    produced: Arc<AtomicU64>,
) -> Result<()> {
    let base = Session::bundled()?;
    let drivers = base.drivers();
    let driver_col = base
        .rows
        .column_by_name(col::DRIVER)
        .expect("driver")
        .as_string::<i32>()
        .clone();
    let mut cars: Vec<CarSource> = Vec::with_capacity(args.cars);
    let mut names = Vec::with_capacity(args.cars);
    for c in 0..args.cars {
        let d = &drivers[c % drivers.len()];
        let keep: arrow::array::BooleanArray = driver_col
            .iter()
            .map(|v| Some(v == Some(d.as_str())))
            .collect();
        let rows = arrow::compute::filter_record_batch(&base.rows, &keep)?;
        // Start each copy at a different point of the race.
        let next = (c / drivers.len()) * 997 % rows.num_rows();
        cars.push(CarSource { rows, next });
        names.push(if c < drivers.len() {
            d.clone()
        } else {
            format!("{d}-{}", c / drivers.len() + 1)
        });
    }
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
        BenchFormat::ProtobufBatch => "protobuf-batch",
    };
    let headers = OwnedHeaders::new().insert(Header {
        key: pitwall_proto::FORMAT_HEADER,
        value: Some(header),
    });
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
            let send = |key: &str, payload: &[u8]| -> Result<()> {
                let mut rec = BaseRecord::to(topic)
                    .key(key)
                    .payload(payload)
                    .headers(headers.clone());
                loop {
                    match producer.send(rec) {
                        Ok(()) => return Ok(()),
                        Err((
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull,
                            ),
                            r,
                        )) => {
                            rec = r;
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err((e, _)) => return Err(anyhow!("cannot publish: {e}")),
                    }
                }
            };
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
                BenchFormat::ProtobufBatch => {
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
    let suffix = format!("{}-{}", std::process::id(), now_ms() % 1_000_000);
    let topic = format!("bench-{suffix}");
    let session = format!("bench-{suffix}");
    let config = crate::replay::client_config(&args.brokers, &[])?;
    crate::replay::ensure_topic(&config, &topic, args.partitions).await?;
    let data = std::env::temp_dir().join(format!("pitwall-bench-{suffix}"));
    let port = free_port()?;
    let http_port = free_port()?;
    let idle_timeout_ms = 1000;
    let mut cmd = Command::new(&bin);
    cmd.args([
        "--brokers",
        &args.brokers,
        "--topic",
        &topic,
        "--group",
        &format!("bench-{suffix}"),
    ])
    .args([
        "--flight-addr",
        &format!("127.0.0.1:{port}"),
        "--http-addr",
        &format!("127.0.0.1:{http_port}"),
        "--data-dir",
        data.to_str().unwrap_or("pitwall-bench"),
    ])
    .args([
        "--start",
        "latest",
        "--idle-timeout-ms",
        &idle_timeout_ms.to_string(),
    ])
    .args(&args.server_args)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let server = ServerChild(
        cmd.spawn()
            .with_context(|| format!("starting {}", bin.display()))?,
    );
    let pid = server.0.id();
    let addr = ServerAddress {
        url: format!("http://127.0.0.1:{port}"),
        token: None,
        tls_ca: None,
    };
    let started = Instant::now();
    let mut control = loop {
        match Client::connect(&addr).await {
            Ok(c) => break c,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(e.context("the server did not come up")),
        }
    };
    // Sample the pass-through stream to keep the client's own cost small at high rates.
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
    let ticket = |q: &str| pb::SubscribeTicket {
        query: q.into(),
        from_buffer_start: false,
        driver: String::new(),
    };
    let measuring = Arc::new(AtomicBool::new(false));
    let stopped_at = Arc::new(AtomicU64::new(0));
    // Latency subscriber(s).
    let mut subs = Vec::new();
    for i in 0..args.subscribers.max(1) {
        let mut c = Client::connect(&addr).await?;
        let mut stream = c.subscribe(&ticket("bench_latency")).await?.into_inner();
        let measuring = measuring.clone();
        subs.push(tokio::spawn(async move {
            let _keep = c;
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000, 3).expect("histogram");
            let mut flight_h = Histogram::<u64>::new_with_bounds(1, 600_000, 3).expect("histogram");
            let mut n = 0u64;
            while let Some(item) = stream.next().await {
                let Ok(item) = item else { break };
                let meta = item.app_metadata();
                if let DecodedPayload::RecordBatch(b) = item.payload {
                    if i > 0 || !measuring.load(Ordering::Relaxed) {
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
            }
            (h, flight_h, n)
        }));
    }
    // Window emission subscriber.
    let window_task = {
        let mut c = Client::connect(&addr).await?;
        let mut stream = c.subscribe(&ticket("speed_1s")).await?.into_inner();
        let measuring = measuring.clone();
        let stopped_at = stopped_at.clone();
        tokio::spawn(async move {
            let _keep = c;
            let mut h = Histogram::<u64>::new_with_bounds(1, 600_000, 3).expect("histogram");
            let mut last_arrival = 0i64;
            let mut last_end = 0i64;
            while let Some(item) = stream.next().await {
                let Ok(item) = item else { break };
                if let DecodedPayload::RecordBatch(b) = item.payload {
                    let now = now_ms();
                    let ends = b.column_by_name("window_end").expect("window_end");
                    let ends = arrow::compute::cast(ends, &arrow::datatypes::DataType::Int64)
                        .expect("cast");
                    let ends = ends.as_primitive::<arrow::datatypes::Int64Type>();
                    if measuring.load(Ordering::Relaxed) && stopped_at.load(Ordering::Relaxed) == 0
                    {
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
                    if stopped_at.load(Ordering::Relaxed) > 0 && !ends.is_empty() {
                        last_arrival = now;
                    }
                }
            }
            (h, last_arrival)
        })
    };
    let slow = if args.slow_subscriber {
        let mut c = Client::connect(&addr).await?;
        let s = c.subscribe(&ticket("bench_latency")).await?;
        Some((c, s))
    } else {
        None
    };
    let dashboard_bytes = Arc::new(AtomicU64::new(0));
    let dashboards: Vec<_> = (0..args.dashboards)
        .map(|_| tokio::spawn(dashboard_page(http_port, dashboard_bytes.clone())))
        .collect();
    // Produce: warm-up, then measure.
    let stop = Arc::new(AtomicBool::new(false));
    let produced = Arc::new(AtomicU64::new(0));
    let producer = {
        let (a, t, s, st, p) = (
            args.clone(),
            topic.clone(),
            session.clone(),
            stop.clone(),
            produced.clone(),
        );
        std::thread::spawn(move || produce(&a, format, &t, &s, st, p))
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats0: pb::ServerStats = control.action(pb::actions::STATS, &pb::GetStats {}).await?;
    let (cpu0, _, _) = proc_usage(pid)?;
    let produced0 = produced.load(Ordering::Relaxed);
    let dashboard_bytes0 = dashboard_bytes.load(Ordering::Relaxed);
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, _, _) = proc_usage(pid)?;
    let dashboard_bytes = dashboard_bytes.load(Ordering::Relaxed) - dashboard_bytes0;
    dashboards.iter().for_each(|d| d.abort());
    let stats1: pb::ServerStats = control.action(pb::actions::STATS, &pb::GetStats {}).await?;
    let produced1 = produced.load(Ordering::Relaxed);
    // Stop input; the last windows must close on idleness.
    stop.store(true, Ordering::Relaxed);
    producer
        .join()
        .map_err(|_| anyhow!("producer thread panicked"))??;
    let stop_ms = now_ms();
    stopped_at.store(stop_ms as u64, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(idle_timeout_ms + 3_000)).await;
    let (_, rss, rss_now) = proc_usage(pid)?;
    let stats2: pb::ServerStats = control.action(pb::actions::STATS, &pb::GetStats {}).await?;
    let slow_dropped = slow.as_ref().map(|_| stats2.subscribers_dropped > 0);
    drop(server);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000, 3).expect("histogram");
    let mut flight_latency = latency.clone();
    let mut received = 0;
    for (i, s) in subs.into_iter().enumerate() {
        let (h, f, n) = s.await?;
        if i == 0 {
            latency = h;
            flight_latency = f;
            received = n;
        }
    }
    let (window_h, last_arrival) = window_task.await?;
    drop(slow);
    let _ = std::fs::remove_dir_all(&data);
    let rows_in = (stats1.rows_ingested - stats0.rows_ingested) as f64 / elapsed;
    let out0: u64 = stats0.queries.iter().map(|q| q.rows_emitted).sum();
    let out1: u64 = stats1.queries.iter().map(|q| q.rows_emitted).sum();
    Ok(BenchReport {
        cars: args.cars,
        rate_per_car: args.rate,
        target_rows_per_s: target,
        format: format!("{format:?}"),
        duration_s: elapsed,
        rows_produced: produced1 - produced0,
        rows_in_per_s: rows_in,
        rows_out_per_s: (out1 - out0) as f64 / elapsed,
        sampled_rows_received: received,
        latency_ms: Percentiles::of(&latency),
        flight_delivery_ms: Percentiles::of(&flight_latency),
        server_emit_ms: stats1
            .queries
            .iter()
            .find(|q| q.name == "bench_latency")
            .map_or(
                ServerEmit {
                    p50: 0.0,
                    p99: 0.0,
                    max: 0.0,
                },
                |q| ServerEmit {
                    p50: q.emit_latency_p50_ms,
                    p99: q.emit_latency_p99_ms,
                    max: q.emit_latency_max_ms,
                },
            ),
        window_emit_after_watermark_ms: Percentiles::of(&window_h),
        last_windows_close_ms: (last_arrival > stop_ms).then(|| (last_arrival - stop_ms) as f64),
        idle_timeout_ms,
        backlog_rows: produced1 as i64 - stats1.rows_ingested as i64,
        server_cpu_percent: (cpu1 - cpu0) / elapsed * 100.0,
        server_peak_rss_mb: rss as f64 / (1024.0 * 1024.0),
        server_rss_end_mb: rss_now as f64 / (1024.0 * 1024.0),
        subscribers: args.subscribers.max(1),
        slow_subscriber_dropped: slow_dropped,
        dashboards: args.dashboards,
        dashboard_bytes,
    })
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
