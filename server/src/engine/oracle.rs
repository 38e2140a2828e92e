//! The oracle for continuous queries: the same SQL run in batch by DataFusion over all the
//! rows at once. A continuous query's emitted rows, concatenated and sorted, must equal this.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::definition::{QueryDef, literal_text};
use super::functions;
use crate::error::Result;

/// Runs query `name` in batch over `rows` (the `telemetry` table); `queries` are all the
/// definitions, registered as views so that chained queries read their inputs.
pub async fn batch_result(
    queries: &[QueryDef],
    name: &str,
    rows: &RecordBatch,
) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    functions::register(&ctx);
    let table = MemTable::try_new(rows.schema(), vec![vec![rows.clone()]])?;
    ctx.register_table("telemetry", Arc::new(table))?;
    for q in queries {
        let mut sql = q.sql.clone();
        // Longest names first, so that $threshold_hi is not cut by $threshold.
        let mut params: Vec<_> = q.params.iter().collect();
        params.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        for (k, v) in params {
            sql = sql.replace(&format!("${k}"), &literal_text(v));
        }
        ctx.sql(&format!("CREATE VIEW {} AS {}", q.name, sql))
            .await?;
    }
    Ok(ctx
        .sql(&format!("SELECT * FROM {name}"))
        .await?
        .collect()
        .await?)
}

/// Rows as sorted text lines, floats rounded to 7 significant digits, for comparing results
/// computed in different orders.
pub fn canonical_rows(batches: &[RecordBatch]) -> Vec<String> {
    let batches: Vec<RecordBatch> = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .cloned()
        .collect();
    if batches.is_empty() {
        return vec![];
    }
    let text = match pretty_format_batches(&batches) {
        Ok(t) => t.to_string(),
        Err(e) => return vec![format!("unprintable: {e}")],
    };
    let mut lines: Vec<String> = text
        .lines()
        .skip(3)
        .filter(|l| l.starts_with('|'))
        .map(round_floats)
        .collect();
    lines.sort();
    lines
}

