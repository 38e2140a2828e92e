//! Runs a compiled query over micro-batches: feeds each stage, keeps its window state, and
//! decides what is emitted when.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{
    DataType, Int64Type, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;

use super::compile::{
    AggregatePlan, Branch, CompiledQuery, LapProgress, StagePlan, UnionPlan, WindowFnPlan,
    WindowKey,
};
use super::windows::{LapWindows, RELEASE_IDLE_MS, TimeWindows, WindowKind};
use crate::error::{Error, Result};

mod moving;

#[derive(Debug, Default)]
struct AggregateState {
    time: Option<TimeWindows>,
    laps: Option<LapWindows>,
}

impl AggregateState {
    fn open_windows(&self) -> usize {
        self.time.as_ref().map_or(0, |t| t.open_windows())
            + self.laps.as_ref().map_or(0, |l| l.open_windows())
    }

    fn state_rows(&self) -> usize {
        self.time.as_ref().map_or(0, |t| t.state_rows())
            + self.laps.as_ref().map_or(0, |l| l.state_rows())
    }

    /// The open windows holding at least `min` partial batches.
    fn crowded(&mut self, min: usize) -> Vec<&mut Vec<RecordBatch>> {
        match (&mut self.time, &mut self.laps) {
            (Some(t), _) => t.crowded(min),
            (None, Some(l)) => l.crowded(min),
            (None, None) => Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
struct WindowFnState {
    /// Rows waiting for the watermark (raw input is released in event-time order).
    held: Vec<RecordBatch>,
    released_through: Option<i64>,
    /// Last rows of each partition, with their sequence numbers: context for the next rows.
    retained: Option<RecordBatch>,
    /// Rows already in `retained` that still wait for following rows before they are emitted.
    pending: HashSet<u64>,
    next_seq: u64,
    /// Per partition of `retained`: the watermark when it last had a new row. One silent for
    /// [`RELEASE_IDLE_MS`] (a finished car) loses its context. Not checkpointed: after a
    /// restart every partition counts as active from then.
    last_active: HashMap<Vec<u8>, i64>,
}

#[derive(Debug)]
enum StageState {
    Aggregate(AggregateState),
    WindowFn(WindowFnState),
}

/// A compiled query plus the state of its stages.
pub(crate) struct Pipeline {
    compiled: CompiledQuery,
    states: Vec<StageState>,
    late_rows: u64,
}

impl Pipeline {
    pub(crate) fn new(compiled: CompiledQuery) -> Self {
        let states = compiled.stages.iter().map(new_state).collect();
        Self {
            compiled,
            states,
            late_rows: 0,
        }
    }

    pub(crate) fn compiled(&self) -> &CompiledQuery {
        &self.compiled
    }

    /// Swaps in a recompiled plan (new parameter values), keeping window state when the
    /// stages are the same kind; otherwise the state starts afresh.
    pub(crate) fn replace_plan(&mut self, compiled: CompiledQuery) {
        let same_shape = compiled.stages.len() == self.compiled.stages.len()
            && compiled
                .stages
                .iter()
                .zip(&self.compiled.stages)
                .all(|(a, b)| match (a, b) {
                    (StagePlan::Aggregate(x), StagePlan::Aggregate(y)) => x.window == y.window,
                    (StagePlan::WindowFn(_), StagePlan::WindowFn(_)) => true,
                    _ => false,
                });
        if !same_shape {
            self.states = compiled.stages.iter().map(new_state).collect();
        }
        self.compiled = compiled;
    }

    pub(crate) fn late_rows(&self) -> u64 {
        self.late_rows
    }

    pub(crate) fn open_windows(&self) -> usize {
        self.states
            .iter()
            .map(|s| match s {
                StageState::Aggregate(a) => a.open_windows(),
                StageState::WindowFn(_) => 0,
            })
            .sum()
    }

    /// Rows this query's state holds: partial aggregates of open windows, rows held for the
    /// watermark and context rows of window functions.
    pub(crate) fn state_rows(&self) -> usize {
        self.states
            .iter()
            .map(|s| match s {
                StageState::Aggregate(a) => a.state_rows(),
                StageState::WindowFn(w) => {
                    w.held.iter().map(|b| b.num_rows()).sum::<usize>()
                        + w.retained.as_ref().map_or(0, |b| b.num_rows())
                }
            })
            .sum()
    }

    /// Rows not emitted yet that no open window accounts for: window-function input held for
    /// the watermark, and rows that wait for their following rows. Once the input ends and the
    /// watermark passes everything, this and [`Self::open_windows`] reach 0.
    pub(crate) fn pending_rows(&self) -> usize {
        self.states
            .iter()
            .map(|s| match s {
                StageState::Aggregate(_) => 0,
                StageState::WindowFn(w) => {
                    w.held.iter().map(|b| b.num_rows()).sum::<usize>() + w.pending.len()
                }
            })
            .sum()
    }

    /// Keys (cars, window-function partitions) whose bookkeeping the stages hold, whether
    /// or not a window of theirs is open.
    #[cfg(test)]
    pub(crate) fn tracked_keys(&self) -> usize {
        self.states
            .iter()
            .map(|s| match s {
                StageState::Aggregate(a) => a.laps.as_ref().map_or(0, LapWindows::tracked),
                StageState::WindowFn(w) => w.last_active.len(),
            })
            .sum()
    }

    /// Feeds new input rows (any may be empty), closes what the watermark allows, and returns
    /// the rows to emit. `inputs` holds the rows of each branch's input, in branch order
    /// (one for most queries, one per branch of a `UNION ALL`); `idle` says the whole input
    /// has gone quiet.
    pub(crate) async fn process(
        &mut self,
        inputs: &[&[RecordBatch]],
        watermark: Option<i64>,
        idle: bool,
        ctx: &Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        let mut rows = Vec::new();
        for (branch, input) in self.compiled.branches.iter().zip(inputs) {
            rows.extend(branch_rows(branch, input, ctx).await?);
        }
        if let Some(union) = &self.compiled.union {
            rows = union_rows(union, rows, ctx).await?;
        }
        // Only a query of one branch has stages: its lap windows follow that stream.
        let input = inputs.first().copied().unwrap_or_default();
        for (stage, state) in self.compiled.stages.iter().zip(self.states.iter_mut()) {
            rows.retain(|b| b.num_rows() > 0);
            rows = match (stage, state) {
                (StagePlan::Aggregate(plan), StageState::Aggregate(state)) => {
                    aggregate_step(
                        plan,
                        state,
                        input,
                        rows,
                        watermark,
                        &mut self.late_rows,
                        ctx,
                    )
                    .await?
                }
                (StagePlan::WindowFn(plan), StageState::WindowFn(state)) => {
                    window_step(plan, state, rows, watermark, idle, &mut self.late_rows, ctx)
                        .await?
                }
                _ => unreachable!("states are built from the stages"),
            };
        }
        rows.retain(|b| b.num_rows() > 0);
        Ok(rows)
    }
}

/// A branch's new rows: the columns it uses, through its row-local operators.
async fn branch_rows(
    branch: &Branch,
    input: &[RecordBatch],
    ctx: &Arc<TaskContext>,
) -> Result<Vec<RecordBatch>> {
    let rows: Vec<RecordBatch> = input
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| match &branch.input_projection {
            Some(p) => b.project(p),
            None => Ok(b.clone()),
        })
        .collect::<std::result::Result<_, _>>()?;
    match (&branch.bottom, rows.is_empty()) {
        (Some(bottom), false) => bottom.run(rows, ctx.clone()).await,
        _ => Ok(rows),
    }
}

/// The branches' rows as the union's rows, through the row-local operators above it.
async fn union_rows(
    union: &UnionPlan,
    rows: Vec<RecordBatch>,
    ctx: &Arc<TaskContext>,
) -> Result<Vec<RecordBatch>> {
    let rows: Vec<RecordBatch> = rows
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| conform(b, &union.schema))
        .collect::<Result<_>>()?;
    match (&union.top, rows.is_empty()) {
        (Some(top), false) => top.run(rows, ctx.clone()).await,
        _ => Ok(rows),
    }
}

/// A branch's rows under the union's schema: its column names and nullability, and its
/// types (DataFusion's coercion makes them equal already; a cast where it did not).
fn conform(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.num_columns() != schema.fields().len() {
        return Err(Error::QueryFailed {
            query: String::new(),
            message: format!(
                "a UNION branch emitted {} columns instead of {}",
                batch.num_columns(),
                schema.fields().len()
            ),
        });
    }
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| {
            if c.data_type() == f.data_type() {
                Ok(c.clone())
            } else {
                cast(c, f.data_type())
            }
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

impl WindowFnState {
    /// Whether the partition `key`, whose rows this step has the sequence numbers `seqs`, has
    /// gone silent: no new row for [`RELEASE_IDLE_MS`] of watermark progress (a finished car).
    /// Its rows still waiting for following rows are emitted as they are (those rows will not
    /// come: a batch run gives them no following rows either), then it is forgotten (its context
    /// is not retained).
    fn silent(
        &mut self,
        key: &[u8],
        mut seqs: impl Iterator<Item = u64>,
        first_new: u64,
        watermark: Option<i64>,
    ) -> bool {
        let Some(wm) = watermark else {
            return false;
        };
        let new = seqs.any(|seq| seq >= first_new);
        let last = match self.last_active.get_mut(key) {
            Some(last) => last,
            None => self.last_active.entry(key.to_vec()).or_insert(wm),
        };
        if new {
            *last = wm;
        }
        let silent = !new && last.saturating_add(RELEASE_IDLE_MS) <= wm;
        if silent {
            self.last_active.remove(key);
        }
        silent
    }
}

fn new_state(stage: &StagePlan) -> StageState {
    match stage {
        StagePlan::Aggregate(a) => StageState::Aggregate(match a.window {
            WindowKind::Tumbling { size_ms } | WindowKind::Hopping { size_ms, .. } => {
                AggregateState {
                    time: Some(TimeWindows::new(size_ms)),
                    laps: None,
                }
            }
            WindowKind::Lap { gap_ms } => AggregateState {
                time: None,
                laps: Some(LapWindows::new(gap_ms)),
            },
        }),
        StagePlan::WindowFn(_) => StageState::WindowFn(WindowFnState::default()),
    }
}

fn eval(expr: &Arc<dyn PhysicalExpr>, batch: &RecordBatch) -> Result<ArrayRef> {
    Ok(expr.evaluate(batch)?.into_array(batch.num_rows())?)
}

/// Milliseconds since the epoch of a timestamp array of any unit (nulls stay null).
fn millis(a: &ArrayRef) -> Result<ArrayRef> {
    match a.data_type() {
        DataType::Timestamp(TimeUnit::Millisecond, _) => Ok(a.clone()),
        DataType::Timestamp(_, tz) => Ok(cast(
            a,
            &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
        )?),
        other => Err(Error::QueryFailed {
            query: String::new(),
            message: format!("a window's time column must be a timestamp, not {other}"),
        }),
    }
}

fn ms_values(a: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let a = millis(a)?;
    Ok(a.as_primitive::<TimestampMillisecondType>()
        .iter()
        .collect())
}

fn int_values(a: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let a = cast(a, &DataType::Int64)?;
    Ok(a.as_primitive::<Int64Type>().iter().collect())
}

/// Encodes key columns so equal keys give equal bytes.
fn row_keys(columns: &[ArrayRef]) -> Result<Vec<Vec<u8>>> {
    if columns.is_empty() {
        return Ok(Vec::new());
    }
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(columns)?;
    Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
}

/// Splits a batch into groups of rows with equal keys, in first-seen order.
fn group_rows<K: std::hash::Hash + Eq + Clone>(
    batch: &RecordBatch,
    keys: &[K],
) -> Result<Vec<(K, RecordBatch)>> {
    let mut order: Vec<K> = Vec::new();
    let mut groups: HashMap<K, Vec<u32>> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        groups
            .entry(k.clone())
            .or_insert_with(|| {
                order.push(k.clone());
                Vec::new()
            })
            .push(i as u32);
    }
    order
        .into_iter()
        .map(|k| {
            let idx = UInt32Array::from(groups.remove(&k).expect("grouped"));
            Ok((k, take_record_batch(batch, &idx)?))
        })
        .collect()
}

async fn aggregate_step(
    plan: &AggregatePlan,
    state: &mut AggregateState,
    stream_rows: &[RecordBatch],
    rows: Vec<RecordBatch>,
    watermark: Option<i64>,
    late_rows: &mut u64,
    ctx: &Arc<TaskContext>,
) -> Result<Vec<RecordBatch>> {
    observe_input_laps(plan, state, stream_rows)?;
    let kept = drop_late_rows(plan, state, rows, late_rows)?;
    if !kept.is_empty() {
        buffer_partials(plan, state, kept, ctx).await?;
    }
    // Close what the watermark passed.
    let closed: Vec<RecordBatch> = match (watermark, &mut state.time, &mut state.laps) {
        (None, _, _) => Vec::new(),
        (Some(wm), Some(t), _) => t.close(wm).into_iter().flat_map(|(_, b)| b).collect(),
        (Some(wm), None, Some(l)) => l.close(wm).into_iter().flat_map(|(_, _, b)| b).collect(),
        (Some(_), None, None) => Vec::new(),
    };
    // Windows that stay open merge their partial states once they span many micro-batches:
    // an open window costs a few rows, not one per micro-batch it has seen.
    if let Some(reduce) = &plan.reduce {
        for rows in state.crowded(REDUCE_AT_BATCHES) {
            let merged = reduce.run(std::mem::take(rows), ctx.clone()).await?;
            *rows = vec![concat_batches(&reduce.schema(), &merged)?];
        }
    }
    if closed.is_empty() {
        return Ok(Vec::new());
    }
    // Finish the closed windows' aggregation.
    plan.finish.run(closed, ctx.clone()).await
}

/// Lap windows that follow the raw stream's laps: their progress comes from the stream rows,
/// before any filter of the query drops some.
fn observe_input_laps(
    plan: &AggregatePlan,
    state: &mut AggregateState,
    stream_rows: &[RecordBatch],
) -> Result<()> {
    let WindowKey::Lap {
        progress: LapProgress::Input { car, lap, ts },
        ..
    } = &plan.key
    else {
        return Ok(());
    };
    let laps = state.laps.as_mut().expect("lap state");
    for b in stream_rows.iter().filter(|b| b.num_rows() > 0) {
        let cars = row_keys(&car.iter().map(|&c| b.column(c).clone()).collect::<Vec<_>>())?;
        let lap_values = int_values(b.column(*lap))?;
        let ts_values = ms_values(b.column(*ts))?;
        for i in 0..b.num_rows() {
            if let (Some(l), Some(t)) = (lap_values[i], ts_values[i]) {
                laps.observe(&cars[i], l, t);
            }
        }
    }
    Ok(())
}

/// The rows of windows still open: rows of windows already closed are late (counted), rows in
/// no window (no lap) are dropped.
fn drop_late_rows(
    plan: &AggregatePlan,
    state: &mut AggregateState,
    rows: Vec<RecordBatch>,
    late_rows: &mut u64,
) -> Result<Vec<RecordBatch>> {
    let mut late = |is_late: bool| {
        *late_rows += u64::from(is_late);
        Some(!is_late)
    };
    let mut kept = Vec::with_capacity(rows.len());
    for batch in rows {
        let keep: BooleanArray = match &plan.key {
            WindowKey::Time { start, .. } => {
                let time = state.time.as_ref().expect("time state");
                let starts = ms_values(&eval(start, &batch)?)?;
                starts
                    .iter()
                    .map(|s| match s {
                        Some(s) => late(time.is_late(*s)),
                        None => Some(false),
                    })
                    .collect()
            }
            WindowKey::Lap {
                car, lap, progress, ..
            } => {
                let laps = state.laps.as_mut().expect("lap state");
                let cars = row_keys(
                    &car.iter()
                        .map(|e| eval(e, &batch))
                        .collect::<Result<Vec<_>>>()?,
                )?;
                let lap_values = int_values(&eval(lap, &batch)?)?;
                if let LapProgress::Stage { ts } = progress {
                    let ts_values = ms_values(&eval(ts, &batch)?)?;
                    for i in 0..batch.num_rows() {
                        if let (Some(l), Some(t)) = (lap_values[i], ts_values[i]) {
                            laps.observe(&cars[i], l, t);
                        }
                    }
                }
                (0..batch.num_rows())
                    .map(|i| match lap_values[i] {
                        Some(l) => late(laps.is_late(&cars[i], l)),
                        None => Some(false), // samples with no lap are not in lap windows
                    })
                    .collect()
            }
        };
        let batch = if keep.false_count() == 0 {
            batch
        } else {
            filter_record_batch(&batch, &keep)?
        };
        if batch.num_rows() > 0 {
            kept.push(batch);
        }
    }
    Ok(kept)
}

/// Partial aggregation of the new rows, buffered per window.
async fn buffer_partials(
    plan: &AggregatePlan,
    state: &mut AggregateState,
    kept: Vec<RecordBatch>,
    ctx: &Arc<TaskContext>,
) -> Result<()> {
    for partial in plan.partial.run(kept, ctx.clone()).await? {
        if partial.num_rows() == 0 {
            continue;
        }
        match &plan.key {
            WindowKey::Time { start_col, .. } => {
                let starts = ms_values(partial.column(*start_col))?;
                let time = state.time.as_mut().expect("time state");
                for (start, rows) in group_rows(&partial, &starts)? {
                    if let Some(start) = start {
                        time.insert(start, rows);
                    }
                }
            }
            WindowKey::Lap {
                car_cols, lap_col, ..
            } => {
                let cars = row_keys(
                    &car_cols
                        .iter()
                        .map(|&c| partial.column(c).clone())
                        .collect::<Vec<_>>(),
                )?;
                let lap_values = int_values(partial.column(*lap_col))?;
                let keys: Vec<(Vec<u8>, Option<i64>)> = cars.into_iter().zip(lap_values).collect();
                let laps = state.laps.as_mut().expect("lap state");
                for ((car, lap), rows) in group_rows(&partial, &keys)? {
                    if let Some(lap) = lap {
                        laps.insert(&car, lap, rows);
                    }
                }
            }
        }
    }
    Ok(())
}

/// An open window merges its partial states when it holds this many batches.
const REDUCE_AT_BATCHES: usize = 16;

async fn window_step(
    plan: &WindowFnPlan,
    state: &mut WindowFnState,
    rows: Vec<RecordBatch>,
    watermark: Option<i64>,
    idle: bool,
    late_rows: &mut u64,
    ctx: &Arc<TaskContext>,
) -> Result<Vec<RecordBatch>> {
    let released = match &plan.gate_ts {
        None => rows,
        Some(gate) => match release_in_order(plan, gate, state, rows, watermark, late_rows)? {
            Some(released) => released,
            None => return Ok(Vec::new()),
        },
    };
    let flush = idle && !state.pending.is_empty();
    if released.is_empty() && !flush {
        return Ok(Vec::new());
    }
    // Number the new rows, then run the window operator over context + new rows.
    let first_new = state.next_seq;
    let window_input: SchemaRef = plan.window.input_schema();
    let mut input = Vec::new();
    let (context, aside) = split_context(plan, state, &released, watermark, flush)?;
    input.extend(context);
    for batch in released {
        let n = batch.num_rows() as u64;
        let seq = UInt64Array::from_iter_values(state.next_seq..state.next_seq + n);
        state.next_seq += n;
        let mut cols = batch.columns().to_vec();
        cols.push(Arc::new(seq));
        input.push(RecordBatch::try_new(window_input.clone(), cols)?);
    }
    let out = plan.window.run(input, ctx.clone()).await?;
    let out = concat_batches(&plan.window.schema(), &out)?;
    let (emit, retain) = emit_and_retain(plan, state, &out, first_new, watermark, flush)?;
    let context_cols: Vec<usize> = (0..=plan.seq_index).collect();
    let mut kept: Vec<RecordBatch> = aside.into_iter().collect();
    if !retain.is_empty() {
        let r = take_record_batch(&out.project(&context_cols)?, &UInt32Array::from(retain))?;
        kept.push(RecordBatch::try_new(
            window_input.clone(),
            r.columns().to_vec(),
        )?);
    }
    if !kept.is_empty() {
        state.retained = Some(concat_batches(&window_input, &kept)?);
    }
    if emit.is_empty() {
        return Ok(Vec::new());
    }
    let emitted = take_record_batch(&out, &UInt32Array::from(emit))?;
    let cols: Vec<ArrayRef> = emitted
        .columns()
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != plan.seq_index)
        .map(|(_, c)| c.clone())
        .collect();
    let emitted = RecordBatch::try_new(plan.upper_input_schema.clone(), cols)?;
    match &plan.upper {
        Some(upper) => upper.run(vec![emitted], ctx.clone()).await,
        None => Ok(vec![emitted]),
    }
}

/// Raw input waits for the watermark so that each partition sees its rows in order: rows at or
/// below what was released already are late (counted); the held rows the watermark passed are
/// released. None without a watermark yet.
fn release_in_order(
    plan: &WindowFnPlan,
    gate: &Arc<dyn PhysicalExpr>,
    state: &mut WindowFnState,
    rows: Vec<RecordBatch>,
    watermark: Option<i64>,
    late_rows: &mut u64,
) -> Result<Option<Vec<RecordBatch>>> {
    let mut behind = Vec::new();
    for batch in rows {
        let ts = ms_values(&eval(gate, &batch)?)?;
        let is_behind: BooleanArray = ts
            .iter()
            .map(|t| Some(matches!((t, state.released_through), (Some(t), Some(r)) if *t <= r)))
            .collect();
        if plan.from_query {
            let b = filter_record_batch(&batch, &is_behind)?;
            if b.num_rows() > 0 {
                behind.push(b);
            }
        } else {
            *late_rows += is_behind.true_count() as u64;
        }
        let keep: BooleanArray = ts
            .iter()
            .zip(is_behind.iter())
            .map(|(t, b)| Some(t.is_some() && b != Some(true)))
            .collect();
        let batch = filter_record_batch(&batch, &keep)?;
        if batch.num_rows() > 0 {
            state.held.push(batch);
        }
    }
    let Some(wm) = watermark else {
        return Ok((!behind.is_empty()).then_some(behind));
    };
    let mut released = behind;
    let mut still = Vec::new();
    for batch in std::mem::take(&mut state.held) {
        let ts = ms_values(&eval(gate, &batch)?)?;
        let due: BooleanArray = ts
            .iter()
            .map(|t| Some(t.is_some_and(|t| t <= wm)))
            .collect();
        let not_due = datafusion::arrow::compute::not(&due)?;
        let (a, b) = (
            filter_record_batch(&batch, &due)?,
            filter_record_batch(&batch, &not_due)?,
        );
        if a.num_rows() > 0 {
            released.push(a);
        }
        if b.num_rows() > 0 {
            still.push(b);
        }
    }
    state.held = still;
    state.released_through = Some(state.released_through.map_or(wm, |r| r.max(wm)));
    Ok(Some(released))
}

/// Over the window operator's output (sorted by partition, then order): the rows to emit
/// (those with enough following context, or all pending ones on `flush`) and the rows to keep
/// as the next step's context (the last rows of each partition not finished).
/// The retained context split into what this step's window run needs and what it does not:
/// the context of partitions with new rows (all of it when flushing), and of partitions that
/// may be finished (silent for [`RELEASE_IDLE_MS`], or not seen since a restart) so that they
/// are let go; the rest is set aside untouched. Running the window operator over every
/// partition's context on every micro-batch made a query with many partitions (a car and a
/// gear, say) cost its whole context per step.
fn split_context(
    plan: &WindowFnPlan,
    state: &mut WindowFnState,
    released: &[RecordBatch],
    watermark: Option<i64>,
    flush: bool,
) -> Result<(Option<RecordBatch>, Option<RecordBatch>)> {
    let Some(retained) = state.retained.take() else {
        return Ok((None, None));
    };
    if flush || plan.partition_by.is_empty() {
        return Ok((Some(retained), None));
    }
    let keys_of = |b: &RecordBatch| -> Result<Vec<Vec<u8>>> {
        row_keys(
            &plan
                .partition_by
                .iter()
                .map(|e| eval(e, b))
                .collect::<Result<Vec<_>>>()?,
        )
    };
    let mut fresh: HashSet<Vec<u8>> = HashSet::new();
    for b in released {
        fresh.extend(keys_of(b)?);
    }
    let due = |k: &Vec<u8>| match (state.last_active.get(k), watermark) {
        (None, _) => true,
        (Some(last), Some(wm)) => last.saturating_add(RELEASE_IDLE_MS) <= wm,
        (Some(_), None) => false,
    };
    let take: BooleanArray = keys_of(&retained)?
        .iter()
        .map(|k| Some(fresh.contains(k) || due(k)))
        .collect();
    let context = filter_record_batch(&retained, &take)?;
    let aside = filter_record_batch(&retained, &datafusion::arrow::compute::not(&take)?)?;
    let some = |b: RecordBatch| (b.num_rows() > 0).then_some(b);
    Ok((some(context), some(aside)))
}

fn emit_and_retain(
    plan: &WindowFnPlan,
    state: &mut WindowFnState,
    out: &RecordBatch,
    first_new: u64,
    watermark: Option<i64>,
    flush: bool,
) -> Result<(Vec<u32>, Vec<u32>)> {
    let parts = row_keys(
        &plan
            .partition_by
            .iter()
            .map(|e| eval(e, out))
            .collect::<Result<Vec<_>>>()?,
    )?;
    let seqs = out
        .column(plan.seq_index)
        .as_primitive::<datafusion::arrow::datatypes::UInt64Type>()
        .clone();
    let keep_rows = plan.preceding + plan.following;
    let (mut emit, mut retain) = (Vec::new(), Vec::new());
    let n = out.num_rows();
    let mut start = 0;
    while start < n {
        let mut end = start + 1;
        while end < n && (parts.is_empty() || parts[end] == parts[start]) {
            end += 1;
        }
        if parts.is_empty() {
            end = n;
        }
        let finished = !parts.is_empty()
            && state.silent(
                &parts[start],
                (start..end).map(|i| seqs.value(i)),
                first_new,
                watermark,
            );
        for i in start..end {
            let seq = seqs.value(i);
            let ready = end - 1 - i >= plan.following || flush || finished;
            let new = seq >= first_new;
            if ready && (new || state.pending.remove(&seq)) {
                emit.push(i as u32);
            } else if !ready && new {
                state.pending.insert(seq);
            }
            if end - i <= keep_rows && !finished {
                retain.push(i as u32);
            }
        }
        start = end;
    }
    Ok((emit, retain))
}

mod checkpoint {
    //! Snapshot and restore of a pipeline's stage state.
    use super::*;
    use crate::engine::snapshot::{Batches, StageState as Snap};

