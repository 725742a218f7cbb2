//! # The job contract: what goes on the work queue
//!
//! Where it sits in the fleet:
//!
//! ```text
//!  other services ─┐                      ┌─► worker: Job::parse ─► Pipeline::index / delete
//!  sluice enqueue ─┼─► Job::to_json ─► RabbitMQ
//!  POST /v1/jobs  ─┘                      └─► (reindex) scheduler fans out into index jobs
//!  S3 / MinIO bucket events ─► s3::parse_s3_event ─► the same jobs
//! ```
//!
//! A job is a versioned JSON object (`schema_version`, now 1) tagged by `kind`: `index`, `delete`
//! or `reindex`. `schema/job.schema.json` at the repository root is the same contract as a JSON
//! Schema (draft 2020-12); `shared/tests/job_contract.rs` validates real messages against both,
//! so the two cannot drift apart.
//!
//! Strictness, deliberately:
//! - An unknown field is rejected, at the top level and in every kind. Within schema_version 1 a
//!   typo (`"focre": true`) or a field from a newer producer would otherwise be ignored silently
//!   and the job would do something other than what its sender meant. New fields come with a new
//!   `schema_version`, which is checked first, so an old worker answers "unsupported
//!   schema_version 2" rather than "unknown field".
//! - `null` is not "absent": optional fields are omitted, never `null`. (The schema says the
//!   same; one spelling keeps the two in step.)
//! - Integers may be written `5` or `5.0` (JSON Schema counts both as integers).
//! - `job_id` and `enqueued_at` are set by the publisher. A hand-written message may omit them:
//!   the job id then becomes a UUIDv5 of the message bytes (stable across redeliveries) and
//!   `enqueued_at` stays unknown (publish-to-ack time is not measured for it).
//!
//! Every [`JobError`] is permanent: a message that fails to parse now fails forever, so it goes
//! straight to the dead-letter queue with the error's text as the reason.

mod rules;
pub mod s3;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::pipeline::DocumentJob;

pub use s3::parse_s3_event;

pub use rules::MAX_ID_BYTES;

/// Size caps of a message, from `SLUICE_MAX_JOB_BYTES` and `SLUICE_MAX_METADATA_BYTES`. They
/// are deployment settings, not part of the schema: the schema says `metadata` is an object,
/// the operator says how big one may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobLimits {
    /// The whole message body, checked before it is parsed.
    pub max_job_bytes: usize,
    /// `metadata` as compact JSON. It is copied onto the payload of every chunk (so Qdrant can
    /// filter on it), so a document of N chunks stores it N times.
    pub max_metadata_bytes: usize,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            max_job_bytes: 64 << 10,
            max_metadata_bytes: 8 << 10,
        }
    }
}

/// The job schema version this code reads and writes.
pub const SCHEMA_VERSION: u64 = 1;

/// Namespace of the UUIDv5 job ids derived for messages that carry none (a fixed random UUID;
/// never change it, or redeliveries across an upgrade get new ids).
const JOB_ID_NAMESPACE: Uuid = Uuid::from_u128(0x8f3a_61c2_0b7d_4e19_a5c4_2d9e_7b10_c6f3);

/// Why a message is not a job this worker can run. Always permanent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The bytes are not JSON at all.
    #[error("malformed JSON: {detail}")]
    MalformedJson { detail: String },
    /// A format version this worker does not understand (`schema_version`, or an S3 event's
    /// major `eventVersion`).
    #[error("unsupported {field} {found}; this worker understands {supported}")]
    UnsupportedSchemaVersion {
        field: &'static str,
        found: String,
        supported: &'static str,
    },
    /// `kind` names no kind of job.
    #[error("unknown kind {kind:?}; expected one of \"index\", \"delete\", \"reindex\"")]
    UnknownKind { kind: String },
    /// The message is JSON of the right version and kind, but a field is missing, unknown or
    /// has a bad value.
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// The message, or its `metadata`, is over its size cap.
    #[error("{what} is {size} bytes, over the {limit}-byte limit ({setting})")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
        setting: &'static str,
    },
}

