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

#[tokio::test]
async fn open_windows_hold_merged_partial_states_not_one_row_per_micro_batch() {
    // Two laps in 20 ms micro-batches: a lap window spans ~4,500 of them.
    let rows = session_laps(2);
    let queries = shipped();
    let mut peak = HashMap::<String, u64>::new();
    let streamed = oracle::stream_observed(&queries, &rows, 20, |engine| {
        for q in engine.list() {
            let p = peak.entry(q.name.clone()).or_default();
            *p = (*p).max(q.state_rows);
        }
    })
    .await
    .unwrap();
    // 20 cars, at most two open laps each, each at most one merged row plus the batches of
    // the micro-batches since the last merge.
    let bound = 20 * 2 * 16;
    assert!(
        peak["lap_stats"] <= bound,
        "lap_stats held {} state rows (bound {bound})",
        peak["lap_stats"]
    );
    let batch = batch_result(&queries, "lap_stats", &rows).await;
    assert_same(
        "lap_stats",
        &canonical_text(&streamed["lap_stats"]),
        &canonical_text(&batch),
    );
}

/// Issue 24 point 13: a looping replay starts a new session every round; the state of the
/// finished ones (cars' lap bookkeeping, window functions' context) must go, or it grows
/// with every round (and every step runs the window functions over all of it). Four rounds
/// of two laps, 15 minutes apart: what the engine holds stays at two rounds' worth at most,
/// and results still equal the batch results over all four.
#[tokio::test]
async fn finished_sessions_release_their_state_and_results_stay_exact() {
    // Laps 1 and 2 only (the race's rows with no lap go on to its end).
    let lap2 = session_laps(2);
    let has_lap =
        datafusion::arrow::compute::is_not_null(lap2.column_by_name("lap").unwrap()).unwrap();
    let lap2 = datafusion::arrow::compute::filter_record_batch(&lap2, &has_lap).unwrap();
    let rounds: Vec<RecordBatch> = (0..4)
        .map(|r| crate::ingest::embedded::shifted(&lap2, r * 15 * 60_000, &format!("loop-r{r}")))
        .collect::<Result<_>>()
        .unwrap();
    let rows = datafusion::arrow::compute::concat_batches(&lap2.schema(), &rounds).unwrap();
    let queries = shipped();
    let first = {
        use datafusion::arrow::array::AsArray;
        let ts = rows.column_by_name("ts").unwrap();
        ts.as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
            .value(0)
    };
    let (mut peak_keys, mut peak_state) = (0usize, [0u64; 4]);
    let mut last_keys = 0usize;
    let streamed = oracle::stream_observed(&queries, &rows, 200, |engine| {
        last_keys = engine
            .queries
            .values()
            .map(|q| q.pipeline.tracked_keys())
            .sum();
        peak_keys = peak_keys.max(last_keys);
        let state: u64 = engine.list().iter().map(|q| q.state_rows).sum();
        let round = engine
            .watermark()
            .map_or(0, |wm| (wm - first) / (15 * 60_000));
        let r = round.clamp(0, 3) as usize;
        peak_state[r] = peak_state[r].max(state);
    })
    .await
    .unwrap();
    // lap_stats and lap_anomaly track cars (laps), lock_up and lap_anomaly track window
    // partitions: 4 stages x 20 cars per round.
    let one_round = 4 * 20;
    println!(
        "tracked keys: peak {peak_keys}, at the end {last_keys}; state rows, peak per round: {peak_state:?}"
    );
    for name in ["lock_up", "lap_anomaly", "lap_stats"] {
        let batch = batch_result(&queries, name, &rows).await;
        assert_same(
            name,
            &canonical_text(&streamed[name]),
            &canonical_text(&batch),
        );
    }
    assert!(peak_keys <= 2 * one_round, "peak {peak_keys} keys tracked");
    assert!(
        last_keys <= one_round,
        "{last_keys} keys tracked at the end"
    );
    assert!(
        peak_state[3] <= peak_state[0] + 20,
        "state grows round after round: {peak_state:?}"
    );
}

