//! The write path under pauses, deterministically: a test hook freezes a run at a chosen step (as
//! SIGSTOP or a VM pause would) while other runs and deletions go on, then lets it continue. After
//! every interleaving the index holds exactly one published version per document — the one the
//! ledger records — and a searcher never sees two versions or a partial one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_shared::chunk::Chunker;
use sluice_shared::embed::{Bm25Encoder, Bm25Settings, SparseEncoder};
use sluice_shared::extract::ExtractSettings;
use sluice_shared::metadata::{DocStatus, MetadataStore, SqliteStore};
use sluice_shared::pipeline::{
    DocumentJob, Outcome, Pipeline, PipelineError, PipelineOptions, Step, TestHook,
};
use sluice_shared::store::edge::EdgeStore;
use sluice_shared::store::{SearchQuery, VectorStore};
use tokio::sync::Notify;

const COLLECTION: &str = "fencing";
const LEASE: Duration = Duration::from_millis(900);

/// Pauses runs at chosen steps until released. A paused run makes no progress and, at
/// `BeforeCommit`/`BeforePublish`, renews no lease: it is frozen.
#[derive(Default, Clone)]
struct Freezer {
    armed: Arc<Mutex<Gates>>,
}

/// The gate armed for each (document, step).
type Gates = HashMap<(String, StepKey), Arc<Gate>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum StepKey {
    Upsert(usize),
    Commit,
    Publish,
}

#[derive(Default)]
struct Gate {
    reached: Notify,
    release: Notify,
}

impl Freezer {
    /// The next run of `doc_id` to reach `step` stops there until `Gate::release` is notified.
    fn arm(&self, doc_id: &str, step: StepKey) -> Arc<Gate> {
        let gate = Arc::new(Gate::default());
        self.armed
            .lock()
            .unwrap()
            .insert((doc_id.to_string(), step), gate.clone());
        gate
    }

    fn hook(&self) -> TestHook {
        let armed = self.armed.clone();
        Arc::new(move |step, doc_id| {
            let key = match step {
                Step::BeforeUpsert { window } => StepKey::Upsert(window),
                Step::BeforeCommit => StepKey::Commit,
                Step::BeforePublish => StepKey::Publish,
            };
            let gate = armed.lock().unwrap().remove(&(doc_id.to_string(), key));
            Box::pin(async move {
                if let Some(gate) = gate {
                    gate.reached.notify_one();
                    gate.release.notified().await;
                }
            })
        })
    }
}

struct Rig {
    store: Arc<dyn VectorStore>,
    metadata: Arc<dyn MetadataStore>,
    pipeline: Arc<Pipeline>,
    freezer: Freezer,
    // Last: the shards flush into it when the stores drop.
    _dir: tempfile::TempDir,
}

async fn rig(timeout: Duration) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn VectorStore> = Arc::new(EdgeStore::open(dir.path()).await.unwrap());
    let metadata: Arc<dyn MetadataStore> = Arc::new(
        SqliteStore::open(&dir.path().join("m.sqlite"))
            .await
            .unwrap(),
    );
    let freezer = Freezer::default();
    let pipeline = Pipeline::new(
        ExtractSettings::with_defaults(),
        Arc::new(Chunker::new(40, 0).unwrap()),
        None,
        Arc::new(Bm25Encoder::new(Bm25Settings::default()).unwrap()),
        store.clone(),
        metadata.clone(),
        PipelineOptions {
            document_timeout: timeout,
            lease: LEASE,
            wait_if_busy: false,
        },
    )
    .with_test_hook(freezer.hook());
    Rig {
        store,
        metadata,
        pipeline: Arc::new(pipeline),
        freezer,
        _dir: dir,
    }
}

fn text(topic: &str, paragraphs: usize) -> Bytes {
    let body: String = (0..paragraphs)
        .map(|i| format!("Paragraph {i} about {topic} and its {topic} habits.\n\n"))
        .collect();
    Bytes::from(format!("# {topic}\n\n{body}"))
}

fn job() -> DocumentJob {
    DocumentJob::for_uri(COLLECTION, "file:///docs/otters.md", None)
}

