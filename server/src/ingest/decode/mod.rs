//! Decoding: Kafka payloads to rows of the canonical telemetry schema.
//!
//! JSON payloads go through arrow-json into a batch of *wire columns* (the FastF1 names, as
//! configured), Protobuf payloads through prost into the same wire columns; `normalize` then
//! turns wire columns into canonical ones: aliases coalesced, the driver taken from the
//! message key when absent, the event time from `Date`, else the session start plus
//! `SessionTime`, else the Kafka record timestamp. A message that fails any step is a
//! `BadMessage` with a reason; the others go on.

pub(crate) mod json;
pub(crate) mod normalize;
pub(crate) mod protobuf;

use std::collections::HashMap;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{concat_batches, filter};
use serde::{Deserialize, Serialize};

use pitwall_proto::schema::JSON_WIRE_NAMES;

/// How payloads are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PayloadFormat {
    /// By the `pitwall-format` header, else `{` means JSON and anything else Protobuf.
    Auto,
    Json,
    Protobuf,
    ProtobufBatch,
}

#[derive(Debug, Clone)]
pub struct DecodeConfig {
    pub format: PayloadFormat,
    /// Larger payloads are dead-lettered as `oversize`.
    pub max_message_bytes: usize,
    /// Session of messages that name none.
    pub default_session: String,
    /// Start of every session whose start cannot be learnt from a message carrying both
    /// `Date` and `SessionTime` (ms since the epoch).
    pub session_start_ms: Option<i64>,
    /// JSON wire name -> canonical column, earlier entries winning when several are present.
    pub json_names: Vec<(String, String)>,
    /// Canonical columns a row must have (besides driver and event time).
    pub required: Vec<String>,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            format: PayloadFormat::Auto,
            max_message_bytes: 1 << 20,
            default_session: "live".into(),
            session_start_ms: None,
            json_names: JSON_WIRE_NAMES
                .iter()
                .map(|(w, c)| (w.to_string(), c.to_string()))
                .collect(),
            required: vec!["speed".into(), "rpm".into()],
        }
    }
}

/// One Kafka message as ingest received it.
#[derive(Debug, Clone, Copy)]
pub struct RawMessage<'a> {
    pub payload: &'a [u8],
    pub key: Option<&'a [u8]>,
    pub partition: i32,
    pub offset: i64,
    /// Kafka record timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Value of the `pitwall-format` header.
    pub format_header: Option<&'a [u8]>,
}

/// Why a message was rejected (the label it is counted under).
pub(crate) mod reason {
    pub(crate) const OVERSIZE: &str = "oversize";
    pub(crate) const EMPTY: &str = "empty";
    pub(crate) const NOT_JSON: &str = "not_json";
    pub(crate) const TRUNCATED: &str = "truncated";
    pub(crate) const NOT_ONE_OBJECT: &str = "not_one_object";
    pub(crate) const WRONG_TYPE: &str = "wrong_type";
    pub(crate) const MISSING_FIELD: &str = "missing_field";
    pub(crate) const BAD_PROTOBUF: &str = "bad_protobuf";
    pub(crate) const BAD_TIME: &str = "bad_time";
    /// The decoder itself failed on this message (an internal error, not the input's fault
    /// as far as we know): dead-lettered like the others, so that nothing is lost unseen.
    pub(crate) const DECODER_ERROR: &str = "decoder_error";
}

/// A rejected message (index into the decoded slice) and why.
#[derive(Debug, Clone)]
pub(crate) struct BadMessage {
    pub index: usize,
    pub reason: &'static str,
    pub error: String,
}

/// The result of decoding a slice of messages.
#[derive(Debug)]
pub struct Decoded {
    /// Valid rows, canonical schema.
    pub rows: RecordBatch,
    /// For each row, the index of the message it came from.
    pub row_message: Vec<usize>,
    pub(crate) bad: Vec<BadMessage>,
}

/// Columns decoded from some messages, before normalization: for each canonical column, the
/// candidate arrays in priority order (aliases), typed as the canonical column, except
/// `session_time`, which may also be text (`"0 days 01:02:08.731000"` or `"3728.731"`).
#[derive(Debug, Default)]
pub(crate) struct WireRows {
    pub len: usize,
    pub columns: HashMap<&'static str, Vec<ArrayRef>>,
    /// For each row, the index of the message it came from.
    pub row_message: Vec<usize>,
}

impl WireRows {
    /// Keeps the rows where `keep` is true.
    pub(crate) fn retain(&mut self, keep: &[bool]) -> crate::error::Result<()> {
        let mask = BooleanArray::from(keep.to_vec());
        for arrays in self.columns.values_mut() {
            for a in arrays.iter_mut() {
                *a = filter(a, &mask)?;
            }
        }
        let mut kept = keep.iter();
        self.row_message
            .retain(|_| *kept.next().expect("one flag per row"));
        self.len = self.row_message.len();
        Ok(())
    }
}

