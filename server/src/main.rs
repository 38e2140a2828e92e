use pitwall_server::{App, Config, ServerArgs};

#[tokio::main]
async fn main() {
    pitwall_server::tune_allocator();
    pitwall_server::init_logging();
    // A setting out of range is a usage error, as clap's own: one line, exit code 2.
    let config = match ServerArgs::load().and_then(Config::resolve) {
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
