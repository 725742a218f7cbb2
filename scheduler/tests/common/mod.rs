//! Helpers for the CLI integration tests: each test gets its own temporary data directory and
//! document folder and runs the real `sluice` binary against them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use sluice_shared::store::VectorStore;
use sluice_shared::store::edge::EdgeStore;

pub struct Workspace {
    pub dir: tempfile::TempDir,
    /// Extra environment for every `sluice` run.
    pub env: Vec<(String, String)>,
}

impl Workspace {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("docs")).unwrap();
        Workspace {
            dir,
            env: Vec::new(),
        }
    }

    pub fn docs(&self) -> PathBuf {
        self.dir.path().join("docs")
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.docs().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// A `sluice` command with a clean `SLUICE_*` environment pointing at this workspace.
    pub fn sluice(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
        for (key, _) in std::env::vars() {
            if key.starts_with("SLUICE_") || key == "RUST_LOG" {
                cmd.env_remove(key);
            }
        }
        cmd.env("SLUICE_DATA_DIR", self.data());
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    /// `sluice ingest <location> --json [extra]`: exit code and the summary.
    pub fn ingest(&self, location: &Path, extra: &[&str]) -> (i32, Value) {
        let out = self
            .sluice()
            .arg("ingest")
            .arg(location)
            .arg("--json")
            .args(extra)
            .output()
            .unwrap();
        (out.status.code().unwrap_or(-1), json_stdout("ingest", &out))
    }

    /// Starts `sluice ingest <location> --json [extra]` without waiting for it.
    pub fn spawn_ingest(&self, location: &Path, extra: &[&str]) -> std::process::Child {
        self.sluice()
            .arg("ingest")
            .arg(location)
            .arg("--json")
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sluice ingest")
    }

    pub fn search(&self, query: &str, extra: &[&str]) -> Vec<Value> {
        let out = self
            .sluice()
            .args(["search", query, "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "search failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_stdout("search", &out)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Every point in the embedded store: (id, doc_id, version). The `sluice` process must have
    /// exited (the embedded store is single-process).
    pub fn embedded_points(&self, collection: &str) -> Vec<(uuid::Uuid, String, i64)> {
        let data = self.data();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let store = EdgeStore::open(&data.join("qdrant"))
                .await
                .expect("open embedded store");
            store.list_points(collection).await.expect("list points")
        })
    }
}

pub fn json_stdout(what: &str, out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: stdout is not JSON ({e}); status {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The example corpus shipped with the repository.
pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// Copy the example documents into the workspace's docs folder.
pub fn copy_examples(ws: &Workspace) -> Vec<String> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            let name = entry.file_name().to_string_lossy().to_string();
            std::fs::copy(entry.path(), ws.docs().join(&name)).unwrap();
            names.push(name);
        }
    }
    names.sort();
    names
}

/// Asserts that no point ID repeats and that each document has exactly one version.
pub fn assert_one_version_per_doc(points: &[(uuid::Uuid, String, i64)]) {
    let mut ids: Vec<_> = points.iter().map(|p| p.0).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "duplicate point ids");
    let mut versions: std::collections::HashMap<&str, std::collections::HashSet<i64>> =
        Default::default();
    for (_, doc, v) in points {
        versions.entry(doc.as_str()).or_default().insert(*v);
    }
    for (doc, vs) in versions {
        assert_eq!(vs.len(), 1, "{doc} has chunks of versions {vs:?}");
    }
}

/// Number of points per document.
pub fn points_per_doc(
    points: &[(uuid::Uuid, String, i64)],
) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (_, doc, _) in points {
        *m.entry(doc.clone()).or_insert(0) += 1;
    }
    m
}

pub fn file_uri(path: &Path) -> String {
    url::Url::from_file_path(std::fs::canonicalize(path).unwrap())
        .unwrap()
        .to_string()
}

/// Test servers on a runtime of their own (the tests themselves are synchronous and run the real
/// `sluice` binary): Qdrant (the real server where it exists, else the in-process stand-in; see
/// `sluice_loadtests::qdrant_server`) and the embedding-provider emulator.
pub struct Servers {
    pub rt: tokio::runtime::Runtime,
    pub qdrant_url: String,
    // Dropped after the runtime (field order): the server process is stopped, the stand-in's
    // folder removed once its task is gone.
    _qdrant: sluice_loadtests::qdrant_server::TestQdrant,
}

impl Servers {
    pub fn start() -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let qdrant = rt.block_on(sluice_loadtests::qdrant_server::test_qdrant());
        Servers {
            rt,
            qdrant_url: qdrant.url(),
            _qdrant: qdrant,
        }
    }

    /// Start an embedding-provider emulator on this runtime; returns its base URL.
    pub fn emulator(&self, config: sluice_loadtests::emulator::EmulatorConfig) -> String {
        let (addr, handle) = self
            .rt
            .block_on(sluice_loadtests::emulator::spawn(config))
            .expect("start emulator");
        std::mem::forget(handle);
        format!("http://{addr}")
    }

    /// Every point in a collection of the stand-in, read through the real gRPC client.
    pub fn points(&self, collection: &str) -> Vec<(uuid::Uuid, String, i64)> {
        let url = self.qdrant_url.clone();
        let collection = collection.to_string();
        self.rt.block_on(async move {
            let store = sluice_shared::store::qdrant::QdrantStore::connect(&url, None).unwrap();
            store.list_points(&collection).await.unwrap()
        })
    }
}

/// A PostgreSQL database of its own for one test.
pub fn test_database(servers: &Servers) -> sluice_shared::testing::TestDatabase {
    servers
        .rt
        .block_on(sluice_shared::testing::TestDatabase::create())
}

/// `n` numbered paragraphs about `topic`, enough text for several chunks.
pub fn paragraphs(topic: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("Section {i} about {topic}. The {topic} detail number {i} explains how {topic} behaves in case {}.\n\n", i * 7)
        })
        .collect()
}

/// Deletes a test's queues and exchanges when dropped.
pub struct Topology(pub sluice_shared::queue::QueueSettings);

impl Drop for Topology {
    fn drop(&mut self) {
        sluice_shared::testing::delete_topology(&self.0);
    }
}

/// Takes (and acks) every job waiting in the work queue, parsed.
pub fn drain_work_queue(
    settings: &sluice_shared::queue::QueueSettings,
) -> Vec<sluice_shared::job::Job> {
    use lapin::options::{BasicAckOptions, BasicGetOptions};
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = sluice_shared::queue::connect(settings)
            .await
            .unwrap_or_else(|e| {
                panic!("RabbitMQ is not reachable ({e}); start it with `rabbitmq-server -detached`")
            });
        let channel = conn.create_channel().await.unwrap();
        let mut jobs = Vec::new();
        while let Some(message) = channel
            .basic_get(
                settings.work_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .unwrap()
        {
            jobs.push(
                sluice_shared::job::Job::parse(&message.delivery.data).expect("a valid v1 job"),
            );
            message
                .delivery
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
        }
        jobs
    })
}