/// Decodes messages; remembers session starts it learns.
pub struct Decoder {
    config: DecodeConfig,
    json: json::JsonDecoder,
    session_starts: HashMap<String, i64>,
    /// Tests: fail (as an internal error would) on any slice holding a payload with this.
    #[cfg(test)]
    pub(crate) fail_on: Option<&'static [u8]>,
}

impl Decoder {
    pub fn new(config: DecodeConfig) -> crate::error::Result<Self> {
        let json = json::JsonDecoder::new(&config.json_names)?;
        Ok(Self {
            config,
            json,
            session_starts: HashMap::new(),
            #[cfg(test)]
            fail_on: None,
        })
    }

    pub fn config(&self) -> &DecodeConfig {
        &self.config
    }

    /// Decodes a micro-batch. Bad input is never an error (each bad message is in
    /// `Decoded::bad` with its reason); an internal error on the batch as a whole makes the
    /// decoder take its messages one by one, and a message that fails alone is a bad message
    /// (`decoder_error`): one message's problem costs no other message, and none is skipped
    /// without a dead letter. The error left is concatenating what was decoded.
    pub fn decode(&mut self, messages: &[RawMessage<'_>]) -> crate::error::Result<Decoded> {
        match self.decode_together(messages) {
            Ok(d) => Ok(d),
            Err(e) => {
                tracing::warn!(error = %e, messages = messages.len(), "a micro-batch failed to decode as a whole; decoding its messages one by one");
                self.decode_one_by_one(messages)
            }
        }
    }

    fn decode_one_by_one(&mut self, messages: &[RawMessage<'_>]) -> crate::error::Result<Decoded> {
        let mut out = self.decode_together(&[])?;
        let mut rows = vec![out.rows.clone()];
        for (i, m) in messages.iter().enumerate() {
            match self.decode_together(std::slice::from_ref(m)) {
                Ok(d) => {
                    out.row_message.extend(d.row_message.iter().map(|_| i));
                    out.bad
                        .extend(d.bad.into_iter().map(|b| BadMessage { index: i, ..b }));
                    rows.push(d.rows);
                }
                Err(e) => out.bad.push(BadMessage {
                    index: i,
                    reason: reason::DECODER_ERROR,
                    error: e.to_string().lines().next().unwrap_or_default().to_string(),
                }),
            }
        }
        out.rows = concat_batches(&out.rows.schema(), &rows)?;
        out.bad.sort_by_key(|b| b.index);
        Ok(out)
    }

    fn decode_together(&mut self, messages: &[RawMessage<'_>]) -> crate::error::Result<Decoded> {
        #[cfg(test)]
        if let Some(marker) = self.fail_on
            && messages
                .iter()
                .any(|m| memchr::memmem::find(m.payload, marker).is_some())
        {
            return Err(datafusion::arrow::error::ArrowError::ComputeError(
                "injected decoder failure".into(),
            )
            .into());
        }
        let mut bad = Vec::new();
        let (mut json_idx, mut proto_idx, mut batch_idx) = (Vec::new(), Vec::new(), Vec::new());
        for (i, m) in messages.iter().enumerate() {
            if m.payload.len() > self.config.max_message_bytes {
                bad.push(BadMessage {
                    index: i,
                    reason: reason::OVERSIZE,
                    error: format!(
                        "{} bytes, more than the {} allowed",
                        m.payload.len(),
                        self.config.max_message_bytes
                    ),
                });
                continue;
            }
            match self.format_of(m) {
                PayloadFormat::Json => json_idx.push(i),
                PayloadFormat::ProtobufBatch => batch_idx.push(i),
                _ => proto_idx.push(i),
            }
        }
        let mut parts = Vec::new();
        if !json_idx.is_empty() {
            let payloads: Vec<&[u8]> = json_idx.iter().map(|&i| messages[i].payload).collect();
            let (wire, bad_json) = self.json.decode(&payloads)?;
            bad.extend(bad_json.into_iter().map(|mut b| {
                b.index = json_idx[b.index];
                b
            }));
            for mut w in wire {
                w.row_message.iter_mut().for_each(|r| *r = json_idx[*r]);
                parts.push(w);
            }
        }
        for (idx, batched) in [(&proto_idx, false), (&batch_idx, true)] {
            if idx.is_empty() {
                continue;
            }
            let (wire, bad_proto) = protobuf::decode(messages, idx, batched)?;
            bad.extend(bad_proto);
            parts.extend(wire);
        }
        normalize::normalize(parts, messages, &self.config, &mut self.session_starts, bad)
    }

    fn format_of(&self, m: &RawMessage<'_>) -> PayloadFormat {
        match self.config.format {
            PayloadFormat::Auto => match m.format_header {
                Some(b"json") => PayloadFormat::Json,
                Some(b"protobuf") => PayloadFormat::Protobuf,
                Some(b"protobuf-batch") => PayloadFormat::ProtobufBatch,
                _ => match m.payload.iter().find(|b| !b.is_ascii_whitespace()) {
                    Some(b'{') | None => PayloadFormat::Json,
                    Some(_) => PayloadFormat::Protobuf,
                },
            },
            fixed => fixed,
        }
    }
}

#[cfg(test)]
pub(crate) mod fuzz;
#[cfg(test)]
mod tests;
