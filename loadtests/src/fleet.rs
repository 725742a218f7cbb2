//! Test rig for the fleet: an isolated fleet (own queue names, database, Qdrant — the real server
//! where it exists, else the stand-in, see [`crate::qdrant_server`] — and collection) running the real `sluice-worker` and `sluice` binaries. Used by the integration
//! tests of `worker/` and `scheduler/`; the binaries are the ones `cargo test --workspace` built
//! next to the test executable.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions};
use sluice_shared::config::{Loader, Settings};
use sluice_shared::metadata::{DocStatus, MetadataStore, PostgresStore};
use sluice_shared::queue::{
    self, Broker, ERROR_HEADER, ERROR_KIND_HEADER, Publisher, header_string, job_headers,
};
use sluice_shared::store::VectorStore;
use sluice_shared::store::qdrant::QdrantStore;
use sluice_shared::testing::{TestDatabase, delete_topology};

use crate::qdrant_server::{Backend, TestQdrant, test_qdrant};

/// One isolated fleet: queues, database, Qdrant, collection, and the environment to run with.
pub struct Fleet {
    pub env: HashMap<String, String>,
    pub settings: Settings,
    pub db: TestDatabase,
    pub qdrant_url: String,
    pub docs: tempfile::TempDir,
    workers_started: AtomicUsize,
    qdrant: Option<TestQdrant>,
}

