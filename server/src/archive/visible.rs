//! What a query over the archive sees: the files of committed checkpoints, and of those not
//! the inputs of a committed merge that are still waiting to be deleted.
//!
//! The writer puts a checkpoint's data files first and its commit record last, and a merge
//! puts its merged file before the commit that replaces the inputs, which are deleted two
//! seconds later (every commit until then lists them in `replaces`). A query
//! takes a [`View`] from the newest commit record when its context is made, and reads the
//! archive through a [`ViewStore`] that leaves the other files out of every listing. So a
//! query never counts a checkpoint that may yet be rolled back by a crash, nor a merged file
//! together with its inputs; and inputs are still there for a query whose view predates the
//! merge (a query that outlives them finds a file gone and is run again, see
//! `flight::adhoc`).
//!
//! What a view lists does not change while the newest commit stays the same: a checkpoint,
//! a merge and files past retention each come with a commit, and what a commit leaves out is
//! deleted only after it. (A file that goes otherwise, by another writer or by hand, makes a
//! query that meets it run again after [`Listings::clear`].) So the listings of one view are
//! kept in [`Listings`] for the next query with that view: a quiet archive, the one users come
//! back to after the session, is listed once, not once per query.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use super::catalog::is_data_file;
use super::writer::file_seq;
use super::{COMMITS, CommitRecord, Store, seq_of};
use crate::error::{Error, Result};

/// The archive as of one commit.
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The newest commit's sequence number; None when there is no commit record in an archive
    /// not written by this server (or copied without `_pitwall/`): then every file shows.
    committed: Option<u64>,
    /// Inputs of merges, still on disk (paths relative to the archive root).
    replaced: HashSet<String>,
    /// A shared archive (`super::shared`): each writer's part (`writers/N`, by N) as of its
    /// own newest commit. A part not listed (a writer that started since) shows nothing.
    parts: Option<Arc<std::collections::BTreeMap<String, View>>>,
}

impl View {
    /// Reads the newest commit record. An archive `written_here`, by this server, without
    /// one has nothing committed yet: its first checkpoint's files are on disk before its
    /// record, and no file of a checkpoint shows until then.
    pub async fn of(store: &Store, written_here: bool) -> Result<Self> {
        let mut attempt = 0;
        loop {
            let Some(seq) = store
                .list_few(COMMITS)
                .await?
                .iter()
                .filter_map(|f| seq_of(&f.path, "commit-"))
                .max()
            else {
                return Ok(Self {
                    committed: written_here.then_some(0),
                    replaced: HashSet::new(),
                    parts: None,
                });
            };
            let bytes = match store.get(&super::commit_path(seq)).await {
                Ok(b) => b,
                // Pruned between the listing and the read (two newer commits came): again.
                Err(_) if attempt < 3 => {
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let record: CommitRecord = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Archive(format!("commit record {seq} is damaged: {e}")))?;
            return Ok(Self {
                committed: Some(seq),
                replaced: record.replaces.into_iter().collect(),
                parts: None,
            });
        }
    }

    /// A shared archive as of each writer's newest commit (see [`Self::of`]).
    pub(crate) async fn of_shared(store: &Store) -> Result<Self> {
        let mut parts = std::collections::BTreeMap::new();
        for n in store.subdirs(super::shared::WRITERS).await? {
            let part = store.within(&format!("{}/{n}", super::shared::WRITERS))?;
            parts.insert(n, View::of(&part, true).await?);
        }
        Ok(Self {
            parts: Some(Arc::new(parts)),
            ..Self::default()
        })
    }

    /// Whether a query sees the file at `rel` (relative to the archive root).
    pub fn shows(&self, rel: &str) -> bool {
        if let Some(parts) = &self.parts {
            let mut at = rel.splitn(3, '/');
            return match (at.next(), at.next(), at.next()) {
                (Some(super::shared::WRITERS), Some(n), Some(rest)) => {
                    parts.get(n).is_some_and(|v| v.shows(rest))
                }
                _ => !is_data_file(rel),
            };
        }
        let Some(committed) = self.committed else {
            return true;
        };
        if !is_data_file(rel) {
            return true;
        }
        file_seq(rel).is_none_or(|s| s <= committed) && !self.replaced.contains(rel)
    }
}

/// The listings of the archive as of one commit, kept from one query to the next while no
/// newer commit came (see the module docs).
#[derive(Debug, Default)]
pub struct Listings(Mutex<Memo>);

#[derive(Debug, Default)]
struct Memo {
    /// The commit the listings below are of.
    committed: Option<u64>,
    flat: HashMap<Option<Path>, Vec<ObjectMeta>>,
    /// `ListResult`'s common prefixes and objects.
    delimited: HashMap<Option<Path>, (Vec<Path>, Vec<ObjectMeta>)>,
}

impl Listings {
    /// Forgets every listing: the next query lists afresh.
    pub fn clear(&self) {
        *self.memo() = Memo::default();
    }

    fn memo(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The memo, if it is (or, being older, can become) that of `view`'s commit. A query
    /// with an older view than the memo's lists for itself.
    fn of(&self, view: &View) -> Option<std::sync::MutexGuard<'_, Memo>> {
        let committed = view.committed?;
        let mut memo = self.memo();
        match memo.committed {
            Some(c) if c == committed => {}
            Some(c) if c > committed => return None,
            _ => {
                *memo = Memo {
                    committed: Some(committed),
                    ..Memo::default()
                }
            }
        }
        Some(memo)
    }
}

/// An object store that lists only what a [`View`] shows of the archive under `root`; every
/// other path, and every other operation, is the inner store's.
#[derive(Debug)]
pub(crate) struct ViewStore {
    inner: Arc<dyn ObjectStore>,
    /// The archive root in the inner store's paths.
    root: Path,
    view: Arc<View>,
    listings: Arc<Listings>,
}

impl ViewStore {
    pub(crate) fn new(
        inner: Arc<dyn ObjectStore>,
        root: Path,
        view: View,
        listings: Arc<Listings>,
    ) -> Self {
        Self {
            inner,
            root,
            view: Arc::new(view),
            listings,
        }
    }

