//! Compiles a continuous query's SQL into stages that run incrementally over micro-batches.
//!
//! DataFusion plans and optimizes the SQL as if it were a batch query. The optimized plan is
//! then cut along its spine (the chain from the output down to the stream it reads) at every
//! stateful operator:
//!
//! - the **bottom stage** holds the row-local operators over the stream (filters,
//!   projections, unnest) and runs on each micro-batch's new rows;
//! - an **aggregate stage** (`GROUP BY` a time window or `driver, lap`) runs DataFusion's
//!   partial aggregation on each micro-batch, buffers the partial states per window, and runs
//!   the final aggregation (plus the row-local operators above it) when a window closes;
//! - a **window-function stage** (`LAG`, `LEAD`, bounded frames) keeps the last rows of each
//!   partition as context and runs the window operator over context + new rows, emitting only
//!   the new rows.
//!
//! A `UNION ALL` whose branches are each row-local over one stream (`telemetry` or a query,
//! the same or different ones) compiles to one bottom stage per branch; each micro-batch's
//! rows of the branches are concatenated and go through the row-local operators above the
//! union, if any. It holds no state: aggregates and window functions go in the queries it
//! reads, or in a query reading it.
//!
//! Anything that would need the whole unbounded history (a `GROUP BY` with no window, `ORDER
//! BY` on the stream, `LIMIT`, joins, unbounded frames, `UNION` without `ALL`, a stateful
//! branch of a union or a stateful operator over one) is refused here with one short line.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, DFSchema, ParamValues, ScalarValue};
use datafusion::datasource::empty::EmptyTable;
use datafusion::execution::context::SessionContext;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::{SessionState, TaskContext};
use datafusion::logical_expr::expr::{Unnest as UnnestExpr, WindowFunction};
use datafusion::logical_expr::{
    Aggregate, Expr, LogicalPlan, Union, Window, WindowFrameBound, WindowFrameUnits,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionConfig;

use super::definition::QueryDef;
use super::functions;
use super::guard::{self, short_error};
use super::splice::{self, Slot, SpliceExec, SpliceNode};
use super::windows::WindowKind;
use crate::error::{Error, Result};

/// Name of the row-sequence column a window-function stage adds to tell new rows from context.
const SEQ: &str = "__pitwall_seq";

/// A physical plan compiled once and executed for each batch of rows put in its slot.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    plan: Arc<dyn ExecutionPlan>,
    slot: Slot,
    input_schema: SchemaRef,
}

impl Template {
    fn new(plan: Arc<dyn ExecutionPlan>) -> Result<Self> {
        let mut slots = splice::slots(&plan);
        if slots.len() != 1 {
            return Err(Error::Refused(format!(
                "internal: a stage plan has {} inputs instead of 1",
                slots.len()
            )));
        }
        let (slot, input_schema) = slots.remove(0);
        Ok(Self {
            plan,
            slot,
            input_schema,
        })
    }

    /// Schema of the rows this stage emits.
    pub(crate) fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// Schema of the rows this stage takes.
    pub(crate) fn input_schema(&self) -> SchemaRef {
        self.input_schema.clone()
    }

    pub(crate) async fn run(
        &self,
        input: Vec<RecordBatch>,
        ctx: Arc<TaskContext>,
    ) -> Result<Vec<RecordBatch>> {
        *self.slot.lock().expect("stage slot") = input;
        // Each execution registers its metrics on the plan's nodes; run after run on the same
        // nodes they would pile up (tens of MB an hour at 60 Hz). Fresh nodes per run keep
        // them per micro-batch; the tree is a handful of nodes.
        let plan = datafusion::physical_plan::execution_plan::reset_plan_states(self.plan.clone())?;
        collect(plan, ctx).await?.into_iter().map(compact).collect()
    }
}

/// The batch in buffers of its own size. DataFusion's filters coalesce into buffers sized
/// for `batch_size` rows (8192): a 20-row micro-batch result would keep ~64 KB per column
/// alive for as long as it is held (replay buffers, window state), which at 60 Hz grew the
/// server by megabytes a second. Copying the few rows is cheaper than holding the slack.
pub(crate) fn compact(batch: RecordBatch) -> Result<RecordBatch> {
    let used: usize = batch
        .columns()
        .iter()
        .map(|c| c.to_data().get_slice_memory_size().unwrap_or(0))
        .sum();
    if batch.get_array_memory_size() <= 2 * used + 4096 || batch.num_rows() == 0 {
        return Ok(batch);
    }
    let all = datafusion::arrow::array::UInt32Array::from_iter_values(0..batch.num_rows() as u32);
    Ok(datafusion::arrow::compute::take_record_batch(&batch, &all)?)
}

/// How an aggregate stage finds each row's window.
#[derive(Debug, Clone)]
pub(crate) enum WindowKey {
    /// `start` evaluates the window start on stage input rows; the partial aggregate's
    /// output holds it in column `start_col`.
    Time {
        start: Arc<dyn PhysicalExpr>,
        start_col: usize,
    },
    /// The car (driver, and session when grouped by it), the lap and the event time, on stage
    /// input rows; `car_cols`/`lap_col` in the partial aggregate's output.
    Lap {
        car: Vec<Arc<dyn PhysicalExpr>>,
        car_cols: Vec<usize>,
        lap: Arc<dyn PhysicalExpr>,
        lap_col: usize,
        progress: LapProgress,
    },
}

