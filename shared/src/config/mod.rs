//! Configuration: one typed [`Settings`] struct, loaded from an optional TOML file and the
//! environment (environment wins), validated at start-up with errors that name the setting.
//!
//! Every setting has one name. In the environment it is `SLUICE_<NAME>`; in the TOML file (given by
//! `SLUICE_CONFIG` or `--config`) it is the same name in lower case without the prefix, e.g.
//! `SLUICE_CHUNK_MAX_TOKENS=400` ≡ `chunk_max_tokens = 400`. Secrets may instead be read from a file
//! named by `SLUICE_<NAME>_FILE` (Kubernetes/Docker secrets), and are held as [`Secret`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::extract::ExtractSettings;
use crate::secret::{Secret, redact_url};

mod fleet;
#[cfg(test)]
pub(crate) mod readme;
mod scheduler;
mod unknown;
pub use fleet::{FleetConfig, WorkerSizing};
pub use scheduler::{SchedulerConfig, ServeRole};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{setting}: {reason}")]
    Invalid { setting: String, reason: String },
    #[error("config file {path}: {reason}")]
    File { path: PathBuf, reason: String },
}

pub(crate) fn invalid(setting: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.to_string(),
        reason: reason.into(),
    }
}

/// Which dense embedding provider to call, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// No dense vectors: BM25 sparse vectors alone (no key, no network).
    Bm25,
    Voyage,
    /// Any server speaking OpenAI's `/v1/embeddings` (OpenAI, Azure OpenAI, vLLM, Ollama, TEI).
    OpenAi,
}

impl FromStr for ProviderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "bm25" | "none" => Ok(ProviderKind::Bm25),
            "voyage" | "voyageai" => Ok(ProviderKind::Voyage),
            "openai" => Ok(ProviderKind::OpenAi),
            other => Err(format!(
                "unknown provider {other:?}; expected bm25, voyage or openai"
            )),
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Bm25 => "bm25",
            ProviderKind::Voyage => "voyage",
            ProviderKind::OpenAi => "openai",
        })
    }
}

/// Who shares `SLUICE_EMBED_TPM` / `SLUICE_EMBED_RPM` (`SLUICE_EMBED_BUDGET`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    /// Every process on the same PostgreSQL draws from one bucket per account (with SQLite
    /// there is one process, so it is the same as `Process`).
    Fleet,
    /// Each process on its own: for a process with an account of its own.
    Process,
}

impl FromStr for BudgetScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "fleet" => Ok(BudgetScope::Fleet),
            "process" => Ok(BudgetScope::Process),
            other => Err(format!(
                "unknown scope {other:?}; expected fleet or process"
            )),
        }
    }
}

impl fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BudgetScope::Fleet => "fleet",
            BudgetScope::Process => "process",
        })
    }
}

/// Dense embedding provider settings (`SLUICE_EMBED_*`). Defaults: the README's settings table,
/// which a test compares with what [`Settings::from_loader`] reads.
#[derive(Debug, Clone)]
pub struct EmbedConfig {
    /// `SLUICE_EMBED_PROVIDER`: bm25, voyage or openai.
    pub provider: ProviderKind,
    /// `SLUICE_EMBED_MODEL`: the provider's model (each provider has its own default).
    pub model: String,
    /// `SLUICE_EMBED_BASE_URL`: the provider's base URL (`/v1/embeddings` is appended).
    pub base_url: Option<String>,
    /// `SLUICE_EMBED_API_KEY` (or `_FILE`); falls back to `VOYAGE_API_KEY` / `OPENAI_API_KEY`.
    pub api_key: Option<Secret>,
    /// `SLUICE_EMBED_API_KEY_HEADER`: header carrying the key instead of `Authorization: Bearer`
    /// (Azure OpenAI uses `api-key`).
    pub api_key_header: Option<String>,
    /// `SLUICE_EMBED_DIMENSIONS`: Voyage `output_dimension` / OpenAI `dimensions`.
    pub dimensions: Option<u32>,
    /// `SLUICE_EMBED_TIMEOUT_SECS`: per-request timeout.
    pub request_timeout: Duration,
    /// `SLUICE_EMBED_MAX_RETRIES`: retries for 429/5xx/timeouts before the document fails.
    pub max_retries: u32,
    /// `SLUICE_EMBED_CONCURRENCY`: embedding requests in flight at first, per process.
    /// The process-wide limiter starts here and adapts (AIMD): +1 after a limit's worth of
    /// successes, halved on a 429, within 1..=`SLUICE_EMBED_MAX_CONCURRENCY`.
    pub concurrency: usize,
    /// `SLUICE_EMBED_MAX_CONCURRENCY`: ceiling of the adaptive limit (at least
    /// `SLUICE_EMBED_CONCURRENCY`). Also how many requests one `embed` call may fan out to.
    pub max_concurrency: usize,
    /// `SLUICE_EMBED_TPM`: tokens per minute this process may send (estimated, corrected by the
    /// provider's billed usage); unset = no local limit. Set it a few percent under the
    /// provider's limit, which counts with its own tokenizer and clock.
    pub tokens_per_minute: Option<u64>,
    /// `SLUICE_EMBED_RPM`: requests per minute this process may send; unset = no local limit.
    pub requests_per_minute: Option<u64>,
    /// `SLUICE_EMBED_LINGER_MS`: how long the first chunk waiting for a packed embedding request
    /// waits for chunks of other documents before the request is sent anyway (0 still packs
    /// whatever is already waiting). Queries are never held back.
    pub linger: Duration,
    /// `SLUICE_EMBED_BUDGET`: `fleet` or `process`, see [`BudgetScope`].
    pub budget_scope: BudgetScope,
    /// `SLUICE_EMBED_BUDGET_KEY`: the account whose limits the fleet shares (unset: provider,
    /// API host and model). Processes with the same key share one bucket.
    pub budget_key: Option<String>,
}

