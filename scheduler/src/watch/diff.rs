//! The decision of one poll, as a pure function: a fresh listing against the recorded state gives
//! the objects to (re)index, the ones to delete and the unchanged ones whose `last_seen` is due.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sluice_shared::metadata::watch_state::{WatchedObject, to_micros};
use sluice_shared::source::SourceObject;

/// How an object differs from its recorded state; the label of `sluice_watch_objects_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    New,
    Changed,
    Removed,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::New => "new",
            Change::Changed => "changed",
            Change::Removed => "removed",
        }
    }
}

/// What one poll of a location must do.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// New and changed objects, each needing an index job, in listing (URI) order.
    pub index: Vec<(Change, SourceObject)>,
    /// URIs that were recorded but are no longer listed, each needing a delete job.
    pub removed: Vec<String>,
    /// Listed objects identical to their recorded state.
    pub unchanged: usize,
    /// Unchanged objects whose `last_seen` is older than the refresh resolution.
    pub seen_due: Vec<String>,
}

/// Whether a listed object is what was recorded. ETags decide when both sides have one (a
/// rewrite with identical bytes keeps an S3 ETag, so it is not re-enqueued); otherwise size and
/// modification time, compared at the microsecond precision the state keeps.
pub fn same_object(recorded: &WatchedObject, listed: &SourceObject) -> bool {
    match (&recorded.e_tag, &listed.e_tag) {
        (Some(a), Some(b)) => a == b,
        _ => {
            recorded.size == listed.size
                && recorded.last_modified == to_micros(listed.last_modified)
        }
    }
}

/// Compares `listing` (a complete, successful listing) with `recorded`. Only ever called with a
/// listing that succeeded: a failed one must not turn every recorded object into a removal.
pub fn plan(
    listing: Vec<SourceObject>,
    recorded: Vec<WatchedObject>,
    now: DateTime<Utc>,
    seen_resolution: chrono::Duration,
) -> Plan {
    let mut known: HashMap<String, WatchedObject> =
        recorded.into_iter().map(|o| (o.uri.clone(), o)).collect();
    let mut plan = Plan::default();
    for object in listing {
        match known.remove(&object.uri) {
            None => plan.index.push((Change::New, object)),
            Some(old) if !same_object(&old, &object) => plan.index.push((Change::Changed, object)),
            Some(old) => {
                plan.unchanged += 1;
                if now - old.last_seen >= seen_resolution {
                    plan.seen_due.push(old.uri);
                }
            }
        }
    }
    plan.removed = known.into_keys().collect();
    plan.removed.sort();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(uri: &str, e_tag: Option<&str>, size: u64, nanos: i64) -> SourceObject {
        SourceObject {
            uri: uri.into(),
            location: Default::default(),
            size,
            e_tag: e_tag.map(str::to_string),
            last_modified: DateTime::from_timestamp_nanos(nanos),
        }
    }

    fn recorded(o: &SourceObject, seen: DateTime<Utc>) -> WatchedObject {
        WatchedObject::from_listing(o, seen)
    }

    const T: i64 = 1_700_000_000_123_456_789;

    #[test]
    fn new_changed_removed_and_unchanged() {
        let now = Utc::now();
        let hour = chrono::Duration::hours(1);
        let same = listed("s3://b/same", Some("e1"), 5, T);
        let touched_same_etag = listed("s3://b/touched", Some("e2"), 5, T);
        let edited = listed("s3://b/edited", Some("e3"), 5, T);
        let gone = listed("s3://b/gone", Some("e4"), 5, T);
        let state = vec![
            recorded(&same, now),
            recorded(
                &listed("s3://b/touched", Some("e2"), 5, T - 10_000_000_000),
                now,
            ),
            recorded(&listed("s3://b/edited", Some("old"), 5, T), now),
            recorded(&gone, now),
        ];
        let fresh = listed("s3://b/fresh", None, 1, T);
        let p = plan(
            vec![
                edited.clone(),
                fresh.clone(),
                same.clone(),
                touched_same_etag.clone(),
            ],
            state,
            now,
            hour,
        );
        assert_eq!(
            p.index,
            vec![(Change::Changed, edited), (Change::New, fresh)],
            "the ETag decides when both have one"
        );
        assert_eq!(p.removed, vec!["s3://b/gone".to_string()]);
        assert_eq!(p.unchanged, 2);
        assert!(p.seen_due.is_empty(), "seen within the resolution");
    }

    #[test]
    fn without_etags_size_and_mtime_decide_at_microsecond_precision() {
        let now = Utc::now();
        let a = listed("file:///d/a", None, 5, T);
        let state = vec![recorded(&a, now - chrono::Duration::hours(2))];
        // Nanoseconds the database cannot keep do not make the object look changed.
        let p = plan(
            vec![a.clone()],
            state.clone(),
            now,
            chrono::Duration::hours(1),
        );
        assert_eq!((p.index.len(), p.unchanged), (0, 1));
        assert_eq!(p.seen_due, vec!["file:///d/a".to_string()]);

        let grown = listed("file:///d/a", None, 6, T);
        let p = plan(vec![grown], state.clone(), now, chrono::Duration::hours(1));
        assert_eq!(p.index[0].0, Change::Changed);
        let later = listed("file:///d/a", None, 5, T + 1_000);
        let p = plan(vec![later], state, now, chrono::Duration::hours(1));
        assert_eq!(p.index[0].0, Change::Changed);
    }

    #[test]
    fn an_empty_listing_removes_everything_recorded() {
        // Only a listing that succeeded reaches `plan`; an empty one means the objects are gone.
        let now = Utc::now();
        let a = listed("file:///d/a", None, 5, T);
        let p = plan(
            vec![],
            vec![recorded(&a, now)],
            now,
            chrono::Duration::hours(1),
        );
        assert_eq!(p.removed, vec!["file:///d/a".to_string()]);
    }
}
