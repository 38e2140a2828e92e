//! The Flight service: Flight SQL for everything it covers, plus `ListFlights`,
//! `GetFlightInfo` and `GetSchema` for the continuous queries (one flight per query, its
//! descriptor the path `[name]`, its ticket a live subscription).

use std::pin::Pin;
use std::sync::Arc;

use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::Any;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use futures::Stream;
use pitwall_proto::{SUBSCRIBE_TICKET_TYPE_URL, SubscribeTicket};
use prost::Message;
use tonic::{Request, Response, Status, Streaming};

use super::FlightState;
use super::sql::PitwallSql;
use crate::engine::QueryInfo;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub(crate) struct PitwallFlight {
    sql: PitwallSql,
}

impl PitwallFlight {
    pub(crate) fn new(state: Arc<FlightState>) -> Self {
        Self {
            sql: PitwallSql::new(state),
        }
    }
}

/// The ticket that subscribes to `query` from now on.
pub(crate) fn subscribe_ticket(query: &str) -> Ticket {
    let t = SubscribeTicket {
        query: query.to_string(),
        from_buffer_start: false,
        driver: String::new(),
    };
    let any = Any {
        type_url: SUBSCRIBE_TICKET_TYPE_URL.to_string(),
        value: t.encode_to_vec().into(),
    };
    Ticket::new(any.encode_to_vec())
}

/// A continuous query's flight: one endpoint on this server and, with `--members-dir`, one on
/// each other live server of the group that owns partitions (each serves its own cars).
pub(crate) fn query_flight_info(
    q: &QueryInfo,
    others: &[super::members::Member],
) -> Result<FlightInfo, Status> {
    let ticket = subscribe_ticket(&q.name);
    let mut here = FlightEndpoint::new().with_ticket(ticket.clone());
    if !others.is_empty() {
        here = here.with_location(super::members::REUSE);
    }
    let mut info = FlightInfo::new()
        .try_with_schema(&q.schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_descriptor(FlightDescriptor::new_path(vec![q.name.clone()]))
        .with_endpoint(here)
        .with_total_records(-1)
        .with_total_bytes(-1)
        .with_ordered(others.is_empty());
    for m in others {
        info = info.with_endpoint(
            FlightEndpoint::new()
                .with_ticket(ticket.clone())
                .with_location(&m.location),
        );
    }
    Ok(info)
}

impl PitwallFlight {
    /// The other servers to list as endpoints (none without `--members-dir`).
    async fn other_members(&self) -> Vec<super::members::Member> {
        super::members::Members::others_of(self.sql.state.members.as_ref()).await
    }
}

fn path_query(d: &FlightDescriptor) -> Option<&str> {
    (d.r#type == DescriptorType::Path as i32 && d.path.len() == 1).then(|| d.path[0].as_str())
}

#[tonic::async_trait]
impl FlightService for PitwallFlight {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;
    type DoExchangeStream = BoxStream<FlightData>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        FlightService::handshake(&self.sql, request).await
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let queries = self.sql.state.engine.list().await.map_err(super::status)?;
        let others = self.other_members().await;
        let infos: Vec<Result<FlightInfo, Status>> = queries
            .iter()
            .map(|q| query_flight_info(q, &others))
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(infos))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        if let Some(name) = path_query(request.get_ref()) {
            let q = self
                .sql
                .state
                .engine
                .show(name)
                .await
                .map_err(super::status)?;
            let others = self.other_members().await;
            return Ok(Response::new(query_flight_info(&q, &others)?));
        }
        FlightService::get_flight_info(&self.sql, request).await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        FlightService::poll_flight_info(&self.sql, request).await
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let Some(name) = path_query(request.get_ref()) else {
            return Err(Status::invalid_argument(
                "GetSchema takes a path descriptor naming a query",
            ));
        };
        let q = self
            .sql
            .state
            .engine
            .show(name)
            .await
            .map_err(super::status)?;
        let result: SchemaResult = SchemaAsIpc::new(&q.schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: datafusion::arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        FlightService::do_get(&self.sql, request).await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        FlightService::do_put(&self.sql, request).await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        FlightService::do_action(&self.sql, request).await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        FlightService::list_actions(&self.sql, request).await
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "DoExchange is not offered: subscribe with DoGet",
        ))
    }
}
