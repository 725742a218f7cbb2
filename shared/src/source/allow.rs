//! The source allow-list (`SLUICE_ALLOWED_SOURCES`): the folders and bucket prefixes a job may
//! name. A job comes from a producer Sluice does not control, so its `source` decides nothing by
//! itself: a worker reads it only if it lies under one of these roots.
//!
//! Local files are compared after canonicalisation (`..` and every symlink resolved), so a
//! symlink inside a root that points out of it is refused. Object-store URIs are compared by
//! scheme, bucket and key prefix, the key decoded exactly as the reader decodes it; a root's
//! prefix always ends at a `/`, so `s3://b/docs` allows `s3://b/docs/x` but not `s3://b/docs-evil/x`.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use object_store::path::Path as ObjPath;

use super::SourceError;

/// The setting the list comes from, named in every refusal.
pub const SETTING: &str = "SLUICE_ALLOWED_SOURCES";

/// Object-store schemes a root (and a job) may use.
const OBJECT_SCHEMES: [&str; 3] = ["s3", "gs", "az"];

/// Where a job's source may be read from. Empty: nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AllowList {
    roots: Vec<Root>,
}

#[derive(Debug, Clone, PartialEq)]
enum Root {
    /// An absolute folder (or file) as configured; canonicalised at each check, so a root that
    /// is itself a symlink (`/data -> /mnt/data`) or is mounted after start-up works.
    Local(PathBuf),
    Object {
        scheme: String,
        bucket: String,
        /// Decoded key prefix: empty (the whole bucket) or ending in `/`.
        prefix: String,
    },
}

/// A local source that passed the check: the canonical path to read (no symlinks left).
#[derive(Debug, Clone, PartialEq)]
pub enum Allowed {
    Local(PathBuf),
    Object,
}

fn forbidden(uri: &str, reason: impl Into<String>) -> SourceError {
    SourceError::Forbidden {
        uri: uri.to_string(),
        reason: reason.into(),
    }
}

fn invalid(input: &str, reason: impl Into<String>) -> SourceError {
    SourceError::InvalidLocation {
        input: input.to_string(),
        reason: reason.into(),
    }
}

impl AllowList {
    /// Parse comma-separated roots: local folders (absolute, or relative to the working
    /// directory), `file:///dir/` URLs and `s3://bucket/prefix/`, `gs://bucket/`,
    /// `az://container/` URLs.
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        let mut list = AllowList::default();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            list.allow(entry)?;
        }
        Ok(list)
    }

    /// Add one root (what `sluice ingest <location>` and `SLUICE_WATCH` do for their own
    /// locations).
    pub fn allow(&mut self, location: &str) -> Result<(), SourceError> {
        let root = parse_root(location)?;
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// The roots, for a start-up log line.
    pub fn describe(&self) -> Vec<String> {
        self.roots
            .iter()
            .map(|root| match root {
                Root::Local(path) => path.display().to_string(),
                Root::Object {
                    scheme,
                    bucket,
                    prefix,
                } => format!("{scheme}://{bucket}/{prefix}"),
            })
            .collect()
    }

    /// The check a worker makes before reading: local paths are canonicalised here (so call it
    /// on the host that reads). `Ok(Allowed::Local(path))` names the file to open.
    pub fn check(&self, uri: &str) -> Result<Allowed, SourceError> {
        self.check_inner(uri, true)
    }

    /// The check for a process that does not read the file (the scheduler's API, which may not
    /// even see the workers' disks): `..` is resolved lexically, symlinks are left to the worker.
    pub fn check_lexical(&self, uri: &str) -> Result<(), SourceError> {
        self.check_inner(uri, false).map(|_| ())
    }

    fn check_inner(&self, uri: &str, resolve: bool) -> Result<Allowed, SourceError> {
        let target = parse_target(uri)?;
        if self.roots.is_empty() {
            return Err(forbidden(
                uri,
                format!(
                    "no source is allowed: {SETTING} is empty (set it to the folders and \
                     bucket prefixes this process may read)"
                ),
            ));
        }
        let outside = || forbidden(uri, format!("not under any root in {SETTING}"));
        match target {
            Target::Object {
                scheme,
                bucket,
                key,
            } => {
                let inside = self.roots.iter().any(|root| match root {
                    Root::Object {
                        scheme: s,
                        bucket: b,
                        prefix,
                    } => *s == scheme && *b == bucket && key.starts_with(prefix.as_str()),
                    Root::Local(_) => false,
                });
                if inside {
                    Ok(Allowed::Object)
                } else {
                    Err(outside())
                }
            }
            Target::Local(path) => {
                let lexical = normalize(&path);
                let lexically_inside = self.local_roots().any(|root| {
                    lexical.starts_with(root)
                        || std::fs::canonicalize(root).is_ok_and(|r| lexical.starts_with(r))
                });
                if !resolve {
                    return if lexically_inside {
                        Ok(Allowed::Local(lexical))
                    } else {
                        Err(outside())
                    };
                }
                match std::fs::canonicalize(&lexical) {
                    Ok(real) => {
                        let inside = self
                            .local_roots()
                            .filter_map(|root| std::fs::canonicalize(root).ok())
                            .any(|root| real.starts_with(root));
                        if inside {
                            Ok(Allowed::Local(real))
                        } else if lexically_inside {
                            Err(forbidden(
                                uri,
                                format!(
                                    "a symlink on the way resolves outside every root in {SETTING}"
                                ),
                            ))
                        } else {
                            Err(outside())
                        }
                    }
                    // Say "missing" only inside a root: outside, even existence is not revealed.
                    Err(_) if !lexically_inside => Err(outside()),
                    Err(e) if e.kind() == ErrorKind::NotFound => Err(SourceError::NotFound {
                        uri: uri.to_string(),
                    }),
                    Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                        Err(invalid(uri, "symlink loop"))
                    }
                    Err(e) => Err(SourceError::Io {
                        uri: uri.to_string(),
                        detail: e.to_string(),
                    }),
                }
            }
        }
    }

    fn local_roots(&self) -> impl Iterator<Item = &Path> {
        self.roots.iter().filter_map(|root| match root {
            Root::Local(path) => Some(path.as_path()),
            Root::Object { .. } => None,
        })
    }
}

