//! Reads of local archive files on the calling thread.
//!
//! `object_store`'s `LocalFileSystem` runs every read on tokio's blocking pool
//! (`spawn_blocking`): a query over an archived session hands each file's column chunks to
//! another thread and waits to be woken, two or three hand-offs per file. Archive files are a
//! few hundred KB and mostly in the page cache, where a `pread` of a column chunk takes tens of
//! microseconds, less than the hand-off itself (on a 2 vCPU VM the per-lap query over a
//! merged race went from 11.6 to 10.0 ms). So [`LocalReads`] reads byte ranges of up to
//! [`INLINE_MAX`] bytes (what Parquet asks for: column chunks, footers) in place and leaves
//! everything else (larger reads, listing, writes, whole-file and conditional gets) to
//! `LocalFileSystem` and its blocking pool.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult,
};

/// The most a request reads in place; larger ones go to the blocking pool, where a slow disk
/// holds up no other task (a cold 1 MB read from an SSD takes a millisecond or two). An
/// archive file's column chunks are tens to hundreds of KB.
pub(crate) const INLINE_MAX: u64 = 1 << 20;

/// `LocalFileSystem` with small ranged reads done in place (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct LocalReads {
    inner: LocalFileSystem,
}

impl LocalReads {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn open(&self, location: &Path) -> object_store::Result<(File, std::path::PathBuf)> {
        let path = self.inner.path_to_filesystem(location)?;
        match File::open(&path) {
            Ok(f) => Ok((f, path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(object_store::Error::NotFound {
                    path: path.display().to_string(),
                    source: e.into(),
                })
            }
            Err(e) => Err(generic(e)),
        }
    }
}

fn generic(e: impl std::error::Error + Send + Sync + 'static) -> object_store::Error {
    object_store::Error::Generic {
        store: "LocalReads",
        source: Box::new(e),
    }
}

/// `range` of `file`, exactly: a file shorter than the range is an error.
fn read_range(
    file: &File,
    path: &std::path::Path,
    range: Range<u64>,
) -> object_store::Result<Bytes> {
    let len = usize::try_from(range.end.saturating_sub(range.start)).map_err(generic)?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, range.start).map_err(|e| {
        generic(std::io::Error::new(
            e.kind(),
            format!("reading {range:?} of {}: {e}", path.display()),
        ))
    })?;
    Ok(buf.into())
}

/// The same ETag as `LocalFileSystem` gives (inode, mtime in microseconds, size), so a
/// reader that compares them across the two paths sees one object.
fn meta(location: &Path, md: &std::fs::Metadata) -> ObjectMeta {
    use std::os::unix::fs::MetadataExt;
    let modified = md.modified().ok().unwrap_or(std::time::UNIX_EPOCH);
    let mtime = modified
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    ObjectMeta {
        location: location.clone(),
        last_modified: chrono::DateTime::<chrono::Utc>::from(modified),
        size: md.len(),
        e_tag: Some(format!("{:x}-{mtime:x}-{:x}", md.ino(), md.len())),
        version: None,
    }
}

impl fmt::Display for LocalReads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LocalReads({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for LocalReads {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let plain = options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none()
            && !options.head;
        let small = |r: &GetRange| match r {
            GetRange::Bounded(r) => r.end.saturating_sub(r.start) <= INLINE_MAX,
            GetRange::Suffix(n) => *n <= INLINE_MAX,
            GetRange::Offset(_) => false,
        };
        let Some(wanted) = options.range.clone().filter(|r| plain && small(r)) else {
            return self.inner.get_opts(location, options).await;
        };
        let (file, path) = self.open(location)?;
        let md = file.metadata().map_err(generic)?;
        let meta = meta(location, &md);
        let range = wanted
            .as_range(meta.size)
            .map_err(|e| object_store::Error::Generic {
                store: "LocalReads",
                source: format!("{wanted} of {}: {e}", path.display()).into(),
            })?;
        let bytes = read_range(&file, &path, range.clone())?;
        Ok(GetResult {
            payload: GetResultPayload::Stream(Box::pin(futures::stream::once(
                async move { Ok(bytes) },
            ))),
            meta,
            range,
            attributes: Attributes::default(),
        })
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let total: u64 = ranges.iter().map(|r| r.end.saturating_sub(r.start)).sum();
        if total > INLINE_MAX {
            return self.inner.get_ranges(location, ranges).await;
        }
        let (file, path) = self.open(location)?;
        ranges
            .iter()
            .map(|r| read_range(&file, &path, r.clone()))
            .collect()
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;

    use super::*;

    /// Whatever a reader asks of a file, it gets what `LocalFileSystem` gives: the bytes, the
    /// object's size and ETag, and `NotFound` for a file that is gone (which `flight::adhoc`
    /// tells apart, to run the query again).
    #[tokio::test]
    async fn reads_in_place_what_the_local_file_system_reads() {
        let dir = tempfile::tempdir().unwrap();
        let small: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let large: Vec<u8> = (0..(INLINE_MAX as u32 + 10))
            .map(|i| (i % 253) as u8)
            .collect();
        std::fs::write(dir.path().join("small"), &small).unwrap();
        std::fs::write(dir.path().join("large"), &large).unwrap();
        let ours = LocalReads::new();
        let theirs = LocalFileSystem::new();
        let at = |name: &str| Path::from_filesystem_path(dir.path().join(name)).unwrap();

        for (name, len) in [("small", small.len() as u64), ("large", large.len() as u64)] {
            let loc = at(name);
            // In place, and (for the large file) past INLINE_MAX in all.
            for ranges in [vec![0..10, 5..5000, len - 3..len], vec![0..10, 1000..len]] {
                let a = ours.get_ranges(&loc, &ranges).await.unwrap();
                let b = theirs.get_ranges(&loc, &ranges).await.unwrap();
                assert_eq!(a, b, "{name} {ranges:?}");
            }
            for range in [
                GetRange::Bounded(17..9000),
                GetRange::Suffix(8),
                GetRange::Offset(len - 100),
            ] {
                let opts = || GetOptions {
                    range: Some(range.clone()),
                    ..Default::default()
                };
                let a = ours.get_opts(&loc, opts()).await.unwrap();
                let b = theirs.get_opts(&loc, opts()).await.unwrap();
                assert_eq!(
                    (a.range.clone(), a.meta.size),
                    (b.range.clone(), b.meta.size)
                );
                assert_eq!(a.meta.e_tag, b.meta.e_tag, "{name} {range}");
                assert_eq!(a.bytes().await.unwrap(), b.bytes().await.unwrap());
            }
            assert_eq!(
                ours.get(&loc).await.unwrap().bytes().await.unwrap().len() as u64,
                len
            );
        }

        // Past the end of the file: an error, as for `LocalFileSystem`.
        let past_end = std::slice::from_ref(&(99_990..100_010));
        assert!(ours.get_ranges(&at("small"), past_end).await.is_err());
        assert!(theirs.get_ranges(&at("small"), past_end).await.is_err());

        std::fs::write(dir.path().join("gone"), b"listed").unwrap();
        let gone = at("gone");
        std::fs::remove_file(dir.path().join("gone")).unwrap();
        let e = ours
            .get_ranges(&gone, std::slice::from_ref(&(0..10)))
            .await
            .unwrap_err();
        assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
        assert!(crate::archive::visible::is_missing_file(&e), "{e}");
        let e = ours.get_range(&gone, 0..10).await.unwrap_err();
        assert!(matches!(e, object_store::Error::NotFound { .. }), "{e}");
    }
}
