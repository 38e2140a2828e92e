//! Protobuf payloads (`TelemetrySample`, or `TelemetryBatch` with the `protobuf-batch`
//! header) to wire columns, built directly with Arrow builders.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int8Builder, Int32Builder,
    StringBuilder, TimestampMillisecondBuilder,
};
use pitwall_proto::schema::col;
use pitwall_proto::{TelemetryBatch, TelemetrySample};
use prost::Message;

use super::{BadMessage, RawMessage, WireRows, reason};
use crate::error::Result;

#[derive(Default)]
struct Builders {
    session: StringBuilder,
    driver: StringBuilder,
    lap: Int32Builder,
    ts: TimestampMillisecondBuilder,
    session_time: Float64Builder,
    speed: Float32Builder,
    rpm: Float32Builder,
    gear: Int8Builder,
    throttle: Float32Builder,
    brake: BooleanBuilder,
    drs: Int8Builder,
    x: Float32Builder,
    y: Float32Builder,
    z: Float32Builder,
    distance: Float64Builder,
    row_message: Vec<usize>,
}

fn small(v: Option<i32>) -> Option<i8> {
    v.and_then(|v| i8::try_from(v).ok())
}

impl Builders {
    fn push(&mut self, s: &TelemetrySample, message: usize) {
        let opt_str = |v: &str| (!v.is_empty()).then(|| v.to_string());
        self.session.append_option(opt_str(&s.session));
        self.driver.append_option(opt_str(&s.driver));
        self.lap.append_option(s.lap);
        self.ts.append_option(s.date_ms);
        self.session_time.append_option(s.session_time);
        self.speed.append_option(s.speed);
        self.rpm.append_option(s.rpm);
        self.gear.append_option(small(s.gear));
        self.throttle.append_option(s.throttle);
        self.brake.append_option(s.brake);
        self.drs.append_option(small(s.drs));
        self.x.append_option(s.x);
        self.y.append_option(s.y);
        self.z.append_option(s.z);
        self.distance.append_option(s.distance);
        self.row_message.push(message);
    }

    fn finish(mut self) -> WireRows {
        let mut w = WireRows {
            len: self.row_message.len(),
            ..Default::default()
        };
        let mut put = |c: &'static str, a: ArrayRef| {
            w.columns.insert(c, vec![a]);
        };
        put(col::SESSION, Arc::new(self.session.finish()));
        put(col::DRIVER, Arc::new(self.driver.finish()));
        put(col::LAP, Arc::new(self.lap.finish()));
        put(col::TS, Arc::new(self.ts.finish().with_timezone("UTC")));
        put(col::SESSION_TIME, Arc::new(self.session_time.finish()));
        put(col::SPEED, Arc::new(self.speed.finish()));
        put(col::RPM, Arc::new(self.rpm.finish()));
        put(col::GEAR, Arc::new(self.gear.finish()));
        put(col::THROTTLE, Arc::new(self.throttle.finish()));
        put(col::BRAKE, Arc::new(self.brake.finish()));
        put(col::DRS, Arc::new(self.drs.finish()));
        put(col::X, Arc::new(self.x.finish()));
        put(col::Y, Arc::new(self.y.finish()));
        put(col::Z, Arc::new(self.z.finish()));
        put(col::DISTANCE, Arc::new(self.distance.finish()));
        w.row_message = self.row_message;
        w
    }
}

/// Decodes the messages at `idx`; `batched` = each is a `TelemetryBatch`.
pub(crate) fn decode(
    messages: &[RawMessage<'_>],
    idx: &[usize],
    batched: bool,
) -> Result<(Vec<WireRows>, Vec<BadMessage>)> {
    let mut b = Builders::default();
    let mut bad = Vec::new();
    for &i in idx {
        let payload = messages[i].payload;
        if batched {
            match TelemetryBatch::decode(payload) {
                // A batch of nothing would leave no trace of its message.
                Ok(batch) if batch.samples.is_empty() => bad.push(BadMessage {
                    index: i,
                    reason: reason::EMPTY,
                    error: "a TelemetryBatch with no samples".into(),
                }),
                Ok(batch) => batch.samples.iter().for_each(|s| b.push(s, i)),
                Err(e) => bad.push(BadMessage {
                    index: i,
                    reason: reason::BAD_PROTOBUF,
                    error: e.to_string(),
                }),
            }
        } else if payload.is_empty() {
            bad.push(BadMessage {
                index: i,
                reason: reason::EMPTY,
                error: "empty payload".into(),
            });
        } else {
            match TelemetrySample::decode(payload) {
                Ok(s) => b.push(&s, i),
                Err(e) => bad.push(BadMessage {
                    index: i,
                    reason: reason::BAD_PROTOBUF,
                    error: e.to_string(),
                }),
            }
        }
    }
    Ok((vec![b.finish()], bad))
}
