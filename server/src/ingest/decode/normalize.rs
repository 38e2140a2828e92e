//! Wire columns to canonical rows: aliases coalesced, driver from the key when absent, event
//! time resolved, required columns checked, each failing row reported against its message.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Float64Builder, RecordBatch, StringArray,
    TimestampMillisecondArray, new_null_array,
};
use datafusion::arrow::compute::kernels::zip::zip;
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, is_not_null};
use datafusion::arrow::datatypes::{DataType, Float64Type, Schema, TimestampMillisecondType};
use pitwall_proto::schema::{col, telemetry_schema};
use pitwall_proto::timedelta::parse_seconds;

use super::{BadMessage, DecodeConfig, Decoded, RawMessage, WireRows, reason};
use crate::error::Result;

fn coalesce(candidates: &[ArrayRef], len: usize, ty: &DataType) -> Result<ArrayRef> {
    let mut out: Option<ArrayRef> = None;
    for c in candidates {
        let c = if c.data_type() == ty {
            c.clone()
        } else {
            cast(c, ty)?
        };
        out = Some(match out {
            None => c,
            Some(prev) if prev.null_count() == 0 => prev,
            Some(prev) => zip(&is_not_null(&prev)?, &prev, &c)?,
        });
    }
    Ok(out.unwrap_or_else(|| new_null_array(ty, len)))
}

/// One part of a micro-batch as the wire decoder left it, with the messages its rows came from.
struct Part<'a> {
    wire: WireRows,
    messages: &'a [RawMessage<'a>],
}

impl Part<'_> {
    fn column(&self, name: &str, ty: &DataType) -> Result<ArrayRef> {
        coalesce(
            self.wire
                .columns
                .get(name)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
            self.wire.len,
            ty,
        )
    }

    /// The message row `i` came from.
    fn message(&self, i: usize) -> &RawMessage<'_> {
        &self.messages[self.wire.row_message[i]]
    }
}

/// Which rows of a part are still good; a row rejected once is reported once, against its
/// message.
struct Rejects<'a> {
    valid: Vec<bool>,
    row_message: &'a [usize],
    bad: &'a mut Vec<BadMessage>,
}

impl Rejects<'_> {
    fn reject(&mut self, i: usize, reason: &'static str, error: String) {
        if std::mem::replace(&mut self.valid[i], false) {
            self.bad.push(BadMessage {
                index: self.row_message[i],
                reason,
                error,
            });
        }
    }
}

