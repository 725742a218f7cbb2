//! S3 event notifications → jobs. A bucket (AWS S3, or MinIO through its AMQP target) can
//! publish its object events straight onto a Sluice queue; each record becomes an ordinary
//! [`Job`], so the worker handles both message shapes the same way from here on.
//!
//! Formats relied on:
//! - AWS, "Event message structure"
//!   (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/notification-content-structure.html>):
//!   `{"Records":[{"eventVersion":"2.1","eventTime":..,"eventName":"ObjectCreated:Put",
//!   "s3":{"bucket":{"name":..},"object":{"key":..,"size":..,"eTag":..,"sequencer":..}}}]}`.
//!   "The object key name value is URL encoded. For example, "red flower.jpg" becomes
//!   "red+flower.jpg"". Applications should ignore unknown fields and compare the *major*
//!   `eventVersion`. On configuration S3 sends a test message
//!   `{"Service":"Amazon S3","Event":"s3:TestEvent",...}` with no `Records`.
//! - MinIO, "Bucket Notification Guide" (`docs/bucket/notifications/README.md` in minio/minio):
//!   the same records with `eventName` spelled `s3:ObjectCreated:Put`, wrapped as
//!   `{"EventName":..,"Key":"bucket/key","Records":[..]}` (older releases added `level`, `msg`,
//!   `time` instead); `responseElements` may be empty and `eTag` missing. MinIO query-escapes the
//!   key too, so `/` may arrive as `%2F`.
//!
//! Mapping: `ObjectCreated:*` → index `s3://bucket/key` (key URL-decoded); `ObjectRemoved:*`
//! (including `DeleteMarkerCreated`) → delete by doc_id `s3://bucket/key`; every other event
//! (`ObjectAccessed:*`, `ObjectRestore:*`, replication, lifecycle transitions, the test event)
//! yields no job. Keys ending in `/` are folder placeholders and are skipped. One bad record fails
//! the whole message, so nothing in it is dropped without a trace in the dead-letter queue.

use serde_json::{Map, Value};

use super::rules::{parse_rfc3339, shorten, type_name};
use super::{DeleteJob, IndexJob, Job, JobError, JobSpec, derived_job_id_from};

/// The S3 event format major version this code reads (AWS: "do an equal-to comparison on the
/// major version number").
const SUPPORTED_EVENT_MAJOR: &str = "2";

/// Parse one S3 / MinIO event notification into the jobs it implies (possibly none).
pub fn parse_s3_event(bytes: &[u8]) -> Result<Vec<Job>, JobError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| JobError::MalformedJson {
        detail: e.to_string(),
    })?;
    let Value::Object(top) = value else {
        return Err(JobError::invalid(
            "message",
            format!(
                "an S3 event notification is a JSON object, got {}",
                type_name(&value)
            ),
        ));
    };
    let records = match top.get("Records") {
        Some(Value::Array(records)) => records,
        Some(other) => {
            return Err(JobError::invalid(
                "Records",
                format!("must be an array, got {}", type_name(other)),
            ));
        }
        None if is_test_event(&top) => return Ok(Vec::new()),
        None => {
            return Err(JobError::invalid(
                "Records",
                "missing: not an S3 event notification",
            ));
        }
    };
    let mut jobs = Vec::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        if let Some(job) = record_to_job(record).map_err(|e| in_record(index, e))? {
            jobs.push(job);
        }
    }
    Ok(jobs)
}

/// AWS's configuration test message: `"Event": "s3:TestEvent"`.
fn is_test_event(top: &Map<String, Value>) -> bool {
    top.get("Event").and_then(Value::as_str) == Some("s3:TestEvent")
}

/// Prefix an error with the record it came from: `Records[2].s3.object.key: ...`.
fn in_record(index: usize, error: JobError) -> JobError {
    match error {
        JobError::Invalid { field, reason } => JobError::Invalid {
            field: format!("Records[{index}].{field}"),
            reason,
        },
        other => other,
    }
}

/// What a record asks for, by its `eventName`.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    Index,
    Delete,
    Ignore,
}

fn action(event_name: &str) -> Action {
    // AWS writes "ObjectCreated:Put", MinIO and the configuration syntax "s3:ObjectCreated:Put".
    let name = event_name.strip_prefix("s3:").unwrap_or(event_name);
    if name.starts_with("ObjectCreated:") {
        Action::Index
    } else if name.starts_with("ObjectRemoved:") {
        Action::Delete
    } else {
        Action::Ignore
    }
}

fn str_at<'a>(record: &'a Value, path: &[&str]) -> Result<&'a str, JobError> {
    let field = path.join(".");
    let mut at = record;
    for step in path {
        at = at
            .get(step)
            .ok_or_else(|| JobError::invalid(&field, "missing"))?;
    }
    at.as_str().ok_or_else(|| {
        JobError::invalid(&field, format!("must be a string, got {}", type_name(at)))
    })
}