impl JobError {
    /// Stable label for metrics and the recorded failure reason.
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::MalformedJson { .. } => "malformed_json",
            JobError::UnsupportedSchemaVersion { .. } => "unsupported_schema_version",
            JobError::UnknownKind { .. } => "unknown_kind",
            JobError::Invalid { .. } => "invalid_job",
            JobError::TooLarge { .. } => "job_too_large",
        }
    }

    /// Never: the same bytes fail the same way every time. Exhaustive so a new variant forces
    /// a decision.
    pub fn is_retryable(&self) -> bool {
        match self {
            JobError::MalformedJson { .. }
            | JobError::UnsupportedSchemaVersion { .. }
            | JobError::UnknownKind { .. }
            | JobError::Invalid { .. }
            | JobError::TooLarge { .. } => false,
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        JobError::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// One message on the work queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Identifies the job in logs and metrics; a UUIDv4 from [`Job::new`]. 1–128 characters.
    pub job_id: String,
    /// When the publisher published it; `None` if a hand-written message did not say.
    pub enqueued_at: Option<DateTime<Utc>>,
    /// What to do.
    pub spec: JobSpec,
}

/// The kinds of job, tagged by `kind` on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum JobSpec {
    Index(IndexJob),
    Delete(DeleteJob),
    Reindex(ReindexJob),
}

/// `kind: "index"`: (re)index one document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IndexJob {
    /// Where to read it: `file:///abs/path`, `s3://bucket/key`, `gs://bucket/key`,
    /// `az://container/key`.
    pub source: String,
    /// Stable identity; `None` means the source URI.
    pub doc_id: Option<String>,
    /// Stored on every chunk; `None` means the worker's default tenant.
    pub tenant: Option<String>,
    /// Target collection; `None` means the worker's default collection.
    pub collection: Option<String>,
    /// Attached to every chunk's payload (`metadata` key); empty means none.
    pub metadata: Map<String, Value>,
    /// 0 (lowest) – 9; `None` means unspecified (the broker treats it as 0).
    pub priority: Option<u8>,
    /// Re-index even if the content is unchanged.
    pub force: bool,
}

/// `kind: "delete"`: remove one document, or every document under a source prefix.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteJob {
    pub target: DeleteTarget,
    /// `None` means the worker's default collection.
    pub collection: Option<String>,
}

/// What a delete job removes; the wire has exactly one of the two fields.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteTarget {
    /// `doc_id`: one document.
    DocId(String),
    /// `source_prefix`: every document whose source URI starts with this string (a plain string
    /// prefix: end it with `/` to mean a folder).
    SourcePrefix(String),
}

/// `kind: "reindex"`: a filter over indexed documents that the scheduler fans out into index
/// jobs. Every field narrows the selection; none at all means every document.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReindexJob {
    pub collection: Option<String>,
    pub tenant: Option<String>,
    pub source_prefix: Option<String>,
    /// Only documents indexed at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Re-embed even unchanged documents.
    pub force: bool,
}

impl IndexJob {
    /// An index job for `source` with every option at its default.
    pub fn new(source: impl Into<String>) -> Self {
        IndexJob {
            source: source.into(),
            ..Default::default()
        }
    }

    /// The document id: `doc_id` if given, else the source URI.
    pub fn effective_doc_id(&self) -> &str {
        self.doc_id.as_deref().unwrap_or(&self.source)
    }

    /// The pipeline's view of this job, filling in the worker's defaults.
    pub fn to_document_job(
        &self,
        default_collection: &str,
        default_tenant: Option<&str>,
    ) -> DocumentJob {
        DocumentJob {
            collection: self
                .collection
                .clone()
                .unwrap_or_else(|| default_collection.to_string()),
            doc_id: self.effective_doc_id().to_string(),
            source: self.source.clone(),
            tenant: self
                .tenant
                .clone()
                .or_else(|| default_tenant.map(str::to_string)),
            // A job without metadata keeps what the document has (a watcher's or a re-index's
            // job must not wipe what an API job set).
            metadata: (!self.metadata.is_empty()).then(|| self.metadata.clone()),
            force: self.force,
        }
    }
}

impl DeleteJob {
    /// Delete one document by id.
    pub fn doc_id(doc_id: impl Into<String>) -> Self {
        DeleteJob {
            target: DeleteTarget::DocId(doc_id.into()),
            collection: None,
        }
    }

    /// Delete every document whose source starts with `prefix`.
    pub fn source_prefix(prefix: impl Into<String>) -> Self {
        DeleteJob {
            target: DeleteTarget::SourcePrefix(prefix.into()),
            collection: None,
        }
    }
}

