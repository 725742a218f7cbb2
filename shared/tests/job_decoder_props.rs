//! Property tests of the job decoder: whatever a producer puts on the queue — arbitrary bytes,
//! arbitrary JSON, or JSON shaped almost like a job — `Job::parse` and `parse_s3_event` return
//! (never panic), every error has a stable kind, and every accepted job parses back from
//! `to_json`.

use proptest::prelude::*;
use serde_json::{Map, Value};
use sluice_shared::job::{Job, JobLimits, parse_s3_event};

const KINDS: [&str; 5] = [
    "malformed_json",
    "unsupported_schema_version",
    "unknown_kind",
    "invalid_job",
    "job_too_large",
];

/// Field names of the contract and of S3 events, so generated objects reach deep into the
/// decoder instead of failing at the first unknown field.
const FIELDS: [&str; 18] = [
    "schema_version",
    "kind",
    "job_id",
    "enqueued_at",
    "source",
    "doc_id",
    "tenant",
    "collection",
    "metadata",
    "priority",
    "force",
    "source_prefix",
    "since",
    "Records",
    "eventName",
    "eventVersion",
    "s3",
    "key",
];

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![Just(1u8), Just(2u8), Just(9u8), Just(10u8)].prop_map(Value::from),
        prop_oneof![
            Just("index".to_string()),
            Just("delete".to_string()),
            Just("reindex".to_string()),
            Just("s3://b/k".to_string()),
            Just("file:///srv/docs/a.md".to_string()),
            Just("ObjectCreated:Put".to_string()),
            Just("2025-03-01T12:00:00Z".to_string()),
            "\\PC{0,40}",
            ".{0,12}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        prop::sample::select(FIELDS.to_vec()).prop_map(String::from),
                        ".{0,8}"
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// An object that is nearly a job: version 1 and a kind most of the time, then anything.
fn arb_job_like() -> impl Strategy<Value = Value> {
    (
        prop::option::weighted(0.9, Just(Value::from(1))),
        prop::option::weighted(
            0.9,
            prop::sample::select(vec!["index", "delete", "reindex", "Index"]).prop_map(Value::from),
        ),
        prop::collection::vec((prop::sample::select(FIELDS.to_vec()), arb_json()), 0..6),
    )
        .prop_map(|(version, kind, fields)| {
            let mut map = Map::new();
            if let Some(v) = version {
                map.insert("schema_version".into(), v);
            }
            if let Some(k) = kind {
                map.insert("kind".into(), k);
            }
            for (name, value) in fields {
                map.insert(name.to_string(), value);
            }
            Value::Object(map)
        })
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let limits = JobLimits {
        max_job_bytes: 4096,
        max_metadata_bytes: 512,
    };
    for result in [Job::parse(bytes), Job::parse_limited(bytes, &limits)] {
        match result {
            Ok(job) => {
                prop_assert!(job.validate().is_ok(), "{job:?}");
                // What a worker re-publishes parses back to the same job (compared without
                // metadata floats, which serde_json round-trips only to within an ulp).
                let again = Job::parse(job.to_json().as_bytes());
                prop_assert!(again.is_ok(), "{:?} from {}", again, job.to_json());
                let again = again.unwrap();
                prop_assert_eq!(&again.job_id, &job.job_id);
                prop_assert_eq!(again.spec.kind(), job.spec.kind());
                prop_assert_eq!(again.enqueued_at, job.enqueued_at);
            }
            Err(e) => {
                prop_assert!(KINDS.contains(&e.kind()), "{e:?}");
                prop_assert!(!e.is_retryable());
                prop_assert!(!e.to_string().is_empty());
            }
        }
    }
    match parse_s3_event(bytes) {
        Ok(jobs) => {
            for job in jobs {
                prop_assert!(job.validate().is_ok(), "{job:?}");
            }
        }
        Err(e) => prop_assert!(KINDS.contains(&e.kind()), "{e:?}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes)?;
    }

    #[test]
    fn arbitrary_json_never_panics(value in arb_json()) {
        check(value.to_string().as_bytes())?;
    }

    #[test]
    fn job_like_objects_parse_or_fail_with_a_kind(value in arb_job_like()) {
        check(value.to_string().as_bytes())?;
    }
}
