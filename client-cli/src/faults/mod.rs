//! `pitwall faults`: labelled faults injected into a real session (`inject`), and the detectors'
//! alerts scored against the labels (`score`).
//!
//! The loop an engineer runs to know how good the detectors are:
//!
//! ```sh
//! pitwall faults inject --seed 1 --out /tmp/s1.parquet        # the bundled race, broken
//! PITWALL_BUNDLED=/tmp/s1.parquet pitwall-server --embedded-once --embedded-speed 1000 &
//! pitwall faults score --labels /tmp/s1.labels.json           # waits for the archive
//! ```
//!
//! `score` reads what the server's queries emitted from its archive (`archive.results_alerts`, and
//! `archive.lap_anomaly` with `archive.lap_stats` for the old score), so it works against any
//! server that has archived the session, and prints per fault kind what [`score`] defines.

pub mod score;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int32Type, Int64Type};
use pitwall_proto::faults::{self, Kind, Labels};

use crate::client::Client;
use crate::session::{Session, parse_lap_range};
use score::{Alert, LapScore, Report};

#[derive(Debug, clap::Subcommand)]
pub enum FaultsCommand {
    /// Write a copy of a session with labelled faults, and its labels file.
    Inject(InjectArgs),
    /// Score the alerts a server archived for a faulty session against its labels.
    Score(ScoreArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// A FastF1 CSV export directory (default: the bundled race).
    #[arg(long, conflicts_with = "file")]
    pub dir: Option<PathBuf>,
    /// A JSONL or Parquet file in the Pitwall schema.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Keep only laps FIRST-LAST (e.g. 1-20) before injecting.
    #[arg(long, value_name = "FIRST-LAST")]
    pub laps: Option<String>,
    /// Seed: the same seed gives the same faults.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Faults of each kind.
    #[arg(long, default_value_t = 4)]
    pub per_kind: usize,
    /// Kinds to inject, comma-separated (default: all eight).
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Name of the faulty session (default: the input's, with "-faults-s<seed>").
    #[arg(long)]
    pub session: Option<String>,
    /// Output Parquet file.
    #[arg(long)]
    pub out: PathBuf,
    /// Labels file (default: beside --out, as NAME.labels.json).
    #[arg(long)]
    pub labels: Option<PathBuf>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    /// The labels file `faults inject` wrote.
    #[arg(long)]
    pub labels: PathBuf,
    /// Seconds to wait for the archive to hold the whole session and its results.
    #[arg(long, default_value_t = 600)]
    pub wait: u64,
    /// Skip the old lap_anomaly score (a server that does not run it).
    #[arg(long)]
    pub no_baseline: bool,
    /// One JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The labels file written beside `out` when none is named.
pub fn labels_path(out: &Path) -> PathBuf {
    out.with_extension("labels.json")
}

pub fn inject(args: &InjectArgs) -> Result<String> {
    let session = match (&args.dir, &args.file) {
        (Some(dir), _) => Session::from_dir(dir, None)?,
        (None, Some(file)) => Session::from_file(file, None)?,
        (None, None) => Session::bundled()?,
    };
    let session = match &args.laps {
        Some(range) => {
            let (lo, hi) = parse_lap_range(range)?;
            session.cut_laps(lo, hi, 30_000)?
        }
        None => session,
    };
    let kinds = if args.kinds.is_empty() {
        Kind::ALL.to_vec()
    } else {
        args.kinds
            .iter()
            .map(|k| {
                Kind::parse(k.trim()).ok_or_else(|| {
                    let all: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                    anyhow!("unknown fault kind {k:?}: one of {}", all.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let name = args
        .session
        .clone()
        .unwrap_or_else(|| format!("{}-faults-s{}", session.name, args.seed));
    let opts = faults::Options {
        seed: args.seed,
        per_kind: args.per_kind,
        kinds,
        session: Some(name),
    };
    let (rows, labels) = faults::inject(&session.rows, &opts).map_err(|e| anyhow!(e))?;
    crate::convert::write_parquet(&rows, &args.out)?;
    let labels_file = args
        .labels
        .clone()
        .unwrap_or_else(|| labels_path(&args.out));
    std::fs::write(&labels_file, serde_json::to_vec_pretty(&labels)?)
        .with_context(|| format!("{}: cannot write", labels_file.display()))?;
    Ok(format!(
        "wrote {} rows of session {} with {} faults (seed {}) to {}, labels to {}",
        rows.num_rows(),
        labels.session,
        labels.faults.len(),
        labels.seed,
        args.out.display(),
        labels_file.display()
    ))
}

pub async fn score_cmd(client: &mut Client, args: &ScoreArgs) -> Result<Report> {
    let labels: Labels = serde_json::from_slice(
        &std::fs::read(&args.labels)
            .with_context(|| format!("{}: cannot read", args.labels.display()))?,
    )
    .with_context(|| format!("{}: not a labels file", args.labels.display()))?;
    wait_for_archive(client, &labels, Duration::from_secs(args.wait)).await?;
    let alerts = read_alerts(client, &labels.session).await?;
    let laps = if args.no_baseline {
        None
    } else {
        Some(read_lap_scores(client, &labels.session).await?)
    };
    Ok(score::score(&labels, &alerts, laps.as_deref()))
}

fn quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

async fn count(client: &mut Client, sql: &str) -> Result<i64> {
    let batches = client.sql(sql).await?;
    Ok(batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .map_or(0, |b| b.column(0).as_primitive::<Int64Type>().value(0)))
}

/// Until the archive has every row of the session and the results stopped changing (three
/// polls, a checkpoint interval or more apart).
async fn wait_for_archive(client: &mut Client, labels: &Labels, wait: Duration) -> Result<()> {
    let s = quoted(&labels.session);
    let deadline = Instant::now() + wait;
    let rows = format!("SELECT count(*) FROM archive.telemetry WHERE session = {s}");
    let results = format!(
        "SELECT (SELECT count(*) FROM archive.results_alerts WHERE session = {s}) \
         + (SELECT count(*) FROM archive.results_lap_stats WHERE session = {s})"
    );
    let (mut last, mut same) = (-1i64, 0);
    loop {
        let archived = count(client, &rows).await.unwrap_or(0);
        if archived as usize >= labels.rows {
            let n = count(client, &results).await.unwrap_or(-1);
            same = if n == last { same + 1 } else { 0 };
            last = n;
            if same >= 2 {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "after {} s the archive holds {archived} of the session's {} rows",
                wait.as_secs(),
                labels.rows
            );
        }
        tokio::time::sleep(Duration::from_secs(4)).await;
    }
}

async fn read_alerts(client: &mut Client, session: &str) -> Result<Vec<Alert>> {
    let sql = format!(
        "SELECT arrow_cast(driver, 'Utf8') AS driver, lap, arrow_cast(ts, 'Int64') AS ts, \
         arrow_cast(kind, 'Utf8') AS kind FROM archive.results_alerts WHERE session = {}",
        quoted(session)
    );
    let mut out = Vec::new();
    for b in client.sql(&sql).await? {
        let (driver, lap, ts, kind) = columns4(&b)?;
        for i in 0..b.num_rows() {
            out.push(Alert {
                driver: driver.value(i).to_string(),
                lap: lap.is_valid(i).then(|| lap.value(i)),
                ts_ms: ts.value(i),
                kind: kind.value(i).to_string(),
            });
        }
    }
    Ok(out)
}

type Columns4<'a> = (
    &'a arrow::array::StringArray,
    &'a arrow::array::Int32Array,
    &'a arrow::array::Int64Array,
    &'a arrow::array::StringArray,
);

fn columns4(b: &RecordBatch) -> Result<Columns4<'_>> {
    let bad = || {
        anyhow!(
            "archive.results_alerts: unexpected column types {:?}",
            b.schema()
        )
    };
    Ok((
        b.column(0).as_string_opt::<i32>().ok_or_else(bad)?,
        b.column(1)
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(bad)?,
        b.column(2)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(bad)?,
        b.column(3).as_string_opt::<i32>().ok_or_else(bad)?,
    ))
}

async fn read_lap_scores(client: &mut Client, session: &str) -> Result<Vec<LapScore>> {
    let sql = format!(
        "SELECT arrow_cast(a.driver, 'Utf8') AS driver, a.lap, \
         arrow_cast(a.anomaly_score, 'Float64') AS score, \
         arrow_cast(s.last_sample, 'Int64') AS end_ms \
         FROM archive.results_lap_anomaly a JOIN archive.results_lap_stats s \
         ON a.session = s.session AND a.driver = s.driver AND a.lap = s.lap \
         WHERE a.session = {}",
        quoted(session)
    );
    let mut out = Vec::new();
    for b in client.sql(&sql).await? {
        let bad = || anyhow!("lap scores: unexpected column types {:?}", b.schema());
        let driver = b.column(0).as_string_opt::<i32>().ok_or_else(bad)?;
        let lap = b
            .column(1)
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(bad)?;
        let score = b
            .column(2)
            .as_primitive_opt::<Float64Type>()
            .ok_or_else(bad)?;
        let end = b
            .column(3)
            .as_primitive_opt::<Int64Type>()
            .ok_or_else(bad)?;
        for i in 0..b.num_rows() {
            out.push(LapScore {
                driver: driver.value(i).to_string(),
                lap: lap.value(i),
                score: score.is_valid(i).then(|| score.value(i)),
                end_ms: end.value(i),
            });
        }
    }
    Ok(out)
}

/// The report as tables: the detectors per kind, then the old score beside them.
pub fn print(r: &Report) {
    println!(
        "session {} (seed {}): {:.1} car-hours outside faults, {} false alerts ({:.2} per car-hour)",
        r.session, r.seed, r.car_hours, r.false_alerts, r.false_per_car_hour
    );
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::ASCII_MARKDOWN);
    t.set_header(vec![
        "kind",
        "faults",
        "found",
        "recall",
        "precision",
        "alerts",
        "median delay s",
        "in time",
        "old: recall",
        "old: delay s",
    ]);
    for k in &r.kinds {
        let old = r
            .baseline
            .as_ref()
            .and_then(|b| b.kinds.iter().find(|o| o.kind == k.kind));
        t.add_row(vec![
            k.kind.clone(),
            k.faults.to_string(),
            k.found.to_string(),
            format!("{:.2}", k.recall),
            pct(k.precision),
            k.alerts.to_string(),
            secs(k.median_delay_s),
            format!("{}/{}", k.in_time, k.found),
            old.map_or("-".into(), |o| format!("{:.2}", o.recall)),
            old.map_or("-".into(), |o| secs(o.median_delay_s)),
        ]);
    }
    println!("{t}");
    if let Some(b) = &r.baseline {
        println!(
            "old lap_anomaly score at its best threshold {:.1}: {} laps flagged, precision {}, {:.2} false flags per car-hour",
            b.threshold,
            b.flagged_laps,
            pct(b.precision),
            b.false_per_car_hour
        );
    }
}
