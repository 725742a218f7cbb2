//! `sluice-bench --mode chaos`: a fleet of real `sluice-worker` processes under the faults of
//! issue 9, then an audit of every document.
//!
//! The rig: a fresh PostgreSQL database, the test Qdrant (the real server where it exists, else
//! the stand-in; [`crate::qdrant_server`]) and the local RabbitMQ, each reached by the workers
//! only through a [`FaultProxy`]; the provider emulator in-process with a background error rate
//! and injectable storms. A seeded [`plan::schedule`] publishes the corpus in waves and meanwhile
//! SIGKILLs workers (and restarts them), SIGSTOPs one past its lease (publishing the jobs it
//! holds again, as a redelivery would), cuts the broker, PostgreSQL and Qdrant, restarts the
//! Qdrant process over its storage, sends 5xx and 429 storms, duplicate publishes, changes and
//! deletes. Then the fleet drains, stops, and [`audit::audit`] compares ledger, index and DLQ
//! with the generator's expectation.

pub mod audit;
pub mod plan;
mod workers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sluice_shared::config::{Loader, Settings};
use sluice_shared::metadata::{DocStatus, MetadataStore, PostgresStore};
use sluice_shared::queue::{self, QueueSettings, job_headers};

use crate::emulator::{EmulatorConfig, EmulatorHandle, FaultKind};
use crate::faultproxy::FaultProxy;
use crate::qdrant_server::TestQdrant;
use audit::Findings;
use plan::{Action, Book, Intensity, RESTART_AFTER};
use workers::Workers;

/// The collection a chaos run indexes into.
const COLLECTION: &str = "chaos";

/// Everything a chaos run can be told.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub workers: usize,
    /// Good documents in the corpus.
    pub documents: usize,
    pub doc_bytes: usize,
    /// Bad files (corrupt PDFs, missing sources) on top.
    pub bad_files: usize,
    pub seed: u64,
    pub intensity: Intensity,
    /// `SLUICE_WORKER_CONCURRENCY`.
    pub concurrency: usize,
    /// Provider latency per request (plus up to as much again of jitter).
    pub latency: Duration,
    /// Background share of provider requests answered 5xx.
    pub error_rate: f64,
    /// Added by the Qdrant proxy to every chunk each way: a Qdrant that takes its time, so that
    /// a freeze or a kill often lands in the middle of a write.
    pub qdrant_latency: Duration,
    pub worker_bin: PathBuf,
    /// Extra worker environment (after the rig's own).
    pub env: HashMap<String, String>,
    /// Corpus and worker logs go here.
    pub work_dir: PathBuf,
    /// Give up on the drain after this long.
    pub drain_timeout: Duration,
}

impl ChaosOptions {
    /// The short run CI does: 3 workers, ~120 documents, 75 s of chaos with 4 s outages.
    pub fn short(worker_bin: PathBuf, work_dir: PathBuf) -> Self {
        ChaosOptions {
            workers: 3,
            documents: 115,
            doc_bytes: 3_000,
            bad_files: 5,
            seed: 9,
            intensity: Intensity {
                chaos: Duration::from_secs(75),
                outage: Duration::from_secs(4),
                lease: Duration::from_secs(6),
                kill_every: Duration::from_secs(7),
                documents: 0,
                change_share: 0.15,
                delete_share: 0.08,
                duplicates: 25,
                freezes: 5,
            },
            concurrency: 2,
            latency: Duration::from_millis(250),
            error_rate: 0.05,
            qdrant_latency: Duration::from_millis(150),
            worker_bin,
            env: HashMap::new(),
            work_dir,
            drain_timeout: Duration::from_secs(90),
        }
    }
}

/// What a run did and found.
#[derive(Debug, Serialize)]
pub struct ChaosReport {
    pub seed: u64,
    pub workers: usize,
    pub qdrant: String,
    pub chaos_secs: f64,
    pub outage_secs: f64,
    pub lease_secs: f64,
    pub qdrant_latency_ms: u64,
    /// The schedule as executed: `"12.3 s kill worker 1"`.
    pub events: Vec<String>,
    pub worker_kills: usize,
    pub worker_freezes: usize,
    pub unexpected_worker_exits: usize,
    pub drained: bool,
    pub drain_secs: f64,
    pub elapsed_secs: f64,
    pub provider_requests: u64,
    pub provider_5xx: u64,
    pub provider_429: u64,
    pub findings: Findings,
}

