//! `pitwall`: the command-line client (see the library for what each command does).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use pitwall_cli::client::{Client, ServerAddress};
use pitwall_cli::output::Format;
use pitwall_cli::{bench, commands, convert, replay};

#[derive(Parser)]
#[command(
    name = "pitwall",
    version,
    about = "Live telemetry analysis: replay, watch, control, query"
)]
struct Cli {
    /// Pitwall server (Arrow Flight) URL.
    #[arg(
        long,
        global = true,
        env = "PITWALL_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    server: String,
    /// Bearer token, when the server requires one.
    #[arg(long, global = true, env = "PITWALL_TOKEN")]
    token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// server.
    #[arg(long, global = true, env = "PITWALL_TLS_CA")]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the continuous queries (or `queries show NAME`).
    Queries {
        #[command(subcommand)]
        show: Option<QueriesCommand>,
    },
    /// Start a continuous query from a .sql file.
    Submit { name: String, file: PathBuf },
    /// Give a running query new SQL; its subscribers stay connected.
    Replace { name: String, file: PathBuf },
    /// Stop and remove a query.
    Drop { name: String },
    /// Pause a query (its input is skipped until it resumes).
    Pause { name: String },
    /// Resume a paused or failed query.
    Resume { name: String },
    /// Set query parameters, e.g. `set over_rev threshold=11500`.
    Set {
        name: String,
        #[arg(required = true, value_name = "PARAM=VALUE")]
        params: Vec<String>,
    },
    /// Stream a query's results as they are emitted.
    Watch(commands::WatchArgs),
    /// Run ad-hoc read-only SQL over recent results (and the archive).
    Sql {
        query: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Server statistics: ingest, bad messages, watermark, per-query latency, archive.
    Stats,
    /// Archived sessions: drivers, rows, time range, size on disk.
    Sessions {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Publish a recorded session to a Kafka topic.
    Replay(replay::ReplayArgs),
    /// Measure the whole path under load (starts its own server against a broker).
    Bench(bench::BenchArgs),
    /// Convert a FastF1 export into a Parquet file in the Pitwall schema.
    Convert(convert::ConvertArgs),
    /// Labelled faults: `inject` them into a session, `score` a server's alerts against them.
    #[command(subcommand)]
    Faults(pitwall_cli::faults::FaultsCommand),
    /// EA F1 game telemetry (UDP): a bridge to Kafka (`--listen`), `record`, `play`.
    Udp(pitwall_cli::udp::UdpArgs),
}

#[derive(Subcommand)]
enum QueriesCommand {
    /// One query in detail.
    Show { name: String },
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let addr = ServerAddress {
        url: cli.server.clone(),
        token: cli.token.clone(),
        tls_ca: cli.tls_ca.clone(),
    };
    match cli.command {
        Command::Udp(args) => {
            println!("{}", pitwall_cli::udp::run(args).await?);
            Ok(())
        }
        Command::Replay(args) => {
            let s = replay::run(&args).await?;
            println!(
                "published {} rows ({} bytes) to {} in {:.2} s: {:.0} rows/s",
                s.rows,
                s.bytes,
                args.topic,
                s.elapsed.as_secs_f64(),
                s.rate()
            );
            Ok(())
        }
        Command::Faults(pitwall_cli::faults::FaultsCommand::Inject(args)) => {
            println!("{}", pitwall_cli::faults::inject(&args)?);
            Ok(())
        }
        Command::Convert(args) => {
            println!("{}", convert::run(&args)?);
            Ok(())
        }
        Command::Bench(args) => {
            let report = bench::run(&args).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                bench::print(&report);
            }
            Ok(())
        }
        other => {
            let mut c = Client::connect(&addr).await?;
            use pitwall_proto::actions as a;
            match other {
                Command::Queries { show: None } => commands::list(&mut c).await,
                Command::Queries {
                    show: Some(QueriesCommand::Show { name }),
                } => commands::show(&mut c, &name).await,
                Command::Submit { name, file } => {
                    commands::submit(&mut c, &name, &file, false).await
                }
                Command::Replace { name, file } => {
                    commands::submit(&mut c, &name, &file, true).await
                }
                Command::Drop { name } => commands::simple(&mut c, a::DROP, &name).await,
                Command::Pause { name } => commands::simple(&mut c, a::PAUSE, &name).await,
                Command::Resume { name } => commands::simple(&mut c, a::RESUME, &name).await,
                Command::Set { name, params } => commands::set(&mut c, &name, &params).await,
                Command::Watch(args) => commands::watch(&mut c, &args).await,
                Command::Sql { query, format } => commands::sql(&mut c, &query, format).await,
                Command::Stats => commands::stats(&mut c).await,
                Command::Sessions { format } => commands::sessions(&mut c, format).await,
                Command::Faults(pitwall_cli::faults::FaultsCommand::Score(args)) => {
                    let report = pitwall_cli::faults::score_cmd(&mut c, &args).await?;
                    if args.json {
                        println!("{}", serde_json::to_string(&report)?);
                    } else {
                        pitwall_cli::faults::print(&report);
                    }
                    Ok(())
                }
                Command::Replay(_)
                | Command::Convert(_)
                | Command::Bench(_)
                | Command::Udp(_)
                | Command::Faults(pitwall_cli::faults::FaultsCommand::Inject(_)) => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

fn main() {
    // Exit quietly when the reader of our output goes away (`pitwall watch ... | head`).
    #[cfg(unix)]
    // SAFETY: called first thing in main, before any other thread exists; SIG_DFL installs no
    // handler of ours, it restores the default disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
