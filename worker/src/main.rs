//! `sluice-worker`: consumes jobs from RabbitMQ and runs the per-document pipeline, acking only
//! after Qdrant and the metadata store hold the result. Thin by design: load settings, start
//! logging, run [`service::run`] until SIGTERM/SIGINT.

mod handler;
mod outage;
mod service;
mod sizing;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sluice_shared::config::Settings;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "sluice-worker",
    version,
    about = "Consume Sluice jobs from RabbitMQ"
)]
struct Cli {
    /// TOML configuration file (environment variables win).
    #[arg(long, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Refuse to start when a SLUICE_* variable or config-file key names no setting (without
    /// it such names are only warned about).
    #[arg(long, env = "SLUICE_STRICT")]
    strict: bool,
}

fn main() -> ExitCode {
    // The PDF extraction child is this same binary; it must branch off before anything else runs.
    sluice_shared::extract::pdf::run_child_if_requested();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sluice-worker: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref()).context("invalid configuration")?;
    sluice_shared::telemetry::init(settings.log_format, "warn,qdrant_edge=error,sluice=info");
    settings
        .report_unknown(cli.strict)
        .context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        sluice_shared::shutdown::cancel_on_signal(shutdown.clone(), "stopping intake");
        service::run(settings, shutdown).await
    });
    // Blocking work of abandoned documents must not hold the exit: dropping the runtime would
    // wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}
