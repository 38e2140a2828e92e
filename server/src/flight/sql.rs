//! Flight SQL: ad-hoc read-only SQL, catalog browsing, prepared statements; and, through the
//! fallback hooks, Pitwall's own tickets (live subscriptions) and actions (query control).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, ActionType, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, IpcMessage, SchemaAsIpc, Ticket,
};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::SessionContext;
use futures::{Stream, TryStreamExt};
use pitwall_proto as pb;
use prost::Message;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use super::{FlightState, adhoc, subscription};
use crate::archive::ArchiveStats;
use crate::engine::{QueryDef, QueryInfo, QueryStatus};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A prepared statement: its SQL, the last parameter values bound to it, when it was last used.
struct Prepared {
    sql: String,
    params: Option<RecordBatch>,
    used: Instant,
}

/// A statement planned for its FlightInfo, kept for the DoGet of its ticket: the context
/// (the archive as of its newest commit then, the live tables' snapshot) and the plan, under
/// an unguessable id and bound to its SQL: another client cannot take it, and a ticket whose
/// SQL is not the one planned under its id is planned afresh from its own SQL.
struct Planned {
    id: u64,
    sql: String,
    at: Instant,
    ctx: SessionContext,
    plan: LogicalPlan,
}

/// How many planned statements are kept, and for how long, for clients that ask for a
/// FlightInfo and never fetch it.
const PLANNED_KEPT: usize = 64;
const PLANNED_TTL: Duration = Duration::from_secs(60);

/// Planned statements waiting for their DoGet, oldest first.
#[derive(Default)]
struct PlannedStatements(Mutex<VecDeque<Planned>>);

impl PlannedStatements {
    /// Keeps a planned statement; returns its id (random, never 0).
    fn keep(&self, sql: &str, ctx: SessionContext, plan: LogicalPlan) -> Result<u64, Status> {
        let id = random_id()?;
        let now = Instant::now();
        let mut kept = self.0.lock().expect("planned lock");
        kept.retain(|p| now.duration_since(p.at) < PLANNED_TTL);
        if kept.len() >= PLANNED_KEPT {
            kept.pop_front();
        }
        kept.push_back(Planned {
            id,
            sql: sql.to_string(),
            at: now,
            ctx,
            plan,
        });
        Ok(id)
    }

    /// Takes the statement kept under `id` for exactly this SQL, if it is still there.
    fn take(&self, id: u64, sql: &str) -> Option<(SessionContext, LogicalPlan)> {
        let mut kept = self.0.lock().expect("planned lock");
        let i = kept
            .iter()
            .position(|p| p.id == id && p.sql == sql && p.at.elapsed() < PLANNED_TTL)?;
        kept.remove(i).map(|p| (p.ctx, p.plan))
    }
}

/// A random non-zero id from the operating system's generator.
fn random_id() -> Result<u64, Status> {
    loop {
        let id =
            getrandom::u64().map_err(|e| Status::internal(format!("no random numbers: {e}")))?;
        if id != 0 {
            return Ok(id);
        }
    }
}

/// Prepared statements a server keeps open at most, and how long one unused is kept when the
/// bound is reached (clients should close theirs; those that do not cannot grow the server).
const PREPARED_KEPT: usize = 1024;
const PREPARED_IDLE: Duration = Duration::from_secs(3600);

/// Room for one more prepared statement: at the bound, those unused for [`PREPARED_IDLE`]
/// are closed; if none is, the new one is refused.
fn make_room(open: &mut HashMap<String, Prepared>, now: Instant) -> Result<(), Status> {
    if open.len() >= PREPARED_KEPT {
        open.retain(|_, p| now.saturating_duration_since(p.used) < PREPARED_IDLE);
    }
    if open.len() >= PREPARED_KEPT {
        return Err(Status::resource_exhausted(format!(
            "{PREPARED_KEPT} prepared statements are open, the most a server keeps: close some (ClosePreparedStatement)"
        )));
    }
    Ok(())
}

pub(crate) struct PitwallSql {
    pub state: Arc<FlightState>,
    prepared: Mutex<HashMap<String, Prepared>>,
    /// A statement is planned once: GetFlightInfo needs its schema, and the plan made for it
    /// is what DoGet runs (about a millisecond of context and planning less per query). The
    /// first DoGet of a ticket takes it; a ticket whose plan is gone (fetched again, after
    /// [`PLANNED_TTL`], on a restarted server) is planned afresh from its SQL.
    planned: PlannedStatements,
    sql_info: SqlInfoData,
}

