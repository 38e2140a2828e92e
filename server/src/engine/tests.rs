//! The engine against its oracle: every shipped query, streamed over the bundled session in
//! micro-batches, emits exactly what the same SQL returns in batch over the whole data.

use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{Int32Type, TimestampMillisecondType};

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

pub async fn batch_result(
    queries: &[QueryDef],
    name: &str,
    rows: &RecordBatch,
) -> Vec<RecordBatch> {
    oracle::batch_result(queries, name, rows).await.unwrap()
}

pub fn canonical_text(batches: &[RecordBatch]) -> Vec<String> {
    oracle::canonical_rows(batches)
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
            require_assignment: false,
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
            assigned: None,
            caught_up: vec![0],
            dead_letters: Vec::new(),
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

fn assert_same(name: &str, streamed: &[String], batch: &[String]) {
    oracle::assert_same_rows(name, streamed, batch)
}

/// Every refusal is one short line naming the problem and the fix; the other queries run on.
#[tokio::test]
async fn refusals_are_one_line_each() {
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    for q in shipped() {
        engine.submit(q).await.unwrap();
    }
    let cases = [
        (
            "SELECT driver, avg(speed) FROM telemetry GROUP BY driver",
            "GROUP BY driver never closes on an unbounded stream: also group by a window, e.g. date_bin(INTERVAL '1 second', ts), or by driver, lap",
        ),
        (
            "SELECT count(*) FROM telemetry",
            "an aggregate without GROUP BY never closes on an unbounded stream: group by a window, e.g. date_bin(INTERVAL '1 second', ts), or by driver, lap",
        ),
        (
            "SELECT driver, speed FROM telemetry ORDER BY speed",
            "ORDER BY speed needs the end of an unbounded stream, which never comes: remove it (rows arrive in event-time order), or order within windows after GROUP BY a window",
        ),
        (
            "SELECT * FROM telemetry LIMIT 10",
            "LIMIT on an unbounded stream never completes: filter with WHERE instead",
        ),
        (
            "SELECT speeed FROM telemetry",
            "unknown column speeed; the input has: brake, distance, driver, drs, gear, lap, rpm, session, session_time, speed, throttle, ts, x, y, z",
        ),
        (
            "SELEC driver FROM telemetry",
            "invalid SQL: Expected: an SQL statement, found: SELEC at Line: 1, Column: 1",
        ),
        (
            "SELECT * FROM pit_lane",
            "unknown table pit_lane: a query reads telemetry or the name of another query",
        ),
        (
            "CREATE TABLE laps (lap INT)",
            "CREATE TABLE statements are refused: Pitwall runs read-only queries (SELECT ... FROM ...)",
        ),
        (
            "INSERT INTO telemetry (driver) VALUES ('VER')",
            "INSERT statements are refused: Pitwall runs read-only queries (SELECT ... FROM ...)",
        ),
        (
            "DROP TABLE telemetry",
            "DROP TABLE statements are refused: Pitwall runs read-only queries (SELECT ... FROM ...)",
        ),
        (
            "COPY telemetry TO '/tmp/x.parquet'",
            "COPY is refused: writing files from SQL is not allowed",
        ),
        (
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/etc'",
            "CREATE EXTERNAL TABLE is refused: reading files from SQL is not allowed",
        ),
        (
            "SELECT * FROM read_parquet('/etc/passwd')",
            "read_parquet() is not available: continuous queries cannot read files or call table functions; read telemetry or another query",
        ),
        (
            "SELECT * FROM telemetry a JOIN telemetry b ON a.driver = b.driver",
            "joins are not supported on streams: chain queries instead (FROM another query)",
        ),
        (
            "SELECT driver, row_number() OVER (PARTITION BY driver ORDER BY ts) FROM telemetry",
            "row_number() needs the whole history of a stream: use lag/lead, or an aggregate over ROWS BETWEEN n PRECEDING AND CURRENT ROW",
        ),
        (
            "SELECT driver, avg(speed) OVER (PARTITION BY driver ORDER BY ts) FROM telemetry",
            "avg() OVER (... ORDER BY ...) has an unbounded frame, which needs the whole history: use ROWS BETWEEN n PRECEDING AND CURRENT ROW",
        ),
        (
            "SELECT driver FROM telemetry WHERE rpm > $limit",
            "parameter $limit has no value: declare it with `-- @param limit = VALUE` in the query",
        ),
    ];
    let mut wrong = Vec::new();
    for (i, (sql, expected)) in cases.iter().enumerate() {
        let def = QueryDef::parse(&format!("bad_{i}"), sql).unwrap();
        let err = engine.submit(def).await.expect_err(sql).to_string();
        assert!(
            !err.contains('\n') && err.len() < 300,
            "{sql}: not one short line: {err}"
        );
        if err != *expected {
            wrong.push(format!("{sql}\n  got:  {err}\n  want: {expected}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(engine.list().len(), 5, "the shipped queries still run");
}
