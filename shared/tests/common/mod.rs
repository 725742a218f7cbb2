//! Shared helpers for the integration tests: a metadata store on each backend, each test with its
//! own SQLite file or PostgreSQL database.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use sluice_shared::testing::TestDatabase;
use std::time::Duration;

use sluice_shared::metadata::{
    BeginOutcome, BeginRequest, CommitOutcome, CommitRequest, Labels, MetadataStore, connect_any,
};

/// Which metadata store implementation a contract test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A migrated, empty metadata store that belongs to one test.
pub struct MetaHarness {
    pub backend: Backend,
    pub store: Arc<dyn MetadataStore>,
    /// What `connect_any` was given: a file path or a PostgreSQL URL.
    pub location: String,
    _dir: Option<tempfile::TempDir>,
    _db: Option<TestDatabase>,
}

impl MetaHarness {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("creating a temp dir");
                // A missing parent directory checks that `open` creates it.
                let path = dir.path().join("state").join("sluice.db");
                let location = path.to_str().expect("temp path is UTF-8").to_string();
                let store = connect_any(&location).await.expect("opening SQLite store");
                MetaHarness {
                    backend,
                    store,
                    location,
                    _dir: Some(dir),
                    _db: None,
                }
            }
            Backend::Postgres => {
                let db = TestDatabase::create().await;
                let location = db.url.clone();
                let store = connect_any(&location)
                    .await
                    .expect("connecting to PostgreSQL store");
                MetaHarness {
                    backend,
                    store,
                    location,
                    _dir: None,
                    _db: Some(db),
                }
            }
        }
    }

    /// Another store on the same database with its own connection pool, as a second process would
    /// open it. Runs the migrations again.
    pub async fn open_another(&self) -> Arc<dyn MetadataStore> {
        connect_any(&self.location)
            .await
            .expect("opening a second store on the same database")
    }
}

/// The collection contract tests write to.
pub const COLLECTION: &str = "docs";

/// A request for `doc_id` with content `hash`, the same fingerprint and a one-minute lease.
pub fn req(doc_id: &str, hash: &str) -> BeginRequest {
    BeginRequest {
        collection: COLLECTION.to_string(),
        doc_id: doc_id.to_string(),
        source: format!("/data/{doc_id}.md"),
        tenant: Some("acme".to_string()),
        metadata: None,
        content_hash: hash.to_string(),
        fingerprint: "fp-1".to_string(),
        force: false,
        lease: Duration::from_secs(60),
    }
}

/// The version and token of a `Claimed` outcome; panics on any other.
pub fn claimed(outcome: BeginOutcome) -> (i64, uuid::Uuid) {
    match outcome {
        BeginOutcome::Claimed {
            version,
            lease_token,
            ..
        } => (version, lease_token),
        other => panic!("expected Claimed, got {other:?}"),
    }
}

/// Commits `r` with 10 chunks and 1,000 tokens and the request's tenant, then records the
/// version published, as the pipeline does once its points are visible.
pub async fn commit(
    store: &dyn MetadataStore,
    r: &BeginRequest,
    token: uuid::Uuid,
    version: i64,
) -> CommitOutcome {
    let labels = Labels {
        tenant: r.tenant.clone(),
        metadata: r.metadata.clone().unwrap_or_default(),
    };
    let outcome = store
        .commit(&CommitRequest {
            collection: &r.collection,
            doc_id: &r.doc_id,
            lease_token: token,
            version,
            content_hash: &r.content_hash,
            fingerprint: &r.fingerprint,
            chunk_count: 10,
            tokens: 1000,
            labels: &labels,
        })
        .await
        .expect("commit");
    if outcome == CommitOutcome::Committed {
        store
            .mark_published(&r.collection, &r.doc_id, version)
            .await
            .expect("mark_published");
    }
    outcome
}

/// Claims and commits `r`, returning the committed version.
pub async fn index(store: &dyn MetadataStore, r: &BeginRequest) -> i64 {
    let (version, token) = claimed(store.begin(r).await.expect("begin"));
    assert_eq!(
        commit(store, r, token, version).await,
        CommitOutcome::Committed
    );
    version
}

/// Generates, for each contract case `fn case(h: MetaHarness)`, a test `sqlite::case` and a test
/// `postgres::case`, each on its own fresh store.
macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let h = $crate::common::MetaHarness::new($crate::common::Backend::Sqlite).await;
                    super::$case(h).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let h = $crate::common::MetaHarness::new($crate::common::Backend::Postgres).await;
                    super::$case(h).await;
                }
            )*
        }
    };
}
pub(crate) use contract;
