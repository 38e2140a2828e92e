//! Arrow Flight: the way out. One gRPC port serves
//!
//! - live subscriptions: `DoGet` on a ticket naming a continuous query streams its result
//!   batches as the engine emits them (`subscription`);
//! - control: `DoAction` with the messages of `proto/control.proto` (list, submit, replace,
//!   drop, pause, resume, set parameters, stats), and `ListFlights` / `GetFlightInfo` with one
//!   flight per query;
//! - Flight SQL: read-only ad-hoc SQL over each query's recent results (`sql`, [`adhoc`]),
//!   with catalog browsing and prepared statements, so generic tools work unmodified.
//!
//! With a token configured, every call must carry `authorization: Bearer TOKEN` (or Basic
//! credentials whose password is the token, for the Flight SQL handshake).

pub mod adhoc;
pub(crate) mod members;
pub(crate) mod service;
pub(crate) mod small_aggregate;
pub(crate) mod sql;
pub(crate) mod subscription;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use arrow_flight::flight_service_server::FlightServiceServer;
use base64::Engine as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic::{Request, Status};

use crate::engine::EngineHandle;
use crate::error::{Error, Result};
use crate::ingest::IngestStats;

/// Everything the Flight endpoint serves from.
pub(crate) struct FlightState {
    pub engine: EngineHandle,
    pub ingest: Arc<IngestStats>,
    /// Flight messages a subscriber may have queued before it is dropped as too slow.
    pub subscriber_buffer: usize,
    pub subscribers_dropped: AtomicU64,
    pub adhoc: adhoc::AdhocLimits,
    pub archive: Option<Arc<crate::archive::ArchiveCatalog>>,
    pub archive_stats: Option<Arc<crate::archive::ArchiveStats>>,
    pub started: Instant,
    /// The other servers of the consumer group (`--members-dir`).
    pub members: Option<Arc<members::Members>>,
}

/// Maps a server error to a gRPC status with a one-line message.
pub(crate) fn status(e: Error) -> Status {
    let msg = crate::error::one_line(&e.to_string());
    match e {
        Error::Refused(_) => Status::invalid_argument(msg),
        Error::NotFound(_) => Status::not_found(msg),
        Error::AlreadyExists(_) => Status::already_exists(msg),
        Error::EngineStopped => Status::unavailable(msg),
        _ => Status::internal(msg),
    }
}

#[derive(Clone)]
struct Auth {
    token: Option<Arc<str>>,
}

impl Auth {
    fn check(&self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(req);
        };
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::unauthenticated("missing authorization: send `authorization: Bearer TOKEN`")
            })?;
        let ok = authorization_matches(header, token);
        if ok {
            Ok(req)
        } else {
            Err(Status::unauthenticated("invalid token"))
        }
    }
}

/// Whether an `authorization` header value carries the token: `Bearer TOKEN`, or Basic
/// credentials whose password is the token (any user name). Compared in constant time.
pub(crate) fn authorization_matches(header: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    let given = if let Some(bearer) = header.strip_prefix("Bearer ") {
        bearer.trim().to_string()
    } else if let Some(basic) = header.strip_prefix("Basic ") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok());
        match decoded.as_deref().and_then(|s| s.split_once(':')) {
            Some((_, pass)) => pass.to_string(),
            None => return false,
        }
    } else {
        return false;
    };
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// Binds the endpoint (port 0 picks a free port) and returns its address and the server task.
pub(crate) async fn serve(
    addr: SocketAddr,
    state: Arc<FlightState>,
    token: Option<String>,
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr()?;
    let auth = Auth {
        token: token.map(Into::into),
    };
    let service = service::PitwallFlight::new(state);
    let server = FlightServiceServer::new(service)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    let svc =
        tonic::service::interceptor::InterceptedService::new(server, move |req| auth.check(req));
    let mut builder = Server::builder();
    if let Some((cert, key)) = &tls {
        let cert =
            std::fs::read(cert).map_err(|e| Error::Config(format!("{}: {e}", cert.display())))?;
        let key =
            std::fs::read(key).map_err(|e| Error::Config(format!("{}: {e}", key.display())))?;
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    }
    let router = builder.add_service(svc);
    let task = tokio::spawn(async move {
        // Results are small messages pushed as they are emitted: without TCP_NODELAY, Nagle's
        // algorithm holds each one until the client's delayed ACK (~40 ms on Linux).
        let incoming = futures::StreamExt::map(TcpListenerStream::new(listener), |conn| {
            if let Ok(c) = &conn {
                let _ = c.set_nodelay(true);
            }
            conn
        });
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::error!(error = %e, "flight endpoint stopped");
        }
    });
    tracing::info!(addr = %local, tls = tls.is_some(), "Arrow Flight endpoint listening");
    Ok((local, task))
}