    impl Pipeline {
        pub(crate) fn snapshot(&self, batches: &mut Batches) -> Vec<Snap> {
            self.states
                .iter()
                .map(|s| match s {
                    StageState::Aggregate(a) => match (&a.time, &a.laps) {
                        (Some(t), _) => Snap::Time(t.snapshot(batches)),
                        (None, Some(l)) => Snap::Laps(l.snapshot(batches)),
                        (None, None) => unreachable!("an aggregate stage has time or lap windows"),
                    },
                    StageState::WindowFn(w) => {
                        let mut pending: Vec<u64> = w.pending.iter().copied().collect();
                        pending.sort_unstable();
                        Snap::WindowFn {
                            held: batches.put_all(&w.held),
                            released_through: w.released_through,
                            retained: w.retained.as_ref().map(|r| batches.put(r)),
                            pending,
                            next_seq: w.next_seq,
                        }
                    }
                })
                .collect()
        }

        /// Restores stage state saved by [`Pipeline::snapshot`] of the same query.
        pub(crate) fn restore(
            &mut self,
            stages: &[Snap],
            late_rows: u64,
            batches: &Batches,
        ) -> Result<()> {
            if stages.len() != self.states.len() {
                return Err(Error::Archive(
                    "checkpoint stages do not match the query".into(),
                ));
            }
            let mut restored = Vec::with_capacity(stages.len());
            for (snap, plan) in stages.iter().zip(&self.compiled.stages) {
                restored.push(match (snap, plan) {
                    (Snap::Time(t), StagePlan::Aggregate(_)) => {
                        StageState::Aggregate(AggregateState {
                            time: Some(TimeWindows::restore(t, batches)?),
                            laps: None,
                        })
                    }
                    (Snap::Laps(l), StagePlan::Aggregate(_)) => {
                        StageState::Aggregate(AggregateState {
                            time: None,
                            laps: Some(LapWindows::restore(l, batches)?),
                        })
                    }
                    (
                        Snap::WindowFn {
                            held,
                            released_through,
                            retained,
                            pending,
                            next_seq,
                        },
                        StagePlan::WindowFn(_),
                    ) => StageState::WindowFn(WindowFnState {
                        held: batches.get_all(held)?,
                        released_through: *released_through,
                        retained: retained.map(|r| batches.get(r)).transpose()?,
                        pending: pending.iter().copied().collect(),
                        next_seq: *next_seq,
                        last_active: HashMap::new(),
                    }),
                    _ => {
                        return Err(Error::Archive(
                            "checkpoint stages do not match the query".into(),
                        ));
                    }
                });
            }
            self.states = restored;
            self.late_rows = late_rows;
            Ok(())
        }
    }
}
