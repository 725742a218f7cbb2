//! What a chaos run feeds the fleet and what it must end with: the corpus (good documents, bad
//! files, poison messages), the seeded schedule of faults, changes and deletes, and the
//! generator's expectation for every document — kept up to date as the run rewrites and deletes
//! files, so the audit compares the fleet with the truth, document by document.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::corpus::{CorpusSpec, generate};

/// What the fleet must end with for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// Indexed, once, with exactly this content (SHA-256 of the file's final bytes).
    Indexed { content_hash: String },
    /// Deleted by a delete job: no points, not indexed.
    Deleted,
    /// A bad file: failed, in the DLQ with a reason, no points.
    DeadLettered,
}

/// One document of the run.
#[derive(Debug, Clone)]
pub struct Doc {
    /// File name, for reports.
    pub name: String,
    /// `file://` URI: the job's source and the document id.
    pub uri: String,
    pub path: PathBuf,
    pub expect: Expect,
    /// Its first index job has been published.
    pub published: bool,
    /// Rewritten during the run (a change).
    pub changes: u32,
}

/// Messages that are not jobs at all: each must end in the DLQ exactly as published.
pub const POISON: [&str; 3] = [
    "{this is not json",
    r#"{"schema_version":99,"kind":"index","source":"file:///chaos/from-the-future.md"}"#,
    r#"{"schema_version":1,"kind":"explode","source":"file:///chaos/unknown-kind.md"}"#,
];

/// Every document of the run, by URI, and what is expected of it.
#[derive(Debug, Default)]
pub struct Book {
    pub docs: BTreeMap<String, Doc>,
}

/// SHA-256 hex of `bytes`, as sluice's ledger and payload record it.
pub fn content_hash(bytes: &[u8]) -> String {
    sluice_shared::ids::content_hash(bytes)
}

fn file_uri(path: &Path) -> String {
    url::Url::from_file_path(path)
        .expect("absolute corpus path")
        .to_string()
}

