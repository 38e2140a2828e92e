//! Server configuration: command-line flags (some also `PITWALL_*` environment variables), over
//! an optional TOML file (`--config pitwall.toml`), over defaults.
//!
//! Every setting is declared once, as a field of [`ServerArgs`]: its flag, its variable, its
//! default and its TOML key (the field's name, in the section of its group). The layers are
//! merged by figment: the defaults clap filled in, then the file, then what was given on the
//! command line or in the environment. Adding a setting is adding a field; [`Config`] is what
//! the server runs with, checked for range.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser};
use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use serde::{Deserialize, Serialize};

use crate::archive::ArchiveConfig;
use crate::engine::{EngineConfig, WatermarkConfig};
use crate::error::{Error, Result};
use crate::ingest::decode::{DecodeConfig, PayloadFormat};
use crate::ingest::kafka::{KafkaConfig, StartAt};

fn decode_defaults() -> DecodeConfig {
    DecodeConfig::default()
}
fn engine_defaults() -> EngineConfig {
    EngineConfig::default()
}
fn watermark_defaults() -> WatermarkConfig {
    WatermarkConfig::default()
}
fn archive_defaults() -> ArchiveConfig {
    ArchiveConfig::default()
}

#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(
    name = "pitwall-server",
    version,
    about = "Pitwall: continuous SQL over live telemetry, served over Arrow Flight"
)]
#[serde(deny_unknown_fields)]
pub struct ServerArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, env = "PITWALL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub decode: DecodeArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
    #[command(flatten)]
    pub flight: FlightArgs,
    #[command(flatten)]
    pub storage: StorageArgs,
    #[command(flatten)]
    pub udp: UdpArgs,
    /// Extra JSON names, wire name = column (the file's `[json_names]` table only).
    #[arg(skip)]
    #[serde(default)]
    pub json_names: BTreeMap<String, String>,
}

/// `[kafka]`: the consumer (or, without brokers, the embedded replay).
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers. Without it the server replays the bundled session in-process.
    #[arg(long, env = "PITWALL_BROKERS")]
    pub brokers: Option<String>,
    /// Topic to consume.
    #[arg(long, env = "PITWALL_TOPIC", default_value = "telemetry")]
    pub topic: String,
    /// Consumer group.
    #[arg(long, env = "PITWALL_GROUP", default_value = "pitwall")]
    pub group: String,
    /// This instance's static member id in the group (`group.instance.id`): a restarted
    /// server takes its old place at once instead of waiting out the session timeout.
    /// Default: `pitwall-HOST-HASH` (HASH of the data directory); `off` = dynamic membership.
    #[arg(long, env = "PITWALL_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Where a new consumer group starts.
    #[arg(long, value_enum, default_value_t = StartAt::Earliest)]
    pub start: StartAt,
    /// Any librdkafka consumer setting, key=value (repeatable; added to the file's).
    #[arg(long = "kafka-opt", value_name = "KEY=VALUE")]
    pub kafka_opt: Vec<String>,
    /// Most rows in one micro-batch.
    #[arg(long, default_value_t = 16 * 1024)]
    pub batch_rows: usize,
    /// Longest wait for a micro-batch to fill, in ms.
    #[arg(long, default_value_t = 50)]
    pub batch_ms: u64,
    /// How long a micro-batch stays open after its first message, in ms.
    #[arg(long, default_value_t = 1)]
    pub linger_ms: u64,
    /// Also republish dead letters to this topic.
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// Pace of the embedded replay (no --brokers), as a multiple of real time.
    #[arg(long, default_value_t = 1.0)]
    pub embedded_speed: f64,
    /// Play the embedded session once instead of looping.
    #[arg(long)]
    pub embedded_once: bool,
}

/// `[decode]`: how payloads become rows.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeArgs {
    /// Payload encoding.
    #[arg(long, value_enum, default_value_t = decode_defaults().format)]
    pub format: PayloadFormat,
    /// Larger payloads are dead-lettered.
    #[arg(long, default_value_t = decode_defaults().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Session of messages that name none.
    #[arg(long, default_value_t = decode_defaults().default_session)]
    pub default_session: String,
    /// Session start (RFC 3339) for messages with SessionTime but no Date, when it cannot be
    /// learnt from the stream.
    #[arg(long)]
    pub session_start: Option<String>,
    /// Extra JSON names, WIRE=column (repeatable, added to the file's; they win over the
    /// FastF1 defaults).
    #[arg(long = "json-name", value_name = "WIRE=COLUMN")]
    pub json_name: Vec<String>,
    /// Columns a message must carry.
    #[arg(long = "require", value_name = "COLUMN", default_values_t = decode_defaults().required)]
    pub require: Vec<String>,
}