impl ChaosReport {
    /// Drained, and nothing lost, doubled, stale, miscounted or unexpectedly dead-lettered.
    pub fn clean(&self) -> bool {
        self.drained && self.findings.clean()
    }

    /// Workers that ended by themselves, with what they said last: an exit is survivable (the
    /// worker is restarted) but never expected.
    fn exits_rendered(&self) -> String {
        self.events
            .iter()
            .filter(|e| e.contains("exited by itself"))
            .map(|e| format!("  {e}\n"))
            .collect()
    }

    pub fn render(&self) -> String {
        format!(
            "chaos run: seed {}, {} workers, {} (+{} ms each way); {:.0} s of chaos (outages {:.0} s, \
             lease {:.0} s), {} kills, {} freezes past the lease, {} unexpected exits\n\
             provider: {} requests, {} 5xx, {} 429\n\
             drain: {} after {:.1} s; total {:.1} s\n{}{}verdict: {}\n",
            self.seed,
            self.workers,
            self.qdrant,
            self.qdrant_latency_ms,
            self.chaos_secs,
            self.outage_secs,
            self.lease_secs,
            self.worker_kills,
            self.worker_freezes,
            self.unexpected_worker_exits,
            self.provider_requests,
            self.provider_5xx,
            self.provider_429,
            if self.drained {
                "drained"
            } else {
                "NOT drained"
            },
            self.drain_secs,
            self.elapsed_secs,
            self.exits_rendered(),
            self.findings.render(),
            if self.clean() { "CLEAN" } else { "FAILED" },
        )
    }
}

/// Deletes the run's queues however it ends.
struct Topology(QueueSettings);

impl Drop for Topology {
    fn drop(&mut self) {
        sluice_shared::testing::delete_topology(&self.0);
    }
}

/// `url` with its host and port replaced by `addr` (the proxy in front of the service).
fn via(url: &str, addr: SocketAddr) -> anyhow::Result<String> {
    let mut url = url::Url::parse(url)?;
    url.set_host(Some(&addr.ip().to_string()))?;
    url.set_port(Some(addr.port()))
        .map_err(|()| anyhow::anyhow!("{url} takes no port"))?;
    Ok(url.to_string())
}

/// The address a URL's host and port resolve to.
async fn target(url: &str, default_port: u16) -> anyhow::Result<SocketAddr> {
    let parsed = url::Url::parse(url)?;
    let host = parsed.host_str().context("URL without a host")?.to_string();
    let port = parsed.port().unwrap_or(default_port);
    tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .with_context(|| format!("{host}:{port} does not resolve"))
}

/// Logs an event with its offset into the run.
struct Log {
    start: Instant,
    events: Vec<String>,
}

impl Log {
    fn note(&mut self, what: impl std::fmt::Display) {
        let line = format!("{:6.1} s {what}", self.start.elapsed().as_secs_f64());
        eprintln!("  {line}");
        self.events.push(line);
    }
}

/// A follow-up the schedule itself queued: undo a fault, bring a worker back.
#[derive(Debug)]
enum Step {
    Planned(Action),
    Thaw(usize),
    Respawn(usize),
    RepublishProcessing,
    RestoreBroker,
    RestorePostgres,
    RestoreQdrant,
    /// The chaos phase is over.
    End,
}

fn index_job(uri: &str) -> String {
    serde_json::json!({"schema_version": 1, "kind": "index", "source": uri}).to_string()
}

fn delete_job(uri: &str) -> String {
    serde_json::json!({"schema_version": 1, "kind": "delete", "doc_id": uri}).to_string()
}

