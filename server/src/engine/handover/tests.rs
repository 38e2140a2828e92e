//! Two engines sharing the work of one: the race split over three partitions, handed from one
//! engine to the other through checkpoints (cleanly, then as if the first had been killed),
//! gives exactly the rows one engine gives, for the lap windows and the `LAG` over them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::TimestampMillisecondType;

use super::{AdoptRequest, GroupArchive};
use crate::engine::snapshot::{self, Batches, EngineState};
use crate::engine::{Engine, QueryDef, oracle};
use crate::ingest::{MicroBatch, PartitionSlice};

const TOPIC: &str = "t";
const PARTITIONS: i32 = 3;

/// The shared archive's part in this: committed checkpoints and published clocks.
#[derive(Default)]
struct Shared {
    checkpoints: Mutex<Vec<(Vec<u8>, EngineState)>>,
    clocks: Mutex<BTreeMap<i32, Option<i64>>>,
}

impl GroupArchive for Shared {
    fn checkpoints(&self) -> Vec<(EngineState, Batches)> {
        let all = self.checkpoints.lock().unwrap();
        all.iter()
            .map(|(b, _)| snapshot::decode(b).unwrap())
            .collect()
    }
    fn publish_clock(&self, _: &str, own: &BTreeMap<i32, Option<i64>>) {
        self.clocks.lock().unwrap().extend(own.clone());
    }
    fn release_except(&self, _: &str, _: &BTreeSet<i32>) {}
    fn acquire(&self, _: &str, _: i32) {}
    fn clock_floor(&self, _: &str, own: &BTreeSet<i32>) -> Option<i64> {
        let clocks = self.clocks.lock().unwrap();
        clocks
            .iter()
            .filter(|(p, _)| !own.contains(p))
            .filter_map(|(_, t)| *t)
            .min()
    }
}

/// One engine of the group, with what it emitted since its last checkpoint apart: a server
/// killed loses that (the archive commits results with the next checkpoint).
struct Member {
    engine: Engine,
    committed: HashMap<String, Vec<RecordBatch>>,
    pending: HashMap<String, Vec<RecordBatch>>,
    owned: Vec<i32>,
    /// partition -> next offset to feed
    next: BTreeMap<i32, usize>,
}

/// The race's rows, per partition (the car's, by name), in event-time order.
struct Race {
    rows: RecordBatch,
    partition_rows: BTreeMap<i32, Vec<u32>>,
}

impl Race {
    fn new(laps: i32) -> Self {
        let rows = oracle::race_laps(laps).unwrap();
        let drivers = rows
            .column_by_name("driver")
            .unwrap()
            .as_string::<i32>()
            .clone();
        let mut partition_rows: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        for i in 0..rows.num_rows() {
            let p = drivers.value(i).bytes().map(i32::from).sum::<i32>() % PARTITIONS;
            partition_rows.entry(p).or_default().push(i as u32);
        }
        Self {
            rows,
            partition_rows,
        }
    }

    fn ts(&self, row: u32) -> i64 {
        self.rows
            .column_by_name("ts")
            .unwrap()
            .as_primitive::<TimestampMillisecondType>()
            .value(row as usize)
    }

    fn end_ts(&self) -> i64 {
        (0..self.rows.num_rows() as u32)
            .map(|r| self.ts(r))
            .max()
            .unwrap()
    }
}

impl Member {
    async fn new(queries: &[QueryDef], shared: &Arc<Shared>) -> Self {
        let mut engine = Engine::new(oracle::engine_config()).unwrap();
        for q in queries {
            engine.submit(q.clone()).await.unwrap();
        }
        engine.set_group_archive(shared.clone());
        Self {
            engine,
            committed: HashMap::new(),
            pending: HashMap::new(),
            owned: Vec::new(),
            next: BTreeMap::new(),
        }
    }

    /// The assignment `owned`: the cars of the others dropped, these taken over.
    fn assign(&mut self, owned: &[i32], now: Instant) {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let request = AdoptRequest {
            assigned: owned.to_vec(),
            new: owned.to_vec(),
            reply: tx,
        };
        let resume = self.engine.adopt(TOPIC, &request, now);
        drop(request);
        assert!(rx.try_recv().is_err(), "the test answers itself");
        self.owned = owned.to_vec();
        self.next = owned
            .iter()
            .map(|p| (*p, resume.get(p).map_or(0, |o| *o as usize)))
            .collect();
    }

