//! `pitwall`: the command-line client. Replays recorded telemetry into Kafka, and (through
//! Arrow Flight) watches, controls and queries a running Pitwall server.

mod convert;
mod fleet;
mod replay;
mod session;
mod wire;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pitwall", version, about = "Live telemetry analysis: replay, watch, query")]
struct Cli {
    /// Pitwall server (Arrow Flight) URL.
    #[arg(long, global = true, env = "PITWALL_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Bearer token, when the server requires one.
    #[arg(long, global = true, env = "PITWALL_TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a recorded session to a Kafka topic.
    Replay(replay::ReplayArgs),
    /// Convert a FastF1 export into a Parquet file in the Pitwall schema.
    Convert(convert::ConvertArgs),
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = runtime.block_on(async move {
        match cli.command {
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
                Ok::<(), anyhow::Error>(())
            }
            Command::Convert(args) => {
                println!("{}", convert::run(&args)?);
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
