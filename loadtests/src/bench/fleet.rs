//! `sluice-bench --mode fleet`: N real `sluice-worker` processes on the local RabbitMQ, an
//! isolated queue prefix, a fresh PostgreSQL database and a Qdrant stand-in, fed by raw publishes
//! of index jobs (as the scheduler would publish them), until every document is indexed or failed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use sluice_shared::config::{Loader, Settings};
use sluice_shared::job::{IndexJob, Job, JobSpec};
use sluice_shared::metadata::{DocStatus, PostgresStore};
use sluice_shared::queue::{self, Broker, QueueSettings, job_headers};

use super::figures::{Figures, cost_per_1k_by_fifth, percentile};
use super::procs::{ServerCpu, Usage, vm_hwm_kib, wait_usage};
use crate::fleet::free_port;

/// Jobs published at once: enough to hide the confirm round trip, few enough not to matter.
const PUBLISH_CONCURRENCY: usize = 32;
/// How often the metadata store is asked whether the run is done.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Sampling period of the workers' peak RSS (VmHWM is a high-water mark, so sampling only has
/// to catch the last value before exit).
const RSS_SAMPLE_INTERVAL: Duration = Duration::from_millis(200);
/// The collection the bench indexes into (the database and stand-in are the bench's own).
const COLLECTION: &str = "bench";

/// What the fleet run needs beyond the corpus.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub workers: usize,
    pub worker_bin: PathBuf,
    /// PostgreSQL to use as is; `None` creates (and drops) a database of its own.
    pub database_url: Option<String>,
    /// Environment for the workers on top of the bench's own (which they inherit): the embedding
    /// settings, `SLUICE_AMQP_URL`, and whatever `--worker-env` added.
    pub env: HashMap<String, String>,
    /// Give up after this long.
    pub timeout: Duration,
    /// Folder for the workers' logs.
    pub log_dir: PathBuf,
}

/// What the fleet run measured; the caller adds the emulator's side.
#[derive(Debug, Default)]
pub struct FleetOutcome {
    pub figures: Figures,
    /// When the first job was published.
    pub started: Option<Instant>,
    pub finished: Option<Instant>,
}

