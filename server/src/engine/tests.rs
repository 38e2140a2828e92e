//! The engine against its oracle: every shipped query, streamed over the bundled session in
//! micro-batches, emits exactly what the same SQL returns in batch over the whole data.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Int32Type, TimestampMillisecondType};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::*;
use crate::ingest::{MicroBatch, PartitionSlice};

/// The bundled session cut to laps <= `max_lap` (plus the samples before lap 1).
pub fn session_laps(max_lap: i32) -> RecordBatch {
    let all = crate::ingest::embedded::bundled_session().unwrap();
    let lap = all
        .column_by_name("lap")
        .unwrap()
        .as_primitive::<Int32Type>();
    let keep = lap
        .iter()
        .map(|l| Some(l.is_none_or(|l| l <= max_lap)))
        .collect();
    let rows = filter_record_batch(&all, &keep).unwrap();
    // drop the null-lap rows after the race (none) and keep the pre-start ones
    rows
}

/// Runs `sql` in batch over `rows` (with the other queries as views, for chaining).
pub async fn batch_result(
    queries: &[QueryDef],
    name: &str,
    rows: &RecordBatch,
) -> Vec<RecordBatch> {
    let ctx = SessionContext::new();
    super::functions::register(&ctx);
    let table = MemTable::try_new(rows.schema(), vec![vec![rows.clone()]]).unwrap();
    ctx.register_table("telemetry", Arc::new(table)).unwrap();
    for q in queries {
        let mut sql = q.sql.clone();
        for (k, v) in &q.params {
            sql = sql.replace(&format!("${k}"), &definition::literal_text(v));
        }
        ctx.sql(&format!("CREATE VIEW {} AS {}", q.name, sql))
            .await
            .unwrap();
    }
    ctx.sql(&format!("SELECT * FROM {name}"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap()
}

/// Sorted, pretty-printed rows (floats rounded) for comparison.
pub fn canonical_text(batches: &[RecordBatch]) -> Vec<String> {
    if batches.is_empty() {
        return vec![];
    }
    let text = pretty_format_batches(batches).unwrap().to_string();
    let mut lines: Vec<String> = text
        .lines()
        .skip(3)
        .filter(|l| l.starts_with('|'))
        .map(|l| round_floats(l))
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

/// Streams `rows` through a fresh engine in micro-batches of `batch_ms` of event time.
pub async fn stream_result(
    queries: &[QueryDef],
    rows: &RecordBatch,
    batch_ms: i64,
    shuffle_within_ms: i64,
) -> HashMap<String, Vec<RecordBatch>> {
    let config = EngineConfig {
        watermark: WatermarkConfig {
            lateness_ms: 1_000,
            idle_timeout: Duration::from_millis(500),
        },
        lap_gap_ms: 10_000,
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(config).unwrap();
    for q in queries {
        engine.submit(q.clone()).await.unwrap();
    }
    let mut out: HashMap<String, Vec<RecordBatch>> =
        queries.iter().map(|q| (q.name.clone(), vec![])).collect();
    let mut collect = |step: StepOutput| {
        for (name, batches) in step {
            out.get_mut(&name).unwrap().extend(batches);
        }
    };
    let rows = if shuffle_within_ms > 0 {
        shuffle(rows, shuffle_within_ms)
    } else {
        rows.clone()
    };
    let ts = rows
        .column_by_name("ts")
        .unwrap()
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
        let slice = rows.slice(pos, end - pos);
        let max_ts = ts.values()[pos..end].iter().copied().max();
        let b = MicroBatch {
            topic: "t".into(),
            rows: slice,
            partitions: vec![PartitionSlice {
                partition: 0,
                first_offset: pos as i64,
                last_offset: end as i64 - 1,
                max_ts,
            }],
            ready_at: now,
        };
        now += Duration::from_millis(batch_ms as u64);
        collect(engine.step(Some(&b), now).await);
        pos = end;
    }
    // Input stops: the watermark advances with processing time until everything closed.
    for _ in 0..40 {
        now += Duration::from_millis(500);
        collect(engine.step(None, now).await);
    }
    out
}

/// Moves rows around within `within_ms` of event time, deterministically.
fn shuffle(rows: &RecordBatch, within_ms: i64) -> RecordBatch {
    let ts = rows
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    let mut keyed: Vec<(i64, u32)> = (0..rows.num_rows())
        .map(|i| {
            let jitter = ((i as u64).wrapping_mul(2654435761) % within_ms as u64) as i64;
            (ts.value(i) + jitter, i as u32)
        })
        .collect();
    keyed.sort();
    let idx = datafusion::arrow::array::UInt32Array::from(
        keyed.into_iter().map(|(_, i)| i).collect::<Vec<_>>(),
    );
    datafusion::arrow::compute::take_record_batch(rows, &idx).unwrap()
}

fn shipped() -> Vec<QueryDef> {
    crate::initial_queries(None).unwrap()
}

#[tokio::test]
async fn streaming_equals_batch_for_every_shipped_query() {
    let rows = session_laps(3);
    let queries = shipped();
    let streamed = stream_result(&queries, &rows, 50, 0).await;
    for q in &queries {
        let batch = batch_result(&queries, &q.name, &rows).await;
        let (s, b) = (canonical_text(&streamed[&q.name]), canonical_text(&batch));
        assert!(!b.is_empty(), "{}: the batch result is empty", q.name);
        assert_same(&q.name, &s, &b);
    }
}

#[tokio::test]
async fn streaming_equals_batch_with_rows_out_of_order_within_lateness() {
    let rows = session_laps(2);
    let queries = shipped();
    let streamed = stream_result(&queries, &rows, 50, 800).await;
    for q in &queries {
        let batch = batch_result(&queries, &q.name, &rows).await;
        assert_same(
            &q.name,
            &canonical_text(&streamed[&q.name]),
            &canonical_text(&batch),
        );
    }
}

/// Fails with the row counts and the first differing rows, not the whole result.
pub fn assert_same(name: &str, streamed: &[String], batch: &[String]) {
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
