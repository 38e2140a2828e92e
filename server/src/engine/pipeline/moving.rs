//! Cars moving between servers: a pipeline gives up the state of some cars (their partition
//! went to another server) and takes in the state of others (read from the checkpoint of the
//! server that had them). Every stage's state rows carry the car's `driver`, so a car's share
//! is cut out row by row; a stage whose rows do not (a query across cars) cannot be cut, and
//! such a query keeps its state where it is (see README, "Running several servers").

use std::collections::HashSet;

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch, not};
use datafusion::arrow::datatypes::{DataType, UInt64Type};

use super::{Pipeline, StageState, WindowFnState};
use crate::engine::windows::{Splitter, split_batches};
use crate::error::Result;

/// Some cars' share of every stage of one query.
pub(crate) struct CarsState(Vec<StageState>);

/// The column that names a state row's car.
fn driver_column(b: &RecordBatch) -> Option<usize> {
    b.schema()
        .fields()
        .iter()
        .position(|f| f.name() == "driver" || f.name().ends_with(".driver"))
}

/// Rows of `b` whose car is one of `drivers`, and the rest.
fn split(b: &RecordBatch, drivers: &HashSet<String>) -> Result<(RecordBatch, RecordBatch)> {
    let i = driver_column(b).expect("checked by can_split");
    let names = cast(b.column(i), &DataType::Utf8)?;
    let names = names.as_string::<i32>();
    let mask: BooleanArray = names
        .iter()
        .map(|n| Some(n.is_some_and(|n| drivers.contains(n))))
        .collect();
    Ok((
        filter_record_batch(b, &mask)?,
        filter_record_batch(b, &not(&mask)?)?,
    ))
}

impl Pipeline {
    /// Whether every row of this pipeline's state says which car it is for.
    fn can_split(&self) -> bool {
        let mut batches = crate::engine::snapshot::Batches::default();
        self.snapshot(&mut batches);
        batches.0.iter().all(|b| driver_column(b).is_some())
    }

    /// Takes the state of `drivers`' cars out of every stage. None, and nothing taken, when
    /// some state does not say which car it is for.
    pub(crate) fn take_cars(&mut self, drivers: &HashSet<String>) -> Result<Option<CarsState>> {
        if !self.can_split() {
            return Ok(None);
        }
        let mut cut = |b: &RecordBatch| split(b, drivers);
        let mut taken = Vec::with_capacity(self.states.len());
        for state in &mut self.states {
            taken.push(match state {
                StageState::Aggregate(a) => {
                    let mut part = super::AggregateState::default();
                    if let Some(t) = a.time.as_mut() {
                        part.time = Some(t.take_rows(&mut cut)?);
                    }
                    if let Some(l) = a.laps.as_mut() {
                        part.laps = Some(l.take_cars(&mut cut)?);
                    }
                    StageState::Aggregate(part)
                }
                StageState::WindowFn(w) => StageState::WindowFn(take_window_fn(w, &mut cut)?),
            });
        }
        Ok(Some(CarsState(taken)))
    }

    /// Adds cars' state taken from a pipeline of the same query (another server's).
    pub(crate) fn put_cars(&mut self, cars: CarsState) -> Result<()> {
        for (state, part) in self.states.iter_mut().zip(cars.0) {
            match (state, part) {
                (StageState::Aggregate(a), StageState::Aggregate(p)) => {
                    if let (Some(t), Some(pt)) = (a.time.as_mut(), p.time) {
                        t.absorb(pt);
                    }
                    if let (Some(l), Some(pl)) = (a.laps.as_mut(), p.laps) {
                        l.absorb(pl);
                    }
                }
                (StageState::WindowFn(w), StageState::WindowFn(p)) => put_window_fn(w, p)?,
                _ => {}
            }
        }
        Ok(())
    }
}

fn take_window_fn(w: &mut WindowFnState, cut: &mut Splitter<'_>) -> Result<WindowFnState> {
    let mut taken = WindowFnState {
        held: split_batches(&mut w.held, cut)?,
        ..WindowFnState::default()
    };
    if let Some(r) = w.retained.take() {
        let (t, k) = cut(&r)?;
        let seqs = t.column(t.num_columns() - 1).as_primitive::<UInt64Type>();
        for seq in seqs.values().iter() {
            if w.pending.remove(seq) {
                taken.pending.insert(*seq);
            }
        }
        if t.num_rows() > 0 {
            taken.retained = Some(t);
        }
        if k.num_rows() > 0 {
            w.retained = Some(k);
        }
    }
    Ok(taken)
}

/// Context rows taken in are numbered after this pipeline's own (their order within a car is
/// kept); those still waiting for following rows wait here too.
fn put_window_fn(w: &mut WindowFnState, p: WindowFnState) -> Result<()> {
    w.held.extend(p.held);
    let Some(r) = p.retained else {
        return Ok(());
    };
    let last = r.num_columns() - 1;
    let old = r.column(last).as_primitive::<UInt64Type>().clone();
    let mut order: Vec<usize> = (0..r.num_rows()).collect();
    order.sort_by_key(|&i| old.value(i));
    let mut renumbered = vec![0u64; r.num_rows()];
    for i in order {
        renumbered[i] = w.next_seq;
        if p.pending.contains(&old.value(i)) {
            w.pending.insert(w.next_seq);
        }
        w.next_seq += 1;
    }
    let mut cols = r.columns().to_vec();
    cols[last] = std::sync::Arc::new(UInt64Array::from(renumbered));
    let r = RecordBatch::try_new(r.schema(), cols)?;
    w.retained = Some(match w.retained.take() {
        Some(own) => concat_batches(&own.schema(), &[own, r])?,
        None => r,
    });
    Ok(())
}
