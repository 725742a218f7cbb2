//! Read stage: where documents come from. A local folder or file, or any `object_store` URL
//! (`file://`, `s3://`, `gs://`, `az://`; credentials from the usual `AWS_*` / `GOOGLE_*` / `AZURE_*`
//! environment). Every document is named by a stable URI (`file:///abs/path`, `s3://bucket/key`),
//! which is also its default `doc_id`. Object keys are percent-encoded in URIs where a URL would
//! otherwise misread them (`%`, `?`, `#`), so every key round-trips through its URI.
//!
//! Which sources a job may name is decided by [`AllowList`] (`SLUICE_ALLOWED_SOURCES`); local
//! folders are listed and read by [`local`], which never leaves the root and never blocks on a
//! FIFO or a hung mount past `SLUICE_READ_TIMEOUT_SECS`.

mod allow;
mod local;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::memory::{DocumentBudget, Reservation};

pub use allow::{AllowList, Allowed, SETTING as ALLOWED_SOURCES_SETTING};

/// Default of `SLUICE_READ_TIMEOUT_SECS`: how long reading one source may take.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{input}: {reason}")]
    InvalidLocation { input: String, reason: String },
    #[error("{uri}: no such file or object")]
    NotFound { uri: String },
    #[error("{uri}: {size} bytes is over the {limit}-byte limit (SLUICE_MAX_FILE_SIZE)")]
    TooLarge { uri: String, size: u64, limit: u64 },
    #[error("{uri}: {detail}")]
    Io { uri: String, detail: String },
    /// Outside `SLUICE_ALLOWED_SOURCES` (or a symlink leading out of it): never retried.
    #[error("{uri}: forbidden source: {reason}")]
    Forbidden { uri: String, reason: String },
    /// A FIFO, device, socket or folder: reading it could block forever or never end.
    #[error("{uri}: {what}, not a regular file; only regular files are read")]
    NotRegularFile { uri: String, what: &'static str },
    /// The read did not finish within `SLUICE_READ_TIMEOUT_SECS` (a hung mount or server).
    #[error("{uri}: the read took longer than {seconds} s (SLUICE_READ_TIMEOUT_SECS)")]
    Timeout { uri: String, seconds: f64 },
}

impl SourceError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Io { .. } | SourceError::Timeout { .. } => true,
            SourceError::InvalidLocation { .. }
            | SourceError::NotFound { .. }
            | SourceError::TooLarge { .. }
            | SourceError::Forbidden { .. }
            | SourceError::NotRegularFile { .. } => false,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::InvalidLocation { .. } => "invalid_location",
            SourceError::NotFound { .. } => "not_found",
            SourceError::TooLarge { .. } => "too_large",
            SourceError::Io { .. } => "source_io",
            SourceError::Forbidden { .. } => "forbidden_source",
            SourceError::NotRegularFile { .. } => "not_regular_file",
            SourceError::Timeout { .. } => "source_timeout",
        }
    }
}

/// One object found by listing.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceObject {
    /// Stable URI; the default document id.
    pub uri: String,
    pub location: ObjPath,
    pub size: u64,
    pub e_tag: Option<String>,
    pub last_modified: DateTime<Utc>,
}

/// An opened location: a store plus the prefix (or single object) the user named.
#[derive(Clone)]
pub struct Source {
    store: Arc<dyn ObjectStore>,
    /// URI prefix of objects in this store: `file://` or `s3://bucket`.
    uri_base: String,
    /// What the user asked for, inside the store.
    root: ObjPath,
    /// `file://` + absolute path (or the URL as given) of the root; the prefix `--prune` uses.
    root_uri: String,
    /// The URL ended in `/`: a prefix, never a single object, so listing skips the HEAD probe
    /// (some S3 servers answer HEAD on a "folder" with an error that the client retries).
    prefix_only: bool,
    /// Local: the canonical root folder or file, listed and read with `std::fs` (see [`local`]).
    local_root: Option<PathBuf>,
    read_timeout: Duration,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("root_uri", &self.root_uri)
            .finish()
    }
}

