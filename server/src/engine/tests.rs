//! The engine against its oracle: every shipped query, streamed over the bundled session in
//! micro-batches, emits exactly what the same SQL returns in batch over the whole data.

use datafusion::arrow::array::RecordBatch;

use super::*;

fn session_laps(last_lap: i32) -> RecordBatch {
    oracle::race_laps(last_lap).unwrap()
}

async fn batch_result(queries: &[QueryDef], name: &str, rows: &RecordBatch) -> Vec<RecordBatch> {
    oracle::batch_result(queries, name, rows).await.unwrap()
}

fn canonical_text(batches: &[RecordBatch]) -> Vec<String> {
    oracle::canonical_rows(batches)
}

async fn stream_result(
    queries: &[QueryDef],
    rows: &RecordBatch,
    batch_ms: i64,
    shuffle_within_ms: i64,
) -> HashMap<String, Vec<RecordBatch>> {
    let rows = if shuffle_within_ms > 0 {
        oracle::shuffle(rows, shuffle_within_ms).unwrap()
    } else {
        rows.clone()
    };
    oracle::stream(queries, &rows, batch_ms).await.unwrap()
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