impl PitwallSql {
    pub(crate) fn new(state: Arc<FlightState>) -> Self {
        let mut b = SqlInfoDataBuilder::new();
        b.append(SqlInfo::FlightSqlServerName, "Pitwall");
        b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        b.append(SqlInfo::FlightSqlServerArrowVersion, "1.3");
        b.append(SqlInfo::FlightSqlServerReadOnly, true);
        b.append(SqlInfo::FlightSqlServerSql, true);
        b.append(SqlInfo::FlightSqlServerSubstrait, false);
        b.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        b.append(SqlInfo::FlightSqlServerCancel, false);
        b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        let sql_info = b.build().expect("valid sql info");
        Self {
            state,
            prepared: Mutex::default(),
            planned: PlannedStatements::default(),
            sql_info,
        }
    }

    async fn run_sql(
        &self,
        sql: &str,
        params: Option<&RecordBatch>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
        let ctx = adhoc::context(&self.state).await?;
        let plan = adhoc::plan(&ctx, sql).await?;
        let params = params.map(param_values).transpose()?;
        adhoc::execute(
            &ctx,
            self.state.archive.as_deref(),
            plan,
            params,
            self.state.adhoc,
        )
        .await
    }

    async fn schema_of(&self, sql: &str) -> Result<SchemaRef, Status> {
        let ctx = adhoc::context(&self.state).await?;
        let plan = adhoc::plan(&ctx, sql).await?;
        Ok(Arc::new(plan.schema().as_arrow().clone()))
    }

    fn prepared_sql(&self, handle: &[u8]) -> Result<(String, Option<RecordBatch>), Status> {
        let key = String::from_utf8_lossy(handle).into_owned();
        let map = self.prepared.lock().expect("prepared lock");
        let p = map
            .get(&key)
            .ok_or_else(|| Status::not_found("unknown or closed prepared statement"))?;
        Ok((p.sql.clone(), p.params.clone()))
    }
}

/// Positional parameter values ($1, $2, ...) from the first row of a bound batch.
fn param_values(batch: &RecordBatch) -> Result<ParamValues, Status> {
    if batch.num_rows() == 0 {
        return Ok(ParamValues::List(vec![]));
    }
    let values = batch
        .columns()
        .iter()
        .map(|c| {
            ScalarValue::try_from_array(c, 0).map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ParamValues::from(values))
}

fn batches_stream(schema: SchemaRef, batches: Vec<RecordBatch>) -> BoxStream<FlightData> {
    let stream = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(futures::stream::iter(
            batches.into_iter().map(Ok::<_, FlightError>),
        ))
        .map_err(Status::from);
    Box::pin(stream)
}

fn one_batch<E: std::fmt::Display>(
    schema: SchemaRef,
    batch: Result<RecordBatch, E>,
) -> Result<Response<BoxStream<FlightData>>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(batches_stream(schema, vec![batch])))
}

fn info_for(
    schema: &Schema,
    ticket: Ticket,
    descriptor: FlightDescriptor,
) -> Result<Response<FlightInfo>, Status> {
    let info = FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor);
    Ok(Response::new(info))
}

fn state_of(s: QueryStatus) -> pb::QueryState {
    match s {
        QueryStatus::Running => pb::QueryState::Running,
        QueryStatus::Paused => pb::QueryState::Paused,
        QueryStatus::Failed => pb::QueryState::Failed,
    }
}

pub(crate) fn to_proto(q: &QueryInfo) -> pb::QueryInfo {
    let schema = SchemaAsIpc::new(&q.schema, &IpcWriteOptions::default())
        .try_into()
        .map(|IpcMessage(b)| b.to_vec())
        .unwrap_or_default();
    pb::QueryInfo {
        name: q.name.clone(),
        sql: q.sql.clone(),
        state: state_of(q.status) as i32,
        schema,
        rows_emitted: q.rows_emitted,
        batches_emitted: q.batches_emitted,
        last_error: q.last_error.clone().unwrap_or_default(),
        params: q
            .params
            .iter()
            .map(|(n, v)| pb::QueryParam {
                name: n.clone(),
                value: v.clone(),
            })
            .collect(),
        inputs: q.inputs.clone(),
        kind: q.kind.clone(),
    }
}

