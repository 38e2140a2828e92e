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
        // The fault detectors find nothing on three clean laps: the next test breaks cars.
        if !DETECTORS.contains(&q.name.as_str()) {
            assert!(!b.is_empty(), "{}: the batch result is empty", q.name);
        }
        assert_same(&q.name, &s, &b);
    }
}

use crate::FAULT_DETECTORS as DETECTORS;

/// Laps 1-16 of the race with faults of every kind injected (seed 5): every detector streams
/// what it finds in batch, in order and with rows out of order within the lateness.
#[tokio::test]
async fn every_detector_streams_as_in_batch_on_a_race_with_faults() {
    use pitwall_proto::faults::{Kind, Options, inject};
    let opts = Options {
        seed: 5,
        per_kind: 2,
        kinds: Kind::ALL.to_vec(),
        session: None,
    };
    let (rows, labels) = inject(&session_laps(16), &opts).unwrap();
    for kind in Kind::ALL {
        assert!(
            labels.faults.iter().any(|f| f.kind == kind),
            "no {kind:?} injected"
        );
    }
    let queries = shipped();
    for shuffle_ms in [0, 800] {
        let streamed = stream_result(&queries, &rows, 250, shuffle_ms).await;
        let mut kinds = Vec::new();
        for name in DETECTORS {
            let batch = batch_result(&queries, name, &rows).await;
            let (s, b) = (canonical_text(&streamed[*name]), canonical_text(&batch));
            assert!(!b.is_empty(), "{name}: the batch result is empty");
            assert_same(name, &s, &b);
            if *name == "alerts" {
                kinds = Kind::ALL
                    .iter()
                    .filter(|k| b.iter().any(|r| r.contains(&format!("|{}|", k.name()))))
                    .map(|k| k.name())
                    .collect();
            }
        }
        assert_eq!(kinds.len(), Kind::ALL.len(), "alerts of kinds {kinds:?}");
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
    let queries: Vec<QueryDef> = shipped()
        .into_iter()
        .filter(|q| q.name == "lap_stats")
        .collect();
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
    let (mut peak_keys, mut peak_state) = ([0usize; 4], [0u64; 4]);
    let mut last_keys = 0usize;
    let streamed = oracle::stream_observed(&queries, &rows, 200, |engine| {
        last_keys = engine
            .queries
            .values()
            .map(|q| q.pipeline.tracked_keys())
            .sum();
        let state: u64 = engine.list().iter().map(|q| q.state_rows).sum();
        let round = engine
            .watermark()
            .map_or(0, |wm| (wm - first) / (15 * 60_000));
        let r = round.clamp(0, 3) as usize;
        peak_state[r] = peak_state[r].max(state);
        peak_keys[r] = peak_keys[r].max(last_keys);
    })
    .await
    .unwrap();
    println!(
        "tracked keys: peak per round {peak_keys:?}, at the end {last_keys}; state rows, peak per round: {peak_state:?}"
    );
    for name in [
        "lock_up",
        "lap_anomaly",
        "lap_stats",
        "sample_checks",
        "gear_checks",
    ] {
        let batch = batch_result(&queries, name, &rows).await;
        assert_same(
            name,
            &canonical_text(&streamed[name]),
            &canonical_text(&batch),
        );
    }
    // What a round holds (cars' laps, window partitions: a car, a car and gear, ...) is
    // what the first round held; the rounds before are let go.
    let one_round = peak_keys[0];
    assert!(one_round >= 4 * 20, "round 0 tracked {one_round} keys");
    let peak = *peak_keys.iter().max().unwrap();
    assert!(
        peak <= 2 * one_round,
        "peak {peak} keys tracked, {one_round} in a round"
    );
    assert!(
        peak_keys[3] <= peak_keys[1] && last_keys <= peak_keys[1],
        "keys tracked grow round after round: {peak_keys:?}, {last_keys} at the end"
    );
    assert!(
        peak_state[3] <= peak_state[1] + 100,
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
                drivers: Vec::new(),
            }],
            assigned: None,
            caught_up: vec![],
            caught_up_confirmed: None,
            dead_letters: vec![],
            ready_at: now,
            handover: None,
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

// UNION ALL: row-local branches over one stream each, concatenated every step.

fn def(name: &str, sql: &str) -> QueryDef {
    QueryDef::parse(name, sql).unwrap()
}

fn shipped_named(names: &[&str]) -> Vec<QueryDef> {
    shipped()
        .into_iter()
        .filter(|q| names.contains(&q.name.as_str()))
        .collect()
}

/// Two shipped queries, one row-local and one aggregating laps, in one result stream.
const ALERTS: &str = "
SELECT session, driver, lap, ts, 'over_rev' AS kind, CAST(rpm AS DOUBLE) AS value FROM over_rev
UNION ALL
SELECT session, driver, lap, last_sample AS ts, 'slow_lap' AS kind, mean_speed AS value
FROM lap_stats WHERE mean_speed < $slow";

fn alerts() -> QueryDef {
    def("alerts", &format!("-- @param slow = 200.0\n{ALERTS}"))
}

/// The query's rows equal the batch result over the race, in order and out of order, and
/// every branch contributes.
async fn assert_streams_as_batch(queries: &[QueryDef], name: &str, kinds: &[&str]) {
    for (laps, shuffle_ms) in [(3, 0), (2, 800)] {
        let rows = session_laps(laps);
        let streamed = stream_result(queries, &rows, 50, shuffle_ms).await;
        let batch = canonical_text(&batch_result(queries, name, &rows).await);
        for kind in kinds {
            assert!(
                batch.iter().any(|r| r.contains(&format!("|{kind}|"))),
                "{name}: no {kind} rows in the batch result"
            );
        }
        assert_same(name, &canonical_text(&streamed[name]), &batch);
    }
}

#[tokio::test]
async fn union_of_two_queries_streams_as_in_batch() {
    let mut queries = shipped_named(&["over_rev", "lap_stats"]);
    queries.push(alerts());
    assert_streams_as_batch(&queries, "alerts", &["over_rev", "slow_lap"]).await;
}

#[tokio::test]
async fn union_of_telemetry_and_a_query_streams_as_in_batch() {
    let mixed = def(
        "mixed",
        "-- @param fast = 300
         SELECT driver, lap, ts, 'fast' AS kind, speed AS value FROM telemetry
         WHERE speed > $fast AND lap IS NOT NULL
         UNION ALL
         SELECT driver, lap, lap_start AS ts, 'lap' AS kind, mean_speed AS value FROM lap_stats
         UNION ALL
         SELECT driver, lap, ts, 'braking' AS kind, speed AS value FROM telemetry
         WHERE brake AND speed > 280",
    );
    let mut queries = shipped_named(&["lap_stats"]);
    queries.push(mixed.clone());
    assert_streams_as_batch(&queries, "mixed", &["fast", "lap", "braking"]).await;
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    for q in queries {
        engine.submit(q).await.unwrap();
    }
    let info = engine.info("mixed").unwrap();
    assert_eq!(info.inputs, ["telemetry", "lap_stats"]);
    assert_eq!(info.input, "telemetry, lap_stats");
    assert_eq!(info.kind, "UNION ALL of 3 row-local branches");
    assert_eq!(
        info.schema.field_with_name("value").unwrap().data_type(),
        &datafusion::arrow::datatypes::DataType::Float64,
        "speed (Float32) coerced to mean_speed's type"
    );
}

#[tokio::test]
async fn row_local_operators_above_a_union_run_over_its_rows() {
    let above = def(
        "above",
        "SELECT u.driver, upper(u.kind) AS kind, round(u.value) AS value,
                u.value > 320 AS very_fast
         FROM (
           SELECT driver, 'fast' AS kind, speed AS value FROM telemetry WHERE speed > 300
           UNION ALL
           SELECT driver, 'rev' AS kind, speed AS value FROM over_rev
         ) AS u
         WHERE u.kind = 'rev' OR u.value > 310",
    );
    let mut queries = shipped_named(&["over_rev"]);
    queries.push(above.clone());
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    for q in queries.clone() {
        engine.submit(q).await.unwrap();
    }
    let union = engine.queries["above"].pipeline.compiled().union.clone();
    assert!(
        union.is_some_and(|u| u.top.is_some()),
        "the optimizer left operators above the union"
    );
    assert_streams_as_batch(&queries, "above", &["FAST", "REV"]).await;
}

#[tokio::test]
async fn a_union_of_whole_streams_passes_their_rows_through() {
    let twice = def(
        "twice",
        "SELECT * FROM over_rev UNION ALL SELECT * FROM over_rev WHERE gear > 6",
    );
    let mut queries = shipped_named(&["over_rev"]);
    queries.push(twice);
    assert_streams_as_batch(&queries, "twice", &[]).await;
    // A union directly in a branch: DataFusion flattens it into one union of three.
    let nested = def(
        "nested",
        "SELECT driver, lap FROM (
           SELECT driver, lap, speed FROM telemetry UNION ALL
           SELECT driver, lap, speed FROM over_rev
         ) WHERE speed > 300
         UNION ALL SELECT driver, lap FROM over_rev WHERE gear < 7",
    );
    let mut queries = shipped_named(&["over_rev"]);
    queries.push(nested);
    assert_streams_as_batch(&queries, "nested", &[]).await;
}

