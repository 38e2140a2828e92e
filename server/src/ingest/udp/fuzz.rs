//! Fuzzing the UDP source (issue 26): any datagram, in any order, through the path the live
//! port takes (decode, join into frames, micro-batch) must give rows, a count by reason and a
//! dead letter, or nothing (a repeat, a packet Pitwall does not read): never a panic, never an
//! error that stops the source, never a datagram that takes long.
//!
//! Datagrams are drawn with proptest from three families: the real captures of F1 22-25 with
//! random byte edits (replace, insert, delete, cut, extend); the real captures with hostile
//! header fields (format, packet id, a few session UIDs, frame numbers near and far); and raw
//! bytes. One source state lives through the whole run, as on the live port, with arrival
//! time moving on. The suite runs a few hundred batches; `PITWALL_FUZZ_SECS=600` runs ten
//! minutes (BENCHMARKS.md has the command and the result).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};

use super::*;

/// Every real capture in the repository's test data.
fn captures() -> Vec<Vec<u8>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/testdata/f1-udp");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).expect("test data") {
        let dir = dir.expect("entry").path();
        if !dir.is_dir() {
            continue;
        }
        for f in std::fs::read_dir(&dir).expect("captures") {
            let f = f.expect("entry").path();
            if f.extension().is_some_and(|e| e == "bin") {
                out.push(std::fs::read(&f).expect("capture"));
            }
        }
    }
    assert!(out.len() > 100, "{} captures", out.len());
    out
}

#[derive(Debug, Clone)]
enum Edit {
    Replace(usize, u8),
    Insert(usize, u8),
    Delete(usize),
}

fn edited(seeds: std::sync::Arc<Vec<Vec<u8>>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
    ];
    (
        0..n,
        prop::collection::vec(edit, 0..6),
        prop::option::of(any::<usize>()),
    )
        .prop_map(move |(s, edits, cut)| {
            let mut d = seeds[s].clone();
            for e in edits {
                match e {
                    Edit::Replace(i, b) if !d.is_empty() => {
                        let i = i % d.len();
                        d[i] = b;
                    }
                    Edit::Insert(i, b) => d.insert(i % (d.len() + 1), b),
                    Edit::Delete(i) if !d.is_empty() => {
                        d.remove(i % d.len());
                    }
                    _ => {}
                }
            }
            if let Some(c) = cut {
                d.truncate(c % (d.len() + 1));
            }
            d
        })
}

/// A real packet under another header: now and then another format or packet id, and one
/// of a few sessions and frames (so that frames fill, complete and make rows), or any frame.
fn reheaded(seeds: std::sync::Arc<Vec<Vec<u8>>>) -> impl Strategy<Value = Vec<u8>> {
    let n = seeds.len();
    let format = prop::option::weighted(0.2, prop_oneof![2022u16..=2026, any::<u16>()]);
    let id = prop::option::weighted(0.2, 0u8..20);
    let frame = prop_oneof![4 => 0u32..16, 1 => any::<u32>()];
    (0..n, format, id, 0u64..4, frame, 0.0f32..100.0).prop_map(
        move |(s, format, id, uid, frame, time)| {
            let mut d = seeds[s].clone();
            if d.len() >= 29 {
                if let Some(f) = format {
                    d[0..2].copy_from_slice(&f.to_le_bytes());
                }
                if let Some(i) = id {
                    d[6] = i;
                }
                d[7..15].copy_from_slice(&uid.to_le_bytes());
                d[15..19].copy_from_slice(&time.to_le_bytes());
                d[19..23].copy_from_slice(&frame.to_le_bytes());
                d[23..27].copy_from_slice(&frame.to_le_bytes());
            }
            d
        },
    )
}

