//! The subcommands that talk to a running server: queries, submit, replace, drop, pause,
//! resume, set, watch, sql, stats.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};
use arrow::ipc::convert::try_schema_from_ipc_buffer;
use arrow_flight::decode::DecodedPayload;
use comfy_table::Table;
use futures::StreamExt;
use pitwall_proto as pb;
use pitwall_proto::actions as a;

use crate::client::{Client, describe};
use crate::output::{Format, Printer};

#[derive(Debug, Clone, clap::Args)]
pub struct WatchArgs {
    /// Query to watch.
    pub name: String,
    /// Only rows of this driver.
    #[arg(long)]
    pub driver: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Start with the rows still in the query's replay buffer.
    #[arg(long)]
    pub from_start: bool,
    /// Stop after this many rows.
    #[arg(long)]
    pub limit: Option<usize>,
}

fn state_name(s: i32) -> &'static str {
    match pb::QueryState::try_from(s).unwrap_or(pb::QueryState::Unspecified) {
        pb::QueryState::Running => "running",
        pb::QueryState::Paused => "paused",
        pb::QueryState::Failed => "failed",
        pb::QueryState::Unspecified => "?",
    }
}

fn read_sql(file: &PathBuf) -> Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))
}

pub async fn list(client: &mut Client) -> Result<()> {
    let list: pb::QueryList = client.action(a::LIST_QUERIES, &pb::ListQueries {}).await?;
    let mut t = Table::new();
    t.set_header([
        "query",
        "state",
        "reads",
        "kind",
        "rows out",
        "params",
        "last error",
    ]);
    for q in list.queries {
        let params: Vec<String> = q
            .params
            .iter()
            .map(|p| format!("{}={}", p.name, p.value))
            .collect();
        t.add_row([
            q.name,
            state_name(q.state).to_string(),
            q.inputs.join(","),
            q.kind,
            q.rows_emitted.to_string(),
            params.join(" "),
            q.last_error,
        ]);
    }
    println!("{t}");
    Ok(())
}

pub fn print_info(q: &pb::QueryInfo) -> Result<()> {
    println!("query:   {}", q.name);
    println!("state:   {}", state_name(q.state));
    println!("reads:   {}", q.inputs.join(", "));
    println!("runs as: {}", q.kind);
    println!(
        "emitted: {} rows in {} batches",
        q.rows_emitted, q.batches_emitted
    );
    if !q.params.is_empty() {
        let params: Vec<String> = q
            .params
            .iter()
            .map(|p| format!("{}={}", p.name, p.value))
            .collect();
        println!("params:  {}", params.join(" "));
    }
    if !q.last_error.is_empty() {
        println!("error:   {}", q.last_error);
    }
    if let Ok(schema) = try_schema_from_ipc_buffer(&q.schema) {
        let cols: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        println!("columns: {}", cols.join(", "));
    }
    println!("sql:\n{}", q.sql.trim_end());
    Ok(())
}

pub async fn show(client: &mut Client, name: &str) -> Result<()> {
    let q: pb::QueryInfo = client
        .action(a::SHOW, &pb::QueryName { name: name.into() })
        .await?;
    print_info(&q)
}

pub async fn submit(client: &mut Client, name: &str, file: &PathBuf, replace: bool) -> Result<()> {
    let sql = read_sql(file)?;
    let kind = if replace { a::REPLACE } else { a::SUBMIT };
    let q: pb::QueryInfo = client
        .action(
            kind,
            &pb::SubmitQuery {
                name: name.into(),
                sql,
            },
        )
        .await?;
    println!(
        "{} {} ({})",
        if replace { "replaced" } else { "started" },
        q.name,
        q.kind
    );
    Ok(())
}

pub async fn simple(client: &mut Client, kind: &str, name: &str) -> Result<()> {
    let q: pb::QueryInfo = client
        .action(kind, &pb::QueryName { name: name.into() })
        .await?;
    let done = match kind {
        a::DROP => "dropped",
        a::PAUSE => "paused",
        a::RESUME => "resumed",
        _ => kind,
    };
    println!("{done} {}", q.name);
    Ok(())
}

