//! Ad-hoc SQL from clients (Flight SQL, `pitwall sql`): read-only queries over each
//! continuous query's recent results (schema `live`, the default) and over the archive
//! (schema `archive`), under a memory limit and a timeout.

use std::sync::Arc;
use std::time::Duration;

use crate::archive::ArchiveCatalog;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::datasource::MemTable;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use tonic::Status;

use super::FlightState;
use crate::engine::functions;
use crate::engine::guard::{parse_read_only, short_error};

pub(crate) const CATALOG: &str = "pitwall";
pub(crate) const LIVE_SCHEMA: &str = "live";

#[derive(Debug, Clone, Copy)]
pub(crate) struct AdhocLimits {
    pub memory_bytes: usize,
    pub timeout: Duration,
}

impl Default for AdhocLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 512 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

fn invalid(e: datafusion::error::DataFusionError) -> Status {
    Status::invalid_argument(short_error(&e))
}

/// A context for ad hoc SQL: DataFusion's defaults and planner, with grouped aggregations
/// over small inputs finished in one partition (`super::small_aggregate`).
pub fn session(config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionContext {
    SessionContext::new_with_state(
        SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_physical_optimizer_rules(super::small_aggregate::physical_rules())
            .build(),
    )
}

/// A fresh context: one table per continuous query in `live`, holding its replay buffer, and
/// the `archive` schema. Each query has a memory pool of its own; Parquet footers and file
/// statistics of the archive are cached across queries (see [`crate::archive::ArchiveCatalog`]).
pub(crate) async fn context(state: &FlightState) -> Result<SessionContext, Status> {
    let mut runtime = RuntimeEnvBuilder::new().with_memory_limit(state.adhoc.memory_bytes, 1.0);
    if let Some(archive) = &state.archive {
        runtime = runtime.with_cache_manager(archive.cache_config());
    }
    let runtime = runtime
        .build_arc()
        .map_err(|e| Status::internal(e.to_string()))?;
    let config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG, LIVE_SCHEMA)
        .with_create_default_catalog_and_schema(true)
        .with_information_schema(true);
    let ctx = session(config, runtime);
    functions::register(&ctx);
    let queries = state.engine.list().await.map_err(super::status)?;
    for q in queries {
        let Some(results) = state.engine.results(&q.name) else {
            continue;
        };
        let schema = results.schema();
        let batches: Vec<RecordBatch> = results
            .snapshot()
            .into_iter()
            .filter(|b| b.schema() == schema)
            .collect();
        let table = MemTable::try_new(schema, vec![batches])
            .map_err(|e| Status::internal(e.to_string()))?;
        ctx.register_table(q.name.as_str(), Arc::new(table))
            .map_err(|e| Status::internal(e.to_string()))?;
    }
    if let Some(archive) = &state.archive
        && let Err(e) = archive.register(&ctx, CATALOG).await
    {
        tracing::warn!(error = %e, "the archive is not queryable right now");
    }
    Ok(ctx)
}

/// Plans client SQL, refusing anything that is not a read-only query.
pub(crate) async fn plan(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan, Status> {
    let state = ctx.state();
    let stmt = parse_read_only(&state, sql).map_err(Status::invalid_argument)?;
    let plan = state.statement_to_plan(stmt).await.map_err(invalid)?;
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(invalid)?;
    Ok(plan)
}

/// Runs a plan (with positional parameter values, if any) under the limits.
///
/// Archive files can go between a query's listing and its reads: the inputs of a merge and
/// files past retention are deleted a little after the commit that leaves them out, and a
/// query may have taken its view before that commit. Such a query is run again, as
/// of the archive's newest commit and listing afresh, a few times within its timeout; results
/// are collected before anything is sent, so the client never sees the failed attempt.
pub(crate) async fn execute(
    ctx: &SessionContext,
    archive: Option<&ArchiveCatalog>,
    plan: LogicalPlan,
    params: Option<ParamValues>,
    limits: AdhocLimits,
) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    const ATTEMPTS: usize = 4;
    let plan = match params {
        Some(p) => plan.with_param_values(p).map_err(invalid)?,
        None => plan,
    };
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let mut attempt = 1;
    loop {
        let df = ctx
            .execute_logical_plan(plan.clone())
            .await
            .map_err(invalid)?;
        let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
        let collected = tokio::time::timeout_at(deadline, df.collect())
            .await
            .map_err(|_| {
                Status::deadline_exceeded(format!(
                    "query ran longer than {} s and was stopped",
                    limits.timeout.as_secs()
                ))
            })?;
        match collected {
            Ok(batches) => return Ok((schema, batches)),
            Err(e) if attempt < ATTEMPTS && crate::archive::visible::is_missing_file(&e) => {
                tracing::debug!(attempt, error = %e, "an archive file went during the query; running it again");
                // The view the query started with may show neither the deleted inputs nor
                // the merged file that replaced them.
                if let Some(a) = archive
                    && let Err(e) = a.refresh(ctx).await
                {
                    tracing::warn!(error = %e, "the archive is not queryable right now");
                }
                attempt += 1;
            }
            Err(e) => {
                let msg = short_error(&e);
                return Err(
                    if msg.contains("Resources exhausted") || msg.contains("memory") {
                        Status::resource_exhausted(msg)
                    } else {
                        Status::invalid_argument(msg)
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int32Array, RecordBatch};
    use datafusion::prelude::{ParquetReadOptions, SessionContext};

    #[tokio::test]
    async fn a_file_gone_after_listing_is_told_apart_from_other_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("part-1.parquet");
        let batch =
            RecordBatch::try_from_iter([("v", Arc::new(Int32Array::from(vec![1, 2])) as _)])
                .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&path).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let ctx = SessionContext::new();
        ctx.register_parquet(
            "t",
            dir.path().to_str().unwrap(),
            ParquetReadOptions::default(),
        )
        .await
        .unwrap();
        // Listed at planning, deleted before it is read.
        let plan = ctx
            .sql("SELECT sum(v) FROM t")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        let err = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap_err();
        assert!(crate::archive::visible::is_missing_file(&err), "{err}");
        let other = ctx.sql("SELECT v / 0 FROM (VALUES (1)) AS x(v)").await;
        let other = match other {
            Ok(df) => df.collect().await.unwrap_err(),
            Err(e) => e,
        };
        assert!(!crate::archive::visible::is_missing_file(&other), "{other}");
    }
}
