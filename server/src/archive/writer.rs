//! Turning buffered rows into archive files: raw telemetry Hive-partitioned by session and
//! driver, query results by query and session, dead letters; each file sorted (telemetry by
//! `ts`), zstd-compressed, with row-group statistics.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{
    SortColumn, concat_batches, lexsort_to_indices, take_record_batch,
};
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::error::Result;

/// A file ready to be stored.
pub struct EncodedFile {
    pub path: String,
    pub rows: usize,
    pub bytes: Bytes,
}

/// Escapes a Hive partition value (anything but letters, digits, `.`, `_`, `-`).
pub fn escape(value: &str) -> String {
    /// Bytes kept as they are in a partition value: ASCII letters, digits, `.`, `_`, `-`.
    const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');
    if value.is_empty() {
        return "%00".into();
    }
    utf8_percent_encode(value, ESCAPED).to_string()
}

/// Sequence number of an archive file name `part-{seq}-...`.
pub fn file_seq(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.strip_prefix("part-")?.split('-').next()?.parse().ok()
}

pub fn part_name(seq: u64, k: usize) -> String {
    format!("part-{seq:010}-{k:05}.parquet")
}

fn props(sorted_by: Option<usize>) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(256 * 1024));
    if let Some(col) = sorted_by {
        b = b.set_sorting_columns(Some(vec![SortingColumn {
            column_idx: col as i32,
            descending: false,
            nulls_first: false,
        }]));
    }
    b.build()
}

pub fn to_parquet(batch: &RecordBatch, sorted_by: Option<usize>) -> Result<Bytes> {
    // No capacity guess from the batch: a slice reports the memory of the whole batch it
    // shares buffers with (one driver's rows of a checkpoint would reserve a quarter of the
    // checkpoint, per driver), and compressed Parquet is far smaller than Arrow anyway.
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props(sorted_by)))?;
    w.write(batch)?;
    w.close()?;
    Ok(Bytes::from(buf))
}

/// `batch` without the named columns (they live in the directory names).
fn without(batch: &RecordBatch, drop: &[&str]) -> Result<RecordBatch> {
    let keep: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| !drop.contains(&batch.schema().field(i).name().as_str()))
        .collect();
    Ok(batch.project(&keep)?)
}

/// Runs of equal values in sorted key columns: (start, len, values).
fn runs(keys: &[ArrayRef]) -> Vec<(usize, usize, Vec<String>)> {
    let n = keys.first().map_or(0, |k| k.len());
    let value = |i: usize| -> Vec<String> {
        keys.iter()
            .map(|k| {
                if k.is_null(i) {
                    String::new()
                } else {
                    k.as_string::<i32>().value(i).to_string()
                }
            })
            .collect()
    };
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let v = value(start);
        let mut end = start + 1;
        while end < n && value(end) == v {
            end += 1;
        }
        out.push((start, end - start, v));
        start = end;
    }
    out
}

/// Raw telemetry rows to one file per session and driver, sorted by `ts`.
pub fn telemetry_files(
    rows: &[RecordBatch],
    schema: &SchemaRef,
    seq: u64,
    k: &mut usize,
) -> Result<Vec<EncodedFile>> {
    let all = concat_batches(schema, rows)?;
    if all.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let sort: Vec<SortColumn> = ["session", "driver", "ts"]
        .iter()
        .map(|c| SortColumn {
            values: all.column_by_name(c).expect("canonical").clone(),
            options: None,
        })
        .collect();
    let sorted = take_record_batch(&all, &lexsort_to_indices(&sort, None)?)?;
    let keys = [
        sorted.column_by_name("session").expect("canonical").clone(),
        sorted.column_by_name("driver").expect("canonical").clone(),
    ];
    let mut out = Vec::new();
    for (start, len, v) in runs(&keys) {
        let part = without(&sorted.slice(start, len), &["session", "driver"])?;
        let ts_idx = part.schema().index_of("ts").ok();
        out.push(EncodedFile {
            path: format!(
                "telemetry/session={}/driver={}/{}",
                escape(&v[0]),
                escape(&v[1]),
                part_name(seq, *k)
            ),
            rows: len,
            bytes: to_parquet(&part, ts_idx)?,
        });
        *k += 1;
    }
    Ok(out)
}

/// One query's results to one file per session (when it has a `session` column).
pub fn result_files(
    query: &str,
    batches: &[RecordBatch],
    seq: u64,
    k: &mut usize,
) -> Result<Vec<EncodedFile>> {
    let mut out = Vec::new();
    // A replaced query may have changed schema: one group per schema, in order.
    let mut groups: Vec<(SchemaRef, Vec<RecordBatch>)> = Vec::new();
    for b in batches.iter().filter(|b| b.num_rows() > 0) {
        match groups.last_mut() {
            Some((s, g)) if *s == b.schema() => g.push(b.clone()),
            _ => groups.push((b.schema(), vec![b.clone()])),
        }
    }
    for (schema, group) in groups {
        let all = concat_batches(&schema, &group)?;
        let has_session = schema
            .field_with_name("session")
            .is_ok_and(|f| f.data_type() == &datafusion::arrow::datatypes::DataType::Utf8);
        if !has_session {
            out.push(EncodedFile {
                path: format!("results/query={}/{}", escape(query), part_name(seq, *k)),
                rows: all.num_rows(),
                bytes: to_parquet(&all, None)?,
            });
            *k += 1;
            continue;
        }
        let sort = [SortColumn {
            values: all.column_by_name("session").expect("checked").clone(),
            options: None,
        }];
        let sorted = take_record_batch(&all, &lexsort_to_indices(&sort, None)?)?;
        let keys = [sorted.column_by_name("session").expect("checked").clone()];
        for (start, len, v) in runs(&keys) {
            let part = without(&sorted.slice(start, len), &["session"])?;
            out.push(EncodedFile {
                path: format!(
                    "results/query={}/session={}/{}",
                    escape(query),
                    escape(&v[0]),
                    part_name(seq, *k)
                ),
                rows: len,
                bytes: to_parquet(&part, None)?,
            });
            *k += 1;
        }
    }
    Ok(out)
}

/// The schema of archived telemetry files (the canonical schema minus the partition columns).
pub fn telemetry_file_schema() -> SchemaRef {
    let s = pitwall_proto::schema::telemetry_schema();
    Arc::new(Schema::new(
        s.fields()
            .iter()
            .filter(|f| f.name() != "session" && f.name() != "driver")
            .cloned()
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(escape("VER-2"), "VER-2");
        assert_eq!(escape("a/b c"), "a%2Fb%20c");
        assert_eq!(
            file_seq("telemetry/session=x/driver=y/part-0000000042-00003.parquet"),
            Some(42)
        );
        assert_eq!(file_seq("telemetry/x/.part-1.tmp"), None);
    }
}