pub async fn set(client: &mut Client, name: &str, assignments: &[String]) -> Result<()> {
    let params = assignments
        .iter()
        .map(|s| {
            let (k, v) = s
                .split_once('=')
                .ok_or_else(|| anyhow!("{s:?}: expected param=value"))?;
            Ok(pb::QueryParam {
                name: k.trim().to_string(),
                value: v.trim().to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let q: pb::QueryInfo = client
        .action(
            a::SET,
            &pb::SetParams {
                name: name.into(),
                params,
            },
        )
        .await?;
    let now: Vec<String> = q
        .params
        .iter()
        .map(|p| format!("{}={}", p.name, p.value))
        .collect();
    println!("{}: {} (from the next micro-batch)", q.name, now.join(" "));
    Ok(())
}

/// How often `watch` asks for the query's endpoints again (servers joining the group).
const RESOLVE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// One subscription's items, tagged with the other server's location (None: the server
/// asked), and a last `None` item when it ends.
type Tagged = futures::stream::BoxStream<
    'static,
    (
        Option<String>,
        Option<
            std::result::Result<
                arrow_flight::decode::DecodedFlightData,
                arrow_flight::error::FlightError,
            >,
        >,
    ),
>;

fn tagged(origin: Option<String>, s: arrow_flight::decode::FlightRecordBatchStream) -> Tagged {
    let end = origin.clone();
    s.into_inner()
        .map(move |item| (origin.clone(), Some(item)))
        .chain(futures::stream::once(async move { (end, None) }))
        .boxed()
}

/// Subscribes to the query on each server of the group not followed yet (their endpoints in
/// `GetFlightInfo`); a server that cannot be reached now is tried again at the next look.
async fn follow_others(
    client: &mut Client,
    ticket: &pb::SubscribeTicket,
    followed: &mut std::collections::BTreeSet<String>,
    streams: &mut futures::stream::SelectAll<Tagged>,
) {
    let Ok(locations) = client.other_endpoints(&ticket.query).await else {
        return;
    };
    for location in locations {
        if followed.contains(&location) {
            continue;
        }
        let sub = async {
            let mut other = Client::connect(&client.address_of(&location)).await?;
            other.subscribe(ticket).await
        };
        match sub.await {
            Ok(s) => {
                eprintln!("following {} on {location} too", ticket.query);
                streams.push(tagged(Some(location.clone()), s));
                followed.insert(location);
            }
            Err(e) => eprintln!("{location}: {e:#}; trying again"),
        }
    }
}

/// Prints a query's rows as they come, from the server asked and from every other server of
/// its consumer group that it lists as an endpoint (each serves its own partitions' cars).
pub async fn watch(client: &mut Client, args: &WatchArgs) -> Result<()> {
    let mut ticket = pb::SubscribeTicket {
        query: args.name.clone(),
        from_buffer_start: args.from_start,
        driver: args.driver.clone().unwrap_or_default(),
    };
    // The others first: a subscription's buffer fills while nothing reads it.
    let mut streams = futures::stream::SelectAll::new();
    let mut followed = std::collections::BTreeSet::new();
    follow_others(client, &ticket, &mut followed, &mut streams).await;
    streams.push(tagged(None, client.subscribe(&ticket).await?));
    // Servers found later are read from their buffer's start: their rows are new to us.
    ticket.from_buffer_start = true;
    let mut printer = Printer::new(args.format);
    let mut schema_printed = false;
    let mut rows = 0usize;
    let mut resolve = tokio::time::interval(RESOLVE_EVERY);
    resolve.tick().await;
    loop {
        let (origin, item) = tokio::select! {
            next = streams.next() => match next {
                Some(n) => n,
                None => break,
            },
            _ = resolve.tick() => {
                follow_others(client, &ticket, &mut followed, &mut streams).await;
                continue;
            }
        };
        let item = match (item, &origin) {
            (Some(Ok(item)), _) => item,
            (None, None) => break,
            (Some(Err(e)), None) => return Err(anyhow!(describe(&e))),
            (end, Some(location)) => {
                if let Some(Err(e)) = end {
                    eprintln!("{location}: {}; following the others", describe(&e));
                }
                followed.remove(location);
                continue;
            }
        };
        match item.payload {
            DecodedPayload::Schema(schema) if !schema_printed => {
                schema_printed = true;
                printer.schema(&schema)?;
            }
            DecodedPayload::RecordBatch(mut batch) => {
                if let Some(limit) = args.limit {
                    batch = batch.slice(0, batch.num_rows().min(limit - rows));
                }
                rows += batch.num_rows();
                printer.print(&batch)?;
                if args.limit.is_some_and(|l| rows >= l) {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    Err(anyhow!(
        "the server ended the stream of {} (query dropped or server stopping)",
        args.name
    ))
}

pub async fn sql(client: &mut Client, query: &str, format: Format) -> Result<()> {
    let batches = client.sql(query).await?;
    Printer::new(format).print_all(&batches)
}

/// The consumer's partitions, or how long it has had none (and whether that is a fault).
fn partitions_line(s: &pb::ServerStats) -> String {
    let rejoins = match s.group_rejoins {
        0 => String::new(),
        n => format!("; rejoined the group {n} time(s)"),
    };
    if !s.partitions.is_empty() {
        let list: Vec<String> = s.partitions.iter().map(|p| p.to_string()).collect();
        return format!("{}{rejoins}", list.join(", "));
    }
    let state = if s.group_stuck {
        "WARNING: longer than a rebalance takes"
    } else {
        "joining the group"
    };
    format!("none for {:.0} s ({state}){rejoins}", s.unassigned_s)
}

pub async fn stats(client: &mut Client) -> Result<()> {
    let s: pb::ServerStats = client.action(a::STATS, &pb::GetStats {}).await?;
    let fmt_ts = |ms: i64| {
        if ms == 0 {
            "none yet".to_string()
        } else {
            chrono::DateTime::from_timestamp_millis(ms)
                .map(|d| d.to_rfc3339())
                .unwrap_or_default()
        }
    };
    println!("uptime:        {:.0} s", s.uptime_s);
    println!(
        "ingested:      {} rows from {} messages ({} bytes) in {} micro-batches",
        s.rows_ingested, s.messages_ingested, s.bytes_ingested, s.micro_batches
    );
    let bad: Vec<String> = s
        .bad_messages
        .iter()
        .map(|b| format!("{} {}", b.count, b.reason))
        .collect();
    println!(
        "bad messages:  {}",
        if bad.is_empty() {
            "none".to_string()
        } else {
            bad.join(", ")
        }
    );
    if s.kafka {
        println!("partitions:    {}", partitions_line(&s));
    }
    for m in &s.members {
        let list: Vec<String> = m.partitions.iter().map(|p| p.to_string()).collect();
        println!("member:        {} owns {}", m.location, list.join(", "));
    }
    println!(
        "behind wm:     {} rows below the watermark on arrival (dropped as late: see \"late dropped\")",
        s.late_rows
    );
    println!(
        "watermark:     {} (lag {} ms)",
        fmt_ts(s.watermark_ms),
        s.watermark_lag_ms
    );
    println!(
        "archive:       {} rows in {} files, {} checkpoints, {} merges{}",
        s.archive_rows,
        s.archive_files,
        s.archive_checkpoints,
        s.archive_merges,
        if s.archive_error.is_empty() {
            String::new()
        } else {
            format!(", error: {}", s.archive_error)
        }
    );
    println!("subscribers dropped as too slow: {}", s.subscribers_dropped);
    let mut t = Table::new();
    t.set_header([
        "query",
        "rows out",
        "batches",
        "emit p50 ms",
        "emit p99 ms",
        "emit max ms",
        "late dropped",
        "open windows",
        "subscribers",
    ]);
    for q in s.queries {
        t.add_row([
            q.name,
            q.rows_emitted.to_string(),
            q.batches_emitted.to_string(),
            format!("{:.1}", q.emit_latency_p50_ms),
            format!("{:.1}", q.emit_latency_p99_ms),
            format!("{:.1}", q.emit_latency_max_ms),
            q.late_rows_dropped.to_string(),
            q.open_windows.to_string(),
            q.subscribers.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}

pub async fn sessions(client: &mut Client, format: Format) -> Result<()> {
    let batches = client.action_batches(a::SESSIONS).await?;
    Printer::new(format).print_all(&batches)
}