/// Everything the binaries need. See the module docs for how names map to env and file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `SLUICE_DATA_DIR`: where the embedded store and SQLite live.
    pub data_dir: PathBuf,
    /// `SLUICE_COLLECTION`: the collection of jobs and commands that name none.
    pub collection: String,
    /// `SLUICE_TENANT`: tenant recorded on documents and used to filter searches.
    pub tenant: Option<String>,
    /// `SLUICE_QDRANT_URL`: a Qdrant server (gRPC, e.g. `http://qdrant:6334`); unset = embedded.
    pub qdrant_url: Option<String>,
    /// `SLUICE_QDRANT_API_KEY` (or `_FILE`).
    pub qdrant_api_key: Option<Secret>,
    /// `SLUICE_DATABASE_URL` (or `_FILE`): PostgreSQL URL; unset = SQLite in the data directory.
    pub database_url: Option<Secret>,
    /// `SLUICE_MAX_FILE_SIZE`: larger source files are rejected.
    pub max_file_size: u64,
    /// `SLUICE_ALLOWED_SOURCES`: comma-separated roots a job's `source` must lie under (local
    /// folders or `file:///dir/`, `s3://bucket/prefix/`, `gs://bucket/`, `az://container/`),
    /// plus every `SLUICE_WATCH` location. Empty: no job source is allowed.
    pub allowed_sources: crate::source::AllowList,
    /// `SLUICE_READ_TIMEOUT_SECS`: reading one source file or object, from open to last byte
    ///. A FIFO or a hung mount fails the document instead of hanging the job.
    pub read_timeout: Duration,
    /// `SLUICE_MAX_JOB_BYTES` and `SLUICE_MAX_METADATA_BYTES`: size caps of a job message and
    /// of its `metadata`.
    pub job_limits: crate::job::JobLimits,
    /// `SLUICE_MAX_INFLIGHT_BYTES`: source bytes of the documents processed at once; a
    /// larger document runs alone. Bounds memory by size, see `memory.rs`.
    pub max_inflight_bytes: u64,
    /// `SLUICE_CONCURRENCY`: documents processed at once (many: most of a document's time is
    /// spent waiting on the embedding provider, its packed requests and disk, so many more than
    /// the core count pay off; memory is bounded by `SLUICE_MAX_INFLIGHT_BYTES`, not by this).
    pub concurrency: usize,
    /// `SLUICE_CHUNK_MAX_TOKENS`: chunk size limit in cl100k tokens.
    pub chunk_max_tokens: usize,
    /// `SLUICE_CHUNK_OVERLAP_TOKENS`: overlap between neighbouring chunks.
    pub chunk_overlap_tokens: usize,
    /// `SLUICE_MAX_EXTRACTED_BYTES`: most text one document may yield; more fails
    /// the document (`too_much_text`).
    pub max_extracted_bytes: u64,
    /// `SLUICE_MAX_CHUNKS_PER_DOCUMENT`: most chunks one document may make; more
    /// fails the document (`too_many_chunks`).
    pub max_chunks_per_document: usize,
    pub embed: EmbedConfig,
    /// `SLUICE_PDF_TIMEOUT_SECS`: time limit of the PDF extraction child.
    pub pdf_timeout: Duration,
    /// `SLUICE_PDF_MEMORY_LIMIT`: address-space limit of the PDF child.
    pub pdf_memory_limit: u64,
    /// `SLUICE_PDF_MAX_CHILDREN`: PDF extraction children at once per process (unset: the
    /// number of cores). Each may use up to `SLUICE_PDF_MEMORY_LIMIT`, so this times that is the
    /// worst case a pod must allow for.
    pub pdf_max_children: usize,
    /// `SLUICE_DOCUMENT_TIMEOUT_SECS`: one document's processing limit.
    pub document_timeout: Duration,
    /// `SLUICE_LEASE_SECS`: a document's processing lease, renewed every third of it while a run
    /// works on it; a crashed run blocks its documents for at most this long.
    pub lease: Duration,
    /// `SLUICE_LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// Broker, queues and worker behaviour (used by the fleet binaries).
    pub fleet: FleetConfig,
    /// HTTP API, watch mode, S3 event notifications and reindex (used by `sluice`).
    pub scheduler: SchedulerConfig,
    /// Names given in the environment (`SLUICE_*`) or the file that no setting has: reported at
    /// start-up by [`Settings::report_unknown`].
    pub unknown_settings: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "text" | "pretty" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}; expected text or json"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// Reads setting values from the environment first, then the TOML file.
