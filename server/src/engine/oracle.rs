//! The oracle for continuous queries: the same SQL run in batch by DataFusion over all the
//! rows at once. A continuous query's emitted rows, concatenated and sorted, must equal this.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::definition::{QueryDef, literal_text};
use super::functions;
use crate::error::Result;

/// Runs query `name` in batch over `rows` (the `telemetry` table); `queries` are all the
/// definitions, registered as views so that chained queries read their inputs.
pub async fn batch_result(
    queries: &[QueryDef],
    name: &str,
    rows: &RecordBatch,
) -> Result<Vec<RecordBatch>> {
    let ctx = SessionContext::new();
    functions::register(&ctx);
    let table = MemTable::try_new(rows.schema(), vec![vec![rows.clone()]])?;
    ctx.register_table("telemetry", Arc::new(table))?;
    for q in queries {
        let mut sql = q.sql.clone();
        // Longest names first, so that $threshold_hi is not cut by $threshold.
        let mut params: Vec<_> = q.params.iter().collect();
        params.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
        for (k, v) in params {
            sql = sql.replace(&format!("${k}"), &literal_text(v));
        }
        ctx.sql(&format!("CREATE VIEW {} AS {}", q.name, sql))
            .await?;
    }
    Ok(ctx
        .sql(&format!("SELECT * FROM {name}"))
        .await?
        .collect()
        .await?)
}

/// Rows as sorted text lines, floats rounded to 7 significant digits, for comparing results
/// computed in different orders.
pub fn canonical_rows(batches: &[RecordBatch]) -> Vec<String> {
    let batches: Vec<RecordBatch> = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .cloned()
        .collect();
    if batches.is_empty() {
        return vec![];
    }
    let text = match pretty_format_batches(&batches) {
        Ok(t) => t.to_string(),
        Err(e) => return vec![format!("unprintable: {e}")],
    };
    let mut lines: Vec<String> = text
        .lines()
        .skip(3)
        .filter(|l| l.starts_with('|'))
        .map(round_floats)
        .collect();
    lines.sort();
    lines
}

fn round_floats(line: &str) -> String {
    line.split('|')
        .map(|cell| {
            let t = cell.trim();
            match t.parse::<f64>() {
                Ok(v) if t.contains('.') || t.contains('e') => format!("{v:.6e}"),
                _ => t.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// Panics with the row counts and the first differing rows, not whole results.
pub fn assert_same_rows(name: &str, streamed: &[String], batch: &[String]) {
    if streamed == batch {
        return;
    }
    let only_s: Vec<&String> = streamed
        .iter()
        .filter(|r| !batch.contains(r))
        .take(5)
        .collect();
    let only_b: Vec<&String> = batch
        .iter()
        .filter(|r| !streamed.contains(r))
        .take(5)
        .collect();
    panic!(
        "{name}: streamed {} rows, batch {} rows\nonly streamed: {only_s:#?}\nonly batch: {only_b:#?}",
        streamed.len(),
        batch.len()
    );
}
