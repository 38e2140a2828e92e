//! Traces: what the dashboard draws its speed, RPM, throttle, brake and gear lines and its track
//! map from. The raw telemetry of every car is thinned to at most one sample per
//! [`TRACE_GAP_MS`] of event time per car (20 Hz; the F1 games send 60 Hz, the timing feed ~4)
//! and published on a result stream of its own, beside the queries' streams, so a page that
//! (re)connects replays the last minute from its buffer like any subscriber. It is not a query:
//! nothing is archived or checkpointed, and a restart starts it afresh.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{SchemaRef, TimestampMillisecondType};
use datafusion::arrow::error::ArrowError;
use pitwall_proto::schema::{col, telemetry_schema};

/// Least event time between two samples of one car on a trace.
pub(crate) const TRACE_GAP_MS: i64 = 50;

/// The columns a trace keeps of the telemetry schema.
const TRACE_COLUMNS: &[&str] = &[
    col::SESSION,
    col::DRIVER,
    col::LAP,
    col::TS,
    col::SPEED,
    col::RPM,
    col::GEAR,
    col::THROTTLE,
    col::BRAKE,
    col::DRS,
    col::X,
    col::Y,
    col::DISTANCE,
];

/// Sessions whose cars are remembered before the memory is cleared (a looping replay starts a
/// new session every lap of the loop).
const MAX_SESSIONS: usize = 64;

/// Thins telemetry to traces: per session and car, the time of the last sample kept.
#[derive(Debug)]
pub(crate) struct Thinner {
    last: HashMap<String, HashMap<String, i64>>,
    projection: Vec<usize>,
    schema: SchemaRef,
}

impl Thinner {
    pub(crate) fn new() -> Self {
        let full = telemetry_schema();
        let projection: Vec<usize> = TRACE_COLUMNS
            .iter()
            .map(|c| {
                full.index_of(c)
                    .expect("trace columns are telemetry columns")
            })
            .collect();
        let schema = Arc::new(full.project(&projection).expect("valid projection"));
        Self {
            last: HashMap::new(),
            projection,
            schema,
        }
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// The samples of a telemetry batch that go on the traces (None when there are none).
    pub(crate) fn thin(&mut self, batch: &RecordBatch) -> Result<Option<RecordBatch>, ArrowError> {
        let (Some(s), Some(d), Some(t)) = (
            batch.column_by_name(col::SESSION),
            batch.column_by_name(col::DRIVER),
            batch.column_by_name(col::TS),
        ) else {
            return Ok(None);
        };
        let (sessions, drivers) = (s.as_string::<i32>(), d.as_string::<i32>());
        let ts = t.as_primitive::<TimestampMillisecondType>();
        if self.last.len() > MAX_SESSIONS {
            self.last.clear();
        }
        let mut kept = 0;
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                let (session, driver, t) = (sessions.value(i), drivers.value(i), ts.value(i));
                let cars = match self.last.get_mut(session) {
                    Some(c) => c,
                    None => self.last.entry(session.to_string()).or_default(),
                };
                let take = match cars.get_mut(driver) {
                    // A replay started again under the same name goes back in time: start over.
                    Some(last) if t >= *last + TRACE_GAP_MS || t < *last - 60_000 => {
                        *last = t;
                        true
                    }
                    Some(_) => false,
                    None => {
                        cars.insert(driver.to_string(), t);
                        true
                    }
                };
                kept += usize::from(take);
                Some(take)
            })
            .collect();
        if kept == 0 {
            return Ok(None);
        }
        let thinned = filter_record_batch(&batch.project(&self.projection)?, &keep)?;
        Ok(Some(thinned.with_schema(self.schema.clone())?))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float32Array, StringArray, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::DataType;

    use super::*;

    /// A telemetry batch of (driver, ts) samples, other columns null or constant.
    fn telemetry(samples: &[(&str, i64)]) -> RecordBatch {
        let schema = telemetry_schema();
        let n = samples.len();
        let columns = schema
            .fields()
            .iter()
            .map(|f| -> Arc<dyn datafusion::arrow::array::Array> {
                match f.name().as_str() {
                    col::SESSION => Arc::new(StringArray::from(vec!["s"; n])),
                    col::DRIVER => Arc::new(StringArray::from_iter_values(
                        samples.iter().map(|(d, _)| *d),
                    )),
                    col::TS => Arc::new(
                        TimestampMillisecondArray::from_iter_values(samples.iter().map(|s| s.1))
                            .with_timezone("UTC"),
                    ),
                    _ if f.data_type() == &DataType::Float32 => {
                        Arc::new(Float32Array::from(vec![1.0; n]))
                    }
                    _ => datafusion::arrow::array::new_null_array(f.data_type(), n),
                }
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn kept(t: &mut Thinner, samples: &[(&str, i64)]) -> Vec<(String, i64)> {
        let Some(b) = t.thin(&telemetry(samples)).unwrap() else {
            return Vec::new();
        };
        let d = b.column_by_name(col::DRIVER).unwrap().as_string::<i32>();
        let ts = b
            .column_by_name(col::TS)
            .unwrap()
            .as_primitive::<TimestampMillisecondType>();
        (0..b.num_rows())
            .map(|i| (d.value(i).to_string(), ts.value(i)))
            .collect()
    }

    #[test]
    fn each_car_keeps_at_most_one_sample_per_gap() {
        let mut t = Thinner::new();
        // 60 Hz for VER (every 16-17 ms), 4 Hz for HAM, across two batches.
        let ver: Vec<(&str, i64)> = (0..60).map(|i| ("VER", i * 1000 / 60)).collect();
        let mut first = ver[..30].to_vec();
        first.extend([("HAM", 0), ("HAM", 250)]);
        let mut out = kept(&mut t, &first);
        out.extend(kept(&mut t, &ver[30..]));
        let ver_kept: Vec<i64> = out
            .iter()
            .filter(|(d, _)| d == "VER")
            .map(|x| x.1)
            .collect();
        assert!(
            ver_kept.windows(2).all(|w| w[1] - w[0] >= TRACE_GAP_MS),
            "{ver_kept:?}"
        );
        assert_eq!(
            ver_kept.len(),
            20,
            "one second at 60 Hz thins to 20 Hz: {ver_kept:?}"
        );
        assert_eq!(out.iter().filter(|(d, _)| d == "HAM").count(), 2);
        assert_eq!(t.schema().fields().len(), TRACE_COLUMNS.len());
        // Nothing new enough: no batch at all.
        assert!(kept(&mut t, &[("VER", 990)]).is_empty());
        // Back in time by less than a minute: out of order, thinned away.
        assert!(kept(&mut t, &[("VER", 0)]).is_empty());
        // The same session replayed from its start again, a minute or more back.
        let again = 950 - 61_000;
        assert_eq!(
            kept(&mut t, &[("VER", again)]),
            vec![("VER".to_string(), again)]
        );
    }
}
