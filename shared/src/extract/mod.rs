//! Extract stage: raw bytes → [`ExtractedDoc`]. The format is chosen by content sniffing first and
//! the file name second, so an HTML page named `.pdf` is treated (and, if need be, rejected) for what
//! it is. PDFs are parsed in an isolated child process (see [`pdf`]) because the parser can panic or
//! overflow its stack on malformed input.

pub mod html;
pub mod pdf;
pub mod sniff;
pub mod text;

use std::time::Duration;

use crate::model::{DocFormat, ExtractedDoc};

/// Why a document could not be extracted. Every variant is a property of the input, so none is
/// retryable except [`ExtractError::Io`] (the child could not even be started).
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{name}: file is empty")]
    Empty { name: String },
    #[error("{name}: unsupported or unrecognised format ({detail})")]
    Unsupported { name: String, detail: String },
    #[error("{name}: not valid {format}: {detail}")]
    Corrupt {
        name: String,
        format: &'static str,
        detail: String,
    },
    #[error("{name}: text encoding could not be decoded: {detail}")]
    Encoding { name: String, detail: String },
    #[error("{name}: no text could be extracted")]
    NoText { name: String },
    #[error("{name}: PDF extraction timed out after {timeout:?}")]
    Timeout { name: String, timeout: Duration },
    #[error("{name}: PDF extraction process crashed ({detail})")]
    Crashed { name: String, detail: String },
    #[error("{name}: could not run the PDF extraction process: {source}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

impl ExtractError {
    /// Whether trying again could succeed. Exhaustive on purpose: a new variant must decide.
    pub fn is_retryable(&self) -> bool {
        match self {
            ExtractError::Io { .. } => true,
            ExtractError::Empty { .. }
            | ExtractError::Unsupported { .. }
            | ExtractError::Corrupt { .. }
            | ExtractError::Encoding { .. }
            | ExtractError::NoText { .. }
            | ExtractError::Timeout { .. }
            | ExtractError::Crashed { .. } => false,
        }
    }

    /// A short stable label for metrics (`sluice_documents_failed_total{reason=...}`).
    pub fn kind(&self) -> &'static str {
        match self {
            ExtractError::Empty { .. } => "empty",
            ExtractError::Unsupported { .. } => "unsupported_format",
            ExtractError::Corrupt { .. } => "corrupt",
            ExtractError::Encoding { .. } => "encoding",
            ExtractError::NoText { .. } => "no_text",
            ExtractError::Timeout { .. } => "extract_timeout",
            ExtractError::Crashed { .. } => "extract_crashed",
            ExtractError::Io { .. } => "extract_io",
        }
    }
}

/// Limits and the child-process command for PDF extraction.
#[derive(Debug, Clone)]
pub struct ExtractSettings {
    /// How long one PDF may take in the child before it is killed.
    pub pdf_timeout: Duration,
    /// Address-space limit for the PDF child (bytes), enforced with `RLIMIT_AS`; 0 disables it.
    pub pdf_memory_limit: u64,
    /// Program and leading arguments that run [`pdf::child_main`]: by default the running binary
    /// itself with the hidden `__extract-pdf` argument.
    pub pdf_command: Vec<std::ffi::OsString>,
    /// PDF children running at once in this process (`SLUICE_PDF_MAX_CHILDREN`); shared by
    /// every clone of these settings.
    pub pdf_children: std::sync::Arc<tokio::sync::Semaphore>,
}

impl ExtractSettings {
    /// Default PDF timeout: generous for a few-hundred-page report on a busy 2-core worker, short
    /// enough that a hung parser does not hold a job near RabbitMQ's 30-minute consumer timeout.
    pub const DEFAULT_PDF_TIMEOUT: Duration = Duration::from_secs(120);
    /// Default address-space limit for the PDF child: 2 GiB (virtual; the resident size of a normal
    /// extraction is far smaller).
    pub const DEFAULT_PDF_MEMORY_LIMIT: u64 = 2 * 1024 * 1024 * 1024;

    /// 120 s timeout, 2 GiB memory limit, and the running binary as the PDF child
    /// ([`pdf::default_pdf_command`]).
    pub fn with_defaults() -> Self {
        ExtractSettings {
            pdf_timeout: Self::DEFAULT_PDF_TIMEOUT,
            pdf_memory_limit: Self::DEFAULT_PDF_MEMORY_LIMIT,
            pdf_command: pdf::default_pdf_command(),
            pdf_children: Self::children(Self::default_max_children()),
        }
    }

    /// Default PDF children at once: the cores. Each may take up to `pdf_memory_limit` of
    /// address space; more than the cores would only queue for CPU while holding memory.
    pub fn default_max_children() -> usize {
        std::thread::available_parallelism().map_or(2, usize::from)
    }

    /// A limit of `n` PDF children at once, for [`ExtractSettings::pdf_children`].
    pub fn children(n: usize) -> std::sync::Arc<tokio::sync::Semaphore> {
        std::sync::Arc::new(tokio::sync::Semaphore::new(n.max(1)))
    }
}

/// Extract text from `bytes`. `name` (file name or URI) names the input in errors and is used as a
/// format hint when sniffing is inconclusive. Runs blocking work on the blocking pool.
pub async fn extract(
    name: &str,
    bytes: bytes::Bytes,
    settings: &ExtractSettings,
) -> Result<ExtractedDoc, ExtractError> {
    if bytes.is_empty() {
        return Err(ExtractError::Empty {
            name: name.to_string(),
        });
    }
    let format = sniff::detect(name, &bytes)?;
    let doc = match format {
        DocFormat::Pdf => pdf::extract_in_child(name, bytes, settings).await?,
        DocFormat::Html | DocFormat::Markdown | DocFormat::Text => {
            let owned_name = name.to_string();
            tokio::task::spawn_blocking(move || extract_textual(&owned_name, &bytes, format))
                .await
                .map_err(|join| ExtractError::Crashed {
                    name: name.to_string(),
                    detail: join.to_string(),
                })??
        }
    };
    if doc.sections.iter().all(|s| s.text.trim().is_empty()) {
        return Err(ExtractError::NoText {
            name: name.to_string(),
        });
    }
    Ok(doc)
}

fn extract_textual(
    name: &str,
    bytes: &[u8],
    format: DocFormat,
) -> Result<ExtractedDoc, ExtractError> {
    let text = text::decode(name, bytes)?;
    match format {
        DocFormat::Html => Ok(html::extract(&text)),
        DocFormat::Markdown => Ok(text::markdown(text)),
        DocFormat::Text | DocFormat::Pdf => Ok(text::plain(text)),
    }
}