fn body<M: Message + Default>(action: &Action) -> Result<M, Status> {
    M::decode(&*action.body)
        .map_err(|e| Status::invalid_argument(format!("action {}: bad body: {e}", action.r#type)))
}

fn answer<M: Message>(m: M) -> Result<Response<BoxStream<arrow_flight::Result>>, Status> {
    let r = arrow_flight::Result {
        body: m.encode_to_vec().into(),
    };
    Ok(Response::new(Box::pin(futures::stream::iter([Ok(r)]))))
}

impl PitwallSql {
    async fn stats(&self) -> Result<pb::ServerStats, Status> {
        let queries = self.state.engine.list().await.map_err(super::status)?;
        let ingest = &self.state.ingest;
        let engine = &self.state.engine.stats;
        let wm = engine.watermark_ms.load(Ordering::Relaxed);
        let max = engine.max_event_ms.load(Ordering::Relaxed);
        let archive = |counter: fn(&ArchiveStats) -> &AtomicU64| {
            self.state
                .archive_stats
                .as_ref()
                .map_or(0, |a| counter(a).load(Ordering::Relaxed))
        };
        let group = ingest.group();
        Ok(pb::ServerStats {
            kafka: group.kafka,
            partitions: group.assigned.clone(),
            unassigned_s: group
                .unassigned_since
                .map_or(0.0, |t| t.elapsed().as_secs_f64()),
            group_stuck: group.stuck,
            group_rejoins: group.rejoins,
            members: super::members::Members::others_of(self.state.members.as_ref())
                .await
                .into_iter()
                .map(|m| pb::GroupMember {
                    location: m.location,
                    partitions: m.partitions,
                })
                .collect(),
            rows_ingested: ingest.rows.load(Ordering::Relaxed),
            messages_ingested: ingest.messages.load(Ordering::Relaxed),
            bytes_ingested: ingest.bytes.load(Ordering::Relaxed),
            micro_batches: ingest.micro_batches.load(Ordering::Relaxed),
            bad_messages: ingest
                .bad_by_reason()
                .into_iter()
                .map(|(reason, count)| pb::CountByReason { reason, count })
                .collect(),
            late_rows: engine.late_rows.load(Ordering::Relaxed),
            watermark_ms: wm,
            watermark_lag_ms: if wm == 0 { 0 } else { max - wm },
            queries: queries
                .iter()
                .map(|q| pb::QueryStats {
                    name: q.name.clone(),
                    rows_emitted: q.rows_emitted,
                    batches_emitted: q.batches_emitted,
                    emit_latency_p50_ms: q.emit_latency_ms.p50,
                    emit_latency_p99_ms: q.emit_latency_ms.p99,
                    emit_latency_max_ms: q.emit_latency_ms.max,
                    late_rows_dropped: q.late_rows_dropped,
                    subscribers: q.subscribers as u32,
                    open_windows: q.open_windows,
                    pending_rows: q.pending_rows,
                })
                .collect(),
            archive_rows: archive(|a| &a.rows),
            archive_files: archive(|a| &a.files),
            archive_error: self
                .state
                .archive_stats
                .as_ref()
                .and_then(|a| a.last_error())
                .unwrap_or_default(),
            subscribers_dropped: self.state.subscribers_dropped.load(Ordering::Relaxed),
            uptime_s: self.state.started.elapsed().as_secs_f64(),
            archive_checkpoints: archive(|a| &a.checkpoints),
            archive_merges: archive(|a| &a.compactions),
        })
    }
}

#[tonic::async_trait]
impl FlightSqlService for PitwallSql {
    type FlightService = PitwallSql;

    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        // The interceptor has checked the credentials; hand back the bearer form of them.
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| {
                base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim()).ok()
            })
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.split_once(':').map(|(_, p)| p.to_string()))
            .unwrap_or_default();
        let out = futures::stream::iter([Ok(HandshakeResponse {
            protocol_version: 0,
            payload: token.clone().into(),
        })]);
        let mut resp: Response<Pin<Box<dyn Stream<Item = _> + Send>>> =
            Response::new(Box::pin(out));
        if !token.is_empty()
            && let Ok(v) = MetadataValue::try_from(format!("Bearer {token}"))
        {
            resp.metadata_mut().insert("authorization", v);
        }
        Ok(resp)
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        if message.type_url != pb::SUBSCRIBE_TICKET_TYPE_URL {
            return Err(Status::invalid_argument(format!(
                "unknown ticket type {:?}",
                message.type_url
            )));
        }
        let ticket = pb::SubscribeTicket::decode(&*message.value)
            .map_err(|e| Status::invalid_argument(format!("bad subscribe ticket: {e}")))?;
        Ok(Response::new(subscription::subscribe(&self.state, ticket)?))
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ctx = adhoc::context(&self.state).await?;
        let plan = adhoc::plan(&ctx, &query.query).await?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        let handle = pb::StatementHandle {
            plan: self.planned.keep(&query.query, ctx, plan)?,
            sql: query.query,
        };
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode_to_vec().into(),
        };
        info_for(
            &schema,
            Ticket::new(ticket.as_any().encode_to_vec()),
            request.into_inner(),
        )
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = pb::StatementHandle::decode(&*ticket.statement_handle)
            .map_err(|e| Status::invalid_argument(format!("bad statement handle: {e}")))?;
        let (schema, batches) = match self.planned.take(handle.plan, &handle.sql) {
            Some((ctx, plan)) => {
                adhoc::execute(
                    &ctx,
                    self.state.archive.as_deref(),
                    plan,
                    None,
                    self.state.adhoc,
                )
                .await?
            }
            None => self.run_sql(&handle.sql, None).await?,
        };
        Ok(Response::new(batches_stream(schema, batches)))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let ctx = adhoc::context(&self.state).await?;
        let plan = adhoc::plan(&ctx, &query.query).await?;
        let schema = plan.schema().as_arrow().clone();
        let mut params: Vec<(usize, Field)> = plan
            .get_parameter_types()
            .map_err(|e| Status::invalid_argument(crate::engine::guard::short_error(&e)))?
            .into_iter()
            .map(|(id, ty)| {
                let n = id
                    .trim_start_matches('$')
                    .parse::<usize>()
                    .unwrap_or(usize::MAX);
                (
                    n,
                    Field::new(
                        id,
                        ty.unwrap_or(datafusion::arrow::datatypes::DataType::Null),
                        true,
                    ),
                )
            })
            .collect();
        params.sort_by_key(|(n, _)| *n);
        let param_schema = Schema::new(params.into_iter().map(|(_, f)| f).collect::<Vec<_>>());
        let handle = format!("ps-{:016x}{:016x}", random_id()?, random_id()?);
        {
            let mut open = self.prepared.lock().expect("prepared lock");
            make_room(&mut open, Instant::now())?;
            open.insert(
                handle.clone(),
                Prepared {
                    sql: query.query,
                    params: None,
                    used: Instant::now(),
                },
            );
        }
        let encode = |s: &Schema| -> Result<bytes::Bytes, Status> {
            let IpcMessage(b) = SchemaAsIpc::new(s, &IpcWriteOptions::default())
                .try_into()
                .map_err(|e: datafusion::arrow::error::ArrowError| {
                    Status::internal(e.to_string())
                })?;
            Ok(b)
        };
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.into_bytes().into(),
            dataset_schema: encode(&schema)?,
            parameter_schema: encode(&param_schema)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let stream = arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(
            request.into_inner().map_err(FlightError::from),
        );
        let batches: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let params = batches.into_iter().find(|b| b.num_rows() > 0);
        let key = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
        let mut map = self.prepared.lock().expect("prepared lock");
        let p = map
            .get_mut(&key)
            .ok_or_else(|| Status::not_found("unknown or closed prepared statement"))?;
        p.params = params;
        p.used = Instant::now();
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (sql, _) = self.prepared_sql(&cmd.prepared_statement_handle)?;
        let schema = self.schema_of(&sql).await?;
        info_for(
            &schema,
            Ticket::new(cmd.as_any().encode_to_vec()),
            request.into_inner(),
        )
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (sql, params) = self.prepared_sql(&cmd.prepared_statement_handle)?;
        let (schema, batches) = self.run_sql(&sql, params.as_ref()).await?;
        Ok(Response::new(batches_stream(schema, batches)))
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        let key = String::from_utf8_lossy(&query.prepared_statement_handle).into_owned();
        self.prepared.lock().expect("prepared lock").remove(&key);
        Ok(())
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(
            &schema,
            Ticket::new(query.as_any().encode_to_vec()),
            request.into_inner(),
        )
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append(adhoc::CATALOG);
        let schema = b.schema();
        one_batch(schema, b.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(
            &schema,
            Ticket::new(query.as_any().encode_to_vec()),
            request.into_inner(),
        )
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let ctx = adhoc::context(&self.state).await?;
        let mut b = query.into_builder();
        if let Some(catalog) = ctx.catalog(adhoc::CATALOG) {
            for s in catalog.schema_names() {
                b.append(adhoc::CATALOG, s);
            }
        }
        let schema = b.schema();
        one_batch(schema, b.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        info_for(
            &schema,
            Ticket::new(query.as_any().encode_to_vec()),
            request.into_inner(),
        )
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let ctx = adhoc::context(&self.state).await?;
        let mut b = query.into_builder();
        if let Some(catalog) = ctx.catalog(adhoc::CATALOG) {
            let mut schemas = catalog.schema_names();
            schemas.sort();
            for s in schemas {
                let Some(provider) = catalog.schema(&s) else {
                    continue;
                };
                let mut tables = provider.table_names();
                tables.sort();
                for t in tables {
                    if let Ok(Some(table)) = provider.table(&t).await {
                        let kind = if s == "information_schema" {
                            "VIEW"
                        } else {
                            "TABLE"
                        };
                        b.append(adhoc::CATALOG, &s, &t, kind, &table.schema())
                            .map_err(|e| Status::internal(e.to_string()))?;
                    }
                }
            }
        }
        let schema = b.schema();
        one_batch(schema, b.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        info_for(
            &schema,
            Ticket::new(query.as_any().encode_to_vec()),
            request.into_inner(),
        )
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut b = query.into_builder();
        b.append("TABLE");
        b.append("VIEW");
        let schema = b.schema();
        one_batch(schema, b.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&self.sql_info).schema();
        info_for(
            &schema,
            Ticket::new(query.as_any().encode_to_vec()),
            request.into_inner(),
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let b = query.into_builder(&self.sql_info);
        let schema = b.schema();
        one_batch(schema, b.build())
    }

    async fn do_action_fallback(
        &self,
        request: Request<Action>,
    ) -> Result<Response<<Self as FlightService>::DoActionStream>, Status> {
        let action = request.into_inner();
        let engine = &self.state.engine;
        let e = super::status;
        use pb::actions as a;
        match action.r#type.as_str() {
            a::LIST_QUERIES => {
                let qs = engine.list().await.map_err(e)?;
                answer(pb::QueryList {
                    queries: qs.iter().map(to_proto).collect(),
                })
            }
            a::SHOW => {
                let m: pb::QueryName = body(&action)?;
                answer(to_proto(&engine.show(&m.name).await.map_err(e)?))
            }
            a::SUBMIT => {
                let m: pb::SubmitQuery = body(&action)?;
                let def = QueryDef::parse(&m.name, &m.sql).map_err(e)?;
                answer(to_proto(&engine.submit(def).await.map_err(e)?))
            }
            a::REPLACE => {
                let m: pb::SubmitQuery = body(&action)?;
                answer(to_proto(&engine.replace(&m.name, &m.sql).await.map_err(e)?))
            }
            a::DROP => {
                let m: pb::QueryName = body(&action)?;
                let info = engine.show(&m.name).await.map_err(e)?;
                engine.drop_query(&m.name).await.map_err(e)?;
                answer(to_proto(&info))
            }
            a::PAUSE | a::RESUME => {
                let m: pb::QueryName = body(&action)?;
                answer(to_proto(
                    &engine
                        .set_paused(&m.name, action.r#type == a::PAUSE)
                        .await
                        .map_err(e)?,
                ))
            }
            a::SET => {
                let m: pb::SetParams = body(&action)?;
                let params = m.params.into_iter().map(|p| (p.name, p.value)).collect();
                answer(to_proto(
                    &engine.set_params(&m.name, params).await.map_err(e)?,
                ))
            }
            a::STATS => answer(self.stats().await?),
            a::SESSIONS => {
                let archive = self
                    .state
                    .archive
                    .as_ref()
                    .ok_or_else(|| Status::failed_precondition("no archive"))?;
                let ctx = adhoc::context(&self.state).await?;
                let batch = archive.sessions(&ctx).await.map_err(super::status)?;
                let mut buf = Vec::new();
                {
                    let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(
                        &mut buf,
                        &batch.schema(),
                    )
                    .map_err(|e| Status::internal(e.to_string()))?;
                    w.write(&batch)
                        .map_err(|e| Status::internal(e.to_string()))?;
                    w.finish().map_err(|e| Status::internal(e.to_string()))?;
                }
                let r = arrow_flight::Result { body: buf.into() };
                Ok(Response::new(Box::pin(futures::stream::iter([Ok(r)]))))
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action {other:?}; `ListActions` names the ones this server takes"
            ))),
        }
    }

    async fn list_custom_actions(&self) -> Option<Vec<Result<ActionType, Status>>> {
        use pb::actions as a;
        let described = [
            (a::LIST_QUERIES, "List continuous queries -> QueryList"),
            (a::SHOW, "One query (QueryName) -> QueryInfo"),
            (a::SUBMIT, "Start a query (SubmitQuery) -> QueryInfo"),
            (
                a::REPLACE,
                "New SQL for a running query (SubmitQuery) -> QueryInfo",
            ),
            (a::DROP, "Stop and remove a query (QueryName) -> QueryInfo"),
            (a::PAUSE, "Pause a query (QueryName) -> QueryInfo"),
            (a::RESUME, "Resume a query (QueryName) -> QueryInfo"),
            (
                a::SET,
                "Set parameters, from the next micro-batch (SetParams) -> QueryInfo",
            ),
            (a::STATS, "Server statistics (GetStats) -> ServerStats"),
            (
                a::SESSIONS,
                "Archived sessions -> one Arrow IPC stream (session, drivers, rows, time range, size)",
            ),
        ];
        Some(
            described
                .into_iter()
                .map(|(t, d)| {
                    Ok(ActionType {
                        r#type: t.into(),
                        description: d.into(),
                    })
                })
                .collect(),
        )
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{EmptyRelation, LogicalPlan};

    use super::*;

    fn plan() -> LogicalPlan {
        LogicalPlan::EmptyRelation(EmptyRelation {
            produce_one_row: true,
            schema: Arc::new(datafusion::common::DFSchema::empty()),
        })
    }

    #[test]
    fn prepared_statements_are_bounded_in_count_and_idle_age() {
        let now = Instant::now();
        let statement = |used| Prepared {
            sql: "SELECT 1".into(),
            params: None,
            used,
        };
        let mut open: HashMap<String, Prepared> = (0..PREPARED_KEPT)
            .map(|i| (format!("ps-{i}"), statement(now)))
            .collect();
        let full = make_room(&mut open, now).expect_err("the bound is reached");
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert!(full.message().contains("close some"), "{}", full.message());
        assert_eq!(open.len(), PREPARED_KEPT, "statements in use are kept");
        // One left unused for longer than the idle age makes room.
        open.get_mut("ps-7").unwrap().used = now - PREPARED_IDLE - Duration::from_secs(1);
        make_room(&mut open, now).expect("the idle one is closed");
        assert_eq!(open.len(), PREPARED_KEPT - 1);
        assert!(!open.contains_key("ps-7"));
    }

    #[test]
    fn planned_statements_waiting_for_their_doget_are_bounded() {
        let kept = PlannedStatements::default();
        let ids: Vec<u64> = (0..PLANNED_KEPT + 10)
            .map(|i| {
                kept.keep(&format!("SELECT {i}"), SessionContext::new(), plan())
                    .unwrap()
            })
            .collect();
        assert_eq!(kept.0.lock().unwrap().len(), PLANNED_KEPT);
        // The oldest made room (its ticket is planned again from its SQL); the newest waits.
        assert!(kept.take(ids[0], "SELECT 0").is_none());
        let last = PLANNED_KEPT + 9;
        assert!(kept.take(ids[last], &format!("SELECT {last}")).is_some());
    }

    #[test]
    fn planned_statements_are_unguessable_and_bound_to_their_sql() {
        let kept = PlannedStatements::default();
        let a = kept
            .keep("SELECT 1", SessionContext::new(), plan())
            .unwrap();
        let b = kept
            .keep("SELECT 2", SessionContext::new(), plan())
            .unwrap();
        // Sequential ids (1, 2, ...) let any client take another's statement.
        assert!(a != 0 && b != 0 && b != a + 1 && a > 1 << 8, "ids {a}, {b}");
        // Another statement's id, or an id with other SQL: not this plan (planned afresh).
        assert!(kept.take(a, "SELECT 2").is_none());
        assert!(kept.take(b, "SELECT 1").is_none());
        assert!(kept.take(a, "SELECT 1").is_some());
        assert!(kept.take(a, "SELECT 1").is_none(), "taken once");
        assert!(kept.take(b, "SELECT 2").is_some());
    }
}