/// `[engine]`: the continuous queries, event time and result buffers.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineArgs {
    /// Directory of continuous queries (*.sql, name = file stem). Default: `./queries` when it
    /// exists, else the built-in queries.
    #[arg(long, env = "PITWALL_QUERIES_DIR")]
    pub queries_dir: Option<PathBuf>,
    /// Allowed lateness of event time, in ms.
    #[arg(long, default_value_t = watermark_defaults().lateness_ms)]
    pub lateness_ms: i64,
    /// A partition idle this long (ms) stops holding the watermark back; all idle, the
    /// watermark advances with processing time.
    #[arg(long, default_value_t = watermark_defaults().idle_timeout.as_millis() as u64)]
    pub idle_timeout_ms: u64,
    /// A car's open lap closes after this much event time (ms) without samples.
    #[arg(long, default_value_t = engine_defaults().lap_gap_ms)]
    pub lap_gap_ms: i64,
    /// Result rows each query keeps for late subscribers.
    #[arg(long, default_value_t = engine_defaults().result_buffer_rows)]
    pub result_buffer_rows: usize,
    /// Megabytes (Arrow memory) of results each query keeps for late subscribers.
    #[arg(long, default_value_t = engine_defaults().result_buffer_bytes >> 20)]
    pub result_buffer_mb: usize,
}

/// `[flight]`: the Arrow Flight endpoint and the dashboard.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightArgs {
    /// Address of the Arrow Flight / Flight SQL endpoint (port 0 = any free port).
    #[arg(long, env = "PITWALL_FLIGHT_ADDR", default_value = "127.0.0.1:50051")]
    pub flight_addr: SocketAddr,
    /// Bearer token required on every call.
    #[arg(long, env = "PITWALL_TOKEN")]
    pub token: Option<String>,
    /// TLS certificate (PEM); with --tls-key, the endpoint speaks TLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM), with --tls-cert.
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Batches a subscriber may have buffered before it is dropped.
    #[arg(long, default_value_t = 64)]
    pub subscriber_buffer: usize,
    /// Address of the dashboard and `/metrics` (HTTP; port 0 = any free port), or `off`.
    #[arg(long, env = "PITWALL_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: String,
    /// Most dashboard streams open at once; more are refused with 503.
    #[arg(long, default_value_t = 256)]
    pub max_dashboards: usize,
    /// The Flight location other servers and clients are given for this one (default:
    /// grpc://ADDRESS as bound, grpc+tls:// with TLS).
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// A directory all servers of a consumer group see: each lists itself there, so that
    /// any of them returns every server's endpoint for a query.
    #[arg(long)]
    pub members_dir: Option<PathBuf>,
}

/// `[storage]`: the archive, checkpoints and housekeeping.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageArgs {
    /// Where the archive and dead letters live: a local path or s3://bucket/prefix.
    #[arg(long, env = "PITWALL_DATA_DIR", default_value = "pitwall-data")]
    pub data_dir: String,
    /// The data dir is shared by the servers of a consumer group (a local or network-mounted
    /// directory): each writes its own part, queries read all of it, and partitions moving
    /// between servers take their cars' state with them. Implies `--members-dir DATA_DIR/_members`.
    #[arg(long)]
    #[serde(default)]
    pub shared_archive: bool,
    /// How often the engine checkpoints and the archive writes its files, in ms.
    #[arg(long, default_value_t = archive_defaults().checkpoint_interval.as_millis() as u64)]
    pub checkpoint_ms: u64,
    /// Delete archived files older than this many days.
    #[arg(long)]
    pub retention_days: Option<f64>,
    /// Merge a directory's small files once it has this many.
    #[arg(long, default_value_t = archive_defaults().compact_min_files)]
    pub compact_min_files: usize,
    /// Merge a directory's small files (two or more) once none changed for this many seconds:
    /// a finished session ends as one file per directory.
    #[arg(long, default_value_t = archive_defaults().compact_idle.as_secs())]
    pub compact_idle_secs: u64,
    /// How often compaction and retention run, in ms.
    #[arg(long, default_value_t = archive_defaults().housekeeping_interval.as_millis() as u64)]
    pub housekeeping_ms: u64,
}

/// `[udp]`: telemetry straight from an EA F1 game.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpArgs {
    /// Listen for EA F1 23/24/25 UDP telemetry on this address (the game's default port is
    /// 20777; e.g. 0.0.0.0:20777), instead of the embedded replay.
    #[arg(long = "udp", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
}

