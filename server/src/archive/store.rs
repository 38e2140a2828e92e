//! Where archive files go: a local directory (written to a hidden temporary file, fsynced, then
//! atomically renamed, the directory synced; a new directory is synced in its parent) or an
//! object store (`s3://bucket/prefix`, where a PUT is atomic; credentials and region come from
//! the usual `AWS_*` environment variables).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

use super::visible::{Listings, View, ViewStore};
use crate::error::{Error, Result};

/// A file in the store.
#[derive(Debug, Clone)]
pub struct StoredFile {
    /// Path relative to the archive root, `/`-separated.
    pub path: String,
    pub size: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone)]
pub enum Store {
    Local {
        root: PathBuf,
    },
    Remote {
        store: Arc<dyn ObjectStore>,
        base: url::Url,
        prefix: String,
    },
}

fn archive_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Archive(format!("{what}: {e}"))
}

impl Store {
    /// The store of the directory `dir` inside this one.
    pub(crate) fn within(&self, dir: &str) -> Result<Self> {
        let dir = dir.trim_matches('/');
        Ok(match self {
            Store::Local { root } => Store::Local {
                root: root.join(dir),
            },
            Store::Remote {
                store,
                base,
                prefix,
            } => Store::Remote {
                store: store.clone(),
                base: base.clone(),
                prefix: if prefix.is_empty() {
                    dir.to_string()
                } else {
                    format!("{prefix}/{dir}")
                },
            },
        })
    }

    /// A local path, or `s3://bucket/prefix` (also `memory://name` for tests).
    pub fn open(location: &str) -> Result<Self> {
        if let Some(rest) = location.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| Error::Config(format!("data dir {location}: {e}")))?;
            let base = url::Url::parse(&format!("s3://{bucket}/"))
                .map_err(|e| Error::Config(e.to_string()))?;
            return Ok(Store::Remote {
                store: Arc::new(s3),
                base,
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        if let Some(name) = location.strip_prefix("memory://") {
            let base = url::Url::parse(&format!("memory://{}/", name.trim_matches('/')))
                .map_err(|e| Error::Config(e.to_string()))?;
            return Ok(Store::Remote {
                store: Arc::new(object_store::memory::InMemory::new()),
                base,
                prefix: String::new(),
            });
        }
        if location.contains("://") {
            return Err(Error::Config(format!(
                "data dir {location}: use a local path or s3://bucket/prefix"
            )));
        }
        let root = PathBuf::from(location);
        std::fs::create_dir_all(&root).map_err(|e| {
            archive_err(&format!("cannot create the data dir {}", root.display()), e)
        })?;
        let root = root
            .canonicalize()
            .map_err(|e| archive_err(&root.display().to_string(), e))?;
        Ok(Store::Local { root })
    }

    pub fn describe(&self) -> String {
        match self {
            Store::Local { root } => root.display().to_string(),
            Store::Remote { base, prefix, .. } => format!("{base}{prefix}"),
        }
    }

    fn object_path(prefix: &str, rel: &str) -> ObjectPath {
        if prefix.is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{prefix}/{rel}"))
        }
    }

