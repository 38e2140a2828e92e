//! Housekeeping between checkpoints: the small files of one directory are merged into one
//! (sorted by `ts` for telemetry), as a commit of its own so a crash can never leave both the
//! merged file and its inputs, which are deleted two seconds later (queries that took their
//! view of the archive before the merge can still read them; see `visible`); and files older
//! than the retention period are left out by a commit and deleted likewise.
//!
//! A directory is merged once it has `compact_min_files` small files (a live session), or two
//! or more when none of them changed for `compact_idle` (the session or the car has finished:
//! its archive ends as one file per directory, which is what later queries read fastest).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{
    SortColumn, concat_batches, lexsort_to_indices, take_record_batch,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::catalog::is_data_file;
use super::store::StoredFile;
use super::writer::{file_seq, part_name, to_parquet};
use super::{CommitRecord, CommittedFile, WriterState, put_commit_record, state_path};
use crate::error::{Error, Result};

/// Files at most this big count as small.
const SMALL_FILE: u64 = 32 << 20;
/// Directories merged per housekeeping run.
const DIRS_PER_RUN: usize = 8;

pub(super) async fn run(w: &mut WriterState) -> Result<()> {
    if w.pending.is_some() {
        return Ok(());
    }
    if !w.uncertain.is_empty() {
        // A commit whose record may have landed: the next commit settles it (and on a quiet
        // stream no checkpoint comes, so this one makes it). No merge meanwhile: its files
        // count or not depending on that record.
        return commit_change(w, None, &[]).await;
    }
    settle(w).await?;
    if !w.superseded.is_empty() {
        // Merge again once the last merges' inputs are gone.
        return Ok(());
    }
    retention(w).await?;
    if w.last_record.is_none() || !w.superseded.is_empty() {
        // Nothing to merge yet, or files past retention wait for their grace.
        return Ok(());
    }
    let idle_since = chrono::Utc::now()
        - chrono::Duration::from_std(w.config.compact_idle)
            .map_err(|e| Error::Config(e.to_string()))?;
    let mut dirs: BTreeMap<String, Vec<StoredFile>> = BTreeMap::new();
    for root in ["telemetry", "results"] {
        for f in w.store.list(root).await? {
            // Only committed files: every commit so far has a sequence number below next_seq.
            // (Superseded inputs are gone: `settle` deleted them above.)
            let committed = file_seq(&f.path).is_some_and(|s| s < w.next_seq);
            if !is_data_file(&f.path) || !committed {
                continue;
            }
            if f.size <= SMALL_FILE {
                let dir = f
                    .path
                    .rsplit_once('/')
                    .map(|(d, _)| d.to_string())
                    .unwrap_or_default();
                dirs.entry(dir).or_default().push(f);
            }
        }
    }
    let due: Vec<(String, Vec<StoredFile>)> = dirs
        .into_iter()
        .filter(|(_, files)| {
            files.len() >= w.config.compact_min_files
                || (files.len() >= 2 && files.iter().all(|f| f.modified < idle_since))
        })
        .take(DIRS_PER_RUN)
        .collect();
    for (dir, files) in due {
        let paths: Vec<String> = files.into_iter().map(|f| f.path).collect();
        compact(w, &dir, &paths).await?;
    }
    Ok(())
}

/// Merges `files` of `dir` into one file, committed with a commit record of its own that
/// replaces them (see [`commit_change`]).
async fn compact(w: &mut WriterState, dir: &str, files: &[String]) -> Result<()> {
    if w.last_record.is_none() {
        return Ok(());
    }
    let mut batches: Vec<RecordBatch> = Vec::new();
    for path in files {
        let bytes = w.store.get(path).await?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
        for b in reader {
            batches.push(b?);
        }
    }
    let Some(first) = batches.first() else {
        return Ok(());
    };
    let schema = first.schema();
    if batches.iter().any(|b| b.schema() != schema) {
        // A replaced query changed its schema here: leave the directory as it is.
        return Ok(());
    }
    let mut all = concat_batches(&schema, &batches)?;
    drop(batches);
    let ts = schema.index_of("ts").ok();
    if let Some(i) = ts {
        let idx = lexsort_to_indices(
            &[SortColumn {
                values: all.column(i).clone(),
                options: None,
            }],
            None,
        )?;
        all = take_record_batch(&all, &idx)?;
    }
    let bytes = to_parquet(&all, ts)?;
    commit_change(w, Some((dir, bytes, all.num_rows())), files).await?;
    w.stats.compactions.fetch_add(1, Ordering::Relaxed);
    tracing::info!(dir, files = files.len(), rows = all.num_rows(), "compacted");
    Ok(())
}

