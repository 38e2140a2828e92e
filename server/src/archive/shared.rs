//! One archive shared by the servers of a consumer group (`--shared-archive`): every server
//! writes its own part of it, and any of them reads all of it and takes over the state of
//! the partitions the group hands it.
//!
//! ```text
//! DATA_DIR/writers/0/…          one writer's archive: Parquet, checkpoints, commit records
//! DATA_DIR/writers/0.lock       held (an OS file lock) while a server writes writers/0
//! DATA_DIR/writers/1/…
//! DATA_DIR/_members/GROUP/…     the servers' Flight locations (`flight::members`)
//! DATA_DIR/_clock/TOPIC/P.json  partition P's event time, as its owner last published it
//! DATA_DIR/_owners/TOPIC/P       the writer slot of the server that holds partition P
//! ```
//!
//! A server claims the first writer slot whose lock nobody holds. The lock goes with the
//! process, so a server killed with SIGKILL frees its slot at once, and the next server to
//! start takes it over with its commit protocol intact (recovery deletes the files of a
//! checkpoint that never committed; what did commit stays counted). Each writer keeps the
//! one-writer commit protocol of `archive`; the zombie case (a writer paused while another
//! took its partitions over) is closed by `ingest::kafka::paused`, which stops a paused server
//! before it commits anything, and by the slot lock, which no two running servers hold.
//!
//! The state of a partition lives in the newest committed checkpoint that covers it, in
//! whichever writer's part; `engine::handover` reads them all when partitions move. A server
//! assigned a partition first waits until its holder (`_owners`) has let it go, which that
//! one does once its final checkpoint is committed, or is gone (its slot's lock is free): a
//! broker may assign partitions before every member has given its own up (tansu 0.6.0 does),
//! and the final checkpoint is the one to start from.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{COMMITS, CommitRecord, HANDOFFS, seq_of};
use crate::engine::handover::GroupArchive;
use crate::engine::snapshot::{self, Batches, EngineState};
use crate::error::{Error, Result};

/// The directory of the writers' parts.
pub(crate) const WRITERS: &str = "writers";

/// This server's part of a shared archive.
pub(crate) struct SharedArchive {
    root: PathBuf,
    slot: usize,
    /// Held while the server runs: no other server writes this slot.
    _lock: File,
    /// A holder whose heartbeat is older than this is paused (it will stop before it commits
    /// anything: `ingest::kafka::paused`): the group's session timeout.
    patience: Duration,
    /// Ends the heartbeat thread.
    beating: Arc<AtomicBool>,
}

impl Drop for SharedArchive {
    fn drop(&mut self) {
        self.beating.store(false, Ordering::Relaxed);
    }
}

/// How often a server marks its slot alive (`writers/N.beat`).
const BEAT: Duration = Duration::from_millis(250);

#[derive(Serialize, Deserialize)]
struct Clock {
    /// The partition's event time (ms); None when it is quiet at the end of its log.
    ts: Option<i64>,
    slot: usize,
}

impl SharedArchive {
    /// Claims the first free writer slot under `root`.
    pub(crate) fn claim(root: &Path, patience: Duration) -> Result<Self> {
        let writers = root.join("writers");
        std::fs::create_dir_all(&writers)
            .map_err(|e| Error::Archive(format!("{}: {e}", writers.display())))?;
        for slot in 0..1024 {
            let path = writers.join(format!("{slot}.lock"));
            let lock = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| Error::Archive(format!("{}: {e}", path.display())))?;
            if lock.try_lock().is_ok() {
                tracing::info!(slot, root = %root.display(), "writing slot of the shared archive claimed");
                let beating = Arc::new(AtomicBool::new(true));
                let beat = writers.join(format!("{slot}.beat"));
                let on = beating.clone();
                std::thread::Builder::new()
                    .name("pitwall-heartbeat".into())
                    .spawn(move || {
                        while on.load(Ordering::Relaxed) {
                            let _ = std::fs::write(&beat, b"");
                            std::thread::sleep(BEAT);
                        }
                    })
                    .map_err(|e| Error::Archive(format!("heartbeat thread: {e}")))?;
                return Ok(Self {
                    root: root.to_path_buf(),
                    slot,
                    _lock: lock,
                    patience,
                    beating,
                });
            }
        }
        Err(Error::Archive(format!(
            "{}: every one of 1024 writer slots is held by a running server",
            writers.display()
        )))
    }

    /// Where this server writes its part.
    pub(crate) fn writer_root(&self) -> PathBuf {
        writer_root(&self.root, self.slot)
    }

    fn clock_dir(&self, topic: &str) -> PathBuf {
        self.root.join("_clock").join(topic)
    }

    fn owner_path(&self, topic: &str, p: i32) -> PathBuf {
        self.root.join("_owners").join(topic).join(format!("{p}"))
    }

    /// Whether a running server holds writer slot `slot` (its lock is taken) and is not
    /// paused (its heartbeat is younger than the session timeout).
    fn alive(&self, slot: usize) -> bool {
        let writers = self.root.join("writers");
        let locked = File::options()
            .write(true)
            .open(writers.join(format!("{slot}.lock")))
            .is_ok_and(|f| f.try_lock().is_err());
        let beat = std::fs::metadata(writers.join(format!("{slot}.beat")))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        locked && beat.is_some_and(|age| age < self.patience)
    }
}

