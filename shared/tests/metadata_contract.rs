//! The metadata store contract, run against both implementations: SQLite in a temp dir and the real
//! PostgreSQL server (one fresh database per test). This file covers the document lifecycle —
//! claim, commit, unchanged detection, failures, deletion, status; `metadata_leases.rs` covers
//! lease expiry, concurrency and connecting.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{COLLECTION, MetaHarness, claimed, commit, index, req};
use sluice_shared::metadata::{
    BeginOutcome, BeginRequest, CommitOutcome, CommitRequest, DocStatus, Labels,
};

async fn first_begin_claims_v1_and_a_second_is_busy(h: MetaHarness) {
    let store = &*h.store;
    let r = req("a", "h1");
    let before = Utc::now();
    let (version, _token) = claimed(store.begin(&r).await.unwrap());
    assert_eq!(version, 1);

    match store.begin(&r).await.unwrap() {
        BeginOutcome::Busy { until } => {
            // The lease runs for about the requested minute (PostgreSQL's clock may differ a bit).
            assert!(
                until > before + chrono::Duration::seconds(50),
                "until {until}"
            );
            assert!(
                until < before + chrono::Duration::seconds(70),
                "until {until}"
            );
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    // Even force does not break a live lease.
    let forced = BeginRequest {
        force: true,
        content_hash: "other".into(),
        ..r.clone()
    };
    assert!(matches!(
        store.begin(&forced).await.unwrap(),
        BeginOutcome::Busy { .. }
    ));

    let rec = store
        .get(COLLECTION, "a")
        .await
        .unwrap()
        .expect("row exists");
    assert_eq!(rec.status, DocStatus::Processing);
    assert_eq!(rec.current_version, 0);
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.source, "/data/a.md");
    assert_eq!(rec.tenant.as_deref(), Some("acme"));
    assert!(store.get(COLLECTION, "missing").await.unwrap().is_none());
    assert!(store.get("other-collection", "a").await.unwrap().is_none());
}

async fn commit_records_the_version_and_unchanged_content_is_skipped(h: MetaHarness) {
    let store = &*h.store;
    let r = req("a", "h1");
    let (version, token) = claimed(store.begin(&r).await.unwrap());
    let labels = Labels {
        tenant: Some("acme".to_string()),
        metadata: Default::default(),
    };
    let committed = store
        .commit(&CommitRequest {
            collection: COLLECTION,
            doc_id: "a",
            lease_token: token,
            version,
            content_hash: "h1",
            fingerprint: "fp-1",
            chunk_count: 7,
            tokens: 321,
            labels: &labels,
        })
        .await
        .unwrap();
    assert_eq!(committed, CommitOutcome::Committed);
    store
        .mark_published(COLLECTION, "a", version)
        .await
        .unwrap();

    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(rec.status, DocStatus::Indexed);
    assert_eq!(rec.current_version, 1);
    assert_eq!((rec.chunk_count, rec.tokens), (7, 321));
    assert_eq!(rec.content_hash.as_deref(), Some("h1"));
    assert_eq!(rec.fingerprint.as_deref(), Some("fp-1"));
    assert!(rec.indexed_at.is_some());
    assert_eq!(rec.last_error, None);

    // Same content and pipeline: nothing to do, and no new attempt.
    assert_eq!(
        store.begin(&r).await.unwrap(),
        BeginOutcome::Unchanged { version: 1 }
    );
    assert_eq!(
        store.get(COLLECTION, "a").await.unwrap().unwrap().attempts,
        1
    );

    // A moved file with the same content stays unchanged but the row follows the move.
    let moved = BeginRequest {
        source: "/data/moved/a.md".into(),
        ..r.clone()
    };
    assert_eq!(
        store.begin(&moved).await.unwrap(),
        BeginOutcome::Unchanged { version: 1 }
    );
    assert_eq!(
        store.get(COLLECTION, "a").await.unwrap().unwrap().source,
        "/data/moved/a.md"
    );

    // A new pipeline fingerprint (e.g. another embedding model) means re-indexing.
    let new_fp = BeginRequest {
        fingerprint: "fp-2".into(),
        ..r.clone()
    };
    let (v2, t2) = claimed(store.begin(&new_fp).await.unwrap());
    assert_eq!(v2, 2);
    assert_eq!(
        commit(store, &new_fp, t2, v2).await,
        CommitOutcome::Committed
    );

    // New content claims the next version; the old one stays current until the commit.
    let changed = req("a", "h2");
    let (v3, t3) = claimed(store.begin(&changed).await.unwrap());
    assert_eq!(v3, 3);
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.current_version),
        (DocStatus::Processing, 2)
    );
    assert_eq!(
        commit(store, &changed, t3, v3).await,
        CommitOutcome::Committed
    );
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.current_version, rec.attempts),
        (DocStatus::Indexed, 3, 3)
    );
    assert_eq!(rec.content_hash.as_deref(), Some("h2"));
}

