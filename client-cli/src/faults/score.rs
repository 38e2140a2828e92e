//! Scoring detectors against labelled faults.
//!
//! An alert **matches** a fault when it names the same car and the same kind and
//! - for a sample-level fault, comes from a sample between 1 s before the fault's first changed
//!   sample and 5 s after its last (a dropout is seen on the first sample after the hole);
//! - for a lap-level fault (`power_loss`, `drs_fault`), is on one of the fault's laps.
//!
//! Per kind: **recall** is the share of faults with a matching alert; **precision** the share
//! of that kind's alerts that match a fault of it; the **delay** of a found fault is the event
//! time from its start to its first matching alert (the median is reported; a lap-level fault is
//! "in time" when found within the length of its first lap). **False alerts** are alerts, of any
//! kind, near no fault (not on its car within its time and margins, nor, for a lap-level fault,
//! on its laps; a power loss lasts to the end of its car's race), per hour of the cars' racing
//! time outside the faults. The old score's false flags are flagged laps with no fault.
//!
//! The baseline is the old `lap_anomaly` score: a lap whose score reaches the threshold is
//! flagged; a flag matches a fault on the same car whose laps include it. It cannot name a kind,
//! so its precision is over all its flags; its threshold is the one with the best F1 over all
//! faults (the most favourable to it), its delay runs to the end of the flagged lap.

use std::collections::BTreeMap;

use pitwall_proto::faults::{Fault, Kind, Labels};
use serde::Serialize;

/// Seconds before a sample-level fault's start and after its end an alert still matches it.
const BEFORE_MS: i64 = 1_000;
const AFTER_MS: i64 = 5_000;

/// An alert as the `alerts` query emits it.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub driver: String,
    pub lap: Option<i32>,
    pub ts_ms: i64,
    pub kind: String,
}