fn round_floats(line: &str) -> String {
    line.split('|')
        .map(|cell| {
            let t = cell.trim();
            match t.parse::<f64>() {
                Ok(v) if t.contains('.') || t.contains('e') => format!("{v:.6e}"),
                _ => t.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Panics with the row counts and the first differing rows, not whole results.
pub fn assert_same_rows(name: &str, streamed: &[String], batch: &[String]) {
    if streamed == batch {
        return;
    }
    let only_s: Vec<&String> = streamed
        .iter()
        .filter(|r| !batch.contains(r))
        .take(5)
        .collect();
    let only_b: Vec<&String> = batch
        .iter()
        .filter(|r| !streamed.contains(r))
        .take(5)
        .collect();
    panic!(
        "{name}: streamed {} rows, batch {} rows\nonly streamed: {only_s:#?}\nonly batch: {only_b:#?}",
        streamed.len(),
        batch.len()
    );
}

/// The bundled race cut to laps 1..=`last_lap` (and the samples before the start).
pub fn race_laps(last_lap: i32) -> Result<RecordBatch> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Int32Type;
    let all = crate::ingest::embedded::bundled_session()?;
    let lap = all
        .column_by_name("lap")
        .expect("canonical")
        .as_primitive::<Int32Type>();
    let keep = lap
        .iter()
        .map(|l| Some(l.is_none_or(|l| l <= last_lap)))
        .collect();
    Ok(datafusion::arrow::compute::filter_record_batch(
        &all, &keep,
    )?)
}

/// Moves rows around within `within_ms` of event time, deterministically (a network's
/// reordering, within the allowed lateness when `within_ms` is below it).
pub fn shuffle(rows: &RecordBatch, within_ms: i64) -> Result<RecordBatch> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::TimestampMillisecondType;
    let ts = rows
        .column_by_name("ts")
        .expect("canonical")
        .as_primitive::<TimestampMillisecondType>();
    let mut keyed: Vec<(i64, u32)> = (0..rows.num_rows())
        .map(|i| {
            (
                (ts.value(i)
                    + ((i as u64).wrapping_mul(2_654_435_761) % within_ms.max(1) as u64) as i64),
                i as u32,
            )
        })
        .collect();
    keyed.sort();
    let idx = datafusion::arrow::array::UInt32Array::from(
        keyed.into_iter().map(|(_, i)| i).collect::<Vec<_>>(),
    );
    Ok(datafusion::arrow::compute::take_record_batch(rows, &idx)?)
}

/// The engine settings [`stream`] runs with: 1 s of lateness, idle after 500 ms.
pub fn engine_config() -> crate::engine::EngineConfig {
    use crate::engine::{EngineConfig, WatermarkConfig};
    EngineConfig {
        watermark: WatermarkConfig {
            lateness_ms: 1_000,
            idle_timeout: std::time::Duration::from_millis(500),
            require_assignment: false,
        },
        lap_gap_ms: 10_000,
        ..EngineConfig::default()
    }
}

/// Streams `rows` (in their order) through a fresh engine running `queries`, in micro-batches
/// of `batch_ms` of event time, then lets the input go idle until every window has closed.
/// Returns what each query emitted.
pub async fn stream(
    queries: &[QueryDef],
    rows: &RecordBatch,
    batch_ms: i64,
) -> Result<std::collections::HashMap<String, Vec<RecordBatch>>> {
    stream_observed(queries, rows, batch_ms, |_| {}).await
}

/// [`stream`], calling `observe` with the engine after every step.
pub async fn stream_observed(
    queries: &[QueryDef],
    rows: &RecordBatch,
    batch_ms: i64,
    mut observe: impl FnMut(&crate::engine::Engine),
) -> Result<std::collections::HashMap<String, Vec<RecordBatch>>> {
    use std::time::{Duration, Instant};

    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::TimestampMillisecondType;

    use crate::engine::Engine;

    let mut engine = Engine::new(engine_config())?;
    for q in queries {
        engine.submit(q.clone()).await?;
    }
    let mut out: std::collections::HashMap<String, Vec<RecordBatch>> =
        queries.iter().map(|q| (q.name.clone(), vec![])).collect();
    let ts = rows
        .column_by_name("ts")
        .expect("canonical")
        .as_primitive::<TimestampMillisecondType>()
        .clone();
    let mut now = Instant::now();
    let mut pos = 0;
    while pos < rows.num_rows() {
        let start = ts.value(pos);
        let mut end = pos;
        while end < rows.num_rows() && ts.value(end) < start + batch_ms {
            end += 1;
        }
        let b = micro_batch(rows, pos, end, now);
        now += Duration::from_millis(batch_ms as u64);
        for (name, batches) in engine.step(Some(&b), now).await {
            out.entry(name).or_default().extend(batches);
        }
        observe(&engine);
        pos = end;
    }
    // The input stops: the watermark advances with processing time until everything closed.
    for _ in 0..40 {
        now += Duration::from_millis(500);
        for (name, batches) in engine.step(None, now).await {
            out.entry(name).or_default().extend(batches);
        }
    }
    Ok(out)
}

/// `rows[pos..end]` as one micro-batch of partition 0 of topic `oracle` (offsets: row indices).
pub fn micro_batch(
    rows: &RecordBatch,
    pos: usize,
    end: usize,
    ready_at: std::time::Instant,
) -> crate::ingest::MicroBatch {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::TimestampMillisecondType;
    let ts = rows
        .column_by_name("ts")
        .expect("canonical")
        .as_primitive::<TimestampMillisecondType>();
    crate::ingest::MicroBatch {
        topic: "oracle".into(),
        rows: rows.slice(pos, end - pos),
        partitions: vec![crate::ingest::PartitionSlice {
            partition: 0,
            first_offset: pos as i64,
            last_offset: end as i64 - 1,
            max_ts: ts.values()[pos..end].iter().copied().max(),
            drivers: Vec::new(),
        }],
        assigned: None,
        caught_up: vec![0],
        caught_up_confirmed: None,
        dead_letters: Vec::new(),
        ready_at,
        handover: None,
    }
}
