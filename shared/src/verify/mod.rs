//! # Verify: the ledger against what the index really holds
//!
//! ```text
//!  pass 1  ledger ──list_documents (pages)──► count_version(current) ──► missing / short /
//!                                                                         count_mismatch / unpublished
//!  pass 2  index ──scroll_points (pages)──► get_many(doc_ids of the page) ──► orphan /
//!                                                                         stray_version / unpublished
//!  --repair: delete_version (exact doc, version) · publish_version · index jobs (JobRunner)
//! ```
//!
//! Safe beside busy workers: a pass-1 finding is reported only if the row reads the same after
//! counting (else a run changed it meanwhile), and a pass-2 finding only if, read again together
//! with a recount, it still is one. Nothing at or above the version an in-flight run (live lease)
//! writes is ever touched, and every delete names one exact (document, version): version numbers
//! are never handed out twice, so a version judged stray can never become committed later.
//!
//! Memory is bounded by one page of documents or points, plus the (document, version) pairs
//! found drifting — which a healthy index keeps at zero.
//!
//! The rules themselves are pure functions in [`classify`].

pub mod classify;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use async_trait::async_trait;
use chrono::Utc;
use serde::Serialize;

use crate::job::Job;
use crate::metadata::{
    DocumentCursor, DocumentFilter, DocumentRecord, MetadataError, MetadataStore,
};
use crate::reindex::index_job;
use crate::store::{StoreError, VectorStore};

pub use classify::{
    DriftKind, LedgerView, Pass, RepairAction, Verdict, classify_document, classify_version,
    repair_for,
};

/// Documents read from the ledger per page.
pub const DOCUMENT_PAGE: usize = 200;
/// Points read from the index per page.
pub const POINT_PAGE: usize = 1000;
/// Findings kept for the report; the rest are only counted.
pub const MAX_FINDINGS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("vector store: {0}")]
    Store(#[from] StoreError),
    #[error("metadata store: {0}")]
    Metadata(#[from] MetadataError),
    /// Handing repair jobs over failed (the broker refused them, or the runner broke down).
    #[error("repair jobs: {0}")]
    Jobs(String),
}

impl VerifyError {
    pub fn is_retryable(&self) -> bool {
        match self {
            VerifyError::Store(e) => e.is_retryable(),
            VerifyError::Metadata(e) => e.is_retryable(),
            VerifyError::Jobs(_) => true,
        }
    }
}

/// Runs index jobs for `--repair`: in-process through the pipeline (embedded) or published to
/// the work queue (fleet).
#[async_trait]
pub trait JobRunner: Send + Sync {
    /// One result per job, in order: `Err` carries why that job could not be carried out.
    /// Return `Err` only when the runner itself broke down.
    async fn run(&self, jobs: &[Job]) -> Result<Vec<Result<(), String>>, VerifyError>;
}

/// Progress of a verification, for a progress bar.
pub trait Observer: Send + Sync {
    /// `n` more documents (pass 1) or points (pass 2) checked.
    fn checked(&self, n: u64);
    /// A finding was reported.
    fn drift(&self);
}

/// Which documents to verify.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub collection: Option<String>,
    /// Only documents of this tenant; points of documents the ledger does not know belong to no
    /// tenant, so orphans of unknown documents are only reported without it.
    pub tenant: Option<String>,
}

/// One (document, version) that disagrees with the ledger.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub collection: String,
    pub doc_id: String,
    pub kind: DriftKind,
    pub pass: Pass,
    /// The version the points belong to (pass 1: the committed version).
    pub version: i64,
    /// Points seen of that version.
    pub points: u64,
    /// Chunks the ledger records (pass 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_points: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<RepairAction>,
    /// Why the repair failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair_error: Option<String>,
}

/// The outcome of a verification: what `--json` prints.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub collections: Vec<String>,
    pub documents_checked: u64,
    pub points_scanned: u64,
    /// Drift seen, but the document changed meanwhile (a worker was busy with it): not reported.
    pub skipped_busy: u64,
    /// Findings per kind, every kind listed.
    pub drift: BTreeMap<DriftKind, u64>,
    pub drift_total: u64,
    /// Repairs carried out (fleet: jobs published) per action, every action listed.
    pub repairs: BTreeMap<RepairAction, u64>,
    pub repair_failures: u64,
    /// The first [`MAX_FINDINGS`] findings.
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn new() -> Self {
        Report {
            drift: DriftKind::ALL.iter().map(|&k| (k, 0)).collect(),
            repairs: RepairAction::ALL.iter().map(|&a| (a, 0)).collect(),
            ..Report::default()
        }
    }

    fn add(&mut self, finding: Finding) {
        *self.drift.entry(finding.kind).or_default() += 1;
        self.drift_total += 1;
        match &finding.repair_error {
            Some(_) => self.repair_failures += 1,
            None => {
                if let Some(action) = finding.repair {
                    *self.repairs.entry(action).or_default() += 1;
                }
            }
        }
        if self.findings.len() < MAX_FINDINGS {
            self.findings.push(finding);
        }
    }
}

