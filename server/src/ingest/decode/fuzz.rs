//! Fuzzing the JSON and Protobuf decoders (issue 24 point 17): any bytes, in any batch, under
//! any format header, must decode to rows or dead letters: never a panic, never an internal
//! error (which stops ingest), never a message lost without a trace.
//!
//! Inputs are drawn with proptest from three families: real messages with random byte edits
//! (replace, insert, delete), structurally valid messages with hostile values (wrong types,
//! huge, NaN, nested, odd strings) in the fields the decoders look at, and raw bytes. The
//! suite runs a few hundred batches; `PITWALL_FUZZ_SECS=600` runs each decoder for ten
//! minutes (BENCHMARKS.md has the command and the result).

use std::time::{Duration, Instant};

use pitwall_proto::{TelemetryBatch, TelemetrySample};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;

use super::*;

/// Real messages of both producers (FastF1 names, the old system's names, our wire names).
const JSON_SEEDS: &[&str] = &[
    r#"{"Session":"bgp","Driver":"VER","LapNumber":3,"Date":"2023-07-09 14:03:09.767","SessionTime":3728.731,"Speed":291.0,"RPM":11234,"nGear":7,"Throttle":100,"Brake":false,"DRS":12}"#,
    r#"{"RPM": 10512.0, "Speed": 287.0, "nGear": 7, "Throttle": 99.0, "Time": "0 days 00:01:02.500000", "X": -1201.5, "Y": 830.0, "LapIdx": 12}"#,
    r#"{"Driver":"LEC","Date":"2023-07-09T13:01:02.743Z","SessionTime":"0 days 00:00:01.707000","Speed":0,"RPM":0}"#,
    r#"{"session":"s","driver":"HAM","lap":2,"ts":1688911389767,"speed":301.5,"rpm":11800,"gear":8,"throttle":100,"brake":true,"drs":1,"x":1.5,"y":-2,"z":0.25,"distance":1234.5}"#,
];

/// The producers' names the decoders read; the canonical schema's own are added in [`fields`].
const FASTF1_FIELDS: &[&str] = &[
    "Session",
    "Driver",
    "LapNumber",
    "LapIdx",
    "Date",
    "Time",
    "SessionTime",
    "Speed",
    "RPM",
    "nGear",
    "Throttle",
    "Brake",
    "DRS",
    "X",
    "Y",
    "Z",
    "Distance",
];

fn fields() -> Vec<String> {
    let schema = pitwall_proto::schema::telemetry_schema();
    FASTF1_FIELDS
        .iter()
        .map(|f| f.to_string())
        .chain(schema.fields().iter().map(|f| f.name().clone()))
        .collect()
}

fn sample_seed() -> TelemetrySample {
    TelemetrySample {
        session: "bgp".into(),
        driver: "VER".into(),
        lap: Some(3),
        date_ms: Some(1_688_911_389_767),
        session_time: Some(3728.731),
        speed: Some(291.0),
        rpm: Some(11234.0),
        gear: Some(7),
        throttle: Some(100.0),
        brake: Some(false),
        drs: Some(12),
        x: Some(1.0),
        y: Some(2.0),
        z: Some(3.0),
        distance: Some(10.5),
    }
}

/// Byte edits: (position, byte, 0 replace / 1 insert / 2 delete).
fn edited(seed: Vec<u8>, edits: Vec<(usize, u8, u8)>) -> Vec<u8> {
    let mut b = seed;
    for (pos, byte, op) in edits {
        let at = if b.is_empty() { 0 } else { pos % (b.len() + 1) };
        match op {
            0 if at < b.len() => b[at] = byte,
            2 if at < b.len() => {
                b.remove(at);
            }
            _ => b.insert(at, byte),
        }
    }
    b
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 0..12)
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("2023-07-09T13:01:02.743Z".to_string()),
            Just("0 days 00:00:01.707000".to_string()),
            Just("-999999 days 99:99:99.9".to_string()),
            Just("1e400".to_string()),
            ".{0,24}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-zA-Z]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// One JSON payload: an edited real message, hostile values under known names, or bytes.
fn json_payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (prop::sample::select(JSON_SEEDS), edits())
            .prop_map(|(s, e)| edited(s.as_bytes().to_vec(), e)),
        prop::collection::vec((prop::sample::select(fields()), json_value()), 0..10).prop_map(
            |kv| {
                let o: serde_json::Map<String, serde_json::Value> = kv.into_iter().collect();
                serde_json::to_vec(&o).expect("json")
            }
        ),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

fn opt<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

