//! The `VectorStore` contract: one set of cases, run against the embedded `EdgeStore` (temporary
//! directory) and against `QdrantStore` talking gRPC to a Qdrant of its own — the real server where
//! `../shared/bin/qdrant` (or `SLUICE_TEST_QDRANT_BIN`) exists, else the stand-in; force one with
//! `SLUICE_TEST_QDRANT=standin|real` (see `sluice_loadtests::qdrant_server`). All must behave
//! identically, because the pipeline's idempotency rules (versioned point IDs,
//! write-new-then-delete-old) rely on every case here. The stand-in's own properties (durability
//! under SIGKILL, background optimization) are tested against the stand-in binary below.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use sluice_loadtests::qdrant_server::{Backend, test_qdrant};
use sluice_shared::model::{ChunkPayload, Point, SearchHit, SparseVector, Vectors};
use sluice_shared::secret::Secret;
use sluice_shared::store::edge::{EdgeStore, OPTIMIZE_AFTER_POINTS};
use sluice_shared::store::qdrant::QdrantStore;
use sluice_shared::store::{CollectionSpec, SearchQuery, StoreError, VectorStore};

const DIM: u64 = 8;

/// A store under test plus whatever keeps its backing alive (tempdir, child process).
struct Harness {
    store: Box<dyn VectorStore>,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn edge_harness() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(dir.path()).await.unwrap();
    Harness {
        store: Box::new(store),
        _guard: Box::new(dir),
    }
}

async fn qdrant_harness() -> Harness {
    let qdrant = test_qdrant().await;
    let store = QdrantStore::connect(&qdrant.url(), None).unwrap();
    Harness {
        store: Box::new(store),
        _guard: Box::new(qdrant),
    }
}

fn hybrid(name: &str) -> CollectionSpec {
    CollectionSpec {
        name: name.to_string(),
        dense_dim: Some(DIM),
    }
}

fn bm25_only(name: &str) -> CollectionSpec {
    CollectionSpec {
        name: name.to_string(),
        dense_dim: None,
    }
}

/// Unit vector along `axis` (plus `mix` of axis+1), so cosine similarities are easy to reason about.
fn dense(axis: usize, mix: f32) -> Vec<f32> {
    let mut v = vec![0.0; DIM as usize];
    v[axis] = 1.0;
    v[(axis + 1) % DIM as usize] = mix;
    v
}

fn sparse(pairs: &[(u32, f32)]) -> SparseVector {
    SparseVector {
        indices: pairs.iter().map(|p| p.0).collect(),
        values: pairs.iter().map(|p| p.1).collect(),
    }
}

fn point(
    doc: &str,
    version: i64,
    idx: u32,
    dense: Option<Vec<f32>>,
    sparse_pairs: &[(u32, f32)],
    tenant: Option<&str>,
) -> Point {
    let mut metadata = serde_json::Map::new();
    metadata.insert("lang".into(), "en".into());
    metadata.insert("score".into(), serde_json::json!(0.25));
    metadata.insert("tags".into(), serde_json::json!(["a", {"b": 1}]));
    Point {
        id: uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{doc}#{version}#{idx}").as_bytes(),
        ),
        vectors: Vectors {
            dense,
            sparse: sparse(sparse_pairs),
        },
        payload: ChunkPayload {
            doc_id: doc.to_string(),
            source: format!("file:///{doc}"),
            title: Some(format!("title of {doc}")),
            chunk_index: idx,
            page: Some(idx + 1),
            char_start: u64::from(idx) * 100,
            char_end: u64::from(idx) * 100 + 99,
            text: format!("chunk {idx} of {doc} v{version}"),
            content_hash: format!("hash-{doc}-{version}"),
            version,
            tenant: tenant.map(str::to_string),
            ingested_at: "2025-01-02T03:04:05Z".to_string(),
            metadata,
            staged: false,
        },
    }
}

/// The same points as a version still being written.
fn staged(mut points: Vec<Point>) -> Vec<Point> {
    for p in &mut points {
        p.payload.staged = true;
    }
    points
}

/// `n` chunks of `doc` at `version`, with dense vectors on axis `axis`.
fn doc_points(doc: &str, version: i64, n: u32, axis: usize) -> Vec<Point> {
    (0..n)
        .map(|i| {
            point(
                doc,
                version,
                i,
                Some(dense(axis, 0.1)),
                &[(7, 1.0), (100 + i, 0.5)],
                None,
            )
        })
        .collect()
}

