//! `pilot-center`: the command line. Everything else is in the library.

use anyhow::Context as _;
use clap::Parser;
use pilot_center::config::Config;
use pilot_center::server::Server;
use pilot_center::telemetry::{self, LogOptions};
use std::path::PathBuf;
use std::time::Duration;

/// Pilot Center: signaling center for WebRTC media servers (protoo over
/// WebSocket, and gRPC).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Configuration file (YAML), e.g. center.yaml.
    config: PathBuf,
    /// More detail in the logs (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Also write logs to this file, rotated daily.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).
    #[arg(long, value_parser = parse_level)]
    log_level: Option<String>,
    /// Do not log to the console.
    #[arg(long)]
    no_console: bool,
    /// Log one JSON object per line.
    #[arg(long)]
    log_json: bool,
}

fn parse_level(s: &str) -> Result<String, String> {
    telemetry::level_directive(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line an operator can act on, with every cause.
            eprintln!("pilot-center: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _log = telemetry::init(&LogOptions {
        level: cli.log_level.clone(),
        verbose: cli.verbose,
        file: cli.log_file.clone(),
        no_console: cli.no_console,
        json: cli.log_json,
    })?;
    let config = Config::load(&cli.config).context("bad configuration")?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::start(&config).await?;
    tracing::info!(url = %server.ws_url(), grpc = ?server.grpc_addr(), "pilot center started");
    wait_for_signal().await?;
    let grace = Duration::from_secs(config.center.shutdown_grace_secs);
    tracing::info!(?grace, "shutting down");
    if server.shutdown(grace).await {
        tracing::info!("stopped");
    } else {
        tracing::warn!("grace period over: exiting with sessions still open");
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