impl JobSpec {
    /// The wire name of the kind.
    pub fn kind(&self) -> &'static str {
        match self {
            JobSpec::Index(_) => "index",
            JobSpec::Delete(_) => "delete",
            JobSpec::Reindex(_) => "reindex",
        }
    }
}

impl Job {
    /// A job as a publisher creates it: a fresh UUIDv4 id, stamped now, validated.
    pub fn new(spec: JobSpec) -> Result<Job, JobError> {
        let job = Job {
            job_id: Uuid::new_v4().to_string(),
            enqueued_at: Some(Utc::now()),
            spec,
        };
        job.validate()?;
        Ok(job)
    }

    /// [`Job::parse_limited`] with the default [`JobLimits`].
    pub fn parse(bytes: &[u8]) -> Result<Job, JobError> {
        Self::parse_limited(bytes, &JobLimits::default())
    }

    /// Parse a message body. Checks, in order: its size (before reading a byte of it), JSON, a
    /// JSON object, `schema_version`, `kind`, every field, then the size of `metadata`; the first
    /// failure is the error.
    pub fn parse_limited(bytes: &[u8], limits: &JobLimits) -> Result<Job, JobError> {
        if bytes.len() > limits.max_job_bytes {
            return Err(JobError::TooLarge {
                what: "the message",
                size: bytes.len(),
                limit: limits.max_job_bytes,
                setting: "SLUICE_MAX_JOB_BYTES",
            });
        }
        let job = Self::parse_unlimited(bytes)?;
        job.check_limits(limits)?;
        Ok(job)
    }

    /// The size caps that apply to a parsed or hand-built job (`metadata`).
    pub fn check_limits(&self, limits: &JobLimits) -> Result<(), JobError> {
        if let JobSpec::Index(index) = &self.spec
            && !index.metadata.is_empty()
        {
            let size = serde_json::to_vec(&index.metadata).map_or(usize::MAX, |v| v.len());
            if size > limits.max_metadata_bytes {
                return Err(JobError::TooLarge {
                    what: "metadata",
                    size,
                    limit: limits.max_metadata_bytes,
                    setting: "SLUICE_MAX_METADATA_BYTES",
                });
            }
        }
        Ok(())
    }