pub struct Loader {
    env: HashMap<String, String>,
    file: toml::Table,
    file_path: Option<PathBuf>,
    /// Every setting name looked up, in lower case, with the default it was read with (as the
    /// README writes it): the names given that are not among them are reported as unknown (see
    /// [`Loader::unknown`]); the defaults are what the README's table is checked against.
    asked: std::sync::Mutex<BTreeMap<String, Option<String>>>,
}

impl Loader {
    /// The process environment, plus the TOML file named by `config_file` or `SLUICE_CONFIG`.
    pub fn from_process(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_parts(std::env::vars().collect(), config_file)
    }

    /// An explicit environment (tests) plus an optional TOML file.
    pub fn from_parts(
        env: HashMap<String, String>,
        config_file: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let file_path = config_file
            .map(Path::to_path_buf)
            .or_else(|| env.get("SLUICE_CONFIG").map(PathBuf::from));
        let file = match &file_path {
            None => toml::Table::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::File {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
        };
        Ok(Loader {
            env,
            file,
            file_path,
            asked: Default::default(),
        })
    }

    /// `SLUICE_*` variables and TOML keys given but never looked up so far — misspelt or
    /// obsolete names, which would otherwise be ignored without a word. Meaningful once every
    /// setting has been read ([`Settings::from_loader`] reads them all).
    pub fn unknown(&self) -> Vec<String> {
        let asked = self
            .asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        unknown::unknown_names(
            self.env.keys(),
            self.file.keys(),
            self.file_path.as_deref(),
            &asked.keys().cloned().collect(),
        )
    }

    /// The default of every setting looked up so far that has one, by environment name
    /// (`SLUICE_LEASE_SECS` → `30`), written as the README's settings table writes it.
    pub fn defaults(&self) -> BTreeMap<String, String> {
        let asked = self
            .asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        asked
            .iter()
            .filter_map(|(name, default)| Some((Self::env_name(name), default.clone()?)))
            .collect()
    }

    fn mark_asked(&self, name: &str) {
        self.asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(name.to_ascii_lowercase())
            .or_insert(None);
    }

    /// Records the default `name` falls back to when it is not given.
    pub(crate) fn mark_default(&self, name: &str, default: impl fmt::Display) {
        self.asked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(name.to_ascii_lowercase(), Some(default.to_string()));
    }

    fn env_name(name: &str) -> String {
        format!("SLUICE_{}", name.to_ascii_uppercase())
    }

    /// The raw value of setting `name` and where it came from (for error messages).
    fn raw(&self, name: &str) -> Result<Option<(String, String)>, ConfigError> {
        self.mark_asked(name);
        let env_name = Self::env_name(name);
        if let Some(v) = self.env.get(&env_name).filter(|v| !v.is_empty()) {
            return Ok(Some((v.clone(), env_name)));
        }
        let key = name.to_ascii_lowercase();
        match self.file.get(&key) {
            None => Ok(None),
            Some(value) => {
                let origin = format!(
                    "{key} in {}",
                    self.file_path
                        .as_deref()
                        .unwrap_or(Path::new("?"))
                        .display()
                );
                let text = match value {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => {
                        return Err(invalid(
                            &origin,
                            format!("expected a string or number, got {}", other.type_str()),
                        ));
                    }
                };
                Ok(Some((text, origin)))
            }
        }
    }

    /// An optional setting parsed with `FromStr`.
    pub fn opt<T>(&self, name: &str) -> Result<Option<T>, ConfigError>
    where
        T: FromStr,
        T::Err: std::fmt::Display,
    {
        match self.raw(name)? {
            None => Ok(None),
            Some((text, origin)) => text
                .trim()
                .parse::<T>()
                .map(Some)
                .map_err(|e| invalid(&origin, format!("invalid value {text:?}: {e}"))),
        }
    }

    /// A setting parsed with `FromStr`, `default` when not given. An empty `String` default
    /// means "none" (the README writes `—`).
    pub fn get<T>(&self, name: &str, default: T) -> Result<T, ConfigError>
    where
        T: FromStr + fmt::Display,
        T::Err: fmt::Display,
    {
        let value = self.opt(name)?;
        let shown = default.to_string();
        if !shown.is_empty() {
            self.mark_default(name, shown);
        }
        Ok(value.unwrap_or(default))
    }

    /// A size in bytes: a plain number or with a unit (`100MiB`, `2GB`, `512k`).
    pub fn size(&self, name: &str, default: u64) -> Result<u64, ConfigError> {
        let given = self.raw(name)?;
        self.mark_default(name, format_size(default));
        match given {
            None => Ok(default),
            Some((text, origin)) => parse_size(&text).map_err(|e| invalid(&origin, e)),
        }
    }

    pub fn secs(&self, name: &str, default: u64) -> Result<Duration, ConfigError> {
        let secs: f64 = self.opt(name)?.unwrap_or(default as f64);
        self.mark_default(name, default);
        if !(secs.is_finite() && secs > 0.0) {
            return Err(invalid(
                &Self::env_name(name),
                "must be a positive number of seconds",
            ));
        }
        Ok(Duration::from_secs_f64(secs))
    }

    /// A secret: `SLUICE_<NAME>`, else the contents of the file named by `SLUICE_<NAME>_FILE`
    /// (trailing newline trimmed). Values never appear in errors.
    pub fn secret(&self, name: &str) -> Result<Option<Secret>, ConfigError> {
        let file_setting = format!("{name}_file");
        // Both spellings are this setting's, whichever is given.
        self.mark_asked(&file_setting);
        if let Some((value, _)) = self.raw(name)? {
            return Ok(Some(Secret::new(value)));
        }
        match self.raw(&file_setting)? {
            None => Ok(None),
            Some((path, origin)) => {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    invalid(&origin, format!("cannot read secret file {path}: {e}"))
                })?;
                let trimmed = text.trim_end_matches(['\n', '\r']);
                if trimmed.is_empty() {
                    return Err(invalid(&origin, format!("secret file {path} is empty")));
                }
                Ok(Some(Secret::new(trimmed)))
            }
        }
    }

    /// A variable outside the `SLUICE_` namespace (e.g. `VOYAGE_API_KEY`).
    pub fn foreign(&self, env_name: &str) -> Option<String> {
        self.env.get(env_name).filter(|v| !v.is_empty()).cloned()
    }
}