    fn shows(&self, location: &Path) -> bool {
        shows(&self.root, &self.view, location)
    }
}

/// Whether `view` shows `location`: everything outside the archive `root` shows.
fn shows(root: &Path, view: &View, location: &Path) -> bool {
    match location.prefix_match(root) {
        Some(parts) => {
            let rel: Vec<String> = parts.map(|p| p.as_ref().to_string()).collect();
            view.shows(&rel.join("/"))
        }
        None => true,
    }
}

impl fmt::Display for ViewStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ViewStore({})", self.inner)
    }
}

#[async_trait::async_trait]
impl ObjectStore for ViewStore {
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
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let key = prefix.cloned();
        if let Some(listed) = self
            .listings
            .of(&self.view)
            .and_then(|memo| memo.flat.get(&key).cloned())
        {
            return futures::stream::iter(listed.into_iter().map(Ok)).boxed();
        }
        let (root, view) = (self.root.clone(), self.view.clone());
        let listings = self.listings.clone();
        let listed = self.inner.list(prefix).filter(move |m| {
            let keep = m
                .as_ref()
                .map_or(true, |m| shows(&root, &view, &m.location));
            futures::future::ready(keep)
        });
        let view = self.view.clone();
        // Whole (a failed listing is not kept), then kept for the view's next query.
        futures::stream::once(async move {
            let listed: Vec<ObjectMeta> = listed.try_collect().await?;
            if let Some(mut memo) = listings.of(&view) {
                memo.flat.insert(key, listed.clone());
            }
            Ok::<_, object_store::Error>(futures::stream::iter(listed.into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let key = prefix.cloned();
        if let Some(listed) = self
            .listings
            .of(&self.view)
            .and_then(|memo| memo.delimited.get(&key).cloned())
        {
            let (common_prefixes, objects) = listed;
            return Ok(ListResult {
                common_prefixes,
                objects,
            });
        }
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.objects.retain(|m| self.shows(&m.location));
        if let Some(mut memo) = self.listings.of(&self.view) {
            let kept = (listed.common_prefixes.clone(), listed.objects.clone());
            memo.delimited.insert(key, kept);
        }
        Ok(listed)
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

/// Whether `e` comes from a file that was listed but is not there any more (a merge or
/// retention removed it after the listing): a query seeing it plans again.
pub(crate) fn is_missing_file(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if matches!(
            err.downcast_ref::<object_store::Error>(),
            Some(object_store::Error::NotFound { .. })
        ) || err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;

    use super::*;

    /// Files a store of `view` lists under `telemetry/`, through `listings`.
    async fn listed(
        inner: &Arc<object_store::memory::InMemory>,
        listings: &Arc<Listings>,
        committed: u64,
    ) -> (usize, usize) {
        let view = View {
            committed: Some(committed),
            replaced: HashSet::new(),
            parts: None,
        };
        let store = ViewStore::new(inner.clone(), Path::from(""), view, listings.clone());
        let prefix = Path::from("telemetry");
        let flat: Vec<ObjectMeta> = store.list(Some(&prefix)).try_collect().await.unwrap();
        let dir = Path::from("telemetry/session=s/driver=VER");
        let delimited = store.list_with_delimiter(Some(&dir)).await.unwrap();
        (flat.len(), delimited.objects.len())
    }

    #[tokio::test]
    async fn a_view_is_listed_once_and_a_newer_commit_lists_afresh() {
        let inner = Arc::new(object_store::memory::InMemory::new());
        let put = |seq: u64| {
            let inner = inner.clone();
            async move {
                let path = format!("telemetry/session=s/driver=VER/part-{seq:010}-00000.parquet");
                inner
                    .put(&Path::from(path), PutPayload::from_static(b"x"))
                    .await
                    .unwrap();
            }
        };
        put(1).await;
        let listings = Arc::new(Listings::default());
        assert_eq!(listed(&inner, &listings, 1).await, (1, 1));
        // A file of commit 2 appears: the next query as of commit 1 gets the kept listing
        // (the file would not show anyway), one as of commit 2 lists afresh and sees it.
        put(2).await;
        inner
            .delete(&Path::from(
                "telemetry/session=s/driver=VER/part-0000000001-00000.parquet",
            ))
            .await
            .unwrap();
        assert_eq!(
            listed(&inner, &listings, 1).await,
            (1, 1),
            "kept for commit 1"
        );
        assert_eq!(
            listed(&inner, &listings, 2).await,
            (1, 1),
            "afresh for commit 2: only file 2"
        );
        // A query still on commit 1 lists for itself and keeps nothing.
        assert_eq!(listed(&inner, &listings, 1).await, (0, 0));
        put(3).await;
        assert_eq!(
            listed(&inner, &listings, 2).await,
            (1, 1),
            "kept for commit 2"
        );
        listings.clear();
        assert_eq!(
            listed(&inner, &listings, 2).await,
            (1, 1),
            "file 3 is past commit 2"
        );
        assert_eq!(listed(&inner, &listings, 3).await, (2, 2));
    }
}
