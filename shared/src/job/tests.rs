//! Unit tests of parsing, validation and serialisation. The schema-vs-code fixtures and the
//! documented S3 examples live in `shared/tests/job_contract.rs`.

use super::*;

fn parse(text: &str) -> Result<Job, JobError> {
    Job::parse(text.as_bytes())
}

fn invalid_field(text: &str) -> String {
    match parse(text) {
        Err(JobError::Invalid { field, .. }) => field,
        other => panic!("expected invalid_job for {text}, got {other:?}"),
    }
}

#[test]
fn a_minimal_index_job_gets_defaults() {
    let job = parse(r#"{"schema_version":1,"kind":"index","source":"s3://docs/a b.pdf"}"#).unwrap();
    let JobSpec::Index(index) = &job.spec else {
        panic!("not an index job: {job:?}")
    };
    assert_eq!(index.effective_doc_id(), "s3://docs/a b.pdf");
    assert_eq!(index.priority, None);
    assert!(!index.force);
    assert_eq!(job.enqueued_at, None);
    let doc = index.to_document_job("default-coll", Some("acme"));
    assert_eq!(doc.collection, "default-coll");
    assert_eq!(doc.doc_id, "s3://docs/a b.pdf");
    assert_eq!(doc.source, "s3://docs/a b.pdf");
    assert_eq!(doc.tenant.as_deref(), Some("acme"));
}

#[test]
fn a_message_without_job_id_gets_the_same_id_on_every_delivery() {
    let body = r#"{"schema_version":1,"kind":"delete","doc_id":"d1"}"#;
    let first = parse(body).unwrap();
    assert_eq!(first.job_id, parse(body).unwrap().job_id);
    assert_ne!(
        first.job_id,
        parse(r#"{"schema_version":1,"kind":"delete","doc_id":"d2"}"#)
            .unwrap()
            .job_id
    );
    assert!(Uuid::parse_str(&first.job_id).is_ok());
}

#[test]
fn explicit_fields_override_the_worker_defaults() {
    let job = parse(
        r#"{"schema_version":1,"kind":"index","job_id":"j-1","enqueued_at":"2025-03-01T12:00:00.250+01:00",
            "source":"file:///srv/a.md","doc_id":"handbook/a","tenant":"t1","collection":"hr_docs",
            "metadata":{"team":"hr","tags":["a"]},"priority":7,"force":true}"#,
    )
    .unwrap();
    assert_eq!(job.job_id, "j-1");
    assert_eq!(
        job.enqueued_at.unwrap().to_rfc3339(),
        "2025-03-01T11:00:00.250+00:00"
    );
    let JobSpec::Index(index) = &job.spec else {
        panic!()
    };
    let doc = index.to_document_job("default", Some("other"));
    assert_eq!(doc.collection, "hr_docs");
    assert_eq!(doc.doc_id, "handbook/a");
    assert_eq!(doc.tenant.as_deref(), Some("t1"));
    assert_eq!(doc.metadata.as_ref().expect("metadata")["team"], "hr");
    assert!(doc.force);
    assert_eq!(index.priority, Some(7));
}

#[test]
fn schema_version_is_checked_before_anything_else() {
    let err = parse(r#"{"schema_version":2,"kind":"teleport","brand_new_field":1}"#).unwrap_err();
    assert_eq!(err.kind(), "unsupported_schema_version");
    assert_eq!(
        err.to_string(),
        "unsupported schema_version 2; this worker understands 1"
    );
    assert_eq!(
        invalid_field(r#"{"kind":"index","source":"s3://b/k"}"#),
        "schema_version"
    );
    assert_eq!(
        invalid_field(r#"{"schema_version":"1","kind":"index","source":"s3://b/k"}"#),
        "schema_version"
    );
    // 1.0 is the integer 1 to JSON Schema, so it is to us.
    assert!(parse(r#"{"schema_version":1.0,"kind":"delete","doc_id":"x"}"#).is_ok());
}

#[test]
fn each_error_kind_has_its_stable_label() {
    let malformed = parse(r#"{"schema_version":1,"kind":"index","#).unwrap_err();
    assert_eq!(malformed.kind(), "malformed_json");
    assert!(malformed.to_string().starts_with("malformed JSON: "));
    let unknown = parse(r#"{"schema_version":1,"kind":"compact"}"#).unwrap_err();
    assert_eq!(unknown.kind(), "unknown_kind");
    assert_eq!(
        unknown.to_string(),
        r#"unknown kind "compact"; expected one of "index", "delete", "reindex""#
    );
    let invalid =
        parse(r#"{"schema_version":1,"kind":"index","source":"http://x/y"}"#).unwrap_err();
    assert_eq!(invalid.kind(), "invalid_job");
    assert!(
        invalid
            .to_string()
            .starts_with("invalid source: must start with file://")
    );
    for err in [malformed, unknown, invalid] {
        assert!(!err.is_retryable(), "{err}");
    }
    assert_eq!(parse("[1]").unwrap_err().kind(), "invalid_job");
    assert_eq!(parse("").unwrap_err().kind(), "malformed_json");
    assert_eq!(
        invalid_field(r#"{"schema_version":1,"source":"s3://b/k"}"#),
        "kind"
    );
}

#[test]
fn field_errors_name_the_field() {
    let cases = [
        (r#"{"schema_version":1,"kind":"index"}"#, "source"),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://bucket"}"#,
            "source",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3:///key"}"#,
            "source",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"file://"}"#,
            "source",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","priority":10}"#,
            "priority",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","priority":-1}"#,
            "priority",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","priority":2.5}"#,
            "priority",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","collection":"a b"}"#,
            "collection",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","tenant":""}"#,
            "tenant",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","tenant":null}"#,
            "tenant",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","metadata":[1]}"#,
            "metadata",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","force":"yes"}"#,
            "force",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","focre":true}"#,
            "\"focre\"",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","doc_id":"a\u0007b"}"#,
            "doc_id",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","job_id":""}"#,
            "job_id",
        ),
        (
            r#"{"schema_version":1,"kind":"index","source":"s3://b/k","enqueued_at":"2025-03-01 12:00:00Z"}"#,
            "enqueued_at",
        ),
        (
            r#"{"schema_version":1,"kind":"delete","doc_id":"a","source_prefix":"s3://b/"}"#,
            "delete",
        ),
        (r#"{"schema_version":1,"kind":"delete"}"#, "delete"),
        (
            r#"{"schema_version":1,"kind":"delete","source_prefix":"s3://"}"#,
            "source_prefix",
        ),
        (
            r#"{"schema_version":1,"kind":"delete","source_prefix":"file:///"}"#,
            "source_prefix",
        ),
        (
            r#"{"schema_version":1,"kind":"delete","doc_id":"a","tenant":"t"}"#,
            "\"tenant\"",
        ),
        (
            r#"{"schema_version":1,"kind":"reindex","since":"yesterday"}"#,
            "since",
        ),
        (
            r#"{"schema_version":1,"kind":"reindex","source":"s3://b/k"}"#,
            "\"source\"",
        ),
    ];
    for (body, field) in cases {
        assert_eq!(invalid_field(body), field, "{body}");
    }
}

#[test]
fn error_messages_say_what_is_wrong() {
    let err = parse(r#"{"schema_version":1,"kind":"index","source":"s3://b/k","priority":12}"#)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid priority: must be an integer from 0 to 9, got 12"
    );
    let err =
        parse(r#"{"schema_version":1,"kind":"delete","doc_id":"a","source_prefix":"s3://b/"}"#)
            .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid delete: give exactly one of doc_id or source_prefix, not both"
    );
    let long = format!(
        r#"{{"schema_version":1,"kind":"index","source":"ftp://{}"}}"#,
        "x".repeat(3000)
    );
    let err = parse(&long).unwrap_err().to_string();
    assert!(err.len() < 300, "the echoed value is shortened: {err}");
}

#[test]
fn to_json_round_trips_every_kind() {
    let mut metadata = Map::new();
    metadata.insert("lang".into(), "en".into());
    let specs = [
        JobSpec::Index(IndexJob::new("s3://bucket/dir/a.pdf")),
        JobSpec::Index(IndexJob {
            source: "file:///srv/docs/a%20b.md".into(),
            doc_id: Some("a-b".into()),
            tenant: Some("acme".into()),
            collection: Some("kb".into()),
            metadata,
            priority: Some(0),
            force: true,
        }),
        JobSpec::Delete(DeleteJob::doc_id("a-b")),
        JobSpec::Delete(DeleteJob {
            collection: Some("kb".into()),
            ..DeleteJob::source_prefix("gs://bucket/old/")
        }),
        JobSpec::Reindex(ReindexJob::default()),
        JobSpec::Reindex(ReindexJob {
            collection: Some("kb".into()),
            tenant: Some("acme".into()),
            source_prefix: Some("az://container/x".into()),
            since: Some("2025-01-02T03:04:05.123456789Z".parse().unwrap()),
            force: true,
        }),
    ];
    for spec in specs {
        let job = Job::new(spec).unwrap();
        let json = job.to_json();
        assert_eq!(Job::parse(json.as_bytes()).unwrap(), job, "{json}");
    }
}

#[test]
fn to_json_leaves_defaults_out() {
    let job = Job {
        job_id: "j".into(),
        enqueued_at: None,
        spec: JobSpec::Index(IndexJob::new("s3://b/k")),
    };
    assert_eq!(
        job.to_value(),
        serde_json::json!({"schema_version":1,"kind":"index","job_id":"j","source":"s3://b/k"})
    );
}

#[test]
fn new_refuses_an_invalid_job() {
    let err = Job::new(JobSpec::Index(IndexJob {
        priority: Some(12),
        ..IndexJob::new("s3://b/k")
    }))
    .unwrap_err();
    assert_eq!(err.kind(), "invalid_job");
    assert!(Job::new(JobSpec::Delete(DeleteJob::source_prefix("s3://"))).is_err());
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    let limits = JobLimits {
        max_job_bytes: 1024,
        max_metadata_bytes: 256,
    };
    // Not even JSON: the size is checked first, so the error says "too large", not "malformed".
    let err = Job::parse_limited(&[b'{'; 1025], &limits).unwrap_err();
    assert_eq!(err.kind(), "job_too_large");
    assert!(!err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("1025") && text.contains("1024") && text.contains("SLUICE_MAX_JOB_BYTES"),
        "{text}"
    );
}

#[test]
fn metadata_over_its_cap_is_refused_naming_the_setting() {
    let limits = JobLimits {
        max_job_bytes: 64 << 10,
        max_metadata_bytes: 256,
    };
    let body = |len: usize| {
        format!(
            r#"{{"schema_version":1,"kind":"index","source":"s3://b/k","metadata":{{"note":"{}"}}}}"#,
            "x".repeat(len)
        )
    };
    // {"note":"…"} is 11 bytes around the value.
    assert!(Job::parse_limited(body(245).as_bytes(), &limits).is_ok());
    let err = Job::parse_limited(body(246).as_bytes(), &limits).unwrap_err();
    assert_eq!(err.kind(), "job_too_large");
    let text = err.to_string();
    assert!(
        text.starts_with("metadata is 257 bytes") && text.contains("SLUICE_MAX_METADATA_BYTES"),
        "{text}"
    );
    // The default cap applies to Job::parse too.
    let big = body(JobLimits::default().max_metadata_bytes);
    assert_eq!(parse(&big).unwrap_err().kind(), "job_too_large");
}

#[test]
fn identifiers_are_capped_in_bytes_not_characters() {
    let job = |doc_id: &str| {
        format!(r#"{{"schema_version":1,"kind":"index","source":"s3://b/k","doc_id":"{doc_id}"}}"#)
    };
    assert!(parse(&job(&"a".repeat(MAX_ID_BYTES))).is_ok());
    assert_eq!(invalid_field(&job(&"a".repeat(MAX_ID_BYTES + 1))), "doc_id");
    // 342 three-byte characters: few characters, too many bytes for a PostgreSQL index key.
    let wide = "€".repeat(MAX_ID_BYTES / 3 + 1);
    assert!(wide.chars().count() < MAX_ID_BYTES);
    let err = parse(&job(&wide)).unwrap_err().to_string();
    assert!(err.contains("bytes"), "{err}");
    let source = format!("s3://b/{}", "k".repeat(MAX_ID_BYTES));
    assert_eq!(
        invalid_field(&format!(
            r#"{{"schema_version":1,"kind":"index","source":"{source}"}}"#
        )),
        "source"
    );
}