/// Commits what housekeeping changed, carrying the latest checkpoint forward: `added` (a
/// merged file: its directory, bytes and rows) and `replaced` files, which the commit leaves
/// out of the archive. Nothing it wrote survives a failure, and a retry takes a new sequence
/// number, so a failed attempt can never be mistaken for an input.
///
/// The replaced files stay for a grace period, for queries that took their view before this
/// commit (queries after it leave them out: see `visible`); every commit until then lists
/// them, and recovery deletes what the last commit replaces.
async fn commit_change(
    w: &mut WriterState,
    added: Option<(&str, Bytes, usize)>,
    replaced: &[String],
) -> Result<()> {
    let Some(last) = w.last_record.clone() else {
        return Err(Error::Archive("nothing committed yet".into()));
    };
    let state = w.store.get(&last.state).await?;
    let seq = w.next_seq;
    // Taken now: whatever happens below, no later write reuses this number.
    w.next_seq = seq + 1;
    let added =
        added.map(|(dir, bytes, rows)| (format!("{dir}/{}", part_name(seq, 0)), bytes, rows));
    let record = CommitRecord {
        seq,
        created: chrono::Utc::now().to_rfc3339(),
        state: state_path(seq),
        consumed: last.consumed.clone(),
        watermark_ms: last.watermark_ms,
        files: added
            .iter()
            .map(|(path, bytes, rows)| CommittedFile {
                path: path.clone(),
                rows: *rows,
                bytes: bytes.len(),
            })
            .collect(),
        replaces: w
            .replaced_by_next_commit()
            .into_iter()
            .chain(replaced.iter().cloned())
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Archive(e.to_string()))?;
    let mut maybe_landed = false;
    let written = async {
        if let Some((path, bytes, _)) = &added {
            w.store.put(path, bytes.clone()).await?;
        }
        w.store.put(&state_path(seq), state).await?;
        put_commit_record(&w.store, seq, Bytes::from(json))
            .await
            .map_err(|f| {
                maybe_landed = f.maybe_landed;
                f.error
            })
    }
    .await;
    if let Err(e) = written {
        // With its record landed, recovery would delete the files it replaces: the merged
        // file stays until a later commit leaves it out.
        let attempted = added.map(|(path, ..)| path).into_iter().collect();
        w.abandon(seq, attempted, maybe_landed).await;
        return Err(e);
    }
    w.settle_uncertain();
    w.last_record = Some(record);
    w.superseded.extend(replaced.iter().cloned());
    w.superseded_since.get_or_insert_with(Instant::now);
    w.prune_checkpoints(seq).await;
    Ok(())
}

/// How long the inputs of a merge outlive its commit: longer than a query takes from reading
/// the newest commit record to listing the files (planning), so that one which read the
/// commit before the merge still finds the inputs it was to read.
const SUPERSEDED_GRACE: Duration = Duration::from_secs(2);

/// Deletes the inputs of merges once their grace is over.
pub(super) async fn settle(w: &mut WriterState) -> Result<()> {
    if w.superseded_since
        .is_some_and(|t| t.elapsed() >= SUPERSEDED_GRACE)
    {
        delete_superseded(w).await?;
    }
    Ok(())
}

/// Deletes the inputs of committed merges. One that cannot be deleted stays listed and blocks
/// further merges (it would be merged again) until a later attempt deletes it.
pub(super) async fn delete_superseded(w: &mut WriterState) -> Result<()> {
    while let Some(p) = w.superseded.last() {
        w.store.delete(p).await?;
        w.superseded.pop();
    }
    w.superseded_since = None;
    Ok(())
}

