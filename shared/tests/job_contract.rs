//! The job contract, checked from outside: `schema/job.schema.json` and `Job::parse` must accept
//! and reject exactly the same messages, and every message Sluice itself publishes
//! (`Job::to_json`) must satisfy the schema other services are told to follow.
//!
//! Fixtures: `tests/fixtures/jobs/valid/*.json` (accepted by both), `invalid/<kind>--*.json`
//! (rejected by both; `<kind>` is the `JobError::kind()` label `Job::parse` must give) and
//! `s3/*.json` (S3 / MinIO event notifications from their documentation; `-derived` ones are the
//! documented shape with another event name or key).

use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use sluice_shared::job::{
    DeleteJob, DeleteTarget, IndexJob, Job, JobSpec, ReindexJob, parse_s3_event,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shared/ has a parent")
        .to_path_buf()
}

fn fixtures(sub: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/jobs")
        .join(sub);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn validator() -> jsonschema::Validator {
    let path = repo_root().join("schema/job.schema.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("the schema is JSON");
    jsonschema::meta::validate(&schema).expect("the schema is a valid JSON Schema");
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "the contract promises draft 2020-12"
    );
    jsonschema::options()
        // `date-time` is only an annotation in 2020-12 unless asked; the code enforces it, so
        // the schema check must too.
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
}

fn schema_errors(validator: &jsonschema::Validator, message: &Value) -> Vec<String> {
    validator
        .iter_errors(message)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn valid_fixtures_are_accepted_by_schema_and_code() {
    let validator = validator();
    let files = fixtures("valid");
    assert!(files.len() >= 8, "valid fixtures are missing: {files:?}");
    let mut kinds = std::collections::BTreeSet::new();
    for (name, bytes) in files {
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let errors = schema_errors(&validator, &value);
        assert!(errors.is_empty(), "{name}: schema rejects it: {errors:?}");
        let job =
            Job::parse(&bytes).unwrap_or_else(|e| panic!("{name}: Job::parse rejects it: {e}"));
        kinds.insert(job.spec.kind());
        // What a worker re-publishes (e.g. the scheduler forwarding a job) is still valid and
        // means the same thing.
        let again = job.to_value();
        let errors = schema_errors(&validator, &again);
        assert!(
            errors.is_empty(),
            "{name}: to_json output rejected: {errors:?}"
        );
        assert_eq!(
            Job::parse(again.to_string().as_bytes()).unwrap(),
            job,
            "{name}"
        );
    }
    assert_eq!(kinds.len(), 3, "every kind has a valid fixture: {kinds:?}");
}

#[test]
fn invalid_fixtures_are_rejected_by_schema_and_code_with_the_named_kind() {
    let validator = validator();
    let files = fixtures("invalid");
    assert!(files.len() >= 20, "invalid fixtures are missing: {files:?}");
    let mut labels = std::collections::BTreeSet::new();
    for (name, bytes) in files {
        let (expected, _) = name
            .split_once("--")
            .unwrap_or_else(|| panic!("{name}: name it <error kind>--<what>.json"));
        let err = match Job::parse(&bytes) {
            Ok(job) => panic!("{name}: Job::parse accepted it: {job:?}"),
            Err(err) => err,
        };
        assert_eq!(err.kind(), expected, "{name}: {err}");
        assert!(!err.is_retryable(), "{name}");
        labels.insert(expected.to_string());
        match serde_json::from_slice::<Value>(&bytes) {
            // The schema only sees JSON; malformed bytes are rejected before it applies.
            Err(_) => assert_eq!(expected, "malformed_json", "{name}"),
            Ok(value) => assert!(
                !schema_errors(&validator, &value).is_empty(),
                "{name}: the schema accepts what Job::parse rejects ({err})"
            ),
        }
    }
    let all: std::collections::BTreeSet<String> = [
        "malformed_json",
        "unsupported_schema_version",
        "unknown_kind",
        "invalid_job",
    ]
    .map(String::from)
    .into();
    assert_eq!(labels, all, "every error kind has a fixture");
}

/// Every subset of the optional fields, for every kind, as Sluice publishes it.
fn every_published_shape() -> Vec<Job> {
    let mut metadata = Map::new();
    metadata.insert("team".into(), json!("hr"));
    metadata.insert("nested".into(), json!({"a": [1, 2.5, null]}));
    let since = "2025-02-01T00:00:00.5Z".parse().unwrap();
    let mut specs = Vec::new();
    for source in [
        "file:///srv/docs/a%20b.md",
        "s3://bucket/dir/red flower.jpg",
        "gs://bucket/k",
        "az://container/k.pdf",
    ] {
        for mask in 0u32..64 {
            let on = |bit: u32| mask & (1 << bit) != 0;
            specs.push(JobSpec::Index(IndexJob {
                source: source.into(),
                doc_id: on(0).then(|| "doc-1".into()),
                tenant: on(1).then(|| "acme".into()),
                collection: on(2).then(|| "kb_2025-v1".into()),
                metadata: if on(3) { metadata.clone() } else { Map::new() },
                priority: on(4).then_some(9),
                force: on(5),
            }));
        }
    }
    for target in [
        DeleteTarget::DocId("s3://bucket/dir/a.pdf".into()),
        DeleteTarget::SourcePrefix("s3://bucket/dir/".into()),
        DeleteTarget::SourcePrefix("file:///srv/docs/".into()),
    ] {
        for collection in [None, Some("kb".to_string())] {
            specs.push(JobSpec::Delete(DeleteJob {
                target: target.clone(),
                collection,
            }));
        }
    }
    for mask in 0u32..32 {
        let on = |bit: u32| mask & (1 << bit) != 0;
        specs.push(JobSpec::Reindex(ReindexJob {
            collection: on(0).then(|| "kb".into()),
            tenant: on(1).then(|| "acme".into()),
            source_prefix: on(2).then(|| "gs://bucket/".into()),
            since: on(3).then_some(since),
            force: on(4),
        }));
    }
    let mut jobs = Vec::new();
    for spec in specs {
        let job = Job::new(spec).expect("a valid job");
        // Also without the publisher's stamp, as a job re-published from a hand-written one.
        let mut unstamped = job.clone();
        unstamped.enqueued_at = None;
        jobs.push(job);
        jobs.push(unstamped);
    }
    jobs
}

#[test]
fn every_published_job_satisfies_the_schema_and_parses_back() {
    let validator = validator();
    let jobs = every_published_shape();
    assert_eq!(jobs.len(), 2 * (4 * 64 + 6 + 32));
    for job in jobs {
        let json = job.to_json();
        let value: Value = serde_json::from_str(&json).unwrap();
        let errors = schema_errors(&validator, &value);
        assert!(errors.is_empty(), "{json}: {errors:?}");
        assert_eq!(Job::parse(json.as_bytes()).unwrap(), job, "{json}");
    }
}

#[test]
fn aws_documented_put_event_becomes_one_index_job() {
    let bytes = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jobs/s3/aws-put.json"),
    )
    .unwrap();
    let jobs = parse_s3_event(&bytes).unwrap();
    assert_eq!(jobs.len(), 1);
    let JobSpec::Index(index) = &jobs[0].spec else {
        panic!("{:?}", jobs[0])
    };
    assert_eq!(index.source, "s3://mybucket/HappyFace.jpg");
    assert_eq!(index.effective_doc_id(), "s3://mybucket/HappyFace.jpg");
    assert_eq!(
        jobs[0].enqueued_at.unwrap().to_rfc3339(),
        "1970-01-01T00:00:00+00:00"
    );
    // A redelivered notification is the same job.
    assert_eq!(parse_s3_event(&bytes).unwrap(), jobs);
}

#[test]
fn s3_and_minio_events_map_to_jobs_that_satisfy_the_schema() {
    let validator = validator();
    let expected: &[(&str, &[(&str, &str)])] = &[
        (
            "aws-delete-derived.json",
            &[("delete", "s3://mybucket/reports/red flower (2024).pdf")],
        ),
        ("aws-put.json", &[("index", "s3://mybucket/HappyFace.jpg")]),
        ("aws-test-event.json", &[]),
        (
            "minio-amqp-legacy.json",
            &[("index", "s3://images/myphoto.jpg")],
        ),
        (
            "minio-wrapped-delete-derived.json",
            &[("delete", "s3://docs/team/q1 plan.md")],
        ),
        (
            "minio-wrapped-put.json",
            &[("index", "s3://images/gopher.jpg")],
        ),
    ];
    let files = fixtures("s3");
    assert_eq!(
        files.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        expected.iter().map(|(n, _)| *n).collect::<Vec<_>>()
    );
    for ((name, bytes), (_, want)) in files.iter().zip(expected) {
        let jobs = parse_s3_event(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got: Vec<(&str, String)> = jobs
            .iter()
            .map(|job| match &job.spec {
                JobSpec::Index(i) => ("index", i.source.clone()),
                JobSpec::Delete(DeleteJob {
                    target: DeleteTarget::DocId(id),
                    ..
                }) => ("delete", id.clone()),
                other => panic!("{name}: unexpected {other:?}"),
            })
            .collect();
        let want: Vec<(&str, String)> = want.iter().map(|(k, u)| (*k, u.to_string())).collect();
        assert_eq!(got, want, "{name}");
        for job in jobs {
            let errors = schema_errors(&validator, &job.to_value());
            assert!(errors.is_empty(), "{name}: {errors:?}");
        }
    }
}

#[test]
fn s3_events_ignore_other_event_types_and_folder_markers() {
    let record = |event: &str, key: &str| {
        json!({"eventVersion": "2.1", "eventName": event,
               "s3": {"bucket": {"name": "b"}, "object": {"key": key, "size": 0}}})
    };
    let message = json!({"Records": [
        record("ObjectAccessed:Get", "a.pdf"),
        record("s3:ObjectRestore:Completed", "a.pdf"),
        record("s3:Replication:OperationCompletedReplication", "a.pdf"),
        record("ObjectCreated:Put", "folder/"),
        record("ObjectCreated:CompleteMultipartUpload", "big.pdf"),
        record("s3:ObjectRemoved:DeleteMarkerCreated", "gone.pdf"),
    ]});
    let jobs = parse_s3_event(message.to_string().as_bytes()).unwrap();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert!(matches!(&jobs[0].spec, JobSpec::Index(i) if i.source == "s3://b/big.pdf"));
    assert!(
        matches!(&jobs[1].spec, JobSpec::Delete(d) if d.target == DeleteTarget::DocId("s3://b/gone.pdf".into()))
    );
    assert!(parse_s3_event(br#"{"Records": []}"#).unwrap().is_empty());
}

#[test]
fn bad_s3_events_are_permanent_errors_naming_the_problem() {
    let cases: &[(&[u8], &str, &str)] = &[
        (b"{\"Records\": [", "malformed_json", "malformed JSON"),
        (b"{\"hello\": 1}", "invalid_job", "Records"),
        (b"{\"Records\": {}}", "invalid_job", "Records"),
        (
            br#"{"Records":[{"eventVersion":"3.0","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k"}}}]}"#,
            "unsupported_schema_version",
            "unsupported S3 eventVersion \"3.0\"; this worker understands 2.x",
        ),
        (
            br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{}}}]}"#,
            "invalid_job",
            "Records[0].s3.object.key",
        ),
        (
            br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"bad%zz"}}}]}"#,
            "invalid_job",
            "URL encoding",
        ),
        (
            br#"{"Records":[{"eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"a%0Ab"}}}]}"#,
            "invalid_job",
            "control characters",
        ),
    ];
    for (bytes, kind, text) in cases {
        let err = parse_s3_event(bytes).unwrap_err();
        assert_eq!(err.kind(), *kind, "{err}");
        assert!(
            err.to_string().contains(text),
            "{err} should mention {text}"
        );
        assert!(!err.is_retryable());
    }
}
