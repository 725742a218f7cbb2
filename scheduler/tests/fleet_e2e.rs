//! The whole fleet end to end: `sluice enqueue` and another service's raw AMQP publishes feed three
//! `sluice-worker` processes (real RabbitMQ, PostgreSQL, Qdrant stand-in over gRPC, provider
//! emulator); the index must come out exact.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sluice_loadtests::corpus::{CorpusSpec, generate};
use sluice_loadtests::fleet::{Fleet, stop};
use sluice_shared::metadata::{DocStatus, DocumentFilter, MetadataStore};

const DOCUMENTS: usize = 500;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_index_a_generated_corpus_exactly_once() {
    let mut fleet = Fleet::new().await;
    let _emulator = fleet.use_emulator(Duration::from_millis(5)).await;
    fleet
        .env
        .insert("SLUICE_WORKER_CONCURRENCY".into(), "8".into());
    let corpus = fleet.docs.path().join("corpus");
    let spec = CorpusSpec {
        documents: DOCUMENTS,
        doc_bytes: 2_500,
        ..Default::default()
    };
    generate(&corpus, &spec).unwrap();
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), DOCUMENTS);

    // The topology is declared by whoever comes first; workers start before anything is queued.
    let publisher = fleet.publisher().await;
    let workers: Vec<_> = (0..3).map(|_| fleet.worker()).collect();

    // Half through the operator CLI...
    let (by_cli, by_amqp) = files.split_at(DOCUMENTS / 2);
    let out = fleet.sluice().arg("enqueue").args(by_cli).output().unwrap();
    assert!(
        out.status.success(),
        "sluice enqueue: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        by_cli.len(),
        "one confirmed job printed per source"
    );
    // ...half as another service would publish them: the documented JSON, nothing else.
    for path in by_amqp {
        let uri = url::Url::from_file_path(path).unwrap();
        fleet.publish_index(&publisher, uri.as_str()).await;
    }

    fleet
        .wait_for(Duration::from_secs(300), "every document indexed", |c| {
            c.get(&DocStatus::Indexed) == Some(&(DOCUMENTS as i64))
        })
        .await;
    let mut logs = String::new();
    for worker in workers {
        let (code, stderr) = stop(worker, Duration::from_secs(20));
        assert_eq!(code, 0, "worker exit status; stderr:\n{stderr}");
        logs.push_str(&stderr);
    }
    // What the workers said about one document, for a failure message.
    let said_about = |doc_id: &str| -> String {
        let file = doc_id.rsplit('/').next().unwrap_or(doc_id);
        logs.lines()
            .filter(|line| line.contains(file))
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Exact: each document's points are exactly its committed version's chunks.
    let metadata = fleet.metadata().await;
    let records = metadata
        .list_documents(&DocumentFilter::default(), None, DOCUMENTS + 10)
        .await
        .unwrap();
    assert_eq!(records.len(), DOCUMENTS);
    let points = fleet.points().await;
    let ids: HashSet<_> = points.iter().map(|p| p.0).collect();
    assert_eq!(ids.len(), points.len(), "no duplicate point ids");
    let mut per_doc: HashMap<&str, Vec<i64>> = HashMap::new();
    for (_, doc, version) in &points {
        per_doc.entry(doc.as_str()).or_default().push(*version);
    }
    assert_eq!(per_doc.len(), DOCUMENTS, "every document has points");
    let mut expected_chunks = 0;
    for record in &records {
        assert_eq!(
            record.attempts,
            1,
            "{} was processed once (last error: {:?}); the workers logged:\n{}",
            record.doc_id,
            record.last_error,
            said_about(&record.doc_id)
        );
        let versions = &per_doc[record.doc_id.as_str()];
        assert!(
            versions.iter().all(|v| *v == record.current_version),
            "{}: only version {} in the index, found {versions:?}",
            record.doc_id,
            record.current_version
        );
        assert_eq!(
            versions.len() as i64,
            record.chunk_count,
            "{}",
            record.doc_id
        );
        expected_chunks += record.chunk_count;
    }
    assert_eq!(points.len() as i64, expected_chunks);
    assert!(fleet.drain_dlq().await.is_empty(), "nothing dead-lettered");
    fleet.finish().await;
}
