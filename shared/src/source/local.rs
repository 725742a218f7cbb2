//! Local folders, read with `std::fs` rather than through `object_store` because a folder a
//! producer can write into is hostile ground:
//! - listing never follows a symlink out of the root (`x -> /` would publish the filesystem), and
//!   a symlink loop or an unreadable sub-folder skips that entry instead of failing the listing;
//! - only regular files are listed or read: opening a FIFO blocks until a writer appears and a
//!   device never ends, so both are refused (the open itself is non-blocking);
//! - every read runs under a time limit (`SLUICE_READ_TIMEOUT_SECS`), so a hung mount fails the
//!   document instead of holding its job forever. The blocked thread cannot be interrupted; it
//!   stays parked until the kernel gives up, which is why the limit matters.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use object_store::path::Path as ObjPath;

use super::{SourceError, SourceObject};

/// The stable URI of a local file: `file://` + the percent-encoded absolute path.
pub(crate) fn file_uri(path: &Path) -> String {
    url::Url::from_file_path(path)
        .map(|u| u.to_string())
        .unwrap_or_else(|_| format!("file://{}", path.display()))
}

/// Every regular file under `root` (a canonical folder), hidden entries skipped, symlinks
/// followed only when they resolve to a file inside `root` (listed under the link's own path;
/// a symlinked folder inside the root is listed through its real path instead, which also makes
/// loops impossible).
pub(crate) fn list(root: &Path) -> Vec<SourceObject> {
    let mut objects = Vec::new();
    let walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|entry| {
            entry.depth() == 0 || !entry.file_name().to_string_lossy().starts_with('.')
        });
    for entry in walk {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(error = %e, "skipping an unreadable entry while listing");
                continue;
            }
        };
        let file_type = entry.file_type();
        let meta = if file_type.is_file() {
            entry.metadata().ok()
        } else if file_type.is_symlink() {
            followed(root, entry.path())
        } else {
            None
        };
        let Some(meta) = meta else { continue };
        if let Some(object) = object(entry.path(), &meta) {
            objects.push(object);
        }
    }
    objects
}

/// The metadata of a symlink's target, if it is a regular file inside `root`.
fn followed(root: &Path, link: &Path) -> Option<Metadata> {
    let real = match std::fs::canonicalize(link) {
        Ok(real) => real,
        Err(e) => {
            tracing::warn!(link = %link.display(), error = %e, "skipping a dangling or looping symlink");
            return None;
        }
    };
    if !real.starts_with(root) {
        tracing::warn!(link = %link.display(), root = %root.display(), "skipping a symlink that leaves the watched folder");
        return None;
    }
    std::fs::metadata(&real).ok().filter(Metadata::is_file)
}

/// A listed file; `None` for a path `object_store` cannot name (illegal segment).
pub(crate) fn object(path: &Path, meta: &Metadata) -> Option<SourceObject> {
    let location = ObjPath::from_absolute_path(path).ok()?;
    Some(SourceObject {
        uri: file_uri(path),
        location,
        size: meta.len(),
        e_tag: Some(e_tag(meta)),
        last_modified: meta
            .modified()
            .map(DateTime::<Utc>::from)
            .unwrap_or_else(|_| DateTime::<Utc>::from(SystemTime::UNIX_EPOCH)),
    })
}

/// The same ETag `object_store`'s local store computes, so watch state recorded before this
/// listing existed does not see every file as changed.
fn e_tag(meta: &Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("\"{:x}-{mtime:x}-{:x}\"", meta.ino(), meta.len())
}

/// A file opened for reading, known to be regular and within the size limit.
pub(crate) struct Opened {
    file: File,
    pub size: u64,
}

/// Open `path` without following a final symlink and without blocking on a FIFO, and check it is
/// a regular file no larger than `max_size`.
pub(crate) async fn open(
    uri: &str,
    path: PathBuf,
    max_size: u64,
    timeout: Duration,
) -> Result<Opened, SourceError> {
    let owned_uri = uri.to_string();
    blocking(uri, timeout, move || {
        let io = |e: std::io::Error| io_error(&owned_uri, e);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(SourceError::NotRegularFile {
                uri: owned_uri,
                what: describe(&meta),
            });
        }
        if meta.len() > max_size {
            return Err(SourceError::TooLarge {
                uri: owned_uri,
                size: meta.len(),
                limit: max_size,
            });
        }
        Ok(Opened {
            file,
            size: meta.len(),
        })
    })
    .await
}

