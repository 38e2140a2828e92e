//! Recorded sessions to replay: the bundled one, a FastF1 CSV export, or a file in our schema.
//!
//! Every loader returns a [`Session`]: all rows in the canonical schema, sorted by event time,
//! fully read and checked before anything is published.

pub mod fastf1;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::compute::{
    SortColumn, concat_batches, filter_record_batch, lexsort_to_indices, take_record_batch,
};
use arrow::datatypes::Int32Type;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pitwall_proto::schema::{col, telemetry_schema};

pub use pitwall_proto::bundled::NAME as BUNDLED_NAME;

/// A recorded session in the canonical schema, sorted by `ts` then `driver`.
#[derive(Debug, Clone)]
pub struct Session {
    pub name: String,
    pub rows: RecordBatch,
}

impl Session {
    /// The bundled session: the 2023 British GP race, all 20 cars, from 30 s before the start
    /// to the chequered flag (see data/PROVENANCE.md), read from its file at run time (GPL-3.0
    /// data stays out of the binary; see [`pitwall_proto::bundled`]).
    pub fn bundled() -> Result<Self> {
        let bytes = pitwall_proto::bundled::read().map_err(|e| anyhow!(e))?;
        let rows = read_parquet_bytes(Bytes::from(bytes), "bundled session")?;
        Self::new(BUNDLED_NAME.to_string(), rows)
    }

    /// A FastF1 CSV export directory; the session is named after the directory unless given.
    pub fn from_dir(dir: &Path, name: Option<String>) -> Result<Self> {
        if !dir.is_dir() {
            bail!("{}: no such directory", dir.display());
        }
        let name = match name {
            Some(n) => n,
            None => dir
                .canonicalize()
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()))
                .ok_or_else(|| {
                    anyhow!("{}: cannot name the session; pass --session", dir.display())
                })?,
        };
        let batches = fastf1::read_dir(dir, &name)?;
        let rows = concat_batches(&telemetry_schema(), &batches)?;
        Self::new(name, rows)
    }

    /// A JSONL or Parquet file in the canonical schema (by extension).
    pub fn from_file(path: &Path, name: Option<String>) -> Result<Self> {
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let rows = match ext {
            "parquet" => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("{}: cannot read", path.display()))?;
                read_parquet_bytes(Bytes::from(bytes), &path.display().to_string())?
            }
            "jsonl" | "json" | "ndjson" => read_jsonl(path)?,
            _ => bail!(
                "{}: unknown file type; use .parquet or .jsonl",
                path.display()
            ),
        };
        let mut session = Self::new(String::new(), rows)?;
        session.name = match name {
            Some(n) => n,
            None => session.first_session_name().unwrap_or_else(|| {
                path.file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            }),
        };
        Ok(session)
    }

    fn new(name: String, rows: RecordBatch) -> Result<Self> {
        let rows = sort_by_time(&rows)?;
        Ok(Self { name, rows })
    }

    fn first_session_name(&self) -> Option<String> {
        let s = self
            .rows
            .column_by_name(col::SESSION)?
            .as_any()
            .downcast_ref::<StringArray>()?;
        (!s.is_empty()).then(|| s.value(0).to_string())
    }

    /// Replaces the `session` column by this session's name (used with `--session`).
    pub fn renamed(mut self, name: &str) -> Result<Self> {
        let n = self.rows.num_rows();
        let idx = self.rows.schema().index_of(col::SESSION)?;
        let mut cols: Vec<ArrayRef> = self.rows.columns().to_vec();
        cols[idx] = Arc::new(StringArray::from(vec![name; n]));
        self.rows = RecordBatch::try_new(self.rows.schema(), cols)?;
        self.name = name.to_string();
        Ok(self)
    }

    /// Keeps rows from `lead_in_ms` before the first sample of lap `lo` to the last sample of
    /// lap `hi`.
    pub fn cut_laps(mut self, lo: i32, hi: i32, lead_in_ms: i64) -> Result<Self> {
        let rows = &self.rows;
        let lap = rows
            .column_by_name(col::LAP)
            .expect("lap")
            .as_primitive::<Int32Type>();
        let ts = self.ts();
        let first = lap
            .iter()
            .zip(ts.values())
            .filter(|(l, _)| *l == Some(lo))
            .map(|(_, t)| *t)
            .min();
        let last = lap
            .iter()
            .zip(ts.values())
            .filter(|(l, _)| *l == Some(hi))
            .map(|(_, t)| *t)
            .max();
        let (Some(first), Some(last)) = (first, last) else {
            bail!("laps {lo}-{hi} are not in session {}", self.name);
        };
        let keep: BooleanArray = ts
            .values()
            .iter()
            .map(|t| Some(*t >= first - lead_in_ms && *t <= last))
            .collect();
        self.rows = filter_record_batch(rows, &keep)?;
        Ok(self)
    }

    /// Event-time span (first, last) in ms.
    pub fn time_span(&self) -> Option<(i64, i64)> {
        let ts = self.ts();
        (!ts.is_empty()).then(|| (ts.value(0), ts.value(ts.len() - 1)))
    }

    pub fn ts(&self) -> &TimestampMillisecondArray {
        self.rows
            .column_by_name(col::TS)
            .and_then(|c| c.as_any().downcast_ref::<TimestampMillisecondArray>())
            .expect("canonical schema has ts")
    }

    pub fn drivers(&self) -> Vec<String> {
        let d = self
            .rows
            .column_by_name(col::DRIVER)
            .expect("driver column");
        let d = d
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("driver is utf8");
        let mut v: Vec<String> = d.iter().flatten().map(str::to_string).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Casts a batch read from a file to the canonical schema, naming what does not fit.
pub fn to_canonical(batch: &RecordBatch, source: &str) -> Result<RecordBatch> {
    let schema: SchemaRef = telemetry_schema();
    let mut cols = Vec::with_capacity(schema.fields().len());
    for field in schema.fields() {
        let column = match batch.column_by_name(field.name()) {
            Some(c) => arrow::compute::cast(c, field.data_type()).map_err(|e| {
                anyhow!(
                    "{source}: column {} cannot be read as {}: {e}",
                    field.name(),
                    field.data_type()
                )
            })?,
            None if field.is_nullable() => {
                arrow::array::new_null_array(field.data_type(), batch.num_rows())
            }
            None => bail!("{source}: required column {} is missing", field.name()),
        };
        if !field.is_nullable() && column.null_count() > 0 {
            bail!(
                "{source}: column {} has null values but is required",
                field.name()
            );
        }
        cols.push(column);
    }
    Ok(RecordBatch::try_new(schema, cols)?)
}

fn read_parquet_bytes(bytes: Bytes, source: &str) -> Result<RecordBatch> {
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| anyhow!("{source}: not a readable Parquet file: {e}"))?
        .with_batch_size(64 * 1024)
        .build()?;
    let mut out = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| anyhow!("{source}: {e}"))?;
        out.push(to_canonical(&batch, source)?);
    }
    Ok(concat_batches(&telemetry_schema(), &out)?)
}

