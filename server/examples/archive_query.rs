//! Per-lap statistics over an archived session, in-process: the same catalog, caches and
//! DataFusion settings as an ad hoc query from `pitwall sql` gets, timed stage by stage
//! without the CLI and Flight around it (`scripts/archive-bench.sh` runs it next to DuckDB):
//! `cargo run --release --example archive_query -- DATA_DIR SESSION [RUNS] [SQL]`
//! (SQL instead of the per-lap statistics, `{session}` standing for SESSION).
//! DATAFUSION_* environment variables (e.g. DATAFUSION_EXECUTION_TARGET_PARTITIONS=1) change
//! the session's settings, to try them; PITWALL_DATAFUSION_RULES=1 plans with DataFusion's
//! own physical rules only (without `flight::small_aggregate`), to compare; PITWALL_PRINT=1
//! prints the last run's rows (for an `EXPLAIN ANALYZE`, say).

use std::sync::Arc;
use std::time::Instant;

use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use pitwall_server::archive::{ArchiveCatalog, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    pitwall_server::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(session)) = (args.get(1), args.get(2)) else {
        anyhow::bail!("usage: archive_query DATA_DIR SESSION [RUNS] [SQL]");
    };
    let runs: usize = args.get(3).map_or(Ok(10), |r| r.parse())?;
    let catalog = Arc::new(ArchiveCatalog::new(Store::open(dir)?)?);
    let sql = match args.get(4) {
        Some(sql) => sql.replace("{session}", session),
        None => format!(
            "SELECT driver, lap, count(*) AS samples, avg(speed) AS mean_speed, max(speed) AS max_speed,
                avg(rpm) AS mean_rpm
         FROM archive.telemetry WHERE session = '{session}' AND lap IS NOT NULL
         GROUP BY driver, lap ORDER BY driver, lap"
        ),
    };
    let datafusion_rules = std::env::var_os("PITWALL_DATAFUSION_RULES").is_some();
    let print = std::env::var_os("PITWALL_PRINT").is_some();
    let mut best: Option<[f64; 3]> = None;
    for run in 0..runs {
        let t0 = Instant::now();
        let runtime = RuntimeEnvBuilder::new()
            .with_cache_manager(catalog.cache_config())
            .build_arc()?;
        let config = SessionConfig::from_env()?
            .with_default_catalog_and_schema("pitwall", "live")
            .with_create_default_catalog_and_schema(true);
        let ctx = if datafusion_rules {
            SessionContext::new_with_config_rt(config, runtime)
        } else {
            pitwall_server::flight::adhoc::session(config, runtime)
        };
        catalog.register(&ctx, "pitwall").await?;
        let t1 = Instant::now();
        let plan = ctx.sql(&sql).await?.create_physical_plan().await?;
        let t2 = Instant::now();
        let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await?;
        let t3 = Instant::now();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let stages = [t1 - t0, t2 - t1, t3 - t2].map(|d| d.as_secs_f64() * 1e3);
        println!(
            "run {run}: {rows} rows in {:.1} ms: context {:.1} ms, plan {:.1} ms, execute {:.1} ms",
            stages.iter().sum::<f64>(),
            stages[0],
            stages[1],
            stages[2]
        );
        if print && run + 1 == runs {
            println!(
                "{}",
                datafusion::arrow::util::pretty::pretty_format_batches(&batches)?
            );
        }
        if best.is_none_or(|b| stages.iter().sum::<f64>() < b.iter().sum::<f64>()) {
            best = Some(stages);
        }
    }
    if let Some(b) = best {
        println!(
            "best {:.1} ms: context {:.1} ms, plan {:.1} ms, execute {:.1} ms",
            b.iter().sum::<f64>(),
            b[0],
            b[1],
            b[2]
        );
    }
    Ok(())
}