impl Source {
    /// Open a local path (relative paths resolve against the working directory) or a URL.
    pub fn open(input: &str) -> Result<Self, SourceError> {
        let invalid = |reason: String| SourceError::InvalidLocation {
            input: input.to_string(),
            reason,
        };
        if input.contains("://") {
            let url =
                url::Url::parse(input).map_err(|e| invalid(format!("not a valid URL: {e}")))?;
            if url.scheme() == "file" {
                let path = url
                    .to_file_path()
                    .map_err(|_| invalid("not a local file URL".into()))?;
                return Self::open_local(input, &path);
            }
            let (store, root) = object_store::parse_url_opts(&url, std::env::vars())
                .map_err(|e| invalid(e.to_string()))?;
            let uri_base = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
            let root_uri = join_uri(&uri_base, &root);
            return Ok(Source {
                store: Arc::from(store),
                uri_base,
                root,
                root_uri,
                prefix_only: url.path().ends_with('/'),
                local_root: None,
                read_timeout: DEFAULT_READ_TIMEOUT,
            });
        }
        Self::open_local(input, Path::new(input))
    }

    fn open_local(input: &str, path: &Path) -> Result<Self, SourceError> {
        let abs: PathBuf = std::fs::canonicalize(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SourceError::NotFound {
                uri: input.to_string(),
            },
            _ => SourceError::Io {
                uri: input.to_string(),
                detail: e.to_string(),
            },
        })?;
        let root =
            ObjPath::from_filesystem_path(&abs).map_err(|e| SourceError::InvalidLocation {
                input: input.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Source {
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            uri_base: "file://".to_string(),
            root,
            root_uri: local::file_uri(&abs),
            prefix_only: false,
            local_root: Some(abs),
            read_timeout: DEFAULT_READ_TIMEOUT,
        })
    }

    /// Limit each read to `timeout` (`SLUICE_READ_TIMEOUT_SECS`; default two minutes).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The URI of the location as opened; every listed object's URI starts with it.
    pub fn root_uri(&self) -> &str {
        &self.root_uri
    }

    /// Every object under the location (or the single object it names), sorted by URI. Hidden
    /// files and folders (a path segment starting with `.`) are skipped.
    pub async fn list(&self) -> Result<Vec<SourceObject>, SourceError> {
        if let Some(root) = &self.local_root {
            return self.list_local(root.clone()).await;
        }
        if !self.prefix_only
            && let Ok(meta) = self.store.head(&self.root).await
        {
            return Ok(vec![self.object(meta)]);
        }
        let prefix = if self.root.as_ref().is_empty() {
            None
        } else {
            Some(&self.root)
        };
        let mut objects: Vec<SourceObject> = self
            .store
            .list(prefix)
            .map_err(|e| self.io_error(&self.root_uri, e))
            .try_filter(|meta| {
                // Only segments below the root count: `/tmp/.cache/docs` itself may be hidden.
                let hidden = match meta.location.prefix_match(&self.root) {
                    Some(mut below) => below.any(|p| p.as_ref().starts_with('.')),
                    None => false,
                };
                futures::future::ready(!hidden)
            })
            .map_ok(|meta| self.object(meta))
            .try_collect()
            .await?;
        if objects.is_empty() && !self.exists_as_prefix().await {
            return Err(SourceError::NotFound {
                uri: self.root_uri.clone(),
            });
        }
        objects.sort_by(|a, b| a.uri.cmp(&b.uri));
        Ok(objects)
    }

