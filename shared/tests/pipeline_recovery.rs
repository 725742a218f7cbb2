//! The pipeline after a run that crashed half-way (lease taken, some chunks of its version written,
//! never committed): the next run waits out the dead lease, writes a new version and leaves exactly
//! that version's chunks. On the embedded store with SQLite and with PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_shared::chunk::Chunker;
use sluice_shared::embed::{Bm25Encoder, Bm25Settings, SparseEncoder};
use sluice_shared::extract::ExtractSettings;
use sluice_shared::ids;
use sluice_shared::metadata::{BeginOutcome, BeginRequest, DocStatus, MetadataStore};
use sluice_shared::model::{ChunkPayload, Point, Vectors};
use sluice_shared::pipeline::{DocumentJob, Outcome, Pipeline, PipelineOptions};
use sluice_shared::store::VectorStore;
use sluice_shared::store::edge::EdgeStore;
use sluice_shared::testing::TestDatabase;

const COLLECTION: &str = "recovery";
const LEASE: Duration = Duration::from_secs(2);

fn text(topic: &str) -> Bytes {
    let body: String = (0..30)
        .map(|i| format!("Paragraph {i} about {topic} and its {topic} habits.\n\n"))
        .collect();
    Bytes::from(format!("# {topic}\n\n{body}"))
}

async fn pipeline(store: Arc<dyn VectorStore>, metadata: Arc<dyn MetadataStore>) -> Pipeline {
    Pipeline::new(
        ExtractSettings::with_defaults(),
        Arc::new(Chunker::new(40, 0).unwrap()),
        None,
        Arc::new(Bm25Encoder::new(Bm25Settings::default()).unwrap()),
        store,
        metadata,
        PipelineOptions {
            document_timeout: Duration::from_secs(60),
            lease: LEASE,
            wait_if_busy: true,
        },
    )
}

async fn crashed_run_then_recovery(metadata: Arc<dyn MetadataStore>) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn VectorStore> = Arc::new(EdgeStore::open(dir.path()).await.unwrap());
    let p = pipeline(store.clone(), metadata.clone()).await;
    let job = DocumentJob::for_uri(COLLECTION, "file:///docs/otters.md", None);
    let Outcome::Indexed {
        version: v1,
        chunks,
        ..
    } = p.index(&job, Ok(text("otter"))).await.unwrap()
    else {
        panic!("first run must index");
    };

    // A run that claims v2, writes two chunks of it, and dies without committing.
    let crashed = metadata
        .begin(&BeginRequest {
            collection: COLLECTION.into(),
            doc_id: job.doc_id.clone(),
            source: job.source.clone(),
            tenant: None,
            metadata: None,
            content_hash: "changed".into(),
            fingerprint: p.fingerprint().into(),
            force: false,
            lease: LEASE,
        })
        .await
        .unwrap();
    let BeginOutcome::Claimed { version: v2, .. } = crashed else {
        panic!("{crashed:?}")
    };
    let orphan = |i: u32| Point {
        id: ids::point_id(COLLECTION, &job.doc_id, v2, i),
        vectors: Vectors {
            dense: None,
            sparse: Bm25Encoder::new(Bm25Settings::default())
                .unwrap()
                .encode_query("orphan"),
        },
        payload: ChunkPayload {
            doc_id: job.doc_id.clone(),
            source: job.source.clone(),
            title: None,
            chunk_index: i,
            page: None,
            char_start: 0,
            char_end: 6,
            text: "orphan".into(),
            content_hash: "changed".into(),
            version: v2,
            tenant: None,
            ingested_at: chrono::Utc::now().to_rfc3339(),
            metadata: Default::default(),
            staged: true,
        },
    };
    store
        .upsert(COLLECTION, vec![orphan(0), orphan(1)])
        .await
        .unwrap();
    assert_eq!(
        store.count(COLLECTION, Some(&job.doc_id)).await.unwrap(),
        chunks + 2
    );

    // The next run with new content waits out the dead lease, then converges.
    let started = std::time::Instant::now();
    let outcome = p.index(&job, Ok(text("beaver"))).await.unwrap();
    assert!(
        started.elapsed() < LEASE * 3,
        "waited {:?} for a {LEASE:?} lease",
        started.elapsed()
    );
    let Outcome::Indexed {
        version: v3,
        chunks: new_chunks,
        ..
    } = outcome
    else {
        panic!("{outcome:?}")
    };
    assert!(v3 > v2 && v2 > v1);
    let points = store.list_points(COLLECTION).await.unwrap();
    assert_eq!(points.len() as u64, new_chunks);
    assert!(
        points
            .iter()
            .all(|(_, doc, v)| doc == &job.doc_id && *v == v3),
        "{points:?}"
    );
    let record = metadata
        .get(COLLECTION, &job.doc_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            record.status,
            record.current_version,
            record.chunk_count as u64
        ),
        (DocStatus::Indexed, v3, new_chunks)
    );

    // And a run of the same content afterwards changes nothing.
    assert_eq!(
        p.index(&job, Ok(text("beaver"))).await.unwrap(),
        Outcome::Unchanged { version: v3 }
    );
}