/// Runs the whole thing; `Err` only when the rig itself fails (a service missing, a worker that
/// cannot start) — what the fleet does wrong is in the report.
pub async fn run(options: &ChaosOptions) -> anyhow::Result<ChaosReport> {
    let run_start = Instant::now();
    let corpus_dir = options.work_dir.join("corpus");
    let log_dir = options.work_dir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let mut book = Book::generate(
        &corpus_dir,
        options.documents,
        options.doc_bytes,
        options.bad_files,
        options.seed,
    )?;
    let uris = book.uris();
    let mut intensity = options.intensity.clone();
    intensity.documents = uris.len();
    let mut steps: Vec<(Duration, Step)> = plan::schedule(&intensity, options.seed)
        .into_iter()
        .map(|(t, a)| (t, Step::Planned(a)))
        .chain([(intensity.chaos, Step::End)])
        .collect();
    let mut rng = StdRng::seed_from_u64(options.seed);

    // Services, each behind a proxy the workers go through.
    let db = sluice_shared::testing::TestDatabase::create().await;
    let mut qdrant = TestQdrant::start().await?;
    eprintln!("chaos: {} at {}", qdrant.backend().as_str(), qdrant.url());
    let amqp_url = std::env::var("SLUICE_TEST_AMQP_URL")
        .unwrap_or_else(|_| queue::DEFAULT_AMQP_URL.to_string());
    let broker = FaultProxy::start(target(&amqp_url, 5672).await?).await?;
    let postgres = FaultProxy::start(target(&db.url, 5432).await?).await?;
    let qdrant_proxy = FaultProxy::start(qdrant.addr()).await?;
    qdrant_proxy.set_latency(options.qdrant_latency);
    let (emulator_addr, emulator): (SocketAddr, EmulatorHandle) =
        crate::emulator::spawn(EmulatorConfig {
            latency: options.latency,
            latency_jitter: options.latency,
            error_rate: options.error_rate,
            seed: options.seed,
            ..Default::default()
        })
        .await?;
    // Only so the rig can see who is waiting for an embedding; it never breaks this link.
    let provider_proxy = FaultProxy::start(emulator_addr).await?;

    let prefix = format!("chaos-{}", uuid::Uuid::new_v4().simple());
    let common: Vec<(&str, String)> = vec![
        ("SLUICE_QUEUE_PREFIX", prefix),
        // Workers read only the corpus, as a producer-facing fleet would be configured.
        ("SLUICE_ALLOWED_SOURCES", corpus_dir.display().to_string()),
        ("SLUICE_QUEUE_RETRY_DELAYS_SECS", "1,2,4".into()),
        ("SLUICE_COLLECTION", COLLECTION.into()),
        (
            "SLUICE_LEASE_SECS",
            options.intensity.lease.as_secs().to_string(),
        ),
        ("SLUICE_WORKER_CONCURRENCY", options.concurrency.to_string()),
        ("SLUICE_SHUTDOWN_DEADLINE_SECS", "15".into()),
        ("SLUICE_EMBED_PROVIDER", "openai".into()),
        (
            "SLUICE_EMBED_BASE_URL",
            format!("http://{}", provider_proxy.addr()),
        ),
        ("SLUICE_EMBED_API_KEY", "chaos".into()),
    ];
    let direct: HashMap<String, String> = common
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .chain([
            ("SLUICE_AMQP_URL".to_string(), amqp_url.clone()),
            ("SLUICE_DATABASE_URL".to_string(), db.url.clone()),
            ("SLUICE_QDRANT_URL".to_string(), qdrant.url()),
        ])
        .collect();
    let mut worker_env = direct.clone();
    worker_env.insert("SLUICE_AMQP_URL".into(), via(&amqp_url, broker.addr())?);
    worker_env.insert("SLUICE_DATABASE_URL".into(), via(&db.url, postgres.addr())?);
    worker_env.insert(
        "SLUICE_QDRANT_URL".into(),
        format!("http://{}", qdrant_proxy.addr()),
    );
    worker_env.extend(options.env.clone());
    let settings =
        Settings::from_loader(&Loader::from_parts(direct, None)?).context("the rig's settings")?;
    let queue_settings = settings.fleet.queue.clone();
    let _topology = Topology(queue_settings.clone());
    let rabbit = queue::Broker::connect(&queue_settings)
        .await
        .with_context(|| {
            format!(
                "RabbitMQ at {} is not reachable; start it with `rabbitmq-server -detached`",
                queue_settings.redacted_url()
            )
        })?;
    let checks = rabbit.connection().create_channel().await?;
    let publisher = rabbit.publisher();
    let metadata = PostgresStore::connect(&db.url).await?;
    let publish = |body: String| {
        let publisher = &publisher;
        let key = &queue_settings.routing_key;
        async move {
            publisher
                .publish_with_retry(key, body.as_bytes(), job_headers(0))
                .await
                .context("publishing a job")
        }
    };

    let mut workers = Workers {
        bin: options.worker_bin.clone(),
        env: worker_env,
        log_dir: log_dir.clone(),
        slots: (0..options.workers).map(|_| None).collect(),
        frozen: vec![false; options.workers],
    };
    for i in 0..options.workers {
        workers.spawn(i)?;
    }
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, consumers) = queue::queue_counts(&checks, &queue_settings.work_queue).await?;
        if consumers as usize >= options.workers {
            break;
        }
        if let Some((i, status)) = workers.reap().into_iter().next() {
            bail!(
                "worker {i} exited at start-up ({status}); see {}",
                log_dir.join(format!("worker-{i}.log")).display()
            );
        }
        if Instant::now() > ready_by {
            bail!(
                "{consumers} of {} workers consuming after 60 s",
                options.workers
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut log = Log {
        start: Instant::now(),
        events: Vec::new(),
    };
    let (mut kills, mut freezes, mut exits) = (0, 0, 0);
    log.note(format!(
        "chaos starts: {} documents, {} workers",
        uris.len(),
        options.workers
    ));
    while !steps.is_empty() {
        let (at, step) = steps.remove(0);
        let due = log.start + at;
        while Instant::now() < due {
            tokio::time::sleep(Duration::from_millis(100).min(due - Instant::now())).await;
            for (i, status) in workers.reap() {
                // Restarted like a killed one (a worker that cannot start during an outage
                // must not be respawned in a tight loop).
                exits += 1;
                log.note(format!(
                    "worker {i} exited by itself ({status}); restarting in {:.0} s",
                    RESTART_AFTER.as_secs_f64()
                ));
                let at = log.start.elapsed() + RESTART_AFTER;
                let pos = steps.partition_point(|(t, _)| *t <= at);
                steps.insert(pos, (at, Step::Respawn(i)));
            }
        }
        let now = log.start.elapsed();
        let mut later = |after: Duration, step: Step| {
            let at = now + after;
            let pos = steps.partition_point(|(t, _)| *t <= at);
            steps.insert(pos, (at, step));
        };
        match step {
            Step::Planned(Action::Publish(positions)) => {
                for p in &positions {
                    let uri = &uris[*p];
                    book.docs.get_mut(uri).expect("known").published = true;
                    publish(index_job(uri)).await?;
                }
                log.note(format!("published {} index jobs", positions.len()));
            }
            Step::Planned(Action::PublishPoison) => {
                for body in plan::POISON {
                    publish(body.to_string()).await?;
                }
                log.note(format!("published {} poison messages", plan::POISON.len()));
            }
            Step::Planned(Action::Duplicate) => {
                let candidates = book.live_published();
                if !candidates.is_empty() {
                    let uri = &candidates[rng.random_range(0..candidates.len())];
                    publish(index_job(uri)).await?;
                    log.note(format!("duplicate publish of {}", book.docs[uri].name));
                }
            }
            Step::Planned(Action::Change) => {
                let candidates = book.live_published();
                if !candidates.is_empty() {
                    let uri = candidates[rng.random_range(0..candidates.len())].clone();
                    book.change(&uri, &mut rng)?;
                    publish(index_job(&uri)).await?;
                    log.note(format!("changed {}", book.docs[&uri].name));
                }
            }
            Step::Planned(Action::Delete) => {
                let candidates: Vec<String> = book
                    .live_published()
                    .into_iter()
                    .filter(|u| book.docs[u].changes == 0)
                    .collect();
                if !candidates.is_empty() {
                    let uri = candidates[rng.random_range(0..candidates.len())].clone();
                    book.delete(&uri)?;
                    publish(delete_job(&uri)).await?;
                    log.note(format!("deleted {}", book.docs[&uri].name));
                }
            }
            Step::Planned(Action::Kill) => {
                if let Some(i) = workers.pick(&mut rng) {
                    workers.kill(i);
                    kills += 1;
                    log.note(format!("SIGKILL worker {i}"));
                    later(RESTART_AFTER, Step::Respawn(i));
                }
            }
            Step::Planned(Action::Freeze(d)) => {
                // The freezes that matter land in the middle of a document: alternately wait (a
                // little) for a worker waiting on the provider (it writes as soon as it wakes)
                // and for one waiting on Qdrant (mid-write), else take any.
                let (proxy, what) = if freezes % 2 == 0 {
                    (&provider_proxy, "waiting for the provider")
                } else {
                    (&qdrant_proxy, "mid-write to Qdrant")
                };
                let mut writer = None;
                let give_up = Instant::now() + Duration::from_secs(5);
                while writer.is_none() && Instant::now() < give_up {
                    writer = proxy
                        .awaiting_reply()
                        .into_iter()
                        .filter_map(|client| workers.owner_of(client))
                        .find(|i| !workers.frozen[*i]);
                    if writer.is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                let mid_write = writer.is_some();
                if let Some(i) = writer.or_else(|| workers.pick(&mut rng)) {
                    workers.signal(i, libc::SIGSTOP);
                    workers.frozen[i] = true;
                    freezes += 1;
                    log.note(format!(
                        "SIGSTOP worker {i} for {:.1} s{}",
                        d.as_secs_f64(),
                        if mid_write {
                            format!(" ({what})")
                        } else {
                            String::new()
                        }
                    ));
                    later(
                        options.intensity.lease + Duration::from_millis(500),
                        Step::RepublishProcessing,
                    );
                    later(d, Step::Thaw(i));
                }
            }
            Step::Planned(Action::CutBroker(d)) => {
                broker.cut();
                log.note(format!("broker cut for {:.0} s", d.as_secs_f64()));
                later(d, Step::RestoreBroker);
            }
            Step::Planned(Action::CutPostgres(d)) => {
                postgres.cut();
                log.note(format!("PostgreSQL cut for {:.0} s", d.as_secs_f64()));
                later(d, Step::RestorePostgres);
            }
            Step::Planned(Action::CutQdrant(d)) => {
                qdrant_proxy.cut();
                log.note(format!("Qdrant cut for {:.0} s", d.as_secs_f64()));
                later(d, Step::RestoreQdrant);
            }
            Step::Planned(Action::RestartQdrant) => {
                let was_cut = qdrant_proxy.state() != crate::faultproxy::LinkState::Forwarding;
                qdrant_proxy.cut();
                let t = Instant::now();
                qdrant.restart(true).await.context("restarting Qdrant")?;
                if !was_cut {
                    qdrant_proxy.restore();
                }
                log.note(format!(
                    "Qdrant killed and restarted over its storage ({:.1} s)",
                    t.elapsed().as_secs_f64()
                ));
            }
            Step::Planned(Action::Storm5xx(d)) => {
                emulator.storm(FaultKind::Status { status: 503 }, d);
                log.note(format!("provider 5xx storm for {:.0} s", d.as_secs_f64()));
            }
            Step::Planned(Action::Storm429(d)) => {
                emulator.storm(
                    FaultKind::RateLimit {
                        retry_after_secs: Some(1),
                    },
                    d,
                );
                log.note(format!("provider 429 storm for {:.0} s", d.as_secs_f64()));
            }
            Step::Thaw(i) => {
                workers.signal(i, libc::SIGCONT);
                workers.frozen[i] = false;
                log.note(format!("SIGCONT worker {i}"));
            }
            Step::Respawn(i) => {
                if workers.slots[i].is_none() {
                    workers.spawn(i)?;
                    log.note(format!("worker {i} restarted"));
                }
            }
            Step::RepublishProcessing => {
                let held = processing(&metadata).await?;
                for uri in &held {
                    publish(index_job(uri)).await?;
                }
                log.note(format!(
                    "published again the {} documents still processing",
                    held.len()
                ));
            }
            Step::RestoreBroker => {
                broker.restore();
                log.note("broker restored");
            }
            Step::RestorePostgres => {
                postgres.restore();
                log.note("PostgreSQL restored");
            }
            Step::RestoreQdrant => {
                qdrant_proxy.restore();
                log.note("Qdrant restored");
            }
            Step::End => {}
        }
    }
    // Whatever the schedule left broken is repaired before the drain.
    for proxy in [&broker, &postgres, &qdrant_proxy] {
        proxy.restore();
    }
    for i in 0..options.workers {
        workers.signal(i, libc::SIGCONT);
        workers.frozen[i] = false;
        if workers.slots[i].is_none() {
            workers.spawn(i)?;
        }
    }
    qdrant_proxy.set_latency(Duration::ZERO);
    log.note("chaos over; draining");

    let drain_start = Instant::now();
    let quiet_for = options.intensity.lease + Duration::from_secs(5);
    let mut queues = vec![queue_settings.work_queue.clone()];
    queues.extend(queue_settings.retry_queue_names());
    let (mut last, mut quiet_since, mut last_print) = (None, None, Instant::now());
    let drained = loop {
        for (i, status) in workers.reap() {
            exits += 1;
            log.note(format!(
                "worker {i} exited by itself ({status}); restarting"
            ));
            tokio::time::sleep(RESTART_AFTER).await;
            workers.spawn(i)?;
        }
        let mut depth = 0;
        for q in &queues {
            depth += queue::queue_depth(&checks, q).await?;
        }
        let mut counts = metadata.status(Some(COLLECTION), 0).await?.counts;
        counts.sort_by_key(|(s, _)| s.as_str());
        let busy = counts
            .iter()
            .any(|(s, n)| *s == DocStatus::Processing && *n > 0);
        if depth == 0 && !busy && last.as_ref() == Some(&counts) {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= quiet_for {
                break true;
            }
        } else {
            quiet_since = None;
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  drain {:5.1} s: {depth} queued, ledger {counts:?}",
                drain_start.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        last = Some(counts);
        if drain_start.elapsed() > options.drain_timeout {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let drain_secs = drain_start.elapsed().as_secs_f64();
    log.note(if drained {
        "drained; stopping the workers"
    } else {
        "NOT drained in time; stopping the workers"
    });
    let codes = tokio::task::block_in_place(|| workers.stop_all(Duration::from_secs(30)));
    if codes.iter().any(|c| *c != 0) {
        log.note(format!("worker exit codes at the end: {codes:?}"));
    }

    let dlq = audit::drain_dlq(&queue_settings).await?;
    let findings = audit::audit(&book, &metadata, COLLECTION, &qdrant.url(), &dlq).await?;
    let stats = emulator.stats();
    let report = ChaosReport {
        seed: options.seed,
        workers: options.workers,
        qdrant: qdrant.backend().as_str().to_string(),
        chaos_secs: options.intensity.chaos.as_secs_f64(),
        outage_secs: options.intensity.outage.as_secs_f64(),
        lease_secs: options.intensity.lease.as_secs_f64(),
        qdrant_latency_ms: options.qdrant_latency.as_millis() as u64,
        events: log.events,
        worker_kills: kills,
        worker_freezes: freezes,
        unexpected_worker_exits: exits,
        drained,
        drain_secs,
        elapsed_secs: run_start.elapsed().as_secs_f64(),
        provider_requests: stats.requests_total,
        provider_5xx: stats.server_errors,
        provider_429: stats.rate_limited,
        findings,
    };
    rabbit.close().await;
    let _ = emulator.shutdown().await;
    qdrant.shutdown().await?;
    Ok(report)
}

/// Every document of the run's collection the ledger has in `processing`, by source.
async fn processing(metadata: &PostgresStore) -> anyhow::Result<Vec<String>> {
    Ok(audit::ledger(metadata, COLLECTION)
        .await?
        .into_iter()
        .filter(|d| d.status == DocStatus::Processing)
        .map(|d| d.source)
        .collect())
}
