//! Is the engine incremental? Feeds a 20-car session of more than two hours (the bundled race,
//! continued lap after lap) through the default queries in 50 ms micro-batches, as fast as it
//! can, and compares the time per micro-batch in minute 1 and in hour 2.
//!
//! `cargo run --release --example engine_hours [HOURS]` (default 2.2)
//!
//! With `--loops N` it replays the race N times as the embedded source's loop does instead:
//! each round a new session (renamed, times shifted, laps as recorded), and prints the
//! resident memory and the state the queries hold at the end of each round, which must stay
//! flat (the finished sessions' state is released). `--buffer-kb N` bounds each query's replay
//! buffer (default 16 MB): memory those fill up to is not state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{
    ArrayRef, AsArray, Int32Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{Int32Type, TimestampMillisecondType};
use pitwall_proto::schema::{col, telemetry_schema};
use pitwall_server::engine::{Engine, EngineConfig};
use pitwall_server::ingest::embedded::bundled_session;
use pitwall_server::ingest::{MicroBatch, PartitionSlice};

/// Resident memory now and at its peak, in MB.
fn rss_mb() -> (f64, f64) {
    let status = procfs::process::Process::myself().and_then(|p| p.status());
    let mb = |kb: Option<u64>| kb.map_or(0.0, |kb| kb as f64 / 1024.0);
    match status {
        Ok(s) => (mb(s.vmrss), mb(s.vmhwm)),
        Err(_) => (0.0, 0.0),
    }
}

/// (event ms since the session start, time of the step, rows) per micro-batch.
type Steps = Vec<(i64, Duration, usize)>;

/// The bundled race and what continuing it needs.
struct Race {
    rows: RecordBatch,
    ts: TimestampMillisecondArray,
    first: i64,
    /// The race's length plus a second: round `r` is shifted by `r * span`.
    span: i64,
    max_lap: i32,
    session: String,
}

impl Race {
    fn load() -> Self {
        let rows = bundled_session().expect("bundled session");
        let ts = rows
            .column_by_name(col::TS)
            .unwrap()
            .as_primitive::<TimestampMillisecondType>()
            .clone();
        let lap = rows
            .column_by_name(col::LAP)
            .unwrap()
            .as_primitive::<Int32Type>();
        let max_lap = lap.iter().flatten().max().unwrap_or(0);
        let session = rows
            .column_by_name(col::SESSION)
            .unwrap()
            .as_string::<i32>()
            .value(0)
            .to_string();
        let (first, last) = (ts.value(0), ts.value(ts.len() - 1));
        Race {
            ts,
            first,
            span: last - first + 1_000,
            max_lap,
            session,
            rows,
        }
    }

    /// Rows `pos..end` as round `round` has them: times shifted; with `renamed` a new
    /// session (as the embedded loop names it), else laps counted on.
    fn round_rows(&self, round: i64, pos: usize, end: usize, renamed: bool) -> RecordBatch {
        let schema = telemetry_schema();
        let slice = self.rows.slice(pos, end - pos);
        let mut cols: Vec<ArrayRef> = slice.columns().to_vec();
        if round > 0 {
            let t = slice
                .column_by_name(col::TS)
                .unwrap()
                .as_primitive::<TimestampMillisecondType>();
            cols[schema.index_of(col::TS).unwrap()] = Arc::new(
                TimestampMillisecondArray::from_iter_values(
                    t.values().iter().map(|v| v + round * self.span),
                )
                .with_timezone("UTC"),
            );
            if renamed {
                let name = format!("{}-r{}", self.session, round + 1);
                cols[schema.index_of(col::SESSION).unwrap()] =
                    Arc::new(StringArray::from(vec![name.as_str(); slice.num_rows()]));
            } else {
                let l = slice
                    .column_by_name(col::LAP)
                    .unwrap()
                    .as_primitive::<Int32Type>();
                cols[schema.index_of(col::LAP).unwrap()] = Arc::new(
                    l.iter()
                        .map(|v| v.map(|v| v + round as i32 * self.max_lap))
                        .collect::<Int32Array>(),
                );
            }
        }
        RecordBatch::try_new(schema, cols).unwrap()
    }
}

