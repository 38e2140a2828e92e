//! Reads a FastF1 CSV export (`{car}_telemetry.csv` files plus `laps.csv`) into canonical rows.
//!
//! Each sample's lap is the lap whose `[LapStartTime, Time)` holds its `SessionTime`; a car's
//! driver is its three-letter code from `laps.csv`, or the car number where `laps.csv` does not
//! name it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int8Array, Int32Array, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use arrow::record_batch::RecordBatch;
use pitwall_proto::schema::telemetry_schema;
use pitwall_proto::timedelta::parse_seconds;

/// One lap of one car, in session seconds.
#[derive(Debug, Clone, Copy)]
struct LapSpan {
    number: i32,
    start: f64,
    end: f64,
}

struct Laps {
    /// car number -> driver code
    drivers: HashMap<String, String>,
    /// car number -> laps sorted by start
    spans: HashMap<String, Vec<LapSpan>>,
}

#[derive(serde::Deserialize)]
struct LapRow {
    #[serde(rename = "Driver")]
    driver: Option<String>,
    #[serde(rename = "DriverNumber")]
    driver_number: Option<String>,
    #[serde(rename = "LapNumber")]
    lap_number: Option<f64>,
    #[serde(rename = "LapStartTime")]
    lap_start_time: Option<String>,
    #[serde(rename = "Time")]
    time: Option<String>,
}

fn read_laps(path: &Path) -> Result<Laps> {
    let mut reader =
        csv::Reader::from_path(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut drivers = HashMap::new();
    let mut spans: HashMap<String, Vec<LapSpan>> = HashMap::new();
    for (i, row) in reader.deserialize::<LapRow>().enumerate() {
        let line = i + 2;
        let row = row.map_err(|e| anyhow!("{}:{line}: {e}", path.display()))?;
        let Some(number) = row.driver_number.filter(|n| !n.is_empty()) else {
            bail!("{}:{line}: DriverNumber is empty", path.display());
        };
        if let Some(code) = row.driver.filter(|d| !d.is_empty()) {
            drivers.insert(number.clone(), code);
        }
        let (Some(lap), Some(start)) = (row.lap_number, row.lap_start_time) else {
            continue;
        };
        let start = parse_seconds(&start).ok_or_else(|| {
            anyhow!(
                "{}:{line}: LapStartTime {start:?} is not a timedelta",
                path.display()
            )
        })?;
        let end = match row.time.as_deref().filter(|t| !t.is_empty()) {
            Some(t) => parse_seconds(t).ok_or_else(|| {
                anyhow!("{}:{line}: Time {t:?} is not a timedelta", path.display())
            })?,
            None => f64::NAN, // filled from the next lap's start below
        };
        spans.entry(number).or_default().push(LapSpan {
            number: lap as i32,
            start,
            end,
        });
    }
    for laps in spans.values_mut() {
        laps.sort_by(|a, b| a.start.total_cmp(&b.start));
        for i in 0..laps.len() {
            if laps[i].end.is_nan() {
                laps[i].end = laps.get(i + 1).map(|l| l.start).unwrap_or(f64::NAN);
            }
        }
    }
    Ok(Laps { drivers, spans })
}

impl Laps {
    fn lap_at(&self, car: &str, session_time: f64) -> Option<i32> {
        let laps = self.spans.get(car)?;
        let idx = laps.partition_point(|l| l.start <= session_time);
        let lap = laps.get(idx.checked_sub(1)?)?;
        (session_time < lap.end).then_some(lap.number)
    }
}

/// The raw CSV columns of a FastF1 car-data export.
fn car_csv_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("index", DataType::Int64, true),
        Field::new(
            "Date",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("RPM", DataType::Float32, true),
        Field::new("Speed", DataType::Float32, true),
        Field::new("nGear", DataType::Int8, true),
        Field::new("Throttle", DataType::Float32, true),
        Field::new("Brake", DataType::Boolean, true),
        Field::new("DRS", DataType::Int8, true),
        Field::new("Source", DataType::Utf8, true),
        Field::new("Time", DataType::Utf8, true),
        Field::new("SessionTime", DataType::Utf8, false),
    ]))
}