fn hostile_sample() -> impl Strategy<Value = TelemetrySample> {
    (
        (
            ".{0,12}",
            ".{0,8}",
            opt(any::<i32>()),
            opt(any::<i64>()),
            opt(any::<f64>()),
        ),
        (
            opt(any::<f32>()),
            opt(any::<f32>()),
            opt(any::<i32>()),
            opt(any::<f32>()),
        ),
        (
            opt(any::<bool>()),
            opt(any::<i32>()),
            opt(any::<f32>()),
            opt(any::<f64>()),
        ),
    )
        .prop_map(
            |(
                (session, driver, lap, date_ms, session_time),
                (speed, rpm, gear, throttle),
                (brake, drs, x, distance),
            )| {
                TelemetrySample {
                    session,
                    driver,
                    lap,
                    date_ms,
                    session_time,
                    speed,
                    rpm,
                    gear,
                    throttle,
                    brake,
                    drs,
                    x,
                    y: x,
                    z: None,
                    distance,
                }
            },
        )
}

/// One Protobuf payload: an edited real sample or batch, hostile values, or bytes.
fn protobuf_payload() -> impl Strategy<Value = Vec<u8>> {
    let batch = TelemetryBatch {
        samples: vec![sample_seed(); 3],
    }
    .encode_to_vec();
    prop_oneof![
        edits().prop_map(|e| edited(sample_seed().encode_to_vec(), e)),
        edits().prop_map(move |e| edited(batch.clone(), e)),
        hostile_sample().prop_map(|s| s.encode_to_vec()),
        prop::collection::vec(hostile_sample(), 0..6)
            .prop_map(|samples| TelemetryBatch { samples }.encode_to_vec()),
        prop::collection::vec(any::<u8>(), 0..256),
    ]
}

const HEADERS: &[&[u8]] = &[b"json", b"protobuf", b"protobuf-batch", b"\xff garbage"];

fn header() -> impl Strategy<Value = Option<&'static [u8]>> {
    prop::option::of(prop::sample::select(HEADERS))
}

type Batch = Vec<(Vec<u8>, Option<&'static [u8]>, Option<Vec<u8>>)>;

/// Decodes `batch` and checks the contract; the time it took.
fn check(decoder: &mut Decoder, batch: &Batch) -> std::result::Result<Duration, TestCaseError> {
    let messages: Vec<RawMessage<'_>> = batch
        .iter()
        .enumerate()
        .map(|(i, (payload, format_header, key))| RawMessage {
            payload,
            key: key.as_deref(),
            partition: 0,
            offset: i as i64,
            timestamp_ms: Some(1_700_000_000_000),
            format_header: *format_header,
        })
        .collect();
    let started = Instant::now();
    let decoded = decoder
        .decode(&messages)
        .map_err(|e| TestCaseError::fail(format!("internal error: {e}")))?;
    let took = started.elapsed();
    prop_assert_eq!(decoded.rows.num_rows(), decoded.row_message.len());
    for (i, _) in batch.iter().enumerate() {
        let rows = decoded.row_message.contains(&i);
        let bad = decoded.bad.iter().any(|b| b.index == i);
        // (Both for a batch some of whose samples are bad: the message is dead-lettered.)
        prop_assert!(
            rows || bad,
            "message {} left neither rows nor a dead letter",
            i
        );
    }
    Ok(took)
}

/// How long a fuzz target runs: `PITWALL_FUZZ_SECS` seconds, or 300 batches in the suite.
pub(crate) struct Budget {
    secs: Option<u64>,
    started: Instant,
}

impl Budget {
    pub(crate) fn from_env() -> Self {
        let secs = std::env::var("PITWALL_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok());
        Self {
            secs,
            started: Instant::now(),
        }
    }

    /// Spent after `runs` batches.
    pub(crate) fn spent(&self, runs: u64) -> bool {
        match self.secs {
            Some(s) => self.started.elapsed() >= Duration::from_secs(s),
            None => runs >= 300,
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Runs `payload` batches through one decoder for `PITWALL_FUZZ_SECS` (or 300 batches).
fn fuzz(name: &str, payload: impl Strategy<Value = Vec<u8>>) {
    let key = prop::option::of(prop::collection::vec(any::<u8>(), 0..8));
    let batch = prop::collection::vec((payload, header(), key), 1..8);
    let mut runner = TestRunner::new(Config::default());
    // One decoder throughout, as ingest keeps one (it learns session starts).
    let decoder = std::cell::RefCell::new(Decoder::new(DecodeConfig::default()).expect("decoder"));
    let budget = Budget::from_env();
    let (mut runs, mut slowest) = (0u64, Duration::ZERO);
    while !budget.spent(runs) {
        let took = std::cell::Cell::new(Duration::ZERO);
        let tree = batch.new_tree(&mut runner).expect("a batch");
        let outcome = runner.run_one(tree, |b| {
            took.set(check(&mut decoder.borrow_mut(), &b)?);
            Ok(())
        });
        if let Err(e) = outcome {
            panic!("{name} decoder: {e}");
        }
        slowest = slowest.max(took.get());
        runs += 1;
    }
    println!(
        "{name}: {runs} batches in {:.0?}, none failed; slowest decode {slowest:?}",
        budget.elapsed()
    );
}

#[test]
fn fuzz_json_decoder() {
    fuzz("json", json_payload());
}

#[test]
fn fuzz_protobuf_decoder() {
    fuzz("protobuf", protobuf_payload());
}