#[tokio::test]
async fn unions_that_need_state_are_refused_in_one_line() {
    let cases = [
        (
            "SELECT driver, lap FROM telemetry UNION SELECT driver, lap FROM over_rev",
            "UNION (distinct) needs the whole stream: use UNION ALL",
        ),
        (
            "SELECT driver, lap, count(*) AS n FROM telemetry GROUP BY driver, lap
             UNION ALL SELECT driver, lap, 1 FROM over_rev",
            "each branch of a UNION must be row-local (filters and projections) over one \
             stream: put aggregates and window functions in the queries it reads",
        ),
        (
            "SELECT driver, speed FROM over_rev UNION ALL
             SELECT driver, lag(speed) OVER (PARTITION BY driver ORDER BY ts) FROM telemetry",
            "each branch of a UNION must be row-local (filters and projections) over one \
             stream: put aggregates and window functions in the queries it reads",
        ),
        (
            "SELECT driver, lap, count(*) AS n FROM (
               SELECT driver, lap, ts FROM telemetry UNION ALL SELECT driver, lap, ts FROM over_rev
             ) GROUP BY driver, lap",
            "an aggregate or window function over a UNION is not supported: make the UNION ALL \
             a query of its own and aggregate in a query that reads it",
        ),
        (
            "SELECT driver, lag(speed) OVER (PARTITION BY driver ORDER BY ts) AS prev FROM (
               SELECT driver, speed, ts FROM telemetry UNION ALL SELECT driver, speed, ts FROM over_rev
             )",
            "an aggregate or window function over a UNION is not supported: make the UNION ALL \
             a query of its own and aggregate in a query that reads it",
        ),
        (
            "SELECT u.driver FROM (
               SELECT driver FROM telemetry UNION ALL SELECT driver FROM over_rev
             ) AS u WHERE random() < 2.0 UNION ALL SELECT driver FROM over_rev",
            "a UNION inside a branch of a UNION is not supported: list the branches side by \
             side (a UNION ALL b UNION ALL c)",
        ),
    ];
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    engine
        .submit(shipped_named(&["over_rev"]).remove(0))
        .await
        .unwrap();
    for (sql, expected) in cases {
        let e = engine.submit(def("refused", sql)).await.unwrap_err();
        assert_eq!(e.to_string(), expected, "{sql}");
        assert!(matches!(e, Error::Refused(_)));
    }
    assert_eq!(engine.list().len(), 1, "the other queries run on");
}

