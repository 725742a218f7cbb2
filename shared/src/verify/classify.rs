//! The rules of `sluice verify`, as pure functions over what the ledger says about a document
//! ([`LedgerView`]) and what the index holds: so the CLI, the tests and any future caller judge
//! drift exactly the same way.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::metadata::{DocStatus, DocumentRecord};

/// One way the index can disagree with the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The committed version has no points at all.
    Missing,
    /// The committed version has fewer points than the chunks recorded.
    Short,
    /// The committed version has more points than the chunks recorded.
    CountMismatch,
    /// The committed version is not the one searchers see: the ledger's published version lags
    /// behind (a crash between commit and publish), or its points are still marked staged.
    Unpublished,
    /// Points of a version other than the committed one, written by no run in flight.
    StrayVersion,
    /// Points of a document the ledger does not know or has deleted.
    Orphan,
}

impl DriftKind {
    pub const ALL: [DriftKind; 6] = [
        DriftKind::Missing,
        DriftKind::Short,
        DriftKind::CountMismatch,
        DriftKind::Unpublished,
        DriftKind::StrayVersion,
        DriftKind::Orphan,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::Missing => "missing",
            DriftKind::Short => "short",
            DriftKind::CountMismatch => "count_mismatch",
            DriftKind::Unpublished => "unpublished",
            DriftKind::StrayVersion => "stray_version",
            DriftKind::Orphan => "orphan",
        }
    }
}

/// How `--repair` fixes one kind of drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RepairAction {
    /// Delete the points of exactly one (document, version).
    DeleteVersion,
    /// Re-embed the document into a new version (forced index job).
    Reindex,
    /// Make the committed version visible through the index path (non-forced index job).
    Publish,
    /// Clear the staged flag of the committed version's points directly: the ledger already
    /// says they are published.
    Unstage,
}

impl RepairAction {
    pub const ALL: [RepairAction; 4] = [
        RepairAction::DeleteVersion,
        RepairAction::Reindex,
        RepairAction::Publish,
        RepairAction::Unstage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RepairAction::DeleteVersion => "delete_version",
            RepairAction::Reindex => "reindex",
            RepairAction::Publish => "publish",
            RepairAction::Unstage => "unstage",
        }
    }
}

/// The repair for a finding: which pass found it matters for `unpublished` (a lagging ledger
/// needs the index path; staged points of a version the ledger calls published only need their
/// label).
pub fn repair_for(kind: DriftKind, found_in: Pass) -> RepairAction {
    match kind {
        DriftKind::Missing | DriftKind::Short | DriftKind::CountMismatch => RepairAction::Reindex,
        DriftKind::Unpublished => match found_in {
            Pass::Ledger => RepairAction::Publish,
            Pass::Index => RepairAction::Unstage,
        },
        DriftKind::StrayVersion | DriftKind::Orphan => RepairAction::DeleteVersion,
    }
}

/// The two passes of a verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pass {
    /// Ledger → index: every committed version has its points.
    Ledger,
    /// Index → ledger: every point belongs to a committed version (or a run in flight).
    Index,
}

/// What the rules need of a ledger row, at the instant it was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerView {
    pub deleted: bool,
    pub current_version: i64,
    pub published_version: i64,
    /// Highest version ever handed out.
    pub next_version: i64,
    pub chunk_count: i64,
    /// A run holds the document right now and is writing `next_version` (or, refreshing,
    /// republishing the committed one).
    pub live_lease: bool,
    /// The row changed within the grace period: a run may be between two of its steps
    /// (commit → publish, mark deleted → delete points, fail → clean up its version), so what
    /// those steps settle is not judged yet.
    pub settling: bool,
}

impl LedgerView {
    /// The row as of `now`; `grace`: how long after a change the row counts as settling.
    pub fn of(record: &DocumentRecord, now: DateTime<Utc>, grace: std::time::Duration) -> Self {
        let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
        LedgerView {
            deleted: record.status == DocStatus::Deleted,
            current_version: record.current_version,
            published_version: record.published_version,
            next_version: record.next_version,
            chunk_count: record.chunk_count,
            live_lease: record.leased_at(now),
            settling: now.signed_duration_since(record.updated_at) < grace,
        }
    }

    /// The version an in-flight run is writing, if any: never deleted, never reported.
    fn in_flight_version(&self) -> Option<i64> {
        self.live_lease.then_some(self.next_version)
    }
}