/// What a source URI names, decoded the way the reader decodes it.
enum Target {
    Local(PathBuf),
    Object {
        scheme: String,
        bucket: String,
        key: String,
    },
}

fn parse_target(uri: &str) -> Result<Target, SourceError> {
    if !uri.contains("://") {
        let path = Path::new(uri);
        if !path.is_absolute() {
            return Err(invalid(uri, "a local source must be an absolute path"));
        }
        return Ok(Target::Local(path.to_path_buf()));
    }
    let url = url::Url::parse(uri).map_err(|e| invalid(uri, format!("not a valid URL: {e}")))?;
    match url.scheme() {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|_| invalid(uri, "not a local file URL (a host other than localhost?)"))?;
            Ok(Target::Local(path))
        }
        scheme if OBJECT_SCHEMES.contains(&scheme) => {
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| invalid(uri, "no bucket"))?;
            if url.query().is_some() || url.fragment().is_some() {
                // A raw `?` or `#` in a key must be written %3F / %23; otherwise the object read
                // would be another one than the URI seems to name.
                return Err(invalid(
                    uri,
                    "has a query or fragment: percent-encode `?` as %3F and `#` as %23 in keys",
                ));
            }
            let key = ObjPath::from_url_path(url.path())
                .map_err(|e| invalid(uri, format!("not a valid object key: {e}")))?;
            Ok(Target::Object {
                scheme: scheme.to_string(),
                bucket: bucket.to_string(),
                key: key.as_ref().to_string(),
            })
        }
        other => Err(invalid(
            uri,
            format!("unsupported scheme {other:?}: expected file, s3, gs or az"),
        )),
    }
}

fn parse_root(location: &str) -> Result<Root, SourceError> {
    if !location.contains("://") {
        let path = Path::new(location);
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| invalid(location, format!("no working directory: {e}")))?
                .join(path)
        };
        return Ok(Root::Local(normalize(&abs)));
    }
    match parse_target(location)? {
        Target::Local(path) => Ok(Root::Local(normalize(&path))),
        Target::Object {
            scheme,
            bucket,
            key,
        } => Ok(Root::Object {
            scheme,
            bucket,
            prefix: if key.is_empty() {
                key
            } else {
                format!("{key}/")
            },
        }),
    }
}

