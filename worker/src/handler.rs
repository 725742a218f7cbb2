//! What to do with one job: run it through the pipeline and decide how the delivery is settled.
//! Pure decision-making (no acks here), so the rules read in one place:
//! - success → ack;
//! - malformed JSON, unknown schema version or kind, invalid fields, a body or `metadata` over its
//!   cap → dead-letter at once;
//! - a source outside `SLUICE_ALLOWED_SOURCES` (or a symlink leading out of it) → dead-letter at
//!   once with `error_kind=forbidden_source`, before anything is read or recorded;
//! - a permanent pipeline failure (bad input, missing object) → dead-letter at once (the reason is
//!   already recorded on the document);
//! - a transient one (provider 429/5xx, Qdrant or database unavailable) → delayed retry with the
//!   attempt count, dead-lettered once `SLUICE_MAX_ATTEMPTS` retries are spent;
//! - another run holds the document → delayed retry that does not spend an attempt;
//! - a transient failure that a down dependency (PostgreSQL, Qdrant, the provider) explains →
//!   the service probes it and, if it is down, hands the job back and pauses (see `outage.rs`);
//! - abandoned at shutdown → handed back.

use std::sync::Arc;
use std::time::Duration;

use sluice_shared::config::Settings;
use sluice_shared::job::{DeleteTarget, IndexJob, Job, JobLimits, JobSpec, ReindexJob};
use sluice_shared::memory::DocumentBudget;
use sluice_shared::metadata::DocumentCursor;
use sluice_shared::pipeline::{Dependency, Pipeline, PipelineError};
use sluice_shared::queue::Publisher;
use sluice_shared::reindex;
use sluice_shared::secret::redact;
use sluice_shared::source::{AllowList, ReadLimits, Source, SourceError};

/// How a delivery is to be settled.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Ack,
    Retry {
        attempt: u32,
        reason: String,
    },
    DeadLetter {
        reason: String,
        kind: &'static str,
    },
    /// Back to the queue without spending an attempt: the run was abandoned at shutdown, or a
    /// dependency every job needs is down (the job is not at fault).
    HandBack {
        reason: String,
    },
    /// A transient failure that `dependency` being down would explain. The service probes it:
    /// down → [`Decision::HandBack`] and pause intake; up → `otherwise` (the job's own retry).
    Suspect {
        dependency: Dependency,
        otherwise: Box<Decision>,
    },
}

/// What a handler needs besides the job.
pub struct Context {
    pub pipeline: Arc<Pipeline>,
    pub publisher: Arc<Publisher>,
    pub default_collection: String,
    pub default_tenant: Option<String>,
    pub max_file_size: u64,
    /// Source bytes of the documents in flight (`SLUICE_MAX_INFLIGHT_BYTES`).
    pub document_budget: DocumentBudget,
    pub max_attempts: u32,
    /// What a producer's job may ask of this worker.
    pub guard: Guard,
}

/// The bounds on what a job may make a worker do: which sources it may read, how long a read
/// may take, and how big the message and its metadata may be.
pub struct Guard {
    /// `SLUICE_ALLOWED_SOURCES` (and `SLUICE_WATCH`).
    pub allowed_sources: AllowList,
    /// `SLUICE_READ_TIMEOUT_SECS`.
    pub read_timeout: Duration,
    /// `SLUICE_MAX_JOB_BYTES`, `SLUICE_MAX_METADATA_BYTES`.
    pub job_limits: JobLimits,
}

impl Guard {
    pub fn from_settings(settings: &Settings) -> Self {
        if settings.allowed_sources.is_empty() {
            tracing::warn!(
                "SLUICE_ALLOWED_SOURCES is empty: every index job will be dead-lettered as \
                 forbidden_source until it names the folders and buckets this worker may read"
            );
        } else {
            tracing::info!(roots = ?settings.allowed_sources.describe(), "allowed sources");
        }
        Guard {
            allowed_sources: settings.allowed_sources.clone(),
            read_timeout: settings.read_timeout,
            job_limits: settings.job_limits,
        }
    }
}

/// Documents per page when fanning out a re-index.
const REINDEX_PAGE: usize = 500;

/// The parsed job (if it parsed) and the decision.
pub async fn handle(ctx: &Context, body: &[u8], attempt: u32) -> (Option<Job>, Decision) {
    let job = match Job::parse_limited(body, &ctx.guard.job_limits) {
        Ok(job) => job,
        Err(e) => {
            return (
                None,
                Decision::DeadLetter {
                    reason: redact(&e.to_string()),
                    kind: e.kind(),
                },
            );
        }
    };
    let decision = match &job.spec {
        JobSpec::Index(index) => index_document(ctx, index, attempt).await,
        JobSpec::Delete(delete) => {
            let collection = delete
                .collection
                .clone()
                .unwrap_or_else(|| ctx.default_collection.clone());
            on_error(
                ctx,
                attempt,
                delete_documents(ctx, &collection, &delete.target).await,
            )
        }
        JobSpec::Reindex(reindex) => fan_out(ctx, reindex, attempt).await,
    };
    (Some(job), decision)
}

