//! Housekeeping between checkpoints: small files of one directory are merged into one (sorted
//! by `ts` for telemetry), as a commit of its own so a crash can never leave both the merged
//! file and its inputs; and files older than the retention period are deleted.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::{
    SortColumn, concat_batches, lexsort_to_indices, take_record_batch,
};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::writer::{file_seq, part_name, to_parquet};
use super::{CommitRecord, CommittedFile, WriterState, commit_path, state_path};
use crate::error::{Error, Result};

/// Files at most this big count as small.
const SMALL_FILE: u64 = 32 << 20;
/// Directories merged per housekeeping run.
const DIRS_PER_RUN: usize = 4;

pub(super) async fn run(w: &mut WriterState) -> Result<()> {
    if w.pending.is_some() {
        return Ok(());
    }
    retention(w).await?;
    let Some(last) = w.last_record.clone() else {
        return Ok(());
    };
    let mut dirs: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for root in ["telemetry", "results"] {
        for f in w.store.list(root).await? {
            let name = f.path.rsplit('/').next().unwrap_or("");
            if name.starts_with('.') || !name.ends_with(".parquet") || file_seq(&f.path).is_none() {
                continue;
            }
            if f.size <= SMALL_FILE {
                let dir = f
                    .path
                    .rsplit_once('/')
                    .map(|(d, _)| d.to_string())
                    .unwrap_or_default();
                dirs.entry(dir).or_default().push((f.path.clone(), f.size));
            }
        }
    }
    let due: Vec<(String, Vec<(String, u64)>)> = dirs
        .into_iter()
        .filter(|(_, files)| files.len() >= w.config.compact_min_files)
        .take(DIRS_PER_RUN)
        .collect();
    for (dir, files) in due {
        compact(w, &last, &dir, &files).await?;
    }
    Ok(())
}

async fn compact(
    w: &mut WriterState,
    last: &CommitRecord,
    dir: &str,
    files: &[(String, u64)],
) -> Result<()> {
    let mut batches: Vec<RecordBatch> = Vec::new();
    for (path, _) in files {
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
    let seq = w.next_seq;
    let path = format!("{dir}/{}", part_name(seq, 0));
    let bytes = to_parquet(&all, ts)?;
    let size = bytes.len();
    w.store.put(&path, bytes).await?;
    // The commit carries the last checkpoint forward unchanged.
    let state = w.store.get(&last.state).await?;
    w.store.put(&state_path(seq), state).await?;
    let record = CommitRecord {
        seq,
        created: chrono::Utc::now().to_rfc3339(),
        state: state_path(seq),
        consumed: last.consumed.clone(),
        watermark_ms: last.watermark_ms,
        files: vec![CommittedFile {
            path: path.clone(),
            rows: all.num_rows(),
            bytes: size,
        }],
        replaces: files.iter().map(|(p, _)| p.clone()).collect(),
    };
    let json = serde_json::to_vec_pretty(&record).map_err(|e| Error::Archive(e.to_string()))?;
    w.store.put(&commit_path(seq), Bytes::from(json)).await?;
    for (p, _) in files {
        w.store.delete(p).await?;
    }
    w.next_seq = seq + 1;
    w.last_record = Some(record);
    w.stats.compactions.fetch_add(1, Ordering::Relaxed);
    w.prune_checkpoints(seq).await;
    tracing::info!(dir, files = files.len(), rows = all.num_rows(), "compacted");
    Ok(())
}

async fn retention(w: &mut WriterState) -> Result<()> {
    let Some(keep) = w.config.retention else {
        return Ok(());
    };
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(keep).map_err(|e| Error::Config(e.to_string()))?;
    let mut deleted = 0;
    for root in ["telemetry", "results", "dead_letters"] {
        for f in w.store.list(root).await? {
            if f.modified < cutoff && f.path.ends_with(".parquet") {
                w.store.delete(&f.path).await?;
                deleted += 1;
            }
        }
    }
    if deleted > 0 {
        tracing::info!(files = deleted, "deleted archive files past retention");
    }
    Ok(())
}
