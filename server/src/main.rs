use clap::Parser;
use pitwall_server::{App, Config, ServerArgs};

#[tokio::main]
async fn main() {
    pitwall_server::tune_allocator();
    // Logs go to stderr (stdout stays free for data), colored only on a terminal.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // A setting out of range is a usage error, as clap's own: one line, exit code 2.
    let config = match Config::resolve(ServerArgs::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    let result = async { App::build(config).await?.run_until_stopped().await };
    if let Err(e) = result.await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