#[test]
fn compact_gives_a_few_rows_buffers_of_their_own_size() {
    use datafusion::arrow::array::{Array, Int64Builder};
    // As DataFusion's filter coalescer builds them: room for 8192 rows, 20 used.
    let mut b = Int64Builder::with_capacity(8192);
    for i in 0..20 {
        b.append_value(i);
    }
    let col: Arc<dyn Array> = Arc::new(b.finish());
    let batch = RecordBatch::try_from_iter([("v", col)]).unwrap();
    assert!(batch.get_array_memory_size() >= 8192 * 8);
    let small = compile::compact(batch.clone()).unwrap();
    assert_eq!(small, batch);
    assert!(
        small.get_array_memory_size() < 1024,
        "{} bytes for 20 rows",
        small.get_array_memory_size()
    );
    // Already tight: returned as is.
    let again = compile::compact(small.clone()).unwrap();
    assert_eq!(
        again.column(0).to_data().buffers()[0].as_ptr(),
        small.column(0).to_data().buffers()[0].as_ptr()
    );
}

/// Issue 24 point 12: the two late counts say different things. A row behind the watermark
/// whose window is still open counts as "behind the watermark" (engine-wide) and is
/// aggregated; only a row whose window had closed is dropped and counted per query.
#[tokio::test]
async fn behind_the_watermark_is_not_dropped_until_its_window_closed() {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::compute::{filter_record_batch, is_not_null};
    use datafusion::arrow::datatypes::{Int32Type, Int64Type};

    use crate::ingest::{MicroBatch, PartitionSlice};
    let race = session_laps(2);
    let ver = filter_record_batch(
        &race,
        &datafusion::arrow::compute::kernels::cmp::eq(
            race.column_by_name("driver").unwrap(),
            &datafusion::arrow::array::StringArray::new_scalar("VER"),
        )
        .unwrap(),
    )
    .unwrap();
    let ver = filter_record_batch(
        &ver,
        &is_not_null(ver.column_by_name("lap").unwrap()).unwrap(),
    )
    .unwrap();
    let laps = ver
        .column_by_name("lap")
        .unwrap()
        .as_primitive::<Int32Type>()
        .clone();
    let lap1 = laps.iter().filter(|l| *l == Some(1)).count();
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    let lap_stats = shipped()
        .into_iter()
        .find(|q| q.name == "lap_stats")
        .unwrap();
    engine.submit(lap_stats).await.unwrap();
    let now = Instant::now();
    let mut offset = 0;
    let mut feed = |rows: RecordBatch| {
        let ts = rows.column_by_name("ts").unwrap();
        let max_ts = ts
            .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
            .values()
            .iter()
            .copied()
            .max();
        let n = rows.num_rows() as i64;
        offset += n;
        MicroBatch {
            topic: "t".into(),
            rows,
            partitions: vec![PartitionSlice {
                partition: 0,
                first_offset: offset - n,
                last_offset: offset - 1,
                max_ts,
            }],
            assigned: None,
            caught_up: vec![],
            caught_up_confirmed: None,
            dead_letters: vec![],
            ready_at: now,
        }
    };
    // Lap 1 but for its 10th sample, then that sample: behind the watermark, lap still open.
    let held = ver.slice(10, 1);
    let rest = datafusion::arrow::compute::concat_batches(
        &ver.schema(),
        &[ver.slice(0, 10), ver.slice(11, lap1 - 11)],
    )
    .unwrap();
    let mut out = Vec::new();
    for b in [feed(rest), feed(held.clone())] {
        out.extend(engine.step(Some(&b), now).await);
    }
    let behind = engine.stats.late_rows.load(Ordering::Relaxed);
    assert_eq!(behind, 1, "the held sample is behind the watermark");
    // Lap 2 closes lap 1; the same sample again is then dropped, and counted per query.
    let b = feed(ver.slice(lap1, ver.num_rows() - lap1));
    out.extend(engine.step(Some(&b), now).await);
    let b = feed(held);
    out.extend(engine.step(Some(&b), now).await);
    let info = engine.info("lap_stats").unwrap();
    assert_eq!(info.late_rows_dropped, 1);
    assert_eq!(engine.stats.late_rows.load(Ordering::Relaxed), 2);
    let lap1_samples: Vec<i64> = out
        .iter()
        .filter(|(q, _)| q == "lap_stats")
        .flat_map(|(_, b)| b.clone())
        .flat_map(|b| {
            let lap = b
                .column_by_name("lap")
                .unwrap()
                .as_primitive::<Int32Type>()
                .clone();
            let n = b
                .column_by_name("samples")
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone();
            (0..b.num_rows())
                .filter(move |&i| lap.value(i) == 1)
                .map(move |i| n.value(i))
        })
        .collect();
    assert_eq!(
        lap1_samples,
        vec![lap1 as i64],
        "the sample behind the watermark is in lap 1"
    );
}
