//! Builds the stages a binary needs from [`Settings`]: the embedded store and SQLite by default,
//! Qdrant and PostgreSQL when their URLs are set, and the configured embedding provider.

use std::sync::Arc;

use crate::chunk::{ChunkError, Chunker};
use crate::config::{BudgetScope, EmbedConfig, ProviderKind, Settings};
use crate::embed::limiter::{EmbedLimiter, FleetBudget, FleetBudgetSettings, LimiterSettings};
use crate::embed::openai::OpenAi;
use crate::embed::voyage::Voyage;
use crate::embed::{
    BatchLimits, Bm25Encoder, Bm25Settings, DenseClient, DenseSettings, EmbedError, Embedder,
    OpenAiOptions, PackingEmbedder, PackingSettings, Provider, VoyageOptions,
};
use crate::extract::ExtractSettings;
use crate::metadata::postgres::PostgresStore;
use crate::metadata::sqlite::SqliteStore;
use crate::metadata::{MetadataError, MetadataStore};
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::store::edge::EdgeStore;
use crate::store::qdrant::QdrantStore;
use crate::store::{StoreError, VectorStore};

#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("vector store: {0}")]
    Store(#[from] StoreError),
    #[error("metadata store: {0}")]
    Metadata(#[from] MetadataError),
    #[error("embedding provider: {0}")]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    #[error("fleet embedding budget: {0}")]
    FleetBudget(String),
}

impl WiringError {
    /// Whether building again later may succeed (a dependency was unreachable), as opposed to a
    /// configuration that can never work. Exhaustive on purpose.
    pub fn is_retryable(&self) -> bool {
        match self {
            WiringError::Store(e) => e.is_retryable(),
            WiringError::Metadata(e) => e.is_retryable(),
            WiringError::Embed(_) | WiringError::Chunk(_) | WiringError::FleetBudget(_) => false,
        }
    }
}

pub async fn open_metadata(settings: &Settings) -> Result<Arc<dyn MetadataStore>, WiringError> {
    Ok(match &settings.database_url {
        Some(url) => Arc::new(PostgresStore::connect(url.expose()).await?),
        None => Arc::new(SqliteStore::open(&settings.sqlite_path()).await?),
    })
}

pub async fn open_vector_store(settings: &Settings) -> Result<Arc<dyn VectorStore>, WiringError> {
    Ok(match &settings.qdrant_url {
        Some(url) => Arc::new(QdrantStore::connect(url, settings.qdrant_api_key.clone())?),
        None => Arc::new(EdgeStore::open(&settings.embedded_store_dir()).await?),
    })
}

/// The fleet's shared TPM/RPM budget: with PostgreSQL, a dense provider, a limit set and
/// `SLUICE_EMBED_BUDGET=fleet` (the default). Its table comes with the metadata store's
/// migrations, so open the metadata store first.
pub fn open_fleet_budget(settings: &Settings) -> Result<Option<Arc<FleetBudget>>, WiringError> {
    let embed = &settings.embed;
    let Some(url) = &settings.database_url else {
        return Ok(None);
    };
    if embed.budget_scope != BudgetScope::Fleet || embed.provider == ProviderKind::Bm25 {
        return Ok(None);
    }
    if embed.tokens_per_minute.is_none() && embed.requests_per_minute.is_none() {
        return Ok(None);
    }
    // One request per process is at the database at a time (the budget queues the rest), and
    // refunds are single statements: two connections are plenty.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_lazy(url.expose())
        .map_err(|_| {
            WiringError::FleetBudget(format!(
                "SLUICE_DATABASE_URL {} is not a PostgreSQL URL",
                crate::secret::redact_url(url.expose())
            ))
        })?;
    let key = embed
        .budget_key
        .clone()
        .unwrap_or_else(|| default_budget_key(embed));
    Ok(FleetBudget::new(
        pool,
        &FleetBudgetSettings {
            key,
            tokens_per_window: embed.tokens_per_minute,
            requests_per_window: embed.requests_per_minute,
            window: std::time::Duration::from_secs(60),
        },
    ))
}

/// Provider, API host and model: providers set limits per account and model. Only the host of
/// the base URL, so nothing that could carry a credential ends up in the database.
fn default_budget_key(embed: &EmbedConfig) -> String {
    let host = embed
        .base_url
        .as_deref()
        .and_then(|u| url::Url::parse(u).ok())
        .and_then(|u| {
            u.host_str()
                .map(|h| u.port().map_or(h.to_string(), |p| format!("{h}:{p}")))
        })
        .unwrap_or_else(|| "default".to_string());
    let provider = match embed.provider {
        ProviderKind::Voyage => crate::embed::voyage::PROVIDER,
        ProviderKind::OpenAi => crate::embed::openai::PROVIDER,
        ProviderKind::Bm25 => "bm25",
    };
    format!("{provider}:{host}:{}", embed.model)
}

/// Requests no bigger than 1/60 of the token limit, once a limit is set: the fleet budget's
/// bucket holds one second of the minute, and a request larger than that would be admitted into
/// debt, which could let a window run over by the excess (`fleet.rs`); the same cap keeps a
/// process-scoped budget's requests evenly paced. The margin covers the JSON framing the
/// request's charge includes. Never under `MIN_REQUEST_TOKENS`, so a whole chunk still fits.
fn fit_to_rate_limit(mut limits: BatchLimits, tokens_per_minute: Option<u64>) -> BatchLimits {
    const MIN_REQUEST_TOKENS: usize = 8192;
    if let Some(tpm) = tokens_per_minute {
        let per_second = (tpm as f64 / 60.0 * 0.8) as usize;
        limits.max_tokens = limits.max_tokens.min(per_second.max(MIN_REQUEST_TOKENS));
    }
    limits
}

/// The configured dense provider behind a [`PackingEmbedder`], so every document in flight in
/// this process shares token-packed requests. Must run inside a Tokio runtime (the packer's
/// dispatcher is spawned here). `fleet`: see [`open_fleet_budget`].
pub fn build_embedder(
    config: &EmbedConfig,
    fleet: Option<Arc<FleetBudget>>,
) -> Result<Option<Arc<dyn Embedder>>, WiringError> {
    let Some((provider, limits)) = build_provider(config, fleet)? else {
        return Ok(None);
    };
    let limits = fit_to_rate_limit(limits, config.tokens_per_minute);
    let packer = PackingEmbedder::new(
        provider,
        PackingSettings {
            limits,
            linger: config.linger,
            // The limiter's ceiling: packs beyond it would only wait there, sealed, instead of
            // filling up in the packer.
            max_packs_in_flight: config.max_concurrency,
        },
    )?;
    Ok(Some(Arc::new(packer)))
}

/// One limiter per embedder, so per process: every request of every document waits on the same
/// AIMD concurrency limit, Retry-After pause and TPM/RPM budget. With a fleet budget the limits
/// are the fleet's, kept in PostgreSQL, instead of this process's own.
fn build_limiter(
    provider: &'static str,
    config: &EmbedConfig,
    fleet: Option<Arc<FleetBudget>>,
) -> Arc<EmbedLimiter> {
    let local = fleet.is_none();
    Arc::new(
        EmbedLimiter::new(
            provider,
            LimiterSettings {
                initial_concurrency: config.concurrency,
                max_concurrency: config.max_concurrency,
                tokens_per_window: config.tokens_per_minute.filter(|_| local),
                requests_per_window: config.requests_per_minute.filter(|_| local),
                limits_enforced_elsewhere: !local
                    && (config.tokens_per_minute.is_some() || config.requests_per_minute.is_some()),
                ..LimiterSettings::default()
            },
        )
        .with_fleet_budget(fleet),
    )
}

/// A bare provider client and the per-request limits it plans within.
type ProviderWithLimits = (Arc<dyn Embedder>, BatchLimits);

/// The bare provider client and the per-request limits it plans within.
fn build_provider(
    config: &EmbedConfig,
    fleet: Option<Arc<FleetBudget>>,
) -> Result<Option<ProviderWithLimits>, WiringError> {
    Ok(match config.provider {
        ProviderKind::Bm25 => None,
        ProviderKind::Voyage => Some(build_dense::<Voyage>(
            config,
            fleet,
            None,
            VoyageOptions {
                output_dimension: config.dimensions,
            },
        )?),
        ProviderKind::OpenAi => Some(build_dense::<OpenAi>(
            config,
            fleet,
            config.api_key_header.clone(),
            OpenAiOptions {
                dimensions: config.dimensions,
                ..OpenAiOptions::default()
            },
        )?),
    })
}

/// One dense provider's client from the embed settings they share. `api_key_header` is passed
/// for OpenAI-compatible servers only (Azure's `api-key`); Voyage always takes a bearer token.
fn build_dense<P: Provider>(
    config: &EmbedConfig,
    fleet: Option<Arc<FleetBudget>>,
    api_key_header: Option<String>,
    options: P::Options,
) -> Result<ProviderWithLimits, WiringError> {
    let mut s = DenseSettings::<P> {
        api_key: config.api_key.clone(),
        api_key_header,
        model: config.model.clone(),
        options,
        request_timeout: config.request_timeout,
        max_retries: config.max_retries,
        // The limiter decides how many are sent; one call may fan out up to its ceiling.
        max_concurrent_requests: config.max_concurrency,
        limiter: Some(build_limiter(P::NAME, config, fleet)),
        ..DenseSettings::default()
    };
    if let Some(url) = &config.base_url {
        s.base_url = url.clone();
    }
    let client = DenseClient::new(s)?;
    let limits = client.batch_limits();
    Ok((Arc::new(client), limits))
}

pub fn extract_settings(settings: &Settings) -> ExtractSettings {
    let mut extract = ExtractSettings::with_defaults();
    extract.pdf_timeout = settings.pdf_timeout;
    extract.pdf_memory_limit = settings.pdf_memory_limit;
    extract.pdf_children = ExtractSettings::children(settings.pdf_max_children);
    extract.max_extracted_bytes =
        usize::try_from(settings.max_extracted_bytes).unwrap_or(usize::MAX);
    extract
}

/// The whole pipeline. `wait_if_busy`: see [`PipelineOptions::wait_if_busy`].
pub async fn build_pipeline(
    settings: &Settings,
    wait_if_busy: bool,
) -> Result<Pipeline, WiringError> {
    let metadata = open_metadata(settings).await?;
    let embedder = build_embedder(&settings.embed, open_fleet_budget(settings)?)?;
    let chunker = Arc::new(
        Chunker::new(settings.chunk_max_tokens, settings.chunk_overlap_tokens)?
            .with_max_chunks(settings.max_chunks_per_document),
    );
    let sparse = Arc::new(Bm25Encoder::new(Bm25Settings::default())?);
    let store = open_vector_store(settings).await?;
    Ok(Pipeline::new(
        extract_settings(settings),
        chunker,
        embedder,
        sparse,
        store,
        metadata,
        PipelineOptions {
            document_timeout: settings.document_timeout,
            lease: settings.lease,
            wait_if_busy,
        },
    ))
}