    fn parse_unlimited(bytes: &[u8]) -> Result<Job, JobError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| JobError::MalformedJson {
            detail: e.to_string(),
        })?;
        let Value::Object(map) = value else {
            return Err(JobError::invalid(
                "message",
                format!("a job is a JSON object, got {}", rules::type_name(&value)),
            ));
        };
        let mut fields = rules::Fields::new(map);
        fields.take_schema_version()?;
        let kind = fields.take_kind()?;
        let job_id = fields.take_str("job_id")?;
        let enqueued_at = fields.take_time("enqueued_at")?;
        let spec = match kind.as_str() {
            "index" => JobSpec::Index(IndexJob {
                source: fields
                    .take_str("source")?
                    .ok_or_else(|| JobError::invalid("source", "is required for an index job"))?,
                doc_id: fields.take_str("doc_id")?,
                tenant: fields.take_str("tenant")?,
                collection: fields.take_str("collection")?,
                metadata: fields.take_object("metadata")?.unwrap_or_default(),
                priority: fields.take_priority("priority")?,
                force: fields.take_bool("force")?.unwrap_or(false),
            }),
            "delete" => {
                let doc_id = fields.take_str("doc_id")?;
                let prefix = fields.take_str("source_prefix")?;
                let target = match (doc_id, prefix) {
                    (Some(id), None) => DeleteTarget::DocId(id),
                    (None, Some(prefix)) => DeleteTarget::SourcePrefix(prefix),
                    (Some(_), Some(_)) => {
                        return Err(JobError::invalid(
                            "delete",
                            "give exactly one of doc_id or source_prefix, not both",
                        ));
                    }
                    (None, None) => {
                        return Err(JobError::invalid(
                            "delete",
                            "give exactly one of doc_id or source_prefix",
                        ));
                    }
                };
                JobSpec::Delete(DeleteJob {
                    target,
                    collection: fields.take_str("collection")?,
                })
            }
            "reindex" => JobSpec::Reindex(ReindexJob {
                collection: fields.take_str("collection")?,
                tenant: fields.take_str("tenant")?,
                source_prefix: fields.take_str("source_prefix")?,
                since: fields.take_time("since")?,
                force: fields.take_bool("force")?.unwrap_or(false),
            }),
            _ => return Err(JobError::UnknownKind { kind }),
        };
        fields.finish(&kind)?;
        let job = Job {
            job_id: job_id.unwrap_or_else(|| derived_job_id(bytes)),
            enqueued_at,
            spec,
        };
        job.validate()?;
        Ok(job)
    }

    /// Check every field's value (what [`Job::parse`] checks after reading the fields). Call it
    /// before publishing a job built by hand.
    pub fn validate(&self) -> Result<(), JobError> {
        rules::check_text("job_id", &self.job_id, rules::MAX_JOB_ID_CHARS)?;
        match &self.spec {
            JobSpec::Index(job) => {
                rules::check_source(&job.source)?;
                if let Some(doc_id) = &job.doc_id {
                    rules::check_id("doc_id", doc_id)?;
                }
                rules::check_tenant(job.tenant.as_deref())?;
                rules::check_collection(job.collection.as_deref())?;
                if let Some(priority) = job.priority
                    && priority > rules::MAX_PRIORITY
                {
                    return Err(rules::bad_priority(&priority.to_string()));
                }
            }
            JobSpec::Delete(job) => {
                match &job.target {
                    DeleteTarget::DocId(doc_id) => rules::check_id("doc_id", doc_id)?,
                    DeleteTarget::SourcePrefix(prefix) => rules::check_prefix(prefix)?,
                }
                rules::check_collection(job.collection.as_deref())?;
            }
            JobSpec::Reindex(job) => {
                rules::check_collection(job.collection.as_deref())?;
                rules::check_tenant(job.tenant.as_deref())?;
                if let Some(prefix) = &job.source_prefix {
                    rules::check_prefix(prefix)?;
                }
            }
        }
        Ok(())
    }

    /// The message body for publishers: compact JSON of schema_version 1. Optional fields at
    /// their defaults are left out.
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// The message as a JSON value (what [`Job::to_json`] prints).
    pub fn to_value(&self) -> Value {
        let mut map = Map::new();
        map.insert("schema_version".into(), SCHEMA_VERSION.into());
        map.insert("kind".into(), self.spec.kind().into());
        map.insert("job_id".into(), self.job_id.clone().into());
        if let Some(at) = self.enqueued_at {
            map.insert("enqueued_at".into(), rfc3339(at).into());
        }
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                map.insert(key.to_string(), value);
            }
        };
        match &self.spec {
            JobSpec::Index(job) => {
                put("source", Some(job.source.clone().into()));
                put("doc_id", job.doc_id.clone().map(Value::from));
                put("tenant", job.tenant.clone().map(Value::from));
                put("collection", job.collection.clone().map(Value::from));
                put(
                    "metadata",
                    (!job.metadata.is_empty()).then(|| Value::Object(job.metadata.clone())),
                );
                put("priority", job.priority.map(Value::from));
                put("force", job.force.then_some(Value::Bool(true)));
            }
            JobSpec::Delete(job) => {
                match &job.target {
                    DeleteTarget::DocId(id) => put("doc_id", Some(id.clone().into())),
                    DeleteTarget::SourcePrefix(p) => put("source_prefix", Some(p.clone().into())),
                }
                put("collection", job.collection.clone().map(Value::from));
            }
            JobSpec::Reindex(job) => {
                put("collection", job.collection.clone().map(Value::from));
                put("tenant", job.tenant.clone().map(Value::from));
                put("source_prefix", job.source_prefix.clone().map(Value::from));
                put("since", job.since.map(|t| rfc3339(t).into()));
                put("force", job.force.then_some(Value::Bool(true)));
            }
        }
        Value::Object(map)
    }
}

/// RFC 3339 in UTC with as many fractional digits as needed, e.g. `2025-03-01T12:00:00.5Z`.
fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The id of a message that carries none: the same bytes (a redelivery) get the same id.
fn derived_job_id(bytes: &[u8]) -> String {
    Uuid::new_v5(&JOB_ID_NAMESPACE, bytes).to_string()
}

/// Derived id for jobs made from something else (an S3 event record), keyed by `parts`.
pub(crate) fn derived_job_id_from(parts: &[&str]) -> String {
    // The unit separator keeps ("ab","c") and ("a","bc") apart.
    derived_job_id(parts.join("\u{1f}").as_bytes())
}

#[cfg(test)]
mod tests;
