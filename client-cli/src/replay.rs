//! `pitwall replay`: publishes a recorded session to a Kafka topic, one message per sample,
//! keyed by driver, at real-time pace (or faster), with a progress bar and a summary.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use arrow::array::{AsArray, RecordBatch};
use pitwall_proto::schema::col;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Message};

use crate::fleet::Fleet;
use crate::session::Session;
use crate::wire::{Encoded, WireFormat, encode};

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "PITWALL_BROKERS", default_value = "127.0.0.1:19092")]
    pub brokers: String,
    /// Topic to publish to.
    #[arg(long, env = "PITWALL_TOPIC", default_value = "telemetry")]
    pub topic: String,
    /// Partitions of the topic when it has to be created.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// A FastF1 CSV export directory ({car}_telemetry.csv files plus laps.csv).
    #[arg(long, conflicts_with = "file")]
    pub dir: Option<PathBuf>,
    /// A JSONL or Parquet file in the Pitwall schema.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Session name (default: the directory name, or the file's `session` column).
    #[arg(long)]
    pub session: Option<String>,
    /// Only laps FIRST-LAST (e.g. 1-5), from 30 s before the first lap's start.
    #[arg(long, value_name = "FIRST-LAST")]
    pub laps: Option<String>,
    /// Pace multiplier over real time (2 = twice as fast).
    #[arg(long, default_value_t = 1.0, conflicts_with = "max")]
    pub speed: f64,
    /// Publish as fast as possible.
    #[arg(long)]
    pub max: bool,
    /// Number of cars; more than recorded adds virtual cars (VER-2, ...) with time offsets.
    #[arg(long)]
    pub cars: Option<usize>,
    /// Start again at the end, as a new session (NAME-r2, NAME-r3, ...).
    #[arg(long = "loop")]
    pub looping: bool,
    /// Deliver samples out of order by up to this many ms of event time (tests lateness).
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: i64,
    /// Payload encoding.
    #[arg(long, value_enum, default_value_t = WireFormat::Json)]
    pub format: WireFormat,
    /// Extra librdkafka producer setting, key=value (repeatable).
    #[arg(long = "kafka-opt", value_name = "KEY=VALUE")]
    pub kafka_opts: Vec<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl ReplayArgs {
    pub fn load_session(&self) -> Result<Session> {
        let session = match (&self.dir, &self.file) {
            (Some(dir), _) => Session::from_dir(dir, self.session.clone())?,
            (None, Some(file)) => Session::from_file(file, self.session.clone())?,
            (None, None) => Session::bundled()?,
        };
        let session = match &self.session {
            Some(name) => session.renamed(name)?,
            None => session,
        };
        match &self.laps {
            Some(range) => {
                let (lo, hi) = crate::session::parse_lap_range(range)?;
                session.cut_laps(lo, hi, 30_000)
            }
            None => Ok(session),
        }
    }
}

/// What a finished replay did.
#[derive(Debug, Clone, Copy)]
pub struct ReplaySummary {
    pub rows: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

impl ReplaySummary {
    pub fn rate(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Counts deliveries; keeps the first failure so it can be reported.
#[derive(Default)]
struct DeliveryTally {
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

struct TallyContext(Arc<DeliveryTally>);

impl ClientContext for TallyContext {}

impl ProducerContext for TallyContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.0.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, m)) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = self.0.first_error.lock().expect("tally lock");
                first.get_or_insert_with(|| format!("{e} (partition {})", m.partition()));
            }
        }
    }
}

/// Publishes one message, waiting while librdkafka's queue is full.
pub fn send_waiting<C: ProducerContext>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, str, [u8], C::DeliveryOpaque>,
) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, r)) => bail!("cannot publish to {}: {e}", r.topic),
        }
    }
}

pub fn client_config(brokers: &str, opts: &[String]) -> Result<ClientConfig> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    for opt in opts {
        let Some((k, v)) = opt.split_once('=') else {
            bail!("--kafka-opt {opt:?}: expected KEY=VALUE");
        };
        config.set(k.trim(), v.trim());
    }
    Ok(config)
}

/// Creates the topic when it does not exist yet.
pub async fn ensure_topic(config: &ClientConfig, topic: &str, partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = config.create().context("Kafka admin client")?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .context("create topic")?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, code)) => bail!("cannot create topic {t}: {code}"),
        }
    }
    Ok(())
}