/// Sets the `sluice_verify_*` gauges from a run: its report, or `None` if it stopped with an
/// error (then only the timestamp, duration and `last_run_success = 0` are set, so an alert on
/// stale or failed runs still fires).
pub fn record_metrics(report: Option<&Report>, elapsed: std::time::Duration) {
    use crate::metrics as m;
    m::verify_last_run_timestamp_seconds().set(Utc::now().timestamp() as f64);
    m::verify_duration_seconds().set(elapsed.as_secs_f64());
    m::verify_last_run_success().set(if report.is_some() { 1.0 } else { 0.0 });
    let Some(report) = report else { return };
    m::verify_documents_checked().set(report.documents_checked as f64);
    m::verify_points_scanned().set(report.points_scanned as f64);
    for (kind, n) in &report.drift {
        m::verify_drift(kind.as_str()).set(*n as f64);
    }
    for (action, n) in &report.repairs {
        m::verify_repairs(action.as_str()).set(*n as f64);
    }
    m::verify_repair_failures().set(report.repair_failures as f64);
}

/// One verification run over a vector store and its ledger.
pub struct Verifier<'a> {
    pub store: &'a dyn VectorStore,
    pub metadata: &'a dyn MetadataStore,
    pub scope: Scope,
    /// `Some`: repair what is found.
    pub repair: Option<&'a dyn JobRunner>,
    /// How long after a change a row is left to the run that changed it (see
    /// [`LedgerView::settling`]): a run that has not moved for a lease is gone.
    pub grace: std::time::Duration,
}

