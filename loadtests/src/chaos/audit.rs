//! After a chaos run: read the ledger (PostgreSQL `documents`), the index (every point's
//! `doc_id`, `version`, `content_hash`, `staged`) and the DLQ (every message with its
//! `x-sluice-error-kind`), and compare each document with the generator's expectation.
//!
//! A version counts as live when it has points without `staged: true` (a writer marks the points
//! of a version it is still writing `staged`, then publishes them; leftovers are reported on
//! their own).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use anyhow::Context;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use qdrant_client::Qdrant;
use qdrant_client::qdrant::{ScrollPoints, WithPayloadSelector};
use serde::Serialize;
use sluice_shared::metadata::{
    DocStatus, DocumentCursor, DocumentFilter, DocumentRecord, MetadataError, MetadataStore,
};
use sluice_shared::queue::{self, ERROR_HEADER, ERROR_KIND_HEADER, QueueSettings, header_string};
use sluice_shared::store::qdrant::value_to_json;

use super::plan::{Book, Expect, POISON};

/// What one version of one document has in the index.
#[derive(Debug, Default, Clone)]
struct VersionPoints {
    live: u64,
    staged: u64,
    content_hashes: BTreeSet<String>,
}

/// Every point of `collection` grouped by document and version.
async fn read_index(
    qdrant_url: &str,
    collection: &str,
) -> anyhow::Result<HashMap<String, BTreeMap<i64, VersionPoints>>> {
    let client = Qdrant::from_url(qdrant_url)
        .skip_compatibility_check()
        .build()?;
    let mut out: HashMap<String, BTreeMap<i64, VersionPoints>> = HashMap::new();
    if !client.collection_exists(collection).await? {
        return Ok(out);
    }
    let mut offset = None;
    loop {
        let page = client
            .scroll(ScrollPoints {
                collection_name: collection.to_string(),
                offset,
                limit: Some(512),
                with_payload: Some(WithPayloadSelector::from(vec![
                    "doc_id",
                    "version",
                    "content_hash",
                    "staged",
                ])),
                ..Default::default()
            })
            .await
            .context("scrolling the index")?;
        for mut point in page.result {
            let mut field = |key: &str| point.payload.remove(key).map(value_to_json);
            let doc_id = field("doc_id")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let version = field("version").and_then(|v| v.as_i64()).unwrap_or(-1);
            let hash = field("content_hash")
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let staged = field("staged").and_then(|v| v.as_bool()).unwrap_or(false);
            let entry = out.entry(doc_id).or_default().entry(version).or_default();
            if staged {
                entry.staged += 1;
            } else {
                entry.live += 1;
                entry.content_hashes.insert(hash);
            }
        }
        match page.next_page_offset {
            Some(next) => offset = Some(next),
            None => return Ok(out),
        }
    }
}

/// Every ledger row of `collection`, page by page.
pub async fn ledger(
    metadata: &dyn MetadataStore,
    collection: &str,
) -> Result<Vec<DocumentRecord>, MetadataError> {
    let filter = DocumentFilter {
        collection: Some(collection.into()),
        ..DocumentFilter::default()
    };
    let mut out: Vec<DocumentRecord> = Vec::new();
    loop {
        let cursor = out.last().map(|last| DocumentCursor {
            collection: last.collection.clone(),
            doc_id: last.doc_id.clone(),
        });
        let page = metadata
            .list_documents(&filter, cursor.as_ref(), 1000)
            .await?;
        if page.is_empty() {
            return Ok(out);
        }
        out.extend(page);
    }
}

/// One DLQ message.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub body: String,
    pub kind: String,
    pub reason: String,
}

/// Takes every message off the DLQ.
pub async fn drain_dlq(settings: &QueueSettings) -> anyhow::Result<Vec<DeadLetter>> {
    let conn = queue::connect(settings).await?;
    let channel = conn.create_channel().await?;
    let mut out = Vec::new();
    while let Some(message) = channel
        .basic_get(
            settings.dead_letter_queue.as_str().into(),
            BasicGetOptions::default(),
        )
        .await?
    {
        let headers = message.delivery.properties.headers().as_ref();
        out.push(DeadLetter {
            body: String::from_utf8_lossy(&message.delivery.data).into_owned(),
            kind: header_string(headers, ERROR_KIND_HEADER).unwrap_or_default(),
            reason: header_string(headers, ERROR_HEADER).unwrap_or_default(),
        });
        message.delivery.ack(BasicAckOptions::default()).await?;
    }
    let _ = conn.close(200, "audit done".into()).await;
    Ok(out)
}

