//! Watch mode end to end: the real `sluice watch` and `sluice-worker` binaries against the real
//! RabbitMQ and PostgreSQL and the Qdrant stand-in, watching a local folder and an S3 bucket
//! (s3s-fs, a real S3 server over a folder). A dropped file is indexed, a modified one re-indexed
//! with its stale chunks gone, a deleted one removed; a restarted watcher enqueues nothing that
//! did not change, and a location that cannot be listed deletes nothing.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_loadtests::fleet::{Fleet, stop};
use sluice_loadtests::s3::S3Server;
use sluice_shared::metadata::{DocStatus, MetadataStore};

/// One watched place, addressed both as files on disk (to change it) and as the location and
/// document URIs the watcher and workers use.
struct Place {
    /// Folder whose files are the watched objects.
    dir: PathBuf,
    /// What `sluice watch` is given.
    location: String,
    /// Object name → document URI (= doc id).
    uri: Box<dyn Fn(&str) -> String>,
}

impl Place {
    /// Writes through a hidden temporary file and a rename, so no poll can list a half-written
    /// file (which would be a change of its own).
    fn write(&self, name: &str, text: &str) {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join(name)).unwrap();
    }
}

fn text(word: &str, paragraphs: usize) -> String {
    let body: String = (0..paragraphs)
        .map(|i| format!("Paragraph {i} is about the {word} and its habits in case {i}.\n\n"))
        .collect();
    format!("# The {word}\n\n{body}")
}

/// `sluice watch <location>` polling every second, with stdout and stderr captured.
fn spawn_watcher(fleet: &Fleet, location: &str) -> Child {
    fleet
        .sluice()
        .args(["watch", location])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn sluice watch")
}

