//! What SQL from outside may do, and how its errors are told: read-only statements only, and
//! one short line instead of DataFusion's multi-kilobyte messages.

use datafusion::common::SchemaError;
use datafusion::config::Dialect;
use datafusion::error::DataFusionError;
use datafusion::execution::SessionState;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::Statement;

/// Parses one statement and accepts it only if it is a query (SELECT / WITH / VALUES).
pub(crate) fn parse_read_only(state: &SessionState, sql: &str) -> Result<DFStatement, String> {
    let stmt = state
        .sql_to_statement(sql, &Dialect::Generic)
        .map_err(|e| short_error(&e))?;
    match &stmt {
        DFStatement::Statement(s) if matches!(**s, Statement::Query(_)) => Ok(stmt),
        DFStatement::Statement(s) => Err(format!(
            "{} statements are refused: Pitwall runs read-only queries (SELECT ... FROM ...)",
            statement_kind(s)
        )),
        DFStatement::CreateExternalTable(_) => {
            Err("CREATE EXTERNAL TABLE is refused: reading files from SQL is not allowed".into())
        }
        DFStatement::CopyTo(_) => {
            Err("COPY is refused: writing files from SQL is not allowed".into())
        }
        DFStatement::Explain(e) => {
            let query = matches!(e.statement.as_ref(), DFStatement::Statement(s) if matches!(**s, Statement::Query(_)));
            if query {
                Ok(stmt)
            } else {
                Err("EXPLAIN is for queries only (EXPLAIN SELECT ...)".into())
            }
        }
        DFStatement::Reset(_) => {
            Err("RESET is refused: settings cannot be changed from SQL".into())
        }
    }
}

fn statement_kind(s: &Statement) -> String {
    let text = s.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    match words.as_slice() {
        [a, b]
            if matches!(
                a.to_ascii_uppercase().as_str(),
                "CREATE" | "DROP" | "ALTER" | "SHOW"
            ) =>
        {
            format!("{} {}", a.to_ascii_uppercase(), b.to_ascii_uppercase())
        }
        [a, ..] => a.to_ascii_uppercase(),
        [] => "empty".into(),
    }
}

/// One line a user can act on, from any DataFusion error.
pub(crate) fn short_error(e: &DataFusionError) -> String {
    let root = e.find_root();
    let msg = match root {
        DataFusionError::SQL(err, _) => format!("invalid SQL: {}", strip_prefix(&err.to_string())),
        DataFusionError::SchemaError(err, _) => match err.as_ref() {
            SchemaError::FieldNotFound {
                field,
                valid_fields,
            } => {
                let mut valid: Vec<String> = valid_fields.iter().map(|c| c.name.clone()).collect();
                valid.sort();
                valid.dedup();
                format!(
                    "unknown column {}; the input has: {}",
                    field.name,
                    valid.join(", ")
                )
            }
            other => other.to_string(),
        },
        DataFusionError::Plan(m) if m.starts_with("table function '") => {
            let name = m.split('\'').nth(1).unwrap_or_default();
            format!(
                "{name}() is not available: continuous queries cannot read files or call table functions; \
                 read telemetry or another query"
            )
        }
        DataFusionError::Plan(m) if m.starts_with("table '") && m.contains("not found") => {
            let name = m.split('\'').nth(1).unwrap_or_default();
            let name = name.rsplit('.').next().unwrap_or(name);
            format!("unknown table {name}: a query reads telemetry or the name of another query")
        }
        other => strip_prefix(&other.to_string()),
    };
    crate::error::one_line(&msg)
}

fn strip_prefix(s: &str) -> String {
    let mut s = s.trim();
    for p in [
        "Error during planning: ",
        "sql parser error: ",
        "Schema error: ",
        "Execution error: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Optimizer rule",
    ] {
        if let Some(rest) = s.strip_prefix(p) {
            s = rest;
        }
    }
    s.to_string()
}
