//! Contract of the ledger's publication and fencing rules, on both stores: a committed version is
//! "unchanged" only once published, a label change of unchanged content is a refresh (a lease,
//! no new version), publication never moves backwards, and a deletion names the highest version
//! it covers.

mod common;

use common::{COLLECTION, MetaHarness, claimed, index, req};
use sluice_shared::metadata::{
    BeginOutcome, BeginRequest, CommitOutcome, CommitRequest, DocStatus, Labels,
};

fn labels(tenant: &str, team: &str) -> Labels {
    Labels {
        tenant: Some(tenant.to_string()),
        metadata: serde_json::Map::from_iter([("team".to_string(), team.into())]),
    }
}

async fn a_committed_but_unpublished_version_is_refreshed(h: MetaHarness) {
    let store = &*h.store;
    let r = req("a", "h1");
    let (version, token) = claimed(store.begin(&r).await.unwrap());
    let committed = store
        .commit(&CommitRequest {
            collection: COLLECTION,
            doc_id: "a",
            lease_token: token,
            version,
            content_hash: "h1",
            fingerprint: "fp-1",
            chunk_count: 3,
            tokens: 30,
            labels: &labels("acme", "hr"),
        })
        .await
        .unwrap();
    assert_eq!(committed, CommitOutcome::Committed);
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(
        (rec.current_version, rec.published_version, rec.next_version),
        (1, 0, 1)
    );
    assert_eq!(rec.metadata, labels("acme", "hr").metadata);

    // The crash came between the commit and the publication: the next run finishes the job
    // without a new version.
    let again = BeginRequest {
        tenant: None,
        ..r.clone()
    };
    let BeginOutcome::Refresh {
        version: refreshed,
        lease_token,
        labels: wanted,
    } = store.begin(&again).await.unwrap()
    else {
        panic!("expected a refresh");
    };
    assert_eq!(refreshed, 1);
    assert_eq!(
        wanted,
        labels("acme", "hr"),
        "a job without labels keeps the document's"
    );
    assert!(matches!(
        store.begin(&again).await.unwrap(),
        BeginOutcome::Busy { .. }
    ));
    assert!(
        store
            .release(COLLECTION, "a", lease_token, &wanted)
            .await
            .unwrap()
    );
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!((rec.current_version, rec.published_version), (1, 1));
    assert_eq!(rec.status, DocStatus::Indexed);
    assert_eq!(
        store.begin(&again).await.unwrap(),
        BeginOutcome::Unchanged { version: 1 }
    );
}

async fn a_label_change_of_unchanged_content_is_a_refresh_not_a_new_version(h: MetaHarness) {
    let store = &*h.store;
    let r = req("a", "h1");
    assert_eq!(index(store, &r).await, 1);
    let retagged = BeginRequest {
        tenant: Some("globex".into()),
        metadata: Some(labels("globex", "legal").metadata),
        ..r.clone()
    };
    let BeginOutcome::Refresh {
        version,
        lease_token,
        labels: wanted,
    } = store.begin(&retagged).await.unwrap()
    else {
        panic!("expected a refresh");
    };
    assert_eq!(version, 1);
    assert_eq!(wanted, labels("globex", "legal"));
    // A token that no longer holds the lease changes nothing.
    assert!(
        !store
            .release(COLLECTION, "a", uuid::Uuid::new_v4(), &wanted)
            .await
            .unwrap()
    );
    assert!(
        store
            .release(COLLECTION, "a", lease_token, &wanted)
            .await
            .unwrap()
    );
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(rec.tenant.as_deref(), Some("globex"));
    assert_eq!(rec.metadata, wanted.metadata);
    assert_eq!((rec.current_version, rec.next_version), (1, 1));
    assert_eq!(
        store.begin(&retagged).await.unwrap(),
        BeginOutcome::Unchanged { version: 1 }
    );
}

async fn publication_never_moves_backwards(h: MetaHarness) {
    let store = &*h.store;
    let r = req("a", "h1");
    assert_eq!(index(store, &r).await, 1);
    let (v2, t2) = claimed(store.begin(&req("a", "h2")).await.unwrap());
    assert_eq!(
        common::commit(store, &req("a", "h2"), t2, v2).await,
        CommitOutcome::Committed
    );
    // A slow run publishing the older version afterwards cannot undo the newer publication.
    store.mark_published(COLLECTION, "a", 1).await.unwrap();
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!((rec.current_version, rec.published_version), (2, 2));
    // Nor can anything publish a version that was never committed.
    store.mark_published(COLLECTION, "a", 3).await.unwrap();
    assert_eq!(
        store
            .get(COLLECTION, "a")
            .await
            .unwrap()
            .unwrap()
            .published_version,
        2
    );
}

async fn deletion_names_the_highest_version_and_fences_the_writer(h: MetaHarness) {
    let store = &*h.store;
    let r = req("a", "h1");
    assert_eq!(index(store, &r).await, 1);
    // A run is writing version 2 when the delete arrives.
    let (v2, t2) = claimed(store.begin(&req("a", "h2")).await.unwrap());
    assert_eq!(v2, 2);
    assert_eq!(store.mark_deleted(COLLECTION, "a").await.unwrap(), Some(2));
    assert!(
        !store
            .renew(COLLECTION, "a", t2, std::time::Duration::from_secs(60))
            .await
            .unwrap(),
        "the writer's renewal must fail"
    );
    assert_eq!(
        common::commit(store, &req("a", "h2"), t2, v2).await,
        CommitOutcome::LeaseLost
    );
    let rec = store.get(COLLECTION, "a").await.unwrap().unwrap();
    assert_eq!(rec.status, DocStatus::Deleted);
    assert_eq!((rec.current_version, rec.published_version), (0, 0));
    assert_eq!(
        store.mark_deleted(COLLECTION, "unknown").await.unwrap(),
        None
    );
    // Coming back gets a version above everything the deletion covered.
    let (v3, _) = claimed(store.begin(&req("a", "h3")).await.unwrap());
    assert_eq!(v3, 3);
}

async fn get_many_returns_the_rows_that_exist(h: MetaHarness) {
    let store = &*h.store;
    index(store, &req("a", "h1")).await;
    index(store, &req("b", "h1")).await;
    store.mark_deleted(COLLECTION, "b").await.unwrap();
    let ids = ["a", "b", "missing"].map(String::from);
    let mut found: Vec<(String, DocStatus)> = store
        .get_many(COLLECTION, &ids)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.doc_id, r.status))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        found,
        [
            ("a".to_string(), DocStatus::Indexed),
            ("b".to_string(), DocStatus::Deleted)
        ]
    );
    assert!(store.get_many("other", &ids).await.unwrap().is_empty());
}

common::contract!(
    a_committed_but_unpublished_version_is_refreshed,
    a_label_change_of_unchanged_content_is_a_refresh_not_a_new_version,
    publication_never_moves_backwards,
    deletion_names_the_highest_version_and_fences_the_writer,
    get_many_returns_the_rows_that_exist,
);
