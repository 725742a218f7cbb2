//! The metadata store contract, part three: selecting documents for a re-index — filters and
//! resumable keyset pages — on both implementations.

mod common;

use chrono::Utc;
use common::{MetaHarness, index, req};
use sluice_shared::metadata::{BeginRequest, DocumentCursor, DocumentFilter, MetadataStore};

fn in_collection(collection: &str, doc_id: &str, tenant: &str) -> BeginRequest {
    BeginRequest {
        collection: collection.into(),
        source: format!("s3://bucket/{tenant}/{doc_id}.md"),
        tenant: Some(tenant.into()),
        ..req(doc_id, "h")
    }
}

/// Every page of `filter` with `limit` per page, as (collection, doc_id).
async fn all_pages(
    store: &dyn MetadataStore,
    filter: &DocumentFilter,
    limit: usize,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut after: Option<DocumentCursor> = None;
    loop {
        let page = store
            .list_documents(filter, after.as_ref(), limit)
            .await
            .unwrap();
        assert!(page.len() <= limit);
        let Some(last) = page.last() else { break };
        after = Some(DocumentCursor {
            collection: last.collection.clone(),
            doc_id: last.doc_id.clone(),
        });
        out.extend(page.into_iter().map(|d| (d.collection, d.doc_id)));
    }
    out
}

async fn filters_and_pages_select_each_document_once(h: MetaHarness) {
    let store = &*h.store;
    for (collection, doc, tenant) in [
        ("a", "d1", "acme"),
        ("a", "d2", "globex"),
        ("a", "d3", "acme"),
        ("b", "d1", "acme"),
        ("b", "d4", "acme"),
    ] {
        index(store, &in_collection(collection, doc, tenant)).await;
    }
    let gone = in_collection("b", "d5", "acme");
    index(store, &gone).await;
    store.mark_deleted("b", "d5").await.unwrap();

    let everything = all_pages(store, &DocumentFilter::default(), 2).await;
    let expected: Vec<(String, String)> = [
        ("a", "d1"),
        ("a", "d2"),
        ("a", "d3"),
        ("b", "d1"),
        ("b", "d4"),
    ]
    .iter()
    .map(|(c, d)| (c.to_string(), d.to_string()))
    .collect();
    assert_eq!(
        everything, expected,
        "every live document once, in order, deleted ones excluded"
    );

    let acme_in_a = DocumentFilter {
        collection: Some("a".into()),
        tenant: Some("acme".into()),
        ..Default::default()
    };
    assert_eq!(
        all_pages(store, &acme_in_a, 1).await,
        vec![("a".into(), "d1".into()), ("a".into(), "d3".into())]
    );

    let prefix = DocumentFilter {
        source_prefix: Some("s3://bucket/globex/".into()),
        ..Default::default()
    };
    assert_eq!(
        all_pages(store, &prefix, 10).await,
        vec![("a".into(), "d2".into())]
    );

    let future = DocumentFilter {
        since: Some(Utc::now() + chrono::Duration::hours(1)),
        ..Default::default()
    };
    assert!(all_pages(store, &future, 10).await.is_empty());
    let past = DocumentFilter {
        since: Some(Utc::now() - chrono::Duration::hours(1)),
        ..Default::default()
    };
    assert_eq!(all_pages(store, &past, 10).await.len(), 5);
}

common::contract!(filters_and_pages_select_each_document_once);
