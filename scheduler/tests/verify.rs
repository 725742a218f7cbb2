//! `sluice verify`: the ledger against the index, on one machine (qdrant-edge + SQLite) and in
//! the fleet (PostgreSQL, Qdrant over gRPC, RabbitMQ). Drift is injected through the store and
//! ledger APIs — the states crashes, paused workers and lost leases leave behind — and must be
//! named, repaired, and leave a clean, searchable index.

mod common;

use std::collections::{BTreeSet, HashMap};

use common::*;
use serde_json::Value;
use sluice_shared::embed::{Bm25Encoder, Bm25Settings, SparseEncoder};
use sluice_shared::ids::point_id;
use sluice_shared::metadata::{
    BeginOutcome, BeginRequest, CommitOutcome, CommitRequest, DocumentRecord, Labels,
    MetadataStore, SqliteStore,
};
use sluice_shared::model::{ChunkPayload, Point, Vectors};
use sluice_shared::store::VectorStore;
use sluice_shared::store::edge::EdgeStore;

const REFUND_QUERY: &str = "how many days do I have to return an item for a refund";
const COLLECTION: &str = "sluice";

/// `sluice verify --json [extra]`: exit code and report.
fn verify(ws: &Workspace, extra: &[&str]) -> (i32, Value) {
    let out = ws
        .sluice()
        .args(["verify", "--json"])
        .args(extra)
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), json_stdout("verify", &out))
}

/// (kind, doc_id, version) of every finding listed.
fn findings(report: &Value) -> BTreeSet<(String, String, i64)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["doc_id"].as_str().unwrap().to_string(),
                f["version"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn finding(kind: &str, doc_id: &str, version: i64) -> (String, String, i64) {
    (kind.to_string(), doc_id.to_string(), version)
}

/// Points as the pipeline writes them (BM25 only, as the embedded default), with text of our own.
fn points(doc_id: &str, version: i64, chunks: std::ops::Range<u32>, staged: bool) -> Vec<Point> {
    let bm25 = Bm25Encoder::new(Bm25Settings::default()).unwrap();
    chunks
        .map(|i| {
            let text = format!("Injected chunk {i} of {doc_id}, version {version}.");
            Point {
                id: point_id(COLLECTION, doc_id, version, i),
                vectors: Vectors {
                    dense: None,
                    sparse: bm25.encode_documents(std::slice::from_ref(&text)).remove(0),
                },
                payload: ChunkPayload {
                    doc_id: doc_id.to_string(),
                    source: doc_id.to_string(),
                    title: None,
                    chunk_index: i,
                    page: None,
                    char_start: 0,
                    char_end: text.chars().count() as u64,
                    text,
                    content_hash: "injected".to_string(),
                    version,
                    tenant: None,
                    ingested_at: "2026-01-01T00:00:00Z".to_string(),
                    metadata: Default::default(),
                    staged,
                },
            }
        })
        .collect()
}

/// A workspace whose runs count as gone after 3 s without a sign of life (`SLUICE_LEASE_SECS`),
/// which is also how long `verify` leaves a freshly changed row to the run that changed it.
fn short_lease_workspace() -> Workspace {
    let mut ws = Workspace::new();
    ws.set("SLUICE_LEASE_SECS", "3");
    ws
}

/// Waits out that grace period.
fn settle() {
    std::thread::sleep(std::time::Duration::from_millis(3500));
}

/// The embedded store and ledger of a workspace, opened in this process (no `sluice` running).
struct Embedded {
    rt: tokio::runtime::Runtime,
    store: EdgeStore,
    ledger: SqliteStore,
}

impl Embedded {
    fn open(ws: &Workspace) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (store, ledger) = rt.block_on(async {
            (
                EdgeStore::open(&ws.data().join("qdrant")).await.unwrap(),
                SqliteStore::open(&ws.data().join("metadata.sqlite"))
                    .await
                    .unwrap(),
            )
        });
        Embedded { rt, store, ledger }
    }

    fn record(&self, doc_id: &str) -> DocumentRecord {
        self.rt
            .block_on(self.ledger.get(COLLECTION, doc_id))
            .unwrap()
            .unwrap_or_else(|| panic!("{doc_id} is not in the ledger"))
    }

    /// Takes the document's lease for 10 minutes, as a worker starting a run would.
    fn claim(&self, rec: &DocumentRecord, content_hash: &str) -> (i64, uuid::Uuid, Labels) {
        let outcome = self
            .rt
            .block_on(self.ledger.begin(&BeginRequest {
                collection: COLLECTION.into(),
                doc_id: rec.doc_id.clone(),
                source: rec.source.clone(),
                tenant: None,
                metadata: None,
                content_hash: content_hash.into(),
                fingerprint: rec.fingerprint.clone().unwrap(),
                force: true,
                lease: std::time::Duration::from_secs(600),
            }))
            .unwrap();
        match outcome {
            BeginOutcome::Claimed {
                version,
                lease_token,
                labels,
            } => (version, lease_token, labels),
            other => panic!("{other:?}"),
        }
    }

    fn upsert(&self, points: Vec<Point>) {
        self.rt
            .block_on(self.store.upsert(COLLECTION, points))
            .unwrap();
    }

    fn delete_version(&self, doc_id: &str, version: i64) {
        self.rt
            .block_on(self.store.delete_version(COLLECTION, doc_id, version))
            .unwrap();
    }
}