    async fn list_local(&self, root: PathBuf) -> Result<Vec<SourceObject>, SourceError> {
        let uri = self.root_uri.clone();
        let listing = tokio::task::spawn_blocking(move || {
            let meta = std::fs::metadata(&root).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => SourceError::NotFound { uri: uri.clone() },
                _ => SourceError::Io {
                    uri: uri.clone(),
                    detail: e.to_string(),
                },
            })?;
            if meta.is_dir() {
                return Ok(local::list(&root));
            }
            if !meta.is_file() {
                return Err(SourceError::NotRegularFile {
                    uri,
                    what: "not a folder or regular file",
                });
            }
            Ok(local::object(&root, &meta).into_iter().collect())
        })
        .await
        .map_err(|e| SourceError::Io {
            uri: self.root_uri.clone(),
            detail: format!("listing failed: {e}"),
        })??;
        let mut objects = listing;
        objects.sort_by(|a, b| a.uri.cmp(&b.uri));
        Ok(objects)
    }

    async fn exists_as_prefix(&self) -> bool {
        // An empty local folder exists; a remote prefix with no objects is indistinguishable from a
        // missing one and is reported as empty rather than missing.
        if self.uri_base == "file://" {
            let path = format!("/{}", self.root.as_ref());
            return Path::new(&path).is_dir();
        }
        true
    }

    fn object(&self, meta: object_store::ObjectMeta) -> SourceObject {
        SourceObject {
            uri: join_uri(&self.uri_base, &meta.location),
            size: meta.size,
            e_tag: meta.e_tag,
            last_modified: meta.last_modified,
            location: meta.location,
        }
    }

    fn io_error(&self, uri: &str, e: object_store::Error) -> SourceError {
        match e {
            object_store::Error::NotFound { .. } => SourceError::NotFound {
                uri: uri.to_string(),
            },
            other => SourceError::Io {
                uri: uri.to_string(),
                detail: other.to_string(),
            },
        }
    }

    /// Read one object, refusing anything over `max_size` bytes before downloading it.
    pub async fn read(&self, object: &SourceObject, max_size: u64) -> Result<Bytes, SourceError> {
        let too_large = |size| SourceError::TooLarge {
            uri: object.uri.clone(),
            size,
            limit: max_size,
        };
        if object.size > max_size {
            return Err(too_large(object.size));
        }
        if let Some(root) = &self.local_root {
            // Re-checked at read time: the file may have been swapped for a symlink out of the
            // root since it was listed.
            let mut allow = AllowList::default();
            allow.allow(&root.to_string_lossy())?;
            let Allowed::Local(path) = allow.check(&object.uri)? else {
                unreachable!("a local root only allows local paths")
            };
            let opened = local::open(&object.uri, path, max_size, self.read_timeout).await?;
            return local::read(&object.uri, opened, max_size, self.read_timeout).await;
        }
        let read = async {
            let result = self
                .store
                .get(&object.location)
                .await
                .map_err(|e| self.io_error(&object.uri, e))?;
            // The object may have grown since it was listed.
            if result.meta.size > max_size {
                return Err(too_large(result.meta.size));
            }
            result
                .bytes()
                .await
                .map_err(|e| self.io_error(&object.uri, e))
        };
        self.timed(&object.uri, read).await
    }

    async fn timed<T>(
        &self,
        uri: &str,
        work: impl Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        tokio::time::timeout(self.read_timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(SourceError::Timeout {
                    uri: uri.to_string(),
                    seconds: self.read_timeout.as_secs_f64(),
                })
            })
    }

    /// Read the single object a job names, if `allow` allows it, first reserving its size in
    /// `budget` (from the same metadata request, so no extra round trip). Hold the reservation
    /// until the document is processed. Local files are opened at their canonical path (the one
    /// the check approved), never through a symlink, and must be regular files.
    pub async fn read_uri_reserving(
        uri: &str,
        allow: &AllowList,
        limits: ReadLimits,
        budget: Option<&DocumentBudget>,
    ) -> Result<(Bytes, Option<Reservation>), SourceError> {
        let max_size = limits.max_size;
        let reserve = |size: u64| async move {
            match budget {
                Some(budget) => Some(budget.reserve(size).await),
                None => None,
            }
        };
        if let Allowed::Local(path) = allow.check(uri)? {
            let opened = local::open(uri, path, max_size, limits.timeout).await?;
            let reservation = reserve(opened.size).await;
            let bytes = local::read(uri, opened, max_size, limits.timeout).await?;
            return Ok((bytes, reservation));
        }
        let source = Source::open(uri)?.with_read_timeout(limits.timeout);
        let head = async {
            source
                .store
                .head(&source.root)
                .await
                .map_err(|e| source.io_error(uri, e))
        };
        let object = source.object(source.timed(uri, head).await?);
        // A file over the size limit is refused without being read: nothing to reserve.
        let reservation = if object.size <= max_size {
            reserve(object.size).await
        } else {
            None
        };
        Ok((source.read(&object, max_size).await?, reservation))
    }
}

/// Bounds of one read.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// `SLUICE_MAX_FILE_SIZE`.
    pub max_size: u64,
    /// `SLUICE_READ_TIMEOUT_SECS`.
    pub timeout: Duration,
}

/// The URI of object `key` in `bucket`: `%`, `?` and `#` are percent-encoded so a URL parser
/// reads back exactly `key` (S3 keys may contain any of them); everything else stays readable.
pub fn object_uri(scheme: &str, bucket: &str, key: &str) -> String {
    // Control characters stay raw so the job contract still refuses them by name.
    const IN_KEY: &percent_encoding::AsciiSet = &percent_encoding::AsciiSet::EMPTY
        .add(b'%')
        .add(b'?')
        .add(b'#');
    if key.is_empty() {
        return format!("{scheme}://{bucket}");
    }
    format!(
        "{scheme}://{bucket}/{}",
        percent_encoding::utf8_percent_encode(key, IN_KEY)
    )
}