/// `[HOURS] | --loops N`, `--buffer-kb N`: (rounds, loops given, replay buffer bytes).
fn parse_args(span: i64) -> (i64, bool, Option<usize>) {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    // `--buffer-kb N`: each query's replay buffer bound (default 16 MB), to tell the memory the
    // buffers fill up to from anything else that grows.
    let buffer_bytes = args.iter().position(|a| a == "--buffer-kb").map(|i| {
        let kb: usize = args[i + 1].parse().expect("--buffer-kb: a size in kB");
        args.drain(i..i + 2);
        kb * 1024
    });
    let loops: Option<i64> = match args.as_slice() {
        [flag, n] if flag == "--loops" => Some(n.parse().expect("--loops: a count, e.g. 10")),
        _ => None,
    };
    // Session length in hours (default 2.2: two rounds of the race); more rounds show whether
    // the time per micro-batch keeps growing with the history or settles.
    let hours: f64 = match args.first().filter(|_| loops.is_none()) {
        Some(h) => h.parse().expect("hours: a number, e.g. 6"),
        None => 2.2,
    };
    let rounds = loops.unwrap_or(((hours * 3_600_000.0) / span as f64).ceil() as i64);
    (rounds, loops.is_some(), buffer_bytes)
}

/// One micro-batch of partition 0 at `offset`, event time up to `max_ts`.
fn micro_batch(rows: RecordBatch, offset: i64, max_ts: i64, now: Instant) -> MicroBatch {
    let n = rows.num_rows() as i64;
    MicroBatch {
        topic: "hours".into(),
        rows,
        partitions: vec![PartitionSlice {
            partition: 0,
            first_offset: offset,
            last_offset: offset + n - 1,
            max_ts: Some(max_ts),
            drivers: Vec::new(),
        }],
        assigned: None,
        caught_up: vec![0],
        caught_up_confirmed: None,
        dead_letters: vec![],
        ready_at: now,
        handover: None,
    }
}

/// Feeds round `round` of the race in 50 ms micro-batches, timing each step; `now`, the
/// processing time the engine is told, goes on 50 ms a micro-batch.
async fn run_round(
    engine: &mut Engine,
    (race, round, renamed): (&Race, i64, bool),
    now: &mut Instant,
    steps: &mut Steps,
) {
    let mut offset = steps.iter().map(|s| s.2 as i64).sum::<i64>();
    let mut pos = 0;
    while pos < race.rows.num_rows() {
        let start_ts = race.ts.value(pos);
        let mut end = pos;
        while end < race.rows.num_rows() && race.ts.value(end) < start_ts + 50 {
            end += 1;
        }
        let rows = race.round_rows(round, pos, end, renamed);
        let n = rows.num_rows();
        let batch = micro_batch(rows, offset, start_ts + round * race.span + 49, *now);
        offset += n as i64;
        *now += Duration::from_millis(50);
        let t = Instant::now();
        engine.step(Some(&batch), *now).await;
        steps.push((start_ts + round * race.span - race.first, t.elapsed(), n));
        pos = end;
    }
}

/// Memory and state at the end of a round.
fn report_round(engine: &Engine, round: i64, steps: &Steps) {
    let queries = engine.list();
    let state: u64 = queries.iter().map(|q| q.state_rows).sum();
    let per_query: Vec<String> = queries
        .iter()
        .map(|q| format!("{} {}/{}", q.name, q.state_rows, q.open_windows))
        .collect();
    // What the replay buffers hold (Arrow memory as they count it), beside the state.
    let buffered_mb: f64 = engine
        .registry()
        .read()
        .unwrap()
        .values()
        .flat_map(|r| r.snapshot())
        .map(|b| b.get_array_memory_size() as f64 / (1 << 20) as f64)
        .sum();
    // This example's own log of step times grows by ~3.5 MB a round: not the engine's.
    let log_mb =
        (steps.len() * std::mem::size_of::<(i64, Duration, usize)>()) as f64 / (1 << 20) as f64;
    let (rss, peak) = rss_mb();
    println!(
        "round {}: RSS {rss:.0} MB at its end ({:.0} MB without this example's step log), peak {peak:.0} MB so far; replay buffers {buffered_mb:.1} MB; {state} state rows (per query, rows/open windows: {})",
        round + 1,
        rss - log_mb,
        per_query.join(", ")
    );
}

