//! Ad hoc queries: a grouped aggregation over a small input is finished in one partition.
//!
//! DataFusion plans a `GROUP BY` on several cores as partial aggregates per input partition,
//! a hash repartition of their groups, and final aggregates per partition. The repartition
//! pays for itself when the groups are many; for the queries users run over a session (per
//! lap, per driver, per stint: a few thousand groups out of a race's few hundred thousand
//! rows) it is a fixed cost of channels, hashing and tasks. Like DataFusion's own
//! `hash_join_single_partition_threshold_rows` for joins, this rule decides by the input's
//! statistics (the Parquet footers of the archive's files, exact row counts of the live
//! tables): an aggregation whose input has at most [`ROWS`] rows is finished in one
//! partition, as DataFusion plans it with `repartition_aggregations = false`. It runs before
//! `EnsureRequirements`, which then gathers the partial results (and repartitions above, if
//! a parent needs it). Per-lap statistics over a whole race: 2-4% faster (BENCHMARKS.md).

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::config::ConfigOptions;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};

/// Inputs up to this many rows are aggregated to the end in one partition. Even with every
/// row its own group, the final step then does on one core what partial steps did on each:
/// measured with a million distinct groups (BENCHMARKS.md).
pub(crate) const ROWS: usize = 1_000_000;

#[derive(Debug, Default)]
pub(crate) struct SmallAggregateInOnePartition;

impl PhysicalOptimizerRule for SmallAggregateInOnePartition {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if config.execution.target_partitions <= 1 {
            return Ok(plan);
        }
        plan.transform_down(|plan| {
            let Some(last) = plan.downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(plan));
            };
            let Some(partial) = last.input().downcast_ref::<AggregateExec>() else {
                return Ok(Transformed::no(plan));
            };
            if *last.mode() != AggregateMode::FinalPartitioned
                || *partial.mode() != AggregateMode::Partial
            {
                return Ok(Transformed::no(plan));
            }
            let rows = StatisticsContext::new()
                .compute(partial.input().as_ref(), &StatisticsArgs::new())?
                .num_rows;
            if rows.get_value().is_none_or(|r| *r > ROWS) {
                return Ok(Transformed::no(plan));
            }
            let single = AggregateExec::try_new(
                AggregateMode::Final,
                last.group_expr().clone(),
                last.aggr_expr().to_vec(),
                last.filter_expr().to_vec(),
                Arc::clone(last.input()),
                last.input_schema(),
            )?
            .with_limit_options(last.limit_options());
            Ok(Transformed::yes(Arc::new(single) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "SmallAggregateInOnePartition"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// DataFusion's physical optimizer rules with [`SmallAggregateInOnePartition`] before
/// `EnsureRequirements`.
pub(crate) fn physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = PhysicalOptimizer::new().rules;
    let at = rules
        .iter()
        .position(|r| r.name() == "EnsureRequirements")
        .unwrap_or(0);
    rules.insert(at, Arc::new(SmallAggregateInOnePartition));
    rules
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int32Array, RecordBatch};
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;
    use datafusion::execution::runtime_env::RuntimeEnv;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;

    /// `t(k, v)` in two partitions of `rows / 2` rows each, `k` cycling through 7 values.
    fn context(rows: usize, ours: bool) -> SessionContext {
        let config = SessionConfig::new().with_target_partitions(2);
        let ctx = if ours {
            crate::flight::adhoc::session(config, Arc::new(RuntimeEnv::default()))
        } else {
            SessionContext::new_with_config(config)
        };
        let half = |from: usize| {
            let v: Vec<i32> = (from..from + rows / 2).map(|i| i as i32).collect();
            RecordBatch::try_from_iter([
                (
                    "k",
                    Arc::new(Int32Array::from_iter_values(v.iter().map(|i| i % 7))) as _,
                ),
                ("v", Arc::new(Int32Array::from(v)) as _),
            ])
            .unwrap()
        };
        let (a, b) = (half(0), half(rows / 2));
        let table = MemTable::try_new(a.schema(), vec![vec![a], vec![b]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    const SQL: &str = "SELECT k, count(*) AS n, sum(v) AS s FROM t GROUP BY k ORDER BY k";

    /// Two aggregations joined on their keys: the join needs both sides partitioned alike.
    const JOINED: &str = "SELECT a.k, n, s FROM (SELECT k, count(*) AS n FROM t GROUP BY k) a
         JOIN (SELECT k, sum(v) AS s FROM t GROUP BY k) b ON a.k = b.k ORDER BY a.k";

    async fn plan_and_rows(ctx: &SessionContext, sql: &str) -> (String, String) {
        let plan = ctx
            .sql(sql)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        let rows = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        (shown, pretty_format_batches(&rows).unwrap().to_string())
    }

    #[tokio::test]
    async fn a_small_input_is_aggregated_to_the_end_in_one_partition() {
        let (ours, ours_rows) = plan_and_rows(&context(10_000, true), SQL).await;
        let (theirs, theirs_rows) = plan_and_rows(&context(10_000, false), SQL).await;
        assert!(theirs.contains("mode=FinalPartitioned"), "{theirs}");
        assert!(theirs.contains("partitioning=Hash"), "{theirs}");
        assert!(ours.contains("AggregateExec: mode=Final,"), "{ours}");
        assert!(!ours.contains("partitioning=Hash"), "{ours}");
        // Both partitions are still aggregated in parallel, then gathered.
        assert!(ours.contains("CoalescePartitionsExec"), "{ours}");
        assert_eq!(ours_rows, theirs_rows);
        let (_, ours) = plan_and_rows(&context(10_000, true), JOINED).await;
        let (_, theirs) = plan_and_rows(&context(10_000, false), JOINED).await;
        assert_eq!(ours, theirs);
        assert_eq!(ours.lines().count(), 7 + 4, "{ours}");
    }

    #[tokio::test]
    async fn a_large_input_keeps_the_repartitioned_plan() {
        let (ours, _) = plan_and_rows(&context(ROWS + 2, true), SQL).await;
        assert!(ours.contains("mode=FinalPartitioned"), "{ours}");
        assert!(ours.contains("partitioning=Hash"), "{ours}");
    }
}