/// Submit, drop, replace and cycles: a union reads all its inputs as one query reads one.
#[tokio::test]
async fn a_union_depends_on_every_stream_it_reads() {
    let mut engine = Engine::new(EngineConfig::default()).unwrap();
    engine
        .submit(shipped_named(&["over_rev"]).remove(0))
        .await
        .unwrap();
    // An input that does not exist yet: refused as a query reading only it.
    let alone = engine
        .submit(def("alone", "SELECT * FROM lap_stats"))
        .await
        .unwrap_err();
    let union = engine.submit(alerts()).await.unwrap_err();
    assert!(alone.to_string().contains("lap_stats"), "{alone}");
    assert_eq!(union.to_string(), alone.to_string());
    engine
        .submit(shipped_named(&["lap_stats"]).remove(0))
        .await
        .unwrap();
    engine.submit(alerts()).await.unwrap();
    let order: Vec<String> = engine.list().into_iter().map(|q| q.name).collect();
    assert_eq!(
        order.last().map(String::as_str),
        Some("alerts"),
        "{order:?}"
    );
    // Dropping either input is refused while the union reads it.
    for input in ["over_rev", "lap_stats"] {
        let e = engine.drop_query(input).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("alerts reads {input}: drop it first")
        );
    }
    // A cycle through the union, from an input or from the union itself.
    let e = engine
        .replace("over_rev", "SELECT * FROM alerts")
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "over_rev cannot read alerts: that would be a cycle"
    );
    let e = engine
        .replace(
            "alerts",
            "SELECT driver FROM telemetry UNION ALL SELECT driver FROM alerts",
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "alerts cannot read alerts: that would be a cycle"
    );
    // An input replaced: the union is recompiled against it, or fails when it no longer fits.
    engine
        .replace(
            "over_rev",
            "SELECT session, driver, lap, ts, rpm FROM telemetry WHERE rpm > 11000",
        )
        .await
        .unwrap();
    assert_eq!(engine.info("alerts").unwrap().status, QueryStatus::Running);
    engine
        .replace("over_rev", "SELECT driver, ts FROM telemetry")
        .await
        .unwrap();
    let info = engine.info("alerts").unwrap();
    assert_eq!(info.status, QueryStatus::Failed);
    assert!(
        info.last_error
            .unwrap()
            .starts_with("after over_rev changed:")
    );
    // The union replaced by new SQL (another input, a parameter kept), then dropped.
    let info = engine
        .replace(
            "alerts",
            "SELECT driver, ts FROM over_rev UNION ALL
             SELECT driver, last_sample FROM lap_stats WHERE mean_speed < $slow",
        )
        .await
        .unwrap();
    assert_eq!(info.status, QueryStatus::Running);
    assert_eq!(info.inputs, ["over_rev", "lap_stats"]);
    assert_eq!(info.params, [("slow".to_string(), "200".to_string())]);
    engine.drop_query("alerts").unwrap();
    engine.drop_query("lap_stats").unwrap();
}