/// Lists that a flag adds to instead of replacing: the file's entries, then the flags'.
const APPENDING: &[&str] = &["kafka_opt", "json_name"];

impl ServerArgs {
    /// The settings of this command line (exits with clap's message on a bad flag, `--help`
    /// or `--version`, like any command).
    pub fn load() -> Result<Self> {
        Self::merge(&Self::command().get_matches())
    }

    /// The settings of `argv` (its first item is the program name).
    pub fn load_from<I, T>(argv: I) -> Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command()
            .try_get_matches_from(argv)
            .map_err(|e| Error::Config(crate::error::one_line(&e.to_string())))?;
        Self::merge(&matches)
    }

    /// Defaults, then the TOML file, then the flags and variables given.
    fn merge(matches: &ArgMatches) -> Result<Self> {
        let all = Self::from_arg_matches(matches)
            .map_err(|e| Error::Config(crate::error::one_line(&e.to_string())))?;
        let Some(path) = all.config.clone() else {
            return Ok(all);
        };
        let shown = path.display().to_string();
        let bad =
            |e: figment::Error| Error::Config(crate::error::one_line(&format!("{shown}: {e}")));
        let file = Figment::from(Toml::file_exact(&path));
        let base = Serialized::defaults(&all).data().map_err(bad)?;
        let base = base.into_values().next().unwrap_or_default();
        let mut given = Dict::new();
        for (section, values) in &base {
            let Some(values) = values.as_dict().filter(|_| section != "json_names") else {
                continue;
            };
            let mut picked = Dict::new();
            for (key, value) in values {
                let source = matches.value_source(key);
                if !matches!(
                    source,
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                ) {
                    continue;
                }
                let mut value = value.clone();
                if APPENDING.contains(&key.as_str()) {
                    let from_file: Vec<Value> = file
                        .extract_inner(&format!("{section}.{key}"))
                        .unwrap_or_default();
                    if let Value::Array(tag, flags) = value {
                        value = Value::Array(tag, from_file.into_iter().chain(flags).collect());
                    }
                }
                picked.insert(key.clone(), value);
            }
            given.insert(section.clone(), Value::from(picked));
        }
        let mut merged: Self = Figment::from(Serialized::defaults(&all))
            .merge(file)
            .merge(Serialized::defaults(given))
            .extract()
            .map_err(bad)?;
        merged.config = Some(path);
        Ok(merged)
    }
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// None = embedded replay of the bundled session.
    pub kafka: Option<KafkaConfig>,
    pub embedded_speed: f64,
    pub embedded_loop: bool,
    pub decode: DecodeConfig,
    pub engine: EngineConfig,
    pub queries_dir: Option<PathBuf>,
    pub flight_addr: SocketAddr,
    /// The dashboard's HTTP address; None = off.
    pub http_addr: Option<SocketAddr>,
    pub max_dashboards: usize,
    pub token: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub subscriber_buffer: usize,
    /// `--advertise-addr`; None = the bound address.
    pub advertise_addr: Option<String>,
    /// `--members-dir`; None = this server lists only itself.
    pub members_dir: Option<PathBuf>,
    pub data_dir: String,
    /// `--shared-archive` (see `archive::shared`).
    pub shared_archive: bool,
    pub archive: ArchiveConfig,
    /// Where to listen for F1 game telemetry (UDP); None = not.
    pub udp: Option<SocketAddr>,
}

fn pairs(items: &[String], what: &str) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| Error::Config(format!("{what} {s:?}: expected KEY=VALUE")))
        })
        .collect()
}

