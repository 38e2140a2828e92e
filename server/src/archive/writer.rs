//! Turning buffered rows into archive files: raw telemetry Hive-partitioned by session and
//! driver, query results by query and session, dead letters; each file sorted (telemetry by
//! `ts`), zstd-compressed, with row-group statistics.

use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::{
    SortColumn, concat, concat_batches, interleave, lexsort_to_indices,
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
pub(crate) fn escape(value: &str) -> String {
    /// Bytes kept as they are in a partition value: ASCII letters, digits, `.`, `_`, `-`.
    const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC.remove(b'.').remove(b'_').remove(b'-');
    if value.is_empty() {
        return "%00".into();
    }
    utf8_percent_encode(value, ESCAPED).to_string()
}

/// Sequence number of an archive file name `part-{seq}-...`.
pub(crate) fn file_seq(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.strip_prefix("part-")?.split('-').next()?.parse().ok()
}

pub(crate) fn part_name(seq: u64, k: usize) -> String {
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

pub(crate) fn to_parquet(batch: &RecordBatch, sorted_by: Option<usize>) -> Result<Bytes> {
    // No capacity guess from the batch: a slice reports the memory of the whole batch it
    // shares buffers with (one driver's rows of a checkpoint would reserve a quarter of the
    // checkpoint, per driver), and compressed Parquet is far smaller than Arrow anyway.
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props(sorted_by)))?;
    for group in row_groups(batch) {
        w.write(&group)?;
        w.flush()?;
    }
    w.close()?;
    Ok(Bytes::from(buf))
}

/// Rows a run with no `lap` (or with one) must reach to get row groups of its own.
const LAP_RUN_MIN_ROWS: usize = 4096;

/// The row groups of a file: `batch` cut where the `lap` column turns from null to set or back,
/// between runs of at least [`LAP_RUN_MIN_ROWS`] rows (a shorter run stays in the row group
/// it falls in).
///
/// A car's file of a race holds its garage and grid time before the start and its in-lap after
/// the flag, with no lap: in the 2023 British GP 46% of the rows. With those rows in row groups
/// of their own, the row-group statistics (null count = row count) let a reader skip them for
/// `lap IS NOT NULL`, which every per-lap query says: DataFusion and DuckDB both then read about
/// half the rows of the race (BENCHMARKS.md, the archive query).
fn row_groups(batch: &RecordBatch) -> Vec<RecordBatch> {
    let Some(lap) = batch.column_by_name("lap") else {
        return vec![batch.clone()];
    };
    if lap.null_count() == 0 || lap.null_count() == lap.len() {
        return vec![batch.clone()];
    }
    let mut groups = Vec::new();
    // The current row group: where it starts and whether its (first) long run has a lap.
    let (mut start, mut kind) = (0, None);
    let mut run_start = 0;
    for end in 1..=lap.len() {
        if end < lap.len() && lap.is_valid(end) == lap.is_valid(run_start) {
            continue;
        }
        let (valid, len) = (lap.is_valid(run_start), end - run_start);
        if len >= LAP_RUN_MIN_ROWS {
            match kind {
                None => kind = Some(valid),
                Some(k) if k != valid => {
                    groups.push(batch.slice(start, run_start - start));
                    (start, kind) = (run_start, Some(valid));
                }
                Some(_) => {}
            }
        }
        run_start = end;
    }
    groups.push(batch.slice(start, lap.len() - start));
    groups
}

