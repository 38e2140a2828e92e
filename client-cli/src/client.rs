//! The connection to a Pitwall server: Arrow Flight for subscriptions and control actions,
//! Flight SQL for ad-hoc queries, both over one gRPC channel with the bearer token.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use arrow::array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::sql::client::FlightSqlServiceClient;
use arrow_flight::{Action, FlightClient, Ticket};
use bytes::Bytes;
use futures::TryStreamExt;
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Where the server is and how to get in.
#[derive(Debug, Clone)]
pub struct ServerAddress {
    pub url: String,
    pub token: Option<String>,
    /// CA certificate (PEM) for a server with a self-signed certificate.
    pub tls_ca: Option<std::path::PathBuf>,
}

pub struct Client {
    flight: FlightClient,
    sql: FlightSqlServiceClient<Channel>,
    addr: ServerAddress,
}

/// One line for a failed call: the gRPC status code and message, no debug dump.
pub fn describe(e: &arrow_flight::error::FlightError) -> String {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => status_line(s),
        arrow_flight::error::FlightError::Arrow(a) => a.to_string(),
        other => other.to_string(),
    }
}

pub fn status_line(s: &tonic::Status) -> String {
    let msg = s.message().lines().next().unwrap_or("").trim();
    match s.code() {
        tonic::Code::Unavailable => format!("server unavailable: {msg}"),
        tonic::Code::Unauthenticated => {
            format!("unauthenticated: {msg} (pass --token or set PITWALL_TOKEN)")
        }
        code => format!("{}: {msg}", code_name(code)),
    }
}

fn code_name(c: tonic::Code) -> &'static str {
    match c {
        tonic::Code::InvalidArgument => "refused",
        tonic::Code::NotFound => "not found",
        tonic::Code::AlreadyExists => "already exists",
        tonic::Code::ResourceExhausted => "dropped",
        tonic::Code::DeadlineExceeded => "timed out",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unimplemented => "not supported",
        _ => "server error",
    }
}

impl Client {
    pub async fn connect(addr: &ServerAddress) -> Result<Self> {
        let mut endpoint = Endpoint::from_shared(addr.url.clone())
            .with_context(|| format!("bad server URL {}", addr.url))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        if addr.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_webpki_roots();
            if let Some(ca) = &addr.tls_ca {
                let pem =
                    std::fs::read(ca).with_context(|| format!("{}: cannot read", ca.display()))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint.tls_config(tls).context("TLS configuration")?;
        }
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| anyhow!("cannot reach the Pitwall server at {}: {e}", addr.url))?;
        let inner = arrow_flight::flight_service_client::FlightServiceClient::new(channel.clone())
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20);
        let mut flight = FlightClient::new_from_inner(inner.clone());
        let mut sql = FlightSqlServiceClient::new_from_inner(inner);
        if let Some(t) = &addr.token {
            flight
                .add_header("authorization", &format!("Bearer {t}"))
                .map_err(|e| anyhow!(describe(&e)))?;
            sql.set_token(t.clone());
        }
        Ok(Self {
            flight,
            sql,
            addr: addr.clone(),
        })
    }

    /// The same server address with another location (a Flight endpoint's `grpc://` or
    /// `grpc+tls://` URI), token and CA certificate kept.
    pub fn address_of(&self, location: &str) -> ServerAddress {
        let url = if let Some(rest) = location.strip_prefix("grpc+tls://") {
            format!("https://{rest}")
        } else if let Some(rest) = location.strip_prefix("grpc+tcp://") {
            format!("http://{rest}")
        } else if let Some(rest) = location.strip_prefix("grpc://") {
            format!("http://{rest}")
        } else {
            location.to_string()
        };
        ServerAddress {
            url,
            ..self.addr.clone()
        }
    }

    /// The locations of a query's endpoints on other servers (of a consumer group; see
    /// `--members-dir`), from its `GetFlightInfo`.
    pub async fn other_endpoints(&mut self, query: &str) -> Result<Vec<String>> {
        let info = self
            .flight
            .get_flight_info(arrow_flight::FlightDescriptor::new_path(vec![
                query.to_string(),
            ]))
            .await
            .map_err(|e| anyhow!(describe(&e)))?;
        Ok(info
            .endpoint
            .iter()
            .flat_map(|e| e.location.iter().map(|l| l.uri.clone()))
            .filter(|uri| !uri.is_empty() && !uri.starts_with("arrow-flight-reuse-connection:"))
            .collect())
    }

    /// Runs a control action and decodes its single answer.
    pub async fn action<Req: Message, Resp: Message + Default>(
        &mut self,
        kind: &str,
        req: &Req,
    ) -> Result<Resp> {
        let action = Action::new(kind, Bytes::from(req.encode_to_vec()));
        let mut results = self
            .flight
            .do_action(action)
            .await
            .map_err(|e| anyhow!(describe(&e)))?;
        let body = results
            .try_next()
            .await
            .map_err(|e| anyhow!(describe(&e)))?
            .ok_or_else(|| anyhow!("the server sent no answer to {kind}"))?;
        Ok(Resp::decode(body)?)
    }

    /// Runs an action whose answer is an Arrow IPC stream.
    pub async fn action_batches(&mut self, kind: &str) -> Result<Vec<RecordBatch>> {
        let mut results = self
            .flight
            .do_action(Action::new(kind, Bytes::new()))
            .await
            .map_err(|e| anyhow!(describe(&e)))?;
        let body = results
            .try_next()
            .await
            .map_err(|e| anyhow!(describe(&e)))?
            .ok_or_else(|| anyhow!("the server sent no answer to {kind}"))?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
        Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
    }

    /// Subscribes to a query's live results.
    pub async fn subscribe(
        &mut self,
        ticket: &pitwall_proto::SubscribeTicket,
    ) -> Result<FlightRecordBatchStream> {
        let any = prost_types_any(
            pitwall_proto::SUBSCRIBE_TICKET_TYPE_URL,
            ticket.encode_to_vec(),
        );
        self.flight
            .do_get(Ticket::new(any))
            .await
            .map_err(|e| anyhow!(describe(&e)))
    }

    /// Runs ad-hoc SQL through Flight SQL and collects the result.
    pub async fn sql(&mut self, query: &str) -> Result<Vec<RecordBatch>> {
        let info = self
            .sql
            .execute(query.to_string(), None)
            .await
            .map_err(|e| anyhow!(describe(&e)))?;
        let mut out = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint
                .ticket
                .ok_or_else(|| anyhow!("the server sent an endpoint without a ticket"))?;
            let stream = self
                .sql
                .do_get(ticket)
                .await
                .map_err(|e| anyhow!(describe(&e)))?;
            let batches: Vec<RecordBatch> = stream
                .try_collect()
                .await
                .map_err(|e| anyhow!(describe(&e)))?;
            out.extend(batches);
        }
        Ok(out)
    }
}

/// A `google.protobuf.Any` (type URL + bytes) encoded by hand: two length-delimited fields.
fn prost_types_any(type_url: &str, value: Vec<u8>) -> Vec<u8> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Any {
        #[prost(string, tag = "1")]
        type_url: String,
        #[prost(bytes = "vec", tag = "2")]
        value: Vec<u8>,
    }
    Any {
        type_url: type_url.to_string(),
        value,
    }
    .encode_to_vec()
}
