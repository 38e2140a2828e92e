//! Archive: every ingested row (late rows included), every query result and every dead letter,
//! as plain Parquet in a Hive layout under the data dir, exactly once across crashes.
//!
//! The engine sends what each step ingested and emitted, and, every checkpoint interval, a
//! snapshot of its open windows with the offsets it has processed. The archive writer (its own
//! thread) writes everything received before that checkpoint as files named after the
//! checkpoint's sequence number, then the snapshot, then a commit record
//! `_pitwall/commits/commit-SEQ.json`: the commit record is the moment the checkpoint counts.
//! Only then are the Kafka offsets committed. On restart (`recover`) files of checkpoints
//! that never committed are deleted, the last snapshot is restored into the engine, and ingest
//! skips whatever it reads again below the checkpoint's offsets: nothing is lost, nothing is
//! archived twice, and windows that were open go on as if nothing happened. Queries read the
//! archive as of its newest commit record (`visible`), so they count each committed row once
//! while checkpoints are written and small files merged (`housekeeping`).
//!
//! When storage fails (disk full, directory not writable) the writer keeps the data, reports
//! the error in the stats, commits no offsets, and retries; past a memory bound it stops
//! taking data, which holds the engine and ingest back rather than losing anything.
//!
//! A failed attempt is cleared before the retry, which takes a new sequence number: its files
//! (every one it tried to write, since a write that reports an error may have stored the file)
//! are deleted, or, when they cannot be, listed by every later commit in `replaces` until they
//! are, so no query or merge counts them. A commit record whose write reports an error is
//! read back: it may have landed (an object store timing out after storing it). When nobody
//! can tell, nothing it references is touched and the next commit replaces its files; so
//! recovery always finds the newest record whole, whichever way the write went.

pub(crate) mod catalog;
pub(crate) mod housekeeping;
#[cfg(unix)]
pub(crate) mod local;
pub(crate) mod shared;
pub(crate) mod store;
pub(crate) mod visible;
pub mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use pitwall_proto::schema::telemetry_schema;
use serde::{Deserialize, Serialize};

pub use self::catalog::ArchiveCatalog;
pub use self::store::Store;
use crate::engine::snapshot::{self, Batches, EngineState};
use crate::engine::{Engine, StepOutput, StepSink};
use crate::error::{Error, Result};
use crate::ingest::MicroBatch;
use crate::ingest::dead_letter::{self, DeadLetter};
use crate::ingest::kafka::{Committer, Offsets};

#[derive(Debug, Clone)]
pub struct ArchiveConfig {
    /// How often the engine checkpoints (and the archive rolls files).
    pub checkpoint_interval: Duration,
    /// A checkpoint is also taken when this many rows wait to be written. The writer holds
    /// about four copies of them at once (buffered, concatenated, sorted, encoding), so this
    /// bounds the archive's share of memory: 250K rows is ~100 MB, 1.25 s at 200K rows/s.
    pub checkpoint_rows: usize,
    /// Rows the writer may hold while storage fails before it stops taking more.
    pub max_buffered_rows: usize,
    /// Delete archived files older than this.
    pub retention: Option<Duration>,
    /// Merge a directory's files once it has this many small ones.
    pub compact_min_files: usize,
    /// Merge a directory's small files (two or more) once none changed for this long.
    pub compact_idle: Duration,
    /// How often compaction and retention run.
    pub housekeeping_interval: Duration,
    /// Dead letters one checkpoint keeps (with those of failed attempts waiting): past this
    /// many, or past `max_dead_letter_bytes` of payloads, keys and errors, a letter is
    /// archived without its payload; past `max_dead_letters` it is left out. Each cut counts
    /// in [`ArchiveStats::dead_letters_cut`]. The byte bound also keeps every column of the
    /// dead-letter file far below Arrow's 2 GiB of 32-bit offsets.
    pub max_dead_letters: usize,
    pub max_dead_letter_bytes: usize,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval: Duration::from_secs(5),
            checkpoint_rows: 250_000,
            max_buffered_rows: 4_000_000,
            retention: None,
            compact_min_files: 16,
            compact_idle: Duration::from_secs(120),
            housekeeping_interval: Duration::from_secs(30),
            max_dead_letters: 100_000,
            max_dead_letter_bytes: 64 << 20,
        }
    }
}

