//! `sluice reindex` against the real RabbitMQ and PostgreSQL, real `sluice-worker` processes and the
//! Qdrant stand-in: a forced reindex re-embeds everything exactly once without ever letting the
//! work queue grow past its configured depth, and an interrupted run resumes after its cursor.

use std::collections::HashMap;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use sluice_loadtests::fleet::{Fleet, assert_exact, slow_fleet, stop};
use sluice_shared::job::{Job, JobSpec};
use sluice_shared::metadata::{
    BeginOutcome, BeginRequest, DocStatus, DocumentFilter, DocumentRecord, MetadataStore,
};
use sluice_shared::queue::{self, Broker, QueueSettings};
use sluice_shared::reindex::QueueDepth;

const DOCS: usize = 60;

/// Reads the work queue's depth on a broker connection of its own.
async fn open_depth(settings: &QueueSettings) -> QueueDepth {
    let broker = Broker::connect(settings)
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ is not reachable ({e})"));
    QueueDepth::open(&broker)
        .await
        .expect("a channel for depth checks")
}

/// Samples the work queue's ready depth every ~20 ms until stopped; returns the largest seen.
struct DepthSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(u32, usize)>,
}

impl DepthSampler {
    async fn start(fleet: &Fleet) -> Self {
        let depth = open_depth(&fleet.settings.fleet.queue).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut max, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                max = max.max(depth.get().await.expect("queue depth"));
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (max, samples)
        });
        DepthSampler { stop, task }
    }

    async fn finish(self) -> (u32, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

async fn documents(metadata: &impl MetadataStore) -> Vec<DocumentRecord> {
    metadata
        .list_documents(&DocumentFilter::default(), None, 10_000)
        .await
        .unwrap()
}

async fn run_sluice(mut cmd: std::process::Command) -> (Output, String, String) {
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run sluice"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    (out, stdout, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_reindex_reembeds_everything_once_and_never_exceeds_the_queue_depth() {
    // Slow embeddings and small prefetch: the workers hold at most 4 jobs, so anything published
    // faster than they index piles up as ready messages, and a reindex that ignored the bound
    // would push the queue far past 10.
    let (mut fleet, _emulator) = slow_fleet(DOCS, Duration::from_millis(40)).await;
    for (key, value) in [
        ("SLUICE_PREFETCH", "2"),
        ("SLUICE_WORKER_CONCURRENCY", "2"),
        ("SLUICE_REINDEX_MAX_QUEUE_DEPTH", "10"),
        ("SLUICE_REINDEX_BATCH", "5"),
        // Two workers at once: each binds its own probe port.
        ("SLUICE_HTTP_LISTEN", "127.0.0.1:0"),
    ] {
        fleet.env.insert(key.into(), value.into());
    }
    let workers = [fleet.worker(), fleet.worker()];
    fleet
        .wait_for(Duration::from_secs(120), "the first indexing", |c| {
            c.get(&DocStatus::Indexed) == Some(&(DOCS as i64))
        })
        .await;
    let metadata = fleet.metadata().await;
    let before: HashMap<String, i64> = documents(&metadata)
        .await
        .into_iter()
        .map(|d| (d.doc_id, d.current_version))
        .collect();
    assert_eq!(before.len(), DOCS);

    let sampler = DepthSampler::start(&fleet).await;
    let mut cmd = fleet.sluice();
    cmd.args(["reindex", "--force"]);
    let (out, stdout, stderr) = run_sluice(cmd).await;
    assert!(out.status.success(), "reindex failed:\n{stderr}");
    assert!(
        stdout.contains(&format!("published {DOCS} index job(s)")),
        "summary: {stdout}\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("{DOCS} document(s) to publish")),
        "{stderr}"
    );
    // Progress shows the hold-back: the workers cannot keep up with unbounded publishing.
    assert!(stderr.contains("waiting: queue depth"), "{stderr}");

    let deadline = Instant::now() + Duration::from_secs(120);
    let after = loop {
        let docs = documents(&metadata).await;
        let done = docs
            .iter()
            .all(|d| d.status == DocStatus::Indexed && d.current_version > before[&d.doc_id]);
        if done {
            break docs;
        }
        assert!(
            Instant::now() < deadline,
            "not every document was re-embedded: {docs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (max_depth, samples) = sampler.finish().await;
    assert!(samples > 10, "the sampler barely ran ({samples} samples)");
    assert!(
        max_depth <= 10,
        "the work queue reached {max_depth} ready jobs (max 10)"
    );

    for worker in workers {
        let (code, log) = stop(worker, Duration::from_secs(30));
        assert_eq!(code, 0, "{log}");
    }
    assert_eq!(after.len(), DOCS);
    assert_exact(&fleet, DOCS).await;
    let points = fleet.points().await;
    let chunks: i64 = after.iter().map(|d| d.chunk_count).sum();
    assert_eq!(points.len() as i64, chunks, "points = chunks recorded");
    let current: HashMap<&str, i64> = after
        .iter()
        .map(|d| (d.doc_id.as_str(), d.current_version))
        .collect();
    for (_, doc_id, version) in &points {
        assert_eq!(
            current.get(doc_id.as_str()),
            Some(version),
            "a point of {doc_id} from another version than the recorded one"
        );
    }
    assert!(fleet.drain_dlq().await.is_empty(), "nothing dead-lettered");
    fleet.finish().await;
}

/// Takes every message off the work queue: the documents the jobs name.
async fn take_jobs(channel: &lapin::Channel, queue: &str) -> Vec<String> {
    let mut doc_ids = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        match Job::parse(&message.delivery.data).unwrap().spec {
            JobSpec::Index(index) => {
                assert!(index.force, "--force reaches the job");
                doc_ids.push(index.effective_doc_id().to_string());
            }
            other => panic!("expected an index job, got {other:?}"),
        }
        message
            .delivery
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    doc_ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_reindex_resumes_after_its_saved_cursor() {
    const N: usize = 40;
    let mut fleet = Fleet::new().await;
    fleet
        .env
        .insert("SLUICE_REINDEX_MAX_QUEUE_DEPTH".into(), "10".into());
    fleet.env.insert("SLUICE_REINDEX_BATCH".into(), "5".into());
    // Indexed documents as the metadata store records them; no worker runs in this test.
    let metadata = fleet.metadata().await;
    for i in 0..N {
        let doc_id = format!("doc-{i:02}");
        let req = BeginRequest {
            collection: "fleet".into(),
            doc_id: doc_id.clone(),
            source: format!("file:///srv/docs/{doc_id}.md"),
            tenant: None,
            metadata: None,
            content_hash: "h".into(),
            fingerprint: "f".into(),
            force: false,
            lease: Duration::from_secs(60),
        };
        let BeginOutcome::Claimed {
            version,
            lease_token,
            labels,
        } = metadata.begin(&req).await.unwrap()
        else {
            panic!("claim {doc_id}");
        };
        metadata
            .commit(&sluice_shared::metadata::CommitRequest {
                collection: "fleet",
                doc_id: &doc_id,
                lease_token,
                version,
                content_hash: "h",
                fingerprint: "f",
                chunk_count: 1,
                tokens: 10,
                labels: &labels,
            })
            .await
            .unwrap();
    }
    let all: Vec<String> = (0..N).map(|i| format!("doc-{i:02}")).collect();
    let queue_settings = fleet.settings.fleet.queue.clone();
    let depth = open_depth(&queue_settings).await;

    // First run: two batches fill the queue to its bound, then it waits; stop it there.
    let run = fleet
        .sluice()
        .args(["reindex", "--force"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while depth.get().await.unwrap() < 10 {
        assert!(
            Instant::now() < deadline,
            "the first run never filled the queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Waiting, not publishing: more time must not add jobs past the bound.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(depth.get().await.unwrap(), 10);
    let (code, stderr) = tokio::task::spawn_blocking(move || stop(run, Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(code, 143, "SIGTERM exit status:\n{stderr}");
    assert!(stderr.contains("waiting: queue depth"), "{stderr}");
    assert!(
        stderr.contains("cursor saved after fleet/doc-09"),
        "{stderr}"
    );

    let conn = queue::connect(&queue_settings).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut first = take_jobs(&channel, &queue_settings.work_queue).await;
    first.sort();
    assert_eq!(first, all[..10].to_vec(), "the first run's jobs");

    // Second run, with the queue drained as it goes: it resumes after doc-09.
    let (out, stdout, stderr, second) = reindex_while_draining(&fleet, &channel).await;
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("resuming reindex run")
            && stderr.contains("10 job(s) already published, continuing after fleet/doc-09"),
        "{stderr}"
    );
    assert!(
        stdout.contains("published 30 index job(s)") && stdout.contains(&format!("{N} in all")),
        "{stdout}"
    );
    // Every document exactly once across the two runs, not twice.
    let mut both = first;
    both.extend(second);
    both.sort();
    assert_eq!(both, all);

    // A finished run is not resumed: the same command starts over.
    let (out, stdout, stderr, third) = reindex_while_draining(&fleet, &channel).await;
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("resuming"), "{stderr}");
    assert!(
        stdout.contains(&format!("published {N} index job(s)")),
        "{stdout}"
    );
    assert_eq!(third.len(), N);
    fleet.finish().await;
}

/// Runs `sluice reindex --force` while taking its jobs off the queue as they arrive (a stand-in
/// for workers); returns its output and the documents of the jobs taken.
async fn reindex_while_draining(
    fleet: &Fleet,
    channel: &lapin::Channel,
) -> (Output, String, String, Vec<String>) {
    let draining = Arc::new(AtomicBool::new(true));
    let drainer = {
        let (flag, channel, queue) = (
            draining.clone(),
            channel.clone(),
            fleet.settings.fleet.queue.work_queue.clone(),
        );
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while flag.load(Ordering::Relaxed) {
                seen.extend(take_jobs(&channel, &queue).await);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen.extend(take_jobs(&channel, &queue).await);
            seen
        })
    };
    let mut cmd = fleet.sluice();
    cmd.args(["reindex", "--force"]);
    let (out, stdout, stderr) = run_sluice(cmd).await;
    draining.store(false, Ordering::Relaxed);
    let taken = drainer.await.unwrap();
    (out, stdout, stderr, taken)
}
