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

/// The PostgreSQL database a bench run uses: the one given, or a fresh one of its own, dropped
/// when the returned guard is.
pub async fn database(
    given: Option<&String>,
) -> (String, Option<sluice_shared::testing::TestDatabase>) {
    match given {
        Some(url) => (url.clone(), None),
        None => {
            let db = sluice_shared::testing::TestDatabase::create().await;
            (db.url.clone(), Some(db))
        }
    }
}