impl Rig {
    /// (version, staged) of every point of the document, sorted.
    async fn versions(&self) -> Vec<(i64, bool)> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .store
                .scroll_points(COLLECTION, after, 256)
                .await
                .unwrap();
            out.extend(page.points.into_iter().map(|p| (p.version, p.staged)));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Distinct versions a search for `topic` returns.
    async fn searched(&self, topic: &str) -> Vec<i64> {
        let query = SearchQuery {
            dense: None,
            sparse: Bm25Encoder::new(Bm25Settings::default())
                .unwrap()
                .encode_query(topic),
            top_k: 1000,
            tenant: None,
        };
        let mut v: Vec<i64> = self
            .store
            .search(COLLECTION, &query)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.payload.version)
            .collect();
        v.sort();
        v.dedup();
        v
    }

    async fn index(&self, topic: &str) -> Result<Outcome, PipelineError> {
        self.pipeline.index(&job(), Ok(text(topic, 30))).await
    }

    fn spawn_index(
        &self,
        topic: &str,
        paragraphs: usize,
    ) -> tokio::task::JoinHandle<Result<Outcome, PipelineError>> {
        let pipeline = self.pipeline.clone();
        let bytes = text(topic, paragraphs);
        tokio::spawn(async move { pipeline.index(&job(), Ok(bytes)).await })
    }

    /// The ledger's and the index's view must agree: one published version, the recorded one,
    /// with the recorded number of chunks.
    async fn assert_converged(&self) {
        let record = self
            .metadata
            .get(COLLECTION, &job().doc_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.status, DocStatus::Indexed);
        assert_eq!(record.published_version, record.current_version);
        assert_eq!(
            self.versions().await,
            [(record.current_version, false)],
            "exactly the recorded version, published"
        );
        assert_eq!(
            self.store
                .count_version(COLLECTION, &job().doc_id, record.current_version)
                .await
                .unwrap(),
            record.chunk_count as u64
        );
    }
}

fn indexed_version(outcome: Outcome) -> i64 {
    match outcome {
        Outcome::Indexed { version, .. } => version,
        other => panic!("expected Indexed, got {other:?}"),
    }
}

/// The bug this file exists for: a run frozen past its lease wakes up after another run committed
/// a newer version. It must not delete that version, nor commit, nor leave its own points.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_frozen_past_its_lease_cannot_harm_the_newer_version() {
    let rig = rig(Duration::from_secs(60)).await;
    assert_eq!(indexed_version(rig.index("otter").await.unwrap()), 1);

    let gate = rig.freezer.arm(&job().doc_id, StepKey::Commit);
    let frozen = rig.spawn_index("beaver", 30);
    gate.reached.notified().await;
    // Frozen with version 2 written (staged): searchers still see version 1 only, and whole.
    assert_eq!(rig.versions().await, [(1, false), (2, true)]);
    assert_eq!(rig.searched("otter").await, [1]);
    assert!(rig.searched("beaver").await.is_empty());

    // Its lease runs out; another run takes the document over and finishes version 3.
    tokio::time::sleep(LEASE * 2).await;
    assert_eq!(indexed_version(rig.index("heron").await.unwrap()), 3);

    gate.release.notify_one();
    let err = frozen.await.unwrap().unwrap_err();
    assert!(matches!(err, PipelineError::LeaseLost { .. }), "{err:?}");
    rig.assert_converged().await;
    assert_eq!(rig.searched("heron").await, [3]);
    assert!(rig.searched("beaver").await.is_empty());
}

/// A run frozen after its commit publishes late: it only deletes versions older than its own, so
/// the newer run's publication stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_publication_never_deletes_a_newer_version() {
    let rig = rig(Duration::from_secs(60)).await;
    rig.index("otter").await.unwrap();
    let gate = rig.freezer.arm(&job().doc_id, StepKey::Publish);
    let frozen = rig.spawn_index("beaver", 30);
    gate.reached.notified().await;
    // Committed but not yet published: the ledger says 2, searchers still see 1.
    assert_eq!(rig.searched("otter").await, [1]);
    assert_eq!(indexed_version(rig.index("heron").await.unwrap()), 3);
    gate.release.notify_one();
    assert_eq!(indexed_version(frozen.await.unwrap().unwrap()), 2);
    rig.assert_converged().await;
    assert_eq!(rig.searched("heron").await, [3]);
}