/// Where an aggregate stage learns that a car has started a later lap.
#[derive(Debug, Clone)]
pub(crate) enum LapProgress {
    /// From the raw rows of the stream the query reads (columns by index: car key, lap,
    /// ts), before any filter: a lap ends when the car's next lap starts, whatever the
    /// query keeps of it.
    Input {
        car: Vec<usize>,
        lap: usize,
        ts: usize,
    },
    /// From the stage's own input rows (event time column).
    Stage { ts: Arc<dyn PhysicalExpr> },
}

#[derive(Debug, Clone)]
pub(crate) struct AggregatePlan {
    /// Partial aggregation of new rows.
    pub partial: Template,
    /// Final aggregation of a closed window's partial states, and what sits above it.
    pub finish: Template,
    /// Merges a window's partial states into one row per group (still a partial state), so
    /// an open window holds a few rows whatever the number of micro-batches it spans.
    pub reduce: Option<Template>,
    pub window: WindowKind,
    pub key: WindowKey,
}

#[derive(Debug, Clone)]
pub(crate) struct WindowFnPlan {
    /// The window operator over input rows plus the `SEQ` column.
    pub window: Template,
    /// Row-local operators above it, if any.
    pub upper: Option<Template>,
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// Rows of context each partition needs before / after a row.
    pub preceding: usize,
    pub following: usize,
    /// Event time of input rows, when rows must be released in event-time order (the input
    /// is a raw stream, not windows closed by the watermark).
    pub gate_ts: Option<Arc<dyn PhysicalExpr>>,
    /// The input is another query's output. Its rows behind the watermark are not late: the
    /// query released them when the watermark passed them (a window function's rows wait for
    /// their following rows and the watermark), so they are taken at once, in the order they
    /// come, instead of dropped.
    pub from_query: bool,
    /// Index of the `SEQ` column in the window operator's input and output.
    pub seq_index: usize,
    pub upper_input_schema: SchemaRef,
}

#[derive(Debug, Clone)]
pub(crate) enum StagePlan {
    Aggregate(AggregatePlan),
    WindowFn(WindowFnPlan),
}

/// One stream a query reads, and the row-local operators its rows go through first.
#[derive(Debug, Clone)]
pub(crate) struct Branch {
    /// `telemetry` or the name of the query it reads.
    pub input: String,
    /// Columns of the input the branch uses (None = all).
    pub input_projection: Option<Vec<usize>>,
    pub bottom: Option<Template>,
}

/// A `UNION ALL`: the branches' rows concatenated as `schema`, then through `top` (the
/// row-local operators above the union), if any.
#[derive(Debug, Clone)]
pub(crate) struct UnionPlan {
    pub schema: SchemaRef,
    pub top: Option<Template>,
}

/// A query ready to run: what it reads, its stages bottom-up, and what it emits.
#[derive(Debug, Clone)]
pub(crate) struct CompiledQuery {
    /// What the query reads: one branch, or one per branch of a `UNION ALL`.
    pub branches: Vec<Branch>,
    /// Set when the query is a `UNION ALL` of its branches (it then has no stages).
    pub union: Option<UnionPlan>,
    pub stages: Vec<StagePlan>,
    pub output_schema: SchemaRef,
    /// How the engine runs it, for people.
    pub kind: String,
}

impl CompiledQuery {
    /// The streams the query reads, each once, in branch order.
    pub(crate) fn inputs(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for b in &self.branches {
            if !names.contains(&b.input.as_str()) {
                names.push(&b.input);
            }
        }
        names
    }
}

/// Compiles continuous queries against the stream `telemetry` and the other queries' outputs.
pub(crate) struct Compiler {
    ctx: SessionContext,
    lap_gap_ms: i64,
}

impl Compiler {
    pub(crate) fn new(stream_schema: SchemaRef, lap_gap_ms: i64) -> Result<Self> {
        let ctx = SessionContext::new_with_state(session_state());
        ctx.register_table("telemetry", Arc::new(EmptyTable::new(stream_schema)))?;
        Ok(Self { ctx, lap_gap_ms })
    }

    pub(crate) fn state(&self) -> SessionState {
        self.ctx.state()
    }

    /// Makes a query's output readable by name from other queries.
    pub(crate) fn register_output(&self, name: &str, schema: SchemaRef) -> Result<()> {
        self.ctx.deregister_table(name)?;
        let table: Arc<dyn TableProvider> = Arc::new(EmptyTable::new(schema));
        self.ctx.register_table(name, table)?;
        Ok(())
    }

    pub(crate) fn deregister_output(&self, name: &str) -> Result<()> {
        self.ctx.deregister_table(name)?;
        Ok(())
    }

    fn is_stream(&self, name: &str) -> bool {
        self.ctx.table_exist(name).unwrap_or(false)
    }