/// Counters for the stats endpoint.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    pub rows: AtomicU64,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    pub checkpoints: AtomicU64,
    pub last_seq: AtomicU64,
    pub compactions: AtomicU64,
    /// Failed attempts to write a checkpoint (each retry counts).
    pub failures: AtomicU64,
    /// Dead letters archived without their payload, or left out, past a checkpoint's bound.
    pub dead_letters_cut: AtomicU64,
    /// When the last checkpoint was committed (ms since the epoch; 0 = none yet).
    pub last_commit_ms: std::sync::atomic::AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl ArchiveStats {
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().expect("stats lock").clone()
    }
    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().expect("stats lock") = e;
    }
}

/// A commit record: what one checkpoint made durable.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CommitRecord {
    pub seq: u64,
    pub created: String,
    pub state: String,
    pub consumed: BTreeMap<String, i64>,
    pub watermark_ms: Option<i64>,
    pub files: Vec<CommittedFile>,
    /// Inputs of merges (this one's or earlier ones') still on disk: queries leave them out,
    /// the writer deletes them two seconds after their merge, recovery at once.
    #[serde(default)]
    pub replaces: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct CommittedFile {
    pub path: String,
    pub rows: usize,
    pub bytes: usize,
}

const COMMITS: &str = "_pitwall/commits";
const STATES: &str = "_pitwall/state";

fn commit_path(seq: u64) -> String {
    format!("{COMMITS}/commit-{seq:010}.json")
}

/// States of checkpoints taken to hand partitions over (see `shared`).
const HANDOFFS: &str = "_pitwall/handoff";

fn handoff_path(seq: u64) -> String {
    format!("{HANDOFFS}/state-{seq:010}.bin")
}

fn state_path(seq: u64) -> String {
    format!("{STATES}/state-{seq:010}.bin")
}

