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
use datafusion::arrow::datatypes::{DataType, Float64Type, TimestampMillisecondType};
use pitwall_proto::schema::{col, telemetry_schema};

use super::{BadMessage, DecodeConfig, Decoded, RawMessage, WireRows, reason};
use crate::error::Result;

/// First line of an error, at most 200 characters.
pub fn one_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    line.chars().take(200).collect()
}

/// Parses `SessionTime` text: seconds (`3728.731`) or a pandas timedelta
/// (`0 days 01:02:08.731000`).
pub fn parse_session_time(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<f64>() {
        return v.is_finite().then_some(v);
    }
    let (days, rest) = match s.split_once(" days ").or_else(|| s.split_once(" day ")) {
        Some((d, r)) => (d.trim().parse::<f64>().ok()?, r),
        None => (0.0, s),
    };
    let mut parts = rest.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let sec: f64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some(days * 86_400.0 + h * 3_600.0 + m * 60.0 + sec)
}

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
}

pub fn normalize(
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
        let n = part.wire.len;
        let msg = |i: usize| &part.messages[part.wire.row_message[i]];
        let mut valid = vec![true; n];
        let mut reject = |valid: &mut Vec<bool>, i: usize, reason: &'static str, error: String| {
            if valid[i] {
                valid[i] = false;
                bad.push(BadMessage {
                    index: part.wire.row_message[i],
                    reason,
                    error,
                });
            }
        };

        // session and driver, with fallbacks
        let session = part.column(col::SESSION, &DataType::Utf8)?;
        let session = session.as_string::<i32>();
        let session: StringArray = if session.null_count() == 0 {
            session.clone()
        } else {
            session
                .iter()
                .map(|s| Some(s.unwrap_or(&config.default_session)))
                .collect()
        };
        let driver = part.column(col::DRIVER, &DataType::Utf8)?;
        let driver = driver.as_string::<i32>();
        let driver: StringArray = if driver.null_count() == 0 {
            driver.clone()
        } else {
            (0..n)
                .map(|i| match driver.is_valid(i).then(|| driver.value(i)) {
                    Some(d) => Some(d.to_string()),
                    None => msg(i).key.map(|k| String::from_utf8_lossy(k).into_owned()),
                })
                .collect()
        };
        for i in 0..n {
            if driver.is_null(i) || driver.value(i).is_empty() {
                reject(
                    &mut valid,
                    i,
                    reason::MISSING_FIELD,
                    "no Driver and no message key".into(),
                );
            }
        }

        // session_time: numbers, or text to parse
        let mut st_candidates: Vec<ArrayRef> = Vec::new();
        for c in part
            .wire
            .columns
            .get(col::SESSION_TIME)
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            if c.data_type() == &DataType::Utf8 {
                let text = c.as_string::<i32>();
                let mut b = Float64Builder::with_capacity(n);
                for i in 0..n {
                    if text.is_null(i) {
                        b.append_null();
                    } else if let Some(v) = parse_session_time(text.value(i)) {
                        b.append_value(v);
                    } else {
                        b.append_null();
                        reject(
                            &mut valid,
                            i,
                            reason::BAD_TIME,
                            format!(
                                "SessionTime {:?} is not seconds or a timedelta",
                                text.value(i)
                            ),
                        );
                    }
                }
                st_candidates.push(Arc::new(b.finish()));
            } else {
                st_candidates.push(c.clone());
            }
        }
        let st = coalesce(&st_candidates, n, &DataType::Float64)?;
        let st = st.as_primitive::<Float64Type>();
        let date = part.column(col::TS, &pitwall_proto::schema::ts_type())?;
        let date = date.as_primitive::<TimestampMillisecondType>();

        // Learn session starts from rows that carry both Date and SessionTime. Rows of one
        // session come in runs, so the map is consulted once per run, not once per row.
        let mut known: Option<&str> = None;
        for i in 0..n {
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
                let start = match start {
                    Some(s) => Some(s),
                    None => msg(i)
                        .timestamp_ms
                        .and_then(|k| k.checked_sub(millis(st.value(i))))
                        .inspect(|&anchored| {
                            session_starts.insert(s.to_string(), anchored);
                            run = Some((s, Some(anchored)));
                        }),
                };
                // Out of the range of timestamps: no time (rejected below).
                start.and_then(|start| start.checked_add(millis(st.value(i))))
            } else {
                msg(i).timestamp_ms
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
                reject(&mut valid, i, why, text.into());
            }
            ts.push(t.unwrap_or(0));
            session_time.push(if st.is_valid(i) {
                Some(st.value(i))
            } else {
                start
                    .and_then(|start| ts[i].checked_sub(start))
                    .map(|ms| ms as f64 / 1000.0)
            });
        }

        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let c: ArrayRef = match field.name().as_str() {
                col::SESSION => Arc::new(session.clone()),
                col::DRIVER => Arc::new(driver.clone()),
                col::TS => Arc::new(
                    TimestampMillisecondArray::from(std::mem::take(&mut ts)).with_timezone("UTC"),
                ),
                col::SESSION_TIME => {
                    Arc::new(Float64Array::from(std::mem::take(&mut session_time)))
                }
                name => part.column(name, field.data_type())?,
            };
            columns.push(c);
        }
        for required in &config.required {
            if let Ok(idx) = schema.index_of(required) {
                let c = &columns[idx];
                if c.null_count() > 0 {
                    for i in 0..n {
                        if c.is_null(i) {
                            reject(
                                &mut valid,
                                i,
                                reason::MISSING_FIELD,
                                format!("{required} is missing"),
                            );
                        }
                    }
                }
            }
        }
        // Non-null columns must not carry placeholders of rejected rows into the batch.
        let keep = BooleanArray::from(valid.clone());
        let driver_idx = schema.index_of(col::DRIVER)?;
        if columns[driver_idx].null_count() > 0 {
            let d = columns[driver_idx].as_string::<i32>();
            columns[driver_idx] = Arc::new(
                d.iter()
                    .map(|v| Some(v.unwrap_or("")))
                    .collect::<StringArray>(),
            );
        }
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let batch = if keep.false_count() == 0 {
            batch
        } else {
            filter_record_batch(&batch, &keep)?
        };
        row_message.extend(
            (0..n)
                .filter(|&i| valid[i])
                .map(|i| part.wire.row_message[i]),
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

/// Seconds as whole milliseconds (saturating: NaN is 0, out of range is the nearest bound).
fn millis(seconds: f64) -> i64 {
    (seconds * 1000.0).round() as i64
}