    /// Writes a whole file durably and atomically.
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        match self {
            Store::Local { root } => {
                let path = root.join(rel);
                tokio::task::spawn_blocking(move || write_local(&path, &bytes))
                    .await
                    .map_err(|e| archive_err("write task", e))?
            }
            Store::Remote { store, prefix, .. } => {
                store
                    .put(&Self::object_path(prefix, rel), bytes.into())
                    .await
                    .map_err(|e| archive_err(rel, e))?;
                Ok(())
            }
        }
    }

    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        match self {
            Store::Local { root } => Ok(Bytes::from(
                std::fs::read(root.join(rel)).map_err(|e| archive_err(rel, e))?,
            )),
            Store::Remote { store, prefix, .. } => {
                let r = store
                    .get(&Self::object_path(prefix, rel))
                    .await
                    .map_err(|e| archive_err(rel, e))?;
                r.bytes().await.map_err(|e| archive_err(rel, e))
            }
        }
    }

    /// A file's bytes, `None` when it is not there (any other failure is an error).
    pub async fn get_if_exists(&self, rel: &str) -> Result<Option<Bytes>> {
        match self {
            Store::Local { root } => match std::fs::read(root.join(rel)) {
                Ok(b) => Ok(Some(Bytes::from(b))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(archive_err(rel, e)),
            },
            Store::Remote { store, prefix, .. } => {
                match store.get(&Self::object_path(prefix, rel)).await {
                    Ok(r) => Ok(Some(r.bytes().await.map_err(|e| archive_err(rel, e))?)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(archive_err(rel, e)),
                }
            }
        }
    }

    /// Every file under `dir` (recursively), hidden temporaries included for local stores.
    pub async fn list(&self, dir: &str) -> Result<Vec<StoredFile>> {
        match self {
            Store::Local { root } => {
                let base = root.join(dir);
                let root = root.clone();
                tokio::task::spawn_blocking(move || list_local(&root, &base))
                    .await
                    .map_err(|e| archive_err("list task", e))?
            }
            Store::Remote { store, prefix, .. } => {
                let p = Self::object_path(prefix, dir);
                let metas: Vec<_> = store
                    .list(Some(&p))
                    .try_collect()
                    .await
                    .map_err(|e| archive_err(dir, e))?;
                let strip = if prefix.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}/")
                };
                Ok(metas
                    .into_iter()
                    .map(|m| StoredFile {
                        path: m
                            .location
                            .to_string()
                            .strip_prefix(&strip)
                            .unwrap_or(m.location.as_ref())
                            .to_string(),
                        size: m.size,
                        modified: m.last_modified,
                    })
                    .collect())
            }
        }
    }

    /// [`Store::list`] for a directory of a few entries (the commit records): a local one is
    /// read on the calling thread, where handing it to the blocking pool would cost more than
    /// the listing itself (each ad hoc query lists the commits once).
    pub async fn list_few(&self, dir: &str) -> Result<Vec<StoredFile>> {
        match self {
            Store::Local { root } => list_local(root, &root.join(dir)),
            Store::Remote { .. } => self.list(dir).await,
        }
    }

    /// Names of the directories directly under `dir` (none when `dir` does not exist), without
    /// reading what they hold.
    pub async fn subdirs(&self, dir: &str) -> Result<Vec<String>> {
        match self {
            Store::Local { root } => {
                let Some(entries) = read_dir_if_any(&root.join(dir))? else {
                    return Ok(Vec::new());
                };
                let mut out: Vec<String> = entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect();
                out.sort();
                Ok(out)
            }
            Store::Remote { store, prefix, .. } => {
                let p = Self::object_path(prefix, dir);
                let listed = store
                    .list_with_delimiter(Some(&p))
                    .await
                    .map_err(|e| archive_err(dir, e))?;
                Ok(listed
                    .common_prefixes
                    .iter()
                    .filter_map(|p| p.filename().map(str::to_string))
                    .collect())
            }
        }
    }

    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self {
            Store::Local { root } => match std::fs::remove_file(root.join(rel)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(archive_err(rel, e)),
            },
            Store::Remote { store, prefix, .. } => {
                match store.delete(&Self::object_path(prefix, rel)).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                    Err(e) => Err(archive_err(rel, e)),
                }
            }
        }
    }

    /// URL of a directory for DataFusion's listing tables (with a trailing slash).
    pub fn table_url(&self, dir: &str) -> String {
        match self {
            Store::Local { root } => format!("{}/{}/", root.display(), dir.trim_matches('/')),
            Store::Remote { base, prefix, .. } => {
                let p = if prefix.is_empty() {
                    dir.trim_matches('/').to_string()
                } else {
                    format!("{prefix}/{}", dir.trim_matches('/'))
                };
                format!("{base}{p}/")
            }
        }
    }

    /// Makes the store readable by DataFusion in `ctx`, as `view` shows it; listings are
    /// shared through `listings` with the other queries of the same view.
    pub fn register(
        &self,
        ctx: &SessionContext,
        view: View,
        listings: Arc<Listings>,
    ) -> Result<()> {
        let (url, store): (url::Url, Arc<dyn ObjectStore>) = match self {
            Store::Local { root } => (
                url::Url::parse("file://").map_err(|e| Error::Config(e.to_string()))?,
                Arc::new(ViewStore::new(
                    local_files(),
                    ObjectPath::from_filesystem_path(root)
                        .map_err(|e| archive_err(&root.display().to_string(), e))?,
                    view,
                    listings,
                )),
            ),
            Store::Remote {
                store,
                base,
                prefix,
            } => (
                base.clone(),
                Arc::new(ViewStore::new(
                    store.clone(),
                    ObjectPath::from(prefix.as_str()),
                    view,
                    listings,
                )),
            ),
        };
        ctx.register_object_store(&url, store);
        Ok(())
    }
}