/// Splits `batches` (of one schema) into runs of equal `keys` (string columns), each sorted by
/// the keys and then by `then_by`, and hands each run's values and rows, without the key columns
/// (they live in the directory names), to `each`.
///
/// Only the sort columns are concatenated. Each run's rows are gathered, in sorted order,
/// straight from the batches and dropped once `each` has encoded them: concatenating all rows
/// first and then sorting that copy held three copies of a checkpoint's rows at once (in the
/// archive bench, 51 MB above 22 MB of buffered rows; now 13 MB, BENCHMARKS.md).
fn split_sorted(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    keys: &[&str],
    then_by: Option<&str>,
    mut each: impl FnMut(Vec<String>, RecordBatch) -> Result<()>,
) -> Result<()> {
    let batches: Vec<&RecordBatch> = batches.iter().filter(|b| b.num_rows() > 0).collect();
    let column =
        |i: usize| -> Vec<&dyn Array> { batches.iter().map(|b| b.column(i).as_ref()).collect() };
    if batches.is_empty() {
        return Ok(());
    }
    let sort = keys
        .iter()
        .chain(then_by.iter())
        .map(|c| {
            Ok(SortColumn {
                values: concat(&column(schema.index_of(c)?))?,
                options: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let order = lexsort_to_indices(&sort, None)?;
    // Runs of equal keys along the sorted order, read in place (arrow's `partition` would want
    // the keys copied into that order first).
    let key_columns: Vec<&StringArray> = sort[..keys.len()]
        .iter()
        .map(|c| c.values.as_string::<i32>())
        .collect();
    fn value(k: &StringArray, i: u32) -> Option<&str> {
        k.is_valid(i as usize).then(|| k.value(i as usize))
    }
    let idx = order.values();
    let mut runs = Vec::new();
    let mut start = 0;
    for end in 1..=idx.len() {
        if end == idx.len()
            || key_columns
                .iter()
                .any(|k| value(k, idx[end]) != value(k, idx[start]))
        {
            let values = key_columns
                .iter()
                .map(|k| value(k, idx[start]).unwrap_or_default().to_string())
                .collect();
            runs.push((start..end, values));
            start = end;
        }
    }
    drop(key_columns);
    drop(sort);
    // Row i of the sort columns' concatenation is row i - starts[b] of batch b.
    let starts: Vec<usize> = batches
        .iter()
        .scan(0, |n, b| {
            let s = *n;
            *n += b.num_rows();
            Some(s)
        })
        .collect();
    let located: Vec<(usize, usize)> = idx
        .iter()
        .map(|&i| {
            let i = i as usize;
            let b = starts.partition_point(|&s| s <= i) - 1;
            (b, i - starts[b])
        })
        .collect();
    let kept: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| !keys.contains(&schema.field(i).name().as_str()))
        .collect();
    let part_schema = Arc::new(schema.project(&kept)?);
    let sources: Vec<Vec<&dyn Array>> = kept.iter().map(|&i| column(i)).collect();
    for (range, values) in runs {
        let columns = sources
            .iter()
            .map(|arrays| interleave(arrays, &located[range.clone()]))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        each(values, RecordBatch::try_new(part_schema.clone(), columns)?)?;
    }
    Ok(())
}

/// Raw telemetry rows to one file per session and driver, sorted by `ts`.
pub fn telemetry_files(
    rows: &[RecordBatch],
    schema: &SchemaRef,
    seq: u64,
    k: &mut usize,
) -> Result<Vec<EncodedFile>> {
    let mut out = Vec::new();
    split_sorted(
        rows,
        schema,
        &["session", "driver"],
        Some("ts"),
        |v, part| {
            out.push(EncodedFile {
                path: format!(
                    "telemetry/session={}/driver={}/{}",
                    escape(&v[0]),
                    escape(&v[1]),
                    part_name(seq, *k)
                ),
                rows: part.num_rows(),
                bytes: to_parquet(&part, part.schema().index_of("ts").ok())?,
            });
            *k += 1;
            Ok(())
        },
    )?;
    Ok(out)
}

/// One query's results to one file per session (when it has a `session` column).
pub(crate) fn result_files(
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
        let has_session = schema
            .field_with_name("session")
            .is_ok_and(|f| f.data_type() == &datafusion::arrow::datatypes::DataType::Utf8);
        if !has_session {
            let all = concat_batches(&schema, &group)?;
            out.push(EncodedFile {
                path: format!("results/query={}/{}", escape(query), part_name(seq, *k)),
                rows: all.num_rows(),
                bytes: to_parquet(&all, None)?,
            });
            *k += 1;
            continue;
        }
        split_sorted(&group, &schema, &["session"], None, |v, part| {
            out.push(EncodedFile {
                path: format!(
                    "results/query={}/session={}/{}",
                    escape(query),
                    escape(&v[0]),
                    part_name(seq, *k)
                ),
                rows: part.num_rows(),
                bytes: to_parquet(&part, None)?,
            });
            *k += 1;
            Ok(())
        })?;
    }
    Ok(out)
}

/// The schema of archived telemetry files (the canonical schema minus the partition columns).
pub(crate) fn telemetry_file_schema() -> SchemaRef {
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

    /// The workspace's patched zstd (`vendor/zstd`) makes its compression context on first use:
    /// the level given to parquet still applies (a higher one gives a smaller file), and what
    /// is written reads back whole.
    #[test]
    fn zstd_levels_apply_with_the_context_made_on_first_use() {
        use parquet::arrow::arrow_reader::ParquetRecordBatchReader;

        let rows = crate::ingest::embedded::bundled_session()
            .unwrap()
            .slice(0, 20_000);
        let write = |level: i32| {
            let props = WriterProperties::builder()
                .set_compression(Compression::ZSTD(ZstdLevel::try_new(level).unwrap()))
                .build();
            let mut out = Vec::new();
            let mut w = ArrowWriter::try_new(&mut out, rows.schema(), Some(props)).unwrap();
            w.write(&rows).unwrap();
            w.close().unwrap();
            Bytes::from(out)
        };
        let (fast, small) = (write(1), write(19));
        assert!(
            small.len() < fast.len(),
            "level 19: {} bytes, level 1: {} bytes",
            small.len(),
            fast.len()
        );
        for file in [fast, small] {
            let back: Vec<RecordBatch> = ParquetRecordBatchReader::try_new(file, 8192)
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
            let back = concat_batches(&rows.schema(), &back).unwrap();
            assert_eq!(back, rows);
        }
    }

    /// Micro-batches in arrival order, drivers interleaved, newest batch first: each file holds
    /// exactly its driver's rows, sorted by `ts`.
    #[test]
    fn telemetry_files_sort_and_split() {
        use datafusion::arrow::datatypes::TimestampMillisecondType as Ms;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReader;
        use std::collections::BTreeMap;

        let session = crate::ingest::embedded::bundled_session().unwrap();
        let rows: Vec<RecordBatch> = (0..5)
            .rev()
            .map(|i| session.slice(i * 3_000, 3_000 - i * 100))
            .collect();
        let mut want: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for b in &rows {
            let driver = b.column_by_name("driver").unwrap().as_string::<i32>();
            let ts = b.column_by_name("ts").unwrap().as_primitive::<Ms>();
            for i in 0..b.num_rows() {
                want.entry(driver.value(i).to_string())
                    .or_default()
                    .push(ts.value(i));
            }
        }
        want.values_mut().for_each(|v| v.sort());

        let mut k = 7;
        let files = telemetry_files(&rows, &rows[0].schema(), 3, &mut k).unwrap();
        assert_eq!(k, 7 + files.len());
        assert_eq!(files.len(), want.len(), "one file per driver");
        let mut got: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for f in &files {
            let driver = part_value(&f.path, "driver");
            assert!(f.path.contains("/session=") && file_seq(&f.path) == Some(3));
            let mut ts = Vec::new();
            for b in ParquetRecordBatchReader::try_new(f.bytes.clone(), 1024).unwrap() {
                let b = b.unwrap();
                assert_eq!(b.schema().fields(), telemetry_file_schema().fields());
                let col = b.column_by_name("ts").unwrap().as_primitive::<Ms>();
                ts.extend(col.values().iter().copied());
            }
            assert_eq!(ts.len(), f.rows);
            assert!(ts.is_sorted(), "{} not sorted by ts", f.path);
            got.insert(driver, ts);
        }
        assert_eq!(got, want);
    }

    /// Long runs of rows with no lap and with one get row groups of their own, short runs stay
    /// where they fall, and the file reads back whole, in order.
    #[test]
    fn long_runs_without_a_lap_get_row_groups_of_their_own() {
        use datafusion::arrow::array::{Int32Array, Int64Array};
        use datafusion::arrow::datatypes::{DataType, Field};
        use parquet::arrow::arrow_reader::ParquetRecordBatchReader;
        use parquet::file::reader::{FileReader, SerializedFileReader};

        // (run length, has a lap) -> (rows, rows with no lap) of each row group.
        type Runs = &'static [(usize, bool)];
        type Groups = &'static [(i64, i64)];
        let cases: [(Runs, Groups); 5] = [
            (
                &[
                    (5000, false),
                    (4200, true),
                    (3, false),
                    (6000, true),
                    (5000, false),
                ],
                &[(5000, 5000), (10203, 3), (5000, 5000)],
            ),
            (&[(100, false), (9000, true)], &[(9100, 100)]),
            (&[(9000, true)], &[(9000, 0)]),
            // A run below the minimum does not cut, even between long runs.
            (
                &[(5000, false), (4095, true), (5000, false)],
                &[(14095, 10000)],
            ),
            (
                &[(4096, true), (4095, false), (10, true), (4096, false)],
                &[(8201, 4095), (4096, 4096)],
            ),
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("ts", DataType::Int64, false),
            Field::new("lap", DataType::Int32, true),
        ]));
        for (runs, want) in cases {
            let laps: Int32Array = runs
                .iter()
                .flat_map(|&(n, set)| std::iter::repeat_n(set.then_some(7), n))
                .collect();
            let ts = Int64Array::from_iter_values(0..laps.len() as i64);
            let rows =
                RecordBatch::try_new(schema.clone(), vec![Arc::new(ts), Arc::new(laps)]).unwrap();
            let file = to_parquet(&rows, Some(0)).unwrap();
            let meta = SerializedFileReader::new(file.clone()).unwrap();
            let got: Vec<(i64, i64)> = meta
                .metadata()
                .row_groups()
                .iter()
                .map(|g| {
                    let nulls = g.column(1).statistics().unwrap().null_count_opt().unwrap();
                    (g.num_rows(), nulls as i64)
                })
                .collect();
            assert_eq!(got, want, "runs {runs:?}");
            let back: Vec<RecordBatch> = ParquetRecordBatchReader::try_new(file, 8192)
                .unwrap()
                .collect::<std::result::Result<_, _>>()
                .unwrap();
            assert_eq!(concat_batches(&schema, &back).unwrap(), rows);
        }
    }

    fn part_value(path: &str, key: &str) -> String {
        path.split('/')
            .find_map(|seg| seg.strip_prefix(&format!("{key}=")))
            .unwrap()
            .to_string()
    }
}
