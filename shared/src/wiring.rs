//! Builds the stages a binary needs from [`Settings`]: the embedded store and SQLite by default,
//! Qdrant and PostgreSQL when their URLs are set, and the configured embedding provider.

use std::sync::Arc;

use crate::chunk::{ChunkError, Chunker};
use crate::config::{EmbedConfig, ProviderKind, Settings};
use crate::embed::{
    Bm25Encoder, Bm25Settings, EmbedError, Embedder, OpenAiEmbedder, OpenAiSettings,
    VoyageEmbedder, VoyageSettings,
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

pub fn build_embedder(config: &EmbedConfig) -> Result<Option<Arc<dyn Embedder>>, WiringError> {
    Ok(match config.provider {
        ProviderKind::Bm25 => None,
        ProviderKind::Voyage => {
            let mut s = VoyageSettings {
                api_key: config.api_key.clone(),
                model: config.model.clone(),
                output_dimension: config.dimensions,
                request_timeout: config.request_timeout,
                max_retries: config.max_retries,
                max_concurrent_requests: config.concurrency,
                ..VoyageSettings::default()
            };
            if let Some(url) = &config.base_url {
                s.base_url = url.clone();
            }
            Some(Arc::new(VoyageEmbedder::new(s)?))
        }
        ProviderKind::OpenAi => {
            let mut s = OpenAiSettings {
                api_key: config.api_key.clone(),
                api_key_header: config.api_key_header.clone(),
                model: config.model.clone(),
                dimensions: config.dimensions,
                request_timeout: config.request_timeout,
                max_retries: config.max_retries,
                max_concurrent_requests: config.concurrency,
                ..OpenAiSettings::default()
            };
            if let Some(url) = &config.base_url {
                s.base_url = url.clone();
            }
            Some(Arc::new(OpenAiEmbedder::new(s)?))
        }
    })
}

pub fn extract_settings(settings: &Settings) -> ExtractSettings {
    let mut extract = ExtractSettings::with_defaults();
    extract.pdf_timeout = settings.pdf_timeout;
    extract.pdf_memory_limit = settings.pdf_memory_limit;
    extract
}

/// The whole pipeline. `wait_if_busy`: see [`PipelineOptions::wait_if_busy`].
pub async fn build_pipeline(
    settings: &Settings,
    wait_if_busy: bool,
) -> Result<Pipeline, WiringError> {
    let embedder = build_embedder(&settings.embed)?;
    let chunker = Arc::new(Chunker::new(
        settings.chunk_max_tokens,
        settings.chunk_overlap_tokens,
    )?);
    let sparse = Arc::new(Bm25Encoder::new(Bm25Settings::default())?);
    let metadata = open_metadata(settings).await?;
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