/// A frame of F1 25 (Participants, Motion, Lap Data, Car Telemetry of one session and frame,
/// in any order), its values edited: what makes rows.
fn frame() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/testdata/f1-udp/f1-25");
    let packets: Vec<Vec<u8>> = ["Participants", "Motion", "LapData", "CarTelemetry"]
        .iter()
        .map(|n| std::fs::read(dir.join(format!("{n}.bin"))).expect("capture"))
        .collect();
    let edits = prop::collection::vec((0usize..4, 29usize..1400, any::<u8>()), 0..24);
    (
        0u64..4,
        0u32..64,
        0.0f32..100.0,
        edits,
        Just(()).prop_perturb(|_, mut rng| rng.next_u64()),
    )
        .prop_map(move |(uid, frame, time, edits, order)| {
            let mut out = packets.clone();
            for d in &mut out {
                d[7..15].copy_from_slice(&uid.to_le_bytes());
                d[15..19].copy_from_slice(&time.to_le_bytes());
                d[19..23].copy_from_slice(&frame.to_le_bytes());
                d[23..27].copy_from_slice(&frame.to_le_bytes());
            }
            for (p, at, b) in edits {
                let d = &mut out[p];
                let at = at % d.len();
                d[at] = b;
            }
            out.rotate_left((order % 4) as usize);
            out
        })
}

/// Datagrams that arrive together: one of the families above.
fn datagrams(seeds: std::sync::Arc<Vec<Vec<u8>>>) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop_oneof![
        3 => edited(seeds.clone()).prop_map(|d| vec![d]),
        3 => reheaded(seeds).prop_map(|d| vec![d]),
        3 => frame(),
        1 => prop::collection::vec(any::<u8>(), 0..2048).prop_map(|d| vec![d]),
    ]
}

/// One batch of datagrams through the source state: the slowest datagram's time, and the rows.
fn check(
    pending: &mut Pending,
    frames: &mut Frames,
    stats: &IngestStats,
    batch: &[(Vec<Vec<u8>>, u16)],
) -> Result<(Duration, usize), TestCaseError> {
    let mut slowest = Duration::ZERO;
    for d in batch.iter().flat_map(|(d, _)| d) {
        let (before, letters) = (stats.bad_total(), pending.dead_letters.len());
        let started = Instant::now();
        pending.take(frames, d, stats);
        slowest = slowest.max(started.elapsed());
        // A refused datagram is counted and kept; one that was read is neither.
        let refused = stats.bad_total() - before;
        prop_assert_eq!(refused as usize, pending.dead_letters.len() - letters);
    }
    let now = batch.iter().map(|(_, ms)| i64::from(*ms)).sum::<i64>();
    frames.settle(now_ms() + now);
    count_frames(frames, stats);
    let b = pending
        .batch()
        .map_err(|e| TestCaseError::fail(format!("micro-batch: {e}")))?;
    let rows = b.map_or(0, |b| b.rows.num_rows());
    Ok((slowest, rows))
}

#[test]
fn fuzz_udp_source() {
    let seeds = std::sync::Arc::new(captures());
    let batch = prop::collection::vec((datagrams(seeds), 0u16..50), 1..32);
    let mut runner = TestRunner::new(Config::default());
    let stats = IngestStats::default();
    let mut frames = Frames::default();
    let mut pending = Pending {
        rows: Vec::new(),
        dead_letters: Vec::new(),
        first_offset: None,
        next_offset: 0,
    };
    let budget = crate::ingest::decode::fuzz::Budget::from_env();
    let (mut runs, mut datagrams, mut rows, mut slowest) = (0u64, 0u64, 0usize, Duration::ZERO);
    while !budget.spent(runs) {
        let tree = batch.new_tree(&mut runner).expect("a batch");
        let b = tree.current();
        datagrams += b.iter().map(|(d, _)| d.len() as u64).sum::<u64>();
        match check(&mut pending, &mut frames, &stats, &b) {
            Ok((took, n)) => (slowest, rows) = (slowest.max(took), rows + n),
            Err(e) => panic!("UDP source: {e} on {b:?}"),
        }
        runs += 1;
    }
    println!(
        "udp: {runs} batches, {datagrams} datagrams in {:.0?} ({rows} rows), none failed; slowest datagram {slowest:?}; counted {:?}",
        budget.elapsed(),
        stats.bad_by_reason()
    );
}
