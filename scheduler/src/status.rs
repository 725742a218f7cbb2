//! `sluice status`: document counts by status and the latest failures with their reasons.

use std::process::ExitCode;

use sluice_shared::config::Settings;
use sluice_shared::wiring;

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Only this collection (default: all).
    #[arg(long)]
    pub collection: Option<String>,
    /// How many recent failures to list.
    #[arg(long, default_value_t = 10)]
    pub failures: usize,
    #[arg(long)]
    pub json: bool,
}

pub async fn run(settings: Settings, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let metadata = wiring::open_metadata(&settings).await?;
    let report = metadata
        .status(args.collection.as_deref(), args.failures)
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let total: i64 = report.counts.iter().map(|(_, n)| n).sum();
    println!(
        "{total} documents, {} chunks, {} tokens",
        report.total_chunks, report.total_tokens
    );
    for (status, n) in &report.counts {
        println!("  {:<11} {n}", status.as_str());
    }
    if !report.recent_failures.is_empty() {
        println!("latest failures:");
        for d in &report.recent_failures {
            // Errors name their document already; the source is printed only when they do not.
            let error = d.last_error.as_deref().unwrap_or("unknown error");
            let error = if error.contains(&d.source) {
                error.to_string()
            } else {
                format!("{}: {error}", d.source)
            };
            println!(
                "  {} (attempts {}) {error}",
                d.updated_at.format("%Y-%m-%d %H:%M:%S"),
                d.attempts
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
