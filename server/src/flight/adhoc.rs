//! Ad-hoc SQL from clients (Flight SQL, `pitwall sql`): read-only queries over each
//! continuous query's recent results (schema `live`, the default) and over the archive
//! (schema `archive`), under a memory limit and a timeout.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::datasource::MemTable;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use tonic::Status;

use super::FlightState;
use crate::engine::functions;
use crate::engine::guard::{parse_read_only, short_error};

pub const CATALOG: &str = "pitwall";
pub const LIVE_SCHEMA: &str = "live";

#[derive(Debug, Clone, Copy)]
pub struct AdhocLimits {
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

/// A fresh context: one table per continuous query in `live`, holding its replay buffer, and
/// the `archive` schema. Each query has a memory pool of its own; Parquet footers and file
/// statistics of the archive are cached across queries (see [`crate::archive::ArchiveCatalog`]).
pub async fn context(state: &FlightState) -> Result<SessionContext, Status> {
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
    let ctx = SessionContext::new_with_config_rt(config, runtime);
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
    if let Some(archive) = &state.archive {
        if let Err(e) = archive.register(&ctx, CATALOG).await {
            tracing::warn!(error = %e, "the archive is not queryable right now");
        }
    }
    Ok(ctx)
}

/// Plans client SQL, refusing anything that is not a read-only query.
pub async fn plan(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan, Status> {
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
pub async fn execute(
    ctx: &SessionContext,
    plan: LogicalPlan,
    params: Option<ParamValues>,
    limits: AdhocLimits,
) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    let plan = match params {
        Some(p) => plan.with_param_values(p).map_err(invalid)?,
        None => plan,
    };
    let df = ctx.execute_logical_plan(plan).await.map_err(invalid)?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = tokio::time::timeout(limits.timeout, df.collect())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "query ran longer than {} s and was stopped",
                limits.timeout.as_secs()
            ))
        })?
        .map_err(|e| {
            let msg = short_error(&e);
            if msg.contains("Resources exhausted") || msg.contains("memory") {
                Status::resource_exhausted(msg)
            } else {
                Status::invalid_argument(msg)
            }
        })?;
    Ok((schema, batches))
}
