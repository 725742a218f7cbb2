//! Hostile files through a real `sluice-worker` with default settings (issue 10): every file the
//! loadtests generator writes — a 6 MB single line, a 50 MB text file, 100k nested HTML elements,
//! 1 MB of entities, a 5 MB `data:` URI, UTF-16 without a BOM, 0- and 1-byte files, a PDF that
//! inflates to 1 GiB, a PDF of 100k empty pages — is published at once as a producer would. Each
//! must end, within the stated time, indexed or dead-lettered with its expected kind and a reason
//! naming the file; the worker's peak RSS stays within its memory request; and the worker still
//! indexes an ordinary document afterwards and stops cleanly.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use sluice_loadtests::hostile::{Expect, write_hostile_files};
use sluice_shared::metadata::{DocStatus, MetadataStore};

/// Debug build on a loaded 2-core CI machine, all files at once (release: see the README).
const ALL_END_WITHIN: Duration = Duration::from_secs(420);
/// The worker Deployment's memory request (deploy/k8s/base/worker-deployment.yaml); PDF children
/// are separate processes under their own limit.
const WORKER_RSS_BUDGET_MB: u64 = 1024;

fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("worker alive");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM in /proc/<pid>/status")
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_hostile_file_ends_indexed_or_dead_lettered_and_the_worker_stays_bounded() {
    let fleet = Fleet::new().await;
    let files = write_hostile_files(fleet.docs.path()).unwrap();
    let publisher = fleet.publisher().await;
    let worker = fleet.worker();
    let uri_of = |path: &std::path::Path| url::Url::from_file_path(path).unwrap().to_string();

    let started = Instant::now();
    for file in &files {
        fleet.publish_index(&publisher, &uri_of(&file.path)).await;
    }
    let indexed_expected = files.iter().filter(|f| f.expect == Expect::Indexed).count();
    let failing: Vec<_> = files
        .iter()
        .filter_map(|f| match f.expect {
            Expect::Fails(kind) => Some((f.name.as_str(), kind)),
            Expect::Indexed => None,
        })
        .collect();

    // Indexed in the ledger, or in the DLQ: each file ends one way or the other.
    let metadata = fleet.metadata().await;
    let mut dead: Vec<(String, String)> = Vec::new();
    let mut peak_mb = 0;
    loop {
        dead.extend(fleet.drain_dlq().await);
        peak_mb = peak_mb.max(peak_rss_mb(worker.id()));
        let mut indexed = 0;
        for file in files.iter().filter(|f| f.expect == Expect::Indexed) {
            if let Some(record) = metadata.get("fleet", &uri_of(&file.path)).await.unwrap()
                && record.status == DocStatus::Indexed
            {
                indexed += 1;
            }
        }
        if indexed == indexed_expected && dead.len() >= failing.len() {
            break;
        }
        assert!(
            started.elapsed() < ALL_END_WITHIN,
            "after {:?}: {indexed} of {indexed_expected} indexed; dead-lettered: {dead:#?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = started.elapsed();

    let by_file: HashMap<&str, &(String, String)> = failing
        .iter()
        .filter_map(|(name, _)| Some((*name, dead.iter().find(|(_, r)| r.contains(name))?)))
        .collect();
    for (name, kind) in &failing {
        let (got, reason) = by_file
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in the DLQ: {dead:#?}"));
        assert_eq!(got, kind, "{name}: {reason}");
    }
    assert_eq!(
        dead.len(),
        failing.len(),
        "only the failing files: {dead:#?}"
    );

    // The indexed files are searchable as what they are: one version each, chunks present.
    let points = fleet.points().await;
    for file in files.iter().filter(|f| f.expect == Expect::Indexed) {
        let uri = uri_of(&file.path);
        let record = metadata.get("fleet", &uri).await.unwrap().unwrap();
        let held = points.iter().filter(|(_, doc, _)| *doc == uri).count();
        assert_eq!(held as i64, record.chunk_count, "{}", file.name);
        assert!(held > 0, "{}", file.name);
    }

    // Still healthy: an ordinary document after all that.
    let good = fleet.write("after.md", format!("# After\n\n{}", paragraphs("calm", 4)));
    fleet.publish_index(&publisher, &good).await;
    fleet
        .wait_for(Duration::from_secs(60), "the ordinary document", |c| {
            c.get(&DocStatus::Indexed) == Some(&(indexed_expected as i64 + 1))
        })
        .await;
    peak_mb = peak_mb.max(peak_rss_mb(worker.id()));
    println!(
        "{} hostile files ended in {:.1} s ({indexed_expected} indexed, {} dead-lettered); worker peak RSS {peak_mb} MB",
        files.len(),
        took.as_secs_f64(),
        failing.len()
    );
    assert!(
        peak_mb < WORKER_RSS_BUDGET_MB,
        "worker peak RSS {peak_mb} MB"
    );

    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    fleet.finish().await;
}

/// Jobs naming S3 keys with `?`, `#`, `%`, `+` and spaces (percent-encoded where a URL parser
/// would otherwise cut or decode them), each key beside the object a misreading would name: the
/// worker reads exactly the object the job names. A key with a raw `?` is refused with a reason
/// saying how to encode it, and a job for another bucket is forbidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_keys_with_reserved_characters_name_exactly_one_object() {
    let s3 = sluice_loadtests::s3::S3Server::start();
    let folder = s3.root.path().join("weird/keys");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::create_dir_all(s3.root.path().join("payroll")).unwrap();
    std::fs::write(
        s3.root.path().join("payroll/salaries.md"),
        "# Secret\n\nsalaries",
    )
    .unwrap();
    let mut fleet = Fleet::new().await;
    for (key, value) in s3.env() {
        fleet.env.insert(key, value);
    }
    let allowed = format!("{},s3://weird/keys/", fleet.docs.path().display());
    fleet.env.insert("SLUICE_ALLOWED_SOURCES".into(), allowed);
    // (key under keys/, the URI a producer sends)
    let objects = [
        ("what?.md", "s3://weird/keys/what%3F.md"),
        ("what", "s3://weird/keys/what"),
        ("c#notes.md", "s3://weird/keys/c%23notes.md"),
        ("c", "s3://weird/keys/c"),
        ("100%.md", "s3://weird/keys/100%25.md"),
        ("50%25.md", "s3://weird/keys/50%2525.md"),
        ("50%.md", "s3://weird/keys/50%25.md"),
        ("1+1 = 2.md", "s3://weird/keys/1+1%20=%202.md"),
        ("1 1 = 2.md", "s3://weird/keys/1 1 = 2.md"),
    ];
    let mut hashes = HashMap::new();
    for (i, (key, uri)) in objects.iter().enumerate() {
        let body = format!("# Note {i}\n\nThis note is object {key:?} and nothing else.");
        std::fs::write(folder.join(key), &body).unwrap();
        hashes.insert(*uri, sluice_shared::ids::content_hash(body.as_bytes()));
    }
    let publisher = fleet.publisher().await;
    let worker = fleet.worker();
    for (_, uri) in &objects {
        fleet.publish_index(&publisher, uri).await;
    }
    fleet
        .publish_index(&publisher, "s3://weird/keys/what?.md")
        .await;
    fleet
        .publish_index(&publisher, "s3://payroll/salaries.md")
        .await;

    fleet
        .wait_for(Duration::from_secs(120), "every object indexed", |c| {
            c.get(&DocStatus::Indexed) == Some(&(objects.len() as i64))
        })
        .await;
    let metadata = fleet.metadata().await;
    for (key, uri) in &objects {
        let record = metadata
            .get("fleet", uri)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{key}: no record for {uri}"));
        assert_eq!(
            record.content_hash.as_deref(),
            Some(hashes[uri].as_str()),
            "{key}: {uri} was read from another object"
        );
    }
    let mut dead = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while dead.len() < 2 && Instant::now() < deadline {
        dead.extend(fleet.drain_dlq().await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(dead.len(), 2, "{dead:#?}");
    assert!(
        dead.iter()
            .any(|(_, reason)| reason.contains("what?.md") && reason.contains("%3F")),
        "{dead:#?}"
    );
    assert!(
        dead.iter()
            .any(|(kind, reason)| kind == "forbidden_source" && reason.contains("payroll")),
        "{dead:#?}"
    );

    let (code, stderr) = stop(worker, Duration::from_secs(30));
    assert_eq!(code, 0, "{stderr}");
    fleet.finish().await;
}
