//! `pitwall convert`: turns a FastF1 export (or a JSONL/Parquet file) into one Parquet file in
//! the Pitwall schema, optionally cut to a range of laps. This is how `data/` was made.

use std::path::PathBuf;

use crate::session::{Session, parse_lap_range};
use anyhow::{Context, Result, bail};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

#[derive(Debug, Clone, clap::Args)]
pub struct ConvertArgs {
    /// A FastF1 CSV export directory ({car}_telemetry.csv files plus laps.csv).
    #[arg(long, conflicts_with = "file")]
    pub dir: Option<PathBuf>,
    /// A JSONL or Parquet file in the Pitwall schema.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Session name (default: the directory name).
    #[arg(long)]
    pub session: Option<String>,
    /// Keep only laps FIRST-LAST (e.g. 1-8), from `--lead-in` seconds before the first
    /// lap's start to the last sample of the last lap.
    #[arg(long, value_name = "FIRST-LAST")]
    pub laps: Option<String>,
    /// Seconds of samples kept before the first lap's start (with --laps).
    #[arg(long, default_value_t = 30.0)]
    pub lead_in: f64,
    /// Output Parquet file.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &ConvertArgs) -> Result<String> {
    let session = match (&args.dir, &args.file) {
        (Some(dir), _) => Session::from_dir(dir, args.session.clone())?,
        (None, Some(file)) => Session::from_file(file, args.session.clone())?,
        (None, None) => bail!("give --dir or --file"),
    };
    let session = match &args.laps {
        Some(range) => {
            let (lo, hi) = parse_lap_range(range)?;
            session.cut_laps(lo, hi, (args.lead_in * 1000.0) as i64)?
        }
        None => session,
    };
    let rows = &session.rows;
    write_parquet(rows, &args.out)?;
    let size = std::fs::metadata(&args.out)?.len();
    Ok(format!(
        "wrote {} rows of session {} ({} drivers) to {} ({} bytes)",
        rows.num_rows(),
        session.name,
        session.drivers().len(),
        args.out.display(),
        size
    ))
}

/// Writes `rows` as one Parquet file (zstd level 19: a race is ~1.6 MB).
pub fn write_parquet(rows: &arrow::array::RecordBatch, out: &std::path::Path) -> Result<()> {
    let file =
        std::fs::File::create(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(19)?))
        .build();
    let mut writer = ArrowWriter::try_new(file, rows.schema(), Some(props))?;
    writer.write(rows)?;
    writer.close()?;
    Ok(())
}