async fn force_claims_even_when_unchanged(h: MetaHarness) {
    let store = &*h.store;
    let r = req("a", "h1");
    assert_eq!(index(store, &r).await, 1);
    let forced = BeginRequest {
        force: true,
        ..r.clone()
    };
    let (version, token) = claimed(store.begin(&forced).await.unwrap());
    assert_eq!(version, 2);
    assert_eq!(
        commit(store, &forced, token, version).await,
        CommitOutcome::Committed
    );
    assert_eq!(
        store.begin(&r).await.unwrap(),
        BeginOutcome::Unchanged { version: 2 }
    );
}

async fn commit_with_a_wrong_or_old_token_is_lease_lost(h: MetaHarness) {
    let store = &*h.store;
    let r = req("a", "h1");
    let (v1, t1) = claimed(store.begin(&r).await.unwrap());
    assert_eq!(
        commit(store, &r, uuid::Uuid::new_v4(), v1).await,
        CommitOutcome::LeaseLost
    );
    // A version other than the one claimed with this token is refused too.
    assert_eq!(
        commit(store, &r, t1, v1 + 1).await,
        CommitOutcome::LeaseLost
    );
    assert_eq!(
        store.get(COLLECTION, "a").await.unwrap().unwrap().status,
        DocStatus::Processing
    );
    assert_eq!(commit(store, &r, t1, v1).await, CommitOutcome::Committed);

    let changed = req("a", "h2");
    let (v2, _t2) = claimed(store.begin(&changed).await.unwrap());
    assert_eq!(v2, 2);
    // The v1 token was spent by its commit; it cannot commit again over the v2 run.
    assert_eq!(commit(store, &r, t1, v1).await, CommitOutcome::LeaseLost);
    assert_eq!(
        commit(store, &changed, t1, v2).await,
        CommitOutcome::LeaseLost
    );
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.current_version),
        (DocStatus::Processing, 1)
    );
    assert_eq!(rec.content_hash.as_deref(), Some("h1"));
    // Unknown documents: nothing to commit to.
    assert_eq!(
        commit(store, &req("nobody", "h"), t1, 1).await,
        CommitOutcome::LeaseLost
    );
}