#[tokio::test]
async fn recovers_from_a_crashed_run_with_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = sluice_shared::metadata::SqliteStore::open(&dir.path().join("m.sqlite"))
        .await
        .unwrap();
    crashed_run_then_recovery(Arc::new(metadata)).await;
}

#[tokio::test]
async fn recovers_from_a_crashed_run_with_postgres() {
    let db = TestDatabase::create().await;
    let metadata = sluice_shared::metadata::PostgresStore::connect(&db.url)
        .await
        .unwrap();
    crashed_run_then_recovery(Arc::new(metadata)).await;
}

/// The emulator-backed embedder, with its `fail_call`-th call (1-based) refused as a provider
/// would refuse a bad request: a document failing after some of its chunks were written.
struct FailingCall {
    inner: sluice_shared::embed::VoyageEmbedder,
    calls: std::sync::atomic::AtomicUsize,
    fail_call: usize,
}

#[async_trait::async_trait]
impl sluice_shared::embed::Embedder for FailingCall {
    fn fingerprint(&self) -> String {
        self.inner.fingerprint()
    }

    async fn embed(
        &self,
        texts: &[String],
        kind: sluice_shared::embed::InputKind,
    ) -> Result<sluice_shared::embed::DenseEmbeddings, sluice_shared::embed::EmbedError> {
        let call = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        if call == self.fail_call {
            return Err(sluice_shared::embed::EmbedError::Rejected {
                provider: "voyage",
                status: 400,
                message: "refused for the test".into(),
            });
        }
        self.inner.embed(texts, kind).await
    }
}

/// A long document is embedded and upserted a window of chunks at a time. All its chunks arrive;
/// and when a later window fails, the windows already written are taken out again, so the
/// previous version stays whole and alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_document_is_written_in_windows_and_a_failed_version_leaves_no_chunks() {
    use sluice_loadtests::emulator::{self, EmulatorConfig};
    let (_, emulator) = emulator::spawn(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn VectorStore> = Arc::new(EdgeStore::open(dir.path()).await.unwrap());
    let metadata =
        sluice_shared::metadata::connect_any(dir.path().join("meta.sqlite").to_str().unwrap())
            .await
            .unwrap();
    let failing_call = |fail_call: usize| {
        Arc::new(FailingCall {
            inner: sluice_shared::embed::VoyageEmbedder::new(
                sluice_shared::embed::VoyageSettings {
                    base_url: emulator.base_url(),
                    ..Default::default()
                },
            )
            .unwrap(),
            calls: Default::default(),
            fail_call,
        })
    };
    // First run: one call per window, never refused. Second run: its third window fails.
    let embedder = failing_call(0);
    let p = |embedder: Arc<FailingCall>| {
        Pipeline::new(
            ExtractSettings::with_defaults(),
            Arc::new(Chunker::new(40, 0).unwrap()),
            Some(embedder as Arc<dyn sluice_shared::embed::Embedder>),
            Arc::new(Bm25Encoder::new(Bm25Settings::default()).unwrap()),
            store.clone(),
            metadata.clone(),
            PipelineOptions {
                document_timeout: Duration::from_secs(60),
                lease: LEASE,
                wait_if_busy: true,
            },
        )
    };
    let long = |topic: &str| {
        let body: String = (0..1500)
            .map(|i| format!("Paragraph {i} about {topic}: the {topic} swims and eats fish.\n\n"))
            .collect();
        Bytes::from(format!("# {topic}\n\n{body}"))
    };
    let job = DocumentJob::for_uri(COLLECTION, "file:///docs/long.md", None);
    let first = p(embedder.clone())
        .index(&job, Ok(long("otter")))
        .await
        .unwrap();
    let Outcome::Indexed {
        version, chunks, ..
    } = first
    else {
        panic!("{first:?}")
    };
    assert!(
        chunks > 520,
        "the document needs three windows: {chunks} chunks"
    );
    assert!(
        embedder.calls.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "one embedding call per window"
    );
    assert_eq!(
        store.count(COLLECTION, Some(&job.doc_id)).await.unwrap(),
        chunks
    );

    let err = p(failing_call(3))
        .index(&job, Ok(long("beaver")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("refused for the test"), "{err}");
    let points = store.list_points(COLLECTION).await.unwrap();
    assert_eq!(
        points.len() as u64,
        chunks,
        "the failed version's windows are gone"
    );
    assert!(
        points.iter().all(|(_, _, v)| *v == version),
        "only the committed version remains"
    );
    let record = metadata
        .get(COLLECTION, &job.doc_id)
        .await
        .unwrap()
        .expect("the document is recorded");
    assert_eq!(record.current_version, version);
}
