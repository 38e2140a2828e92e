//! Injection on the bundled race: deterministic per seed, every kind placed, faults apart, and
//! nothing changed outside a labelled fault.

use std::sync::OnceLock;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{Float32Type, Int8Type, TimestampMillisecondType};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::*;

fn race() -> &'static RecordBatch {
    static RACE: OnceLock<RecordBatch> = OnceLock::new();
    RACE.get_or_init(|| {
        let bytes = bytes::Bytes::from(crate::bundled::read().expect("the bundled race"));
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("parquet")
            .build()
            .expect("reader");
        let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
        concat_batches(&batches[0].schema(), &batches).expect("concat")
    })
}

fn options(seed: u64) -> Options {
    Options {
        seed,
        per_kind: 4,
        kinds: Kind::ALL.to_vec(),
        session: Some(format!("race+faults-s{seed}")),
    }
}

#[test]
fn the_same_seed_gives_the_same_faults_and_another_seed_others() {
    let (a, la) = inject(race(), &options(7)).unwrap();
    let (b, lb) = inject(race(), &options(7)).unwrap();
    assert_eq!(la, lb);
    assert_eq!(a, b);
    let (_, lc) = inject(race(), &options(8)).unwrap();
    assert_ne!(la.faults, lc.faults);
    assert_eq!(la.session, "race+faults-s7");
    assert_eq!(la.rows, a.num_rows());
}

#[test]
fn every_kind_is_placed_apart_from_the_others_of_its_car() {
    for seed in [1, 2, 3] {
        let (_, labels) = inject(race(), &options(seed)).unwrap();
        for kind in Kind::ALL {
            let n = labels.faults.iter().filter(|f| f.kind == kind).count();
            assert_eq!(n, 4, "seed {seed}: {} {kind:?} faults", n);
        }
        for (i, f) in labels.faults.iter().enumerate() {
            assert!(f.start_ms <= f.end_ms && !f.laps.is_empty(), "{f:?}");
            assert!(f.laps.iter().all(|&l| l >= 3), "{f:?}");
            for g in &labels.faults[i + 1..] {
                if g.driver == f.driver {
                    let end = |x: &Fault| {
                        if x.kind == Kind::PowerLoss {
                            i64::MAX / 2
                        } else {
                            x.end_ms
                        }
                    };
                    let apart =
                        g.start_ms >= end(f) + MARGIN_MS || f.start_ms >= end(g) + MARGIN_MS;
                    assert!(apart, "seed {seed}: too close:\n{f:?}\n{g:?}");
                }
            }
        }
        assert_eq!(labels.cars.len(), 20);
    }
}

/// Rows keyed by (driver, ts), with the channels faults change.
fn keyed(rows: &RecordBatch) -> BTreeMap<(String, i64), [Option<f32>; 5]> {
    let d = rows.column_by_name("driver").unwrap().as_string::<i32>();
    let ts = rows
        .column_by_name("ts")
        .unwrap()
        .as_primitive::<TimestampMillisecondType>();
    let f = |n| {
        rows.column_by_name(n)
            .unwrap()
            .as_primitive::<Float32Type>()
            .clone()
    };
    let i = |n| {
        rows.column_by_name(n)
            .unwrap()
            .as_primitive::<Int8Type>()
            .clone()
    };
    let (speed, rpm, throttle, gear, drs) =
        (f("speed"), f("rpm"), f("throttle"), i("gear"), i("drs"));
    let get = |a: &dyn Array, r| a.is_valid(r).then_some(r);
    (0..rows.num_rows())
        .map(|r| {
            let v = [
                get(&speed, r).map(|r| speed.value(r)),
                get(&rpm, r).map(|r| rpm.value(r)),
                get(&throttle, r).map(|r| throttle.value(r)),
                get(&gear, r).map(|r| gear.value(r) as f32),
                get(&drs, r).map(|r| drs.value(r) as f32),
            ];
            ((d.value(r).to_string(), ts.value(r)), v)
        })
        .collect()
}

#[test]
fn nothing_changes_outside_a_labelled_fault_and_each_kind_looks_as_documented() {
    let (out, labels) = inject(race(), &options(3)).unwrap();
    let (before, after) = (keyed(race()), keyed(&out));
    let fault_at = |driver: &str, t: i64| {
        labels.faults.iter().find(|f| {
            f.driver == driver && t >= f.start_ms && (t <= f.end_ms || f.kind == Kind::PowerLoss)
        })
    };
    let mut changed = 0;
    for ((driver, t), v) in &before {
        let now = after.get(&(driver.clone(), *t));
        if now == Some(v) {
            continue;
        }
        changed += 1;
        let f = fault_at(driver, *t)
            .unwrap_or_else(|| panic!("{driver} at {t} changed outside a fault"));
        match (f.kind, now) {
            (Kind::Dropout, None) => {}
            (Kind::Dropout, Some(_)) => panic!("a dropout changed a value: {f:?}"),
            (_, None) => panic!("a {:?} dropped a row", f.kind),
            (Kind::OverRev, Some(n)) => {
                assert!((13_500.0..=14_700.0).contains(&n[1].unwrap()), "{n:?}")
            }
            (Kind::LockUp, Some(n)) => {
                let ratio = n[0].unwrap() / v[0].unwrap();
                assert!((0.44..=0.71).contains(&ratio), "lock-up ratio {ratio}");
            }
            (Kind::Spike, Some(n)) => {
                let impossible = n[0].unwrap() >= 400.0
                    || n[1].unwrap() >= 16_000.0
                    || n[2].unwrap() >= 110.0
                    || n[3].unwrap() >= 9.0;
                assert!(impossible, "spike {n:?}");
            }
            (Kind::DrsFault, Some(n)) => {
                assert!(v[4].unwrap() >= 10.0 && n[4] == Some(8.0), "{v:?} -> {n:?}")
            }
            (Kind::PowerLoss, Some(n)) => {
                assert!(n[0].unwrap() <= v[0].unwrap() && n[0].unwrap() >= v[0].unwrap() * 0.89)
            }
            (Kind::FlatLine | Kind::Gearbox, Some(_)) => {}
        }
    }
    assert!(changed > 1000, "{changed} rows changed");
    let dropped: usize = before.len() - after.len();
    assert_eq!(labels.rows, before.len() - dropped);
    assert!(dropped >= 4 * 8, "dropouts removed {dropped} rows");
}
