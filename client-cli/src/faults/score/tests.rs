//! The scorer on hand-made labels, alerts and lap scores whose figures are worked out by hand.

use pitwall_proto::faults::{CarSpan, Fault, Kind, Labels};

use super::*;

fn fault(driver: &str, kind: Kind, start_ms: i64, end_ms: i64, laps: &[i32], lap_ms: i64) -> Fault {
    Fault {
        driver: driver.into(),
        kind,
        start_ms,
        end_ms,
        laps: laps.to_vec(),
        lap_ms,
        detail: String::new(),
    }
}

fn labels() -> Labels {
    let car = |d: &str| CarSpan {
        driver: d.into(),
        first_ms: 0,
        last_ms: 3_600_000,
    };
    Labels {
        session: "s".into(),
        seed: 1,
        rows: 10,
        cars: vec![car("A"), car("B")],
        faults: vec![
            fault("A", Kind::OverRev, 1_000, 2_000, &[3], 90_000),
            fault("B", Kind::PowerLoss, 10_000, 3_600_000, &[5, 6, 7], 90_000),
            fault("A", Kind::DrsFault, 50_000, 60_000, &[8], 80_000),
        ],
    }
}

fn alert(driver: &str, lap: i32, ts_ms: i64, kind: &str) -> Alert {
    Alert {
        driver: driver.into(),
        lap: Some(lap),
        ts_ms,
        kind: kind.into(),
    }
}

fn kind<'a>(r: &'a [KindScore], k: &str) -> &'a KindScore {
    r.iter().find(|s| s.kind == k).unwrap()
}

#[test]
fn recall_precision_delay_and_false_alerts_are_counted_as_defined() {
    let alerts = vec![
        alert("A", 3, 2_500, "over_rev"), // 1.5 s after the start: found, in time
        alert("A", 4, 30_000, "over_rev"), // clean time: false
        alert("B", 1, 1_500, "over_rev"), // another car: false
        alert("B", 5, 95_000, "power_loss"), // within the first faulty lap (90 s)
        alert("A", 9, 150_000, "drs_fault"), // a lap after the fault's: no match, false
    ];
    let r = score(&labels(), &alerts, None);
    let o = kind(&r.kinds, "over_rev");
    assert_eq!(
        (o.faults, o.found, o.alerts, o.matching_alerts),
        (1, 1, 3, 1)
    );
    assert_eq!(
        (o.recall, o.precision, o.median_delay_s, o.in_time),
        (1.0, Some(1.0 / 3.0), Some(1.5), 1)
    );
    let p = kind(&r.kinds, "power_loss");
    assert_eq!(
        (p.found, p.precision, p.median_delay_s, p.in_time),
        (1, Some(1.0), Some(85.0), 1)
    );
    let d = kind(&r.kinds, "drs_fault");
    assert_eq!(
        (d.found, d.recall, d.precision, d.median_delay_s),
        (0, 0.0, Some(0.0), None)
    );
    assert_eq!(r.false_alerts, 3);
    // A: 1 h less 1 s (over-rev) and 10 s (DRS); B: only the 10 s before its power loss.
    assert!(
        (r.car_hours - 3_599_000.0 / 3_600_000.0).abs() < 1e-9,
        "{}",
        r.car_hours
    );
    assert!((r.false_per_car_hour - 3.0 / r.car_hours).abs() < 1e-9);
}

#[test]
fn a_late_alert_is_found_but_not_in_time_and_kinds_without_faults_are_listed() {
    let alerts = vec![
        alert("A", 3, 6_500, "over_rev"), // 5.5 s after the start: matches (end + 5 s), late
        alert("B", 6, 200_000, "power_loss"), // found on the second faulty lap: later than 90 s
        alert("A", 20, 900_000, "spike"), // no spike was injected: a false alert
    ];
    let r = score(&labels(), &alerts, None);
    let o = kind(&r.kinds, "over_rev");
    assert_eq!((o.found, o.in_time), (1, 0));
    let p = kind(&r.kinds, "power_loss");
    assert_eq!((p.found, p.in_time, p.median_delay_s), (1, 0, Some(190.0)));
    let s = kind(&r.kinds, "spike");
    assert_eq!((s.faults, s.alerts, s.precision), (0, 1, Some(0.0)));
    assert_eq!(r.false_alerts, 1);
}

#[test]
fn the_baseline_takes_its_best_threshold() {
    let lap = |driver: &str, lap: i32, score: f64, end_ms: i64| LapScore {
        driver: driver.into(),
        lap,
        score: Some(score),
        end_ms,
    };
    let laps = vec![
        lap("A", 3, 50.0, 5_000),
        lap("A", 8, 10.0, 60_000),
        lap("B", 5, 80.0, 95_000),
        lap("A", 4, 70.0, 100_000), // a clean lap: a false flag
        lap("B", 2, 5.0, 8_000),
    ];
    let r = score(&labels(), &[], Some(&laps));
    let b = r.baseline.unwrap();
    // F1 by threshold: 80 → 0.5, 70 → 0.4, 50 → 0.667, 10 → 0.857, 5 → 0.75.
    assert_eq!(
        (b.threshold, b.flagged_laps, b.precision),
        (10.0, 4, Some(0.75))
    );
    let o = kind(&b.kinds, "over_rev");
    assert_eq!((o.found, o.median_delay_s, o.in_time), (1, Some(4.0), 1));
    let d = kind(&b.kinds, "drs_fault");
    assert_eq!((d.found, d.median_delay_s, d.in_time), (1, Some(10.0), 1));
    assert!((b.false_per_car_hour - 1.0 / r.car_hours).abs() < 1e-9);
}