/// The document a job body names (`source`, or `doc_id` for deletes), if it parses.
fn job_document(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    value
        .get("doc_id")
        .or_else(|| value.get("source"))
        .and_then(|v| v.as_str())
        .map(str::to_string)
}

/// The audit's verdict. Every list holds document file names (or DLQ bodies).
#[derive(Debug, Default, Clone, Serialize)]
pub struct Findings {
    pub documents: usize,
    pub indexed_ok: usize,
    pub deleted_ok: usize,
    pub dead_lettered_ok: usize,
    /// Expected indexed, but neither indexed (ledger + live points) nor in the DLQ; and bad
    /// files or poison messages found nowhere.
    pub lost: Vec<String>,
    /// More than one live version in the index.
    pub doubled: Vec<String>,
    /// The ledger or the points hold content other than the file's final bytes, a live version
    /// other than the ledger's, or a deleted/bad document still has live points; also points of
    /// documents the run never had.
    pub stale: Vec<String>,
    /// Live points of the current version ≠ the ledger's `chunk_count`.
    pub count_mismatched: Vec<String>,
    /// DLQ messages for documents that should have been indexed (or unknown messages).
    pub unexpected_dlq: Vec<String>,
    /// Points still marked `staged: true` after the drain (by document).
    pub staged_leftovers: Vec<String>,
    /// DLQ messages of index jobs whose file the run had deleted: expected, listed for the record.
    pub dlq_for_deleted: usize,
    /// Every DLQ message by error kind.
    pub dlq_by_kind: BTreeMap<String, usize>,
    pub points: u64,
}

impl Findings {
    /// Nothing lost, doubled, stale, miscounted or unexpectedly dead-lettered.
    pub fn clean(&self) -> bool {
        self.lost.is_empty()
            && self.doubled.is_empty()
            && self.stale.is_empty()
            && self.count_mismatched.is_empty()
            && self.unexpected_dlq.is_empty()
    }
}

