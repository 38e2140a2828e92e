//! JSON payloads to wire columns with arrow-json, one message at a time into one decoder, so
//! that one bad message costs a re-decode of the good ones before it and nothing else.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::Decoder as ArrowJsonDecoder;
use datafusion::arrow::record_batch::RecordBatch;
use pitwall_proto::schema::{col, telemetry_schema};

use super::{BadMessage, WireRows, reason};
use crate::error::{Error, Result};

pub struct JsonDecoder {
    schema: SchemaRef,
    /// Canonical column of each wire field.
    targets: Vec<&'static str>,
}

/// The canonical column named `name`, as a `'static` name.
fn canonical(name: &str) -> Option<&'static str> {
    const ALL: &[&str] = &[
        col::SESSION,
        col::DRIVER,
        col::LAP,
        col::TS,
        col::SESSION_TIME,
        col::SPEED,
        col::RPM,
        col::GEAR,
        col::THROTTLE,
        col::BRAKE,
        col::DRS,
        col::X,
        col::Y,
        col::Z,
        col::DISTANCE,
    ];
    ALL.iter().copied().find(|c| *c == name)
}

impl JsonDecoder {
    pub fn new(names: &[(String, String)]) -> Result<Self> {
        let canonical_schema = telemetry_schema();
        let mut fields = Vec::new();
        let mut targets = Vec::new();
        for (wire, column) in names {
            let target = canonical(column).ok_or_else(|| {
                Error::Config(format!(
                    "JSON name {wire} maps to {column}, which is not a telemetry column"
                ))
            })?;
            if fields.iter().any(|f: &Field| f.name() == wire) {
                return Err(Error::Config(format!("JSON name {wire} is mapped twice")));
            }
            let ty = match target {
                col::SESSION_TIME => DataType::Utf8,
                _ => canonical_schema
                    .field_with_name(target)
                    .expect("canonical")
                    .data_type()
                    .clone(),
            };
            fields.push(Field::new(wire, ty, true));
            targets.push(target);
        }
        Ok(Self {
            schema: Arc::new(Schema::new(fields)),
            targets,
        })
    }

    fn decoder(&self, rows: usize) -> Result<ArrowJsonDecoder> {
        Ok(ReaderBuilder::new(self.schema.clone())
            .with_batch_size(rows.max(1))
            .with_coerce_primitive(true)
            .with_strict_mode(false)
            .build_decoder()?)
    }

    fn to_wire(&self, batch: RecordBatch, row_message: Vec<usize>) -> WireRows {
        let mut w = WireRows {
            len: batch.num_rows(),
            row_message,
            ..Default::default()
        };
        for (i, target) in self.targets.iter().enumerate() {
            w.columns
                .entry(target)
                .or_default()
                .push(batch.column(i).clone());
        }
        w
    }

    /// Decodes payloads; returns wire rows (message indices are into `payloads`) and the
    /// rejected payloads.
    pub fn decode(&self, payloads: &[&[u8]]) -> Result<(Vec<WireRows>, Vec<BadMessage>)> {
        let mut out = Vec::new();
        let mut bad = Vec::new();
        let mut decoder = self.decoder(payloads.len())?;
        let mut in_decoder: Vec<usize> = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let before = decoder.len();
            let problem = match decoder.decode(payload) {
                Err(e) => Some((reason::NOT_JSON, e.to_string())),
                Ok(_) if decoder.has_partial_record() => Some((
                    reason::TRUNCATED,
                    "the JSON object is not complete".to_string(),
                )),
                Ok(_) if decoder.len() == before => {
                    Some((reason::EMPTY, "no JSON value in the payload".to_string()))
                }
                Ok(_) if decoder.len() != before + 1 => Some((
                    reason::NOT_ONE_OBJECT,
                    "more than one JSON value in the payload".to_string(),
                )),
                Ok(_) => None,
            };
            match problem {
                None => in_decoder.push(i),
                Some((reason, error)) => {
                    bad.push(BadMessage {
                        index: i,
                        reason,
                        error: super::normalize::one_line(&error),
                    });
                    // The decoder may hold part of the bad message: finish the good ones before
                    // it as a chunk of their own and start afresh.
                    self.bisect(payloads, &in_decoder, &mut out, &mut bad)?;
                    in_decoder.clear();
                    decoder = self.decoder(payloads.len() - i)?;
                }
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) => out.push(self.to_wire(batch, in_decoder)),
            Ok(None) => {}
            // A value of the wrong type shows only when rows are built: find the culprits.
            Err(_) => self.bisect(payloads, &in_decoder, &mut out, &mut bad)?,
        }
        Ok((out, bad))
    }

    fn bisect(
        &self,
        payloads: &[&[u8]],
        idx: &[usize],
        out: &mut Vec<WireRows>,
        bad: &mut Vec<BadMessage>,
    ) -> Result<()> {
        if idx.is_empty() {
            return Ok(());
        }
        let mut decoder = self.decoder(idx.len())?;
        for &j in idx {
            decoder.decode(payloads[j])?;
        }
        match decoder.flush() {
            Ok(Some(batch)) => out.push(self.to_wire(batch, idx.to_vec())),
            Ok(None) => {}
            Err(e) if idx.len() == 1 => bad.push(BadMessage {
                index: idx[0],
                reason: reason::WRONG_TYPE,
                error: super::normalize::one_line(&e.to_string()),
            }),
            Err(_) => {
                let (a, b) = idx.split_at(idx.len() / 2);
                self.bisect(payloads, a, out, bad)?;
                self.bisect(payloads, b, out, bad)?;
            }
        }
        Ok(())
    }
}
