//! The dashboard's JSON API: which queries run (their columns, kind and parameters), setting a
//! parameter (the threshold slider's "apply to every screen"), and the archived sessions, read
//! through the same ad hoc SQL path as `pitwall sql`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::response::IntoResponse;
use datafusion::arrow::array::{AsArray, RecordBatch};
use serde_json::{Map, Value, json};

use super::{HttpError, WebState};
use crate::engine::{QueryInfo, QueryStatus};
use crate::flight::adhoc;

/// Queries whose archived results a session page shows.
const SESSION_QUERIES: &[&str] = &["lap_stats", "lap_anomaly", "over_rev", "lock_up"];

/// Most rows of one query a session page gets.
const SESSION_ROWS: usize = 20_000;

fn info_json(q: &QueryInfo) -> Value {
    let columns: Vec<Value> = q
        .schema
        .fields()
        .iter()
        .map(|f| json!({"name": f.name(), "type": f.data_type().to_string()}))
        .collect();
    let params: Map<String, Value> = q
        .params
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    json!({
        "name": q.name,
        "kind": q.kind,
        "input": q.input,
        "inputs": q.inputs,
        "status": match q.status {
            QueryStatus::Running => "running",
            QueryStatus::Paused => "paused",
            QueryStatus::Failed => "failed",
        },
        "last_error": q.last_error,
        "params": params,
        "columns": columns,
        "rows_emitted": q.rows_emitted,
        "subscribers": q.subscribers,
        "sql": q.sql,
    })
}

/// `GET /api/queries`: every query, and the epoch live streams are numbered in.
pub(crate) async fn queries(State(state): State<Arc<WebState>>) -> Result<Json<Value>, HttpError> {
    let list = state.flight.engine.list().await?;
    Ok(Json(json!({
        "epoch": state.epoch,
        "token_required": state.token.is_some(),
        "queries": list.iter().map(info_json).collect::<Vec<_>>(),
    })))
}

/// `GET /api/queries/NAME`.
pub(crate) async fn query(
    State(state): State<Arc<WebState>>,
    Path(name): Path<String>,
) -> Result<Json<Value>, HttpError> {
    Ok(Json(info_json(&state.flight.engine.show(&name).await?)))
}

/// `POST /api/queries/NAME/params` with `{"threshold": 60}`: as `pitwall set`, for every
/// screen and Flight subscriber from the next micro-batch on.
pub(crate) async fn set_params(
    State(state): State<Arc<WebState>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, HttpError> {
    let values: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
        HttpError::bad_request(format!(
            "expected a JSON object of parameters, e.g. {{\"threshold\": 60}}: {e}"
        ))
    })?;
    let mut params = Vec::new();
    for (k, v) in values {
        let text = match v {
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            // A string is taken as SQL literal text (`'VER'` for a string value).
            Value::String(s) => s,
            other => {
                return Err(HttpError::bad_request(format!(
                    "parameter {k}: {other} is not a number, boolean or SQL literal"
                )));
            }
        };
        params.push((k, text));
    }
    if params.is_empty() {
        return Err(HttpError::bad_request("no parameters given"));
    }
    let info = state.flight.engine.set_params(&name, params).await?;
    Ok(Json(info_json(&info)))
}

/// Rows as JSON objects (timestamps as RFC 3339 text, nulls left out).
pub(crate) fn rows_json(batches: &[RecordBatch]) -> Result<String, HttpError> {
    let mut w = datafusion::arrow::json::ArrayWriter::new(Vec::new());
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    w.write_batches(&refs)
        .and_then(|()| w.finish())
        .map_err(|e| HttpError(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let bytes = w.into_inner();
    Ok(if bytes.is_empty() {
        "[]".into()
    } else {
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Ad hoc SQL over the archive, as `pitwall sql` runs it.
async fn archive_sql(state: &WebState, sql: &str) -> Result<Vec<RecordBatch>, HttpError> {
    let ctx = adhoc::context(&state.flight).await?;
    let plan = adhoc::plan(&ctx, sql).await?;
    let (_, batches) = adhoc::execute(
        &ctx,
        state.flight.archive.as_deref(),
        plan,
        None,
        state.flight.adhoc,
    )
    .await?;
    Ok(batches)
}

async fn session_names(state: &WebState) -> Result<Vec<String>, HttpError> {
    let Some(archive) = &state.flight.archive else {
        return Ok(Vec::new());
    };
    let ctx = adhoc::context(&state.flight).await?;
    let batch = archive.sessions(&ctx).await?;
    let names = datafusion::arrow::compute::cast(
        batch.column(0),
        &datafusion::arrow::datatypes::DataType::Utf8,
    )
    .map_err(|e| HttpError(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(names
        .as_string::<i32>()
        .iter()
        .flatten()
        .map(String::from)
        .collect())
}

/// `GET /api/sessions`: the archived sessions, newest name last.
pub(crate) async fn sessions(State(state): State<Arc<WebState>>) -> Result<Json<Value>, HttpError> {
    Ok(Json(json!({ "sessions": session_names(&state).await? })))
}

/// `GET /api/sessions/NAME`: the session's archived laps, anomaly scores and alerts, as
/// `{"lap_stats": [...], "lap_anomaly": [...], "over_rev": [...], "lock_up": [...]}` (a query
/// that archived nothing for it is an empty list).
pub(crate) async fn session(
    State(state): State<Arc<WebState>>,
    Path(name): Path<String>,
) -> Result<axum::response::Response, HttpError> {
    if !session_names(&state).await?.contains(&name) {
        return Err(HttpError::not_found(format!(
            "no archived session named {name:?}; GET /api/sessions lists them"
        )));
    }
    let literal = name.replace('\'', "''");
    let mut parts = Vec::new();
    for q in SESSION_QUERIES {
        let sql = format!(
            "SELECT * FROM archive.results_{q} WHERE session = '{literal}' LIMIT {SESSION_ROWS}"
        );
        let rows = match archive_sql(&state, &sql).await {
            Ok(b) => rows_json(&b)?,
            // Not archived (yet) for this query: nothing to show.
            Err(e) if e.0 == axum::http::StatusCode::BAD_REQUEST => "[]".into(),
            Err(e) => return Err(e),
        };
        parts.push(format!("{}:{rows}", Value::String(q.to_string())));
    }
    let body = format!("{{{}}}", parts.join(","));
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}