/// Compares ledger, index and DLQ with `book`.
pub async fn audit(
    book: &Book,
    metadata: &dyn MetadataStore,
    collection: &str,
    qdrant_url: &str,
    dlq: &[DeadLetter],
) -> anyhow::Result<Findings> {
    let index = read_index(qdrant_url, collection).await?;
    let ledger: HashMap<String, DocumentRecord> = ledger(metadata, collection)
        .await?
        .into_iter()
        .map(|record| (record.doc_id.clone(), record))
        .collect();

    let mut f = Findings {
        documents: book.docs.len(),
        ..Findings::default()
    };
    let mut in_dlq: HashMap<String, usize> = HashMap::new();
    for letter in dlq {
        *f.dlq_by_kind.entry(letter.kind.clone()).or_default() += 1;
        if POISON.contains(&letter.body.as_str()) {
            continue;
        }
        match job_document(&letter.body) {
            Some(doc) if book.docs.contains_key(&doc) => *in_dlq.entry(doc).or_default() += 1,
            _ => f.unexpected_dlq.push(format!(
                "unknown message ({}): {}",
                letter.kind, letter.body
            )),
        }
    }
    for poison in POISON {
        if !dlq.iter().any(|l| l.body == poison) {
            f.lost.push(format!("poison message {poison}"));
        }
    }
    for points in index.values().flat_map(|v| v.values()) {
        f.points += points.live + points.staged;
    }
    for doc_id in index.keys() {
        if !book.docs.contains_key(doc_id) {
            f.stale.push(format!("points of unknown document {doc_id}"));
        }
    }

    for (uri, doc) in &book.docs {
        let name = &doc.name;
        let versions = index.get(uri).cloned().unwrap_or_default();
        let live: BTreeMap<i64, &VersionPoints> = versions
            .iter()
            .filter(|(_, p)| p.live > 0)
            .map(|(v, p)| (*v, p))
            .collect();
        if versions.values().any(|p| p.staged > 0) {
            f.staged_leftovers.push(name.clone());
        }
        let record = ledger.get(uri);
        let dead = in_dlq.get(uri).copied().unwrap_or(0);
        match &doc.expect {
            Expect::Indexed { content_hash } => {
                if dead > 0 {
                    f.unexpected_dlq
                        .push(format!("{name}: dead-lettered {dead}×, expected indexed"));
                }
                if live.len() > 1 {
                    f.doubled.push(format!(
                        "{name}: live versions {:?}",
                        live.iter().map(|(v, p)| (*v, p.live)).collect::<Vec<_>>()
                    ));
                }
                let indexed = record.is_some_and(|r| r.status == DocStatus::Indexed);
                if !indexed || live.is_empty() {
                    if dead == 0 {
                        f.lost.push(format!(
                            "{name}: ledger {:?}, live versions {:?}",
                            record.map(|r| (r.status, r.current_version)),
                            live.keys().collect::<Vec<_>>()
                        ));
                    }
                    continue;
                }
                let record = record.expect("indexed");
                let mut stale = Vec::new();
                if record.content_hash.as_deref() != Some(content_hash) {
                    stale.push("ledger holds older content".to_string());
                }
                if live
                    .values()
                    .any(|p| p.content_hashes.iter().any(|h| h != content_hash))
                {
                    stale.push("points hold older content".to_string());
                }
                if !live.contains_key(&record.current_version) {
                    stale.push(format!(
                        "ledger says v{}, index has {:?}",
                        record.current_version,
                        live.keys().collect::<Vec<_>>()
                    ));
                }
                if !stale.is_empty() {
                    f.stale.push(format!("{name}: {}", stale.join("; ")));
                }
                let current = live.get(&record.current_version).map_or(0, |p| p.live);
                if current as i64 != record.chunk_count {
                    f.count_mismatched.push(format!(
                        "{name}: v{} has {current} points, ledger says {} chunks",
                        record.current_version, record.chunk_count
                    ));
                }
                if stale.is_empty() && live.len() == 1 && current as i64 == record.chunk_count {
                    f.indexed_ok += 1;
                }
            }
            Expect::Deleted => {
                f.dlq_for_deleted += dead;
                let indexed = record.is_some_and(|r| r.status == DocStatus::Indexed);
                if !live.is_empty() || indexed {
                    f.stale.push(format!(
                        "{name}: deleted, but ledger {:?} and live versions {:?}",
                        record.map(|r| r.status),
                        live.keys().collect::<Vec<_>>()
                    ));
                } else {
                    f.deleted_ok += 1;
                }
            }
            Expect::DeadLettered => {
                if dead == 0 {
                    f.lost.push(format!("{name}: bad file not in the DLQ"));
                } else if !live.is_empty() {
                    f.stale.push(format!("{name}: bad file has points"));
                } else {
                    f.dead_lettered_ok += 1;
                }
            }
        }
    }
    Ok(f)
}

impl Findings {
    /// The summary `sluice-bench --mode chaos` prints.
    pub fn render(&self) -> String {
        let mut s = format!(
            "documents {}: {} indexed exactly, {} deleted, {} bad files dead-lettered; {} points\n",
            self.documents, self.indexed_ok, self.deleted_ok, self.dead_lettered_ok, self.points
        );
        for (label, list) in [
            ("lost", &self.lost),
            ("doubled", &self.doubled),
            ("stale", &self.stale),
            ("count-mismatched", &self.count_mismatched),
            ("unexpected DLQ", &self.unexpected_dlq),
            ("staged leftovers", &self.staged_leftovers),
        ] {
            s.push_str(&format!("{label:>18}: {}\n", list.len()));
            for item in list.iter().take(10) {
                s.push_str(&format!("{:>20}{item}\n", ""));
            }
            if list.len() > 10 {
                s.push_str(&format!("{:>20}… and {} more\n", "", list.len() - 10));
            }
        }
        s.push_str(&format!(
            "{:>18}: {:?} ({} for deleted files)\n",
            "DLQ by kind", self.dlq_by_kind, self.dlq_for_deleted
        ));
        s
    }
}