/// Files past the retention period go like a merge's inputs: a commit leaves them out (a
/// query's view of the archive changes only with a commit, see `visible`) and they are
/// deleted after the grace. Before any commit there is no view to keep: deleted at once.
async fn retention(w: &mut WriterState) -> Result<()> {
    let Some(keep) = w.config.retention else {
        return Ok(());
    };
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(keep).map_err(|e| Error::Config(e.to_string()))?;
    let mut expired = Vec::new();
    for root in ["telemetry", "results", "dead_letters"] {
        for f in w.store.list(root).await? {
            if f.modified < cutoff
                && f.path.ends_with(".parquet")
                && !w.superseded.contains(&f.path)
            {
                expired.push(f.path);
            }
        }
    }
    if expired.is_empty() {
        return Ok(());
    }
    if w.last_record.is_some() {
        commit_change(w, None, &expired).await?;
    } else {
        for p in &expired {
            w.store.delete(p).await?;
        }
    }
    tracing::info!(files = expired.len(), "archive files past retention");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use bytes::Bytes;
    use datafusion::arrow::array::{AsArray, RecordBatch};
    use datafusion::arrow::datatypes::TimestampMillisecondType;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use datafusion::arrow::datatypes::Int64Type;

    use super::super::{
        ArchiveCatalog, ArchiveConfig, Message, Segment, Store, WriterState, recover,
    };
    use crate::engine::snapshot::{self, Batches, EngineState};
    use crate::ingest::embedded::bundled_session;

    fn writer(root: &std::path::Path, compact_min_files: usize, idle: Duration) -> WriterState {
        WriterState {
            store: Store::open(root.to_str().unwrap()).unwrap(),
            config: ArchiveConfig {
                compact_min_files,
                compact_idle: idle,
                ..ArchiveConfig::default()
            },
            stats: Arc::default(),
            committer: None,
            group: None,
            next_seq: 1,
            open: Segment::default(),
            pending: None,
            last_housekeeping: Instant::now(),
            last_record: None,
            superseded: Vec::new(),
            superseded_since: None,
            uncertain: Vec::new(),
        }
    }

    /// Archives `raw` as one checkpoint that has consumed `offset`.
    async fn checkpoint(w: &mut WriterState, raw: RecordBatch, offset: i64) {
        w.pending = Some(segment(raw, offset));
        w.flush().await.unwrap();
    }

    /// Two checkpoints of `rows` rows each of `session`, in order.
    async fn two_checkpoints(w: &mut WriterState, session: &RecordBatch, rows: usize) {
        checkpoint(w, session.slice(0, rows), rows as i64).await;
        checkpoint(w, session.slice(rows, rows), 2 * rows as i64).await;
    }

    /// `raw` and a checkpoint that has consumed `offset`, as the engine sends them.
    fn segment(raw: RecordBatch, offset: i64) -> (Segment, Message) {
        let state = EngineState {
            consumed: BTreeMap::from([("t/0".to_string(), offset)]),
            ..Default::default()
        };
        let bytes = snapshot::encode(&state, &Batches::default()).unwrap();
        let seg = Segment {
            rows: raw.num_rows(),
            raw: vec![raw],
            ..Default::default()
        };
        let cp = Message::Checkpoint {
            state: Bytes::from(bytes),
            consumed: state.consumed.clone(),
            watermark_ms: None,
            clocks: Vec::new(),
            acks: Vec::new(),
        };
        (seg, cp)
    }

    /// Per telemetry directory: its number of files and the sorted `ts` of its rows (a row
    /// lost or archived twice changes the latter).
    async fn census(store: &Store) -> BTreeMap<String, (usize, Vec<i64>)> {
        let mut out: BTreeMap<String, (usize, Vec<i64>)> = BTreeMap::new();
        for f in store.list("telemetry").await.unwrap() {
            let (dir, _) = f.path.rsplit_once('/').unwrap();
            let e = out.entry(dir.to_string()).or_default();
            e.0 += 1;
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(store.get(&f.path).await.unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
            for b in reader {
                let b = b.unwrap();
                let ts = b.column_by_name("ts").unwrap();
                e.1.extend(ts.as_primitive::<TimestampMillisecondType>().values());
            }
        }
        for (_, ts) in out.values_mut() {
            ts.sort_unstable();
        }
        out
    }

    fn rows(census: &BTreeMap<String, (usize, Vec<i64>)>) -> BTreeMap<String, Vec<i64>> {
        census
            .iter()
            .map(|(d, (_, ts))| (d.clone(), ts.clone()))
            .collect()
    }

    /// As if the merged inputs had waited out their grace.
    fn grace_over(w: &mut WriterState) {
        if let Some(t) = w.superseded_since.as_mut() {
            *t -= super::SUPERSEDED_GRACE;
        }
    }

    /// Runs housekeeping until every directory of `before` could have been merged and the
    /// inputs deleted, then checks that each holds one file with exactly the rows it had.
    async fn merge_all(w: &mut WriterState, before: &BTreeMap<String, (usize, Vec<i64>)>) {
        for _ in 0..before.len().div_ceil(super::DIRS_PER_RUN) {
            grace_over(w);
            super::run(w).await.unwrap();
        }
        grace_over(w);
        super::settle(w).await.unwrap();
        let after = census(&w.store).await;
        assert_eq!(rows(&after), rows(before));
        assert!(
            after.values().all(|(n, _)| *n == 1),
            "one file per directory"
        );
    }

    #[tokio::test]
    async fn every_due_directory_is_merged_without_losing_or_doubling_a_row() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 2, Duration::from_secs(3600));
        let session = bundled_session().unwrap();
        for k in 0..3 {
            checkpoint(&mut w, session.slice(k * 4000, 4000), (k as i64 + 1) * 4000).await;
        }
        let before = census(&w.store).await;
        assert!(
            before.len() > super::DIRS_PER_RUN && before.values().all(|(n, _)| *n >= 2),
            "three checkpoints give more directories than one run merges, each with files: {:?}",
            before.iter().map(|(d, (n, _))| (d, n)).collect::<Vec<_>>()
        );
        // Several merges per run, each carrying the latest checkpoint forward.
        merge_all(&mut w, &before).await;

        // A restart finds the last merge's commit, carrying the last checkpoint's offsets.
        let recovered = recover(&w.store).await.unwrap();
        assert_eq!(recovered.next_seq, w.next_seq);
        assert_eq!(recovered.deleted_orphans, 0);
        let last = recovered.last.unwrap();
        assert_eq!(last.consumed.get("t/0"), Some(&12_000));
        assert!(!last.replaces.is_empty());
        let (state, _) = recovered.state.unwrap();
        assert_eq!(state.consumed.get("t/0"), Some(&12_000));
        assert_eq!(rows(&census(&w.store).await), rows(&before));
    }

    #[tokio::test]
    async fn a_quiet_directory_is_merged_below_the_file_count() {
        let dir = tempfile::tempdir().unwrap();
        let session = bundled_session().unwrap();
        let mut w = writer(dir.path(), 100, Duration::from_secs(3600));
        two_checkpoints(&mut w, &session, 2000).await;
        let before = census(&w.store).await;
        super::run(&mut w).await.unwrap();
        assert_eq!(census(&w.store).await, before, "not quiet for an hour yet");
        w.config.compact_idle = Duration::ZERO;
        merge_all(&mut w, &before).await;
    }

    #[tokio::test]
    async fn a_merge_that_fails_leaves_the_archive_as_it_was_and_the_retry_merges() {
        let dir = tempfile::tempdir().unwrap();
        let session = bundled_session().unwrap();
        let mut w = writer(dir.path(), 2, Duration::from_secs(3600));
        two_checkpoints(&mut w, &session, 3000).await;
        let before = census(&w.store).await;
        // The merged file is written, then its checkpoint cannot be: a directory stands where
        // the state file goes.
        let seq = w.next_seq;
        let blocker = dir
            .path()
            .join(format!("_pitwall/state/state-{seq:010}.bin"));
        std::fs::create_dir_all(&blocker).unwrap();
        assert!(super::run(&mut w).await.is_err());
        assert_eq!(
            census(&w.store).await,
            before,
            "nothing merged, nothing lost"
        );
        assert!(
            !dir.path()
                .join(format!("_pitwall/commits/commit-{seq:010}.json"))
                .exists()
        );
        std::fs::remove_dir(&blocker).unwrap();
        merge_all(&mut w, &before).await;
        assert_eq!(recover(&w.store).await.unwrap().deleted_orphans, 0);
    }

    /// A query context over the archive, as `pitwall sql` makes one.
    async fn context(store: &Store) -> (ArchiveCatalog, datafusion::prelude::SessionContext) {
        let catalog = ArchiveCatalog::written_here(store.clone()).unwrap();
        let ctx = context_of(&catalog).await;
        (catalog, ctx)
    }

    /// A query context over the archive of `catalog` (which keeps listings across queries).
    async fn context_of(catalog: &ArchiveCatalog) -> datafusion::prelude::SessionContext {
        let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_cache_manager(catalog.cache_config())
            .build_arc()
            .unwrap();
        let ctx = datafusion::prelude::SessionContext::new_with_config_rt(
            datafusion::prelude::SessionConfig::new(),
            runtime,
        );
        catalog.register(&ctx, "datafusion").await.unwrap();
        ctx
    }

    async fn count(ctx: &datafusion::prelude::SessionContext) -> i64 {
        let b = ctx
            .sql("SELECT count(*) FROM archive.telemetry")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        b[0].column(0).as_primitive::<Int64Type>().value(0)
    }

    /// Rows a query through the archive catalog counts.
    async fn queried_rows(store: &Store) -> i64 {
        count(&context(store).await.1).await
    }

    #[tokio::test]
    async fn queries_count_each_committed_row_once_while_files_come_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let session = bundled_session().unwrap();
        let mut w = writer(dir.path(), 2, Duration::from_secs(3600));
        two_checkpoints(&mut w, &session, 3000).await;
        let before = census(&w.store).await;
        let (catalog, early) = context(&w.store).await;
        assert_eq!(count(&early).await, 6000);
        // A checkpoint's file written, its commit not yet: not there for queries.
        let (dir0, (_, _)) = before.iter().next().unwrap();
        let first = w.store.list(dir0).await.unwrap().remove(0).path;
        let uncommitted = format!("{dir0}/{}", super::part_name(w.next_seq, 0));
        w.store
            .put(&uncommitted, w.store.get(&first).await.unwrap())
            .await
            .unwrap();
        assert_eq!(queried_rows(&w.store).await, 6000);
        w.store.delete(&uncommitted).await.unwrap();
        // Merged, and the inputs still there (for queries that listed them before): a query
        // now reads the merged files instead of them.
        super::run(&mut w).await.unwrap();
        assert!(!w.superseded.is_empty());
        let on_disk: usize = census(&w.store)
            .await
            .values()
            .map(|(_, ts)| ts.len())
            .sum();
        assert!(on_disk > 6000, "merged files and their inputs side by side");
        assert_eq!(queried_rows(&w.store).await, 6000);
        // A run within the grace leaves them; one after it deletes them.
        super::run(&mut w).await.unwrap();
        assert!(!w.superseded.is_empty());
        merge_all(&mut w, &before).await;
        assert_eq!(queried_rows(&w.store).await, 6000);
        // A context made before the merges and used after their inputs went still lists
        // them (its catalog keeps the listings of that view): a query reading their rows
        // finds a file gone, and after a refresh (as a query run again after a missing file
        // is) reads the merged files.
        let gone = early
            .sql("SELECT count(*) FROM archive.telemetry WHERE speed > -1")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap_err();
        assert!(crate::archive::visible::is_missing_file(&gone), "{gone}");
        catalog.refresh(&early).await.unwrap();
        assert_eq!(count(&early).await, 6000);
    }

    #[tokio::test]
    async fn files_past_retention_go_with_a_commit_and_queries_see_it_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let session = bundled_session().unwrap();
        let mut w = writer(dir.path(), 100, Duration::from_secs(3600));
        two_checkpoints(&mut w, &session, 3000).await;
        let catalog = ArchiveCatalog::written_here(w.store.clone()).unwrap();
        assert_eq!(count(&context_of(&catalog).await).await, 6000);
        let before = census(&w.store).await;
        w.config.retention = Some(Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(20)).await;
        super::run(&mut w).await.unwrap();
        // Left out by a commit: the next query of the same catalog (whose listings of the
        // previous commit are kept) counts none of them, while they wait for the grace.
        assert_eq!(count(&context_of(&catalog).await).await, 0);
        assert_eq!(census(&w.store).await, before, "on disk during the grace");
        grace_over(&mut w);
        super::settle(&mut w).await.unwrap();
        assert!(census(&w.store).await.is_empty());
        assert_eq!(count(&context_of(&catalog).await).await, 0);
        // The checkpoint lives on in the retention's commit: a restart resumes after it.
        let recovered = recover(&w.store).await.unwrap();
        assert_eq!(recovered.deleted_orphans, 0);
        let last = recovered.last.unwrap();
        assert_eq!(last.seq, 3);
        assert_eq!(last.consumed, BTreeMap::from([("t/0".to_string(), 6000)]));
        assert!(recovered.state.is_some());
    }

    /// An in-memory object store that, while `broken`, refuses to write state files and to
    /// delete anything: a disk that fails in the middle of a checkpoint and stays failing
    /// while the writer cleans up.
    ///
    /// And, for a timeout after success: the `lie_at`-th put from now (1 = the next) stores
    /// its object and then reports an error; with `blind_after_lie`, reads and deletes fail
    /// from then on too (nobody can tell whether it landed).
    #[derive(Debug, Default)]
    struct Failing {
        inner: object_store::memory::InMemory,
        broken: std::sync::atomic::AtomicBool,
        lie_at: std::sync::atomic::AtomicUsize,
        lied: std::sync::atomic::AtomicBool,
        blind_after_lie: std::sync::atomic::AtomicBool,
        blind: std::sync::atomic::AtomicBool,
    }

    impl Failing {
        fn heal(&self) {
            use std::sync::atomic::Ordering::SeqCst;
            self.broken.store(false, SeqCst);
            self.lie_at.store(0, SeqCst);
            self.blind.store(false, SeqCst);
        }

        /// Whether this put is the one that lies.
        fn lies_now(&self) -> bool {
            use std::sync::atomic::Ordering::SeqCst;
            let lie = self
                .lie_at
                .fetch_update(SeqCst, SeqCst, |n| (n > 0).then(|| n - 1))
                == Ok(1);
            if lie {
                self.lied.store(true, SeqCst);
                if self.blind_after_lie.load(SeqCst) {
                    self.blind.store(true, SeqCst);
                }
            }
            lie
        }

        fn refuse(&self, what: &str) -> object_store::Result<()> {
            let blind = what != "put" && self.blind.load(std::sync::atomic::Ordering::Relaxed);
            if blind || self.broken.load(std::sync::atomic::Ordering::Relaxed) {
                Err(object_store::Error::Generic {
                    store: "failing",
                    source: format!("{what} refused").into(),
                })
            } else {
                Ok(())
            }
        }
    }

    impl std::fmt::Display for Failing {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "Failing")
        }
    }

    #[async_trait::async_trait]
    impl object_store::ObjectStore for Failing {
        async fn put_opts(
            &self,
            location: &object_store::path::Path,
            payload: object_store::PutPayload,
            opts: object_store::PutOptions,
        ) -> object_store::Result<object_store::PutResult> {
            if location.as_ref().contains("_pitwall/state") {
                self.refuse("put")?;
            }
            let lie = self.lies_now();
            let put = self.inner.put_opts(location, payload, opts).await?;
            if lie {
                return Err(object_store::Error::Generic {
                    store: "failing",
                    source: "put timed out (after storing the object)".into(),
                });
            }
            Ok(put)
        }

        async fn put_multipart_opts(
            &self,
            location: &object_store::path::Path,
            opts: object_store::PutMultipartOptions,
        ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &object_store::path::Path,
            options: object_store::GetOptions,
        ) -> object_store::Result<object_store::GetResult> {
            self.refuse("get")?;
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: futures::stream::BoxStream<
                'static,
                object_store::Result<object_store::path::Path>,
            >,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>
        {
            use futures::StreamExt;
            if self.refuse("delete").is_err() {
                return locations
                    .map(|_| {
                        Err(object_store::Error::Generic {
                            store: "failing",
                            source: "delete refused".into(),
                        })
                    })
                    .boxed();
            }
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>>
        {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&object_store::path::Path>,
        ) -> object_store::Result<object_store::ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &object_store::path::Path,
            to: &object_store::path::Path,
            options: object_store::CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    #[tokio::test]
    async fn what_a_failed_checkpoint_cannot_delete_is_never_counted() {
        let failing = Arc::new(Failing::default());
        let store = Store::Remote {
            store: failing.clone(),
            base: url::Url::parse("memory://failing/").unwrap(),
            prefix: String::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 2, Duration::from_secs(3600));
        w.store = store.clone();
        let session = bundled_session().unwrap();
        checkpoint(&mut w, session.slice(0, 3000), 3000).await;
        // The next checkpoint's data files are written, its state file is not, and neither
        // can the data files be deleted.
        failing
            .broken
            .store(true, std::sync::atomic::Ordering::Relaxed);
        w.pending = Some(segment(session.slice(3000, 3000), 6000));
        assert!(w.flush().await.is_err());
        assert!(!w.superseded.is_empty(), "the files left are superseded");
        failing
            .broken
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // Written again under the next sequence number: the leftovers hold the same rows.
        w.flush().await.unwrap();
        let on_disk: usize = census(&store).await.values().map(|(_, ts)| ts.len()).sum();
        assert_eq!(on_disk, 9000, "the failed attempt's files are still there");
        assert_eq!(queried_rows(&store).await, 6000);
        // No merge takes them as inputs; they go after the grace.
        super::run(&mut w).await.unwrap();
        assert_eq!(queried_rows(&store).await, 6000);
        grace_over(&mut w);
        super::settle(&mut w).await.unwrap();
        let on_disk: usize = census(&store).await.values().map(|(_, ts)| ts.len()).sum();
        assert_eq!(on_disk, 6000);
        // Had the server crashed before, recovery would have deleted them: the last commit
        // lists them.
        assert!(
            !recover(&store)
                .await
                .unwrap()
                .last
                .unwrap()
                .replaces
                .is_empty()
        );
    }

    fn failing_store(failing: &Arc<Failing>) -> Store {
        Store::Remote {
            store: failing.clone(),
            base: url::Url::parse("memory://failing/").unwrap(),
            prefix: String::new(),
        }
    }

    /// Telemetry rows in the archive's files, whatever a commit says of them.
    async fn rows_on_disk(store: &Store) -> usize {
        census(store).await.values().map(|(_, ts)| ts.len()).sum()
    }

    /// Restarts on `store` as the server does: recovery must work, and queries and the files
    /// left on disk must hold exactly the rows the recovered checkpoint consumed.
    async fn assert_recovers_exactly(store: &Store, case: &str) -> i64 {
        let recovered = recover(store)
            .await
            .unwrap_or_else(|e| panic!("{case}: recovery fails: {e}"));
        let consumed = recovered.last.unwrap().consumed["t/0"];
        assert_eq!(queried_rows(store).await, consumed, "{case}: queried");
        assert_eq!(
            rows_on_disk(store).await as i64,
            consumed,
            "{case}: on disk"
        );
        consumed
    }

    /// One write of a checkpoint (`merge` false) or of a merge of two checkpoints' files
    /// (`merge` true) stores its object and reports an error. Returns None once `k` is past
    /// the last write, else the store and the writer right after the failed attempt.
    async fn lie_on_write(
        k: usize,
        merge: bool,
        blind: bool,
    ) -> Option<(Arc<Failing>, WriterState, tempfile::TempDir)> {
        use std::sync::atomic::Ordering::SeqCst;
        static SESSION: std::sync::OnceLock<RecordBatch> = std::sync::OnceLock::new();
        let session = SESSION.get_or_init(|| bundled_session().unwrap());
        let failing = Arc::new(Failing::default());
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 2, Duration::from_secs(3600));
        w.store = failing_store(&failing);
        checkpoint(&mut w, session.slice(0, 3000), 3000).await;
        if merge {
            checkpoint(&mut w, session.slice(3000, 3000), 6000).await;
        }
        failing.lie_at.store(k, SeqCst);
        failing.blind_after_lie.store(blind, SeqCst);
        if merge {
            let _ = super::run(&mut w).await;
        } else {
            w.pending = Some(segment(session.slice(3000, 3000), 6000));
            let _ = w.flush().await;
        }
        failing.lied.load(SeqCst).then_some((failing, w, dir))
    }

    /// Issue 24 point 6: a write that lands but reports an error (an object store timeout),
    /// on each write of a checkpoint and of a merge in turn, with the read-back and the
    /// deletes after it failing too or not. A crash right then, or a retry and a crash after
    /// it: either way recovery works and every row the checkpoint consumed is there once.
    #[tokio::test]
    async fn a_write_that_lands_but_reports_an_error_leaves_a_recoverable_exact_archive() {
        let mut cases = 0;
        for (merge, blind) in [(false, false), (false, true), (true, false), (true, true)] {
            for k in 1.. {
                let case = format!("merge {merge}, blind {blind}, write {k}");
                // Crash at once (the restarted server's store works again).
                let Some((failing, _w, _dir)) = lie_on_write(k, merge, blind).await else {
                    break;
                };
                failing.heal();
                assert_recovers_exactly(&failing_store(&failing), &format!("{case}, crash")).await;
                // Retry, settle, then crash.
                let (failing, mut w, _dir) = lie_on_write(k, merge, blind).await.unwrap();
                failing.heal();
                if w.pending.is_some() {
                    w.flush().await.unwrap();
                }
                for _ in 0..4 {
                    grace_over(&mut w);
                    super::run(&mut w).await.unwrap();
                }
                assert_eq!(
                    queried_rows(&w.store).await,
                    6000,
                    "{case}: after the retry"
                );
                let consumed =
                    assert_recovers_exactly(&w.store, &format!("{case}, retry then crash")).await;
                assert_eq!(consumed, 6000, "{case}");
                cases += 1;
            }
        }
        println!("{cases} writes stored and reported an error");
        assert!(cases > 20, "only {cases} writes failed");
    }

    /// Issue 24 point 9: a flood of undecodable messages cannot take the writer's memory:
    /// past a checkpoint's byte bound letters are archived without payload, past its count
    /// bound not at all, and the cuts are counted.
    #[tokio::test]
    async fn dead_letters_past_a_checkpoints_bound_are_cut_and_counted() {
        use crate::ingest::dead_letter::DeadLetter;
        let dir = tempfile::tempdir().unwrap();
        let mut w = writer(dir.path(), 100, Duration::from_secs(3600));
        w.config.max_dead_letters = 50;
        w.config.max_dead_letter_bytes = 1 << 20;
        let payload = vec![b'x'; 100 * 1024];
        let letter = |offset| {
            let m = crate::ingest::decode::RawMessage {
                payload: &payload,
                key: None,
                partition: 0,
                offset,
                timestamp_ms: None,
                format_header: None,
            };
            DeadLetter::new("t", &m, "json", "é".repeat(300))
        };
        // 64 KiB of each payload is kept: 15 fit in 1 MiB with their error text.
        w.keep_dead_letters((0..40).map(letter).collect());
        w.keep_dead_letters((40..80).map(letter).collect());
        let cut = w
            .stats
            .dead_letters_cut
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(cut, 35 + 30, "35 without payload, 30 left out");
        assert!(w.open.dead_letter_bytes <= 1 << 20);
        let (_, cp) = segment(bundled_session().unwrap().slice(0, 10), 10);
        w.pending = Some((std::mem::take(&mut w.open), cp));
        w.flush().await.unwrap();
        let mut offsets: Vec<i64> = Vec::new();
        let mut with_payload = 0;
        for f in w.store.list("dead_letters").await.unwrap() {
            let reader =
                ParquetRecordBatchReaderBuilder::try_new(w.store.get(&f.path).await.unwrap())
                    .unwrap()
                    .build()
                    .unwrap();
            for b in reader {
                let b = b.unwrap();
                offsets.extend(
                    b.column_by_name("offset")
                        .unwrap()
                        .as_primitive::<Int64Type>()
                        .values(),
                );
                let payloads = b.column_by_name("payload").unwrap().as_binary::<i32>();
                with_payload += payloads
                    .iter()
                    .filter(|p| p.is_some_and(|p| !p.is_empty()))
                    .count();
                let sizes = b
                    .column_by_name("payload_bytes")
                    .unwrap()
                    .as_primitive::<Int64Type>();
                assert!(
                    sizes.values().iter().all(|&n| n == 100 * 1024),
                    "the size told is the message's"
                );
            }
        }
        assert_eq!(offsets, (0..50).collect::<Vec<i64>>());
        assert_eq!(with_payload, 15);
    }
}