pub async fn run(args: &ReplayArgs) -> Result<ReplaySummary> {
    let session = args.load_session()?;
    let mut fleet = Fleet::new(&session, args.cars, args.looping)?;
    let mut config = client_config(&args.brokers, &[])?;
    // Idempotent: a batch retried across a broker outage is written once, not twice (the
    // default of Kafka's own clients since 3.0; librdkafka's default is off).
    config
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "60000");
    for opt in &args.kafka_opts {
        let (k, v) = opt
            .split_once('=')
            .context("--kafka-opt expects KEY=VALUE")?;
        config.set(k.trim(), v.trim());
    }
    ensure_topic(&config, &args.topic, args.partitions).await?;
    let plan = PublishPlan {
        topic: args.topic.clone(),
        format: args.format,
        pace: (!args.max).then_some(args.speed),
        total: (!args.looping).then(|| fleet.rows_per_round() as u64),
        quiet: args.quiet,
        jitter_ms: args.jitter_ms,
    };
    tokio::task::spawn_blocking(move || publish(&mut fleet, &config, &plan))
        .await
        .context("replay task")?
}

/// How to publish: where, how encoded, at what pace.
struct PublishPlan {
    topic: String,
    format: WireFormat,
    /// Multiple of real time; None = as fast as possible.
    pace: Option<f64>,
    /// Rows to expect (for the progress bar); None when looping.
    total: Option<u64>,
    quiet: bool,
    jitter_ms: i64,
}

fn publish(fleet: &mut Fleet, config: &ClientConfig, plan: &PublishPlan) -> Result<ReplaySummary> {
    let (topic, format, pace, total, quiet, jitter_ms) = (
        plan.topic.as_str(),
        plan.format,
        plan.pace,
        plan.total,
        plan.quiet,
        plan.jitter_ms,
    );
    let tally = Arc::new(DeliveryTally::default());
    let producer: ThreadedProducer<TallyContext> = config
        .create_with_context(TallyContext(tally.clone()))
        .context("Kafka producer")?;
    let bar = progress_bar(total, quiet);
    let headers = OwnedHeaders::new().insert(Header {
        key: pitwall_proto::FORMAT_HEADER,
        value: Some(format.header()),
    });
    let started = Instant::now();
    let mut first_ts: Option<i64> = None;
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut encoded = Encoded::default();
    let mut chunks = 0u64;
    while let Some(chunk) = fleet.next_chunk(2048)? {
        chunks += 1;
        let chunk = crate::fleet::jitter(&chunk, jitter_ms, chunks)?;
        encode(&chunk, format, &mut encoded)?;
        let drivers = chunk
            .column_by_name(col::DRIVER)
            .expect("driver")
            .as_string::<i32>()
            .clone();
        let ts = ts_values(&chunk);
        for (i, &t) in ts.iter().enumerate().take(encoded.len()) {
            if let Some(speed) = pace {
                let t0 = *first_ts.get_or_insert(t - jitter_ms);
                let due = Duration::from_secs_f64(((t - t0).max(0) as f64 / 1000.0) / speed);
                let now = started.elapsed();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let payload = encoded.payload(i);
            let key = drivers.value(i);
            let record = BaseRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers.clone());
            send_waiting(&producer, record)?;
            rows += 1;
            bytes += payload.len() as u64;
        }
        bar.set_position(rows);
        if tally.failed.load(Ordering::Relaxed) > 0 {
            break;
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flushing the producer")?;
    bar.finish_and_clear();
    let failed = tally.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = tally
            .first_error
            .lock()
            .expect("tally lock")
            .clone()
            .unwrap_or_default();
        bail!(
            "{failed} of {rows} messages were not delivered to {topic} (first error: {first}); {} were",
            tally.delivered.load(Ordering::Relaxed)
        );
    }
    Ok(ReplaySummary {
        rows,
        bytes,
        elapsed: started.elapsed(),
    })
}

fn ts_values(chunk: &RecordBatch) -> Vec<i64> {
    chunk
        .column_by_name(col::TS)
        .expect("ts")
        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
        .values()
        .to_vec()
}

fn progress_bar(total: Option<u64>, quiet: bool) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{bar:30} {human_pos}/{human_len} rows  {per_sec}  eta {eta}",
            )
            .expect("valid template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {human_pos} rows  {per_sec}")
                .expect("valid template"),
        ),
    };
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}
