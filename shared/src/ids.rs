//! Stable identifiers: content hashes, point IDs and the pipeline fingerprint.
//!
//! Point ID = UUIDv5 of (collection, doc_id, version, chunk index). The version is part of the key so
//! a new version's points never overwrite the old version's while it is being written: the old chunks
//! keep answering searches until the new ones are all in, then they are deleted. Re-sending the same
//! version (a retry) overwrites the same IDs, so it cannot duplicate.

use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Namespace for Sluice's UUIDv5 point IDs (a fixed random UUID; never change it).
const POINT_NAMESPACE: Uuid = Uuid::from_u128(0x5b1c_e0a7_4e4f_4c3e_9d2a_6f1b_8c7d_2e90);

/// Bump when the payload layout or ID scheme changes: it changes every fingerprint, so everything
/// is re-indexed once instead of being silently mixed.
pub const PIPELINE_SCHEMA: u32 = 1;

pub fn point_id(collection: &str, doc_id: &str, version: i64, chunk_index: u32) -> Uuid {
    // The unit separator cannot occur in collection names and is vanishingly rare in doc ids, so
    // distinct tuples give distinct keys.
    let key = format!("{collection}\u{1f}{doc_id}\u{1f}{version}\u{1f}{chunk_index}");
    Uuid::new_v5(&POINT_NAMESPACE, key.as_bytes())
}

/// SHA-256 of the raw bytes, hex. CPU-bound on large files: call from a blocking thread.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A short hash of everything that changes the points a document produces besides its content.
pub fn pipeline_fingerprint(parts: &[String]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(format!("sluice-pipeline-v{PIPELINE_SCHEMA}").as_bytes());
    for part in parts {
        hasher.update([0x1f]);
        hasher.update(part.as_bytes());
    }
    hex::encode(&hasher.finalize()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_stable_and_distinct() {
        let a = point_id("c", "doc", 1, 0);
        assert_eq!(a, point_id("c", "doc", 1, 0));
        assert_ne!(a, point_id("c", "doc", 2, 0));
        assert_ne!(a, point_id("c", "doc", 1, 1));
        assert_ne!(a, point_id("d", "doc", 1, 0));
        assert_eq!(a.get_version_num(), 5);
    }

    #[test]
    fn fingerprint_changes_with_any_part() {
        let a = pipeline_fingerprint(&["chunker=1".into(), "embed=x".into()]);
        assert_eq!(
            a,
            pipeline_fingerprint(&["chunker=1".into(), "embed=x".into()])
        );
        assert_ne!(
            a,
            pipeline_fingerprint(&["chunker=2".into(), "embed=x".into()])
        );
    }
}