    pub(crate) async fn compile(&self, def: &QueryDef) -> Result<CompiledQuery> {
        let state = self.ctx.state();
        let refuse = |m: String| Error::Refused(m);
        let stmt = guard::parse_read_only(&state, &def.sql).map_err(refuse)?;
        let plan = state
            .statement_to_plan(stmt)
            .await
            .map_err(|e| refuse(short_error(&e)))?;
        let plan = bind_params(plan, def)?;
        refuse_union_distinct(&plan)?;
        let plan = state.optimize(&plan).map_err(|e| refuse(short_error(&e)))?;
        let segments = spine(&plan)?;
        let bottom_nodes = segments.last().expect("spine has a bottom");
        let scan = match bottom_nodes.last().expect("segment") {
            LogicalPlan::Union(u) => return self.union(&state, bottom_nodes, u).await,
            LogicalPlan::TableScan(scan) => scan,
            _ => unreachable!("the spine ends at a table scan or a union"),
        };
        let stream_schema: SchemaRef = scan.source.schema();
        let (branch, branch_schema) = self.branch(&state, bottom_nodes).await?;
        let mut stages = Vec::new();
        let mut kinds = Vec::new();
        for seg in segments.iter().rev().skip(1) {
            let lowest_stateful = stages.is_empty();
            match *seg.last().expect("segment") {
                LogicalPlan::Aggregate(agg) => {
                    let stage = self
                        .aggregate_stage(
                            &state,
                            seg,
                            agg,
                            lowest_stateful.then_some(&stream_schema),
                        )
                        .await?;
                    kinds.push(stage.window.describe());
                    stages.push(StagePlan::Aggregate(stage));
                }
                LogicalPlan::Window(w) => {
                    let from_query = branch.input != "telemetry";
                    let stage = window_stage(&state, seg, w, lowest_stateful, from_query).await?;
                    kinds.push(format!(
                        "window functions ({} preceding, {} following rows)",
                        stage.preceding, stage.following
                    ));
                    stages.push(StagePlan::WindowFn(stage));
                }
                _ => unreachable!("segments end at a stateful node"),
            }
        }
        let output_schema = match stages.last() {
            Some(StagePlan::Aggregate(a)) => a.finish.schema(),
            Some(StagePlan::WindowFn(w)) => match &w.upper {
                Some(u) => u.schema(),
                None => w.upper_input_schema.clone(),
            },
            None => branch_schema,
        };
        let kind = if kinds.is_empty() {
            "row-local (filters and projections)".to_string()
        } else {
            kinds.join(", then ")
        };
        Ok(CompiledQuery {
            branches: vec![branch],
            union: None,
            stages,
            output_schema,
            kind,
        })
    }

    /// The branch reading the stream at the bottom of `nodes` (top first, the table scan
    /// last, all row-local), and the schema of the rows it emits.
    async fn branch(
        &self,
        state: &SessionState,
        nodes: &[&LogicalPlan],
    ) -> Result<(Branch, SchemaRef)> {
        let LogicalPlan::TableScan(scan) = nodes.last().expect("segment") else {
            unreachable!("a branch ends at a table scan")
        };
        let input = scan.table_name.table().to_string();
        if !self.is_stream(&input) {
            return Err(Error::Refused(format!(
                "{input} is not a stream: a continuous query reads telemetry or another query"
            )));
        }
        let bottom = if nodes.len() > 1 {
            let splice = SpliceNode::plan(scan.projected_schema.clone());
            let p = replace_at(nodes[0], nodes.len() - 1, splice)?;
            Some(Template::new(splice::physical_plan(&p, state).await?)?)
        } else {
            None
        };
        let schema = match &bottom {
            Some(b) => b.schema(),
            None => Arc::new(scan.projected_schema.as_arrow().clone()),
        };
        let branch = Branch {
            input,
            input_projection: scan.projection.clone(),
            bottom,
        };
        Ok((branch, schema))
    }

    /// A `UNION ALL` of row-local branches, under the row-local operators `nodes` (top
    /// first, the union last).
    async fn union(
        &self,
        state: &SessionState,
        nodes: &[&LogicalPlan],
        union: &Union,
    ) -> Result<CompiledQuery> {
        let mut branches = Vec::new();
        for input in &union.inputs {
            let segments = spine(input)?;
            let [branch_nodes] = segments.as_slice() else {
                return Err(Error::Refused(
                    "each branch of a UNION must be row-local (filters and projections) over one \
                     stream: put aggregates and window functions in the queries it reads"
                        .into(),
                ));
            };
            if let Some(LogicalPlan::Union(_)) = branch_nodes.last() {
                return Err(Error::Refused(
                    "a UNION inside a branch of a UNION is not supported: list the branches side \
                     by side (a UNION ALL b UNION ALL c)"
                        .into(),
                ));
            }
            branches.push(self.branch(state, branch_nodes).await?.0);
        }
        let schema: SchemaRef = Arc::new(union.schema.as_arrow().clone());
        let top = if nodes.len() > 1 {
            let splice = SpliceNode::plan(union.schema.clone());
            let p = replace_at(nodes[0], nodes.len() - 1, splice)?;
            Some(Template::new(splice::physical_plan(&p, state).await?)?)
        } else {
            None
        };
        let output_schema = top
            .as_ref()
            .map_or_else(|| schema.clone(), Template::schema);
        Ok(CompiledQuery {
            kind: format!("UNION ALL of {} row-local branches", branches.len()),
            branches,
            union: Some(UnionPlan { schema, top }),
            stages: Vec::new(),
            output_schema,
        })
    }