fn writer_root(root: &Path, slot: usize) -> PathBuf {
    root.join("writers").join(slot.to_string())
}

/// Every writer's part of the shared archive at `root`, claimed now or before.
pub(crate) fn writer_roots(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root.join("writers")) else {
        return Vec::new();
    };
    let mut roots: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    roots.sort();
    roots
}

/// The newest committed checkpoint of the writer at `root`.
fn newest_checkpoint(root: &Path) -> Result<Option<(EngineState, Batches)>> {
    let dir = root.join(COMMITS);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(None);
    };
    let newest = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| seq_of(&e.file_name().to_string_lossy(), "commit-"))
        .max();
    let Some(seq) = newest else {
        return Ok(None);
    };
    let io = |p: &Path, e: std::io::Error| Error::Archive(format!("{}: {e}", p.display()));
    let path = root.join(super::commit_path(seq));
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    let record: CommitRecord = serde_json::from_slice(&bytes)
        .map_err(|e| Error::Archive(format!("{}: {e}", path.display())))?;
    let path = root.join(&record.state);
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    snapshot::decode(&bytes).map(Some)
}

/// The states a writer kept of the checkpoints it took to hand partitions over.
fn handoffs(root: &Path) -> Result<Vec<(EngineState, Batches)>> {
    let Ok(entries) = std::fs::read_dir(root.join(HANDOFFS)) else {
        return Ok(Vec::new());
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| seq_of(&e.file_name().to_string_lossy(), "state-").is_some())
        .map(|e| {
            let bytes = std::fs::read(e.path())
                .map_err(|err| Error::Archive(format!("{}: {err}", e.path().display())))?;
            snapshot::decode(&bytes)
        })
        .collect()
}

impl GroupArchive for SharedArchive {
    /// Each writer's newest checkpoint (that of a server killed covers its partitions) and the
    /// ones it took to hand partitions over (its later ones do not cover those).
    fn checkpoints(&self) -> Vec<(EngineState, Batches)> {
        let mut all = Vec::new();
        for r in writer_roots(&self.root) {
            let read = newest_checkpoint(&r).and_then(|n| Ok((n, handoffs(&r)?)));
            match read {
                Ok((newest, kept)) => all.extend(newest.into_iter().chain(kept)),
                Err(e) => {
                    tracing::warn!(writer = %r.display(), error = %e, "a writer's checkpoints could not be read; partitions only it covers start afresh");
                }
            }
        }
        all
    }

