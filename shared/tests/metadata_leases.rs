//! The metadata store contract, part two, on both implementations: leases that expire, many
//! callers racing for one document (in one process and across connection pools, as separate
//! processes would), repeated migrations, and choosing and connecting to a store.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{COLLECTION, MetaHarness, claimed, commit, index, req};
use sluice_shared::metadata::{
    BeginOutcome, BeginRequest, CommitOutcome, DocStatus, MetadataError, MetadataStore,
};

async fn an_expired_lease_can_be_taken_over_and_the_first_commit_loses(h: MetaHarness) {
    let store = &*h.store;
    let short = BeginRequest {
        lease: Duration::from_secs(1),
        ..req("a", "h1")
    };
    let (v1, t1) = claimed(store.begin(&short).await.unwrap());
    assert!(matches!(
        store.begin(&short).await.unwrap(),
        BeginOutcome::Busy { .. }
    ));
    tokio::time::sleep(Duration::from_millis(1300)).await;

    // Another worker (another pool, as another process) takes over.
    let other = h.open_another().await;
    let (v2, t2) = claimed(other.begin(&short).await.unwrap());
    assert_eq!(v2, v1 + 1);
    assert_eq!(
        commit(store, &short, t1, v1).await,
        CommitOutcome::LeaseLost
    );
    assert_eq!(
        commit(&*other, &short, t2, v2).await,
        CommitOutcome::Committed
    );
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(
        (rec.status, rec.current_version, rec.attempts),
        (DocStatus::Indexed, 2, 2)
    );
}

/// Documented choice: a lease that ran out but was not taken over still commits, because its
/// version is still the newest one handed out.
async fn an_expired_lease_nobody_took_still_commits(h: MetaHarness) {
    let store = &*h.store;
    let short = BeginRequest {
        lease: Duration::from_secs(1),
        ..req("a", "h1")
    };
    let (v1, t1) = claimed(store.begin(&short).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(
        commit(store, &short, t1, v1).await,
        CommitOutcome::Committed
    );
    assert_eq!(
        store
            .get(COLLECTION, "a")
            .await
            .unwrap()
            .unwrap()
            .current_version,
        1
    );
}

/// A renewed lease keeps others out past its original expiry; only the holder can renew it, and
/// not after it committed.
async fn renewing_a_lease_keeps_the_document_claimed(h: MetaHarness) {
    let store = &*h.store;
    let short = BeginRequest {
        lease: Duration::from_secs(1),
        ..req("a", "h1")
    };
    let (v1, t1) = claimed(store.begin(&short).await.unwrap());
    let lease = Duration::from_secs(1);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(store.renew(COLLECTION, "a", t1, lease).await.unwrap());
    }
    // 1.5 s after the claim, the original 1 s lease would have run out.
    assert!(matches!(
        store.begin(&short).await.unwrap(),
        BeginOutcome::Busy { .. }
    ));
    assert!(
        !store
            .renew(COLLECTION, "a", uuid::Uuid::new_v4(), lease)
            .await
            .unwrap()
    );
    assert_eq!(
        commit(store, &short, t1, v1).await,
        CommitOutcome::Committed
    );
    assert!(!store.renew(COLLECTION, "a", t1, lease).await.unwrap());
}