impl Book {
    /// Generates `documents` good documents (the benchmark corpus) and `bad` bad files (corrupt
    /// PDFs and sources that do not exist) into `dir`.
    pub fn generate(
        dir: &Path,
        documents: usize,
        doc_bytes: usize,
        bad: usize,
        seed: u64,
    ) -> std::io::Result<Book> {
        generate(
            dir,
            &CorpusSpec {
                documents,
                doc_bytes,
                seed,
                ..Default::default()
            },
        )?;
        let mut book = Book::default();
        let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        paths.sort();
        for path in paths {
            let bytes = std::fs::read(&path)?;
            book.add(
                path,
                Expect::Indexed {
                    content_hash: content_hash(&bytes),
                },
            );
        }
        for i in 0..bad {
            let path = if i % 2 == 0 {
                let path = dir.join(format!("bad-{i:03}-corrupt.pdf"));
                std::fs::write(&path, b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage\n")?;
                path
            } else {
                dir.join(format!("bad-{i:03}-missing.md"))
            };
            book.add(path, Expect::DeadLettered);
        }
        Ok(book)
    }

    fn add(&mut self, path: PathBuf, expect: Expect) {
        let uri = file_uri(&path);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.docs.insert(
            uri.clone(),
            Doc {
                name,
                uri,
                path,
                expect,
                published: false,
                changes: 0,
            },
        );
    }

    /// URIs in a fixed order (the map's), for seeded choices.
    pub fn uris(&self) -> Vec<String> {
        self.docs.keys().cloned().collect()
    }

    /// Good documents already published and neither deleted nor bad.
    pub fn live_published(&self) -> Vec<String> {
        self.docs
            .values()
            .filter(|d| d.published && matches!(d.expect, Expect::Indexed { .. }))
            .map(|d| d.uri.clone())
            .collect()
    }

    /// Rewrites `uri` with new content of the same format (revision `n`); returns its hash.
    pub fn change(&mut self, uri: &str, rng: &mut StdRng) -> std::io::Result<()> {
        let doc = self.docs.get_mut(uri).expect("a known document");
        doc.changes += 1;
        let paras: Vec<String> = (0..rng.random_range(2..8))
            .map(|p| {
                let words: Vec<String> = (0..rng.random_range(20..60))
                    .map(|_| format!("w{}", rng.random_range(0..5000u32)))
                    .collect();
                format!(
                    "Revision {} paragraph {p} of {}: {}.",
                    doc.changes,
                    doc.name,
                    words.join(" ")
                )
            })
            .collect();
        let bytes = if doc.name.ends_with(".pdf") {
            crate::corpus::pdf(&paras)
        } else if doc.name.ends_with(".html") {
            format!(
                "<!doctype html><html><head><title>{}</title></head><body>{}</body></html>",
                doc.name,
                paras
                    .iter()
                    .map(|p| format!("<p>{p}</p>"))
                    .collect::<String>()
            )
            .into_bytes()
        } else {
            paras.join("\n\n").into_bytes()
        };
        // Write-then-rename: a worker reading mid-rewrite sees the old or the new file, never
        // half of each (a torn read would be a test artefact, not a sluice bug).
        let tmp = doc.path.with_extension("tmp-rewrite");
        std::fs::write(&tmp, &bytes)?;
        std::fs::rename(&tmp, &doc.path)?;
        doc.expect = Expect::Indexed {
            content_hash: content_hash(&bytes),
        };
        Ok(())
    }

    /// Deletes `uri`'s file: a later index job for it can only fail, never resurrect it.
    pub fn delete(&mut self, uri: &str) -> std::io::Result<()> {
        let doc = self.docs.get_mut(uri).expect("a known document");
        std::fs::remove_file(&doc.path)?;
        doc.expect = Expect::Deleted;
        Ok(())
    }
}

/// One step of the chaos schedule.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Publish the index jobs of these documents (by position in [`Book::uris`]).
    Publish(Vec<usize>),
    /// Publish the poison messages.
    PublishPoison,
    /// Publish an index job again for a random published document.
    Duplicate,
    /// Rewrite a random published document and publish its job again.
    Change,
    /// Delete a random published, unchanged document's file and publish a delete job.
    Delete,
    /// SIGKILL a random running worker (restarted [`RESTART_AFTER`] later).
    Kill,
    /// SIGSTOP a random running worker for the given time, then SIGCONT; meanwhile (after its
    /// lease ran out) publish the jobs of every document still `processing` again, so another
    /// worker takes over what the frozen one holds — as a redelivery or a producer's retry would.
    Freeze(Duration),
    /// Close every broker connection (and refuse new ones) for the given time.
    CutBroker(Duration),
    CutPostgres(Duration),
    CutQdrant(Duration),
    /// Kill the Qdrant process and start it again over its storage.
    RestartQdrant,
    /// Every embedding request gets a 5xx answer for this long.
    Storm5xx(Duration),
    /// Every embedding request gets 429 with `Retry-After: 1` for this long.
    Storm429(Duration),
}

/// A killed worker comes back after this long.
pub const RESTART_AFTER: Duration = Duration::from_secs(1);

/// How hard a run shakes the fleet.
#[derive(Debug, Clone)]
pub struct Intensity {
    /// Length of the chaos phase (publishing, faults, changes); the drain follows.
    pub chaos: Duration,
    /// Each of PostgreSQL and Qdrant is cut this long, once; provider storms last as long.
    pub outage: Duration,
    /// The workers' lease; a freeze lasts 1.5 times this.
    pub lease: Duration,
    /// SIGKILL a worker every this long, give or take half.
    pub kill_every: Duration,
    /// Documents in the corpus (published in waves over the first 60% of the chaos).
    pub documents: usize,
    /// Share of documents changed / deleted during the run.
    pub change_share: f64,
    pub delete_share: f64,
    /// Extra publishes of jobs already sent.
    pub duplicates: usize,
    /// Workers frozen (SIGSTOP for 1.5 leases), one after the other.
    pub freezes: usize,
}

