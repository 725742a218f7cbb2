//! Field-level rules of the job contract, shared by [`super::Job::parse`] and
//! [`super::Job::validate`]. Each rule here has a twin in `schema/job.schema.json` (the comment
//! on each says which); `shared/tests/job_contract.rs` runs fixtures through both.
//!
//! Fields are read by hand from the JSON object rather than through serde derive so every error
//! names its field (serde's messages do not) and so `null`, `5.0` and unknown fields are treated
//! exactly as the schema treats them.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{JobError, SCHEMA_VERSION};

/// Schema `$defs/job_id`: `maxLength`.
pub(crate) const MAX_JOB_ID_CHARS: usize = 128;
/// Schema `$defs/doc_id`, `source`, `source_prefix`: `maxLength`, counted here in bytes of
/// UTF-8 (the schema can only count characters, a weaker rule). These identifiers are keys of
/// PostgreSQL btree indexes, whose entries hold at most about 2.7 KB: 1 KiB leaves room for the
/// collection beside them, and is longer than any real path or object key needs.
pub const MAX_ID_BYTES: usize = 1024;
/// Schema `$defs/tenant`: `maxLength`.
pub(crate) const MAX_TENANT_CHARS: usize = 256;
/// Schema `$defs/priority`: `maximum`. RabbitMQ priorities are small numbers; quorum queues
/// treat 0–4 as normal and 5 and above as high.
pub(crate) const MAX_PRIORITY: u8 = 9;

/// URI schemes a source may use: the ones `crate::source` can read.
const SCHEMES: [&str; 4] = ["file", "s3", "gs", "az"];

/// JSON type names as JSON Schema spells them, for error messages.
pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Echo a value in an error without flooding the log with a 4 KiB URI.
pub(crate) fn shorten(text: &str) -> String {
    const MAX: usize = 120;
    if text.chars().count() <= MAX {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(MAX).collect();
        format!("{head:?}…")
    }
}

/// An integral JSON number (`5` or `5.0`, as JSON Schema's `integer`), or `None`.
fn as_integer(value: &Value) -> Option<f64> {
    let n = value.as_f64()?;
    (n.fract() == 0.0).then_some(n)
}

/// The fields of one message, consumed one by one; whatever is left at the end is unknown.
pub(crate) struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    pub(crate) fn new(map: Map<String, Value>) -> Self {
        Fields { map }
    }

    /// Schema: `"schema_version": {"const": 1}`, required.
    pub(crate) fn take_schema_version(&mut self) -> Result<(), JobError> {
        let value = self.map.remove("schema_version").ok_or_else(|| {
            JobError::invalid("schema_version", "is required (this worker understands 1)")
        })?;
        match as_integer(&value) {
            Some(n) if n == SCHEMA_VERSION as f64 => Ok(()),
            Some(_) => Err(JobError::UnsupportedSchemaVersion {
                field: "schema_version",
                found: value.to_string(),
                supported: "1",
            }),
            None => Err(JobError::invalid(
                "schema_version",
                format!("must be the integer 1, got {}", type_name(&value)),
            )),
        }
    }

    /// Schema: `kind` is required; each `oneOf` branch pins it with `const`.
    pub(crate) fn take_kind(&mut self) -> Result<String, JobError> {
        match self.map.remove("kind") {
            Some(Value::String(kind)) => Ok(kind),
            Some(other) => Err(JobError::invalid(
                "kind",
                format!("must be a string, got {}", type_name(&other)),
            )),
            None => Err(JobError::invalid(
                "kind",
                "is required: \"index\", \"delete\" or \"reindex\"",
            )),
        }
    }

    fn take(&mut self, name: &str, expected: &str) -> Result<Option<Value>, JobError> {
        match self.map.remove(name) {
            None => Ok(None),
            Some(Value::Null) => Err(JobError::invalid(
                name,
                format!("must be {expected}; leave the field out instead of null"),
            )),
            Some(value) => Ok(Some(value)),
        }
    }

    pub(crate) fn take_str(&mut self, name: &str) -> Result<Option<String>, JobError> {
        match self.take(name, "a string")? {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(JobError::invalid(
                name,
                format!("must be a string, got {}", type_name(&other)),
            )),
        }
    }

    pub(crate) fn take_bool(&mut self, name: &str) -> Result<Option<bool>, JobError> {
        match self.take(name, "true or false")? {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(JobError::invalid(
                name,
                format!("must be true or false, got {}", type_name(&other)),
            )),
        }
    }

    /// Schema: `"type": "object"`, any members.
    pub(crate) fn take_object(
        &mut self,
        name: &str,
    ) -> Result<Option<Map<String, Value>>, JobError> {
        match self.take(name, "a JSON object")? {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(other) => Err(JobError::invalid(
                name,
                format!("must be a JSON object, got {}", type_name(&other)),
            )),
        }
    }

    /// Schema `$defs/priority`: `"type": "integer", "minimum": 0, "maximum": 9`.
    pub(crate) fn take_priority(&mut self, name: &str) -> Result<Option<u8>, JobError> {
        let Some(value) = self.take(name, "an integer from 0 to 9")? else {
            return Ok(None);
        };
        match as_integer(&value) {
            Some(n) if (0.0..=f64::from(MAX_PRIORITY)).contains(&n) => Ok(Some(n as u8)),
            _ => Err(bad_priority(&value.to_string())),
        }
    }

    /// Schema `$defs/timestamp`: `"type": "string", "format": "date-time"` (RFC 3339).
    pub(crate) fn take_time(&mut self, name: &str) -> Result<Option<DateTime<Utc>>, JobError> {
        let Some(text) = self.take_str(name)? else {
            return Ok(None);
        };
        parse_rfc3339(&text).map(Some).ok_or_else(|| {
            JobError::invalid(
                name,
                format!(
                    "must be an RFC 3339 date-time like 2025-03-01T12:00:00Z, got {}",
                    shorten(&text)
                ),
            )
        })
    }

    /// Schema: `"additionalProperties": false` on every kind.
    pub(crate) fn finish(self, kind: &str) -> Result<(), JobError> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(name) => Err(JobError::invalid(
                shorten(name),
                format!("unknown field for a {kind} job (schema_version 1)"),
            )),
        }
    }
}

