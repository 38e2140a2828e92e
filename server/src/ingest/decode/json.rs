//! JSON payloads to wire columns with arrow-json, one message at a time into one decoder, so
//! that one bad message costs a re-decode of the good ones before it and nothing else.
//!
//! Each payload is first decoded with one wire name per canonical column (the first name the
//! configuration gives it). That keeps the decoder's schema at 15 fields or fewer, where
//! arrow-json finds a key's field by comparing names instead of hashing every key of every
//! message, which is about a sixth of the decode time. The other names (aliases such as the old
//! producer's `LapIdx`) only matter where the first name left the column empty, so only those
//! messages are decoded again with every name.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::arrow::json::reader::Decoder as ArrowJsonDecoder;
use datafusion::arrow::record_batch::RecordBatch;
use pitwall_proto::schema::{col, telemetry_schema};

use super::{BadMessage, WireRows, reason};
use crate::error::{Error, Result};

pub(crate) struct JsonDecoder {
    /// The first wire name of each canonical column.
    first: WireSchema,
    /// Every wire name, for the messages whose aliased columns `first` left null; `None` when
    /// no column has a second name.
    all: Option<WireSchema>,
    /// Canonical columns with more than one wire name.
    aliased: Vec<&'static str>,
    /// Finders for those columns' other names, quoted as they appear in a payload.
    alias_finders: Vec<memchr::memmem::Finder<'static>>,
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
    pub(crate) fn new(names: &[(String, String)]) -> Result<Self> {
        let mut resolved: Vec<(&str, &'static str)> = Vec::new();
        for (wire, column) in names {
            let target = canonical(column).ok_or_else(|| {
                Error::Config(format!(
                    "JSON name {wire} maps to {column}, which is not a telemetry column"
                ))
            })?;
            if resolved.iter().any(|(w, _)| w == wire) {
                return Err(Error::Config(format!("JSON name {wire} is mapped twice")));
            }
            resolved.push((wire, target));
        }
        let mut first: Vec<(&str, &'static str)> = Vec::new();
        let mut aliased: Vec<&'static str> = Vec::new();
        let mut alias_finders = Vec::new();
        for &(wire, target) in &resolved {
            if !first.iter().any(|(_, t)| *t == target) {
                first.push((wire, target));
                continue;
            }
            if !aliased.contains(&target) {
                aliased.push(target);
            }
            alias_finders
                .push(memchr::memmem::Finder::new(format!("\"{wire}\"").as_bytes()).into_owned());
        }
        Ok(Self {
            first: WireSchema::new(&first),
            all: (!aliased.is_empty()).then(|| WireSchema::new(&resolved)),
            aliased,
            alias_finders,
        })
    }

    /// Decodes payloads; returns wire rows (message indices are into `payloads`) and the
    /// rejected payloads.
    pub(crate) fn decode(&self, payloads: &[&[u8]]) -> Result<(Vec<WireRows>, Vec<BadMessage>)> {
        let (mut out, mut bad) = self.first.decode(payloads)?;
        let Some(all) = &self.all else {
            return Ok((out, bad));
        };
        // Messages that may carry an empty column under another of its names: the name is in
        // the payload, or a backslash is, which could spell it with escapes.
        let may_alias = |p: &[u8]| {
            memchr::memchr(b'\\', p).is_some()
                || self.alias_finders.iter().any(|f| f.find(p).is_some())
        };
        let mut again: Vec<usize> = Vec::new();
        for w in &mut out {
            let mut keep = vec![true; w.len];
            for target in &self.aliased {
                for c in w.columns.get(target).into_iter().flatten() {
                    if c.null_count() > 0 {
                        (0..w.len)
                            .filter(|&i| c.is_null(i) && may_alias(payloads[w.row_message[i]]))
                            .for_each(|i| keep[i] = false);
                    }
                }
            }
            if keep.iter().all(|k| *k) {
                continue;
            }
            again.extend((0..w.len).filter(|&i| !keep[i]).map(|i| w.row_message[i]));
            w.retain(&keep)?;
        }
        if again.is_empty() {
            return Ok((out, bad));
        }
        let subset: Vec<&[u8]> = again.iter().map(|&i| payloads[i]).collect();
        let (wire, bad_again) = all.decode(&subset)?;
        out.extend(wire.into_iter().map(|mut w| {
            w.row_message.iter_mut().for_each(|r| *r = again[*r]);
            w
        }));
        bad.extend(bad_again.into_iter().map(|mut b| {
            b.index = again[b.index];
            b
        }));
        Ok((out, bad))
    }
}

/// An arrow-json schema of wire names and the canonical column each one fills.
struct WireSchema {
    schema: SchemaRef,
    /// Canonical column of each wire field.
    targets: Vec<&'static str>,
}

impl WireSchema {
    fn new(names: &[(&str, &'static str)]) -> Self {
        let canonical_schema = telemetry_schema();
        let fields = names
            .iter()
            .map(|&(wire, target)| {
                let ty = match target {
                    col::SESSION_TIME => DataType::Utf8,
                    // Read as UTC (chrono's `Utc`, cheaper than the `UTC` zone of the
                    // canonical type); `to_wire` attaches the zone without touching values.
                    col::TS => DataType::Timestamp(TimeUnit::Millisecond, None),
                    _ => canonical_schema
                        .field_with_name(target)
                        .expect("canonical")
                        .data_type()
                        .clone(),
                };
                Field::new(wire, ty, true)
            })
            .collect::<Vec<_>>();
        Self {
            schema: Arc::new(Schema::new(fields)),
            targets: names.iter().map(|(_, t)| *t).collect(),
        }
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
            let c = batch.column(i);
            let c = match *target {
                col::TS => Arc::new(
                    c.as_primitive::<TimestampMillisecondType>()
                        .clone()
                        .with_timezone("UTC"),
                ),
                _ => c.clone(),
            };
            w.columns.entry(target).or_default().push(c);
        }
        w
    }

    /// Decodes payloads with these names only.
    fn decode(&self, payloads: &[&[u8]]) -> Result<(Vec<WireRows>, Vec<BadMessage>)> {
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
                        error: crate::error::one_line(&error),
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
                error: crate::error::one_line(&e.to_string()),
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
