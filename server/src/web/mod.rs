//! The dashboard: the other way out, beside [`crate::flight`], for people rather than programs.
//!
//! One HTTP port (`--http-addr`, default `127.0.0.1:8080`) serves
//!
//! - the page: HTML, CSS and JS modules embedded in the binary ([`assets`]), with uPlot
//!   vendored from npm for the charts; nothing is fetched from anywhere else;
//! - one Server-Sent Events stream per page ([`live`]) multiplexing the result streams the
//!   page shows and the cars' traces, fed from the same broadcast channels and replay buffers
//!   as Flight subscribers: a page that reconnects resumes from the last sequence numbers it
//!   has, and one that cannot keep up is dropped and reconnects, as a slow Flight subscriber;
//! - a small JSON API ([`api`]): the queries with their schemas and parameters, setting a
//!   parameter, and the archived sessions (read with the same ad hoc SQL path as `pitwall sql`);
//! - `GET /metrics` in the Prometheus text format ([`metrics`]).
//!
//! With a token configured, everything but the page's own files (which hold no data and ask
//! for the token) needs `authorization: Bearer TOKEN` (or Basic with the token as password),
//! compared in constant time like Flight's.

pub(crate) mod api;
pub(crate) mod assets;
pub(crate) mod live;
pub(crate) mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;

use crate::error::{Error, Result};
use crate::flight::FlightState;

/// What the HTTP endpoint serves from.
pub(crate) struct WebState {
    pub flight: Arc<FlightState>,
    pub token: Option<Arc<str>>,
    /// Names this process: a page's sequence numbers hold only for the process that sent them.
    pub epoch: String,
    /// Dashboard streams open now, and the most that may be.
    pub streams: AtomicUsize,
    pub max_streams: usize,
    /// Subscriptions of open pages to query result streams (a page has one per query).
    pub query_subscriptions: AtomicUsize,
    /// Dashboard streams dropped because the page could not keep up.
    pub dropped: AtomicU64,
    /// Events a dashboard stream may have queued before it is dropped.
    pub stream_buffer: usize,
    /// Fires when the server stops: open streams end, so the endpoint can shut down.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// An HTTP error: a status and a one-line message (plain text).
#[derive(Debug)]
pub(crate) struct HttpError(pub StatusCode, pub String);

impl HttpError {
    pub(crate) fn not_found(msg: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, msg.into())
    }
    pub(crate) fn bad_request(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl From<Error> for HttpError {
    fn from(e: Error) -> Self {
        let code = match e {
            Error::Refused(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::AlreadyExists(_) => StatusCode::CONFLICT,
            Error::EngineStopped => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(code, e.to_string())
    }
}

impl From<tonic::Status> for HttpError {
    fn from(s: tonic::Status) -> Self {
        let code = match s.code() {
            tonic::Code::NotFound => StatusCode::NOT_FOUND,
            tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
            tonic::Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
            tonic::Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self(code, s.message().to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let line = crate::error::one_line(&self.1);
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{line}\n"),
        )
            .into_response()
    }
}

/// Refuses a request without the token (when one is set).
async fn require_token(State(state): State<Arc<WebState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let ok = given.is_some_and(|h| crate::flight::authorization_matches(h, token));
        if !ok {
            let msg = if given.is_none() {
                "missing authorization: send `authorization: Bearer TOKEN`"
            } else {
                "invalid token"
            };
            let mut resp = HttpError(StatusCode::UNAUTHORIZED, msg.into()).into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pitwall\""),
            );
            return resp;
        }
    }
    next.run(req).await
}

/// Headers every response gets: nothing of the page may come from elsewhere.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// `GET /readyz`: 200 while the server does its work; 503 with the reason when ingest stopped
/// on an error, or when its Kafka consumer has owned no partition for longer than a rebalance takes (see
/// `ingest::kafka::AssignmentWatch`). Open like `/healthz`: it says nothing about the data.
async fn ready(State(state): State<Arc<WebState>>) -> Result<&'static str, HttpError> {
    let group = state.flight.ingest.group();
    if let Some(why) = group.stopped {
        return Err(HttpError(StatusCode::SERVICE_UNAVAILABLE, why));
    }
    if group.stuck {
        let s = group.unassigned_since.map_or(0, |t| t.elapsed().as_secs());
        return Err(HttpError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no partitions assigned for {s} s"),
        ));
    }
    Ok("ready\n")
}

fn router(state: Arc<WebState>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics::scrape))
        .route("/api/queries", get(api::queries))
        .route("/api/queries/{name}", get(api::query))
        .route("/api/queries/{name}/params", post(api::set_params))
        .route("/api/live", get(live::stream))
        .route("/api/sessions", get(api::sessions))
        .route("/api/sessions/{name}", get(api::session))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/", get(assets::index))
        .route("/assets/{*file}", get(assets::file))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .merge(protected)
        .fallback(|| async { HttpError::not_found("no such page; the dashboard is at /") })
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Binds the endpoint (port 0 picks a free port) and returns its address and the server task.
pub(crate) async fn serve(
    addr: SocketAddr,
    state: Arc<WebState>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr} (--http-addr): {e}")))?;
    let local = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        // Events are small and pushed as they come: no Nagle delay.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(error = %e, "dashboard endpoint stopped");
        }
    });
    Ok((local, task))
}