fn query(dense: Option<Vec<f32>>, sparse_pairs: &[(u32, f32)], top_k: usize) -> SearchQuery {
    SearchQuery {
        dense,
        sparse: sparse(sparse_pairs),
        top_k,
        tenant: None,
    }
}

fn doc_ids(hits: &[sluice_shared::model::SearchHit]) -> Vec<&str> {
    hits.iter().map(|h| h.payload.doc_id.as_str()).collect()
}

mod cases {
    use super::*;

    pub async fn creates_hybrid_and_bm25_only_collections(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("hyb")).await.unwrap();
        store.ensure_collection(&bm25_only("lex")).await.unwrap();
        assert_eq!(store.count("hyb", None).await.unwrap(), 0);
        assert_eq!(store.count("lex", None).await.unwrap(), 0);
        store.upsert("hyb", doc_points("a", 1, 2, 0)).await.unwrap();
        store
            .upsert("lex", vec![point("b", 1, 0, None, &[(3, 1.0)], None)])
            .await
            .unwrap();
        assert_eq!(store.count("hyb", None).await.unwrap(), 2);
        assert_eq!(store.count("lex", None).await.unwrap(), 1);
        // A BM25-only collection has no dense vector: a dense point is refused, not truncated.
        let err = store
            .upsert("lex", doc_points("c", 1, 1, 0))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    }

    pub async fn ensure_is_idempotent(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        store.upsert("c", doc_points("a", 1, 3, 0)).await.unwrap();
        store.ensure_collection(&hybrid("c")).await.unwrap();
        store.ensure_collection(&hybrid("c")).await.unwrap();
        assert_eq!(
            store.count("c", None).await.unwrap(),
            3,
            "ensure must never recreate or empty a collection"
        );
    }

    pub async fn incompatible_spec_is_rejected(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        let err = store
            .ensure_collection(&CollectionSpec {
                name: "c".into(),
                dense_dim: Some(16),
            })
            .await
            .unwrap_err();
        match &err {
            StoreError::Incompatible { name, detail } => {
                assert_eq!(name, "c");
                assert!(
                    detail.contains('8') && detail.contains("16"),
                    "detail should name both sizes: {detail}"
                );
            }
            other => panic!("expected Incompatible, got {other:?}"),
        }
        assert!(!err.is_retryable());
        assert!(matches!(
            store.ensure_collection(&bm25_only("c")).await,
            Err(StoreError::Incompatible { .. })
        ));
        store.ensure_collection(&bm25_only("lex")).await.unwrap();
        assert!(matches!(
            store.ensure_collection(&hybrid("lex")).await,
            Err(StoreError::Incompatible { .. })
        ));
    }

    pub async fn upsert_then_count_and_list(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        let mut points = doc_points("a", 1, 2, 0);
        points.extend(doc_points("b", 4, 3, 2));
        points.extend(doc_points("c", 1, 1, 4));
        let mut expected: Vec<_> = points
            .iter()
            .map(|p| (p.id, p.payload.doc_id.clone(), p.payload.version))
            .collect();
        store.upsert("c", points.clone()).await.unwrap();
        assert_eq!(store.count("c", None).await.unwrap(), 6);
        assert_eq!(store.count("c", Some("a")).await.unwrap(), 2);
        assert_eq!(store.count("c", Some("b")).await.unwrap(), 3);
        assert_eq!(store.count("c", Some("nope")).await.unwrap(), 0);
        let mut listed = store.list_points("c").await.unwrap();
        listed.sort();
        expected.sort();
        assert_eq!(listed, expected);
        // The payload comes back exactly as written (nested metadata, floats, optional fields).
        let hits = store
            .search("c", &query(Some(dense(2, 0.1)), &[], 1))
            .await
            .unwrap();
        let want = points.iter().find(|p| p.id == hits[0].id).unwrap();
        assert_eq!(hits[0].payload, want.payload);
        assert_eq!(hits[0].payload.doc_id, "b");
    }

    pub async fn reupsert_same_ids_does_not_duplicate(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        store.upsert("c", doc_points("a", 1, 4, 0)).await.unwrap();
        let mut again = doc_points("a", 1, 4, 0);
        for p in &mut again {
            p.payload.text = format!("rewritten {}", p.payload.chunk_index);
        }
        store.upsert("c", again).await.unwrap();
        assert_eq!(store.count("c", None).await.unwrap(), 4);
        let hits = store
            .search("c", &query(Some(dense(0, 0.1)), &[(7, 1.0)], 10))
            .await
            .unwrap();
        assert_eq!(hits.len(), 4);
        assert!(
            hits.iter().all(|h| h.payload.text.starts_with("rewritten")),
            "same id must overwrite"
        );
    }

    /// The store's points are exactly `points` (ids, documents, versions), in any order.
    async fn assert_store_holds_exactly(
        store: &dyn VectorStore,
        points: impl Iterator<Item = &Point>,
    ) {
        let mut listed = store.list_points("c").await.unwrap();
        listed.sort();
        let mut expected: Vec<_> = points
            .map(|p| (p.id, p.payload.doc_id.clone(), p.payload.version))
            .collect();
        expected.sort();
        assert_eq!(listed, expected);
    }

    pub async fn publish_version_shows_it_and_drops_only_older_versions(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        // Document IDs with spaces, one a prefix of the other: the filter must be an exact keyword
        // match, never a full-text one.
        let a = "reports/annual report.pdf";
        let b = "reports/annual report.pdf draft";
        let old = doc_points(a, 1, 3, 0);
        let new = staged(doc_points(a, 2, 2, 0));
        // A newer run's version, still being written: publication must never touch it.
        let newer = staged(doc_points(a, 3, 1, 0));
        let other = doc_points(b, 1, 2, 2);
        for batch in [old, new.clone(), newer.clone(), other.clone()] {
            store.upsert("c", batch).await.unwrap();
        }
        // Staged points are invisible to searches.
        let visible = |hits: &[SearchHit]| {
            let mut v: Vec<(String, i64)> = hits
                .iter()
                .map(|h| (h.payload.doc_id.clone(), h.payload.version))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        let q = query(Some(dense(0, 0.1)), &[(7, 1.0)], 50);
        assert_eq!(
            visible(&store.search("c", &q).await.unwrap()),
            [(a.to_string(), 1), (b.to_string(), 1)]
        );
        store.publish_version("c", a, 2).await.unwrap();
        assert_store_holds_exactly(store, new.iter().chain(&newer).chain(&other)).await;
        assert_eq!(
            visible(&store.search("c", &q).await.unwrap()),
            [(a.to_string(), 2), (b.to_string(), 1)]
        );
        // Idempotent: a redelivered job deletes nothing more.
        store.publish_version("c", a, 2).await.unwrap();
        assert_eq!(store.count("c", None).await.unwrap(), 5);
        assert_eq!(store.count_version("c", a, 2).await.unwrap(), 2);
        assert_eq!(store.count_version("c", a, 3).await.unwrap(), 1);
        let page = store.scroll_points("c", None, 100).await.unwrap();
        let staged_versions: Vec<i64> = page
            .points
            .iter()
            .filter(|p| p.staged)
            .map(|p| p.version)
            .collect();
        assert_eq!(
            staged_versions,
            [3],
            "only the newer run's points are still staged"
        );
    }

    pub async fn set_labels_replaces_tenant_and_metadata_of_one_version(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        store.upsert("c", doc_points("a", 1, 3, 0)).await.unwrap();
        store.upsert("c", doc_points("b", 1, 1, 1)).await.unwrap();
        let metadata = serde_json::Map::from_iter([("team".to_string(), "legal".into())]);
        store
            .set_labels("c", "a", 1, Some("globex"), &metadata)
            .await
            .unwrap();
        let mut q = query(Some(dense(0, 0.1)), &[(7, 1.0)], 50);
        q.tenant = Some("globex".into());
        let hits = store.search("c", &q).await.unwrap();
        assert_eq!(hits.len(), 3);
        assert!(hits.iter().all(|h| h.payload.doc_id == "a"
            && h.payload.metadata == metadata
            && h.payload.text.starts_with("chunk")));
    }

    pub async fn scroll_points_pages_the_whole_collection(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        for d in 0..7 {
            store
                .upsert("c", doc_points(&format!("doc-{d}"), 1, 5, d))
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page = store.scroll_points("c", after, 8).await.unwrap();
            assert!(page.points.len() <= 8);
            pages += 1;
            seen.extend(page.points.into_iter().map(|p| p.id));
            match page.next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert!(pages >= 5, "35 points in pages of 8");
        let unique: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!((seen.len(), unique.len()), (35, 35));
    }

    pub async fn delete_version_removes_only_that_version_of_that_document(
        store: &dyn VectorStore,
    ) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        let current = doc_points("a b", 1, 3, 0);
        store.upsert("c", current.clone()).await.unwrap();
        // A new version written part-way, and the same version number of another document.
        store.upsert("c", doc_points("a b", 2, 2, 0)).await.unwrap();
        let other = doc_points("a", 2, 2, 1);
        store.upsert("c", other.clone()).await.unwrap();
        store.delete_version("c", "a b", 2).await.unwrap();
        assert_store_holds_exactly(store, current.iter().chain(&other)).await;
    }

    pub async fn delete_document_removes_every_version_up_to_the_given_one(
        store: &dyn VectorStore,
    ) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        store.upsert("c", doc_points("a b", 1, 2, 0)).await.unwrap();
        store.upsert("c", doc_points("a b", 2, 3, 0)).await.unwrap();
        // A re-index that started after the deletion was recorded.
        let later = staged(doc_points("a b", 3, 1, 0));
        store.upsert("c", later.clone()).await.unwrap();
        let other = doc_points("a", 1, 2, 1);
        store.upsert("c", other.clone()).await.unwrap();
        store.delete_document("c", "a b", 2).await.unwrap();
        assert_store_holds_exactly(store, later.iter().chain(&other)).await;
        store
            .delete_document("c", "never-existed", i64::MAX)
            .await
            .unwrap();
        assert_eq!(store.count("c", None).await.unwrap(), 3);
    }

    /// Documents: `dense-hit` is nearest by the dense vector only, `lexical-hit` matches the query
    /// term best, `both` is second on each side, fillers are moderately close densely.
    async fn ranking_fixture(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        let mut points = vec![
            point("dense-hit", 1, 0, Some(dense(0, 0.0)), &[(50, 1.0)], None),
            point("both", 1, 0, Some(dense(0, 1.0)), &[(7, 1.0)], None),
            point("lexical-hit", 1, 0, Some(dense(4, 0.0)), &[(7, 3.0)], None),
        ];
        for i in 0..5 {
            points.push(point(
                &format!("filler-{i}"),
                1,
                0,
                Some(dense(0, 1.5 + i as f32)),
                &[(60 + i, 1.0)],
                None,
            ));
        }
        store.upsert("c", points).await.unwrap();
    }

    pub async fn search_dense_relevant(store: &dyn VectorStore) {
        ranking_fixture(store).await;
        // The sparse side matches nothing: the dense side decides.
        let hits = store
            .search("c", &query(Some(dense(0, 0.0)), &[(999, 1.0)], 3))
            .await
            .unwrap();
        assert_eq!(hits.len(), 3);
        assert_eq!(doc_ids(&hits)[..2], ["dense-hit", "both"]);
    }

    pub async fn search_sparse_relevant(store: &dyn VectorStore) {
        ranking_fixture(store).await;
        let hits = store
            .search("c", &query(None, &[(7, 1.0)], 5))
            .await
            .unwrap();
        assert_eq!(
            doc_ids(&hits),
            ["lexical-hit", "both"],
            "only documents with the term match"
        );
        assert!(hits[0].score > hits[1].score);
        // The same in a BM25-only collection.
        store.ensure_collection(&bm25_only("lex")).await.unwrap();
        store
            .upsert(
                "lex",
                vec![
                    point("x", 1, 0, None, &[(7, 1.0), (8, 1.0)], None),
                    point("y", 1, 0, None, &[(8, 1.0)], None),
                ],
            )
            .await
            .unwrap();
        let hits = store
            .search("lex", &query(None, &[(7, 1.0)], 5))
            .await
            .unwrap();
        assert_eq!(doc_ids(&hits), ["x"]);
        // A dense query against a collection without dense vectors is a caller error.
        let err = store
            .search("lex", &query(Some(dense(0, 0.0)), &[(7, 1.0)], 5))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Rejected(_)), "{err:?}");
    }

    pub async fn search_hybrid_fuses_both_rankings(store: &dyn VectorStore) {
        ranking_fixture(store).await;
        // Dense alone puts `dense-hit` first, sparse alone `lexical-hit`; reciprocal rank fusion
        // rewards `both`, second on each side.
        let hits = store
            .search("c", &query(Some(dense(0, 0.0)), &[(7, 1.0)], 3))
            .await
            .unwrap();
        assert_eq!(doc_ids(&hits)[0], "both", "{:?}", doc_ids(&hits));
        let dense_only = store
            .search("c", &query(Some(dense(0, 0.0)), &[], 3))
            .await
            .unwrap();
        assert_eq!(doc_ids(&dense_only)[0], "dense-hit");
        assert_eq!(
            store
                .search("c", &query(Some(dense(0, 0.0)), &[(7, 1.0)], 0))
                .await
                .unwrap()
                .len(),
            0
        );
    }

    pub async fn tenant_filter_restricts_results(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        store
            .upsert(
                "c",
                vec![
                    point(
                        "acme-doc",
                        1,
                        0,
                        Some(dense(0, 0.0)),
                        &[(7, 1.0)],
                        Some("acme"),
                    ),
                    point(
                        "globex-doc",
                        1,
                        0,
                        Some(dense(0, 0.0)),
                        &[(7, 1.0)],
                        Some("globex"),
                    ),
                    point("shared-doc", 1, 0, Some(dense(0, 0.0)), &[(7, 1.0)], None),
                ],
            )
            .await
            .unwrap();
        let mut q = query(Some(dense(0, 0.0)), &[(7, 1.0)], 10);
        assert_eq!(store.search("c", &q).await.unwrap().len(), 3);
        q.tenant = Some("acme".into());
        assert_eq!(doc_ids(&store.search("c", &q).await.unwrap()), ["acme-doc"]);
        q.dense = None;
        assert_eq!(doc_ids(&store.search("c", &q).await.unwrap()), ["acme-doc"]);
        q.tenant = Some("nobody".into());
        assert!(store.search("c", &q).await.unwrap().is_empty());
    }

    pub async fn missing_collection_errors(store: &dyn VectorStore) {
        let missing = |r: Result<(), StoreError>| match r {
            Err(StoreError::MissingCollection(name)) => assert_eq!(name, "ghost"),
            other => panic!("expected MissingCollection, got {other:?}"),
        };
        missing(store.upsert("ghost", doc_points("a", 1, 1, 0)).await);
        missing(store.count("ghost", None).await.map(drop));
        missing(store.list_points("ghost").await.map(drop));
        missing(
            store
                .search("ghost", &query(Some(dense(0, 0.0)), &[(7, 1.0)], 3))
                .await
                .map(drop),
        );
        missing(store.delete_document("ghost", "a", 1).await);
        missing(store.publish_version("ghost", "a", 1).await);
        missing(store.scroll_points("ghost", None, 10).await.map(drop));
    }

    /// Workers that meet a new collection at the same moment (a fleet's first documents) each
    /// create it, make its indexes and write at once: every one of them must succeed the first
    /// time, or a healthy fleet's first jobs are retried.
    pub async fn concurrent_creators_all_succeed_at_once(store: &dyn VectorStore) {
        for round in 0..10 {
            let name = format!("race-{round}");
            let writers = (0..3).map(|w| {
                let name = name.clone();
                async move {
                    store.ensure_collection(&hybrid(&name)).await?;
                    store
                        .upsert(&name, doc_points(&format!("doc-{w}"), 1, 3, w))
                        .await
                }
            });
            for (w, result) in futures::future::join_all(writers)
                .await
                .into_iter()
                .enumerate()
            {
                if let Err(e) = result {
                    panic!("round {round}, writer {w}: {e}");
                }
            }
            assert_eq!(store.count(&name, None).await.unwrap(), 9);
        }
    }

    pub async fn large_upsert_is_batched(store: &dyn VectorStore) {
        store.ensure_collection(&hybrid("c")).await.unwrap();
        let points: Vec<Point> = (0..1_000u32)
            .map(|i| {
                point(
                    &format!("doc-{}", i % 7),
                    1,
                    i,
                    Some(dense((i % 8) as usize, 0.3)),
                    &[(i % 13, 1.0)],
                    None,
                )
            })
            .collect();
        store.upsert("c", points).await.unwrap();
        assert_eq!(store.count("c", None).await.unwrap(), 1_000);
        assert_eq!(store.count("c", Some("doc-3")).await.unwrap(), 143);
        let listed = store.list_points("c").await.unwrap();
        let unique: std::collections::HashSet<_> = listed.iter().map(|p| p.0).collect();
        assert_eq!((listed.len(), unique.len()), (1_000, 1_000));
    }
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod edge_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let h = super::edge_harness().await;
                super::cases::$case(&*h.store).await;
            })*
        }
        mod qdrant_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let h = super::qdrant_harness().await;
                super::cases::$case(&*h.store).await;
            })*
        }
    };
}