#[test]
fn embedded_drift_is_named_repaired_and_the_index_stays_searchable() {
    let mut ws = short_lease_workspace();
    // Small chunks, so every document has several and one can lose some of them.
    ws.set("SLUICE_CHUNK_MAX_TOKENS", "64")
        .set("SLUICE_CHUNK_OVERLAP_TOKENS", "8");
    let names = copy_examples(&ws);
    let (code, first) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{first:#}");
    // A second, forced run: every document is at version 2, so version 1 is a real older one.
    let (code, second) = ws.ingest(&ws.docs(), &["--force"]);
    assert_eq!(code, 0, "{second:#}");
    let chunks = second["chunks"].as_u64().unwrap();

    let (code, clean) = verify(&ws, &[]);
    assert_eq!(code, 0, "{clean:#}");
    assert_eq!(clean["documents_checked"], names.len() as u64, "{clean:#}");
    assert_eq!(clean["points_scanned"], chunks, "{clean:#}");
    assert_eq!(clean["drift_total"], 0, "{clean:#}");

    let uri = |name: &str| file_uri(&ws.docs().join(name));
    let refund = uri("refund-policy.pdf");
    let mut others = names.iter().map(|n| uri(n)).filter(|u| *u != refund);
    let (doubled, staged) = (others.next().unwrap(), others.next().unwrap());
    let ghost = "file:///nowhere/ghost.md".to_string();
    {
        let db = Embedded::open(&ws);
        let doubled_rec = db.record(&doubled);
        let refund_rec = db.record(&refund);
        let staged_rec = db.record(&staged);
        assert_eq!(doubled_rec.current_version, 2);
        // The doubled document: the points of a complete older version came back.
        db.upsert(points(
            &doubled,
            1,
            0..doubled_rec.chunk_count as u32,
            false,
        ));
        // Half a document: only its first chunk is left.
        assert!(refund_rec.chunk_count > 1, "{refund_rec:?}");
        db.delete_version(&refund, refund_rec.current_version);
        db.upsert(points(&refund, refund_rec.current_version, 0..1, false));
        // Points of a document the ledger never heard of.
        db.upsert(points(&ghost, 1, 0..3, false));
        // A published version whose points searchers cannot see.
        db.delete_version(&staged, staged_rec.current_version);
        db.upsert(points(
            &staged,
            staged_rec.current_version,
            0..staged_rec.chunk_count as u32,
            true,
        ));
    }
    settle();

    let (code, drift) = verify(&ws, &[]);
    assert_eq!(code, 3, "{drift:#}");
    let expected: BTreeSet<_> = [
        finding("stray_version", &doubled, 1),
        finding("short", &refund, 2),
        finding("orphan", &ghost, 1),
        finding("unpublished", &staged, 2),
    ]
    .into();
    assert_eq!(findings(&drift), expected, "{drift:#}");
    assert_eq!(drift["drift_total"], 4, "{drift:#}");
    // Without --repair nothing changes.
    let (code, again) = verify(&ws, &[]);
    assert_eq!((code, findings(&again)), (3, expected.clone()), "{again:#}");

    let (code, repaired) = verify(&ws, &["--repair"]);
    assert_eq!(code, 3, "drift was found, even if repaired: {repaired:#}");
    assert_eq!(repaired["repair_failures"], 0, "{repaired:#}");
    assert_eq!(repaired["repairs"]["delete_version"], 2, "{repaired:#}");
    assert_eq!(repaired["repairs"]["reindex"], 1, "{repaired:#}");
    assert_eq!(repaired["repairs"]["unstage"], 1, "{repaired:#}");

    let (code, after) = verify(&ws, &[]);
    assert_eq!(code, 0, "{after:#}");
    let points_after = ws.embedded_points(COLLECTION);
    assert_one_version_per_doc(&points_after);
    assert!(points_after.iter().all(|p| p.1 != ghost));
    let hits = ws.search(REFUND_QUERY, &["--top-k", "3"]);
    let top = hits.first().expect("a hit");
    assert_eq!(top["source"].as_str(), Some(refund.as_str()), "{hits:#?}");
}

#[test]
fn a_run_in_flight_is_left_alone() {
    let ws = short_lease_workspace();
    ws.write(
        "otters.md",
        format!("# Otters\n\n{}", paragraphs("otter", 20)),
    );
    let (code, s) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{s:#}");
    let otters = file_uri(&ws.docs().join("otters.md"));
    let in_flight = {
        let db = Embedded::open(&ws);
        let rec = db.record(&otters);
        // A worker holds the otters' lease right now and has written part of its new version.
        let (version, _, _) = db.claim(&rec, "new content");
        db.upsert(points(&otters, version, 0..2, true));
        version
    };
    settle();
    let (code, report) = verify(&ws, &["--repair"]);
    assert_eq!(code, 0, "{report:#}");
    let in_flight_points = ws
        .embedded_points(COLLECTION)
        .iter()
        .filter(|p| p.1 == otters && p.2 == in_flight)
        .count();
    assert_eq!(in_flight_points, 2, "the run's points were touched");
}

#[test]
fn a_commit_whose_publication_crashed_is_published() {
    let ws = short_lease_workspace();
    ws.write(
        "beavers.md",
        format!("# Beavers\n\n{}", paragraphs("beaver", 20)),
    );
    let (code, s) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{s:#}");
    let beavers = file_uri(&ws.docs().join("beavers.md"));
    let committed = {
        let db = Embedded::open(&ws);
        let rec = db.record(&beavers);
        // A forced run wrote and committed version 2, then crashed before publishing it.
        let (version, lease_token, labels) = db.claim(&rec, rec.content_hash.as_deref().unwrap());
        db.upsert(points(&beavers, version, 0..rec.chunk_count as u32, true));
        let outcome = db
            .rt
            .block_on(db.ledger.commit(&CommitRequest {
                collection: COLLECTION,
                doc_id: &beavers,
                lease_token,
                version,
                content_hash: rec.content_hash.as_deref().unwrap(),
                fingerprint: rec.fingerprint.as_deref().unwrap(),
                chunk_count: rec.chunk_count,
                tokens: rec.tokens,
                labels: &labels,
            }))
            .unwrap();
        assert_eq!(outcome, CommitOutcome::Committed);
        version
    };
    settle();
    let (code, report) = verify(&ws, &[]);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(
        findings(&report),
        [finding("unpublished", &beavers, committed)].into(),
        "{report:#}"
    );
    let (code, repaired) = verify(&ws, &["--repair"]);
    assert_eq!(code, 3, "{repaired:#}");
    assert_eq!(repaired["repairs"]["publish"], 1, "{repaired:#}");
    let (code, after) = verify(&ws, &[]);
    assert_eq!(code, 0, "{after:#}");
    // Published, not re-embedded: only the committed version's (injected) points remain.
    let points = ws.embedded_points(COLLECTION);
    assert!(
        points.iter().all(|p| p.1 != beavers || p.2 == committed),
        "{points:?}"
    );
    let hits = ws.search("Injected chunk of beavers", &["--top-k", "1"]);
    assert!(
        hits.first()
            .and_then(|h| h["text"].as_str())
            .is_some_and(|t| t.starts_with("Injected")),
        "{hits:#?}"
    );
}

/// A Pushgateway stand-in: accepts one request, answers 200, hands back the request line and body.
fn capture_one_request() -> (String, std::thread::JoinHandle<(String, String)>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut length = 0;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            if header.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        let mut stream = stream;
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .unwrap();
        (
            request_line.trim().to_string(),
            String::from_utf8(body).unwrap(),
        )
    });
    (url, handle)
}

#[test]
fn the_metrics_of_a_run_are_pushed_to_the_pushgateway() {
    let mut ws = Workspace::new();
    ws.write(
        "otters.md",
        format!("# Otters\n\n{}", paragraphs("otter", 5)),
    );
    let (code, s) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{s:#}");
    let (url, request) = capture_one_request();
    ws.set("SLUICE_METRICS_PUSHGATEWAY", url);
    let (code, report) = verify(&ws, &[]);
    assert_eq!(code, 0, "{report:#}");
    let (line, body) = request.join().unwrap();
    assert_eq!(line, "PUT /metrics/job/sluice_verify HTTP/1.1");
    let points = report["points_scanned"].as_u64().unwrap();
    for expected in [
        "sluice_verify_documents_checked 1".to_string(),
        format!("sluice_verify_points_scanned {points}"),
        "sluice_verify_drift{kind=\"orphan\"} 0".to_string(),
        "sluice_verify_repairs{action=\"reindex\"} 0".to_string(),
        "sluice_verify_last_run_success 1".to_string(),
    ] {
        assert!(body.contains(&expected), "{expected:?} not in\n{body}");
    }
    assert!(
        body.contains("sluice_verify_last_run_timestamp_seconds "),
        "{body}"
    );
}

/// Fleet: PostgreSQL + Qdrant over gRPC (the stand-in) + RabbitMQ. `--repair` does not embed
/// anything itself: it publishes a forced index job for the workers.
#[test]
fn fleet_repair_publishes_a_reindex_job_to_the_work_queue() {
    use sluice_shared::config::{Loader, Settings};
    use sluice_shared::job::JobSpec;
    use sluice_shared::store::qdrant::QdrantStore;

    let servers = Servers::start();
    let db = test_database(&servers);
    let mut ws = Workspace::new();
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    ws.set("SLUICE_QDRANT_URL", servers.qdrant_url.clone())
        .set("SLUICE_DATABASE_URL", db.url.clone())
        .set("SLUICE_COLLECTION", "verify_fleet")
        .set("SLUICE_QUEUE_PREFIX", prefix);
    let env: HashMap<String, String> = ws.env.iter().cloned().collect();
    let settings = Settings::from_loader(&Loader::from_parts(env, None).unwrap()).unwrap();
    let _cleanup = Topology(settings.fleet.queue.clone());

    copy_examples(&ws);
    let (code, s) = ws.ingest(&ws.docs(), &[]);
    assert_eq!(code, 0, "{s:#}");
    let (code, clean) = verify(&ws, &[]);
    assert_eq!(code, 0, "{clean:#}");
    assert_eq!(clean["mode"]["store"], "fleet", "{clean:#}");

    let refund = file_uri(&ws.docs().join("refund-policy.pdf"));
    let url = servers.qdrant_url.clone();
    let doc = refund.clone();
    servers.rt.block_on(async move {
        let store = QdrantStore::connect(&url, None).unwrap();
        // Every point of the committed version is gone.
        let points = store.list_points("verify_fleet").await.unwrap();
        let version = points.iter().find(|p| p.1 == doc).unwrap().2;
        store
            .delete_version("verify_fleet", &doc, version)
            .await
            .unwrap();
    });

    let (code, report) = verify(&ws, &["--repair"]);
    assert_eq!(code, 3, "{report:#}");
    assert_eq!(
        findings(&report),
        [finding("missing", &refund, 1)].into(),
        "{report:#}"
    );
    assert_eq!(report["repairs"]["reindex"], 1, "{report:#}");
    assert_eq!(
        report["mode"]["work_queue"].as_str(),
        Some(settings.fleet.queue.work_queue.as_str())
    );

    let jobs = drain_work_queue(&settings.fleet.queue);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let JobSpec::Index(index) = &jobs[0].spec else {
        panic!("{jobs:?}")
    };
    assert_eq!(index.doc_id.as_deref(), Some(refund.as_str()));
    assert_eq!(index.collection.as_deref(), Some("verify_fleet"));
    assert!(index.force, "missing points need a re-embed: {index:?}");
}