/// One lap's baseline score and the time its last sample came.
#[derive(Debug, Clone, PartialEq)]
pub struct LapScore {
    pub driver: String,
    pub lap: i32,
    pub score: Option<f64>,
    pub end_ms: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct KindScore {
    pub kind: String,
    pub faults: usize,
    pub found: usize,
    pub recall: f64,
    pub alerts: usize,
    pub matching_alerts: usize,
    /// None when the kind raised no alert.
    pub precision: Option<f64>,
    pub median_delay_s: Option<f64>,
    /// Found within 5 s (sample-level) or within the fault's first lap (lap-level).
    pub in_time: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Baseline {
    pub threshold: f64,
    pub flagged_laps: usize,
    pub precision: Option<f64>,
    pub false_per_car_hour: f64,
    pub kinds: Vec<KindScore>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub session: String,
    pub seed: u64,
    pub car_hours: f64,
    pub kinds: Vec<KindScore>,
    pub false_alerts: usize,
    pub false_per_car_hour: f64,
    pub baseline: Option<Baseline>,
}

fn window(f: &Fault) -> (i64, i64) {
    if f.kind == Kind::PowerLoss {
        (f.start_ms, i64::MAX)
    } else {
        (f.start_ms, f.end_ms)
    }
}

fn matches(f: &Fault, a: &Alert) -> bool {
    a.kind == f.kind.name() && near(f, a)
}

/// On the fault's car and, whatever its kind, on one of its laps (lap-level) or in its time
/// with the margins (sample-level; a power loss lasts to the end of the race).
fn near(f: &Fault, a: &Alert) -> bool {
    if a.driver != f.driver {
        return false;
    }
    let (s, e) = window(f);
    let in_time = a.ts_ms >= s - BEFORE_MS && a.ts_ms <= e.saturating_add(AFTER_MS);
    if f.kind.lap_level() {
        in_time || a.lap.is_some_and(|l| f.laps.contains(&l))
    } else {
        in_time
    }
}

/// An alert near no fault: a false alert.
fn on_clean_time(labels: &Labels, a: &Alert) -> bool {
    labels.faults.iter().all(|f| !near(f, a))
}

/// Racing hours of all cars outside their faults.
fn clean_car_hours(labels: &Labels) -> f64 {
    let mut ms = 0i64;
    for car in &labels.cars {
        let mut clean = car.last_ms - car.first_ms;
        for f in labels.faults.iter().filter(|f| f.driver == car.driver) {
            let (s, e) = window(f);
            clean -= e.min(car.last_ms) - s.max(car.first_ms);
        }
        ms += clean.max(0);
    }
    ms as f64 / 3_600_000.0
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn in_time(f: &Fault, delay_ms: i64) -> bool {
    if f.kind.lap_level() {
        delay_ms <= f.lap_ms
    } else {
        delay_ms < 5_000
    }
}

/// Scores `alerts` (and, if given, the baseline's lap scores) against `labels`.
pub fn score(labels: &Labels, alerts: &[Alert], laps: Option<&[LapScore]>) -> Report {
    let car_hours = clean_car_hours(labels);
    let kinds = kinds_of(labels, alerts)
        .into_iter()
        .map(|kind| kind_score(labels, alerts, kind))
        .collect();
    let false_alerts = alerts.iter().filter(|a| on_clean_time(labels, a)).count();
    Report {
        session: labels.session.clone(),
        seed: labels.seed,
        car_hours,
        kinds,
        false_alerts,
        false_per_car_hour: per_hour(false_alerts, car_hours),
        baseline: laps.map(|l| baseline(labels, l, car_hours)),
    }
}

fn per_hour(n: usize, hours: f64) -> f64 {
    if hours > 0.0 { n as f64 / hours } else { 0.0 }
}

/// The kinds labelled or alerted, labelled ones in [`Kind::ALL`] order first.
fn kinds_of(labels: &Labels, alerts: &[Alert]) -> Vec<String> {
    let mut out: Vec<String> = Kind::ALL
        .iter()
        .filter(|k| labels.faults.iter().any(|f| f.kind == **k))
        .map(|k| k.name().to_string())
        .collect();
    for a in alerts {
        if !out.contains(&a.kind) {
            out.push(a.kind.clone());
        }
    }
    out
}

fn kind_score(labels: &Labels, alerts: &[Alert], kind: String) -> KindScore {
    let faults: Vec<&Fault> = labels
        .faults
        .iter()
        .filter(|f| f.kind.name() == kind)
        .collect();
    let own: Vec<&Alert> = alerts.iter().filter(|a| a.kind == kind).collect();
    let matching = own
        .iter()
        .filter(|a| faults.iter().any(|f| matches(f, a)))
        .count();
    let first = |f: &Fault| own.iter().filter(|a| matches(f, a)).map(|a| a.ts_ms).min();
    tally(kind, &faults, first, own.len(), matching)
}

/// A kind's figures from when each of its faults was first found (if it was) and the count of
/// alerts (or flagged laps) and of those matching a fault.
fn tally(
    kind: String,
    faults: &[&Fault],
    first: impl Fn(&Fault) -> Option<i64>,
    alerts: usize,
    matching: usize,
) -> KindScore {
    let mut delays = Vec::new();
    let mut timely = 0;
    for f in faults {
        if let Some(t) = first(f) {
            let delay = (t - f.start_ms).max(0);
            delays.push(delay as f64 / 1000.0);
            timely += usize::from(in_time(f, delay));
        }
    }
    KindScore {
        faults: faults.len(),
        found: delays.len(),
        recall: ratio(delays.len(), faults.len()).unwrap_or(0.0),
        alerts,
        matching_alerts: matching,
        precision: ratio(matching, alerts),
        median_delay_s: median(delays),
        in_time: timely,
        kind,
    }
}

fn ratio(n: usize, d: usize) -> Option<f64> {
    (d > 0).then(|| n as f64 / d as f64)
}

/// The old score at its best threshold (best F1 over all faults).
fn baseline(labels: &Labels, laps: &[LapScore], car_hours: f64) -> Baseline {
    let scored: Vec<&LapScore> = laps.iter().filter(|l| l.score.is_some()).collect();
    let hit = |l: &LapScore, f: &Fault| l.driver == f.driver && f.laps.contains(&l.lap);
    let mut thresholds: Vec<f64> = scored.iter().filter_map(|l| l.score).collect();
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    let total = labels.faults.len();
    let mut best: Option<(f64, f64)> = None;
    for &t in &thresholds {
        let flagged: Vec<&&LapScore> = scored.iter().filter(|l| l.score >= Some(t)).collect();
        let good = flagged
            .iter()
            .filter(|l| labels.faults.iter().any(|f| hit(l, f)))
            .count();
        let found = labels
            .faults
            .iter()
            .filter(|f| flagged.iter().any(|l| hit(l, f)))
            .count();
        let (p, r) = (
            good as f64 / flagged.len() as f64,
            ratio(found, total).unwrap_or(0.0),
        );
        let f1 = if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        };
        if best.is_none_or(|(_, b)| f1 > b) {
            best = Some((t, f1));
        }
    }
    let threshold = best.map_or(f64::INFINITY, |(t, _)| t);
    let flagged: Vec<&LapScore> = scored
        .iter()
        .copied()
        .filter(|l| l.score >= Some(threshold))
        .collect();
    let matching = |l: &LapScore| labels.faults.iter().any(|f| hit(l, f));
    let good = flagged.iter().filter(|l| matching(l)).count();
    let mut by_kind: BTreeMap<Kind, Vec<&Fault>> = BTreeMap::new();
    for f in &labels.faults {
        by_kind.entry(f.kind).or_default().push(f);
    }
    let kinds = by_kind
        .into_iter()
        .map(|(kind, faults)| {
            let first = |f: &Fault| flagged.iter().filter(|l| hit(l, f)).map(|l| l.end_ms).min();
            tally(kind.name().to_string(), &faults, first, flagged.len(), good)
        })
        .collect();
    let false_flags = flagged.iter().filter(|l| !matching(l)).count();
    Baseline {
        threshold,
        flagged_laps: flagged.len(),
        precision: ratio(good, flagged.len()),
        false_per_car_hour: per_hour(false_flags, car_hours),
        kinds,
    }
}

#[cfg(test)]
mod tests;