fn record_to_job(record: &Value) -> Result<Option<Job>, JobError> {
    if !record.is_object() {
        return Err(JobError::invalid(
            "record",
            format!("must be a JSON object, got {}", type_name(record)),
        ));
    }
    if let Some(version) = record.get("eventVersion").and_then(Value::as_str) {
        let major = version.split('.').next().unwrap_or_default();
        if major != SUPPORTED_EVENT_MAJOR {
            return Err(JobError::UnsupportedSchemaVersion {
                field: "S3 eventVersion",
                found: shorten(version),
                supported: "2.x",
            });
        }
    }
    let event_name = str_at(record, &["eventName"])?;
    let action = action(event_name);
    if action == Action::Ignore {
        return Ok(None);
    }
    let bucket = str_at(record, &["s3", "bucket", "name"])?;
    let raw_key = str_at(record, &["s3", "object", "key"])?;
    let key = decode_key(raw_key).ok_or_else(|| {
        JobError::invalid(
            "s3.object.key",
            format!("is not valid URL encoding of UTF-8: {}", shorten(raw_key)),
        )
    })?;
    if bucket.is_empty() || key.is_empty() {
        return Err(JobError::invalid(
            "s3",
            "bucket name and object key must not be empty",
        ));
    }
    if key.ends_with('/') {
        // A zero-byte "folder" placeholder (what consoles create for "new folder"): no document.
        return Ok(None);
    }
    // Encoded so a key with `%`, `?` or `#` names the same object when the URI is read back.
    let uri = crate::source::object_uri("s3", bucket, &key);
    // Redeliveries of the same notification get the same job id; the sequencer (or, failing
    // that, eTag and event time) tells two events on one key apart.
    let object = record.pointer("/s3/object");
    let distinguisher = [
        object.and_then(|o| o.get("sequencer")),
        object.and_then(|o| o.get("eTag")),
        record.get("eventTime"),
    ]
    .iter()
    .flatten()
    .filter_map(|v| v.as_str())
    .collect::<Vec<_>>()
    .join("|");
    let job_id = derived_job_id_from(&["s3-event", event_name, &uri, &distinguisher]);
    let enqueued_at = record
        .get("eventTime")
        .and_then(Value::as_str)
        .and_then(parse_rfc3339);
    let spec = match action {
        Action::Index => JobSpec::Index(IndexJob::new(uri)),
        Action::Delete => JobSpec::Delete(DeleteJob::doc_id(uri)),
        Action::Ignore => return Ok(None),
    };
    let job = Job {
        job_id,
        enqueued_at,
        spec,
    };
    job.validate().map_err(|e| match e {
        JobError::Invalid { field, reason } => JobError::Invalid {
            field: format!("s3.object.key (as {field})"),
            reason,
        },
        other => other,
    })?;
    Ok(Some(job))
}

/// Decode an S3 event key: `application/x-www-form-urlencoded`, so `+` is a space and `%XX` a
/// byte. `None` for a broken escape or bytes that are not UTF-8.
fn decode_key(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_form_url_decoded() {
        assert_eq!(decode_key("red+flower.jpg").unwrap(), "red flower.jpg");
        assert_eq!(decode_key("a%2Fb%20c.pdf").unwrap(), "a/b c.pdf");
        assert_eq!(decode_key("plus%2B.txt").unwrap(), "plus+.txt");
        assert_eq!(decode_key("caf%C3%A9.md").unwrap(), "café.md");
        assert_eq!(decode_key("%zz"), None);
        assert_eq!(decode_key("trailing%2"), None);
        assert_eq!(decode_key("%FF"), None, "not UTF-8");
    }

    #[test]
    fn keys_with_url_syntax_become_uris_naming_the_same_object() {
        let event = |key: &str| {
            format!(
                r#"{{"Records":[{{"eventVersion":"2.1","eventName":"ObjectCreated:Put",
                "s3":{{"bucket":{{"name":"b"}},"object":{{"key":"{key}"}}}}}}]}}"#
            )
        };
        // AWS form-encodes the key: "what?.txt" arrives as "what%3F.txt", "a b" as "a+b".
        for (wire, uri) in [
            ("docs/what%3F.txt", "s3://b/docs/what%3F.txt"),
            ("docs/c%23sharp.txt", "s3://b/docs/c%23sharp.txt"),
            ("docs/100%25.txt", "s3://b/docs/100%25.txt"),
            ("docs/1%2B1+%3D+2.txt", "s3://b/docs/1+1 = 2.txt"),
        ] {
            let jobs = parse_s3_event(event(wire).as_bytes()).unwrap();
            let JobSpec::Index(index) = &jobs[0].spec else {
                panic!("{jobs:?}")
            };
            assert_eq!(index.source, uri);
        }
    }

    #[test]
    fn event_names_with_and_without_the_s3_prefix() {
        assert_eq!(action("ObjectCreated:Put"), Action::Index);
        assert_eq!(
            action("s3:ObjectCreated:CompleteMultipartUpload"),
            Action::Index
        );
        assert_eq!(action("ObjectRemoved:Delete"), Action::Delete);
        assert_eq!(
            action("s3:ObjectRemoved:DeleteMarkerCreated"),
            Action::Delete
        );
        assert_eq!(action("s3:ObjectAccessed:Get"), Action::Ignore);
        assert_eq!(action("s3:ObjectRestore:Completed"), Action::Ignore);
        assert_eq!(action("LifecycleTransition"), Action::Ignore);
    }
}