impl Config {
    /// What the server runs with, from its settings.
    pub fn resolve(args: ServerArgs) -> Result<Self> {
        let decode = decode_config(&args.decode, &args.json_names)?;
        let kafka = kafka_config(&args.kafka)?;
        let engine = engine_config(&args.engine, args.kafka.batch_ms, kafka.is_some());
        let f = args.flight;
        let tls = match (f.tls_cert, f.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "TLS needs both --tls-cert and --tls-key".into(),
                ));
            }
        };
        let mut config = Config {
            kafka,
            embedded_speed: args.kafka.embedded_speed,
            embedded_loop: !args.kafka.embedded_once,
            decode,
            engine,
            queries_dir: args.engine.queries_dir.or_else(default_queries_dir),
            flight_addr: f.flight_addr,
            http_addr: http_addr(&f.http_addr)?,
            max_dashboards: f.max_dashboards,
            advertise_addr: f.advertise_addr,
            members_dir: f.members_dir,
            token: f.token,
            tls,
            subscriber_buffer: f.subscriber_buffer,
            archive: archive_config(&args.storage)?,
            data_dir: args.storage.data_dir,
            shared_archive: args.storage.shared_archive,
            udp: args.udp.listen,
        };
        if config.shared_archive && config.data_dir.contains("://") {
            return Err(Error::Config(format!(
                "--shared-archive needs a directory (local or network-mounted), not {}",
                config.data_dir
            )));
        }
        if config.shared_archive && config.members_dir.is_none() {
            config.members_dir = Some(PathBuf::from(&config.data_dir).join("_members"));
        }
        if let Some(kafka) = &mut config.kafka {
            // Servers sharing one data dir cannot derive distinct static ids from it.
            let given = match args.kafka.instance_id {
                None if config.shared_archive => Some("off".to_string()),
                given => given,
            };
            let id = instance_id(given, &config.data_dir, &kafka.options)?;
            kafka.instance_id = id;
        }
        config.check_ranges()?;
        Ok(config)
    }

    /// Every numeric setting within what the server can run with (a zero capacity or
    /// interval would panic or spin).
    fn check_ranges(&self) -> Result<()> {
        let at_least = |name: &str, v: u128, min: u128| {
            if v < min {
                Err(out_of_range(name, v, &format!("at least {min}")))
            } else {
                Ok(())
            }
        };
        if let Some(k) = &self.kafka {
            at_least("--batch-rows", k.max_batch_rows as u128, 1)?;
            at_least("--batch-ms", k.max_batch_wait.as_millis(), 1)?;
        }
        let speed = self.embedded_speed;
        if !(speed.is_finite() && speed > 0.0 && speed <= 1e6) {
            return Err(out_of_range(
                "--embedded-speed",
                speed,
                "above 0, at most 1000000",
            ));
        }
        at_least(
            "--max-message-bytes",
            self.decode.max_message_bytes as u128,
            1,
        )?;
        let e = &self.engine;
        if e.watermark.lateness_ms < 0 {
            return Err(out_of_range(
                "--lateness-ms",
                e.watermark.lateness_ms,
                "0 or more",
            ));
        }
        at_least("--idle-timeout-ms", e.watermark.idle_timeout.as_millis(), 1)?;
        if e.lap_gap_ms < 1 {
            return Err(out_of_range("--lap-gap-ms", e.lap_gap_ms, "at least 1"));
        }
        at_least("--result-buffer-rows", e.result_buffer_rows as u128, 1)?;
        at_least(
            "--result-buffer-mb",
            (e.result_buffer_bytes >> 20) as u128,
            1,
        )?;
        at_least("--subscriber-buffer", self.subscriber_buffer as u128, 1)?;
        at_least("--max-dashboards", self.max_dashboards as u128, 1)?;
        let a = &self.archive;
        at_least("--checkpoint-ms", a.checkpoint_interval.as_millis(), 10)?;
        at_least("--compact-min-files", a.compact_min_files as u128, 2)?;
        at_least("--housekeeping-ms", a.housekeeping_interval.as_millis(), 10)?;
        Ok(())
    }
}

/// Decoding; JSON names from `json_name` (the file's, then the flags') and `[json_names]`,
/// then the FastF1 defaults not named by them.
fn decode_config(d: &DecodeArgs, file_names: &BTreeMap<String, String>) -> Result<DecodeConfig> {
    let defaults = DecodeConfig::default();
    let mut json_names: Vec<(String, String)> = pairs(&d.json_name, "--json-name")?;
    json_names.extend(file_names.iter().map(|(w, c)| (w.clone(), c.clone())));
    for (w, c) in defaults.json_names.iter() {
        if !json_names.iter().any(|(x, _)| x == w) {
            json_names.push((w.clone(), c.clone()));
        }
    }
    let session_start_ms = match &d.session_start {
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(s)
                .map_err(|e| Error::Config(format!("--session-start {s:?}: {e}")))?
                .timestamp_millis(),
        ),
        None => None,
    };
    Ok(DecodeConfig {
        format: d.format,
        max_message_bytes: d.max_message_bytes,
        default_session: d.default_session.clone(),
        session_start_ms,
        json_names,
        required: d.require.clone(),
    })
}

/// The consumer, when brokers are set (none: the embedded replay). The static member id is
/// resolved later, once the data directory is known.
fn kafka_config(k: &KafkaArgs) -> Result<Option<KafkaConfig>> {
    let options = pairs(&k.kafka_opt, "--kafka-opt")?;
    let Some(brokers) = k.brokers.clone() else {
        return Ok(None);
    };
    Ok(Some(KafkaConfig {
        brokers,
        topic: k.topic.clone(),
        group_id: k.group.clone(),
        start: k.start,
        options,
        max_batch_rows: k.batch_rows,
        max_batch_wait: Duration::from_millis(k.batch_ms),
        linger: Duration::from_millis(k.linger_ms),
        dead_letter_topic: k.dead_letter_topic.clone(),
        instance_id: None,
    }))
}