/// Canonical rows of every part, each row's message index, and the messages rejected (added
/// to `bad`, which comes in with what the wire decoder rejected).
pub(crate) fn normalize(
    parts: Vec<WireRows>,
    messages: &[RawMessage<'_>],
    config: &DecodeConfig,
    session_starts: &mut HashMap<String, i64>,
    mut bad: Vec<BadMessage>,
) -> Result<Decoded> {
    let schema = telemetry_schema();
    let mut batches = Vec::new();
    let mut row_message = Vec::new();
    for wire in parts {
        if wire.len == 0 {
            continue;
        }
        let part = Part { wire, messages };
        let (batch, valid) = normalize_part(&part, config, session_starts, &mut bad)?;
        row_message.extend(
            valid
                .iter()
                .zip(&part.wire.row_message)
                .filter(|(v, _)| **v)
                .map(|(_, &m)| m),
        );
        batches.push(batch);
    }
    let rows = concat_batches(&schema, &batches)?;
    Ok(Decoded {
        rows,
        row_message,
        bad,
    })
}

/// One part's canonical rows (the rejected ones left out) and which rows were kept.
fn normalize_part(
    part: &Part<'_>,
    config: &DecodeConfig,
    session_starts: &mut HashMap<String, i64>,
    bad: &mut Vec<BadMessage>,
) -> Result<(RecordBatch, Vec<bool>)> {
    let schema = telemetry_schema();
    let mut rejects = Rejects {
        valid: vec![true; part.wire.len],
        row_message: &part.wire.row_message,
        bad,
    };
    let session = session_column(part, config)?;
    let driver = driver_column(part, &mut rejects)?;
    let st = session_time_column(part, &mut rejects)?;
    let st = st.as_primitive::<Float64Type>();
    let date = part.column(col::TS, &pitwall_proto::schema::ts_type())?;
    let date = date.as_primitive::<TimestampMillisecondType>();
    learn_session_starts(&session, date, st, session_starts);
    let (ts, session_time) = event_times(
        part,
        Times {
            session: &session,
            date,
            st,
        },
        config,
        session_starts,
        &mut rejects,
    );

    let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    let (mut ts, mut session_time) = (Some(ts), Some(session_time));
    for field in schema.fields() {
        let c: ArrayRef = match field.name().as_str() {
            col::SESSION => Arc::new(session.clone()),
            // Non-null columns must not carry placeholders of rejected rows into the batch.
            col::DRIVER if driver.null_count() == 0 => Arc::new(driver.clone()),
            col::DRIVER => Arc::new(
                driver
                    .iter()
                    .map(|v| Some(v.unwrap_or("")))
                    .collect::<StringArray>(),
            ),
            col::TS => Arc::new(
                TimestampMillisecondArray::from(ts.take().unwrap_or_default()).with_timezone("UTC"),
            ),
            col::SESSION_TIME => {
                Arc::new(Float64Array::from(session_time.take().unwrap_or_default()))
            }
            name => part.column(name, field.data_type())?,
        };
        columns.push(c);
    }
    reject_missing_required(&schema, &columns, config, &mut rejects);
    let keep = BooleanArray::from(rejects.valid.clone());
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let batch = if keep.false_count() == 0 {
        batch
    } else {
        filter_record_batch(&batch, &keep)?
    };
    Ok((batch, rejects.valid))
}

/// `session`, the configured default where a row has none.
fn session_column(part: &Part<'_>, config: &DecodeConfig) -> Result<StringArray> {
    let session = part.column(col::SESSION, &DataType::Utf8)?;
    let session = session.as_string::<i32>();
    Ok(if session.null_count() == 0 {
        session.clone()
    } else {
        session
            .iter()
            .map(|s| Some(s.unwrap_or(&config.default_session)))
            .collect()
    })
}

/// `driver`, the message key where a row has none; a row with neither is rejected.
fn driver_column(part: &Part<'_>, rejects: &mut Rejects<'_>) -> Result<StringArray> {
    let driver = part.column(col::DRIVER, &DataType::Utf8)?;
    let driver = driver.as_string::<i32>();
    let driver: StringArray = if driver.null_count() == 0 {
        driver.clone()
    } else {
        (0..part.wire.len)
            .map(|i| match driver.is_valid(i).then(|| driver.value(i)) {
                Some(d) => Some(d.to_string()),
                None => part
                    .message(i)
                    .key
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
            })
            .collect()
    };
    for i in 0..part.wire.len {
        if driver.is_null(i) || driver.value(i).is_empty() {
            rejects.reject(
                i,
                reason::MISSING_FIELD,
                "no Driver and no message key".into(),
            );
        }
    }
    Ok(driver)
}

/// `SessionTime` in seconds: numbers as they are, text parsed as seconds or a pandas timedelta
/// (a row whose text is neither is rejected as `bad_time`).
fn session_time_column(part: &Part<'_>, rejects: &mut Rejects<'_>) -> Result<ArrayRef> {
    let n = part.wire.len;
    let mut candidates: Vec<ArrayRef> = Vec::new();
    for c in part
        .wire
        .columns
        .get(col::SESSION_TIME)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        if c.data_type() != &DataType::Utf8 {
            candidates.push(c.clone());
            continue;
        }
        let text = c.as_string::<i32>();
        let mut b = Float64Builder::with_capacity(n);
        for i in 0..n {
            if text.is_null(i) {
                b.append_null();
            } else if let Some(v) = parse_seconds(text.value(i)) {
                b.append_value(v);
            } else {
                b.append_null();
                rejects.reject(
                    i,
                    reason::BAD_TIME,
                    format!(
                        "SessionTime {:?} is not seconds or a timedelta",
                        text.value(i)
                    ),
                );
            }
        }
        candidates.push(Arc::new(b.finish()));
    }
    coalesce(&candidates, n, &DataType::Float64)
}

