//! # Sluice library
//!
//! Everything the `sluice` CLI, the `sluice-worker` and the test rig share. A document travels
//! through one stage per module, each behind a narrow trait:
//!
//! ```text
//!  source ──► extract ──► chunk ──► embed ──► store ──► metadata (commit)
//!  (read)     (sniff,      (token    (dense +   (Qdrant    (version, status,
//!              PDF child)   sized)    BM25)      wait=true) lease released)
//! ```
//!
//! [`pipeline`] composes the stages for one document and owns the idempotency rules (unchanged
//! detection, versioned point IDs, write-new-then-delete-old); the binaries only decide where
//! documents come from and how many run at once.

pub mod chunk;
pub mod config;
pub mod embed;
pub mod extract;
pub mod ids;
pub mod job;
pub mod memory;
pub mod metadata;
pub mod metrics;
pub mod model;
pub mod ops;
pub mod pipeline;
pub mod queue;
pub mod reindex;
pub mod secret;
pub mod shutdown;
pub mod source;
pub mod store;
pub mod telemetry;
#[doc(hidden)]
pub mod testing;
pub mod usage;
pub mod verify;
pub mod wiring;