    fn publish_clock(&self, topic: &str, own: &BTreeMap<i32, Option<i64>>) {
        let dir = self.clock_dir(topic);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "partition clocks not shared");
            return;
        }
        for (p, ts) in own {
            let clock = Clock {
                ts: *ts,
                slot: self.slot,
            };
            let tmp = dir.join(format!(".{p}.{}.tmp", self.slot));
            let written = serde_json::to_vec(&clock)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(&tmp, b))
                .and_then(|()| std::fs::rename(&tmp, dir.join(format!("{p}.json"))));
            if let Err(e) = written {
                tracing::warn!(partition = p, error = %e, "partition clock not published");
            }
        }
    }

    fn release_except(&self, topic: &str, keep: &BTreeSet<i32>) {
        let Ok(entries) = std::fs::read_dir(self.root.join("_owners").join(topic)) else {
            return;
        };
        for e in entries.filter_map(|e| e.ok()) {
            let p: Option<i32> = e.file_name().to_string_lossy().parse().ok();
            let holder: Option<usize> = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|s| s.trim().parse().ok());
            if let Some(p) = p
                && holder == Some(self.slot)
                && !keep.contains(&p)
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    fn acquire(&self, topic: &str, p: i32) {
        let path = self.owner_path(topic, p);
        let started = std::time::Instant::now();
        loop {
            let holder: Option<usize> = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse().ok());
            match holder {
                Some(h) if h != self.slot && self.alive(h) => {}
                _ => break,
            }
            if started.elapsed() > self.patience {
                tracing::warn!(partition = p, holder = ?holder, "the previous owner did not hand the partition over within the session timeout; taking it from its newest checkpoint");
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| {
                let tmp = path.with_extension(format!("{}.tmp", self.slot));
                std::fs::write(&tmp, self.slot.to_string())?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = written {
            tracing::warn!(partition = p, error = %e, "partition owner not recorded");
        }
    }

    fn clock_floor(&self, topic: &str, own: &BTreeSet<i32>) -> Option<i64> {
        let entries = std::fs::read_dir(self.clock_dir(topic)).ok()?;
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let p: i32 = name.strip_suffix(".json")?.parse().ok()?;
                if own.contains(&p) {
                    return None;
                }
                let clock: Clock = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                clock.ts
            })
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_running_server_gets_its_own_slot_and_a_freed_slot_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let a = SharedArchive::claim(dir.path(), Duration::from_secs(6)).unwrap();
        let b = SharedArchive::claim(dir.path(), Duration::from_secs(6)).unwrap();
        assert_eq!((a.slot, b.slot), (0, 1));
        drop(a);
        let c = SharedArchive::claim(dir.path(), Duration::from_secs(6)).unwrap();
        assert_eq!(c.slot, 0, "the slot of a server gone is free");
    }

    #[test]
    fn the_clock_of_partitions_owned_elsewhere_holds_and_a_quiet_one_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let a = SharedArchive::claim(dir.path(), Duration::from_secs(6)).unwrap();
        let b = SharedArchive::claim(dir.path(), Duration::from_secs(6)).unwrap();
        a.publish_clock("t", &BTreeMap::from([(0, Some(5_000)), (1, None)]));
        b.publish_clock("t", &BTreeMap::from([(2, Some(9_000))]));
        assert_eq!(
            b.clock_floor("t", &BTreeSet::from([2])),
            Some(5_000),
            "1 quiet, 0 at 5 s"
        );
        // A's partition 0 moved to B: B's publication replaces A's.
        b.publish_clock("t", &BTreeMap::from([(0, Some(6_000)), (2, Some(9_000))]));
        assert_eq!(b.clock_floor("t", &BTreeSet::from([0, 2])), None);
        assert_eq!(a.clock_floor("t", &BTreeSet::from([1])), Some(6_000));
    }

    #[test]
    fn a_partition_is_taken_once_its_holder_let_it_go_or_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let a = SharedArchive::claim(dir.path(), Duration::from_secs(6)).unwrap();
        let b = Arc::new(SharedArchive::claim(dir.path(), Duration::from_secs(6)).unwrap());
        a.acquire("t", 3);
        a.acquire("t", 4);
        let waiting = {
            let b = b.clone();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                b.acquire("t", 3);
                started.elapsed()
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(300));
        a.release_except("t", &BTreeSet::from([4]));
        let waited = waiting.join().unwrap();
        assert!(
            waited >= std::time::Duration::from_millis(250),
            "B waited for A: {waited:?}"
        );
        // A killed: its slot's lock is free, and B takes partition 4 at once.
        drop(a);
        let started = std::time::Instant::now();
        b.acquire("t", 4);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(std::fs::read_to_string(b.owner_path("t", 4)).unwrap(), "1");
    }
}