    /// `stream`: the schema of the stream the query reads, when this is its lowest stateful
    /// stage (its input is that stream's rows through row-local operators only).
    async fn aggregate_stage(
        &self,
        state: &SessionState,
        seg: &[&LogicalPlan],
        agg: &Aggregate,
        stream: Option<&SchemaRef>,
    ) -> Result<AggregatePlan> {
        refuse_unbounded_grouping(agg)?;
        let input = agg.input.as_ref();
        let roles = GroupRoles::find(agg)?;
        let plan = replace_at(seg[0], seg.len(), SpliceNode::plan(input.schema().clone()))?;
        let physical = splice::physical_plan(&plan, state).await?;
        let (partial, finish) = split_partial(physical)?;
        let reduce = reduce_plan(&partial, &finish)?;
        let groups: Vec<Arc<dyn PhysicalExpr>> = partial_group_exprs(&partial)?;
        let (window, key) = match roles {
            GroupRoles {
                time: Some((i, kind)),
                ..
            } => (
                kind,
                WindowKey::Time {
                    start: groups[i].clone(),
                    start_col: i,
                },
            ),
            GroupRoles {
                time: None,
                lap: Some(l),
                driver: Some(d),
                session,
            } => {
                let mut car_cols = vec![d];
                car_cols.extend(session);
                let progress = lap_progress(input, stream, session.is_some())?;
                (
                    WindowKind::Lap {
                        gap_ms: self.lap_gap_ms,
                    },
                    WindowKey::Lap {
                        car: car_cols.iter().map(|&c| groups[c].clone()).collect(),
                        car_cols,
                        lap: groups[l].clone(),
                        lap_col: l,
                        progress,
                    },
                )
            }
            _ => return Err(never_closes(agg)),
        };
        Ok(AggregatePlan {
            partial: Template::new(partial)?,
            finish: Template::new(finish)?,
            reduce,
            window,
            key,
        })
    }
}

/// An aggregate a stream can close: with a GROUP BY, and no grouping sets.
fn refuse_unbounded_grouping(agg: &Aggregate) -> Result<()> {
    if agg.group_expr.is_empty() {
        return Err(Error::Refused(
            "an aggregate without GROUP BY never closes on an unbounded stream: \
             group by a window, e.g. date_bin(INTERVAL '1 second', ts), or by driver, lap"
                .into(),
        ));
    }
    if agg
        .group_expr
        .iter()
        .any(|e| matches!(e, Expr::GroupingSet(_)))
    {
        return Err(Error::Refused(
            "GROUPING SETS, ROLLUP and CUBE are not supported on streams".into(),
        ));
    }
    Ok(())
}

/// Which GROUP BY expressions (by position) are the time window, the lap, the driver and
/// the session, traced back to the input's columns.
struct GroupRoles {
    time: Option<(usize, WindowKind)>,
    lap: Option<usize>,
    driver: Option<usize>,
    session: Option<usize>,
}

impl GroupRoles {
    fn find(agg: &Aggregate) -> Result<Self> {
        let input = agg.input.as_ref();
        let mut roles = GroupRoles {
            time: None,
            lap: None,
            driver: None,
            session: None,
        };
        for (i, g) in agg.group_expr.iter().enumerate() {
            let Some(origin) = lineage(g, input) else {
                continue;
            };
            if let Some(kind) = time_window(&origin)? {
                if roles.time.is_some() {
                    return Err(Error::Refused("group by one time window only".into()));
                }
                roles.time = Some((i, kind));
            }
            if let Expr::Column(c) = origin {
                match c.name.as_str() {
                    "lap" => roles.lap = Some(i),
                    "driver" => roles.driver = Some(i),
                    "session" => roles.session = Some(i),
                    _ => {}
                }
            }
        }
        Ok(roles)
    }
}

/// How a lap window learns that a car's lap went on: from the stream's own driver, session,
/// lap and ts columns when the query reads the stream, else from the event time in the
/// aggregate's input.
fn lap_progress(
    input: &LogicalPlan,
    stream: Option<&SchemaRef>,
    by_session: bool,
) -> Result<LapProgress> {
    let named = |s: &SchemaRef, n: &str| s.index_of(n).ok();
    let from_input = stream.and_then(|s| {
        let car = std::iter::once(named(s, "driver"))
            .chain(by_session.then(|| named(s, "session")))
            .collect::<Option<Vec<usize>>>()?;
        Some(LapProgress::Input {
            car,
            lap: named(s, "lap")?,
            ts: named(s, "ts")?,
        })
    });
    if let Some(p) = from_input {
        return Ok(p);
    }
    let schema = input.schema();
    let ts_idx = (0..schema.fields().len())
        .find(|&j| {
            let (q, f) = schema.qualified_field(j);
            lineage(&Expr::Column(Column::from((q, f))), input)
                .is_some_and(|e| matches!(&e, Expr::Column(c) if c.name == "ts"))
        })
        .ok_or_else(|| {
            Error::Refused(
                "lap windows need the event time: keep the ts column in the query's input".into(),
            )
        })?;
    let ts_name = schema.field(ts_idx).name().clone();
    Ok(LapProgress::Stage {
        ts: Arc::new(PhysicalColumn::new(&ts_name, ts_idx)),
    })
}