async fn fail_records_the_error_and_keeps_the_current_version(h: MetaHarness) {
    let store = &*h.store;
    assert_eq!(index(store, &req("a", "h1")).await, 1);
    let changed = req("a", "h2");
    let (v2, t2) = claimed(store.begin(&changed).await.unwrap());
    store
        .fail(
            COLLECTION,
            "a",
            &changed.source,
            Some(t2),
            "embedding: 400 bad input",
        )
        .await
        .unwrap();

    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(rec.status, DocStatus::Failed);
    assert_eq!(rec.last_error.as_deref(), Some("embedding: 400 bad input"));
    assert_eq!(rec.current_version, 1, "the old version is still served");
    assert_eq!(rec.content_hash.as_deref(), Some("h1"));
    assert_eq!(rec.attempts, 2);
    // The failed run released its lease: a retry claims at once, with a fresh version.
    let (v3, t3) = claimed(store.begin(&changed).await.unwrap());
    assert_eq!(v3, v2 + 1);
    // The failed run's token is dead: it can neither commit nor overwrite the retry's state.
    assert_eq!(
        commit(store, &changed, t2, v2).await,
        CommitOutcome::LeaseLost
    );
    store
        .fail(COLLECTION, "a", &changed.source, Some(t2), "late failure")
        .await
        .unwrap();
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(rec.status, DocStatus::Processing);
    assert_eq!(
        commit(store, &changed, t3, v3).await,
        CommitOutcome::Committed
    );
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.current_version, rec.last_error),
        (DocStatus::Indexed, 3, None)
    );
}

async fn fail_without_a_row_creates_a_failed_row(h: MetaHarness) {
    let store = &*h.store;
    store
        .fail(
            COLLECTION,
            "broken",
            "/data/broken.pdf",
            None,
            "unreadable: permission denied",
        )
        .await
        .unwrap();
    let rec = store
        .get(COLLECTION, "broken")
        .await
        .unwrap()
        .expect("failed row recorded");
    assert_eq!(rec.status, DocStatus::Failed);
    assert_eq!(rec.source, "/data/broken.pdf");
    assert_eq!(rec.current_version, 0);
    assert_eq!(rec.attempts, 1);
    assert_eq!(
        rec.last_error.as_deref(),
        Some("unreadable: permission denied")
    );

    // A second pre-claim failure counts another attempt.
    store
        .fail(
            COLLECTION,
            "broken",
            "/data/broken.pdf",
            None,
            "unreadable again",
        )
        .await
        .unwrap();
    let rec = store.get(COLLECTION, "broken").await.unwrap().unwrap();
    assert_eq!(
        (rec.attempts, rec.last_error.as_deref()),
        (2, Some("unreadable again"))
    );

    // Once readable, it is claimed normally, starting at version 1.
    let r = BeginRequest {
        source: "/data/broken.pdf".into(),
        ..req("broken", "h1")
    };
    let (version, token) = claimed(store.begin(&r).await.unwrap());
    assert_eq!(version, 1);
    assert_eq!(
        commit(store, &r, token, version).await,
        CommitOutcome::Committed
    );
    let rec = store.get(COLLECTION, "broken").await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.attempts, rec.last_error),
        (DocStatus::Indexed, 3, None)
    );
}