/// Running workers; anything still running when this is dropped (an error path) is killed.
struct Workers {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Workers {
    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// The last lines of worker `i`'s log, for error messages.
    fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.logs[i]).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// A worker that has exited (a zombie not yet reaped), if any.
    fn exited(&self) -> Option<usize> {
        self.children.iter().position(|c| {
            std::fs::read_to_string(format!("/proc/{}/stat", c.id()))
                .map(|stat| {
                    // The state follows the parenthesised command name.
                    stat.rsplit_once(')')
                        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(true)
        })
    }

    /// SIGTERM to every worker, then reaps each (up to `within` each).
    fn stop(mut self, within: Duration) -> anyhow::Result<Vec<Usage>> {
        for child in &self.children {
            // SAFETY: a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let mut usages = Vec::new();
        for child in std::mem::take(&mut self.children) {
            match wait_usage(child.id(), within)? {
                Some(usage) => usages.push(usage),
                None => {
                    self.children.push(child);
                    bail!("a worker did not exit within {within:?} of SIGTERM");
                }
            }
        }
        Ok(usages)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Deletes the bench's queues and exchanges however the run ends.
struct Topology(QueueSettings);

impl Drop for Topology {
    fn drop(&mut self) {
        sluice_shared::testing::delete_topology(&self.0);
    }
}

/// Every file of the corpus as a `file://` URI, in name order.
pub(crate) fn corpus_uris(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing the corpus {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    paths
        .iter()
        .map(|p| {
            url::Url::from_file_path(p)
                .map(|u| u.to_string())
                .map_err(|()| anyhow::anyhow!("{} is not an absolute path", p.display()))
        })
        .collect()
}

/// How far the run is, asked over a connection of its own: its backend's CPU is the bench's, not
/// the fleet's, and is left out of the PostgreSQL figures.
struct Progress {
    conn: sqlx::PgConnection,
    backend_pid: u32,
}

impl Progress {
    async fn connect(url: &str) -> anyhow::Result<Self> {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(url)
            .await
            .context("connecting to the bench database")?;
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
        Ok(Progress {
            conn,
            backend_pid: pid as u32,
        })
    }

    /// Documents indexed and failed so far.
    async fn settled(&mut self) -> anyhow::Result<(i64, i64)> {
        Ok(sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'indexed'), \
                    count(*) FILTER (WHERE status = 'failed') \
             FROM documents WHERE collection = $1",
        )
        .bind(COLLECTION)
        .fetch_one(&mut self.conn)
        .await?)
    }
}

/// What every fleet-mode run sets up: an isolated queue prefix with its topology, a database
/// (the caller's or a fresh one, dropped after), a Qdrant stand-in, and the workers' environment.
pub(crate) struct Rig {
    pub env: HashMap<String, String>,
    pub queue_settings: QueueSettings,
    pub broker: Broker,
    pub metadata: PostgresStore,
    pub database_url: String,
    topology: Topology,
    standin_dir: tempfile::TempDir,
    standin: crate::standin::StandinHandle,
    own_db: Option<sluice_shared::testing::TestDatabase>,
}

impl Rig {
    pub async fn start(options: &FleetOptions, corpus_dir: &Path) -> anyhow::Result<Rig> {
        let (database_url, own_db) = super::database(options.database_url.as_ref()).await;
        let standin_dir = tempfile::tempdir()?;
        let (standin_addr, standin) = crate::standin::spawn(standin_dir.path())
            .await
            .context("starting the Qdrant stand-in")?;

        let prefix = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let mut env: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| k.starts_with("SLUICE_"))
            .collect();
        for (key, value) in [
            ("SLUICE_QUEUE_PREFIX", prefix.clone()),
            // Short delays: a transient failure must not stall a benchmark for five minutes.
            ("SLUICE_QUEUE_RETRY_DELAYS_SECS", "2,10,30".into()),
            ("SLUICE_DATABASE_URL", database_url.clone()),
            ("SLUICE_QDRANT_URL", format!("http://{standin_addr}")),
            ("SLUICE_COLLECTION", COLLECTION.into()),
            ("SLUICE_SHUTDOWN_DEADLINE_SECS", "30".into()),
        ] {
            env.insert(key.into(), value);
        }
        // The workers may read the corpus (and whatever the caller's own setting adds).
        let allowed = match env.get("SLUICE_ALLOWED_SOURCES") {
            Some(more) if !more.is_empty() => format!("{},{more}", corpus_dir.display()),
            _ => corpus_dir.display().to_string(),
        };
        env.insert("SLUICE_ALLOWED_SOURCES".into(), allowed);
        env.extend(options.env.clone());
        let settings = Settings::from_loader(&Loader::from_parts(env.clone(), None)?)
            .context("the workers' settings")?;
        let queue_settings = settings.fleet.queue.clone();
        let topology = Topology(queue_settings.clone());
        let broker = Broker::connect(&queue_settings).await.with_context(|| {
            format!(
                "RabbitMQ at {} is not reachable; start it with `rabbitmq-server -detached`",
                queue_settings.redacted_url()
            )
        })?;
        let metadata = PostgresStore::connect(&database_url)
            .await
            .context("connecting to the bench database")?;
        Ok(Rig {
            env,
            queue_settings,
            broker,
            metadata,
            database_url,
            topology,
            standin_dir,
            standin,
            own_db,
        })
    }

    /// Worker number `i`, logging into `log_dir/worker-<i>.log`.
    pub fn spawn_worker(
        &self,
        options: &FleetOptions,
        i: usize,
    ) -> anyhow::Result<(Child, PathBuf)> {
        let log = options.log_dir.join(format!("worker-{i}.log"));
        let child = Command::new(&options.worker_bin)
            .envs(&self.env)
            .env("SLUICE_HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("starting {}", options.worker_bin.display()))?;
        Ok((child, log))
    }

    /// Publishes an index job for `uri`; returns its `enqueued_at` in microseconds.
    pub async fn publish(&self, uri: &str) -> anyhow::Result<i64> {
        let job = Job::new(JobSpec::Index(IndexJob::new(uri.to_string())))?;
        let at = job
            .enqueued_at
            .expect("Job::new stamps it")
            .timestamp_micros();
        self.broker
            .publisher()
            .publish(
                &self.queue_settings.routing_key,
                job.to_json().as_bytes(),
                job_headers(0),
            )
            .await
            .with_context(|| format!("publishing the job for {uri}"))?;
        Ok(at)
    }

    /// Closes the connections, deletes the topology, stops the stand-in, drops the database.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.broker.close().await;
        drop(self.topology);
        self.standin
            .shutdown()
            .await
            .context("stopping the Qdrant stand-in")?;
        drop(self.standin_dir);
        drop(self.own_db);
        Ok(())
    }
}

/// Runs the fleet over the corpus in `corpus_dir` and returns its figures (without the
/// emulator's, which the caller owns).
pub async fn run(options: &FleetOptions, corpus_dir: &Path) -> anyhow::Result<FleetOutcome> {
    let rig = Rig::start(options, corpus_dir).await?;
    let queue_settings = rig.queue_settings.clone();
    let uris = corpus_uris(corpus_dir)?;
    let mut workers = Workers {
        children: Vec::new(),
        logs: Vec::new(),
    };
    for i in 0..options.workers {
        let (child, log) = rig.spawn_worker(options, i)?;
        workers.children.push(child);
        workers.logs.push(log);
    }

    // Workers consume once they are up: wait for all of them, so start-up is not measured.
    let checks = rig.broker.connection().create_channel().await?;
    let ready_by = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, consumers) = queue::queue_counts(&checks, &queue_settings.work_queue).await?;
        if consumers as usize >= options.workers {
            break;
        }
        if let Some(i) = workers.exited() {
            bail!("worker {i} exited at start-up:\n{}", workers.log_tail(i));
        }
        if Instant::now() > ready_by {
            bail!(
                "{consumers} of {} workers consuming after 60 s",
                options.workers
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let sampling = Arc::new(AtomicBool::new(true));
    let peaks = Arc::new(Mutex::new(vec![0u64; options.workers]));
    let sampler = {
        let (sampling, peaks, pids) = (sampling.clone(), peaks.clone(), workers.pids());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                for (i, pid) in pids.iter().enumerate() {
                    if let Some(kib) = vm_hwm_kib(*pid) {
                        let mut peaks = peaks.lock().unwrap();
                        peaks[i] = peaks[i].max(kib);
                    }
                }
                std::thread::sleep(RSS_SAMPLE_INTERVAL);
            }
        })
    };

    let started = Instant::now();
    eprintln!("publishing {} index jobs…", uris.len());
    let enqueued: HashMap<String, i64> = futures::stream::iter(uris.iter())
        .map(|uri| {
            let rig = &rig;
            async move { anyhow::Ok((uri.clone(), rig.publish(uri).await?)) }
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;

    let total = uris.len() as i64;
    let deadline = started + options.timeout;
    let mut last_report = Instant::now();
    let mut retry_queues = vec![queue_settings.work_queue.clone()];
    retry_queues.extend(queue_settings.retry_queue_names());
    // PostgreSQL's CPU against documents settled, the poll's own backend left out.
    let mut progress = Progress::connect(&rig.database_url).await?;
    let mut postgres = ServerCpu::new("postgres", vec![progress.backend_pid]);
    let postgres_at_start = postgres.secs();
    let mut postgres_samples = vec![(0u64, 0.0)];
    loop {
        let (indexed, failed) = progress.settled().await?;
        postgres_samples.push((
            (indexed + failed) as u64,
            postgres.secs() - postgres_at_start,
        ));
        if indexed + failed >= total {
            // A failed document may still come back from a delayed-retry queue.
            let mut pending = 0;
            for q in &retry_queues {
                pending += queue::queue_depth(&checks, q).await?;
            }
            if pending == 0 {
                break;
            }
        }
        if let Some(i) = workers.exited() {
            bail!("worker {i} exited during the run:\n{}", workers.log_tail(i));
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {:?}: {indexed} indexed, {failed} failed of {total}",
                options.timeout
            );
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "  {:>6.1} s: {indexed} indexed, {failed} failed of {total}",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let finished = Instant::now();
    let postgres_cpu = postgres.secs() - postgres_at_start;
    drop(progress);

    // Enqueue → ack from the metadata store: a document's indexed_at is stamped by the commit
    // right before the ack (the ack waits for nothing else), and enqueued_at is what the
    // publish carried, so both ends are exact — unlike the workers' histogram buckets.
    let mut latencies = Vec::with_capacity(uris.len());
    let (mut chunks, mut tokens, mut indexed, mut failed) = (0i64, 0i64, 0u64, 0u64);
    for doc in crate::chaos::audit::ledger(&rig.metadata, COLLECTION).await? {
        match doc.status {
            DocStatus::Indexed => indexed += 1,
            DocStatus::Failed => failed += 1,
            DocStatus::Processing | DocStatus::Deleted => {}
        }
        chunks += doc.chunk_count;
        tokens += doc.tokens;
        if let (Some(at), Some(enqueued)) = (doc.indexed_at, enqueued.get(&doc.source)) {
            latencies.push((at.timestamp_micros() - enqueued) as f64 / 1e6);
        }
    }

    let usages =
        tokio::task::spawn_blocking(move || workers.stop(Duration::from_secs(60))).await??;
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let peaks = peaks.lock().unwrap().clone();
    rig.finish().await?;
    for (i, usage) in usages.iter().enumerate() {
        if usage.exit_code != 0 {
            eprintln!(
                "warning: worker {i} exited with status {} (log: {})",
                usage.exit_code,
                options.log_dir.join(format!("worker-{i}.log")).display()
            );
        }
    }

    let mib = |kib: u64| kib as f64 / 1024.0;
    let figures = Figures {
        mode: "fleet".into(),
        workers: options.workers,
        documents: uris.len(),
        indexed,
        failed,
        chunks: chunks.max(0) as u64,
        tokens: tokens.max(0) as u64,
        elapsed_secs: (finished - started).as_secs_f64(),
        enqueue_to_ack_p50_secs: percentile(&mut latencies, 50.0),
        enqueue_to_ack_p99_secs: percentile(&mut latencies, 99.0),
        worker_peak_rss_sum_mb: mib(peaks.iter().sum()),
        worker_peak_rss_max_mb: mib(peaks.iter().copied().max().unwrap_or(0)),
        peak_rss_with_children_mb: mib(usages
            .iter()
            .map(|u| u.max_rss_with_children_kib)
            .max()
            .unwrap_or(0)),
        cpu_secs: usages.iter().map(|u| u.cpu_secs).sum(),
        postgres_cpu_secs: Some(postgres_cpu),
        postgres_cpu_per_1k_docs_by_fifth: cost_per_1k_by_fifth(&postgres_samples, total as u64),
        ..Figures::default()
    };
    Ok(FleetOutcome {
        figures,
        started: Some(started),
        finished: Some(finished),
    })
}