contract!(
    creates_hybrid_and_bm25_only_collections,
    ensure_is_idempotent,
    incompatible_spec_is_rejected,
    upsert_then_count_and_list,
    reupsert_same_ids_does_not_duplicate,
    publish_version_shows_it_and_drops_only_older_versions,
    set_labels_replaces_tenant_and_metadata_of_one_version,
    scroll_points_pages_the_whole_collection,
    delete_version_removes_only_that_version_of_that_document,
    delete_document_removes_every_version_up_to_the_given_one,
    search_dense_relevant,
    search_sparse_relevant,
    search_hybrid_fuses_both_rankings,
    tenant_filter_restricts_results,
    missing_collection_errors,
    large_upsert_is_batched,
    concurrent_creators_all_succeed_at_once,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_data_and_spec_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let points = doc_points("a", 1, 5, 0);
    {
        let store = EdgeStore::open(dir.path()).await.unwrap();
        store.ensure_collection(&hybrid("c")).await.unwrap();
        store.upsert("c", points.clone()).await.unwrap();
        store.publish_version("c", "a", 1).await.unwrap();
    }
    let store = EdgeStore::open(dir.path()).await.unwrap();
    assert_eq!(store.count("c", None).await.unwrap(), 5);
    let hits = store
        .search("c", &query(Some(dense(0, 0.1)), &[(7, 1.0)], 1))
        .await
        .unwrap();
    assert_eq!(hits[0].payload.doc_id, "a");
    // The spec is remembered on disk: a different one is still refused after a restart.
    assert!(matches!(
        store.ensure_collection(&bm25_only("c")).await,
        Err(StoreError::Incompatible { .. })
    ));
    store.ensure_collection(&hybrid("c")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_store_waits_for_the_directory_lock() {
    let dir = tempfile::tempdir().unwrap();
    let first = EdgeStore::open(dir.path()).await.unwrap();
    let path = dir.path().to_path_buf();
    let second = tokio::spawn(async move { EdgeStore::open(&path).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second store must wait while the first holds the directory"
    );
    drop(first);
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("lock released on drop");
    second.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let standin = common::standin::start_standin_in(dir.path()).await;
    let store = QdrantStore::connect(&standin.url, None).unwrap();
    store.ensure_collection(&hybrid("c")).await.unwrap();
    store.upsert("c", doc_points("a", 1, 300, 0)).await.unwrap();
    store.upsert("c", doc_points("a", 2, 3, 0)).await.unwrap();
    store.publish_version("c", "a", 2).await.unwrap();
    // SIGKILL: no shutdown path runs, so only what each waited write flushed can survive.
    standin.kill_hard().await;
    let restarted = common::standin::start_standin_in(dir.path()).await;
    let store = QdrantStore::connect(&restarted.url, None).unwrap();
    assert_eq!(
        store.count("c", None).await.unwrap(),
        3,
        "every waited write must survive a hard kill"
    );
    assert_eq!(store.count("c", Some("a")).await.unwrap(), 3);
    store.ensure_collection(&hybrid("c")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qdrant_store_reports_unreachable_server_as_unavailable_without_the_key() {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let store =
        QdrantStore::connect("http://127.0.0.1:1", Some(Secret::new("sk-do-not-leak"))).unwrap();
    let err = store.count("c", None).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(!format!("{err} {err:?}").contains("sk-do-not-leak"));
    assert!(matches!(
        store.health_check().await,
        Err(StoreError::Unavailable(_))
    ));
    let qdrant = test_qdrant().await;
    let store = QdrantStore::connect(&qdrant.url(), Some(Secret::new("sk-do-not-leak"))).unwrap();
    let version = store.health_check().await.unwrap();
    match qdrant.backend() {
        // Whatever server SLUICE_TEST_QDRANT_BIN names: a release version.
        Backend::Server => assert!(
            version.split('.').count() == 3 && version.split('.').all(|p| p.parse::<u32>().is_ok()),
            "{version}"
        ),
        // The stand-in reports the qdrant-client version it was built against.
        Backend::Standin => assert_eq!(version, "1.20.0"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_standin_shares_the_edge_store_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, handle) = sluice_loadtests::standin::spawn(dir.path()).await.unwrap();
    let store = QdrantStore::connect(&format!("http://{addr}"), None).unwrap();
    store.ensure_collection(&hybrid("c")).await.unwrap();
    store.upsert("c", doc_points("a", 1, 4, 0)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), handle.shutdown())
        .await
        .expect("stand-in shuts down promptly")
        .unwrap();
    // Shutdown released the directory lock, and the stand-in's collections are EdgeStore ones.
    let edge = tokio::time::timeout(Duration::from_secs(10), EdgeStore::open(dir.path()))
        .await
        .expect("lock released after shutdown")
        .unwrap();
    edge.ensure_collection(&hybrid("c")).await.unwrap();
    assert_eq!(edge.count("c", Some("a")).await.unwrap(), 4);
}

/// Writes past `OPTIMIZE_AFTER_POINTS`, so that the store's optimizers have run; returns the
/// points written.
async fn grow_past_an_optimization(store: &dyn VectorStore) -> Vec<Point> {
    store.ensure_collection(&hybrid("c")).await.unwrap();
    let per_doc = 700u32;
    let docs = (OPTIMIZE_AFTER_POINTS as u32 / per_doc) + 2;
    let mut kept = Vec::new();
    for d in 0..docs {
        let points = doc_points(&format!("doc-{d}"), 1, per_doc, (d % 8) as usize);
        store.upsert("c", points.clone()).await.unwrap();
        kept.extend(points);
    }
    kept
}

/// After an optimization points live in segments of both kinds; counting, listing, version
/// deletes and search must not notice.
async fn every_point_survives_optimization(store: &dyn VectorStore, mut kept: Vec<Point>) {
    // doc-0 was written first, so it sits in an optimized segment: replace it with a new version.
    let replacement: Vec<Point> = (0..3)
        .map(|i| point("doc-0", 2, i, Some(dense(5, 0.1)), &[(999_999, 1.0)], None))
        .collect();
    store.upsert("c", replacement.clone()).await.unwrap();
    store.publish_version("c", "doc-0", 2).await.unwrap();
    kept.retain(|p| p.payload.doc_id != "doc-0");
    kept.extend(replacement);

    let mut listed = store.list_points("c").await.unwrap();
    listed.sort();
    let mut expected: Vec<_> = kept
        .iter()
        .map(|p| (p.id, p.payload.doc_id.clone(), p.payload.version))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    let hits = store
        .search("c", &query(None, &[(999_999, 1.0)], 5))
        .await
        .unwrap();
    let found: Vec<_> = hits
        .iter()
        .map(|h| (h.payload.doc_id.as_str(), h.payload.version))
        .collect();
    assert_eq!(
        found,
        vec![("doc-0", 2); 3],
        "only the new version matches its term"
    );
}

/// The embedded store optimizes as it grows (as `sluice ingest` of a large corpus needs), and
/// after a restart the optimized collection still holds every point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_optimizes_as_collections_grow_and_keeps_every_point() {
    let dir = tempfile::tempdir().unwrap();
    let store = EdgeStore::open(dir.path()).await.unwrap();
    let kept = grow_past_an_optimization(&store).await;
    drop(store);
    let store = EdgeStore::open(dir.path()).await.unwrap();
    store.ensure_collection(&hybrid("c")).await.unwrap();
    every_point_survives_optimization(&store, kept).await;
}

/// Past `OPTIMIZE_AFTER_POINTS` the stand-in turns its appendable segment into an indexed one, as
/// the real server's optimizers do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standin_optimizes_as_collections_grow_and_keeps_every_point() {
    let standin = common::standin::start_standin().await;
    let store = QdrantStore::connect(&standin.url, None).unwrap();
    let kept = grow_past_an_optimization(&store).await;
    let client = qdrant_client::Qdrant::from_url(&standin.url)
        .build()
        .unwrap();
    let info = client
        .collection_info(qdrant_client::qdrant::GetCollectionInfoRequest {
            collection_name: "c".into(),
        })
        .await
        .unwrap()
        .result
        .unwrap();
    assert!(
        info.segments_count >= 2,
        "no optimization ran: {} segment(s)",
        info.segments_count
    );
    every_point_survives_optimization(&store, kept).await;
}