/// Learns session starts from rows that carry both Date and SessionTime. Rows of one session
/// come in runs, so the map is consulted once per run, not once per row.
fn learn_session_starts(
    session: &StringArray,
    date: &TimestampMillisecondArray,
    st: &Float64Array,
    session_starts: &mut HashMap<String, i64>,
) {
    let mut known: Option<&str> = None;
    for i in 0..session.len() {
        if !(date.is_valid(i) && st.is_valid(i)) || known == Some(session.value(i)) {
            continue;
        }
        let s = session.value(i);
        if !session_starts.contains_key(s)
            && let Some(start) = date.value(i).checked_sub(millis(st.value(i)))
        {
            session_starts.insert(s.to_string(), start);
        }
        known = Some(s);
    }
}

/// The columns event time is resolved from.
#[derive(Clone, Copy)]
struct Times<'a> {
    session: &'a StringArray,
    date: &'a TimestampMillisecondArray,
    st: &'a Float64Array,
}

/// Each row's event time (`Date`; else the session's start plus `SessionTime`, the start
/// learnt, configured, or anchored on the Kafka timestamp; else the Kafka timestamp) and its
/// session time. A row with no time, or one out of range, is rejected.
fn event_times(
    part: &Part<'_>,
    times: Times<'_>,
    config: &DecodeConfig,
    session_starts: &mut HashMap<String, i64>,
    rejects: &mut Rejects<'_>,
) -> (Vec<i64>, Vec<Option<f64>>) {
    let Times { session, date, st } = times;
    let n = part.wire.len;
    let mut ts = Vec::with_capacity(n);
    let mut session_time = Vec::with_capacity(n);
    // The start of the session of the previous row.
    let mut run: Option<(&str, Option<i64>)> = None;
    for i in 0..n {
        let s = session.value(i);
        let start = match run {
            Some((r, start)) if r == s => start,
            _ => {
                let start = session_starts.get(s).copied().or(config.session_start_ms);
                run = Some((s, start));
                start
            }
        };
        let t = if date.is_valid(i) {
            Some(date.value(i))
        } else if st.is_valid(i) {
            let start = start.or_else(|| {
                let anchored = part
                    .message(i)
                    .timestamp_ms?
                    .checked_sub(millis(st.value(i)))?;
                session_starts.insert(s.to_string(), anchored);
                run = Some((s, Some(anchored)));
                Some(anchored)
            });
            // Out of the range of timestamps: no time (rejected below).
            start.and_then(|start| start.checked_add(millis(st.value(i))))
        } else {
            part.message(i).timestamp_ms
        };
        if t.is_none() {
            let (why, text) = if st.is_valid(i) {
                (
                    reason::BAD_TIME,
                    "SessionTime puts the sample out of the time range",
                )
            } else {
                (
                    reason::MISSING_FIELD,
                    "no Date, SessionTime or Kafka timestamp",
                )
            };
            rejects.reject(i, why, text.into());
        }
        let t = t.unwrap_or(0);
        ts.push(t);
        session_time.push(if st.is_valid(i) {
            Some(st.value(i))
        } else {
            start
                .and_then(|start| t.checked_sub(start))
                .map(|ms| ms as f64 / 1000.0)
        });
    }
    (ts, session_time)
}

/// Rejects the rows missing a column the configuration requires.
fn reject_missing_required(
    schema: &Schema,
    columns: &[ArrayRef],
    config: &DecodeConfig,
    rejects: &mut Rejects<'_>,
) {
    for required in &config.required {
        let Ok(idx) = schema.index_of(required) else {
            continue;
        };
        let c = &columns[idx];
        if c.null_count() == 0 {
            continue;
        }
        for i in 0..c.len() {
            if c.is_null(i) {
                rejects.reject(i, reason::MISSING_FIELD, format!("{required} is missing"));
            }
        }
    }
}

/// Seconds as whole milliseconds (saturating: NaN is 0, out of range is the nearest bound).
fn millis(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}