/// The refusal of a GROUP BY with neither a time window nor driver and lap.
fn never_closes(agg: &Aggregate) -> Error {
    let input = agg.input.as_ref();
    let names: Vec<String> = agg
        .group_expr
        .iter()
        .map(|g| match lineage(g, input).unwrap_or_else(|| g.clone()) {
            Expr::Column(c) => c.name,
            other => other.schema_name().to_string(),
        })
        .collect();
    Error::Refused(format!(
        "GROUP BY {} never closes on an unbounded stream: also group by a window, \
         e.g. date_bin(INTERVAL '1 second', ts), or by driver, lap",
        names.join(", ")
    ))
}

/// Planning settings: one partition (a micro-batch is small; order and determinism matter
/// more than parallelism), and partial aggregation kept separate from final aggregation.
fn session_state() -> SessionState {
    let config = SessionConfig::new()
        .with_target_partitions(1)
        .with_information_schema(false)
        .set_usize(
            "datafusion.execution.skip_partial_aggregation_probe_rows_threshold",
            usize::MAX,
        );
    let rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new()
        .rules
        .into_iter()
        .filter(|r| r.name() != "CombinePartialFinalAggregate")
        .collect();
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        .build();
    let ctx = SessionContext::new_with_state(state);
    functions::register(&ctx);
    ctx.state()
}

/// Substitutes `$name` placeholders with the query's parameter values.
fn bind_params(plan: LogicalPlan, def: &QueryDef) -> Result<LogicalPlan> {
    let types = plan
        .get_parameter_types()
        .map_err(|e| Error::Refused(short_error(&e)))?;
    if types.is_empty() {
        return Ok(plan);
    }
    let mut values = HashMap::new();
    for (id, ty) in types {
        let name = id.trim_start_matches('$');
        if name.chars().all(|c| c.is_ascii_digit()) {
            return Err(Error::Refused(format!(
                "positional parameter {id} is not supported: name it, e.g. $threshold"
            )));
        }
        let value = def.params.get(name).ok_or_else(|| {
            Error::Refused(format!(
                "parameter ${name} has no value: declare it with `-- @param {name} = VALUE` in the query"
            ))
        })?;
        let value = match ty {
            Some(t) if !value.is_null() && value.data_type() != t => {
                value.cast_to(&t).map_err(|_| {
                    Error::Refused(format!("parameter ${name} = {value} is not a valid {t}"))
                })?
            }
            _ => value.clone(),
        };
        values.insert(name.to_string(), value.into());
    }
    plan.with_param_values(ParamValues::Map(values))
        .map_err(|e| Error::Refused(short_error(&e)))
}

/// `UNION` without `ALL`, planned as a `Distinct` over the union, before the optimizer turns
/// it into an aggregate.
fn refuse_union_distinct(plan: &LogicalPlan) -> Result<()> {
    let mut found = false;
    plan.apply(|n| {
        found = match n {
            LogicalPlan::Distinct(d) => matches!(d.input().as_ref(), LogicalPlan::Union(_)),
            _ => false,
        };
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    })?;
    if found {
        return Err(Error::Refused(
            "UNION (distinct) needs the whole stream: use UNION ALL".into(),
        ));
    }
    Ok(())
}