/// `base` is `<scheme>://<bucket>` (local files are named by [`local::file_uri`]).
fn join_uri(base: &str, path: &ObjPath) -> String {
    match base.split_once("://") {
        Some((scheme, bucket)) => object_uri(scheme, bucket, path.as_ref()),
        None => base.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lists_a_folder_recursively_skipping_hidden_files() {
        // The folder itself sits below a hidden one: only hidden entries inside it are skipped.
        let outer = tempfile::Builder::new()
            .prefix(".hidden-parent")
            .tempdir()
            .unwrap();
        let dir = tempfile::tempdir_in(outer.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        std::fs::write(dir.path().join("sub/b c.md"), "bb").unwrap();
        std::fs::write(dir.path().join(".git/config"), "x").unwrap();
        std::fs::write(dir.path().join(".DS_Store"), "x").unwrap();
        let source = Source::open(dir.path().to_str().unwrap()).unwrap();
        let objects = source.list().await.unwrap();
        let names: Vec<_> = objects
            .iter()
            .map(|o| o.uri.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["a.txt", "b%20c.md"]);
        assert!(objects.iter().all(|o| o.uri.starts_with(source.root_uri())));
        assert_eq!(
            source.read(&objects[1], 10).await.unwrap(),
            Bytes::from("bb")
        );
        // The same file reached by a file:// URL gets the same URI.
        let again = Source::open(&objects[1].uri).unwrap().list().await.unwrap();
        assert_eq!(again[0].uri, objects[1].uri);
    }

    #[tokio::test]
    async fn oversize_and_missing_objects_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big.txt"), vec![b'x'; 2048]).unwrap();
        let source = Source::open(dir.path().to_str().unwrap()).unwrap();
        let objects = source.list().await.unwrap();
        let err = source.read(&objects[0], 1024).await.unwrap_err();
        assert!(
            matches!(
                err,
                SourceError::TooLarge {
                    size: 2048,
                    limit: 1024,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("big.txt"));
        let missing = dir.path().join("nope");
        let err = Source::open(missing.to_str().unwrap()).unwrap_err();
        assert!(
            matches!(err, SourceError::NotFound { .. }) && err.to_string().contains("nope"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join("big.txt")).unwrap();
        let err = source.read(&objects[0], 1 << 20).await.unwrap_err();
        assert!(matches!(err, SourceError::NotFound { .. }), "{err}");
    }

    #[tokio::test]
    async fn object_keys_with_url_syntax_round_trip_through_their_uris() {
        // object_store's in-memory store stands in for S3 here (s3s-fs is not on this machine);
        // what is checked is Sluice's side: key → listed URI → key read back.
        let keys = [
            "docs/what?.txt",
            "docs/c#sharp.txt",
            "docs/100%.txt",
            "docs/a%20b.txt",
            "docs/1+1 = 2.txt",
        ];
        let store = Arc::new(object_store::memory::InMemory::new());
        for key in keys {
            // `parse`, not `from`: keys as an S3 listing returns them, unescaped.
            store
                .put(
                    &ObjPath::parse(key).unwrap(),
                    key.as_bytes().to_vec().into(),
                )
                .await
                .unwrap();
        }
        // A decoy each key could be misread as.
        store
            .put(
                &ObjPath::from("docs/what"),
                "wrong".as_bytes().to_vec().into(),
            )
            .await
            .unwrap();
        let source = Source {
            store: store.clone(),
            uri_base: "s3://bucket".into(),
            root: ObjPath::from("docs"),
            root_uri: "s3://bucket/docs".into(),
            prefix_only: true,
            local_root: None,
            read_timeout: DEFAULT_READ_TIMEOUT,
        };
        let listed = source.list().await.unwrap();
        assert_eq!(listed.len(), keys.len() + 1);
        let allow = AllowList::parse("s3://bucket/docs/").unwrap();
        for object in listed {
            // What a worker does with the URI: the allow-list and the reader both decode it to
            // the key that was listed.
            assert!(allow.check(&object.uri).is_ok(), "{}", object.uri);
            let reopened = Source::open(&object.uri).unwrap();
            assert_eq!(reopened.root, object.location, "{}", object.uri);
            let bytes = source.read(&object, 1 << 20).await.unwrap();
            if object.location.as_ref() != "docs/what" {
                assert_eq!(bytes, object.location.as_ref().as_bytes(), "{}", object.uri);
            }
        }
        assert_eq!(
            object_uri("s3", "bucket", "docs/what?.txt"),
            "s3://bucket/docs/what%3F.txt"
        );
        assert_eq!(
            object_uri("s3", "bucket", "docs/1+1 = 2.txt"),
            "s3://bucket/docs/1+1 = 2.txt",
            "readable where a URL parser reads it right"
        );
    }
}