/// `bytes` in the largest binary unit that divides it (`100MiB`, `8KiB`, `2GiB`), as sizes are
/// written in the README and accepted by [`parse_size`].
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u32); 4] = [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)];
    UNITS
        .iter()
        .find(|(_, shift)| bytes >= 1 << shift && bytes.is_multiple_of(1 << shift))
        .map_or_else(
            || bytes.to_string(),
            |(unit, shift)| format!("{}{unit}", bytes >> shift),
        )
}

/// Parses `123`, `64k`, `100MiB`, `2GB`, `1.5G` (binary units; `MB` and `MiB` both mean 2^20).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 100MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(format!("invalid size unit {other:?} in {text:?}")),
    };
    let bytes = num * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("invalid size {text:?}: must be at least one byte"));
    }
    Ok(bytes as u64)
}

impl Settings {
    /// Load from the process environment and `config_file` (or `SLUICE_CONFIG`).
    pub fn load(config_file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::from_loader(&Loader::from_process(config_file)?)
    }

    pub fn from_loader(l: &Loader) -> Result<Self, ConfigError> {
        let provider: ProviderKind = l.get("embed_provider", ProviderKind::Bm25)?;
        let default_model = match provider {
            ProviderKind::Voyage => "voyage-3.5",
            ProviderKind::OpenAi => "text-embedding-3-small",
            ProviderKind::Bm25 => "",
        };
        let api_key = match l.secret("embed_api_key")? {
            Some(key) => Some(key),
            None => match provider {
                ProviderKind::Voyage => l.foreign("VOYAGE_API_KEY").map(Secret::new),
                ProviderKind::OpenAi => l.foreign("OPENAI_API_KEY").map(Secret::new),
                ProviderKind::Bm25 => None,
            },
        };
        let embed = EmbedConfig {
            provider,
            model: l.get("embed_model", default_model.to_string())?,
            base_url: l.opt("embed_base_url")?,
            api_key,
            api_key_header: l.opt("embed_api_key_header")?,
            dimensions: l.opt("embed_dimensions")?,
            request_timeout: l.secs("embed_timeout_secs", 60)?,
            max_retries: l.get("embed_max_retries", 8)?,
            concurrency: l.get("embed_concurrency", 4)?,
            max_concurrency: l.get("embed_max_concurrency", 64)?,
            tokens_per_minute: l.opt("embed_tpm")?,
            requests_per_minute: l.opt("embed_rpm")?,
            linger: Duration::from_millis(l.get("embed_linger_ms", 20)?),
            budget_scope: l.get("embed_budget", BudgetScope::Fleet)?,
            budget_key: l.opt("embed_budget_key")?,
        };
        let mut settings = Settings {
            data_dir: PathBuf::from(l.get("data_dir", "./sluice-data".to_string())?),
            collection: l.get("collection", "sluice".to_string())?,
            tenant: l.opt("tenant")?,
            qdrant_url: l.opt("qdrant_url")?,
            qdrant_api_key: l.secret("qdrant_api_key")?,
            database_url: l.secret("database_url")?,
            max_file_size: l.size("max_file_size", 100 << 20)?,
            allowed_sources: allowed_sources(l)?,
            read_timeout: l.secs("read_timeout_secs", 120)?,
            job_limits: job_limits(l)?,
            max_inflight_bytes: l.size("max_inflight_bytes", 64 << 20)?,
            concurrency: l.get("concurrency", 64)?,
            chunk_max_tokens: l.get("chunk_max_tokens", 512)?,
            chunk_overlap_tokens: l.get("chunk_overlap_tokens", 64)?,
            max_extracted_bytes: l.size(
                "max_extracted_bytes",
                ExtractSettings::DEFAULT_MAX_EXTRACTED_BYTES as u64,
            )?,
            max_chunks_per_document: l.get(
                "max_chunks_per_document",
                crate::chunk::Chunker::DEFAULT_MAX_CHUNKS,
            )?,
            embed,
            pdf_timeout: l.secs(
                "pdf_timeout_secs",
                ExtractSettings::DEFAULT_PDF_TIMEOUT.as_secs(),
            )?,
            pdf_memory_limit: l.size(
                "pdf_memory_limit",
                ExtractSettings::DEFAULT_PDF_MEMORY_LIMIT,
            )?,
            pdf_max_children: l.get("pdf_max_children", ExtractSettings::default_max_children())?,
            document_timeout: l.secs("document_timeout_secs", 600)?,
            lease: l.secs("lease_secs", 30)?,
            log_format: l.get("log_format", LogFormat::Text)?,
            fleet: fleet::load(l)?,
            scheduler: scheduler::load(l)?,
            unknown_settings: Vec::new(),
        };
        settings.validate()?;
        // Last: every setting has been looked up by now.
        settings.unknown_settings = l.unknown();
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        validate_collection_name("SLUICE_COLLECTION", &self.collection)?;
        if self.concurrency == 0 {
            return Err(invalid("SLUICE_CONCURRENCY", "must be at least 1"));
        }
        if self.lease < Duration::from_secs(3) {
            return Err(invalid("SLUICE_LEASE_SECS", "must be at least 3 seconds"));
        }
        if self.embed.concurrency == 0 {
            return Err(invalid("SLUICE_EMBED_CONCURRENCY", "must be at least 1"));
        }
        if self.embed.max_concurrency < self.embed.concurrency {
            return Err(invalid(
                "SLUICE_EMBED_MAX_CONCURRENCY",
                format!(
                    "must be at least SLUICE_EMBED_CONCURRENCY ({})",
                    self.embed.concurrency
                ),
            ));
        }
        if self.embed.tokens_per_minute == Some(0) {
            return Err(invalid(
                "SLUICE_EMBED_TPM",
                "must be at least 1 (unset it for no limit)",
            ));
        }
        if self.embed.requests_per_minute == Some(0) {
            return Err(invalid(
                "SLUICE_EMBED_RPM",
                "must be at least 1 (unset it for no limit)",
            ));
        }
        if self.max_inflight_bytes < 1 << 20 {
            return Err(invalid(
                "SLUICE_MAX_INFLIGHT_BYTES",
                "must be at least 1MiB",
            ));
        }
        if self.chunk_max_tokens < 16 {
            return Err(invalid("SLUICE_CHUNK_MAX_TOKENS", "must be at least 16"));
        }
        if self.max_extracted_bytes < 1024 {
            return Err(invalid(
                "SLUICE_MAX_EXTRACTED_BYTES",
                "must be at least 1KiB",
            ));
        }
        if self.max_chunks_per_document == 0 {
            return Err(invalid(
                "SLUICE_MAX_CHUNKS_PER_DOCUMENT",
                "must be at least 1",
            ));
        }
        if self.chunk_overlap_tokens >= self.chunk_max_tokens {
            return Err(invalid(
                "SLUICE_CHUNK_OVERLAP_TOKENS",
                format!(
                    "must be smaller than SLUICE_CHUNK_MAX_TOKENS ({})",
                    self.chunk_max_tokens
                ),
            ));
        }
        if self.embed.provider != ProviderKind::Bm25
            && self.embed.api_key.is_none()
            && self.embed.base_url.is_none()
        {
            return Err(invalid(
                "SLUICE_EMBED_API_KEY",
                "is required for the voyage and openai providers (or set SLUICE_EMBED_BASE_URL for a keyless server)",
            ));
        }
        for (name, url) in [
            ("SLUICE_QDRANT_URL", self.qdrant_url.as_deref()),
            ("SLUICE_EMBED_BASE_URL", self.embed.base_url.as_deref()),
        ] {
            if let Some(url) = url {
                url::Url::parse(url).map_err(|e| invalid(name, format!("not a URL ({e})")))?;
            }
        }
        if let Some(db) = &self.database_url {
            let url = db.expose();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(invalid(
                    "SLUICE_DATABASE_URL",
                    format!("expected a postgres:// URL, got {}", redact_url(url)),
                ));
            }
        }
        Ok(())
    }

    /// Reports [`Settings::unknown_settings`]: a warning each, or with `strict` (`--strict`) an
    /// error naming them all. Call once logging is set up.
    pub fn report_unknown(&self, strict: bool) -> Result<(), ConfigError> {
        if self.unknown_settings.is_empty() {
            return Ok(());
        }
        if strict {
            return Err(invalid(
                &self.unknown_settings.join(", "),
                "no such setting (see the README's settings table; --strict makes this an error)",
            ));
        }
        for name in &self.unknown_settings {
            tracing::warn!(setting = %name, "unknown setting ignored (misspelt or obsolete?)");
        }
        Ok(())
    }

    /// Where the embedded vector store lives.
    pub fn embedded_store_dir(&self) -> PathBuf {
        self.data_dir.join("qdrant")
    }

    /// The SQLite file used when no `SLUICE_DATABASE_URL` is set.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("metadata.sqlite")
    }
}