/// RFC 3339 with a `T` between date and time, as JSON Schema's `date-time` format requires
/// (chrono alone would also take a space there).
pub(crate) fn parse_rfc3339(text: &str) -> Option<DateTime<Utc>> {
    if !matches!(text.as_bytes().get(10), Some(b'T' | b't')) {
        return None;
    }
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

pub(crate) fn bad_priority(found: &str) -> JobError {
    JobError::invalid(
        "priority",
        format!("must be an integer from 0 to {MAX_PRIORITY}, got {found}"),
    )
}

/// Control characters (C0 and DEL) are refused in every identifier: they break logs, and the
/// schema's patterns refuse the same set.
fn has_control(text: &str) -> bool {
    text.chars().any(|c| c <= '\u{1f}' || c == '\u{7f}')
}

/// Schema `$defs/job_id`, `doc_id`: non-empty, at most `max` characters, no control characters.
pub(crate) fn check_text(field: &str, text: &str, max: usize) -> Result<(), JobError> {
    let chars = text.chars().count();
    if chars == 0 {
        return Err(JobError::invalid(field, "must not be empty"));
    }
    if chars > max {
        return Err(JobError::invalid(
            field,
            format!("must be at most {max} characters, got {chars}"),
        ));
    }
    if has_control(text) {
        return Err(JobError::invalid(
            field,
            format!("must not contain control characters: {}", shorten(text)),
        ));
    }
    Ok(())
}

/// Schema `$defs/doc_id` and friends: [`MAX_ID_BYTES`] bytes, and the rules of [`check_text`].
pub(crate) fn check_id(field: &str, text: &str) -> Result<(), JobError> {
    if text.len() > MAX_ID_BYTES {
        return Err(JobError::invalid(
            field,
            format!(
                "must be at most {MAX_ID_BYTES} bytes of UTF-8, got {} bytes: {}",
                text.len(),
                shorten(text)
            ),
        ));
    }
    check_text(field, text, MAX_ID_BYTES)
}

/// Schema `$defs/tenant`.
pub(crate) fn check_tenant(tenant: Option<&str>) -> Result<(), JobError> {
    match tenant {
        Some(tenant) => check_text("tenant", tenant, MAX_TENANT_CHARS),
        None => Ok(()),
    }
}

/// Schema `$defs/collection`: `^[A-Za-z0-9_-]{1,128}$`, the rule of
/// [`crate::config::validate_collection_name`].
pub(crate) fn check_collection(collection: Option<&str>) -> Result<(), JobError> {
    match collection {
        Some(name) => {
            crate::config::validate_collection_name("collection", name).map_err(|e| match e {
                crate::config::ConfigError::Invalid { reason, .. } => {
                    JobError::invalid("collection", reason)
                }
                other => JobError::invalid("collection", other.to_string()),
            })
        }
        None => Ok(()),
    }
}

/// The part after `scheme://`, if `uri` uses one of [`SCHEMES`].
fn after_scheme(uri: &str) -> Option<(&'static str, &str)> {
    SCHEMES.iter().find_map(|scheme| {
        uri.strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .map(|rest| (*scheme, rest))
    })
}

fn bad_scheme(field: &str, uri: &str) -> JobError {
    JobError::invalid(
        field,
        format!(
            "must start with file://, s3://, gs:// or az://, got {}",
            shorten(uri)
        ),
    )
}

/// Schema `$defs/source`: one object, `file:///<path>` or `<s3|gs|az>://<bucket>/<key>`, both
/// parts non-empty.
pub(crate) fn check_source(source: &str) -> Result<(), JobError> {
    check_id("source", source)?;
    let Some((scheme, rest)) = after_scheme(source) else {
        return Err(bad_scheme("source", source));
    };
    let ok = if scheme == "file" {
        rest.len() > 1 && rest.starts_with('/')
    } else {
        matches!(rest.split_once('/'), Some((bucket, key)) if !bucket.is_empty() && !key.is_empty())
    };
    if ok {
        Ok(())
    } else {
        Err(JobError::invalid(
            "source",
            format!(
                "must name one object: file:///path or {scheme}://bucket/key, got {}",
                shorten(source)
            ),
        ))
    }
}

/// Schema `$defs/source_prefix`: `file:///` plus at least one character, or
/// `<s3|gs|az>://` plus a bucket name's first character — never a bare scheme, so one job cannot
/// delete every document of a scheme by accident.
pub(crate) fn check_prefix(prefix: &str) -> Result<(), JobError> {
    check_id("source_prefix", prefix)?;
    let Some((scheme, rest)) = after_scheme(prefix) else {
        return Err(bad_scheme("source_prefix", prefix));
    };
    let ok = if scheme == "file" {
        rest.len() > 1 && rest.starts_with('/')
    } else {
        !rest.is_empty() && !rest.starts_with('/')
    };
    if ok {
        Ok(())
    } else {
        Err(JobError::invalid(
            "source_prefix",
            format!(
                "must name at least a folder or bucket (file:///dir/ or {scheme}://bucket/), got {}",
                shorten(prefix)
            ),
        ))
    }
}