/// Mean ms per micro-batch, micro-batches and rows of the steps between two minutes of the
/// session.
fn window(steps: &Steps, from_min: f64, to_min: f64) -> (f64, usize, usize) {
    let sel: Vec<&(i64, Duration, usize)> = steps
        .iter()
        .filter(|(e, _, _)| (*e as f64) >= from_min * 60_000.0 && (*e as f64) < to_min * 60_000.0)
        .collect();
    let total: Duration = sel.iter().map(|s| s.1).sum();
    let rows: usize = sel.iter().map(|s| s.2).sum();
    (
        total.as_secs_f64() * 1000.0 / sel.len().max(1) as f64,
        sel.len(),
        rows,
    )
}

/// Minute 1 against hour 2, and every minute of each later round against round 1.
fn report(steps: &Steps, span: i64, rounds: i64) {
    // Minute 1 of the race itself (after the 30 s lead-in), and the same minute of the race
    // again in the next round, which falls in hour 2 of the session: the same cars doing the
    // same thing, with an hour and a half more history behind the engine.
    let span_min = span as f64 / 60_000.0;
    let (m1, n1, r1) = window(steps, 1.0, 2.0);
    let (h2, n2, r2) = window(steps, 1.0 + span_min, 2.0 + span_min);
    println!(
        "session: 20 cars, {rounds} laps of the race = {:.1} h, {} micro-batches of 50 ms",
        (rounds * span) as f64 / 3_600_000.0,
        steps.len()
    );
    println!("minute 1:  {m1:.3} ms per micro-batch ({n1} batches, {r1} rows)");
    println!(
        "hour 2:    {h2:.3} ms per micro-batch ({n2} batches, {r2} rows; minute {:.0} of the session, minute 1 of the race again)",
        1.0 + span_min
    );
    println!("ratio:     {:.2}x", h2 / m1);
    // Every whole minute of the race, each later round against the first: the time per
    // micro-batch may differ from minute to minute with what the cars do (garage, grid,
    // racing), but not from round to round if the work does not grow with the history.
    for round in 1..rounds {
        let later = round as f64 * span_min;
        let mut ratios: Vec<f64> = (0..span_min.floor() as i64)
            .filter_map(|m| {
                let (a, na, _) = window(steps, m as f64, m as f64 + 1.0);
                let (b, nb, _) = window(steps, m as f64 + later, m as f64 + 1.0 + later);
                (na >= 100 && nb >= 100).then(|| b / a)
            })
            .collect();
        ratios.sort_by(f64::total_cmp);
        if ratios.is_empty() {
            continue;
        }
        let q = |f: f64| ratios[((ratios.len() - 1) as f64 * f).round() as usize];
        println!(
            "each minute of the race, round {} / round 1 ({} minutes): median {:.2}x, p90 {:.2}x, max {:.2}x",
            round + 1,
            ratios.len(),
            q(0.5),
            q(0.9),
            q(1.0)
        );
    }
    // The same minute, 120, as this example measured before 2026-12-06: minute 33 of the
    // race's second round, so other driving than minute 1.
    let (h120, _, _) = window(steps, 120.0, 121.0);
    println!(
        "minute 120 of the session: {h120:.3} ms per micro-batch ({:.2}x minute 1)",
        h120 / m1
    );
    println!("peak RSS:  {:.0} MB", rss_mb().1);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // As the server does: large buffers go back to the OS when freed.
    pitwall_server::tune_allocator();
    let race = Race::load();
    let (rounds, renamed, buffer_bytes) = parse_args(race.span);
    let defaults = EngineConfig::default();
    let mut engine = Engine::new(EngineConfig {
        result_buffer_bytes: buffer_bytes.unwrap_or(defaults.result_buffer_bytes),
        ..defaults
    })
    .unwrap();
    for q in pitwall_server::initial_queries(None).unwrap() {
        engine.submit(q).await.unwrap();
    }
    let mut steps: Steps = Vec::new();
    let mut now = Instant::now();
    for round in 0..rounds {
        run_round(&mut engine, (&race, round, renamed), &mut now, &mut steps).await;
        report_round(&engine, round, &steps);
    }
    report(&steps, race.span, rounds);
}