/// `SLUICE_ALLOWED_SOURCES` plus the `SLUICE_WATCH` locations (what a process watches, its
/// workers may read).
fn allowed_sources(l: &Loader) -> Result<crate::source::AllowList, ConfigError> {
    let text: String = l.get("allowed_sources", String::new())?;
    let mut list = crate::source::AllowList::parse(&text)
        .map_err(|e| invalid("SLUICE_ALLOWED_SOURCES", e.to_string()))?;
    let watch: String = l.get("watch", String::new())?;
    for location in watch.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        list.allow(location)
            .map_err(|e| invalid("SLUICE_WATCH", e.to_string()))?;
    }
    Ok(list)
}

fn job_limits(l: &Loader) -> Result<crate::job::JobLimits, ConfigError> {
    let defaults = crate::job::JobLimits::default();
    let limits = crate::job::JobLimits {
        max_job_bytes: l.size("max_job_bytes", defaults.max_job_bytes as u64)? as usize,
        max_metadata_bytes: l.size("max_metadata_bytes", defaults.max_metadata_bytes as u64)?
            as usize,
    };
    if limits.max_job_bytes < 1024 {
        return Err(invalid("SLUICE_MAX_JOB_BYTES", "must be at least 1KiB"));
    }
    if limits.max_job_bytes > 16 << 20 {
        return Err(invalid(
            "SLUICE_MAX_JOB_BYTES",
            "must be at most 16MiB (a job names a document, it does not carry one)",
        ));
    }
    if limits.max_metadata_bytes >= limits.max_job_bytes {
        return Err(invalid(
            "SLUICE_MAX_METADATA_BYTES",
            format!(
                "must be smaller than SLUICE_MAX_JOB_BYTES ({})",
                limits.max_job_bytes
            ),
        ));
    }
    Ok(limits)
}