/// `rows[from..to]` in micro-batches of `batch_ms` of event time (offsets: row indices),
/// each step's output added to `out`.
async fn feed(
    engine: &mut Engine,
    rows: &RecordBatch,
    (from, to): (usize, usize),
    now: &mut Instant,
    out: &mut HashMap<String, Vec<RecordBatch>>,
) {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::TimestampMillisecondType;

    let batch_ms = 50;
    let ts = rows
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>()
        .clone();
    let mut pos = from;
    while pos < to {
        let mut end = pos;
        while end < to && ts.value(end) < ts.value(pos) + batch_ms {
            end += 1;
        }
        let b = oracle::micro_batch(rows, pos, end, *now);
        *now += Duration::from_millis(batch_ms as u64);
        for (name, batches) in engine.step(Some(&b), *now).await {
            out.entry(name).or_default().extend(batches);
        }
        pos = end;
    }
}

/// A checkpoint taken with a union running restores into a new engine, which goes on as if
/// nothing had happened: the union (no state) and the lap windows it reads.
#[tokio::test]
async fn a_checkpoint_with_a_union_restores_and_results_stay_exact() {
    let rows = session_laps(2);
    let mut queries = shipped_named(&["over_rev", "lap_stats"]);
    queries.push(alerts());
    let start = |queries: Vec<QueryDef>| async {
        let mut engine = Engine::new(oracle::engine_config()).unwrap();
        for q in queries {
            engine.submit(q).await.unwrap();
        }
        engine
    };
    let mut out = HashMap::new();
    let mut now = Instant::now();
    let half = rows.num_rows() / 2;
    let mut first = start(queries.clone()).await;
    // A parameter change keeps the plan's (empty) state.
    first
        .set_params("alerts", &[("slow".into(), "210.0".into())])
        .await
        .unwrap();
    feed(&mut first, &rows, (0, half), &mut now, &mut out).await;
    let (state, batches) = first.snapshot();
    let alerts_state = state.queries.iter().find(|q| q.name == "alerts").unwrap();
    assert!(alerts_state.stages.is_empty(), "a union has no state");
    let bytes = snapshot::encode(&state, &batches).unwrap();
    drop(first);
    let (state, batches) = snapshot::decode(&bytes).unwrap();
    let mut second = start(queries.clone()).await;
    second
        .set_params("alerts", &[("slow".into(), "210.0".into())])
        .await
        .unwrap();
    let report = second.restore(&state, &batches).unwrap();
    assert_eq!(report.restored, ["lap_stats", "over_rev", "alerts"]);
    feed(
        &mut second,
        &rows,
        (half, rows.num_rows()),
        &mut now,
        &mut out,
    )
    .await;
    for _ in 0..40 {
        now += Duration::from_millis(500);
        for (name, b) in second.step(None, now).await {
            out.entry(name).or_default().extend(b);
        }
    }
    let mut tuned = queries.clone();
    tuned.last_mut().unwrap().params.insert(
        "slow".into(),
        datafusion::common::ScalarValue::Float64(Some(210.0)),
    );
    for name in ["lap_stats", "alerts"] {
        let batch = batch_result(&tuned, name, &rows).await;
        assert_same(name, &canonical_text(&out[name]), &canonical_text(&batch));
    }
}
