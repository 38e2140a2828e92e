//! The embedded source: the bundled session (2023 British GP, 20 cars) replayed in-process at
//! real-time pace (or faster), looping as new sessions, into the same micro-batch path as
//! Kafka. It is what `pitwall-server` runs with no `--brokers`, so one command shows live
//! results with no Kafka at all.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use datafusion::arrow::array::{
    ArrayRef, AsArray, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::compute::{
    SortColumn, concat_batches, lexsort_to_indices, take_record_batch,
};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use pitwall_proto::schema::{col, telemetry_schema};
use tokio::sync::mpsc;

use super::{IngestStats, MicroBatch, PartitionSlice};
use crate::error::{Error, Result};

/// The topic name offsets of the embedded source are recorded under.
pub(crate) const TOPIC: &str = "embedded";

/// The bundled session's rows in the canonical schema, sorted by event time. The file is read
/// at run time (GPL-3.0 data stays out of the binary; see [`pitwall_proto::bundled`]).
pub fn bundled_session() -> Result<RecordBatch> {
    let bytes = pitwall_proto::bundled::read().map_err(Error::Config)?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes))?
        .with_batch_size(64 * 1024)
        .build()?;
    let schema = telemetry_schema();
    let mut batches = Vec::new();
    for b in reader {
        let b = b?;
        batches.push(RecordBatch::try_new(schema.clone(), b.columns().to_vec())?);
    }
    let all = concat_batches(&schema, &batches)?;
    let sort = [col::TS, col::DRIVER].map(|c| SortColumn {
        values: all.column_by_name(c).expect("column").clone(),
        options: None,
    });
    Ok(take_record_batch(&all, &lexsort_to_indices(&sort, None)?)?)
}

#[derive(Debug, Clone)]
pub(crate) struct EmbeddedConfig {
    /// Pace multiplier over real time.
    pub speed: f64,
    pub looping: bool,
    pub tick: Duration,
}

/// Replays `session` (sorted by ts) into micro-batches until done (or forever when looping).
pub(crate) async fn run(
    session: RecordBatch,
    config: EmbeddedConfig,
    stats: Arc<IngestStats>,
    tx: mpsc::Sender<MicroBatch>,
    start_offset: i64,
) -> Result<()> {
    let ts = session
        .column_by_name(col::TS)
        .expect("ts")
        .as_primitive::<TimestampMillisecondType>()
        .clone();
    if ts.is_empty() {
        return Err(Error::Config("the embedded session is empty".into()));
    }
    let (first, last) = (ts.value(0), ts.value(ts.len() - 1));
    let span = last - first + 5_000;
    let name = session
        .column_by_name(col::SESSION)
        .expect("session")
        .as_string::<i32>()
        .value(0)
        .to_string();
    tracing::info!(session = %name, rows = session.num_rows(), speed = config.speed, "embedded replay started");
    // Offsets count rows across rounds; a restart resumes at the checkpoint's offset.
    let n = session.num_rows() as i64;
    let mut round = start_offset / n;
    let mut offset: i64 = start_offset;
    let mut resume_at = (start_offset % n) as usize;
    loop {
        let mut pos = std::mem::take(&mut resume_at);
        let first = ts.value(pos);
        let started = Instant::now();
        let mut tick = tokio::time::interval(config.tick);
        while pos < session.num_rows() {
            tick.tick().await;
            let due_ms = first + (started.elapsed().as_secs_f64() * 1000.0 * config.speed) as i64;
            let end = pos + ts.values()[pos..].partition_point(|t| *t <= due_ms);
            if end == pos {
                continue;
            }
            let mut rows = session.slice(pos, end - pos);
            if round > 0 {
                rows = shifted(&rows, round * span, &format!("{name}-r{}", round + 1))?;
            }
            let max_ts = ts.value(end - 1) + round * span;
            stats.count((end - pos) as u64, 0, (end - pos) as u64);
            let batch = MicroBatch {
                topic: TOPIC.into(),
                rows,
                partitions: vec![PartitionSlice {
                    partition: 0,
                    first_offset: offset,
                    last_offset: offset + (end - pos) as i64 - 1,
                    max_ts: Some(max_ts),
                    drivers: Vec::new(),
                }],
                assigned: None,
                caught_up: vec![0],
                caught_up_confirmed: None,
                dead_letters: Vec::new(),
                ready_at: Instant::now(),
                handover: None,
            };
            offset += (end - pos) as i64;
            pos = end;
            if tx.send(batch).await.is_err() {
                return Ok(());
            }
        }
        if !config.looping {
            tracing::info!("embedded replay finished");
            return Ok(());
        }
        round += 1;
    }
}

/// A later loop round: event times shifted, session renamed.
pub(crate) fn shifted(rows: &RecordBatch, shift_ms: i64, session: &str) -> Result<RecordBatch> {
    let schema = rows.schema();
    let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
    let ts_idx = schema.index_of(col::TS)?;
    let ts = cols[ts_idx].as_primitive::<TimestampMillisecondType>();
    cols[ts_idx] = Arc::new(
        TimestampMillisecondArray::from_iter_values(ts.values().iter().map(|t| t + shift_ms))
            .with_timezone("UTC"),
    );
    cols[schema.index_of(col::SESSION)?] =
        Arc::new(StringArray::from(vec![session; rows.num_rows()]));
    Ok(RecordBatch::try_new(schema, cols)?)
}