async fn index_document(ctx: &Context, index: &IndexJob, attempt: u32) -> Decision {
    let job = index.to_document_job(&ctx.default_collection, ctx.default_tenant.as_deref());
    let limits = ReadLimits {
        max_size: ctx.max_file_size,
        timeout: ctx.guard.read_timeout,
    };
    let (fetched, _reservation) = match Source::read_uri_reserving(
        &job.source,
        &ctx.guard.allowed_sources,
        limits,
        Some(&ctx.document_budget),
    )
    .await
    {
        Ok((bytes, reservation)) => (Ok(bytes), reservation),
        // Refused before anything was read: nothing is recorded for a document this worker
        // must not touch (a producer could otherwise fill the metadata store with them).
        Err(e @ SourceError::Forbidden { .. }) => {
            return Decision::DeadLetter {
                reason: e.to_string(),
                kind: e.kind(),
            };
        }
        Err(e) => (Err(e), None),
    };
    on_error(
        ctx,
        attempt,
        ctx.pipeline.index(&job, fetched).await.map(|_| ()),
    )
}

async fn delete_documents(
    ctx: &Context,
    collection: &str,
    target: &DeleteTarget,
) -> Result<(), PipelineError> {
    match target {
        DeleteTarget::DocId(doc_id) => ctx.pipeline.delete(collection, doc_id).await,
        DeleteTarget::SourcePrefix(prefix) => {
            for doc in ctx
                .pipeline
                .metadata
                .list_by_source_prefix(collection, prefix)
                .await?
            {
                ctx.pipeline.delete(collection, &doc.doc_id).await?;
            }
            Ok(())
        }
    }
}

/// Re-index jobs that reach a worker (published raw, not through `sluice reindex`) are fanned out
/// here into one confirmed index job per matching document, with the same selection and jobs as
/// `sluice reindex` (but no queue-depth hold-back and no saved cursor: a retry starts over).
async fn fan_out(ctx: &Context, reindex: &ReindexJob, attempt: u32) -> Decision {
    let filter = reindex::filter_of(reindex);
    let mut after: Option<DocumentCursor> = None;
    loop {
        let page = match ctx
            .pipeline
            .metadata
            .list_documents(&filter, after.as_ref(), REINDEX_PAGE)
            .await
        {
            Ok(page) => page,
            Err(e) => return on_error(ctx, attempt, Err(e.into())),
        };
        let Some(last) = page.last() else {
            return Decision::Ack;
        };
        after = Some(DocumentCursor {
            collection: last.collection.clone(),
            doc_id: last.doc_id.clone(),
        });
        let jobs = match page
            .iter()
            .map(|doc| reindex::index_job(doc, reindex.force))
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(jobs) => jobs,
            Err(e) => {
                return Decision::DeadLetter {
                    reason: e.to_string(),
                    kind: e.kind(),
                };
            }
        };
        if let Err(e) = reindex::publish_jobs(&ctx.publisher, &jobs).await {
            // Already-published index jobs are harmless to repeat (unchanged documents are
            // skipped), so retrying the whole fan-out is safe.
            return retry_or_give_up(ctx, attempt, redact(&e.to_string()), "publish");
        }
    }
}

fn on_error(ctx: &Context, attempt: u32, result: Result<(), PipelineError>) -> Decision {
    match result {
        Ok(()) => Decision::Ack,
        // Not a failure of this job: the holder finishes or its lease runs out within seconds.
        Err(e @ PipelineError::Busy { .. }) => Decision::Retry {
            attempt,
            reason: e.to_string(),
        },
        Err(e @ PipelineError::Abandoned { .. }) => Decision::HandBack {
            reason: e.to_string(),
        },
        Err(e) if e.is_retryable() => {
            let otherwise = retry_or_give_up(ctx, attempt, redact(&e.to_string()), e.kind());
            match e.suspected_outage() {
                Some(dependency) => Decision::Suspect {
                    dependency,
                    otherwise: Box::new(otherwise),
                },
                None => otherwise,
            }
        }
        Err(e) => Decision::DeadLetter {
            reason: redact(&e.to_string()),
            kind: e.kind(),
        },
    }
}

pub fn retry_or_give_up(
    ctx: &Context,
    attempt: u32,
    reason: String,
    kind: &'static str,
) -> Decision {
    if attempt < ctx.max_attempts {
        Decision::Retry {
            attempt: attempt + 1,
            reason,
        }
    } else {
        Decision::DeadLetter {
            reason: format!("gave up after {attempt} retries: {reason}"),
            kind,
        }
    }
}