impl Fleet {
    pub async fn new() -> Self {
        let db = TestDatabase::create().await;
        let qdrant = test_qdrant().await;
        let qdrant_url = qdrant.url();
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let port = free_port();
        let docs = tempfile::tempdir().unwrap();
        let env: HashMap<String, String> = [
            // Workers read only what the tests write into `docs` (SLUICE_WATCH adds more).
            ("SLUICE_ALLOWED_SOURCES", docs.path().display().to_string()),
            ("SLUICE_QUEUE_PREFIX", prefix.clone()),
            ("SLUICE_QUEUE_RETRY_DELAYS_SECS", "1,2".into()),
            ("SLUICE_DATABASE_URL", db.url.clone()),
            ("SLUICE_QDRANT_URL", qdrant_url.clone()),
            ("SLUICE_COLLECTION", "fleet".into()),
            ("SLUICE_HTTP_LISTEN", format!("127.0.0.1:{port}")),
            ("SLUICE_MAX_ATTEMPTS", "2".into()),
            ("SLUICE_SHUTDOWN_DEADLINE_SECS", "10".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(
            std::env::var("SLUICE_TEST_AMQP_URL")
                .ok()
                .map(|u| ("SLUICE_AMQP_URL".to_string(), u)),
        )
        .collect();
        let settings =
            Settings::from_loader(&Loader::from_parts(env.clone(), None).unwrap()).unwrap();
        Fleet {
            env,
            settings,
            db,
            qdrant_url,
            docs,
            workers_started: AtomicUsize::new(0),
            qdrant: Some(qdrant),
        }
    }

    /// A `sluice-worker` process with this fleet's environment; stderr piped for [`stop`]. The
    /// first one listens on `SLUICE_HTTP_LISTEN` from [`Self::env`]; later ones, which would
    /// collide with it, on free ports of their own.
    pub fn worker(&self) -> Child {
        let mut cmd = self.command("sluice-worker");
        if self.workers_started.fetch_add(1, Ordering::Relaxed) > 0 {
            cmd.env("SLUICE_HTTP_LISTEN", format!("127.0.0.1:{}", free_port()));
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice-worker")
    }

    /// A `sluice` command with this fleet's environment (and nothing else from `SLUICE_*`).
    pub fn sluice(&self) -> Command {
        self.command("sluice")
    }

    fn command(&self, binary: &str) -> Command {
        let mut cmd = Command::new(workspace_binary(binary));
        for (key, _) in std::env::vars() {
            if key.starts_with("SLUICE_") {
                cmd.env_remove(key);
            }
        }
        cmd.envs(&self.env);
        cmd
    }

    /// Which Qdrant this fleet runs against.
    pub fn qdrant_backend(&self) -> Backend {
        self.qdrant.as_ref().expect("running").backend()
    }

    /// Stops Qdrant cleanly (the stand-in's shards flush into a folder that still exists). Call
    /// at the end of a test.
    pub async fn finish(mut self) {
        if let Some(qdrant) = self.qdrant.take() {
            qdrant.shutdown().await.expect("test Qdrant shut down");
        }
    }

    /// Declares the topology (as the scheduler does at start-up) and returns a publisher.
    pub async fn publisher(&self) -> Arc<Publisher> {
        let broker = Broker::connect(&self.settings.fleet.queue).await.unwrap_or_else(|e| {
            panic!("RabbitMQ is not reachable ({e}); start it with `rabbitmq-server -detached` or run scripts/test.sh")
        });
        broker.publisher()
    }

    /// Publishes a raw JSON body, as another service would.
    pub async fn publish_raw(&self, publisher: &Publisher, body: &str) {
        publisher
            .publish(
                &self.settings.fleet.queue.routing_key,
                body.as_bytes(),
                job_headers(0),
            )
            .await
            .unwrap();
    }

    /// Publishes a plain index job for `source`, as a producer would.
    pub async fn publish_index(&self, publisher: &Publisher, source: &str) {
        let body = serde_json::json!({"schema_version": 1, "kind": "index", "source": source});
        self.publish_raw(publisher, &body.to_string()).await;
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> String {
        let path = self.docs.path().join(name);
        std::fs::write(&path, contents).unwrap();
        url::Url::from_file_path(&path).unwrap().to_string()
    }

    /// Starts a provider emulator (OpenAI wire format, `latency` per request) and points this
    /// fleet's embedding settings at it. Keep the handle alive for the test.
    pub async fn use_emulator(&mut self, latency: Duration) -> crate::emulator::EmulatorHandle {
        let (addr, emulator) = crate::emulator::spawn(crate::emulator::EmulatorConfig {
            latency,
            ..Default::default()
        })
        .await
        .expect("start the provider emulator");
        for (key, value) in [
            ("SLUICE_EMBED_PROVIDER", "openai".to_string()),
            ("SLUICE_EMBED_BASE_URL", format!("http://{addr}")),
            ("SLUICE_EMBED_API_KEY", "k".to_string()),
        ] {
            self.env.insert(key.into(), value);
        }
        emulator
    }

    pub async fn metadata(&self) -> PostgresStore {
        PostgresStore::connect(&self.db.url).await.unwrap()
    }

    /// Waits until `done` holds for the status counts, or panics after `within`.
    pub async fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&HashMap<DocStatus, i64>) -> bool,
    ) {
        let metadata = self.metadata().await;
        let deadline = Instant::now() + within;
        loop {
            let report = metadata.status(None, 0).await.unwrap();
            let counts: HashMap<DocStatus, i64> = report.counts.into_iter().collect();
            if done(&counts) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {counts:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Every point of the fleet's collection; none before a worker created it.
    pub async fn points(&self) -> Vec<(uuid::Uuid, String, i64)> {
        match QdrantStore::connect(&self.qdrant_url, None)
            .unwrap()
            .list_points("fleet")
            .await
        {
            Ok(points) => points,
            Err(sluice_shared::store::StoreError::MissingCollection(_)) => Vec::new(),
            Err(e) => panic!("listing the fleet's points: {e}"),
        }
    }

    /// Every message in the DLQ: (error kind, error reason).
    pub async fn drain_dlq(&self) -> Vec<(String, String)> {
        let conn = queue::connect(&self.settings.fleet.queue).await.unwrap();
        let channel = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(message) = channel
            .basic_get(
                self.settings.fleet.queue.dead_letter_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .unwrap()
        {
            let headers = message.delivery.properties.headers().as_ref();
            out.push((
                header_string(headers, ERROR_KIND_HEADER).unwrap_or_default(),
                header_string(headers, ERROR_HEADER).unwrap_or_default(),
            ));
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
        }
        out
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        delete_topology(&self.settings.fleet.queue);
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// A binary of this workspace, from the target directory the running test executable lives in
/// (`target/<profile>/deps/<test>` → `target/<profile>/<binary>`).
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable inside target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo test --workspace` (or `cargo build --bins` first)",
        path.display()
    );
    path
}

/// Sends SIGTERM and waits for the process to exit: (exit code, stderr).
pub fn stop(mut worker: Child, within: Duration) -> (i32, String) {
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(worker.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = worker.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            worker
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut stderr)
                .unwrap();
            return (status.code().unwrap_or(-1), stderr);
        }
        if Instant::now() > deadline {
            let _ = worker.kill();
            panic!("worker did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn paragraphs(topic: &str, n: usize) -> String {
    (0..n)
        .map(|i| format!("Paragraph {i} explains {topic} in case {}.\n\n", i * 11))
        .collect()
}

/// Publishes `n` index jobs through a worker environment with a slow provider, so that jobs are
/// in flight when something breaks.
pub async fn slow_fleet(n: usize, latency: Duration) -> (Fleet, crate::emulator::EmulatorHandle) {
    let mut fleet = Fleet::new().await;
    let emulator = fleet.use_emulator(latency).await;
    fleet
        .env
        .insert("SLUICE_WORKER_CONCURRENCY".into(), "4".into());
    fleet.env.insert("SLUICE_LEASE_SECS".into(), "3".into());
    let publisher = fleet.publisher().await;
    for i in 0..n {
        let uri = fleet.write(
            &format!("doc-{i}.md"),
            format!("# Doc {i}\n\n{}", paragraphs(&format!("t{i}"), 10)),
        );
        fleet.publish_index(&publisher, &uri).await;
    }
    (fleet, emulator)
}

/// The index is exact: every document once, one version each.
pub async fn assert_exact(fleet: &Fleet, n: usize) {
    let points = fleet.points().await;
    let mut versions: HashMap<&str, std::collections::HashSet<i64>> = HashMap::new();
    for (_, doc, v) in &points {
        versions.entry(doc).or_default().insert(*v);
    }
    assert_eq!(versions.len(), n, "documents in the index");
    assert!(
        versions.values().all(|v| v.len() == 1),
        "one version per document"
    );
    let mut ids: Vec<_> = points.iter().map(|p| p.0).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), points.len(), "no duplicate point ids");
}
