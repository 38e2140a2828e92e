//! SQL functions Pitwall adds to DataFusion for windows over streams.
//!
//! `hop(ts, slide, size)` lists the starts of the hopping windows `[start, start + size)`,
//! aligned on multiples of `slide` since the epoch, that contain `ts`. Unnested, it gives one
//! row per window, which the engine recognises as a hopping window:
//!
//! ```sql
//! SELECT w AS window_start, driver, avg(speed)
//! FROM (SELECT unnest(hop(ts, INTERVAL '1 second', INTERVAL '5 seconds')) AS w, driver, speed
//!       FROM telemetry)
//! GROUP BY w, driver
//! ```

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, ListBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit, TimestampMillisecondType};
use datafusion::common::{Result, ScalarValue, exec_err, plan_err};
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

pub(crate) const HOP: &str = "hop";

pub(crate) fn register(ctx: &SessionContext) {
    ctx.register_udf(ScalarUDF::from(Hop::new()));
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Hop {
    signature: Signature,
}

impl Hop {
    pub(crate) fn new() -> Self {
        Self {
            signature: Signature::any(3, Volatility::Immutable),
        }
    }
}

impl Default for Hop {
    fn default() -> Self {
        Self::new()
    }
}

fn tz_of(t: &DataType) -> Option<Arc<str>> {
    match t {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    }
}

fn interval_ms(v: &ColumnarValue, what: &str) -> Result<i64> {
    let ms = match v {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(i))) if i.months == 0 => {
            i.days as i64 * 86_400_000 + i.nanoseconds / 1_000_000
        }
        ColumnarValue::Scalar(ScalarValue::IntervalDayTime(Some(i))) => {
            i.days as i64 * 86_400_000 + i.milliseconds as i64
        }
        _ => return exec_err!("hop: {what} must be a constant interval of days or less"),
    };
    if ms <= 0 {
        return exec_err!("hop: {what} must be positive");
    }
    Ok(ms)
}

impl ScalarUDFImpl for Hop {
    fn name(&self) -> &str {
        HOP
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        match args {
            [
                DataType::Timestamp(_, _),
                DataType::Interval(_),
                DataType::Interval(_),
            ] => {
                let item = DataType::Timestamp(TimeUnit::Millisecond, tz_of(&args[0]));
                Ok(DataType::List(Arc::new(Field::new("item", item, true))))
            }
            _ => {
                plan_err!("hop(ts, slide, size) takes a timestamp and two intervals, got {args:?}")
            }
        }
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let slide = interval_ms(&args.args[1], "slide")?;
        let size = interval_ms(&args.args[2], "size")?;
        if size % slide != 0 {
            return exec_err!("hop: size must be a multiple of slide");
        }
        let ts = args.args[0].to_array(args.number_rows)?;
        let tz = tz_of(ts.data_type());
        let ts = cast(&ts, &DataType::Timestamp(TimeUnit::Millisecond, tz.clone()))?;
        let ts = ts.as_primitive::<TimestampMillisecondType>();
        let mut out = ListBuilder::new(TimestampMillisecondBuilder::new().with_timezone_opt(tz));
        for t in ts.iter() {
            match t {
                Some(t) => {
                    let last = t.div_euclid(slide) * slide;
                    let mut start = last - size + slide;
                    while start <= last {
                        out.values().append_value(start);
                        start += slide;
                    }
                    out.append(true);
                }
                None => out.append(false),
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        debug_assert_eq!(array.len(), args.number_rows);
        Ok(ColumnarValue::Array(array))
    }
}