/// `sluice watch <location> --once`: (exit code, job lines on stdout, stderr).
fn watch_once(fleet: &Fleet, location: &str) -> (i32, Vec<String>, String) {
    let out = fleet
        .sluice()
        .args(["watch", location, "--once"])
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Versions of `doc` in the vector store, and how many points each has.
async fn versions(fleet: &Fleet, doc: &str) -> std::collections::BTreeMap<i64, usize> {
    let mut out = std::collections::BTreeMap::new();
    for (_, d, v) in fleet.points().await {
        if d == doc {
            *out.entry(v).or_insert(0) += 1;
        }
    }
    out
}

/// The document's version when it is indexed and the vector store holds that version only.
async fn only_version(fleet: &Fleet, metadata: &impl MetadataStore, doc: &str) -> Option<i64> {
    let record = metadata.get("fleet", doc).await.unwrap()?;
    let stored: Vec<i64> = versions(fleet, doc).await.into_keys().collect();
    (record.status == DocStatus::Indexed && stored == [record.current_version])
        .then_some(record.current_version)
}

/// Polls `check` every 200 ms until it returns `Some`, or panics naming `what`.
async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn search(fleet: &Fleet, query: &str) -> Vec<Value> {
    let out = fleet
        .sluice()
        .args(["search", query, "--json", "--top-k", "3"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "search failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The whole lifecycle against one place; the place's objects must already be reachable by the
/// fleet's environment (AWS_* for S3). `break_listing` makes the location unlistable and returns
/// a function that repairs it.
async fn watch_lifecycle(fleet: &Fleet, place: &Place, break_listing: impl Fn() -> Box<dyn Fn()>) {
    let metadata = fleet.metadata().await;
    let worker = fleet.worker();
    // `keep.md` exists before the watcher starts and never changes: a restart must not re-enqueue it.
    place.write("keep.md", &text("lighthouse", 3));
    let mut watcher = spawn_watcher(fleet, &place.location);
    let mut watcher_out = watcher.stdout.take().unwrap();

    // Dropped in while watching: indexed.
    let a = (place.uri)("a.md");
    place.write("a.md", &text("aardvark", 12));
    let v1 = eventually(Duration::from_secs(60), "a.md indexed", || {
        only_version(fleet, &metadata, &a)
    })
    .await;

    // Modified: a new version, the old version's chunks gone, the new text found.
    place.write("a.md", &text("zeppelin", 5));
    let v2 = eventually(
        Duration::from_secs(60),
        "a.md re-indexed with only the new version's chunks",
        || async { only_version(fleet, &metadata, &a).await.filter(|&v| v > v1) },
    )
    .await;
    let points = versions(fleet, &a).await;
    let record = metadata.get("fleet", &a).await.unwrap().unwrap();
    assert_eq!(points[&v2] as i64, record.chunk_count);
    let hits = search(fleet, "zeppelin habits");
    assert_eq!(hits[0]["doc_id"], a.as_str(), "{hits:#?}");
    assert!(hits[0]["text"].as_str().unwrap().contains("zeppelin"));
    assert!(
        search(fleet, "aardvark")
            .iter()
            .all(|h| !h["text"].as_str().unwrap().contains("aardvark")),
        "stale text is not searchable"
    );

    // Deleted: its points go and the document is marked deleted.
    std::fs::remove_file(place.dir.join("a.md")).unwrap();
    eventually(Duration::from_secs(60), "a.md deleted", || async {
        let record = metadata.get("fleet", &a).await.unwrap()?;
        (record.status == DocStatus::Deleted && versions(fleet, &a).await.is_empty()).then_some(())
    })
    .await;

    let (code, stderr) = stop(watcher, Duration::from_secs(10));
    assert_eq!(code, 0, "the watcher stops cleanly on SIGTERM: {stderr}");
    let mut printed = String::new();
    watcher_out.read_to_string(&mut printed).unwrap();
    let mut jobs: Vec<String> = printed
        .lines()
        .map(|l| {
            l.split_once(' ')
                .expect("<job id> <change> <uri>")
                .1
                .to_string()
        })
        .collect();
    jobs.sort();
    let keep = (place.uri)("keep.md");
    let mut expected = vec![
        format!("changed {a}"),
        format!("new {a}"),
        format!("new {keep}"),
        format!("removed {a}"),
    ];
    expected.sort();
    assert_eq!(jobs, expected, "one job per change, nothing else");

    // Restarted: nothing changed, nothing enqueued.
    let (code, jobs, stderr) = watch_once(fleet, &place.location);
    assert_eq!(
        (code, jobs.len()),
        (0, 0),
        "restart re-enqueued {jobs:?}: {stderr}"
    );
    assert!(stderr.contains("enqueued 0 job(s)"), "{stderr}");
    // A change made while no watcher ran is picked up by the next one.
    place.write("b.md", &text("bicycle", 2));
    let (code, jobs, stderr) = watch_once(fleet, &place.location);
    assert_eq!(code, 0, "{stderr}");
    let b = (place.uri)("b.md");
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert!(jobs[0].ends_with(&format!(" new {b}")), "{jobs:?}");

    // Indexed before the location breaks below, or the worker could not read it.
    eventually(Duration::from_secs(60), "b.md indexed", || async {
        let record = metadata.get("fleet", &b).await.unwrap()?;
        (record.status == DocStatus::Indexed).then_some(())
    })
    .await;

    // A location that cannot be listed: reported, and nothing is deleted.
    let repair = break_listing();
    let (code, jobs, stderr) = watch_once(fleet, &place.location);
    assert_eq!(code, 3, "a failed listing is a partial failure: {stderr}");
    assert!(
        jobs.is_empty(),
        "no deletes after a failed listing: {jobs:?}"
    );
    assert!(stderr.contains("listing failed"), "{stderr}");
    repair();
    let (code, jobs, stderr) = watch_once(fleet, &place.location);
    assert_eq!((code, jobs.len()), (0, 0), "{jobs:?}: {stderr}");

    for doc in [&keep, &b] {
        assert_eq!(
            versions(fleet, doc).await.len(),
            1,
            "{doc} keeps exactly one version"
        );
    }
    let (code, stderr) = stop(worker, Duration::from_secs(20));
    assert_eq!(code, 0, "{stderr}");
}

fn rename_away(dir: &Path) -> Box<dyn Fn()> {
    let aside = dir.with_extension("aside");
    std::fs::rename(dir, &aside).unwrap();
    let dir = dir.to_path_buf();
    Box::new(move || std::fs::rename(&aside, &dir).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_a_local_folder() {
    let mut fleet = Fleet::new().await;
    fleet
        .env
        .insert("SLUICE_WATCH_INTERVAL_SECS".into(), "1".into());
    let dir = fleet.docs.path().join("watched");
    std::fs::create_dir_all(&dir).unwrap();
    let base = url::Url::from_directory_path(std::fs::canonicalize(&dir).unwrap())
        .unwrap()
        .to_string();
    let place = Place {
        dir: dir.clone(),
        location: dir.to_string_lossy().into_owned(),
        uri: Box::new(move |name| format!("{base}{name}")),
    };
    watch_lifecycle(&fleet, &place, || rename_away(&dir)).await;
    fleet.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_an_s3_bucket() {
    let s3 = S3Server::start();
    let mut fleet = Fleet::new().await;
    // The watcher lists the bucket and the worker reads the objects: both need the endpoint.
    fleet
        .env
        .insert("SLUICE_WATCH_INTERVAL_SECS".into(), "1".into());
    fleet.env.extend(s3.env());
    // The workers may read the watched prefix.
    let allowed = format!("{},s3://handbook/policies/", fleet.docs.path().display());
    fleet.env.insert("SLUICE_ALLOWED_SOURCES".into(), allowed);
    let bucket = s3.root.path().join("handbook");
    let dir = bucket.join("policies");
    std::fs::create_dir_all(&dir).unwrap();
    let place = Place {
        dir,
        location: "s3://handbook/policies/".into(),
        uri: Box::new(|name| format!("s3://handbook/policies/{name}")),
    };
    // A missing bucket: the server answers NoSuchBucket at once.
    watch_lifecycle(&fleet, &place, || rename_away(&bucket)).await;
    fleet.finish().await;
}