/// Resolve `.` and `..` without touching the disk (`/a/b/../c` → `/a/c`; `..` at `/` stays `/`).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(result: Result<Allowed, SourceError>) -> &'static str {
        match result {
            Ok(_) => "allowed",
            Err(e) => e.kind(),
        }
    }

    #[test]
    fn empty_list_allows_nothing_and_says_which_setting() {
        let list = AllowList::parse(" , ").unwrap();
        let err = list.check("s3://b/k").unwrap_err();
        assert_eq!(err.kind(), "forbidden_source");
        assert!(err.to_string().contains(SETTING), "{err}");
    }

    #[test]
    fn object_prefixes_stop_at_a_slash() {
        let list = AllowList::parse("s3://b/docs, gs://whole/").unwrap();
        assert_eq!(kind(list.check("s3://b/docs/a.pdf")), "allowed");
        assert_eq!(kind(list.check("s3://b/docs/sub/a.pdf")), "allowed");
        assert_eq!(
            kind(list.check("s3://b/docs-evil/a.pdf")),
            "forbidden_source"
        );
        assert_eq!(kind(list.check("s3://b/docsa.pdf")), "forbidden_source");
        assert_eq!(
            kind(list.check("s3://other/docs/a.pdf")),
            "forbidden_source"
        );
        assert_eq!(kind(list.check("gs://b/docs/a.pdf")), "forbidden_source");
        assert_eq!(kind(list.check("az://b/docs/a.pdf")), "forbidden_source");
        assert_eq!(kind(list.check("gs://whole/any/thing")), "allowed");
        // Dot segments are resolved the way the reader resolves them, never past the prefix.
        assert_eq!(
            kind(list.check("s3://b/docs/../secret")),
            "forbidden_source"
        );
        assert_ne!(kind(list.check("s3://b/docs/%2e%2e/secret")), "allowed");
        assert_eq!(
            kind(list.check("s3://b/docs/x%2F..%2F..%2Fy")),
            "invalid_location"
        );
        // Encoded key characters are compared decoded.
        assert_eq!(
            kind(list.check("s3://b/docs/a%3Fb%23c%25d+e%20f")),
            "allowed"
        );
        assert_eq!(kind(list.check("s3://b/docs/a?x=1")), "invalid_location");
        assert_eq!(kind(list.check("http://b/docs/a")), "invalid_location");
    }

    #[test]
    fn local_paths_are_checked_after_canonicalisation() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("root");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/ok.txt"), "ok").unwrap();
        std::fs::write(outer.path().join("secret.txt"), "pw").unwrap();
        std::fs::create_dir(outer.path().join("root-evil")).unwrap();
        std::fs::write(outer.path().join("root-evil/x.txt"), "x").unwrap();
        std::os::unix::fs::symlink(outer.path().join("secret.txt"), root.join("escape.txt"))
            .unwrap();
        std::os::unix::fs::symlink(outer.path(), root.join("up")).unwrap();
        std::os::unix::fs::symlink(root.join("sub/ok.txt"), root.join("inside.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("loop-b"), root.join("loop-a")).unwrap();
        std::os::unix::fs::symlink(root.join("loop-a"), root.join("loop-b")).unwrap();
        let list = AllowList::parse(&format!("{},s3://b/", root.display())).unwrap();
        let url = |p: &Path| url::Url::from_file_path(p).unwrap().to_string();

        let ok = list.check(&url(&root.join("sub/ok.txt"))).unwrap();
        assert_eq!(
            ok,
            Allowed::Local(std::fs::canonicalize(root.join("sub/ok.txt")).unwrap())
        );
        assert_eq!(kind(list.check(&url(&root.join("inside.txt")))), "allowed");
        // Traversal, written raw (the URL parser resolves it) and as a plain path.
        let traversal = format!("{}/sub/../../secret.txt", url(&root));
        assert_eq!(kind(list.check(&traversal)), "forbidden_source");
        let traversal = format!("{}/sub/../../secret.txt", root.display());
        assert_eq!(kind(list.check(&traversal)), "forbidden_source");
        assert_eq!(kind(list.check("file:///etc/passwd")), "forbidden_source");
        // Prefix boundary: /x/root does not allow /x/root-evil.
        let evil = url(&outer.path().join("root-evil/x.txt"));
        assert_eq!(kind(list.check(&evil)), "forbidden_source");
        // Symlinks that leave the root, to a file or through a folder.
        let err = list.check(&url(&root.join("escape.txt"))).unwrap_err();
        assert_eq!(err.kind(), "forbidden_source");
        assert!(err.to_string().contains("symlink"), "{err}");
        assert_eq!(
            kind(list.check(&url(&root.join("up/secret.txt")))),
            "forbidden_source"
        );
        // A loop fails clearly instead of hanging; a missing file inside a root is "not found",
        // outside it is only "forbidden".
        assert_eq!(
            kind(list.check(&url(&root.join("loop-a")))),
            "invalid_location"
        );
        assert_eq!(kind(list.check(&url(&root.join("nope.txt")))), "not_found");
        assert_eq!(
            kind(list.check(&url(&outer.path().join("nope.txt")))),
            "forbidden_source"
        );
        // The API's lexical check: no disk access, `..` still resolved.
        assert!(list.check_lexical(&url(&root.join("sub/ok.txt"))).is_ok());
        assert!(list.check_lexical(&traversal).is_err());
        assert!(list.check_lexical("file:///etc/passwd").is_err());
    }

    #[test]
    fn a_root_given_through_a_symlink_or_with_dots_still_matches() {
        let outer = tempfile::tempdir().unwrap();
        let real = outer.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("a.txt"), "a").unwrap();
        std::os::unix::fs::symlink(&real, outer.path().join("link")).unwrap();
        let list =
            AllowList::parse(&format!("file://{}/link/../link/", outer.path().display())).unwrap();
        let uri = url::Url::from_file_path(real.join("a.txt")).unwrap();
        assert_eq!(kind(list.check(uri.as_str())), "allowed");
    }
}