/// Local archive files as DataFusion reads them: small reads in place where that can be done.
fn local_files() -> Arc<dyn ObjectStore> {
    #[cfg(unix)]
    return Arc::new(super::local::LocalReads::new());
    #[cfg(not(unix))]
    return Arc::new(object_store::local::LocalFileSystem::new());
}

fn write_local(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .ok_or_else(|| Error::Archive(format!("{} has no directory", path.display())))?;
    create_dir_durably(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)
            .map_err(|e| archive_err(&format!("cannot write {}", tmp.display()), e))?;
        f.write_all(bytes)
            .map_err(|e| archive_err(&format!("cannot write {}", tmp.display()), e))?;
        f.sync_all()
            .map_err(|e| archive_err(&format!("cannot sync {}", tmp.display()), e))?;
        drop(f);
        std::fs::rename(&tmp, path)
            .map_err(|e| archive_err(&format!("cannot rename into {}", path.display()), e))
    })();
    if written.is_err() {
        // A full disk should not keep the partial copy: it is written again on retry.
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // Make the rename itself durable.
    sync_dir(dir)
}

/// Creates `dir` and its missing parents one at a time, syncing the parent of each: a new
/// Hive directory's entry (`session=…/driver=…`) must survive a power loss as its files do.
/// Returns the directories synced.
fn create_dir_durably(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut d = Some(dir);
    while let Some(m) = d.filter(|m| !m.as_os_str().is_empty() && !m.is_dir()) {
        missing.push(m);
        d = m.parent();
    }
    let mut synced = Vec::new();
    for m in missing.into_iter().rev() {
        match std::fs::create_dir(m) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && m.is_dir() => {}
            Err(e) => return Err(archive_err(&format!("cannot create {}", m.display()), e)),
        }
        if let Some(parent) = m.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
            synced.push(parent.to_path_buf());
        }
    }
    Ok(synced)
}

/// Makes a directory's entries durable. File systems that cannot sync a directory say so
/// with `InvalidInput`/`Unsupported`: there is nothing more to do there.
fn sync_dir(dir: &Path) -> Result<()> {
    let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
    match synced {
        Err(e)
            if !matches!(
                e.kind(),
                std::io::ErrorKind::InvalidInput | std::io::ErrorKind::Unsupported
            ) =>
        {
            Err(archive_err(&format!("cannot sync {}", dir.display()), e))
        }
        _ => Ok(()),
    }
}

/// The entries of a local directory; `None` when there is nothing to list there: missing, or a
/// file where a directory belongs (writes will fail and say so).
fn read_dir_if_any(dir: &Path) -> Result<Option<std::fs::ReadDir>> {
    match std::fs::read_dir(dir) {
        Ok(e) => Ok(Some(e)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(archive_err(&format!("cannot list {}", dir.display()), e)),
    }
}

fn list_local(root: &Path, base: &Path) -> Result<Vec<StoredFile>> {
    let mut out = Vec::new();
    let mut stack = vec![base.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Some(entries) = read_dir_if_any(&dir)? else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(rel) = path.strip_prefix(root) {
                out.push(StoredFile {
                    path: rel.to_string_lossy().replace('\\', "/"),
                    size: meta.len(),
                    modified: meta
                        .modified()
                        .map(chrono::DateTime::<chrono::Utc>::from)
                        .unwrap_or_default(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_hive_directories_are_synced_in_their_parents() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("telemetry/session=s1/driver=VER");
        let synced = create_dir_durably(&dir).unwrap();
        assert!(dir.is_dir());
        let want = [
            root.path().to_path_buf(),
            root.path().join("telemetry"),
            root.path().join("telemetry/session=s1"),
        ];
        assert_eq!(synced, want);
        // Existing ones: nothing to create, nothing to sync.
        assert!(create_dir_durably(&dir).unwrap().is_empty());
        let sibling = root.path().join("telemetry/session=s1/driver=HAM");
        assert_eq!(
            create_dir_durably(&sibling).unwrap(),
            [root.path().join("telemetry/session=s1")]
        );
    }
}
