//! `pilot-msu CONFIG`: runs the media hub until SIGTERM or Ctrl-C.

use anyhow::Context as _;
use clap::Parser;

/// A media server unit for Pilot Center: relays each publisher to every SFU that pulls it.
#[derive(Parser)]
#[command(version)]
struct Cli {
    /// The configuration file (see msu.yaml).
    config: std::path::PathBuf,
    /// Log level (error, warn, info, debug, trace) unless RUST_LOG is set.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none())
        .init();
    let config = pilot_msu::config::Config::load(&cli.config)
        .with_context(|| format!("configuration {}", cli.config.display()))?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let (_msu, task) = pilot_msu::start(config, stop).await?;
    task.await?;
    tracing::info!("stopped");
    Ok(())
}