impl Verifier<'_> {
    fn filter(&self) -> DocumentFilter {
        DocumentFilter {
            collection: self.scope.collection.clone(),
            tenant: self.scope.tenant.clone(),
            ..DocumentFilter::default()
        }
    }

    /// Pass 1, ledger → index. Also fills `report.collections` (the scope's collection, or every
    /// collection the ledger names) for pass 2.
    pub async fn check_ledger(
        &self,
        report: &mut Report,
        observer: &dyn Observer,
    ) -> Result<(), VerifyError> {
        let filter = self.filter();
        let mut collections: BTreeSet<String> = self.scope.collection.iter().cloned().collect();
        let mut after: Option<DocumentCursor> = None;
        loop {
            let page = self
                .metadata
                .list_documents(&filter, after.as_ref(), DOCUMENT_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = Some(DocumentCursor {
                collection: last.collection.clone(),
                doc_id: last.doc_id.clone(),
            });
            let mut found = Vec::new();
            for record in &page {
                collections.insert(record.collection.clone());
                report.documents_checked += 1;
                if let Some(finding) = self.check_document(record, report).await? {
                    observer.drift();
                    found.push((finding, record));
                }
            }
            observer.checked(page.len() as u64);
            self.repair_documents(&mut found).await?;
            for (finding, _) in found {
                report.add(finding);
            }
            if page.len() < DOCUMENT_PAGE {
                break;
            }
        }
        report.collections = collections.into_iter().collect();
        Ok(())
    }

    async fn check_document(
        &self,
        record: &DocumentRecord,
        report: &mut Report,
    ) -> Result<Option<Finding>, VerifyError> {
        if record.current_version <= 0 {
            return Ok(None);
        }
        let points = self
            .count_version(&record.collection, &record.doc_id, record.current_version)
            .await?;
        let Some(kind) = classify_document(&LedgerView::of(record, Utc::now(), self.grace), points)
        else {
            return Ok(None);
        };
        let again = self
            .metadata
            .get(&record.collection, &record.doc_id)
            .await?;
        if again.as_ref() != Some(record) {
            report.skipped_busy += 1;
            return Ok(None);
        }
        Ok(Some(Finding {
            collection: record.collection.clone(),
            doc_id: record.doc_id.clone(),
            kind,
            pass: Pass::Ledger,
            version: record.current_version,
            points,
            expected_points: Some(u64::try_from(record.chunk_count).unwrap_or(0)),
            repair: None,
            repair_error: None,
        }))
    }

    /// Repairs pass-1 findings of one page with index jobs: forced ones re-embed missing or
    /// short documents, plain ones publish the committed version.
    async fn repair_documents(
        &self,
        found: &mut [(Finding, &DocumentRecord)],
    ) -> Result<(), VerifyError> {
        let Some(runner) = self.repair else {
            return Ok(());
        };
        let mut jobs = Vec::with_capacity(found.len());
        let mut slots = Vec::with_capacity(found.len());
        for (i, (finding, record)) in found.iter_mut().enumerate() {
            let action = repair_for(finding.kind, Pass::Ledger);
            finding.repair = Some(action);
            match index_job(record, action == RepairAction::Reindex) {
                Ok(job) => {
                    jobs.push(job);
                    slots.push(i);
                }
                Err(e) => finding.repair_error = Some(format!("no valid index job: {e}")),
            }
        }
        if jobs.is_empty() {
            return Ok(());
        }
        let results = runner.run(&jobs).await?;
        for (slot, result) in slots.into_iter().zip(results) {
            if let Err(e) = result {
                found[slot].0.repair_error = Some(e);
            }
        }
        Ok(())
    }

    /// Pass 2, index → ledger, over one collection, one page of points at a time.
    pub async fn check_index(
        &self,
        collection: &str,
        report: &mut Report,
        observer: &dyn Observer,
    ) -> Result<(), VerifyError> {
        // (doc_id, version) pairs already judged: a version's points spread over many pages.
        let mut judged: HashSet<(String, i64)> = HashSet::new();
        let mut after = None;
        loop {
            let page = match self
                .store
                .scroll_points(collection, after, POINT_PAGE)
                .await
            {
                Ok(page) => page,
                // Nothing was ever written there: pass 1 reports its documents as missing.
                Err(StoreError::MissingCollection(_)) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            report.points_scanned += page.points.len() as u64;
            observer.checked(page.points.len() as u64);

            // (doc_id, version) → (points on this page, any of them staged)
            let mut groups: BTreeMap<(String, i64), (u64, bool)> = BTreeMap::new();
            for p in &page.points {
                let entry = groups.entry((p.doc_id.clone(), p.version)).or_default();
                entry.0 += 1;
                entry.1 |= p.staged;
            }
            let doc_ids: Vec<String> = groups
                .keys()
                .map(|(doc, _)| doc.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            // Read after the page: a run that began before its points were scrolled shows here.
            let records: HashMap<String, DocumentRecord> = self
                .metadata
                .get_many(collection, &doc_ids)
                .await?
                .into_iter()
                .map(|r| (r.doc_id.clone(), r))
                .collect();
            let now = Utc::now();
            for ((doc_id, version), (points, staged)) in groups {
                if judged.contains(&(doc_id.clone(), version)) {
                    continue;
                }
                let record = records.get(&doc_id);
                if !self.in_tenant(record) {
                    continue;
                }
                let view = record.map(|r| LedgerView::of(r, now, self.grace));
                if !matches!(
                    classify_version(view.as_ref(), version, staged),
                    Verdict::Drift(_)
                ) {
                    continue;
                }
                judged.insert((doc_id.clone(), version));
                if let Some(finding) = self
                    .confirm_version(collection, &doc_id, version, staged, points)
                    .await?
                {
                    observer.drift();
                    report.add(finding);
                } else {
                    report.skipped_busy += 1;
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    fn in_tenant(&self, record: Option<&DocumentRecord>) -> bool {
        match &self.scope.tenant {
            None => true,
            Some(tenant) => record.is_some_and(|r| r.tenant.as_deref() == Some(tenant.as_str())),
        }
    }

    /// Reads the row again and recounts the version: a finding stands only if it still is one
    /// (a run may have committed, published or deleted meanwhile). Repairs it if asked to.
    async fn confirm_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
        staged: bool,
        points_on_page: u64,
    ) -> Result<Option<Finding>, VerifyError> {
        let record = self.metadata.get(collection, doc_id).await?;
        let points = self.count_version(collection, doc_id, version).await?;
        if points == 0 {
            return Ok(None);
        }
        let view = record
            .as_ref()
            .map(|r| LedgerView::of(r, Utc::now(), self.grace));
        let Verdict::Drift(kind) = classify_version(view.as_ref(), version, staged) else {
            return Ok(None);
        };
        let mut finding = Finding {
            collection: collection.to_string(),
            doc_id: doc_id.to_string(),
            kind,
            pass: Pass::Index,
            version,
            points: points.max(points_on_page),
            expected_points: None,
            repair: None,
            repair_error: None,
        };
        if self.repair.is_some() {
            let action = repair_for(kind, Pass::Index);
            finding.repair = Some(action);
            let done = match action {
                RepairAction::DeleteVersion => {
                    self.store.delete_version(collection, doc_id, version).await
                }
                RepairAction::Unstage => {
                    self.store
                        .publish_version(collection, doc_id, version)
                        .await
                }
                // Pass 2 finds nothing that needs an index job.
                RepairAction::Reindex | RepairAction::Publish => Ok(()),
            };
            if let Err(e) = done {
                finding.repair_error = Some(e.to_string());
            }
        }
        Ok(Some(finding))
    }

    async fn count_version(
        &self,
        collection: &str,
        doc_id: &str,
        version: i64,
    ) -> Result<u64, VerifyError> {
        match self.store.count_version(collection, doc_id, version).await {
            Ok(n) => Ok(n),
            Err(StoreError::MissingCollection(_)) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}
