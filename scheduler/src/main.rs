//! `sluice`: the operator CLI. Thin by design: parse arguments, load settings, start logging, build
//! the pipeline from the library, run one command.

mod enqueue;
mod ingest;
mod progress;
mod reindex;
mod search;
mod serve;
mod status;
mod verify;
mod watch;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_shared::config::Settings;

/// Exit status when the run finished but some documents failed (all others were indexed).
pub const EXIT_SOME_FAILED: u8 = 3;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "Turn documents into searchable chunks in Qdrant"
)]
struct Cli {
    /// TOML configuration file (settings as in the README; environment variables win).
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Where the embedded store and SQLite metadata live (SLUICE_DATA_DIR).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Refuse to start when a SLUICE_* variable or config-file key names no setting (without
    /// it such names are only warned about).
    #[arg(long, global = true, env = "SLUICE_STRICT")]
    strict: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Index a folder, a file or an object-storage URL (file://, s3://, gs://, az://).
    Ingest(ingest::IngestArgs),
    /// Search a collection.
    Search(search::SearchArgs),
    /// Document counts by status and the latest failures.
    Status(status::StatusArgs),
    /// Publish index jobs for the fleet's workers (RabbitMQ, SLUICE_AMQP_URL).
    Enqueue(enqueue::EnqueueArgs),
    /// Run the scheduler service: HTTP API, watch mode and S3 event notifications.
    Serve(serve::ServeArgs),
    /// Poll object-storage locations and enqueue new, changed and removed documents.
    Watch(watch::WatchArgs),
    /// Enqueue matching documents from the metadata store again, in bounded batches.
    Reindex(reindex::ReindexArgs),
    /// Compare the metadata store with what the vector store holds; --repair fixes the drift.
    /// Exit status 3 when drift was found (even if repaired).
    Verify(verify::VerifyArgs),
}

fn main() -> ExitCode {
    // The PDF extraction child is this same binary; it must branch off before anything else runs.
    sluice_shared::extract::pdf::run_child_if_requested();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut settings = Settings::load(cli.config.as_deref()).context("invalid configuration")?;
    if let Some(dir) = cli.data_dir {
        settings.data_dir = dir;
    }
    sluice_shared::telemetry::init(settings.log_format, "warn,qdrant_edge=error,sluice=info");
    settings
        .report_unknown(cli.strict)
        .context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Ingest(args) => ingest::run(settings, args).await,
            Command::Search(args) => search::run(settings, args).await,
            Command::Status(args) => status::run(settings, args).await,
            Command::Enqueue(args) => enqueue::run(settings, args).await,
            Command::Serve(args) => serve::run(settings, args).await,
            Command::Watch(args) => watch::run(settings, args).await,
            Command::Reindex(args) => reindex::run(settings, args).await,
            Command::Verify(args) => verify::run(settings, args).await,
        }
    });
    // Blocking work of abandoned documents (a timed-out extraction) must not hold the exit:
    // dropping the runtime would wait for it.
    runtime.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// How long the process waits for blocking tasks still running when a command ends.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
