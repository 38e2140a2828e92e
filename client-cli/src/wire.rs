//! Encodes canonical rows into Kafka messages: FastF1-named JSON objects or Protobuf samples.

use std::sync::Arc;

use anyhow::Result;
use arrow::array::{
    Array, AsArray, BooleanArray, Float32Array, Float64Array, Int8Array, RecordBatch,
    TimestampMillisecondArray,
};
use arrow::datatypes::{Field, Schema};
use pitwall_proto::TelemetrySample;
use pitwall_proto::schema::{JSON_WIRE_NAMES, col};
use prost::Message as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WireFormat {
    Json,
    Protobuf,
}

impl WireFormat {
    /// Value of the `pitwall-format` header.
    pub fn header(self) -> &'static str {
        match self {
            WireFormat::Json => "json",
            WireFormat::Protobuf => "protobuf",
        }
    }
}

/// Encoded messages of one chunk: payloads in one buffer, with each one's byte range.
#[derive(Default)]
pub struct Encoded {
    pub buf: Vec<u8>,
    pub spans: Vec<(usize, usize)>,
}

impl Encoded {
    pub fn payload(&self, i: usize) -> &[u8] {
        let (start, end) = self.spans[i];
        &self.buf[start..end]
    }
    pub fn len(&self) -> usize {
        self.spans.len()
    }
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// The wire name used for each canonical column when encoding (the first alias wins).
fn wire_name(column: &str) -> &'static str {
    JSON_WIRE_NAMES
        .iter()
        .find(|(_, c)| *c == column)
        .map(|(w, _)| *w)
        .expect("every canonical column has a wire name")
}

pub fn encode(batch: &RecordBatch, format: WireFormat, out: &mut Encoded) -> Result<()> {
    out.buf.clear();
    out.spans.clear();
    match format {
        WireFormat::Json => encode_json(batch, out),
        WireFormat::Protobuf => encode_protobuf(batch, out),
    }
}

/// One JSON object per row with FastF1 names, written by arrow-json (nulls omitted).
fn encode_json(batch: &RecordBatch, out: &mut Encoded) -> Result<()> {
    let fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_name(wire_name(f.name())))
        .collect();
    let wire = RecordBatch::try_new(Arc::new(Schema::new(fields)), batch.columns().to_vec())?;
    let mut writer = arrow::json::LineDelimitedWriter::new(&mut out.buf);
    writer.write(&wire)?;
    writer.finish()?;
    drop(writer);
    // Each line is one message (JSON strings escape newlines, so they only separate rows).
    let mut start = 0;
    for (i, b) in out.buf.iter().enumerate() {
        if *b == b'\n' {
            out.spans.push((start, i));
            start = i + 1;
        }
    }
    Ok(())
}

fn encode_protobuf(batch: &RecordBatch, out: &mut Encoded) -> Result<()> {
    let c = |name: &str| batch.column_by_name(name).expect("canonical column");
    let session = c(col::SESSION).as_string::<i32>();
    let driver = c(col::DRIVER).as_string::<i32>();
    let lap = c(col::LAP).as_primitive::<arrow::datatypes::Int32Type>();
    let ts = c(col::TS)
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .expect("ts");
    let st = c(col::SESSION_TIME)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64");
    let f32c = |name: &str| {
        c(name)
            .as_any()
            .downcast_ref::<Float32Array>()
            .expect("f32")
            .clone()
    };
    let (speed, rpm, throttle, x, y, z) = (
        f32c(col::SPEED),
        f32c(col::RPM),
        f32c(col::THROTTLE),
        f32c(col::X),
        f32c(col::Y),
        f32c(col::Z),
    );
    let gear = c(col::GEAR)
        .as_any()
        .downcast_ref::<Int8Array>()
        .expect("i8");
    let drs = c(col::DRS)
        .as_any()
        .downcast_ref::<Int8Array>()
        .expect("i8");
    let brake = c(col::BRAKE)
        .as_any()
        .downcast_ref::<BooleanArray>()
        .expect("bool");
    let distance = c(col::DISTANCE)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("f64");
    fn opt<A: Array, T>(a: &A, i: usize, v: impl FnOnce() -> T) -> Option<T> {
        a.is_valid(i).then(v)
    }
    for i in 0..batch.num_rows() {
        let sample = TelemetrySample {
            session: session.value(i).to_string(),
            driver: driver.value(i).to_string(),
            lap: opt(lap, i, || lap.value(i)),
            date_ms: opt(ts, i, || ts.value(i)),
            session_time: opt(st, i, || st.value(i)),
            speed: opt(&speed, i, || speed.value(i)),
            rpm: opt(&rpm, i, || rpm.value(i)),
            gear: opt(gear, i, || gear.value(i) as i32),
            throttle: opt(&throttle, i, || throttle.value(i)),
            brake: opt(brake, i, || brake.value(i)),
            drs: opt(drs, i, || drs.value(i) as i32),
            x: opt(&x, i, || x.value(i)),
            y: opt(&y, i, || y.value(i)),
            z: opt(&z, i, || z.value(i)),
            distance: opt(distance, i, || distance.value(i)),
        };
        let start = out.buf.len();
        sample.encode(&mut out.buf)?;
        out.spans.push((start, out.buf.len()));
    }
    Ok(())
}