/// Qdrant collection names: keep to a portable subset so the same name works in every store.
pub fn validate_collection_name(setting: &str, name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            setting,
            format!("invalid collection name {name:?}: use 1-128 letters, digits, '_' or '-'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_loader(&Loader::from_parts(env(pairs), None).unwrap())
    }

    #[test]
    fn defaults_need_no_configuration() {
        let s = load(&[]).unwrap();
        assert_eq!(s.collection, "sluice");
        assert_eq!(s.embed.provider, ProviderKind::Bm25);
        assert_eq!(s.max_file_size, 100 << 20);
        assert!(s.qdrant_url.is_none() && s.database_url.is_none());
    }

    #[test]
    fn errors_name_the_setting() {
        let err = load(&[("SLUICE_CHUNK_MAX_TOKENS", "lots")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("SLUICE_CHUNK_MAX_TOKENS"), "{err}");
        let err = load(&[
            ("SLUICE_CHUNK_MAX_TOKENS", "100"),
            ("SLUICE_CHUNK_OVERLAP_TOKENS", "100"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("SLUICE_CHUNK_OVERLAP_TOKENS"), "{err}");
        let err = load(&[("SLUICE_EMBED_PROVIDER", "voyage")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SLUICE_EMBED_API_KEY"), "{err}");
    }

    #[test]
    fn database_url_errors_do_not_leak_the_password() {
        let err = load(&[("SLUICE_DATABASE_URL", "mysql://u:topsecret@h/db")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SLUICE_DATABASE_URL") && !err.contains("topsecret"),
            "{err}"
        );
    }

    #[test]
    fn file_values_apply_and_env_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(
            &path,
            "collection = \"docs\"\nchunk_max_tokens = 300\nmax_file_size = \"2MiB\"\n",
        )
        .unwrap();
        let l =
            Loader::from_parts(env(&[("SLUICE_CHUNK_MAX_TOKENS", "200")]), Some(&path)).unwrap();
        let s = Settings::from_loader(&l).unwrap();
        assert_eq!(s.collection, "docs");
        assert_eq!(s.chunk_max_tokens, 200);
        assert_eq!(s.max_file_size, 2 << 20);
    }

    #[test]
    fn bad_file_value_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, "concurrency = \"many\"\n").unwrap();
        let l = Loader::from_parts(HashMap::new(), Some(&path)).unwrap();
        let err = Settings::from_loader(&l).unwrap_err().to_string();
        assert!(
            err.contains("concurrency in") && err.contains("sluice.toml"),
            "{err}"
        );
    }

    #[test]
    fn secrets_come_from_files_too() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "vk-123\n").unwrap();
        let s = load(&[
            ("SLUICE_EMBED_PROVIDER", "voyage"),
            ("SLUICE_EMBED_API_KEY_FILE", key.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(s.embed.api_key.unwrap().expose(), "vk-123");
        assert!(
            !format!("{:?}", load(&[("SLUICE_QDRANT_API_KEY", "qk-9")]).unwrap()).contains("qk-9")
        );
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(parse_size("100MiB").unwrap(), 100 << 20);
        assert_eq!(parse_size("1.5G").unwrap(), 3 << 29);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }

    #[test]
    fn allowed_sources_include_watched_locations_and_are_validated() {
        let s = load(&[]).unwrap();
        assert!(
            s.allowed_sources.is_empty(),
            "nothing is allowed by default"
        );
        let s = load(&[
            ("SLUICE_ALLOWED_SOURCES", "/srv/docs, s3://bucket/in/"),
            ("SLUICE_WATCH", "gs://watched/"),
        ])
        .unwrap();
        assert!(
            s.allowed_sources
                .check_lexical("file:///srv/docs/a.pdf")
                .is_ok()
        );
        assert!(
            s.allowed_sources
                .check_lexical("s3://bucket/in/a.pdf")
                .is_ok()
        );
        assert!(
            s.allowed_sources
                .check_lexical("gs://watched/a.pdf")
                .is_ok()
        );
        assert!(
            s.allowed_sources
                .check_lexical("s3://bucket/out/a.pdf")
                .is_err()
        );
        let err = load(&[("SLUICE_ALLOWED_SOURCES", "ftp://x/")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("SLUICE_ALLOWED_SOURCES"), "{err}");
    }

    #[test]
    fn job_caps_are_validated() {
        let s = load(&[]).unwrap();
        assert_eq!(s.job_limits, crate::job::JobLimits::default());
        let s = load(&[("SLUICE_MAX_METADATA_BYTES", "2KiB")]).unwrap();
        assert_eq!(s.job_limits.max_metadata_bytes, 2048);
        let err = load(&[
            ("SLUICE_MAX_JOB_BYTES", "4KiB"),
            ("SLUICE_MAX_METADATA_BYTES", "8KiB"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("SLUICE_MAX_METADATA_BYTES"), "{err}");
        let err = load(&[("SLUICE_MAX_JOB_BYTES", "1GiB")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("SLUICE_MAX_JOB_BYTES"), "{err}");
    }

    #[test]
    fn the_api_is_local_unless_a_key_or_anonymous_access_is_given() {
        let s = load(&[]).unwrap();
        assert_eq!(s.scheduler.api_listen.to_string(), "127.0.0.1:8080");
        assert!(s.scheduler.check_api_exposure().is_ok());
        let exposed = [("SLUICE_API_LISTEN", "0.0.0.0:8080")];
        let err = load(&exposed)
            .unwrap()
            .scheduler
            .check_api_exposure()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("SLUICE_API_KEY") && err.contains("SLUICE_API_ALLOW_ANONYMOUS"),
            "{err}"
        );
        let keyed = load(&[exposed[0], ("SLUICE_API_KEY", "k-123")]).unwrap();
        assert!(keyed.scheduler.check_api_exposure().is_ok());
        let open = load(&[exposed[0], ("SLUICE_API_ALLOW_ANONYMOUS", "true")]).unwrap();
        assert!(open.scheduler.check_api_exposure().is_ok());
    }

    #[test]
    fn secret_file_contents_are_redacted_from_any_text() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("qdrant_key");
        std::fs::write(&file, "qdrant-file-key-5e1f\n").unwrap();
        let s = load(&[("SLUICE_QDRANT_API_KEY_FILE", file.to_str().unwrap())]).unwrap();
        assert_eq!(s.qdrant_api_key.unwrap().expose(), "qdrant-file-key-5e1f");
        let shown = crate::secret::redact("qdrant said: invalid api-key qdrant-file-key-5e1f");
        assert!(!shown.contains("qdrant-file-key-5e1f"), "{shown}");
    }

    #[test]
    fn collection_names_are_checked() {
        assert!(load(&[("SLUICE_COLLECTION", "a/b")]).is_err());
        assert!(load(&[("SLUICE_COLLECTION", "docs_v2-en")]).is_ok());
    }

    #[test]
    fn embed_rate_limits_default_to_unlimited_and_are_validated() {
        let s = load(&[]).unwrap();
        assert_eq!((s.embed.concurrency, s.embed.max_concurrency), (4, 64));
        assert_eq!(
            (s.embed.tokens_per_minute, s.embed.requests_per_minute),
            (None, None)
        );
        let s = load(&[("SLUICE_EMBED_TPM", "950000"), ("SLUICE_EMBED_RPM", "1900")]).unwrap();
        assert_eq!(s.embed.tokens_per_minute, Some(950_000));
        assert_eq!(s.embed.requests_per_minute, Some(1900));
        let err = load(&[
            ("SLUICE_EMBED_CONCURRENCY", "8"),
            ("SLUICE_EMBED_MAX_CONCURRENCY", "4"),
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("SLUICE_EMBED_MAX_CONCURRENCY"), "{err}");
        let err = load(&[("SLUICE_EMBED_TPM", "0")]).unwrap_err().to_string();
        assert!(err.contains("SLUICE_EMBED_TPM"), "{err}");
        assert_eq!(s.embed.budget_scope, BudgetScope::Fleet);
        let s = load(&[("SLUICE_EMBED_BUDGET", "process")]).unwrap();
        assert_eq!(s.embed.budget_scope, BudgetScope::Process);
        let err = load(&[("SLUICE_EMBED_BUDGET", "org")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("SLUICE_EMBED_BUDGET"), "{err}");
    }
}