/// The seeded schedule: `(offset from the start, action)`, sorted by offset.
pub fn schedule(intensity: &Intensity, seed: u64) -> Vec<(Duration, Action)> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xc4a0_5eed);
    let d = intensity.chaos.as_secs_f64();
    let at = |share: f64| Duration::from_secs_f64(d * share);
    let mut plan: Vec<(Duration, Action)> = Vec::new();

    // The corpus arrives in waves, so there is always work in flight for the faults to hit.
    let waves = 10usize;
    let n = intensity.documents;
    for w in 0..waves {
        let range: Vec<usize> = (w * n / waves..(w + 1) * n / waves).collect();
        plan.push((at(0.6 * w as f64 / waves as f64), Action::Publish(range)));
    }
    plan.push((at(0.3), Action::PublishPoison));

    let mut t = intensity.kill_every.as_secs_f64() * rng.random_range(0.5..1.5);
    while t < d * 0.9 {
        plan.push((Duration::from_secs_f64(t), Action::Kill));
        t += intensity.kill_every.as_secs_f64() * rng.random_range(0.5..1.5);
    }
    let freeze = intensity.lease.mul_f64(1.5);
    for i in 0..intensity.freezes {
        let share = 0.15 + 0.7 * i as f64 / intensity.freezes.max(1) as f64;
        plan.push((at(share), Action::Freeze(freeze)));
    }
    plan.push((at(0.35), Action::CutBroker(Duration::from_secs(2))));
    plan.push((at(0.42), Action::CutPostgres(intensity.outage)));
    plan.push((at(0.62), Action::CutQdrant(intensity.outage)));
    plan.push((at(0.8), Action::RestartQdrant));
    plan.push((at(0.12), Action::Storm5xx(intensity.outage)));
    plan.push((at(0.5), Action::Storm429(intensity.outage)));
    plan.push((at(0.75), Action::Storm5xx(intensity.outage / 2)));

    let changes = (n as f64 * intensity.change_share).round() as usize;
    let deletes = (n as f64 * intensity.delete_share).round() as usize;
    for (count, action) in [
        (changes, Action::Change),
        (deletes, Action::Delete),
        (intensity.duplicates, Action::Duplicate),
    ] {
        for _ in 0..count {
            plan.push((at(rng.random_range(0.1..0.85)), action.clone()));
        }
    }
    plan.sort_by_key(|(t, _)| *t);
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intensity() -> Intensity {
        Intensity {
            chaos: Duration::from_secs(60),
            outage: Duration::from_secs(4),
            lease: Duration::from_secs(6),
            kill_every: Duration::from_secs(6),
            documents: 100,
            change_share: 0.15,
            delete_share: 0.08,
            duplicates: 20,
            freezes: 3,
        }
    }

    #[test]
    fn the_schedule_is_seeded_and_covers_every_fault() {
        let a = schedule(&intensity(), 1);
        assert_eq!(a, schedule(&intensity(), 1));
        assert_ne!(a, schedule(&intensity(), 2));
        let published: usize = a
            .iter()
            .map(|(_, x)| match x {
                Action::Publish(docs) => docs.len(),
                _ => 0,
            })
            .sum();
        assert_eq!(published, 100, "every document published once");
        let has = |f: fn(&Action) -> bool| a.iter().any(|(_, x)| f(x));
        assert!(has(|x| matches!(x, Action::Kill)));
        assert!(has(
            |x| matches!(x, Action::Freeze(d) if *d == Duration::from_secs(9))
        ));
        assert!(has(|x| matches!(x, Action::CutBroker(_))));
        assert!(has(|x| matches!(x, Action::CutPostgres(_))));
        assert!(has(|x| matches!(x, Action::CutQdrant(_))));
        assert!(has(|x| matches!(x, Action::RestartQdrant)));
        assert!(has(|x| matches!(x, Action::Storm429(_))));
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0), "sorted");
        assert!(a.iter().all(|(t, _)| *t < Duration::from_secs(60)));
    }

    #[test]
    fn changes_and_deletes_update_the_expectation() {
        let dir = tempfile::tempdir().unwrap();
        let mut book = Book::generate(dir.path(), 8, 1_000, 2, 3).unwrap();
        assert_eq!(book.docs.len(), 10);
        let bad = book
            .docs
            .values()
            .filter(|d| d.expect == Expect::DeadLettered)
            .count();
        assert_eq!(bad, 2);
        let uris = book.uris();
        let good = uris
            .iter()
            .find(|u| matches!(book.docs[*u].expect, Expect::Indexed { .. }))
            .unwrap()
            .clone();
        let before = book.docs[&good].expect.clone();
        let mut rng = StdRng::seed_from_u64(1);
        book.change(&good, &mut rng).unwrap();
        let after = book.docs[&good].expect.clone();
        assert_ne!(before, after);
        let bytes = std::fs::read(&book.docs[&good].path).unwrap();
        assert_eq!(
            after,
            Expect::Indexed {
                content_hash: content_hash(&bytes)
            }
        );
        book.delete(&good).unwrap();
        assert_eq!(book.docs[&good].expect, Expect::Deleted);
        assert!(!book.docs[&good].path.exists());
    }
}
