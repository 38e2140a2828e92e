//! Dead letters: messages that could not be decoded, kept with everything needed to look at
//! them later (raw bytes, topic, partition, offset, reason, error). They travel with their
//! micro-batch to the archive (`DATA_DIR/dead_letters/*.parquet`, exactly once like the
//! rows), and are optionally republished to a dead-letter topic.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::arrow::array::{
    ArrayRef, BinaryArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::error::Result;
use crate::ingest::decode::RawMessage;

/// Payload bytes kept per dead letter (a 10 MB message keeps its first 64 KiB).
pub(crate) const MAX_KEPT_PAYLOAD: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub payload_bytes: usize,
    pub reason: &'static str,
    pub error: String,
    pub kafka_ts: Option<i64>,
}

impl DeadLetter {
    /// The dead letter of message `m` of `topic`, refused for `reason` (the payload kept is
    /// cut to its first bytes).
    pub(crate) fn new(
        topic: &str,
        m: &RawMessage<'_>,
        reason: &'static str,
        error: String,
    ) -> Self {
        Self {
            topic: topic.to_string(),
            partition: m.partition,
            offset: m.offset,
            key: m.key.map(<[u8]>::to_vec),
            payload: m.payload[..m.payload.len().min(MAX_KEPT_PAYLOAD)].to_vec(),
            payload_bytes: m.payload.len(),
            reason,
            error,
            kafka_ts: m.timestamp_ms,
        }
    }
}

pub(crate) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Binary, true),
        Field::new("payload", DataType::Binary, false),
        Field::new("payload_bytes", DataType::Int64, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("error", DataType::Utf8, false),
        Field::new(
            "kafka_ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            true,
        ),
        Field::new(
            "received_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
    ]))
}

pub(crate) fn to_batch(letters: &[DeadLetter]) -> Result<RecordBatch> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|l| l.topic.as_str()),
        )),
        Arc::new(Int32Array::from_iter_values(
            letters.iter().map(|l| l.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            letters.iter().map(|l| l.offset),
        )),
        Arc::new(BinaryArray::from_iter(
            letters.iter().map(|l| l.key.as_deref()),
        )),
        Arc::new(BinaryArray::from_iter_values(
            letters.iter().map(|l| l.payload.as_slice()),
        )),
        Arc::new(Int64Array::from_iter_values(
            letters.iter().map(|l| l.payload_bytes as i64),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|l| l.reason),
        )),
        Arc::new(StringArray::from_iter_values(
            letters.iter().map(|l| l.error.as_str()),
        )),
        Arc::new(
            TimestampMillisecondArray::from_iter(letters.iter().map(|l| l.kafka_ts))
                .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(letters.iter().map(|_| now))
                .with_timezone("UTC"),
        ),
    ];
    Ok(RecordBatch::try_new(schema(), columns)?)
}