/// The plan's spine cut into segments, top first; each segment ends with a stateful node,
/// the last one with the table scan, or with a `UNION` (its branches are cut separately).
fn spine(plan: &LogicalPlan) -> Result<Vec<Vec<&LogicalPlan>>> {
    let mut segments: Vec<Vec<&LogicalPlan>> = vec![vec![]];
    let mut node = plan;
    loop {
        let segment = segments.last_mut().expect("non-empty");
        segment.push(node);
        node = match node {
            LogicalPlan::Projection(p) => &p.input,
            LogicalPlan::Filter(f) => &f.input,
            LogicalPlan::SubqueryAlias(a) => &a.input,
            LogicalPlan::Unnest(u) => &u.input,
            LogicalPlan::Sort(s) => {
                if s.fetch.is_some() {
                    return Err(limit_refusal());
                }
                if segments.len() > 1 || !has_stateful(&s.input) {
                    let keys: Vec<String> = s.expr.iter().map(|e| e.expr.to_string()).collect();
                    return Err(Error::Refused(format!(
                        "ORDER BY {} needs the end of an unbounded stream, which never comes: remove it \
                         (rows arrive in event-time order), or order within windows after GROUP BY a window",
                        keys.join(", ").replace("telemetry.", "")
                    )));
                }
                &s.input
            }
            LogicalPlan::Aggregate(a) => {
                segments.push(vec![]);
                &a.input
            }
            LogicalPlan::Window(w) => {
                segments.push(vec![]);
                &w.input
            }
            LogicalPlan::TableScan(_) => break,
            LogicalPlan::Limit(_) => return Err(limit_refusal()),
            LogicalPlan::Join(_) => {
                return Err(Error::Refused(
                    "joins are not supported on streams: chain queries instead (FROM another query)".into(),
                ));
            }
            LogicalPlan::Union(_) if segments.len() > 1 => {
                return Err(Error::Refused(
                    "an aggregate or window function over a UNION is not supported: make the \
                     UNION ALL a query of its own and aggregate in a query that reads it"
                        .into(),
                ));
            }
            LogicalPlan::Union(_) => break,
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                return Err(Error::Refused(
                    "a continuous query must read a stream: FROM telemetry or FROM another query"
                        .into(),
                ));
            }
            other => {
                return Err(Error::Refused(format!(
                    "{} is not supported in a continuous query",
                    other
                        .display()
                        .to_string()
                        .split(':')
                        .next()
                        .unwrap_or("this operator")
                )));
            }
        };
    }
    Ok(segments)
}

fn limit_refusal() -> Error {
    Error::Refused("LIMIT on an unbounded stream never completes: filter with WHERE instead".into())
}