/// A crash between the commit and the publication (the run's task is killed there) leaves the
/// committed version staged; the next run of the same content publishes it without re-embedding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_commit_and_publication_is_finished_by_the_next_run() {
    let rig = rig(Duration::from_secs(60)).await;
    rig.index("otter").await.unwrap();
    let gate = rig.freezer.arm(&job().doc_id, StepKey::Publish);
    let crashed = rig.spawn_index("beaver", 30);
    gate.reached.notified().await;
    crashed.abort();
    let _ = crashed.await;
    assert_eq!(rig.versions().await, [(1, false), (2, true)]);
    assert_eq!(rig.searched("otter").await, [1]);

    let again = rig
        .pipeline
        .index(&job(), Ok(text("beaver", 30)))
        .await
        .unwrap();
    assert_eq!(again, Outcome::Unchanged { version: 2 });
    rig.assert_converged().await;
    assert_eq!(rig.searched("beaver").await, [2]);
}

/// A delete that arrives while a run writes: the run is fenced off and removes its own version;
/// nothing of the document stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_racing_an_index_run_leaves_nothing() {
    let rig = rig(Duration::from_secs(60)).await;
    rig.index("otter").await.unwrap();
    let gate = rig.freezer.arm(&job().doc_id, StepKey::Commit);
    let frozen = rig.spawn_index("beaver", 30);
    gate.reached.notified().await;
    rig.pipeline
        .delete(COLLECTION, &job().doc_id)
        .await
        .unwrap();
    gate.release.notify_one();
    let err = frozen.await.unwrap().unwrap_err();
    assert!(matches!(err, PipelineError::LeaseLost { .. }), "{err:?}");
    assert!(
        rig.versions().await.is_empty(),
        "{:?}",
        rig.versions().await
    );
    let record = rig
        .metadata
        .get(COLLECTION, &job().doc_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, DocStatus::Deleted);
}

/// A run that times out part-way removes the windows it wrote; the previous version stays whole
/// and is what searchers see throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_run_removes_its_partial_version() {
    // Long enough for a loaded CI machine to reach the second window in a debug build.
    let rig = rig(Duration::from_secs(15)).await;
    rig.index("otter").await.unwrap();
    // Freeze before the second window: the first is written, staged.
    let gate = rig.freezer.arm(&job().doc_id, StepKey::Upsert(1));
    // ~400 chunks of 40 tokens: two windows.
    let slow = rig.spawn_index("beaver", 1200);
    gate.reached.notified().await;
    assert!(rig.versions().await.contains(&(2, true)));
    assert_eq!(rig.searched("otter").await, [1]);
    assert!(
        rig.searched("beaver").await.is_empty(),
        "a partial version is never searchable"
    );
    let err = slow.await.unwrap().unwrap_err();
    assert!(matches!(err, PipelineError::Timeout { .. }), "{err:?}");
    assert_eq!(rig.versions().await, [(1, false)]);
    gate.release.notify_one();
}

/// Tenant and metadata of unchanged content reach every point without a new version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_of_unchanged_content_follow_the_ledger() {
    let rig = rig(Duration::from_secs(60)).await;
    rig.index("otter").await.unwrap();
    let mut relabelled = job();
    relabelled.tenant = Some("acme".into());
    relabelled.metadata = Some(serde_json::Map::from_iter([(
        "team".to_string(),
        "wildlife".into(),
    )]));
    let outcome = rig
        .pipeline
        .index(&relabelled, Ok(text("otter", 30)))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Unchanged { version: 1 });
    let hits = rig
        .pipeline
        .search(COLLECTION, "otter", 1000, Some("acme".into()))
        .await
        .unwrap();
    let record = rig
        .metadata
        .get(COLLECTION, &job().doc_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        hits.len() as i64,
        record.chunk_count,
        "every point carries the new tenant"
    );
    assert!(
        hits.iter()
            .all(|h| h.payload.metadata["team"] == "wildlife")
    );
    assert_eq!(record.metadata["team"], "wildlife");
    // A later job that names no labels keeps them.
    assert_eq!(
        rig.index("otter").await.unwrap(),
        Outcome::Unchanged { version: 1 }
    );
    rig.assert_converged().await;
}
