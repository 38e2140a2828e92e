//! Micro-benchmarks of the hot path: JSON and Protobuf decode, EA F1 game datagrams, one engine step with the
//! default queries, and the Parquet archive writer (its time, and the heap it takes above its
//! input). Run with `cargo bench --bench pitwall`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{
    ArrayRef, AsArray, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::{Field, Schema, TimestampMillisecondType};
use datafusion::arrow::json::ReaderBuilder;
use pitwall_proto::schema::{JSON_WIRE_NAMES, col, telemetry_schema};
use pitwall_server::engine::{Engine, EngineConfig};
use pitwall_server::ingest::decode::{DecodeConfig, Decoder, RawMessage};
use pitwall_server::ingest::embedded::bundled_session;
use pitwall_server::ingest::{MicroBatch, PartitionSlice};
use prost::Message;

const BATCH: usize = 16_384;

/// The system allocator, counting the bytes in use and their peak since [`Heap::reset_peak`].
struct Heap {
    used: AtomicUsize,
    peak: AtomicUsize,
}

impl Heap {
    fn reset_peak(&self) -> usize {
        let used = self.used.load(Ordering::Relaxed);
        self.peak.store(used, Ordering::Relaxed);
        used
    }
}

// SAFETY: every method forwards to the system allocator unchanged; the counters only observe.
unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed on to the system allocator as is.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let used = self.used.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.peak.fetch_max(used, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        // SAFETY: `p` came from `System` with this layout (every allocation here goes there).
        unsafe { System.dealloc(p, layout) };
        self.used.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`: `p` and `layout` are the system allocator's own.
        let q = unsafe { System.realloc(p, layout, new_size) };
        if !q.is_null() {
            let used = self.used.fetch_add(new_size, Ordering::Relaxed) + new_size;
            self.peak.fetch_max(used, Ordering::Relaxed);
            self.used.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static HEAP: Heap = Heap {
    used: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

/// One JSON message per row, FastF1 names, as `pitwall replay` publishes them.
fn json_messages(rows: &RecordBatch) -> Vec<Vec<u8>> {
    let wire = |c: &str| {
        JSON_WIRE_NAMES
            .iter()
            .find(|(_, k)| *k == c)
            .map(|(w, _)| *w)
            .expect("wire name")
    };
    let fields: Vec<Field> = rows
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_name(wire(f.name())))
        .collect();
    let renamed = RecordBatch::try_new(Arc::new(Schema::new(fields)), rows.columns().to_vec())
        .expect("batch");
    let mut buf = Vec::new();
    let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut buf);
    w.write(&renamed).expect("json");
    w.finish().expect("json");
    drop(w);
    buf.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn protobuf_messages(rows: &RecordBatch) -> Vec<Vec<u8>> {
    let driver = rows.column_by_name(col::DRIVER).unwrap().as_string::<i32>();
    let ts = rows
        .column_by_name(col::TS)
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    let speed = rows
        .column_by_name(col::SPEED)
        .unwrap()
        .as_primitive::<datafusion::arrow::datatypes::Float32Type>();
    let rpm = rows
        .column_by_name(col::RPM)
        .unwrap()
        .as_primitive::<datafusion::arrow::datatypes::Float32Type>();
    (0..rows.num_rows())
        .map(|i| {
            pitwall_proto::TelemetrySample {
                session: "bench".into(),
                driver: driver.value(i).into(),
                date_ms: Some(ts.value(i)),
                speed: Some(speed.value(i)),
                rpm: Some(rpm.value(i)),
                gear: Some(7),
                throttle: Some(100.0),
                brake: Some(false),
                drs: Some(0),
                lap: Some(3),
                ..Default::default()
            }
            .encode_to_vec()
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let session = bundled_session().expect("bundled session");
    let rows = session.slice(100_000, BATCH);
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, payloads, header) in [
        ("json_16k_rows", json_messages(&rows), &b"json"[..]),
        (
            "protobuf_16k_rows",
            protobuf_messages(&rows),
            &b"protobuf"[..],
        ),
    ] {
        let raw: Vec<RawMessage<'_>> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawMessage {
                payload: p,
                key: None,
                partition: 0,
                offset: i as i64,
                timestamp_ms: Some(0),
                format_header: Some(header),
            })
            .collect();
        let mut decoder = Decoder::new(DecodeConfig::default()).expect("decoder");
        g.bench_function(name, |b| b.iter(|| decoder.decode(&raw).expect("decode")));
    }
    // arrow-json alone on the same messages (one wire name per column, no normalization): the
    // ceiling for the JSON path above.
    let payloads = json_messages(&rows);
    let mut columns: Vec<&str> = Vec::new();
    let mut fields: Vec<Field> = Vec::new();
    for (wire, column) in JSON_WIRE_NAMES {
        if !columns.contains(column) {
            columns.push(column);
            let ty = telemetry_schema()
                .field_with_name(column)
                .unwrap()
                .data_type()
                .clone();
            fields.push(Field::new(*wire, ty, true));
        }
    }
    let wire = Arc::new(Schema::new(fields));
    g.bench_function("arrow_json_alone_16k_rows", |b| {
        b.iter(|| {
            let mut d = ReaderBuilder::new(wire.clone())
                .with_batch_size(BATCH)
                .build_decoder()
                .unwrap();
            for p in &payloads {
                d.decode(p).unwrap();
            }
            d.flush().unwrap().unwrap()
        })
    });
    g.finish();
}

/// The game's traffic, 1,000 frames of a 22-car grid: per frame the real F1 25 Motion, Lap
/// Data and Car Telemetry packets (the ones sent every frame, and the largest Pitwall reads)
/// under that frame's header, and the Participants packet every 300 frames.
fn game_frames() -> Vec<Vec<u8>> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/testdata/f1-udp/f1-25");
    let read = |n: &str| std::fs::read(dir.join(format!("{n}.bin"))).expect("capture");
    let (participants, per_frame) = (
        read("Participants"),
        ["Motion", "LapData", "CarTelemetry"].map(read),
    );
    let mut out = Vec::new();
    for frame in 0..1_000u32 {
        let time = frame as f32 / 60.0;
        let every = (frame % 300 == 0).then_some(&participants);
        for p in every.into_iter().chain(&per_frame) {
            let mut d = p.clone();
            d[15..19].copy_from_slice(&time.to_le_bytes());
            d[19..23].copy_from_slice(&frame.to_le_bytes());
            d[23..27].copy_from_slice(&frame.to_le_bytes());
            out.push(d);
        }
    }
    out
}

/// EA F1 game datagrams: decoding alone (issue 26's target is 1M datagrams/s on one core),
/// and decoding joined into rows as the `--udp` source does.
fn udp(c: &mut Criterion) {
    use pitwall_proto::f1udp::{Frames, decode};
    let datagrams = game_frames();
    let mut g = c.benchmark_group("udp");
    g.throughput(Throughput::Elements(datagrams.len() as u64));
    g.bench_function("decode_1000_frames", |b| {
        b.iter(|| {
            datagrams
                .iter()
                .map(|d| decode(d).map(|(h, _)| h.packet_id).unwrap_or(0) as u64)
                .sum::<u64>()
        })
    });
    let mut arrival = 1_765_000_000_000;
    g.bench_function("decode_and_join_1000_frames", |b| {
        b.iter(|| {
            // A new session each time round (the same frames again would be repeats).
            let mut frames = Frames::default();
            arrival += 100_000;
            let mut rows = 0;
            for d in &datagrams {
                let (h, p) = decode(d).expect("a packet");
                rows += frames
                    .push(&h, p, arrival + i64::from(h.overall_frame) * 16)
                    .expect("rows")
                    .map_or(0, |r| r.num_rows());
            }
            rows
        })
    });
    g.finish();
}

/// `rows` as a micro-batch of partition 0.
fn micro_batch(rows: RecordBatch, offset: i64) -> MicroBatch {
    let ts = rows
        .column_by_name(col::TS)
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    let max_ts = ts.values().iter().max().copied();
    MicroBatch {
        topic: "bench".into(),
        partitions: vec![PartitionSlice {
            partition: 0,
            first_offset: offset,
            last_offset: offset + rows.num_rows() as i64 - 1,
            max_ts,
            drivers: Vec::new(),
        }],
        rows,
        assigned: None,
        caught_up: vec![0],
        caught_up_confirmed: None,
        dead_letters: vec![],
        ready_at: Instant::now(),
        handover: None,
    }
}

/// The race as an endless stream: each round shifted in time and named anew.
struct Race {
    rows: RecordBatch,
    pos: usize,
    round: i64,
    span: i64,
}

impl Race {
    fn new() -> Self {
        let rows = bundled_session().expect("bundled session");
        let ts = rows
            .column_by_name(col::TS)
            .unwrap()
            .as_primitive::<TimestampMillisecondType>();
        let span = ts.value(ts.len() - 1) - ts.value(0) + 5_000;
        Self {
            rows,
            pos: 0,
            round: 0,
            span,
        }
    }

    fn next(&mut self, n: usize) -> RecordBatch {
        if self.pos + n > self.rows.num_rows() {
            self.pos = 0;
            self.round += 1;
        }
        let slice = self.rows.slice(self.pos, n);
        self.pos += n;
        if self.round == 0 {
            return slice;
        }
        let schema = telemetry_schema();
        let mut cols: Vec<ArrayRef> = slice.columns().to_vec();
        let ts = slice
            .column_by_name(col::TS)
            .unwrap()
            .as_primitive::<TimestampMillisecondType>();
        cols[schema.index_of(col::TS).unwrap()] = Arc::new(
            TimestampMillisecondArray::from_iter_values(
                ts.values().iter().map(|t| t + self.round * self.span),
            )
            .with_timezone("UTC"),
        );
        cols[schema.index_of(col::SESSION).unwrap()] =
            Arc::new(StringArray::from(vec![format!("r{}", self.round); n]));
        RecordBatch::try_new(schema, cols).unwrap()
    }
}

fn engine_step(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("engine_step");
    // 20 cars x 60 Hz x 50 ms, and 200 cars x 1000 Hz x 50 ms.
    for rows in [60usize, 10_000] {
        g.throughput(Throughput::Elements(rows as u64));
        let mut engine = Engine::new(EngineConfig::default()).unwrap();
        rt.block_on(async {
            for q in pitwall_server::initial_queries(None).unwrap() {
                engine.submit(q).await.unwrap();
            }
        });
        let mut race = Race::new();
        let mut offset = 0i64;
        let mut now = Instant::now();
        g.bench_function(format!("default_queries_{rows}_rows"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let batch = micro_batch(race.next(rows), offset);
                    offset += rows as i64;
                    now += Duration::from_millis(50);
                    let t = Instant::now();
                    rt.block_on(engine.step(Some(&batch), now));
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

fn archive_write(c: &mut Criterion) {
    let session = bundled_session().expect("bundled session");
    // Eight micro-batches with buffers of their own, as the server buffers them.
    let rows: Vec<RecordBatch> = (0..8)
        .map(|i| {
            let own = UInt32Array::from_iter_values(0..32_768);
            take_record_batch(&session.slice(i * 32_768, 32_768), &own).expect("copy")
        })
        .collect();
    let n: usize = rows.iter().map(|r| r.num_rows()).sum();
    // Peak heap above the buffered rows while one checkpoint's files are made.
    let input: usize = rows.iter().map(|r| r.get_array_memory_size()).sum();
    let before = HEAP.reset_peak();
    let files =
        pitwall_server::archive::writer::telemetry_files(&rows, &telemetry_schema(), 1, &mut 0)
            .expect("files");
    let peak = HEAP.peak.load(Ordering::Relaxed) - before;
    let written: usize = files.iter().map(|f| f.bytes.len()).sum();
    drop(files);
    println!(
        "archive/telemetry_files_262k_rows: peak heap {:.1} MB above the input's ({:.1} MB as \
         Arrow; {:.1} MB of Parquet written)",
        peak as f64 / 1e6,
        input as f64 / 1e6,
        written as f64 / 1e6
    );
    let mut g = c.benchmark_group("archive");
    g.throughput(Throughput::Elements(n as u64));
    g.sample_size(10);
    g.bench_function("telemetry_files_262k_rows", |b| {
        b.iter(|| {
            let mut k = 0;
            pitwall_server::archive::writer::telemetry_files(&rows, &telemetry_schema(), 1, &mut k)
                .expect("files")
        })
    });
    g.finish();
}

criterion_group!(benches, decode, udp, engine_step, archive_write);
criterion_main!(benches);