/// Reads every `{car}_telemetry.csv` of `dir` with the laps of `dir/laps.csv`.
/// Returns one canonical batch per car.
pub fn read_dir(dir: &Path, session: &str) -> Result<Vec<RecordBatch>> {
    let laps_path = dir.join("laps.csv");
    let laps = read_laps(&laps_path)?;
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let car = name.strip_suffix("_telemetry.csv")?.to_string();
            Some((car, e.path()))
        })
        .collect();
    if files.is_empty() {
        bail!("{}: no {{car}}_telemetry.csv files", dir.display());
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    files
        .iter()
        .map(|(car, path)| read_car(path, car, session, &laps))
        .collect()
}

fn read_car(path: &Path, car: &str, session: &str, laps: &Laps) -> Result<RecordBatch> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let reader = arrow::csv::ReaderBuilder::new(car_csv_schema())
        .with_header(true)
        .with_batch_size(64 * 1024)
        .build(file)?;
    let driver = laps
        .drivers
        .get(car)
        .cloned()
        .unwrap_or_else(|| car.to_string());
    let mut out = Vec::new();
    let mut first_line = 2usize;
    for batch in reader {
        let batch = batch.map_err(|e| csv_error(path, &e.to_string()))?;
        out.push(to_canonical(
            &batch, path, first_line, &driver, car, session, laps,
        )?);
        first_line += batch.num_rows();
    }
    let schema = telemetry_schema();
    Ok(arrow::compute::concat_batches(&schema, &out)?)
}

fn to_canonical(
    raw: &RecordBatch,
    path: &Path,
    first_line: usize,
    driver: &str,
    car: &str,
    session: &str,
    laps: &Laps,
) -> Result<RecordBatch> {
    let n = raw.num_rows();
    let session_time_raw = raw
        .column_by_name("SessionTime")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .expect("schema has SessionTime as Utf8");
    let mut session_time = Vec::with_capacity(n);
    let mut lap = Vec::with_capacity(n);
    for i in 0..n {
        let s = session_time_raw.value(i);
        let t = parse_seconds(s).ok_or_else(|| {
            anyhow!(
                "{}:{}: SessionTime {s:?} is not a timedelta like '0 days 01:02:08.731000'",
                path.display(),
                first_line + i
            )
        })?;
        session_time.push(t);
        lap.push(laps.lap_at(car, t));
    }
    let col = |name: &str| raw.column_by_name(name).expect("raw schema column").clone();
    let date = col("Date");
    let date = date
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .expect("Date is timestamp(ms)")
        .clone()
        .with_timezone("UTC");
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![session; n])),
        Arc::new(StringArray::from(vec![driver; n])),
        Arc::new(Int32Array::from(lap)),
        Arc::new(date),
        Arc::new(Float64Array::from(session_time)),
        col("Speed"),
        col("RPM"),
        col("nGear"),
        col("Throttle"),
        col("Brake"),
        col("DRS"),
        Arc::new(Float32Array::new_null(n)),
        Arc::new(Float32Array::new_null(n)),
        Arc::new(Float32Array::new_null(n)),
        Arc::new(Float64Array::new_null(n)),
    ];
    debug_assert!(columns[9].as_any().downcast_ref::<BooleanArray>().is_some());
    debug_assert!(columns[10].as_any().downcast_ref::<Int8Array>().is_some());
    debug_assert!(columns.iter().all(|c| c.len() == n));
    Ok(RecordBatch::try_new(telemetry_schema(), columns)?)
}

/// `FILE:LINE: problem` from an arrow-csv error, whose "at line N" counts from 0 (the header).
fn csv_error(path: &Path, message: &str) -> anyhow::Error {
    let message = message.trim_start_matches("Parser error: ");
    if let Some(at) = message.find(" at line ") {
        let rest = &message[at + 9..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if let Ok(n) = digits.parse::<usize>() {
            let head = &message[..at];
            let tail = rest[digits.len()..]
                .split(". Row data")
                .next()
                .unwrap_or("")
                .trim_start_matches(':')
                .trim();
            let sep = if tail.is_empty() { "" } else { ": " };
            return anyhow!("{}:{}: {head}{sep}{tail}", path.display(), n + 1);
        }
    }
    anyhow!("{}: {message}", path.display())
}