/// The engine: watermark, lap gap, result buffers; it ticks at the micro-batch wait.
fn engine_config(e: &EngineArgs, batch_ms: u64, kafka: bool) -> EngineConfig {
    EngineConfig {
        watermark: WatermarkConfig {
            lateness_ms: e.lateness_ms,
            idle_timeout: Duration::from_millis(e.idle_timeout_ms),
            require_assignment: kafka,
        },
        lap_gap_ms: e.lap_gap_ms,
        result_buffer_rows: e.result_buffer_rows,
        result_buffer_bytes: e.result_buffer_mb.saturating_mul(1 << 20),
        tick: Duration::from_millis(batch_ms.clamp(5, 1000)),
        ..EngineConfig::default()
    }
}

/// The archive: checkpoint interval, retention, compaction, housekeeping.
fn archive_config(a: &StorageArgs) -> Result<ArchiveConfig> {
    Ok(ArchiveConfig {
        checkpoint_interval: Duration::from_millis(a.checkpoint_ms),
        retention: retention(a.retention_days)?,
        compact_min_files: a.compact_min_files,
        compact_idle: Duration::from_secs(a.compact_idle_secs),
        housekeeping_interval: Duration::from_millis(a.housekeeping_ms),
        ..ArchiveConfig::default()
    })
}

/// `--retention-days`: a number of days above 0 (at most a century), or none.
fn retention(days: Option<f64>) -> Result<Option<Duration>> {
    match days {
        Some(d) if d.is_finite() && d > 0.0 && d <= 36_500.0 => {
            Ok(Some(Duration::from_secs_f64(d * 86_400.0)))
        }
        Some(d) => Err(out_of_range(
            "--retention-days",
            d,
            "a number of days above 0, at most 36500",
        )),
        None => Ok(None),
    }
}

/// The one line for a setting out of range.
fn out_of_range(name: &str, value: impl std::fmt::Display, expected: &str) -> Error {
    Error::Config(format!(
        "{name} {value} is out of range: expected {expected} (flag, PITWALL_* variable or TOML key)"
    ))
}

/// `--http-addr`: an address or `off`.
fn http_addr(value: &str) -> Result<Option<SocketAddr>> {
    match value.trim() {
        "off" => Ok(None),
        a => a.parse().map(Some).map_err(|e| {
            Error::Config(format!(
                "--http-addr {a:?}: {e} (expected HOST:PORT, e.g. 127.0.0.1:8080, or off)"
            ))
        }),
    }
}

/// The consumer's static member id: the one given, none for `off` (or when `--kafka-opt`
/// sets `group.instance.id` itself), else `pitwall-HOST-HASH` with HASH from the data
/// directory's absolute path: the same server restarted gets the same id, and two servers on
/// one host (which need two data directories) get two.
fn instance_id(
    value: Option<String>,
    data_dir: &str,
    options: &[(String, String)],
) -> Result<Option<String>> {
    if options.iter().any(|(k, _)| k == "group.instance.id") {
        return Ok(None);
    }
    let id = match value.as_deref().map(str::trim) {
        Some("off") => return Ok(None),
        Some(id) => id.to_string(),
        None => {
            let dir = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.into());
            let hash = twox_hash::XxHash64::oneshot(0, dir.as_os_str().as_encoded_bytes());
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            let host: String = host
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .take(64)
                .collect();
            format!("pitwall-{host}-{:08x}", hash as u32)
        }
    };
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if id.is_empty() || id.len() > 249 || !id.chars().all(legal) {
        return Err(Error::Config(format!(
            "--instance-id {id:?}: expected 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-' (or off)"
        )));
    }
    Ok(Some(id))
}

