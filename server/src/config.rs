//! Server configuration: command-line flags (also readable from `PITWALL_*` environment
//! variables), over an optional TOML file (`--config pitwall.toml`), over defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};
use serde::Deserialize;

use crate::engine::{EngineConfig, WatermarkConfig};
use crate::error::{Error, Result};
use crate::ingest::decode::{DecodeConfig, PayloadFormat};
use crate::ingest::kafka::{KafkaConfig, StartAt};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "pitwall-server",
    version,
    about = "Pitwall: continuous SQL over live telemetry, served over Arrow Flight"
)]
pub struct ServerArgs {
    /// TOML configuration file; flags override it.
    #[arg(long, env = "PITWALL_CONFIG")]
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
}

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers. Without it the server replays the bundled session in-process.
    #[arg(long, env = "PITWALL_BROKERS")]
    pub brokers: Option<String>,
    /// Topic to consume.
    #[arg(long, env = "PITWALL_TOPIC")]
    pub topic: Option<String>,
    /// Consumer group.
    #[arg(long, env = "PITWALL_GROUP")]
    pub group: Option<String>,
    /// This instance's static member id in the group (`group.instance.id`): a restarted
    /// server takes its old place at once instead of waiting out the session timeout.
    /// Default: `pitwall-HOST-HASH` (HASH of the data directory); `off` = dynamic membership.
    #[arg(long, env = "PITWALL_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Where a new consumer group starts.
    #[arg(long, value_enum)]
    pub start: Option<StartAt>,
    /// Any librdkafka consumer setting, key=value (repeatable).
    #[arg(long = "kafka-opt", value_name = "KEY=VALUE")]
    #[serde(default)]
    pub kafka_opt: Vec<String>,
    /// Most rows in one micro-batch.
    #[arg(long)]
    pub batch_rows: Option<usize>,
    /// Longest wait for a micro-batch to fill, in ms.
    #[arg(long)]
    pub batch_ms: Option<u64>,
    /// How long a micro-batch stays open after its first message, in ms.
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// Also republish dead letters to this topic.
    #[arg(long)]
    pub dead_letter_topic: Option<String>,
    /// Pace of the embedded replay (no --brokers), as a multiple of real time.
    #[arg(long)]
    pub embedded_speed: Option<f64>,
    /// Play the embedded session once instead of looping.
    #[arg(long)]
    #[serde(default)]
    pub embedded_once: bool,
}

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeArgs {
    /// Payload encoding.
    #[arg(long, value_enum)]
    pub format: Option<PayloadFormat>,
    /// Larger payloads are dead-lettered.
    #[arg(long)]
    pub max_message_bytes: Option<usize>,
    /// Session of messages that name none.
    #[arg(long)]
    pub default_session: Option<String>,
    /// Session start (RFC 3339) for messages with SessionTime but no Date, when it cannot be
    /// learnt from the stream.
    #[arg(long)]
    pub session_start: Option<String>,
    /// Extra JSON names, WIRE=column (repeatable; they win over the FastF1 defaults).
    #[arg(long = "json-name", value_name = "WIRE=COLUMN")]
    #[serde(default)]
    pub json_name: Vec<String>,
    /// Columns a message must carry (default: speed, rpm).
    #[arg(long = "require", value_name = "COLUMN")]
    pub require: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineArgs {
    /// Directory of continuous queries (*.sql, name = file stem).
    #[arg(long, env = "PITWALL_QUERIES_DIR")]
    pub queries_dir: Option<PathBuf>,
    /// Allowed lateness of event time, in ms.
    #[arg(long)]
    pub lateness_ms: Option<i64>,
    /// A partition idle this long (ms) stops holding the watermark back; all idle, the
    /// watermark advances with processing time.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// A car's open lap closes after this much event time (ms) without samples.
    #[arg(long)]
    pub lap_gap_ms: Option<i64>,
    /// Result rows each query keeps for late subscribers.
    #[arg(long)]
    pub result_buffer_rows: Option<usize>,
    /// Megabytes (Arrow memory) of results each query keeps for late subscribers.
    #[arg(long)]
    pub result_buffer_mb: Option<usize>,
}

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlightArgs {
    /// Address of the Arrow Flight / Flight SQL endpoint (port 0 = any free port).
    #[arg(long, env = "PITWALL_FLIGHT_ADDR")]
    pub flight_addr: Option<SocketAddr>,
    /// Bearer token required on every call.
    #[arg(long, env = "PITWALL_TOKEN")]
    pub token: Option<String>,
    /// TLS certificate (PEM); with --tls-key, the endpoint speaks TLS.
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Batches a subscriber may have buffered before it is dropped.
    #[arg(long)]
    pub subscriber_buffer: Option<usize>,
    /// Address of the dashboard and `/metrics` (HTTP; port 0 = any free port), or `off`.
    #[arg(long, env = "PITWALL_HTTP_ADDR")]
    pub http_addr: Option<String>,
    /// Most dashboard streams open at once; more are refused with 503.
    #[arg(long)]
    pub max_dashboards: Option<usize>,
}

#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageArgs {
    /// Where the archive and dead letters live: a local path or s3://bucket/prefix.
    #[arg(long, env = "PITWALL_DATA_DIR")]
    pub data_dir: Option<String>,
    /// How often the engine checkpoints and the archive writes its files, in ms.
    #[arg(long)]
    pub checkpoint_ms: Option<u64>,
    /// Delete archived files older than this many days.
    #[arg(long)]
    pub retention_days: Option<f64>,
    /// Merge a directory's small files once it has this many.
    #[arg(long)]
    pub compact_min_files: Option<usize>,
    /// Merge a directory's small files (two or more) once none changed for this many seconds:
    /// a finished session ends as one file per directory.
    #[arg(long)]
    pub compact_idle_secs: Option<u64>,
    /// How often compaction and retention run, in ms.
    #[arg(long)]
    pub housekeeping_ms: Option<u64>,
}