/// Counts the outcomes of 20 simultaneous `begin`s spread over `stores`.
async fn race(stores: &[Arc<dyn MetadataStore>], r: &BeginRequest) -> (usize, usize) {
    let barrier = Arc::new(tokio::sync::Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let store = stores[i % stores.len()].clone();
            let (r, barrier) = (r.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                store.begin(&r).await
            })
        })
        .collect();
    let (mut claimed, mut busy) = (0, 0);
    for task in tasks {
        match task.await.expect("task panicked").expect("begin failed") {
            BeginOutcome::Claimed { .. } => claimed += 1,
            BeginOutcome::Busy { .. } => busy += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    (claimed, busy)
}

async fn concurrent_begins_on_one_store_claim_once(h: MetaHarness) {
    // A new document (insert race) and a known one (update race).
    assert_eq!(
        race(std::slice::from_ref(&h.store), &req("new", "h1")).await,
        (1, 19)
    );
    index(&*h.store, &req("known", "h1")).await;
    assert_eq!(
        race(std::slice::from_ref(&h.store), &req("known", "h2")).await,
        (1, 19)
    );
    let rec = h.store.get(COLLECTION, "known").await.unwrap().unwrap();
    assert_eq!(rec.attempts, 2, "only the winner counts an attempt");
}

async fn concurrent_begins_across_pools_claim_once(h: MetaHarness) {
    let mut stores = vec![h.store.clone()];
    for _ in 0..3 {
        stores.push(h.open_another().await);
    }
    assert_eq!(race(&stores, &req("new", "h1")).await, (1, 19));
    index(&*h.store, &req("known", "h1")).await;
    assert_eq!(race(&stores, &req("known", "h2")).await, (1, 19));
}

async fn migrations_are_idempotent(h: MetaHarness) {
    index(&*h.store, &req("a", "h1")).await;
    let again = h.open_another().await;
    let third = h.open_another().await;
    assert_eq!(
        again.begin(&req("a", "h1")).await.unwrap(),
        BeginOutcome::Unchanged { version: 1 }
    );
    assert_eq!(
        third
            .get(COLLECTION, "a")
            .await
            .unwrap()
            .unwrap()
            .current_version,
        1
    );
}

common::contract!(
    an_expired_lease_can_be_taken_over_and_the_first_commit_loses,
    an_expired_lease_nobody_took_still_commits,
    renewing_a_lease_keeps_the_document_claimed,
    concurrent_begins_on_one_store_claim_once,
    concurrent_begins_across_pools_claim_once,
    migrations_are_idempotent,
);

/// A worker's per-document statements find the row by its key, even where the table has no
/// statistics (autovacuum off, as on the test machines). The planner once rated an index led by
/// `collection` as good as the key and read every row of the collection for each commit:
/// PostgreSQL's cost per document grew with the table (migration 0006).
#[tokio::test]
async fn per_document_statements_do_not_read_the_whole_collection() {
    let db = sluice_shared::testing::TestDatabase::create().await;
    let store = sluice_shared::metadata::PostgresStore::connect(&db.url)
        .await
        .unwrap();
    let documents = 300;
    for i in 0..documents {
        let doc = format!("doc-{i:04}");
        let version = index(&store, &req(&doc, "h1")).await;
        store
            .mark_published(COLLECTION, &doc, version)
            .await
            .unwrap();
    }
    // Statistics reach the server when a backend exits.
    store.pool().close().await;
    let stats = sluice_shared::metadata::PostgresStore::connect(&db.url)
        .await
        .unwrap();
    let mut rows_read = 0;
    for _ in 0..50 {
        rows_read = sqlx::query_scalar::<_, i64>(
            "SELECT COALESCE(SUM(idx_tup_read), 0)::BIGINT FROM pg_stat_user_indexes \
             WHERE relname = 'documents' AND indexrelname <> 'documents_pkey'",
        )
        .fetch_one(stats.pool())
        .await
        .unwrap();
        let key_scans = sqlx::query_scalar::<_, i64>(
            "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'documents_pkey'",
        )
        .fetch_one(stats.pool())
        .await
        .unwrap();
        if key_scans >= documents {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // By key, nothing comes from the other indexes; a scan of the collection per statement
    // would read tens of thousands of rows here.
    assert!(
        rows_read < documents,
        "{rows_read} rows read through secondary indexes for {documents} documents"
    );
}

#[tokio::test]
async fn postgres_connect_errors_never_show_the_password() {
    // Port 1 refuses connections immediately.
    let url = "postgres://sluice:hunter2-secret@127.0.0.1:1/sluice";
    for result in [
        sluice_shared::metadata::PostgresStore::connect(url)
            .await
            .map(|_| ()),
        sluice_shared::metadata::connect_any(url).await.map(|_| ()),
    ] {
        let err = result.expect_err("nothing listens on port 1");
        let msg = format!("{err} {err:?}");
        assert!(!msg.contains("hunter2-secret"), "password leaked: {msg}");
        assert!(
            msg.contains("127.0.0.1:1"),
            "error should say where it tried: {msg}"
        );
        assert!(
            msg.contains("refused"),
            "error should keep the cause: {msg}"
        );
        assert!(matches!(err, MetadataError::Unavailable(_)), "{err:?}");
        assert!(err.is_retryable());
    }
}

#[tokio::test]
async fn connect_any_chooses_the_backend_by_location() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.db");
    let url = format!("sqlite://{}", path.display());
    let store = sluice_shared::metadata::connect_any(&url)
        .await
        .expect("sqlite:// url");
    index(&*store, &req("a", "h1")).await;
    drop(store);
    assert!(path.exists(), "sqlite:// opens the named file");
    // The same file by plain path sees the same data.
    let store = sluice_shared::metadata::connect_any(path.to_str().unwrap())
        .await
        .unwrap();
    assert_eq!(
        store
            .get(COLLECTION, "a")
            .await
            .unwrap()
            .unwrap()
            .current_version,
        1
    );

    let short_form = format!("sqlite:{}", path.display());
    let store = sluice_shared::metadata::connect_any(&short_form)
        .await
        .unwrap();
    assert_eq!(
        store
            .get(COLLECTION, "a")
            .await
            .unwrap()
            .unwrap()
            .current_version,
        1
    );

    let memory = sluice_shared::metadata::connect_any("sqlite::memory:")
        .await
        .unwrap();
    assert_eq!(index(&*memory, &req("a", "h1")).await, 1);

    let err = sluice_shared::metadata::connect_any("mysql://root:topsecret@db/x")
        .await
        .map(|_| ())
        .expect_err("unsupported");
    assert!(matches!(err, MetadataError::Config(_)), "{err:?}");
    assert!(!err.to_string().contains("topsecret"), "{err}");
    assert!(!err.is_retryable());
}