fn read_jsonl(path: &Path) -> Result<RecordBatch> {
    const CHUNK: usize = 64 * 1024;
    let source = path.display().to_string();
    let text = std::fs::read(path).with_context(|| format!("{source}: cannot read"))?;
    let lines: Vec<(usize, &[u8])> = text
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    let mut out = Vec::new();
    for chunk in lines.chunks(CHUNK) {
        match decode_json_lines(chunk, &source)? {
            Ok(batch) => out.push(batch),
            // A value of the wrong type only shows when the rows are built: find its line.
            Err(e) => {
                for line in chunk {
                    if let Err(e) = decode_json_lines(std::slice::from_ref(line), &source)? {
                        bail!("{source}:{}: {e}", line.0);
                    }
                }
                bail!("{source}: {e}");
            }
        }
    }
    Ok(concat_batches(&telemetry_schema(), &out)?)
}

/// Decodes numbered JSON lines; the outer error names a malformed line, the inner one is a
/// conversion error of the chunk as a whole.
fn decode_json_lines(
    lines: &[(usize, &[u8])],
    source: &str,
) -> Result<std::result::Result<RecordBatch, arrow::error::ArrowError>> {
    let schema = telemetry_schema();
    let mut decoder = arrow::json::ReaderBuilder::new(schema.clone())
        .with_batch_size(lines.len().max(1))
        .build_decoder()?;
    for (n, line) in lines {
        let before = decoder.len();
        decoder
            .decode(line)
            .map_err(|e| anyhow!("{source}:{n}: {e}"))?;
        if decoder.has_partial_record() || decoder.len() != before + 1 {
            bail!("{source}:{n}: expected exactly one complete JSON object");
        }
    }
    Ok(decoder
        .flush()
        .map(|b| b.unwrap_or_else(|| RecordBatch::new_empty(schema))))
}

fn sort_by_time(rows: &RecordBatch) -> Result<RecordBatch> {
    let cols = [col::TS, col::DRIVER]
        .iter()
        .map(|c| SortColumn {
            values: rows.column_by_name(c).expect("canonical column").clone(),
            options: None,
        })
        .collect::<Vec<_>>();
    let idx = lexsort_to_indices(&cols, None)?;
    Ok(take_record_batch(rows, &idx)?)
}

/// Parses `FIRST-LAST` (e.g. `1-8`).
pub fn parse_lap_range(range: &str) -> Result<(i32, i32)> {
    range
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<i32>().ok()?, b.trim().parse::<i32>().ok()?)))
        .filter(|(a, b)| a <= b)
        .ok_or_else(|| anyhow!("lap range {range:?}: expected FIRST-LAST, e.g. 1-8"))
}