/// `./queries` when it exists (running from the repository), else none (the built-in defaults).
fn default_queries_dir() -> Option<PathBuf> {
    let p = PathBuf::from("queries");
    p.is_dir().then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_numeric_setting_out_of_range_is_one_line_not_a_panic() {
        let kafka = ["--brokers", "127.0.0.1:9"];
        let cases: &[(&str, &str, &[&str])] = &[
            ("--retention-days", "-1", &[]),
            ("--retention-days", "NaN", &[]),
            ("--retention-days", "inf", &[]),
            ("--retention-days", "1e300", &[]),
            ("--retention-days", "0", &[]),
            ("--embedded-speed", "0", &[]),
            ("--embedded-speed", "-3", &[]),
            ("--embedded-speed", "NaN", &[]),
            ("--batch-rows", "0", &kafka),
            ("--batch-ms", "0", &kafka),
            ("--max-message-bytes", "0", &[]),
            ("--lateness-ms", "-5", &[]),
            ("--idle-timeout-ms", "0", &[]),
            ("--lap-gap-ms", "0", &[]),
            ("--lap-gap-ms", "-1000", &[]),
            ("--result-buffer-rows", "0", &[]),
            ("--result-buffer-mb", "0", &[]),
            ("--subscriber-buffer", "0", &[]),
            ("--max-dashboards", "0", &[]),
            ("--checkpoint-ms", "0", &[]),
            ("--compact-min-files", "1", &[]),
            ("--housekeeping-ms", "0", &[]),
            ("--http-addr", "nowhere", &[]),
            ("--instance-id", "a b", &kafka),
        ];
        for (flag, value, extra) in cases {
            let arg = format!("{flag}={value}");
            let mut argv = vec!["pitwall-server", arg.as_str()];
            argv.extend_from_slice(extra);
            let err = match ServerArgs::load_from(&argv) {
                Err(e) => panic!("{flag} {value}: clap refused it: {e}"),
                Ok(args) => std::panic::catch_unwind(|| Config::resolve(args))
                    .unwrap_or_else(|_| panic!("{flag} {value}: panicked"))
                    .expect_err(&format!("{flag} {value}: accepted")),
            };
            let line = err.to_string();
            assert!(
                line.contains(flag) && !line.contains('\n'),
                "{flag} {value}: {line}"
            );
        }
        // The same from the TOML file.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, "[storage]\nretention_days = -2.0\n").unwrap();
        let err = Config::resolve(
            ServerArgs::load_from(["pitwall-server", "--config", path.to_str().unwrap()]).unwrap(),
        )
        .expect_err("negative retention in TOML");
        assert!(err.to_string().contains("--retention-days -2"), "{err}");
    }

    #[test]
    fn the_example_file_is_valid_and_flags_override_it() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../pitwall.example.toml");
        let c = Config::resolve(
            ServerArgs::load_from(["pitwall-server", "--config", path, "--lateness-ms", "250"])
                .unwrap(),
        )
        .unwrap();
        let kafka = c.kafka.expect("brokers set in the file");
        assert_eq!(kafka.topic, "telemetry");
        assert_eq!(kafka.linger, Duration::from_millis(1));
        assert_eq!(c.engine.watermark.lateness_ms, 250, "the flag wins");
        assert_eq!(c.engine.watermark.idle_timeout, Duration::from_millis(1000));
        assert!(c.engine.watermark.require_assignment);
        assert_eq!(
            c.decode.json_names[0],
            ("kmh".to_string(), "speed".to_string())
        );
        assert_eq!(c.archive.checkpoint_interval, Duration::from_millis(5000));
    }

    #[test]
    fn the_static_member_id_follows_the_data_dir_unless_given_or_off() {
        let id = |extra: &[&str]| {
            let mut argv = vec!["pitwall-server", "--brokers", "b:9092"];
            argv.extend_from_slice(extra);
            Config::resolve(ServerArgs::load_from(argv).unwrap())
                .unwrap()
                .kafka
                .unwrap()
                .instance_id
        };
        let (a, a_again) = (id(&["--data-dir", "/d/a"]), id(&["--data-dir", "/d/a"]));
        let b = id(&["--data-dir", "/d/b"]);
        assert!(a.as_deref().unwrap().starts_with("pitwall-"), "{a:?}");
        assert_eq!(a, a_again, "the same server restarted keeps its id");
        assert_ne!(a, b, "two data directories, two members");
        assert_eq!(id(&["--instance-id", "rig-7"]).as_deref(), Some("rig-7"));
        assert_eq!(id(&["--instance-id", "off"]), None);
        assert_eq!(
            id(&["--kafka-opt", "group.instance.id=x"]),
            None,
            "librdkafka's own wins"
        );
    }

    #[test]
    fn no_brokers_means_the_embedded_replay() {
        let c = Config::resolve(ServerArgs::load_from(["pitwall-server"]).unwrap()).unwrap();
        assert!(c.kafka.is_none());
        assert!(!c.engine.watermark.require_assignment);
        assert_eq!(c.flight_addr.to_string(), "127.0.0.1:50051");
    }

    #[test]
    fn bad_settings_say_which() {
        let err = Config::resolve(
            ServerArgs::load_from(["pitwall-server", "--kafka-opt", "nonsense"]).unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
        let err = Config::resolve(
            ServerArgs::load_from(["pitwall-server", "--tls-cert", "c.pem"]).unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("--tls-key"), "{err}");
        let both = ServerArgs::load_from([
            "pitwall-server",
            "--udp",
            "0.0.0.0:20777",
            "--brokers",
            "b:9",
        ])
        .and_then(Config::resolve)
        .expect("--udp with --brokers: both sources");
        assert!(both.kafka.is_some() && both.udp.is_some());
    }

    /// Every flag, its variable and its TOML key, as they are today: each key sets exactly
    /// what its flag sets (and something other than the default).
    #[test]
    fn every_flag_variable_and_toml_key_is_pinned() {
        const KAFKA: &[&str] = &["--brokers", "x:1"];
        #[rustfmt::skip]
        let cases: &[(&[&str], &[&str], &str)] = &[
            (&["--brokers", "b:1"], &[], "[kafka]\nbrokers = 'b:1'"),
            (&["--topic", "t7"], KAFKA, "[kafka]\ntopic = 't7'"),
            (&["--group", "g7"], KAFKA, "[kafka]\ngroup = 'g7'"),
            (&["--instance-id", "rig-7"], KAFKA, "[kafka]\ninstance_id = 'rig-7'"),
            (&["--start", "latest"], KAFKA, "[kafka]\nstart = 'latest'"),
            (&["--kafka-opt", "a=b"], KAFKA, "[kafka]\nkafka_opt = ['a=b']"),
            (&["--batch-rows", "7"], KAFKA, "[kafka]\nbatch_rows = 7"),
            (&["--batch-ms", "7"], KAFKA, "[kafka]\nbatch_ms = 7"),
            (&["--linger-ms", "7"], KAFKA, "[kafka]\nlinger_ms = 7"),
            (&["--dead-letter-topic", "dl"], KAFKA, "[kafka]\ndead_letter_topic = 'dl'"),
            (&["--embedded-speed", "3.5"], &[], "[kafka]\nembedded_speed = 3.5"),
            (&["--embedded-once"], &[], "[kafka]\nembedded_once = true"),
            (&["--format", "protobuf-batch"], &[], "[decode]\nformat = 'protobuf-batch'"),
            (&["--max-message-bytes", "7"], &[], "[decode]\nmax_message_bytes = 7"),
            (&["--default-session", "s7"], &[], "[decode]\ndefault_session = 's7'"),
            (&["--session-start", "2023-07-09T13:01:01Z"], &[], "[decode]\nsession_start = '2023-07-09T13:01:01Z'"),
            (&["--json-name", "kmh=speed"], &[], "[decode]\njson_name = ['kmh=speed']"),
            (&["--require", "brake"], &[], "[decode]\nrequire = ['brake']"),
            (&["--queries-dir", "/q7"], &[], "[engine]\nqueries_dir = '/q7'"),
            (&["--lateness-ms", "7"], &[], "[engine]\nlateness_ms = 7"),
            (&["--idle-timeout-ms", "7"], &[], "[engine]\nidle_timeout_ms = 7"),
            (&["--lap-gap-ms", "7"], &[], "[engine]\nlap_gap_ms = 7"),
            (&["--result-buffer-rows", "7"], &[], "[engine]\nresult_buffer_rows = 7"),
            (&["--result-buffer-mb", "7"], &[], "[engine]\nresult_buffer_mb = 7"),
            (&["--flight-addr", "127.0.0.1:7"], &[], "[flight]\nflight_addr = '127.0.0.1:7'"),
            (&["--token", "t7"], &[], "[flight]\ntoken = 't7'"),
            (&["--tls-cert", "c.pem", "--tls-key", "k.pem"], &[], "[flight]\ntls_cert = 'c.pem'\ntls_key = 'k.pem'"),
            (&["--subscriber-buffer", "7"], &[], "[flight]\nsubscriber_buffer = 7"),
            (&["--http-addr", "off"], &[], "[flight]\nhttp_addr = 'off'"),
            (&["--max-dashboards", "7"], &[], "[flight]\nmax_dashboards = 7"),
            (&["--advertise-addr", "grpc://h:7"], &[], "[flight]\nadvertise_addr = 'grpc://h:7'"),
            (&["--members-dir", "/m7"], &[], "[flight]\nmembers_dir = '/m7'"),
            (&["--shared-archive"], &[], "[storage]\nshared_archive = true"),
            (&["--data-dir", "/d7"], &[], "[storage]\ndata_dir = '/d7'"),
            (&["--checkpoint-ms", "70"], &[], "[storage]\ncheckpoint_ms = 70"),
            (&["--retention-days", "7"], &[], "[storage]\nretention_days = 7.0"),
            (&["--compact-min-files", "7"], &[], "[storage]\ncompact_min_files = 7"),
            (&["--compact-idle-secs", "7"], &[], "[storage]\ncompact_idle_secs = 7"),
            (&["--housekeeping-ms", "70"], &[], "[storage]\nhousekeeping_ms = 70"),
            (&["--udp", "127.0.0.1:20777"], &[], "[udp]\nlisten = '127.0.0.1:20777'"),
        ];
        let variables: &[(&str, &str)] = &[
            ("--config", "PITWALL_CONFIG"),
            ("--brokers", "PITWALL_BROKERS"),
            ("--topic", "PITWALL_TOPIC"),
            ("--group", "PITWALL_GROUP"),
            ("--instance-id", "PITWALL_INSTANCE_ID"),
            ("--queries-dir", "PITWALL_QUERIES_DIR"),
            ("--flight-addr", "PITWALL_FLIGHT_ADDR"),
            ("--token", "PITWALL_TOKEN"),
            ("--http-addr", "PITWALL_HTTP_ADDR"),
            ("--data-dir", "PITWALL_DATA_DIR"),
        ];
        let command = ServerArgs::command();
        let mut declared: Vec<String> = command
            .get_arguments()
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        let mut pinned: Vec<String> = cases
            .iter()
            .flat_map(|(flags, _, _)| flags.iter().filter(|f| f.starts_with("--")))
            .map(|f| f.to_string())
            .chain(["--config".to_string()])
            .collect();
        declared.sort();
        pinned.sort();
        assert_eq!(declared, pinned, "a flag was added, renamed or removed");
        let mut with_env: Vec<(String, String)> = command
            .get_arguments()
            .filter_map(|a| {
                let env = a.get_env()?.to_string_lossy().into_owned();
                Some((format!("--{}", a.get_long()?), env))
            })
            .collect();
        with_env.sort();
        let mut expected: Vec<(String, String)> = variables
            .iter()
            .map(|(f, e)| (f.to_string(), e.to_string()))
            .collect();
        expected.sort();
        assert_eq!(with_env, expected, "a PITWALL_* variable changed");

        let dir = tempfile::tempdir().unwrap();
        let resolve = |argv: Vec<&str>| {
            let args = ServerArgs::load_from(std::iter::once("pitwall-server").chain(argv));
            format!("{:?}", args.and_then(Config::resolve).expect("valid"))
        };
        for (i, (flags, extra, toml)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("{i}.toml"));
            std::fs::write(&path, toml).unwrap();
            let by_flag = resolve(flags.iter().chain(extra.iter()).copied().collect());
            let path = path.to_str().unwrap();
            let by_file = resolve(
                ["--config", path]
                    .iter()
                    .chain(extra.iter())
                    .copied()
                    .collect(),
            );
            let default = resolve(extra.to_vec());
            assert_eq!(by_flag, by_file, "{toml:?} sets what {flags:?} sets");
            assert_ne!(by_flag, default, "{flags:?} changes something");
        }
    }

    #[test]
    fn flags_win_over_the_file_and_repeatable_options_add_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[kafka]\nbrokers = 'b:1'\ntopic = 'from-file'\nkafka_opt = ['a=1']\n\
             [decode]\nrequire = ['speed', 'rpm', 'brake']\n",
        )
        .unwrap();
        let c = ServerArgs::load_from([
            "pitwall-server",
            "--config",
            path.to_str().unwrap(),
            "--topic",
            "from-flag",
            "--kafka-opt",
            "b=2",
            "--require",
            "gear",
        ])
        .and_then(Config::resolve)
        .unwrap();
        let kafka = c.kafka.unwrap();
        assert_eq!(kafka.topic, "from-flag");
        assert_eq!(kafka.brokers, "b:1", "the file's, no flag");
        let options: Vec<String> = kafka
            .options
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        assert_eq!(
            options,
            ["a=1", "b=2"],
            "the file's options, then the flag's"
        );
        assert_eq!(
            c.decode.required,
            ["gear"],
            "a list flag replaces the file's list"
        );
        let err = ServerArgs::load_from(["pitwall-server", "--config", "/nonexistent.toml"])
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent.toml"), "{err}");
        std::fs::write(&path, "[kafka]\ntopicc = 'typo'\n").unwrap();
        let err = ServerArgs::load_from(["pitwall-server", "--config", path.to_str().unwrap()])
            .expect_err("unknown key");
        let line = err.to_string();
        assert!(line.contains("topicc") && !line.contains('\n'), "{line}");
    }
}
