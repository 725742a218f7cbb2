//! Read stage: where documents come from. A local folder or file, or any `object_store` URL
//! (`file://`, `s3://`, `gs://`, `az://`; credentials from the usual `AWS_*` / `GOOGLE_*` / `AZURE_*`
//! environment). Every document is named by a stable URI (`file:///abs/path`, `s3://bucket/key`),
//! which is also its default `doc_id`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::memory::{DocumentBudget, Reservation};

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
}

impl SourceError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Io { .. } => true,
            SourceError::InvalidLocation { .. }
            | SourceError::NotFound { .. }
            | SourceError::TooLarge { .. } => false,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SourceError::InvalidLocation { .. } => "invalid_location",
            SourceError::NotFound { .. } => "not_found",
            SourceError::TooLarge { .. } => "too_large",
            SourceError::Io { .. } => "source_io",
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
        let uri_base = "file://".to_string();
        let root_uri = join_uri(&uri_base, &root);
        Ok(Source {
            store: Arc::new(object_store::local::LocalFileSystem::new()),
            uri_base,
            root,
            root_uri,
            prefix_only: false,
        })
    }

    /// The URI of the location as opened; every listed object's URI starts with it.
    pub fn root_uri(&self) -> &str {
        &self.root_uri
    }

    /// Every object under the location (or the single object it names), sorted by URI. Hidden
    /// files and folders (a path segment starting with `.`) are skipped.
    pub async fn list(&self) -> Result<Vec<SourceObject>, SourceError> {
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
    }

    /// Open the location of a single URI (as produced by [`Source::list`]) and read it.
    pub async fn read_uri(uri: &str, max_size: u64) -> Result<Bytes, SourceError> {
        Self::read_uri_reserving(uri, max_size, None)
            .await
            .map(|(bytes, _)| bytes)
    }

    /// [`Source::read_uri`], first reserving the object's size in `budget` (from the same
    /// metadata request, so no extra round trip). Hold the reservation until the document is
    /// processed.
    pub async fn read_uri_reserving(
        uri: &str,
        max_size: u64,
        budget: Option<&DocumentBudget>,
    ) -> Result<(Bytes, Option<Reservation>), SourceError> {
        let source = Source::open(uri)?;
        let meta = source
            .store
            .head(&source.root)
            .await
            .map_err(|e| source.io_error(uri, e))?;
        let object = source.object(meta);
        let reservation = match budget {
            // A file over the size limit is refused without being read: nothing to reserve.
            Some(budget) if object.size <= max_size => Some(budget.reserve(object.size).await),
            _ => None,
        };
        Ok((source.read(&object, max_size).await?, reservation))
    }
}

fn join_uri(base: &str, path: &ObjPath) -> String {
    if base == "file://" {
        // Percent-encode like a browser would so the URI is valid, yet stable for one path.
        let raw = format!("/{}", path.as_ref());
        return url::Url::from_file_path(&raw)
            .map(|u| u.to_string())
            .unwrap_or_else(|_| format!("file://{raw}"));
    }
    if path.as_ref().is_empty() {
        base.to_string()
    } else {
        format!("{base}/{}", path.as_ref())
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
}