async fn deleted_documents_leave_listings_and_versions_keep_growing(h: MetaHarness) {
    let store = &*h.store;
    let sources = [
        ("a1", "/data/a/one.md"),
        ("a2", "/data/a/two.md"),
        ("b1", "/data/b/one.md"),
        ("up", "/data/A/upper.md"),
        ("pct", "/data/a%/x.md"),
    ];
    for (doc_id, source) in sources {
        index(
            store,
            &BeginRequest {
                source: source.into(),
                ..req(doc_id, "h1")
            },
        )
        .await;
    }
    // Another collection with the same sources is not listed.
    index(
        store,
        &BeginRequest {
            collection: "other".into(),
            source: "/data/a/one.md".into(),
            ..req("a1", "h1")
        },
    )
    .await;

    let ids = |recs: Vec<sluice_shared::metadata::DocumentRecord>| {
        recs.into_iter().map(|r| r.doc_id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(store
            .list_by_source_prefix(COLLECTION, "/data/a/")
            .await
            .unwrap()),
        ["a1", "a2"]
    );
    // Prefixes are literal and case-sensitive: no LIKE wildcards, no case folding.
    assert_eq!(
        ids(store
            .list_by_source_prefix(COLLECTION, "/data/a%")
            .await
            .unwrap()),
        ["pct"]
    );
    assert_eq!(
        ids(store
            .list_by_source_prefix(COLLECTION, "/data/_/")
            .await
            .unwrap()),
        Vec::<String>::new()
    );
    assert_eq!(
        ids(store
            .list_by_source_prefix(COLLECTION, "/data/A")
            .await
            .unwrap()),
        ["up"]
    );
    assert_eq!(
        store
            .list_by_source_prefix(COLLECTION, "")
            .await
            .unwrap()
            .len(),
        5
    );

    // Re-index a1 twice so its last version is 3, then delete it.
    index(store, &req("a1", "h2")).await;
    let (v3, t3) = claimed(
        store
            .begin(&BeginRequest {
                source: "/data/a/one.md".into(),
                ..req("a1", "h3")
            })
            .await
            .unwrap(),
    );
    assert_eq!(v3, 3);
    store.mark_deleted(COLLECTION, "a1").await.unwrap();
    // The in-flight run's commit loses: the document is gone.
    assert_eq!(
        commit(store, &req("a1", "h3"), t3, v3).await,
        CommitOutcome::LeaseLost
    );
    let rec = store.get(COLLECTION, "a1").await.unwrap().unwrap();
    assert_eq!((rec.status, rec.current_version), (DocStatus::Deleted, 0));
    assert_eq!(
        ids(store
            .list_by_source_prefix(COLLECTION, "/data/a/")
            .await
            .unwrap()),
        ["a2"]
    );

    // Coming back, even with the old content, it is claimed with a version never used before.
    let back = BeginRequest {
        source: "/data/a/one.md".into(),
        ..req("a1", "h1")
    };
    let (v4, t4) = claimed(store.begin(&back).await.unwrap());
    assert_eq!(v4, 4);
    assert_eq!(commit(store, &back, t4, v4).await, CommitOutcome::Committed);
    assert_eq!(
        ids(store
            .list_by_source_prefix(COLLECTION, "/data/a/")
            .await
            .unwrap()),
        ["a1", "a2"]
    );
    // Deleting an unknown document is a no-op, not an error.
    store.mark_deleted(COLLECTION, "never-seen").await.unwrap();
    assert!(store.get(COLLECTION, "never-seen").await.unwrap().is_none());
}

async fn status_counts_documents_and_lists_recent_failures(h: MetaHarness) {
    let store = &*h.store;
    index(store, &req("ok1", "h")).await; // 10 chunks, 1000 tokens each
    index(store, &req("ok2", "h")).await;
    claimed(store.begin(&req("busy", "h")).await.unwrap());
    index(store, &req("gone", "h")).await;
    store.mark_deleted(COLLECTION, "gone").await.unwrap();
    store
        .fail(COLLECTION, "bad1", "/data/bad1.pdf", None, "first failure")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .fail(COLLECTION, "bad2", "/data/bad2.pdf", None, "second failure")
        .await
        .unwrap();
    store
        .fail("other", "bad3", "/data/bad3.pdf", None, "other collection")
        .await
        .unwrap();

    let report = store.status(Some(COLLECTION), 1).await.unwrap();
    let count = |s: DocStatus| {
        report
            .counts
            .iter()
            .find(|(st, _)| *st == s)
            .map(|(_, n)| *n)
    };
    assert_eq!(count(DocStatus::Indexed), Some(2));
    assert_eq!(count(DocStatus::Processing), Some(1));
    assert_eq!(count(DocStatus::Failed), Some(2));
    assert_eq!(count(DocStatus::Deleted), Some(1));
    assert_eq!((report.total_chunks, report.total_tokens), (20, 2000));
    assert_eq!(
        report.recent_failures.len(),
        1,
        "limited to the requested number"
    );
    assert_eq!(
        report.recent_failures[0].doc_id, "bad2",
        "latest failure first"
    );
    assert_eq!(
        report.recent_failures[0].last_error.as_deref(),
        Some("second failure")
    );

    let all = store.status(None, 10).await.unwrap();
    let failed: Vec<_> = all
        .recent_failures
        .iter()
        .map(|r| r.doc_id.as_str())
        .collect();
    assert_eq!(failed, ["bad3", "bad2", "bad1"]);
    assert_eq!(all.counts.iter().map(|(_, n)| n).sum::<i64>(), 7);

    let empty = store.status(Some("nothing-here"), 10).await.unwrap();
    assert!(empty.counts.iter().all(|(_, n)| *n == 0));
    assert!(empty.recent_failures.is_empty());
}

async fn stats_count_statuses_recent_indexing_and_failure_reasons(h: MetaHarness) {
    let store = &*h.store;
    let before = Utc::now() - chrono::Duration::seconds(1);
    index(store, &req("ok1", "h")).await;
    index(store, &req("ok2", "h")).await;
    claimed(store.begin(&req("busy", "h")).await.unwrap());
    // Errors start with the document's source or id; the same failure must group regardless.
    for (doc_id, source, error) in [
        (
            "bad1",
            "/data/bad1.pdf",
            "/data/bad1.pdf: not valid PDF: broken xref",
        ),
        (
            "bad2",
            "/data/bad2.pdf",
            "/data/bad2.pdf: not valid PDF: broken xref",
        ),
        (
            "bad3",
            "/data/bad3.md",
            "bad3: processing took longer than 5s",
        ),
    ] {
        store
            .fail(COLLECTION, doc_id, source, None, error)
            .await
            .unwrap();
    }
    store
        .fail(
            "other",
            "bad4",
            "/data/bad4.pdf",
            None,
            "/data/bad4.pdf: not valid PDF: broken xref",
        )
        .await
        .unwrap();
    let future = Utc::now() + chrono::Duration::seconds(60);

    let stats = store
        .stats(Some(COLLECTION), &[before, future], 10)
        .await
        .unwrap();
    assert_eq!(
        stats.counts,
        vec![
            (DocStatus::Processing, 1),
            (DocStatus::Indexed, 2),
            (DocStatus::Failed, 3),
            (DocStatus::Deleted, 0),
        ]
    );
    assert_eq!(stats.indexed_since, vec![2, 0]);
    let reasons: Vec<(&str, i64)> = stats
        .failures_by_reason
        .iter()
        .map(|f| (f.reason.as_str(), f.documents))
        .collect();
    assert_eq!(
        reasons,
        [
            ("not valid PDF: broken xref", 2),
            ("processing took longer than 5s", 1)
        ]
    );

    // All collections, and only the most frequent reason.
    let all = store.stats(None, &[before], 1).await.unwrap();
    assert_eq!(all.indexed_since, vec![2]);
    assert_eq!(all.failures_by_reason.len(), 1, "limited to max_reasons");
    assert_eq!(
        all.failures_by_reason[0].reason,
        "not valid PDF: broken xref"
    );
    assert_eq!(all.failures_by_reason[0].documents, 3);

    let empty = store
        .stats(Some("nothing-here"), &[before], 10)
        .await
        .unwrap();
    assert!(empty.counts.iter().all(|(_, n)| *n == 0));
    assert_eq!(empty.indexed_since, vec![0]);
    assert!(empty.failures_by_reason.is_empty());
}

common::contract!(
    first_begin_claims_v1_and_a_second_is_busy,
    commit_records_the_version_and_unchanged_content_is_skipped,
    force_claims_even_when_unchanged,
    commit_with_a_wrong_or_old_token_is_lease_lost,
    fail_records_the_error_and_keeps_the_current_version,
    fail_without_a_row_creates_a_failed_row,
    deleted_documents_leave_listings_and_versions_keep_growing,
    status_counts_documents_and_lists_recent_failures,
    stats_count_statuses_recent_indexing_and_failure_reasons,
);