/// Pass 1: judges a document by the points its committed version has (staged or not).
pub fn classify_document(view: &LedgerView, points: u64) -> Option<DriftKind> {
    if view.deleted || view.current_version <= 0 {
        return None;
    }
    let expected = u64::try_from(view.chunk_count).unwrap_or(0);
    if points == 0 {
        return Some(DriftKind::Missing);
    }
    if points < expected {
        return Some(DriftKind::Short);
    }
    if points > expected {
        return Some(DriftKind::CountMismatch);
    }
    // The committing run publishes right after its commit (a refreshing one under its lease):
    // the lag is theirs to close until the row has been still for a while.
    if view.published_version != view.current_version && !view.live_lease && !view.settling {
        return Some(DriftKind::Unpublished);
    }
    None
}

/// What pass 2 makes of the points of one (document, version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// They belong where they are.
    Fine,
    /// A run in flight is writing them: hands off.
    InFlight,
    Drift(DriftKind),
}

/// Pass 2: judges the points of one (document, `version`) — `staged` if any of them still is —
/// against the document's row (`None`: the ledger does not know it).
pub fn classify_version(view: Option<&LedgerView>, version: i64, staged: bool) -> Verdict {
    let Some(view) = view else {
        return Verdict::Drift(DriftKind::Orphan);
    };
    if view.deleted {
        // A deletion is recorded before its points are removed.
        return match view.settling {
            true => Verdict::InFlight,
            false => Verdict::Drift(DriftKind::Orphan),
        };
    }
    // Nothing at or above an in-flight run's version is ever touched: a version above it can
    // only come from a ledger that went backwards, and then deleting is not verify's call.
    if view.in_flight_version().is_some_and(|v| version >= v) {
        return Verdict::InFlight;
    }
    if version == view.current_version && view.current_version > 0 {
        return if staged && view.published_version == view.current_version {
            Verdict::Drift(DriftKind::Unpublished)
        } else {
            // A lagging published version is pass 1's `unpublished` finding.
            Verdict::Fine
        };
    }
    // Between commit and publish the previous version is what searchers see; publishing the
    // committed one removes it. Deleting it first would leave the document invisible.
    if version == view.published_version && view.published_version != view.current_version {
        return Verdict::Fine;
    }
    // A run that just failed or lost its lease removes its own version next.
    if view.settling {
        return Verdict::InFlight;
    }
    Verdict::Drift(DriftKind::StrayVersion)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed(version: i64, chunks: i64) -> LedgerView {
        LedgerView {
            deleted: false,
            current_version: version,
            published_version: version,
            next_version: version,
            chunk_count: chunks,
            live_lease: false,
            settling: false,
        }
    }

    #[test]
    fn a_committed_version_must_hold_exactly_its_chunks_and_be_published() {
        let v = committed(3, 7);
        assert_eq!(classify_document(&v, 7), None);
        assert_eq!(classify_document(&v, 0), Some(DriftKind::Missing));
        assert_eq!(classify_document(&v, 4), Some(DriftKind::Short));
        assert_eq!(classify_document(&v, 14), Some(DriftKind::CountMismatch));
        let lagging = LedgerView {
            published_version: 2,
            ..v.clone()
        };
        assert_eq!(classify_document(&lagging, 7), Some(DriftKind::Unpublished));
        // Missing points win over a lagging publish: publishing nothing would not help.
        assert_eq!(classify_document(&lagging, 0), Some(DriftKind::Missing));
        // The run holding the lease is about to publish.
        let publishing = LedgerView {
            live_lease: true,
            next_version: 3,
            ..lagging
        };
        assert_eq!(classify_document(&publishing, 7), None);
        // Points are about the committed version, so a lease does not excuse missing ones.
        assert_eq!(classify_document(&publishing, 0), Some(DriftKind::Missing));
    }

    #[test]
    fn documents_without_a_committed_version_are_not_judged_by_pass_one() {
        let never = LedgerView {
            current_version: 0,
            published_version: 0,
            next_version: 2,
            ..committed(0, 0)
        };
        assert_eq!(classify_document(&never, 0), None);
        let deleted = LedgerView {
            deleted: true,
            ..committed(4, 3)
        };
        assert_eq!(classify_document(&deleted, 0), None);
        // A version with no chunks is never committed (the pipeline fails a document without
        // text), so a committed version without points is always missing ones.
        assert_eq!(
            classify_document(&committed(1, 0), 0),
            Some(DriftKind::Missing)
        );
    }

    #[test]
    fn points_of_unknown_or_deleted_documents_are_orphans() {
        assert_eq!(
            classify_version(None, 1, false),
            Verdict::Drift(DriftKind::Orphan)
        );
        let deleted = LedgerView {
            deleted: true,
            current_version: 0,
            published_version: 0,
            ..committed(5, 3)
        };
        assert_eq!(
            classify_version(Some(&deleted), 5, false),
            Verdict::Drift(DriftKind::Orphan)
        );
    }

    #[test]
    fn only_the_committed_version_and_a_run_in_flight_belong_in_the_index() {
        let v = committed(3, 7);
        assert_eq!(classify_version(Some(&v), 3, false), Verdict::Fine);
        assert_eq!(
            classify_version(Some(&v), 2, false),
            Verdict::Drift(DriftKind::StrayVersion)
        );
        // A run that lost its lease (or crashed) left version 4 behind.
        let abandoned = LedgerView {
            next_version: 4,
            ..v.clone()
        };
        assert_eq!(
            classify_version(Some(&abandoned), 4, true),
            Verdict::Drift(DriftKind::StrayVersion)
        );
        // The same points while the run still holds its lease are its own.
        let writing = LedgerView {
            live_lease: true,
            ..abandoned.clone()
        };
        assert_eq!(classify_version(Some(&writing), 4, true), Verdict::InFlight);
        assert_eq!(classify_version(Some(&writing), 5, true), Verdict::InFlight);
        // An older abandoned version is stray even while a newer run is in flight.
        let writing_6 = LedgerView {
            next_version: 6,
            ..writing
        };
        assert_eq!(
            classify_version(Some(&writing_6), 4, true),
            Verdict::Drift(DriftKind::StrayVersion)
        );
        // A failed first run: no committed version, nothing in flight.
        let failed = LedgerView {
            current_version: 0,
            published_version: 0,
            next_version: 1,
            ..committed(0, 0)
        };
        assert_eq!(
            classify_version(Some(&failed), 1, true),
            Verdict::Drift(DriftKind::StrayVersion)
        );
    }

    #[test]
    fn between_commit_and_publish_both_versions_stay() {
        let lagging = LedgerView {
            published_version: 2,
            ..committed(3, 7)
        };
        // The published version is what searchers see until the committed one is published.
        assert_eq!(classify_version(Some(&lagging), 2, false), Verdict::Fine);
        // The committed one is still staged: pass 1 reports that document as unpublished.
        assert_eq!(classify_version(Some(&lagging), 3, true), Verdict::Fine);
        assert_eq!(
            classify_version(Some(&lagging), 1, false),
            Verdict::Drift(DriftKind::StrayVersion)
        );
    }

    #[test]
    fn a_row_that_just_changed_is_left_to_the_run_that_changed_it() {
        // Committed a moment ago, not yet published: the committing run publishes next.
        let committing = LedgerView {
            published_version: 2,
            settling: true,
            ..committed(3, 7)
        };
        assert_eq!(classify_document(&committing, 7), None);
        // Points were written before the commit, so missing ones are missing at once.
        assert_eq!(classify_document(&committing, 3), Some(DriftKind::Short));
        // Deletion recorded, points not removed yet.
        let deleting = LedgerView {
            deleted: true,
            settling: true,
            ..committed(0, 0)
        };
        assert_eq!(
            classify_version(Some(&deleting), 4, false),
            Verdict::InFlight
        );
        // A run that just failed cleans up its own version.
        let failing = LedgerView {
            next_version: 4,
            settling: true,
            ..committed(3, 7)
        };
        assert_eq!(classify_version(Some(&failing), 4, true), Verdict::InFlight);
        // Unknown documents have no run to wait for.
        assert_eq!(
            classify_version(None, 4, true),
            Verdict::Drift(DriftKind::Orphan)
        );
    }

    #[test]
    fn staged_points_of_a_published_version_are_unpublished() {
        let v = committed(3, 7);
        assert_eq!(
            classify_version(Some(&v), 3, true),
            Verdict::Drift(DriftKind::Unpublished)
        );
        assert_eq!(
            repair_for(DriftKind::Unpublished, Pass::Index),
            RepairAction::Unstage
        );
        assert_eq!(
            repair_for(DriftKind::Unpublished, Pass::Ledger),
            RepairAction::Publish
        );
    }

    #[test]
    fn each_kind_has_its_repair() {
        for kind in DriftKind::ALL {
            let action = repair_for(kind, Pass::Ledger);
            let expected = match kind {
                DriftKind::Missing | DriftKind::Short | DriftKind::CountMismatch => {
                    RepairAction::Reindex
                }
                DriftKind::Unpublished => RepairAction::Publish,
                DriftKind::StrayVersion | DriftKind::Orphan => RepairAction::DeleteVersion,
            };
            assert_eq!(action, expected, "{}", kind.as_str());
        }
    }
}