/// Read an opened file to the end, refusing it if it grew past `max_size`.
pub(crate) async fn read(
    uri: &str,
    opened: Opened,
    max_size: u64,
    timeout: Duration,
) -> Result<Bytes, SourceError> {
    let owned_uri = uri.to_string();
    blocking(uri, timeout, move || {
        let mut buf = Vec::with_capacity(opened.size as usize);
        (&opened.file)
            .take(max_size + 1)
            .read_to_end(&mut buf)
            .map_err(|e| io_error(&owned_uri, e))?;
        if buf.len() as u64 > max_size {
            return Err(SourceError::TooLarge {
                uri: owned_uri,
                size: buf.len() as u64,
                limit: max_size,
            });
        }
        Ok(Bytes::from(buf))
    })
    .await
}

async fn blocking<T: Send + 'static>(
    uri: &str,
    timeout: Duration,
    work: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    match tokio::time::timeout(timeout, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(SourceError::Io {
            uri: uri.to_string(),
            detail: format!("the read task failed: {join}"),
        }),
        Err(_) => Err(SourceError::Timeout {
            uri: uri.to_string(),
            seconds: timeout.as_secs_f64(),
        }),
    }
}

fn io_error(uri: &str, e: std::io::Error) -> SourceError {
    match e.kind() {
        std::io::ErrorKind::NotFound => SourceError::NotFound {
            uri: uri.to_string(),
        },
        // O_NOFOLLOW on a symlink: it was swapped in after the path was checked.
        _ if e.raw_os_error() == Some(libc::ELOOP) => SourceError::Forbidden {
            uri: uri.to_string(),
            reason: "became a symlink after it was checked".into(),
        },
        _ => SourceError::Io {
            uri: uri.to_string(),
            detail: e.to_string(),
        },
    }
}

fn describe(meta: &Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a folder"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fifos_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = open("file:///pipe", fifo, 1 << 20, Duration::from_secs(5))
            .await
            .err()
            .expect("a FIFO is refused");
        assert_eq!(err.kind(), "not_regular_file", "{err}");
        assert!(err.to_string().contains("FIFO"), "{err}");
        // And a listing does not include it.
        std::fs::write(dir.path().join("a.txt"), "a").unwrap();
        let names: Vec<_> = list(dir.path()).into_iter().map(|o| o.uri).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let err = open(
            "file:///dev/zero",
            "/dev/zero".into(),
            1 << 20,
            Duration::from_secs(5),
        )
        .await
        .err()
        .expect("a device is refused");
        assert_eq!(err.kind(), "not_regular_file", "{err}");
    }

    #[tokio::test]
    async fn a_read_that_hangs_times_out() {
        let err = blocking::<()>("file:///hung", Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_secs(2));
            Ok(())
        })
        .await
        .unwrap_err();
        assert_eq!(err.kind(), "source_timeout", "{err}");
        assert!(err.is_retryable());
    }

    #[test]
    fn listing_skips_escaping_symlinks_and_survives_loops() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(outer.path().join("secret.txt"), "pw").unwrap();
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, root.join(name)).unwrap()
        };
        link(Path::new("/"), "everything");
        link(&outer.path().join("secret.txt"), "secret.txt");
        link(&root.join("sub/a.txt"), "alias.txt");
        link(&root, "self");
        link(&root.join("loop-b"), "loop-a");
        link(&root.join("loop-a"), "loop-b");
        link(&root.join("missing"), "dangling");
        let root = std::fs::canonicalize(&root).unwrap();
        let mut names: Vec<_> = list(&root)
            .into_iter()
            .map(|o| o.uri.rsplit('/').next().unwrap().to_string())
            .collect();
        names.sort();
        assert_eq!(names, vec!["a.txt", "alias.txt"]);
    }
}