    /// Feeds its partitions' rows with event time below `until`, in 50 ms micro-batches.
    async fn feed(&mut self, race: &Race, until: i64, now: &mut Instant) {
        loop {
            let mut start: Option<i64> = None;
            for (p, next) in &self.next {
                if let Some(&r) = race.partition_rows[p].get(*next) {
                    let t = race.ts(r);
                    if t < until {
                        start = Some(start.map_or(t, |s| s.min(t)));
                    }
                }
            }
            let Some(start) = start else {
                return;
            };
            let end = (start + 50).min(until);
            let mut take = Vec::new();
            let mut slices = Vec::new();
            for (p, next) in self.next.iter_mut() {
                let first = *next;
                while let Some(&r) = race.partition_rows[p].get(*next) {
                    if race.ts(r) >= end {
                        break;
                    }
                    take.push(r);
                    *next += 1;
                }
                if *next > first {
                    let rows: Vec<u32> = race.partition_rows[p][first..*next].to_vec();
                    let drivers = race
                        .rows
                        .column_by_name("driver")
                        .unwrap()
                        .as_string::<i32>();
                    let mut names: Vec<String> = rows
                        .iter()
                        .map(|r| drivers.value(*r as usize).to_string())
                        .collect();
                    names.sort();
                    names.dedup();
                    slices.push(PartitionSlice {
                        partition: *p,
                        first_offset: first as i64,
                        last_offset: *next as i64 - 1,
                        max_ts: rows.iter().map(|r| race.ts(*r)).max(),
                        drivers: names,
                    });
                }
            }
            take.sort_by_key(|r| (race.ts(*r), *r));
            let rows = take_record_batch(&race.rows, &UInt32Array::from(take)).unwrap();
            *now += Duration::from_millis(50);
            let b = MicroBatch {
                topic: TOPIC.into(),
                rows,
                partitions: slices,
                assigned: Some(self.owned.clone()),
                caught_up: Vec::new(),
                caught_up_confirmed: None,
                dead_letters: Vec::new(),
                ready_at: *now,
                handover: None,
            };
            self.step(Some(&b), *now).await;
        }
    }

    async fn step(&mut self, b: Option<&MicroBatch>, now: Instant) {
        for (name, out) in self.engine.step(b, now).await {
            self.pending.entry(name).or_default().extend(out);
        }
    }

    /// A checkpoint committed: its state readable by the others, its clocks published, what
    /// was emitted before it archived.
    fn checkpoint(&mut self, shared: &Shared) {
        let (state, batches) = self.engine.snapshot();
        let bytes = snapshot::encode(&state, &batches).unwrap();
        shared.checkpoints.lock().unwrap().push((bytes, state));
        for (topic, own) in self.engine.partition_clocks() {
            shared.publish_clock(&topic, &own);
        }
        for (name, out) in self.pending.drain() {
            self.committed.entry(name).or_default().extend(out);
        }
    }

    /// The input at its end: every window closes.
    async fn drain(&mut self, now: &mut Instant) {
        let caught_up = MicroBatch {
            topic: TOPIC.into(),
            rows: RecordBatch::new_empty(pitwall_proto::schema::telemetry_schema()),
            partitions: Vec::new(),
            assigned: Some(self.owned.clone()),
            caught_up: self.owned.clone(),
            caught_up_confirmed: None,
            dead_letters: Vec::new(),
            ready_at: *now,
            handover: None,
        };
        self.step(Some(&caught_up), *now).await;
        for _ in 0..60 {
            *now += Duration::from_millis(500);
            self.step(None, *now).await;
        }
    }
}

/// A runs the race alone, hands partition 2 to B cleanly (checkpoint, then each takes its
/// share), goes on checkpointing every 5 s of event time and is killed between two
/// checkpoints; B, which ran its partition to the end meanwhile (held back by A's published
/// event time), takes A's partitions over from A's last checkpoint. The rows both archived
/// are one engine's.
#[tokio::test]
async fn two_engines_handing_partitions_over_emit_what_one_does() {
    let race = Race::new(8);
    let names = ["lap_stats", "lap_anomaly"];
    let queries: Vec<QueryDef> = crate::initial_queries(None)
        .unwrap()
        .into_iter()
        .filter(|q| names.contains(&q.name.as_str()))
        .collect();
    let shared = Arc::new(Shared::default());
    let mut now = Instant::now();
    let t0 = race.ts(race.partition_rows.values().map(|r| r[0]).min().unwrap());
    let mut a = Member::new(&queries, &shared).await;
    a.assign(&[0, 1, 2], now);
    let handover = t0 + 200_000;
    a.feed(&race, handover, &mut now).await;
    a.checkpoint(&shared);
    let mut b = Member::new(&queries, &shared).await;
    a.assign(&[0, 1], now);
    b.assign(&[2], now);
    assert!(
        b.next[&2] > 0,
        "B resumes partition 2 where A's checkpoint left it"
    );
    let kill = handover + 232_500;
    let mut t = handover;
    while t + 5_000 <= kill {
        t += 5_000;
        a.feed(&race, t, &mut now).await;
        a.checkpoint(&shared);
    }
    a.feed(&race, kill, &mut now).await; // 2.5 s lost with A
    b.feed(&race, race.end_ts() + 1, &mut now).await;
    b.checkpoint(&shared);
    b.assign(&[0, 1, 2], now);
    b.feed(&race, race.end_ts() + 1, &mut now).await;
    b.drain(&mut now).await;
    b.checkpoint(&shared);
    for name in names {
        let mut got: Vec<RecordBatch> = a.committed.get(name).cloned().unwrap_or_default();
        got.extend(b.committed.get(name).cloned().unwrap_or_default());
        let want = oracle::batch_result(&queries, name, &race.rows)
            .await
            .unwrap();
        oracle::assert_same_rows(
            name,
            &oracle::canonical_rows(&got),
            &oracle::canonical_rows(&want),
        );
    }
}
