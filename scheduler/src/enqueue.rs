//! `sluice enqueue`: publish one-off index jobs to the fleet's work queue, each confirmed by the
//! broker before it is reported.

use std::process::ExitCode;

use anyhow::Context;
use sluice_shared::config::{Settings, validate_collection_name};
use sluice_shared::job::{IndexJob, Job, JobSpec};
use sluice_shared::queue::{Broker, job_headers};

#[derive(clap::Args)]
pub struct EnqueueArgs {
    /// Documents to index: local paths (made absolute) or URLs (file://, s3://, gs://, az://).
    #[arg(required = true)]
    pub sources: Vec<String>,
    #[arg(long)]
    pub collection: Option<String>,
    #[arg(long)]
    pub tenant: Option<String>,
    /// Re-index even if unchanged.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(settings: Settings, args: EnqueueArgs) -> anyhow::Result<ExitCode> {
    if let Some(collection) = &args.collection {
        validate_collection_name("--collection", collection)?;
    }
    let jobs = args
        .sources
        .iter()
        .map(|source| {
            let spec = JobSpec::Index(IndexJob {
                source: source_uri(source)?,
                collection: args.collection.clone(),
                tenant: args.tenant.clone(),
                force: args.force,
                ..Default::default()
            });
            Job::new(spec).with_context(|| format!("job for {source}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let queue_settings = &settings.fleet.queue;
    let broker = Broker::connect(queue_settings).await?;
    let publisher = broker.publisher();
    for job in &jobs {
        publisher
            .publish_with_retry(
                &queue_settings.routing_key,
                job.to_json().as_bytes(),
                job_headers(0),
            )
            .await
            .with_context(|| format!("publishing the job for {}", describe(job)))?;
        println!("{} {}", job.job_id, describe(job));
    }
    broker.close().await;
    eprintln!(
        "enqueued {} job(s) on {}",
        jobs.len(),
        queue_settings.work_queue
    );
    Ok(ExitCode::SUCCESS)
}

/// A URL as given; a local path as an absolute `file://` URL (it must exist).
fn source_uri(source: &str) -> anyhow::Result<String> {
    if source.contains("://") {
        return Ok(source.to_string());
    }
    let path = std::fs::canonicalize(source).with_context(|| format!("{source}: no such file"))?;
    url::Url::from_file_path(&path)
        .map(|u| u.to_string())
        .map_err(|_| anyhow::anyhow!("{source}: cannot be expressed as a file:// URL"))
}

fn describe(job: &Job) -> String {
    match &job.spec {
        JobSpec::Index(index) => index.source.clone(),
        other => other.kind().to_string(),
    }
}