fn has_stateful(plan: &LogicalPlan) -> bool {
    let mut found = false;
    let _ = plan.apply(|n| {
        found |= matches!(n, LogicalPlan::Aggregate(_) | LogicalPlan::Window(_));
        Ok(if found {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    found
}

/// Rebuilds `plan` with the node `depth` single-input steps below it replaced.
fn replace_at(plan: &LogicalPlan, depth: usize, replacement: LogicalPlan) -> Result<LogicalPlan> {
    if depth == 0 {
        return Ok(replacement);
    }
    let inputs = plan.inputs();
    let [child] = inputs.as_slice() else {
        return Err(Error::Refused(
            "internal: stage boundary under a node with several inputs".into(),
        ));
    };
    let new_child = replace_at(child, depth - 1, replacement)?;
    Ok(plan.with_new_exprs(plan.expressions(), vec![new_child])?)
}

/// Rewrites `expr`, evaluated on `plan`'s output, in terms of the columns of the stream at the
/// bottom of the plan (unqualified). Unnested list columns come back as `unnest(inner)`.
pub(crate) fn lineage(expr: &Expr, plan: &LogicalPlan) -> Option<Expr> {
    let mut failed = false;
    let out = expr
        .clone()
        .transform_up(|e| match e {
            Expr::Column(c) => match column_lineage(&c, plan) {
                Some(x) => Ok(Transformed::yes(x)),
                None => {
                    failed = true;
                    Ok(Transformed::new(
                        Expr::Column(c),
                        false,
                        TreeNodeRecursion::Stop,
                    ))
                }
            },
            other => Ok(Transformed::no(other)),
        })
        .ok()?
        .data;
    (!failed).then_some(out)
}

fn column_lineage(c: &Column, plan: &LogicalPlan) -> Option<Expr> {
    let idx = plan.schema().index_of_column(c).ok()?;
    let input_column = |input: &LogicalPlan, i: usize| {
        let (q, f) = input.schema().qualified_field(i);
        Column::from((q, f))
    };
    match plan {
        LogicalPlan::Projection(p) => lineage(&p.expr[idx].clone().unalias_nested().data, &p.input),
        LogicalPlan::Filter(f) => column_lineage(c, &f.input),
        LogicalPlan::Sort(s) => column_lineage(c, &s.input),
        LogicalPlan::SubqueryAlias(a) => column_lineage(&input_column(&a.input, idx), &a.input),
        LogicalPlan::Unnest(u) => {
            let dep = *u.dependency_indices.get(idx)?;
            let inner = column_lineage(&input_column(&u.input, dep), &u.input)?;
            if u.list_type_columns.iter().any(|(i, _)| *i == dep) {
                Some(Expr::Unnest(UnnestExpr::new(inner)))
            } else {
                Some(inner)
            }
        }
        LogicalPlan::Aggregate(a) if idx < a.group_expr.len() => {
            lineage(&a.group_expr[idx], &a.input)
        }
        LogicalPlan::Window(w) if idx < w.input.schema().fields().len() => {
            column_lineage(c, &w.input)
        }
        LogicalPlan::TableScan(_) => Some(Expr::Column(Column::new_unqualified(c.name.clone()))),
        _ => None,
    }
}

/// `date_bin(size, col[, origin])` or `unnest(hop(col, slide, size))`.
fn time_window(e: &Expr) -> Result<Option<WindowKind>> {
    match e {
        Expr::ScalarFunction(f) if f.name() == "date_bin" => {
            let size = interval_ms(&f.args[0], "date_bin")?;
            Ok(Some(WindowKind::Tumbling { size_ms: size }))
        }
        Expr::Unnest(u) => match u.expr.as_ref() {
            Expr::ScalarFunction(f) if f.name() == functions::HOP => {
                let slide = interval_ms(&f.args[1], "hop slide")?;
                let size = interval_ms(&f.args[2], "hop size")?;
                Ok(Some(WindowKind::Hopping {
                    slide_ms: slide,
                    size_ms: size,
                }))
            }
            _ => Ok(None),
        },
        _ => Ok(None),
    }
}

fn interval_ms(e: &Expr, what: &str) -> Result<i64> {
    let refuse = || {
        Error::Refused(format!(
            "{what} needs a constant interval such as INTERVAL '1 second'"
        ))
    };
    let Expr::Literal(v, _) = e else {
        return Err(refuse());
    };
    let ms = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) if i.months == 0 => {
            i.days as i64 * 86_400_000 + i.nanoseconds / 1_000_000
        }
        ScalarValue::IntervalDayTime(Some(i)) => i.days as i64 * 86_400_000 + i.milliseconds as i64,
        ScalarValue::IntervalMonthDayNano(Some(_)) | ScalarValue::IntervalYearMonth(_) => {
            return Err(Error::Refused(format!(
                "{what}: months and years have no fixed length; use days or less"
            )));
        }
        _ => return Err(refuse()),
    };
    if ms <= 0 {
        return Err(Error::Refused(format!("{what} must be longer than 0 ms")));
    }
    Ok(ms)
}

/// Cuts `Upper(Final(Partial(input)))` into `Partial(input)` and `Upper(Final(splice))`.
fn split_partial(
    plan: Arc<dyn ExecutionPlan>,
) -> Result<(Arc<dyn ExecutionPlan>, Arc<dyn ExecutionPlan>)> {
    let mut partial = None;
    let finish = plan
        .transform_down(|node| {
            let is_partial = node
                .downcast_ref::<AggregateExec>()
                .is_some_and(|a| *a.mode() == AggregateMode::Partial);
            if is_partial && partial.is_none() {
                let splice: Arc<dyn ExecutionPlan> = Arc::new(SpliceExec::new(node.schema()));
                partial = Some(node);
                Ok(Transformed::new(splice, true, TreeNodeRecursion::Jump))
            } else {
                Ok(Transformed::no(node))
            }
        })?
        .data;
    let partial = partial
        .ok_or_else(|| Error::Refused("internal: no partial aggregation in the plan".into()))?;
    Ok((partial, finish))
}

/// A `PartialReduce` aggregate over a splice of partial states: the final aggregate's groups
/// and accumulators, producing the partial aggregate's schema. None when the plan has no
/// final aggregate this can be built from (then windows keep every partial batch).
fn reduce_plan(
    partial: &Arc<dyn ExecutionPlan>,
    finish: &Arc<dyn ExecutionPlan>,
) -> Result<Option<Template>> {
    let mut fin = None;
    finish.apply(|node| {
        if let Some(a) = node.downcast_ref::<AggregateExec>()
            && matches!(
                a.mode(),
                AggregateMode::Final | AggregateMode::FinalPartitioned
            )
            && a.input().downcast_ref::<SpliceExec>().is_some()
        {
            fin = Some(node.clone());
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    let Some(fin) = fin else { return Ok(None) };
    let a = fin
        .downcast_ref::<AggregateExec>()
        .expect("found as an AggregateExec");
    let splice: Arc<dyn ExecutionPlan> = Arc::new(SpliceExec::new(partial.schema()));
    let reduce = AggregateExec::try_new(
        AggregateMode::PartialReduce,
        a.group_expr().clone(),
        a.aggr_expr().to_vec(),
        a.filter_expr().to_vec(),
        splice,
        a.input_schema(),
    )?;
    let same = |x: &SchemaRef, y: &SchemaRef| {
        x.fields().len() == y.fields().len()
            && x.fields()
                .iter()
                .zip(y.fields())
                .all(|(f, g)| f.data_type() == g.data_type())
    };
    if !same(&reduce.schema(), &partial.schema()) {
        return Ok(None);
    }
    Ok(Some(Template::new(Arc::new(reduce))?))
}

fn partial_group_exprs(partial: &Arc<dyn ExecutionPlan>) -> Result<Vec<Arc<dyn PhysicalExpr>>> {
    let agg = partial
        .downcast_ref::<AggregateExec>()
        .expect("split_partial returns the partial aggregate");
    Ok(agg
        .group_expr()
        .expr()
        .iter()
        .map(|(e, _)| e.clone())
        .collect())
}

async fn window_stage(
    state: &SessionState,
    seg: &[&LogicalPlan],
    w: &Window,
    lowest_stateful: bool,
    from_query: bool,
) -> Result<WindowFnPlan> {
    let input = w.input.as_ref();
    let seq_field = Field::new(SEQ, DataType::UInt64, false);
    let seq_schema = DFSchema::from_unqualified_fields(vec![seq_field].into(), HashMap::new())?;
    let with_seq = Arc::new(input.schema().join(&seq_schema)?);
    let mut partition_by: Option<Vec<Expr>> = None;
    let (mut preceding, mut following) = (0usize, 0usize);
    for e in &w.window_expr {
        let Expr::WindowFunction(wf) = e.clone().unalias_nested().data else {
            return Err(Error::Refused(
                "internal: unexpected window expression".into(),
            ));
        };
        let (p, f) = context_rows(&wf)?;
        preceding = preceding.max(p);
        following = following.max(f);
        match &partition_by {
            None => partition_by = Some(wf.params.partition_by.clone()),
            Some(prev) if prev != &wf.params.partition_by => {
                return Err(Error::Refused(
                    "window functions of one query must share one PARTITION BY: chain queries for others".into(),
                ));
            }
            _ => {}
        }
    }
    let partition_by = partition_by
        .map(|exprs| {
            exprs
                .iter()
                .map(|e| state.create_physical_expr(e.clone(), &with_seq))
                .collect::<datafusion::error::Result<Vec<_>>>()
        })
        .transpose()?
        .unwrap_or_default();
    let window_plan = LogicalPlan::Window(Window::try_new(
        w.window_expr.clone(),
        Arc::new(SpliceNode::plan(with_seq.clone())),
    )?);
    let window = Template::new(splice::physical_plan(&window_plan, state).await?)?;
    let upper = if seg.len() > 1 {
        let p = replace_at(seg[0], seg.len() - 1, SpliceNode::plan(w.schema.clone()))?;
        Some(Template::new(splice::physical_plan(&p, state).await?)?)
    } else {
        None
    };
    let gate_ts = if lowest_stateful {
        (0..input.schema().fields().len()).find_map(|j| {
            let (q, f) = input.schema().qualified_field(j);
            let origin = lineage(&Expr::Column(Column::from((q, f))), input)?;
            matches!(&origin, Expr::Column(c) if c.name == "ts")
                .then(|| Arc::new(PhysicalColumn::new(f.name(), j)) as Arc<dyn PhysicalExpr>)
        })
    } else {
        None
    };
    Ok(WindowFnPlan {
        window,
        upper,
        partition_by,
        preceding,
        following,
        gate_ts,
        from_query,
        seq_index: input.schema().fields().len(),
        upper_input_schema: Arc::new(w.schema.as_arrow().clone()),
    })
}

/// Rows of context a window function needs before and after each row, or a refusal when it
/// needs the whole history.
fn context_rows(wf: &WindowFunction) -> Result<(usize, usize)> {
    let name = wf.fun.name().to_ascii_lowercase();
    let params = &wf.params;
    if params.order_by.is_empty() {
        return Err(Error::Refused(format!(
            "{name}() OVER needs ORDER BY on a stream, e.g. OVER (PARTITION BY driver ORDER BY ts)"
        )));
    }
    let offset = |default: usize| -> Result<usize> {
        match params.args.get(1) {
            None => Ok(default),
            Some(Expr::Literal(v, _)) => match v {
                ScalarValue::Int64(Some(n)) if *n >= 0 => Ok(*n as usize),
                ScalarValue::Int32(Some(n)) if *n >= 0 => Ok(*n as usize),
                ScalarValue::UInt64(Some(n)) => Ok(*n as usize),
                _ => Err(Error::Refused(format!(
                    "{name}() needs a constant, non-negative offset"
                ))),
            },
            Some(_) => Err(Error::Refused(format!("{name}() needs a constant offset"))),
        }
    };
    match name.as_str() {
        "lag" => return Ok((offset(1)?, 0)),
        "lead" => return Ok((0, offset(1)?)),
        "row_number" | "rank" | "dense_rank" | "percent_rank" | "cume_dist" | "ntile" => {
            return Err(Error::Refused(format!(
                "{name}() needs the whole history of a stream: use lag/lead, or an aggregate over \
                 ROWS BETWEEN n PRECEDING AND CURRENT ROW"
            )));
        }
        _ => {}
    }
    let frame = &params.window_frame;
    let unbounded = Error::Refused(format!(
        "{name}() OVER (... ORDER BY ...) has an unbounded frame, which needs the whole history: \
         use ROWS BETWEEN n PRECEDING AND CURRENT ROW"
    ));
    if frame.units != WindowFrameUnits::Rows {
        // The default frame with ORDER BY is RANGE UNBOUNDED PRECEDING.
        return Err(unbounded);
    }
    let rows = |b: &WindowFrameBound| -> Option<(usize, usize)> {
        match b {
            WindowFrameBound::CurrentRow => Some((0, 0)),
            WindowFrameBound::Preceding(v) => scalar_usize(v).map(|n| (n, 0)),
            WindowFrameBound::Following(v) => scalar_usize(v).map(|n| (0, n)),
        }
    };
    let (Some(start), Some(end)) = (rows(&frame.start_bound), rows(&frame.end_bound)) else {
        return Err(unbounded);
    };
    Ok((start.0.max(end.0), start.1.max(end.1)))
}

fn scalar_usize(v: &ScalarValue) -> Option<usize> {
    match v {
        ScalarValue::UInt64(Some(n)) => Some(*n as usize),
        ScalarValue::Int64(Some(n)) if *n >= 0 => Some(*n as usize),
        _ => None,
    }
}
