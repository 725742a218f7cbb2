//! `sluice serve`: the scheduler service. One process that
//!
//! - answers the HTTP API ([`api`]: `POST /v1/jobs`, `GET /v1/documents/{id}`, `GET /v1/stats`)
//!   beside `/healthz`, `/readyz` (broker and database reachable) and `/metrics`, on
//!   `SLUICE_API_LISTEN`;
//! - consumes S3 event notifications from `SLUICE_S3_EVENTS_QUEUE` when set ([`s3_events`]);
//! - polls the `SLUICE_WATCH` locations.
//!
//! `SLUICE_SERVE_ROLE` (`all`, `api`, `watch`) picks a subset: `api` serves only the HTTP API (run
//! many), `watch` only the watchers and the S3 consumer (run one); both keep the probes and /metrics.
//!
//! Every job goes out through the [`Broker`]'s one confirm-mode publisher: a job counts as queued
//! only once the broker confirmed it, and one that is not confirmed is reported to whoever sent it
//! (a 503 to the HTTP client, a rejected event back on its queue).
//!
//! Shutdown (SIGTERM/SIGINT, or the caller's token): the HTTP server stops accepting and finishes
//! the requests it has; the S3 consumer stops between events and returns what it prefetched; then
//! the publisher closes and [`serve`] returns.

mod api;
mod s3_events;
mod stats;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use sluice_shared::config::Settings;
use sluice_shared::ops::{self, MetadataCheck, ReadinessCheck};
use sluice_shared::queue::Broker;
use sluice_shared::wiring;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use stats::BrokerProbe;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address of the HTTP API and the probes; overrides SLUICE_API_LISTEN.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

pub async fn run(mut settings: Settings, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(listen) = args.listen {
        settings.scheduler.api_listen = listen;
    }
    let shutdown = CancellationToken::new();
    sluice_shared::shutdown::cancel_on_signal(shutdown.clone(), "shutting down");
    serve(settings, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Runs the scheduler service until `shutdown` is cancelled, then stops everything it started and
/// returns `Ok`. Fails at start-up when the broker, the database or the listen address cannot be
/// used, and later if a background task fails for good (which also stops the rest).
pub async fn serve(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    settings.scheduler.check_api_exposure()?;
    let prometheus = sluice_shared::metrics::install_prometheus().map_err(anyhow::Error::msg)?;
    let queue_settings = settings.fleet.queue.clone();
    let broker = Arc::new(Broker::connect(&queue_settings).await?);
    let publisher = broker.publisher();
    let metadata = wiring::open_metadata(&settings)
        .await
        .context("opening the metadata store (SLUICE_DATABASE_URL)")?;
    let probe = Arc::new(BrokerProbe::new(
        &queue_settings,
        broker.connection().clone(),
    ));

    let listen = settings.scheduler.api_listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding SLUICE_API_LISTEN {listen}"))?;
    let checks: Vec<Arc<dyn ReadinessCheck>> = vec![
        Arc::new(BrokerCheck(probe.clone())),
        Arc::new(MetadataCheck(metadata.clone())),
    ];
    let state = Arc::new(api::ApiState::new(
        publisher.clone(),
        metadata.clone(),
        probe,
        queue_settings.clone(),
        settings.scheduler.s3_events_queue.clone(),
        settings.collection.clone(),
        settings.scheduler.api_key.clone(),
        settings.allowed_sources.clone(),
        settings.job_limits,
    ));
    // SLUICE_SERVE_ROLE splits the API (many replicas) from the watchers (exactly one).
    let role = settings.scheduler.serve_role;
    let ops = ops::router(Some(prometheus), checks);
    let app = api::with_limits(
        if role.serves_api() {
            api::router(state).merge(ops)
        } else {
            ops
        },
        settings.scheduler.api_timeout,
        settings.scheduler.api_max_concurrent_requests,
    );

    // Everything below stops on `stop`: the caller's shutdown, or a background task failing.
    let stop = shutdown.child_token();
    let mut background: JoinSet<anyhow::Result<()>> = JoinSet::new();
    let events_queue = settings
        .scheduler
        .s3_events_queue
        .clone()
        .filter(|_| role.runs_watchers());
    if let Some(events_queue) = events_queue {
        let consumer = s3_events::consume(broker.clone(), events_queue, stop.clone());
        background.spawn(async move {
            consumer.await;
            Ok(())
        });
    }
    if role.runs_watchers() && !settings.scheduler.watch.is_empty() {
        let settings = settings.clone();
        let locations = settings.scheduler.watch.clone();
        let publisher = publisher.clone();
        let stop = stop.clone();
        background.spawn(async move {
            crate::watch::watch_locations(&settings, locations, publisher, stop).await
        });
    }

    tracing::info!(address = %listener.local_addr()?, "serving the API, /healthz, /readyz, /metrics");
    let mut server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let mut failure = None;
    let mut server_done = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            done = &mut server => {
                server_done = Some(done);
                break;
            }
            Some(done) = background.join_next() => match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure = Some(e.context("a background task failed"));
                    break;
                }
                Err(join) => {
                    failure = Some(anyhow::anyhow!("a background task panicked: {join}"));
                    break;
                }
            },
        }
    }
    stop.cancel();
    tracing::info!("stopping: finishing open requests");
    let server_done = match server_done {
        Some(done) => done,
        None => server.await,
    };
    while let Some(done) = background.join_next().await {
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %format_args!("{e:#}"), "background task ended with an error");
        }
    }
    publisher.close().await;
    if let Some(e) = failure {
        return Err(e);
    }
    server_done
        .context("the HTTP server task panicked")?
        .context("serving HTTP")?;
    if !shutdown.is_cancelled() {
        anyhow::bail!("the HTTP server stopped on its own");
    }
    tracing::info!("scheduler stopped");
    Ok(())
}

/// Ready only while the broker answers (see [`BrokerProbe::check`]).
struct BrokerCheck(Arc<BrokerProbe>);

#[async_trait]
impl ReadinessCheck for BrokerCheck {
    fn name(&self) -> &'static str {
        "broker"
    }
    async fn check(&self) -> Result<(), String> {
        self.0.check().await
    }
}
