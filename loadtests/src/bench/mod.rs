//! `sluice-bench`'s machinery: run `sluice ingest` ([`ingest`]) or a fleet of `sluice-worker`
//! processes ([`fleet`]) over a generated corpus against the provider emulator, then turn the
//! emulator's per-second timeline and the processes' resource usage into figures ([`figures`])
//! and a tokens/s plot ([`plot`]).

pub mod budget;
pub mod coldstart;
pub mod embedded;
pub mod figures;
pub mod fleet;
pub mod ingest;
pub mod plot;
pub mod procs;
