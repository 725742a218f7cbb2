//! `qdrant-standin`: serves the Qdrant gRPC subset sluice uses from qdrant-edge shards on disk.
//! A test stand-in for environments where no Qdrant server can be installed; production uses the
//! real Qdrant. See `sluice_loadtests::standin`.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use sluice_loadtests::standin;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    about = "Qdrant-protocol stand-in backed by qdrant-edge (for tests; production uses Qdrant)"
)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:6334")]
    listen: SocketAddr,
    /// Directory holding the collections (created if missing; locked while running).
    #[arg(long)]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,qdrant_edge=error".into()),
        )
        .init();
    let args = Args::parse();
    let shards = standin::open_shards(&args.data_dir)
        .await
        .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    // Tests read this line to find the port.
    println!("listening on http://{addr}");
    std::io::stdout().flush()?;

    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
        signal.cancel();
    });
    standin::serve(listener, shards, shutdown).await?;
    Ok(())
}