/// The TOML file: the same settings, grouped.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    kafka: KafkaArgs,
    #[serde(default)]
    decode: DecodeArgs,
    #[serde(default)]
    engine: EngineArgs,
    #[serde(default)]
    flight: FlightArgs,
    #[serde(default)]
    storage: StorageArgs,
    /// JSON wire name -> column.
    #[serde(default)]
    json_names: BTreeMap<String, String>,
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
    pub data_dir: String,
    pub archive: crate::archive::ArchiveConfig,
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
    /// Flags over the file named by `--config` (if any) over defaults.
    pub fn resolve(args: ServerArgs) -> Result<Self> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
                toml::from_str(&text)
                    .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))?
            }
            None => FileConfig::default(),
        };
        let (k, fk) = (args.kafka, file.kafka);
        let (e, fe) = (args.engine, file.engine);
        let (f, ff) = (args.flight, file.flight);
        let decode = decode_config(args.decode, file.decode, file.json_names)?;
        let kafka = kafka_config(&k, &fk)?;
        let instance = k.instance_id.clone().or(fk.instance_id.clone());
        let batch_ms = k.batch_ms.or(fk.batch_ms).unwrap_or(50);
        let engine = engine_config(&e, &fe, batch_ms, kafka.is_some());
        let tls = match (f.tls_cert.or(ff.tls_cert), f.tls_key.or(ff.tls_key)) {
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
            embedded_speed: k.embedded_speed.or(fk.embedded_speed).unwrap_or(1.0),
            embedded_loop: !(k.embedded_once || fk.embedded_once),
            decode,
            engine,
            queries_dir: e
                .queries_dir
                .or(fe.queries_dir)
                .or_else(default_queries_dir),
            flight_addr: f
                .flight_addr
                .or(ff.flight_addr)
                .unwrap_or_else(|| "127.0.0.1:50051".parse().expect("valid")),
            http_addr: http_addr(f.http_addr.or(ff.http_addr))?,
            max_dashboards: f.max_dashboards.or(ff.max_dashboards).unwrap_or(256),
            token: f.token.or(ff.token),
            tls,
            subscriber_buffer: f.subscriber_buffer.or(ff.subscriber_buffer).unwrap_or(64),
            data_dir: args
                .storage
                .data_dir
                .clone()
                .or(file.storage.data_dir.clone())
                .unwrap_or_else(|| "pitwall-data".into()),
            archive: archive_config(&args.storage, &file.storage)?,
        };
        if let Some(kafka) = &mut config.kafka {
            kafka.instance_id = instance_id(instance, &config.data_dir, &kafka.options)?;
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

/// Decoding: flags over the file over defaults; JSON names from `--json-name`, the file's
/// `json_name` and `[json_names]`, then the FastF1 defaults not named by them.
fn decode_config(
    d: DecodeArgs,
    fd: DecodeArgs,
    file_names: BTreeMap<String, String>,
) -> Result<DecodeConfig> {
    let defaults = DecodeConfig::default();
    let mut json_names: Vec<(String, String)> = pairs(&d.json_name, "--json-name")?;
    json_names.extend(pairs(&fd.json_name, "json_name")?);
    json_names.extend(file_names);
    for (w, c) in defaults.json_names.iter() {
        if !json_names.iter().any(|(x, _)| x == w) {
            json_names.push((w.clone(), c.clone()));
        }
    }
    let session_start_ms = match d.session_start.or(fd.session_start) {
        Some(s) => Some(
            chrono::DateTime::parse_from_rfc3339(&s)
                .map_err(|e| Error::Config(format!("--session-start {s:?}: {e}")))?
                .timestamp_millis(),
        ),
        None => None,
    };
    Ok(DecodeConfig {
        format: d.format.or(fd.format).unwrap_or(defaults.format),
        max_message_bytes: d
            .max_message_bytes
            .or(fd.max_message_bytes)
            .unwrap_or(defaults.max_message_bytes),
        default_session: d
            .default_session
            .or(fd.default_session)
            .unwrap_or(defaults.default_session),
        session_start_ms,
        json_names,
        required: d.require.or(fd.require).unwrap_or(defaults.required),
    })
}

/// The consumer, when brokers are set (none: the embedded replay). The static member id is
/// resolved later, once the data directory is known.
fn kafka_config(k: &KafkaArgs, fk: &KafkaArgs) -> Result<Option<KafkaConfig>> {
    let mut options = pairs(&fk.kafka_opt, "kafka_opt")?;
    options.extend(pairs(&k.kafka_opt, "--kafka-opt")?);
    let Some(brokers) = k.brokers.clone().or(fk.brokers.clone()) else {
        return Ok(None);
    };
    let or = |a: &Option<String>, b: &Option<String>, default: &str| {
        a.clone().or(b.clone()).unwrap_or_else(|| default.into())
    };
    Ok(Some(KafkaConfig {
        brokers,
        topic: or(&k.topic, &fk.topic, "telemetry"),
        group_id: or(&k.group, &fk.group, "pitwall"),
        start: k.start.or(fk.start).unwrap_or(StartAt::Earliest),
        options,
        max_batch_rows: k.batch_rows.or(fk.batch_rows).unwrap_or(16 * 1024),
        max_batch_wait: Duration::from_millis(k.batch_ms.or(fk.batch_ms).unwrap_or(50)),
        linger: Duration::from_millis(k.linger_ms.or(fk.linger_ms).unwrap_or(1)),
        dead_letter_topic: k.dead_letter_topic.clone().or(fk.dead_letter_topic.clone()),
        instance_id: None,
    }))
}

/// The engine: watermark, lap gap, result buffers; it ticks at the micro-batch wait.
fn engine_config(e: &EngineArgs, fe: &EngineArgs, batch_ms: u64, kafka: bool) -> EngineConfig {
    let defaults = EngineConfig::default();
    EngineConfig {
        watermark: WatermarkConfig {
            lateness_ms: e
                .lateness_ms
                .or(fe.lateness_ms)
                .unwrap_or(defaults.watermark.lateness_ms),
            idle_timeout: e
                .idle_timeout_ms
                .or(fe.idle_timeout_ms)
                .map(Duration::from_millis)
                .unwrap_or(defaults.watermark.idle_timeout),
            require_assignment: kafka,
        },
        lap_gap_ms: e
            .lap_gap_ms
            .or(fe.lap_gap_ms)
            .unwrap_or(defaults.lap_gap_ms),
        result_buffer_rows: e
            .result_buffer_rows
            .or(fe.result_buffer_rows)
            .unwrap_or(defaults.result_buffer_rows),
        result_buffer_bytes: e
            .result_buffer_mb
            .or(fe.result_buffer_mb)
            .map_or(defaults.result_buffer_bytes, |mb| {
                mb.saturating_mul(1 << 20)
            }),
        result_channel_batches: defaults.result_channel_batches,
        tick: Duration::from_millis(batch_ms.clamp(5, 1000)),
    }
}

/// The archive: checkpoint interval, retention, compaction, housekeeping.
fn archive_config(a: &StorageArgs, fa: &StorageArgs) -> Result<crate::archive::ArchiveConfig> {
    let d = crate::archive::ArchiveConfig::default();
    let ms = |a: Option<u64>, b: Option<u64>, default: Duration| {
        a.or(b).map(Duration::from_millis).unwrap_or(default)
    };
    Ok(crate::archive::ArchiveConfig {
        checkpoint_interval: ms(a.checkpoint_ms, fa.checkpoint_ms, d.checkpoint_interval),
        retention: retention(a.retention_days.or(fa.retention_days))?,
        compact_min_files: a
            .compact_min_files
            .or(fa.compact_min_files)
            .unwrap_or(d.compact_min_files),
        compact_idle: a
            .compact_idle_secs
            .or(fa.compact_idle_secs)
            .map(Duration::from_secs)
            .unwrap_or(d.compact_idle),
        housekeeping_interval: ms(
            a.housekeeping_ms,
            fa.housekeeping_ms,
            d.housekeeping_interval,
        ),
        ..d
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

/// `--http-addr`: an address, `off`, or (unset) `127.0.0.1:8080`.
fn http_addr(value: Option<String>) -> Result<Option<SocketAddr>> {
    match value.as_deref().map(str::trim) {
        None => Ok(Some(SocketAddr::from(([127, 0, 0, 1], 8080)))),
        Some("off") => Ok(None),
        Some(a) => a.parse().map(Some).map_err(|e| {
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
    use clap::Parser;

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
            let err = match ServerArgs::try_parse_from(&argv) {
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
        let err = Config::resolve(ServerArgs::parse_from([
            "pitwall-server",
            "--config",
            path.to_str().unwrap(),
        ]))
        .expect_err("negative retention in TOML");
        assert!(err.to_string().contains("--retention-days -2"), "{err}");
    }

    #[test]
    fn the_example_file_is_valid_and_flags_override_it() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../pitwall.example.toml");
        let c = Config::resolve(ServerArgs::parse_from([
            "pitwall-server",
            "--config",
            path,
            "--lateness-ms",
            "250",
        ]))
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
            Config::resolve(ServerArgs::parse_from(argv))
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
        let c = Config::resolve(ServerArgs::parse_from(["pitwall-server"])).unwrap();
        assert!(c.kafka.is_none());
        assert!(!c.engine.watermark.require_assignment);
        assert_eq!(c.flight_addr.to_string(), "127.0.0.1:50051");
    }

    #[test]
    fn bad_settings_say_which() {
        let err = Config::resolve(ServerArgs::parse_from([
            "pitwall-server",
            "--kafka-opt",
            "nonsense",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
        let err = Config::resolve(ServerArgs::parse_from([
            "pitwall-server",
            "--tls-cert",
            "c.pem",
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("--tls-key"), "{err}");
    }
}