fn seq_of(path: &str, prefix: &str) -> Option<u64> {
    path.rsplit('/')
        .next()?
        .strip_prefix(prefix)?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// What a restart finds in the archive.
pub(crate) struct Recovered {
    pub next_seq: u64,
    /// The last commit record, which housekeeping carries forward.
    pub last: Option<CommitRecord>,
    pub state: Option<(EngineState, Batches)>,
    pub deleted_orphans: usize,
}

/// Makes the archive consistent after a crash and loads the last checkpoint.
pub(crate) async fn recover(store: &Store) -> Result<Recovered> {
    let commits = store.list(COMMITS).await?;
    let last = commits
        .iter()
        .filter_map(|f| seq_of(&f.path, "commit-"))
        .max();
    let mut state = None;
    let mut last_record = None;
    if let Some(seq) = last {
        let record: CommitRecord = serde_json::from_slice(&store.get(&commit_path(seq)).await?)
            .map_err(|e| Error::Archive(format!("commit record {seq} is damaged: {e}")))?;
        for old in &record.replaces {
            store.delete(old).await?;
        }
        let bytes = store.get(&record.state).await?;
        state = Some(snapshot::decode(&bytes)?);
        last_record = Some(record);
    }
    let committed = last.unwrap_or(0);
    // Files of checkpoints that never committed, and temporaries of interrupted writes.
    let mut deleted = 0;
    for dir in ["telemetry", "results", "dead_letters", STATES] {
        for f in store.list(dir).await? {
            let name = f.path.rsplit('/').next().unwrap_or("");
            let seq = writer::file_seq(&f.path).or_else(|| seq_of(&f.path, "state-"));
            let orphan = name.starts_with('.') || seq.is_some_and(|s| s > committed);
            if orphan {
                store.delete(&f.path).await?;
                deleted += 1;
            }
        }
    }
    if deleted > 0 {
        tracing::warn!(
            files = deleted,
            committed,
            "removed files of a checkpoint that never committed"
        );
    }
    Ok(Recovered {
        next_seq: committed + 1,
        last: last_record,
        state,
        deleted_orphans: deleted,
    })
}

enum Message {
    Step {
        raw: Option<RecordBatch>,
        dead_letters: Vec<DeadLetter>,
        results: StepOutput,
    },
    Checkpoint {
        state: Bytes,
        consumed: BTreeMap<String, i64>,
        watermark_ms: Option<i64>,
        /// Per topic, the event time of each partition owned (published once committed, with a
        /// shared archive: `shared`).
        clocks: Vec<(String, BTreeMap<i32, Option<i64>>)>,
        /// Told the Kafka offsets once this checkpoint (or a later one) is committed: the
        /// consumer waits for it to hand partitions over (`ingest::kafka::handover`).
        acks: Vec<std::sync::mpsc::SyncSender<Offsets>>,
    },
    Stop,
}

/// Data received since the previous checkpoint.
#[derive(Default)]
struct Segment {
    raw: Vec<RecordBatch>,
    dead_letters: Vec<DeadLetter>,
    /// What `dead_letters` holds, as [`dead_letter_bytes`] counts it.
    dead_letter_bytes: usize,
    /// Dead letters cut since the segment opened (one warning per segment).
    dead_letters_cut: u64,
    results: BTreeMap<String, Vec<RecordBatch>>,
    rows: usize,
}

/// Memory a dead letter holds: payload, key, error and names.
fn dead_letter_bytes(l: &DeadLetter) -> usize {
    l.payload.len() + l.key.as_ref().map_or(0, Vec::len) + l.error.len() + l.topic.len() + 64
}

impl Segment {
    fn absorb(&mut self, other: Segment) {
        self.raw.extend(other.raw);
        self.dead_letters.extend(other.dead_letters);
        self.dead_letter_bytes += other.dead_letter_bytes;
        self.dead_letters_cut += other.dead_letters_cut;
        for (q, b) in other.results {
            self.results.entry(q).or_default().extend(b);
        }
        self.rows += other.rows;
    }
}

/// The archive writer thread's handle.
pub(crate) struct Archive {
    tx: SyncSender<Message>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub stats: Arc<ArchiveStats>,
    /// The archive is shared (`shared`): partitions' event time is published at commits.
    shared: bool,
}

struct WriterState {
    store: Store,
    config: ArchiveConfig,
    stats: Arc<ArchiveStats>,
    committer: Option<Committer>,
    /// The archive shared with a group's other servers (`shared`).
    group: Option<Arc<dyn crate::engine::handover::GroupArchive>>,
    next_seq: u64,
    open: Segment,
    /// Closed segments waiting to be written, merged, with the latest checkpoint.
    pending: Option<(Segment, Message)>,
    last_housekeeping: Instant,
    /// The latest commit (compaction carries its checkpoint forward).
    last_record: Option<CommitRecord>,
    /// Data files no commit counts that are still on disk: inputs of committed merges, and
    /// what a failed write could not delete; and since when the first of them waits.
    superseded: Vec<String>,
    superseded_since: Option<Instant>,
    /// Files of a commit whose record may or may not have landed (its write and every check
    /// after it failed): kept on disk, since that record would count them, and listed in
    /// `replaces` by the next commit, after which they are superseded like the rest.
    uncertain: Vec<String>,
}

/// How the write of a commit record failed.
pub(super) struct CommitFailed {
    error: Error,
    /// The record may be on disk all the same: nobody can tell until the store answers.
    maybe_landed: bool,
}

/// Puts commit record `seq`. A put that reports an error may still have stored the record
/// (an object store that times out after storing it): it is read back, and if that fails too,
/// deleted. Only when neither works is the outcome unknown ([`CommitFailed::maybe_landed`]):
/// then what the record references must stay until a later commit supersedes it.
pub(super) async fn put_commit_record(
    store: &Store,
    seq: u64,
    json: Bytes,
) -> std::result::Result<(), CommitFailed> {
    let path = commit_path(seq);
    let Err(error) = store.put(&path, json.clone()).await else {
        return Ok(());
    };
    match store.get_if_exists(&path).await {
        Ok(Some(b)) if b == json => {
            tracing::warn!(seq, %error, "commit record written although its write reported an error");
            return Ok(());
        }
        Ok(None) => {
            return Err(CommitFailed {
                error,
                maybe_landed: false,
            });
        }
        _ => {}
    }
    let maybe_landed = store.delete(&path).await.is_err();
    Err(CommitFailed {
        error,
        maybe_landed,
    })
}

impl Archive {
    pub(crate) fn start(
        store: Store,
        config: ArchiveConfig,
        next_seq: u64,
        last_record: Option<CommitRecord>,
        committer: Option<Committer>,
        group: Option<Arc<dyn crate::engine::handover::GroupArchive>>,
    ) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Message>(256);
        let stats = Arc::new(ArchiveStats::default());
        let shared = group.is_some();
        let mut w = WriterState {
            store,
            config,
            stats: stats.clone(),
            committer,
            group,
            next_seq,
            open: Segment::default(),
            pending: None,
            last_housekeeping: Instant::now(),
            last_record,
            superseded: Vec::new(),
            superseded_since: None,
            uncertain: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("pitwall-archive".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("archive runtime");
                rt.block_on(w.run(rx));
            })?;
        Ok(Self {
            tx,
            thread: Some(thread),
            stats,
            shared,
        })
    }

    /// A sink for the engine: sends each step here and checkpoints on schedule.
    pub(crate) fn sink(&self, config: &ArchiveConfig) -> ArchiveSink {
        ArchiveSink {
            tx: self.tx.clone(),
            interval: config.checkpoint_interval,
            max_rows: config.checkpoint_rows,
            last: Instant::now(),
            rows_since: 0,
            dirty: false,
            shared: self.shared,
            quiet: BTreeSet::new(),
        }
    }

    /// Waits for the writer to finish what it has (after the engine's final checkpoint).
    pub(crate) fn finish(mut self) {
        let _ = self.tx.send(Message::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl WriterState {
    async fn run(&mut self, rx: Receiver<Message>) {
        let mut stopping = false;
        loop {
            // While storage fails and too much waits, take nothing more: hold the engine back.
            let full = self
                .pending
                .as_ref()
                .is_some_and(|(s, _)| s.rows + self.open.rows >= self.config.max_buffered_rows);
            let msg = if full || stopping {
                None
            } else {
                match rx.recv_timeout(Duration::from_millis(200)) {
                    Ok(m) => Some(m),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => {
                        stopping = true;
                        None
                    }
                }
            };
            match msg {
                Some(Message::Step {
                    raw,
                    dead_letters,
                    results,
                }) => {
                    let mut rows = raw.as_ref().map_or(0, |r| r.num_rows());
                    if let Some(r) = raw {
                        self.open.raw.push(r);
                    }
                    self.keep_dead_letters(dead_letters);
                    for (q, batches) in results {
                        rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
                        self.open.results.entry(q).or_default().extend(batches);
                    }
                    self.open.rows += rows;
                }
                Some(mut cp @ Message::Checkpoint { .. }) => {
                    let seg = std::mem::take(&mut self.open);
                    self.pending = Some(match self.pending.take() {
                        Some((mut s, older)) => {
                            s.absorb(seg);
                            if let (
                                Message::Checkpoint { acks: waiting, .. },
                                Message::Checkpoint { acks, .. },
                            ) = (older, &mut cp)
                            {
                                acks.extend(waiting);
                            }
                            (s, cp)
                        }
                        None => (seg, cp),
                    });
                }
                Some(Message::Stop) => stopping = true,
                None => {}
            }
            if self.pending.is_some() {
                match self.flush().await {
                    Ok(()) => self.stats.set_error(None),
                    Err(e) => {
                        let msg = format!(
                            "cannot write the archive at {}: {e}; offsets stay uncommitted, retrying",
                            self.store.describe()
                        );
                        if self.stats.last_error().as_deref() != Some(msg.as_str()) {
                            tracing::error!("{msg}");
                        }
                        self.stats.set_error(Some(msg));
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        if stopping {
                            tracing::error!(
                                "stopping with archive data not written; it will be read again from Kafka"
                            );
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                }
            } else if stopping {
                // Queries are over: merge inputs can go now (recovery would delete them too,
                // but other readers of the files should not find them meanwhile).
                if let Err(e) = housekeeping::delete_superseded(self).await {
                    tracing::warn!(error = %e, "merge inputs not deleted; the next start deletes them");
                }
                return;
            }
            if let Err(e) = housekeeping::settle(self).await {
                tracing::warn!(error = %e, "merge inputs not deleted; will retry");
            }
            if self.last_housekeeping.elapsed() >= self.config.housekeeping_interval {
                self.last_housekeeping = Instant::now();
                if let Err(e) = housekeeping::run(self).await {
                    tracing::warn!(error = %e, "archive housekeeping failed; will retry");
                }
            }
        }
    }

    /// Writes the pending segment and its checkpoint as one atomic commit.
    async fn flush(&mut self) -> Result<()> {
        let Some((
            seg,
            Message::Checkpoint {
                state,
                consumed,
                watermark_ms,
                clocks,
                acks,
            },
        )) = self.pending.as_ref()
        else {
            return Ok(());
        };
        let seq = self.next_seq;
        let mut k = 0;
        let mut files = writer::telemetry_files(&seg.raw, &telemetry_schema(), seq, &mut k)?;
        for (q, batches) in &seg.results {
            files.extend(writer::result_files(q, batches, seq, &mut k)?);
        }
        if !seg.dead_letters.is_empty() {
            let batch = dead_letter::to_batch(&seg.dead_letters)?;
            files.push(writer::EncodedFile {
                path: format!("dead_letters/{}", writer::part_name(seq, k)),
                rows: batch.num_rows(),
                bytes: writer::to_parquet(&batch, None)?,
            });
        }
        let mut attempted = Vec::new();
        let mut maybe_landed = false;
        let result = async {
            for f in &files {
                // Listed before the put: a put that reports an error may have stored the file.
                attempted.push(f.path.clone());
                self.store.put(&f.path, f.bytes.clone()).await?;
            }
            self.store.put(&state_path(seq), state.clone()).await?;
            let record = CommitRecord {
                seq,
                created: chrono::Utc::now().to_rfc3339(),
                state: state_path(seq),
                consumed: consumed.clone(),
                watermark_ms: *watermark_ms,
                files: files
                    .iter()
                    .map(|f| CommittedFile {
                        path: f.path.clone(),
                        rows: f.rows,
                        bytes: f.bytes.len(),
                    })
                    .collect(),
                // Merge inputs not deleted yet: queries leave them out while they are.
                replaces: self.replaced_by_next_commit(),
            };
            let json =
                serde_json::to_vec_pretty(&record).map_err(|e| Error::Archive(e.to_string()))?;
            // A server paused past its group's session timeout commits nothing (it stops).
            if let Some(c) = &self.committer {
                c.wait_alive();
            }
            put_commit_record(&self.store, seq, Bytes::from(json))
                .await
                .map_err(|f| {
                    maybe_landed = f.maybe_landed;
                    f.error
                })?;
            Ok::<CommitRecord, Error>(record)
        }
        .await;
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                self.abandon(seq, attempted, maybe_landed).await;
                return Err(e);
            }
        };
        tracing::debug!(seq, consumed = ?record.consumed, files = record.files.len(), "checkpoint committed");
        self.last_record = Some(record);
        self.count_commit(seq, &seg.raw, &files);
        let offsets: Offsets = consumed
            .iter()
            .filter_map(|(k, v)| snapshot::parse_offset_key(k).map(|tp| (tp, *v)))
            .filter(|((t, _), _)| {
                t != crate::ingest::embedded::TOPIC && t != crate::ingest::udp::TOPIC
            })
            .collect();
        if !acks.is_empty() {
            self.keep_handoff(seq, state.clone()).await;
        }
        if let Some(g) = &self.group {
            for (topic, own) in clocks {
                g.publish_clock(topic, own);
            }
        }
        for ack in acks {
            let _ = ack.try_send(offsets.clone());
        }
        if let Some(c) = &self.committer {
            c.commit(offsets);
        }
        self.next_seq = seq + 1;
        self.pending = None;
        self.settle_uncertain();
        self.prune_checkpoints(seq).await;
        Ok(())
    }

    /// Counts a committed checkpoint `seq` (its raw rows and files) in the stats.
    fn count_commit(&self, seq: u64, raw: &[RecordBatch], files: &[writer::EncodedFile]) {
        let raw_rows: usize = raw.iter().map(|b| b.num_rows()).sum();
        let s = &self.stats;
        s.rows.fetch_add(raw_rows as u64, Ordering::Relaxed);
        s.files.fetch_add(files.len() as u64, Ordering::Relaxed);
        let bytes = files.iter().map(|f| f.bytes.len() as u64).sum();
        s.bytes.fetch_add(bytes, Ordering::Relaxed);
        s.checkpoints.fetch_add(1, Ordering::Relaxed);
        s.last_seq.store(seq, Ordering::Relaxed);
        s.last_commit_ms
            .store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// Adds dead letters to the open segment within the checkpoint's bounds (see
    /// [`ArchiveConfig::max_dead_letters`]), counting what is cut.
    fn keep_dead_letters(&mut self, letters: Vec<DeadLetter>) {
        let pending = self.pending.as_ref().map(|(s, _)| s);
        let mut count = self.open.dead_letters.len() + pending.map_or(0, |s| s.dead_letters.len());
        let mut bytes = self.open.dead_letter_bytes + pending.map_or(0, |s| s.dead_letter_bytes);
        let mut cut = 0u64;
        for mut l in letters {
            if count >= self.config.max_dead_letters {
                cut += 1;
                continue;
            }
            if bytes + dead_letter_bytes(&l) > self.config.max_dead_letter_bytes {
                l.payload = Vec::new();
                l.key = None;
                let end = (0..=l.error.len().min(200))
                    .rev()
                    .find(|&i| l.error.is_char_boundary(i))
                    .unwrap_or(0);
                l.error.truncate(end);
                cut += 1;
            }
            count += 1;
            bytes += dead_letter_bytes(&l);
            self.open.dead_letter_bytes += dead_letter_bytes(&l);
            self.open.dead_letters.push(l);
        }
        if cut > 0 {
            self.stats
                .dead_letters_cut
                .fetch_add(cut, Ordering::Relaxed);
            if self.open.dead_letters_cut == 0 {
                tracing::warn!(
                    held = count,
                    "dead letters past the checkpoint's bound: archived without payload or left out (pitwall_archive_dead_letters_cut_total)"
                );
            }
            self.open.dead_letters_cut += cut;
        }
    }

    /// What the next commit lists in `replaces`: files on disk that no commit after it counts.
    fn replaced_by_next_commit(&self) -> Vec<String> {
        self.superseded
            .iter()
            .chain(&self.uncertain)
            .cloned()
            .collect()
    }

    /// After a commit: the files of an attempt whose record may have landed are now replaced
    /// by a commit that did, and go like a merge's inputs.
    fn settle_uncertain(&mut self) {
        if !self.uncertain.is_empty() {
            self.superseded.append(&mut self.uncertain);
            self.superseded_since.get_or_insert_with(Instant::now);
        }
    }

    /// Clears what the failed commit attempt `seq` left (`attempted`: the data files it
    /// wrote or tried to); a retry takes a later sequence number. When its record may have
    /// landed, nothing it references is touched (recovery may yet load that record): its
    /// files wait in `uncertain` until the next commit replaces them.
    async fn abandon(&mut self, seq: u64, attempted: Vec<String>, maybe_landed: bool) {
        self.next_seq = self.next_seq.max(seq + 1);
        if maybe_landed {
            tracing::warn!(
                seq,
                "a commit record may have been written despite the error; its files stay until the next commit replaces them"
            );
            self.uncertain.extend(attempted);
            return;
        }
        let _ = self.store.delete(&state_path(seq)).await;
        for p in attempted {
            self.discard(p).await;
        }
    }

    /// Deletes a data file that no commit counts (what a failed write left). One that cannot
    /// be deleted now joins the superseded files: until it is gone, every commit lists it,
    /// so queries leave it out, merges wait, and recovery deletes it.
    async fn discard(&mut self, path: String) {
        if let Err(e) = self.store.delete(&path).await {
            tracing::warn!(path, error = %e, "a file of a failed write is not deleted yet");
            self.superseded.push(path);
            self.superseded_since.get_or_insert_with(Instant::now);
        }
    }

    /// Keeps the state of a checkpoint taken to hand partitions over (committed as `seq`)
    /// where the next owner finds it (`shared`): later checkpoints of this writer no longer
    /// cover those partitions, and only the last two are kept. The last eight stay.
    async fn keep_handoff(&self, seq: u64, state: Bytes) {
        if let Err(e) = self.store.put(&handoff_path(seq), state).await {
            tracing::warn!(seq, error = %e, "the state handed over was not kept: the next owner takes the partitions' cars from an older checkpoint");
        }
        if let Ok(files) = self.store.list(HANDOFFS).await {
            let mut seqs: Vec<u64> = files
                .iter()
                .filter_map(|f| seq_of(&f.path, "state-"))
                .collect();
            seqs.sort_unstable();
            let keep = seqs.len().saturating_sub(8);
            for old in &seqs[..keep] {
                let _ = self.store.delete(&handoff_path(*old)).await;
            }
        }
    }

    /// Keeps the last two commit records and state files.
    async fn prune_checkpoints(&self, seq: u64) {
        for (dir, prefix) in [(COMMITS, "commit-"), (STATES, "state-")] {
            if let Ok(files) = self.store.list(dir).await {
                for f in files {
                    if seq_of(&f.path, prefix).is_some_and(|s| s + 1 < seq) {
                        let _ = self.store.delete(&f.path).await;
                    }
                }
            }
        }
    }
}

/// The engine side: forwards each step to the writer and takes checkpoints.
pub(crate) struct ArchiveSink {
    tx: SyncSender<Message>,
    interval: Duration,
    max_rows: usize,
    last: Instant,
    rows_since: usize,
    dirty: bool,
    /// The archive is shared: a partition that went quiet (or woke) since the last checkpoint
    /// calls for one, so that its owner publishes it (a stale clock holds everyone back).
    shared: bool,
    /// The partitions quiet at the last checkpoint.
    quiet: BTreeSet<(String, i32)>,
}

/// The partitions `clocks` says are quiet.
fn quiet(clocks: &[(String, BTreeMap<i32, Option<i64>>)]) -> BTreeSet<(String, i32)> {
    clocks
        .iter()
        .flat_map(|(t, ps)| {
            ps.iter()
                .filter(|(_, ts)| ts.is_none())
                .map(|(p, _)| (t.clone(), *p))
        })
        .collect()
}

impl ArchiveSink {
    fn send(&self, m: Message) {
        // Blocks while the writer is full (storage failing): backpressure, not loss.
        let _ = tokio::task::block_in_place(|| self.tx.send(m));
    }

    fn checkpoint(&mut self, engine: &Engine, acks: Vec<std::sync::mpsc::SyncSender<Offsets>>) {
        let (state, batches) = engine.snapshot();
        let clocks = engine.partition_clocks();
        self.quiet = quiet(&clocks);
        match snapshot::encode(&state, &batches) {
            Ok(bytes) => self.send(Message::Checkpoint {
                state: Bytes::from(bytes),
                consumed: state.consumed.clone(),
                watermark_ms: engine.watermark(),
                clocks,
                acks,
            }),
            Err(e) => tracing::error!(error = %e, "cannot encode a checkpoint"),
        }
        self.last = Instant::now();
        self.rows_since = 0;
        self.dirty = false;
    }
}

impl StepSink for ArchiveSink {
    fn on_step(&mut self, engine: &Engine, batch: Option<&MicroBatch>, outputs: &StepOutput) {
        let raw = batch.map(|b| b.rows.clone()).filter(|r| r.num_rows() > 0);
        let dead_letters = batch.map(|b| b.dead_letters.clone()).unwrap_or_default();
        let advanced = batch.is_some_and(|b| !b.partitions.is_empty());
        if raw.is_some() || !dead_letters.is_empty() || !outputs.is_empty() || advanced {
            self.rows_since += raw.as_ref().map_or(0, |r| r.num_rows());
            self.dirty = true;
            self.send(Message::Step {
                raw,
                dead_letters,
                results: outputs.clone(),
            });
        }
        if self.shared
            && !self.dirty
            && self.last.elapsed() >= self.interval
            && quiet(&engine.partition_clocks()) != self.quiet
        {
            self.dirty = true;
        }
        // Partitions handed over: a checkpoint now, whose commit the consumer waits for.
        if let Some(reply) = batch.and_then(|b| b.handover.as_ref()?.reply.clone()) {
            self.checkpoint(engine, vec![reply]);
        } else if self.dirty
            && (self.last.elapsed() >= self.interval || self.rows_since >= self.max_rows)
        {
            self.checkpoint(engine, Vec::new());
        }
    }

    fn on_shutdown(&mut self, engine: &Engine) {
        if self.dirty {
            self.checkpoint(engine, Vec::new());
        }
    }
}
