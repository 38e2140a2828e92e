//! The canonical telemetry schema: one row per car sample, lowercase SQL-friendly names.
//!
//! Types are chosen for what the sources deliver and what SQL over them needs:
//! measured channels (`speed`, `rpm`, `throttle`, `x`/`y`/`z`) are `Float32` because the sources
//! are either integers (F1 live timing) or single-precision floats (F1 game UDP) and FastF1
//! interpolates when it resamples, so 24 bits of mantissa keep every value exact or better than
//! the sensor; `gear` and `drs` are small codes (`Int8`); `brake` is on/off; `session_time` and
//! `distance` are `Float64` because they accumulate over a two-hour session (0.1 m over 300 km
//! needs more than `f32`); `ts` is milliseconds since the epoch in UTC, the resolution of the
//! timing feed's `Date`.

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Column names of the canonical schema, in order.
pub mod col {
    pub const SESSION: &str = "session";
    pub const DRIVER: &str = "driver";
    pub const LAP: &str = "lap";
    pub const TS: &str = "ts";
    pub const SESSION_TIME: &str = "session_time";
    pub const SPEED: &str = "speed";
    pub const RPM: &str = "rpm";
    pub const GEAR: &str = "gear";
    pub const THROTTLE: &str = "throttle";
    pub const BRAKE: &str = "brake";
    pub const DRS: &str = "drs";
    pub const X: &str = "x";
    pub const Y: &str = "y";
    pub const Z: &str = "z";
    pub const DISTANCE: &str = "distance";
}

/// The Arrow type of the event-time column `ts`.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The canonical telemetry schema (shared, built once).
pub fn telemetry_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            Arc::new(Schema::new(vec![
                Field::new(col::SESSION, DataType::Utf8, false),
                Field::new(col::DRIVER, DataType::Utf8, false),
                Field::new(col::LAP, DataType::Int32, true),
                Field::new(col::TS, ts_type(), false),
                Field::new(col::SESSION_TIME, DataType::Float64, true),
                Field::new(col::SPEED, DataType::Float32, true),
                Field::new(col::RPM, DataType::Float32, true),
                Field::new(col::GEAR, DataType::Int8, true),
                Field::new(col::THROTTLE, DataType::Float32, true),
                Field::new(col::BRAKE, DataType::Boolean, true),
                Field::new(col::DRS, DataType::Int8, true),
                Field::new(col::X, DataType::Float32, true),
                Field::new(col::Y, DataType::Float32, true),
                Field::new(col::Z, DataType::Float32, true),
                Field::new(col::DISTANCE, DataType::Float64, true),
            ]))
        })
        .clone()
}

/// The JSON wire names (FastF1 column names) and the canonical column each one fills.
///
/// `LapIdx` is the old producer's name for `LapNumber`; `Time` (FastF1's time since the start
/// of the slice) is accepted and ignored because `SessionTime` and `Date` carry the event time.
pub const JSON_WIRE_NAMES: &[(&str, &str)] = &[
    ("Session", col::SESSION),
    ("Driver", col::DRIVER),
    ("LapNumber", col::LAP),
    ("LapIdx", col::LAP),
    ("Date", col::TS),
    ("SessionTime", col::SESSION_TIME),
    ("Speed", col::SPEED),
    ("RPM", col::RPM),
    ("nGear", col::GEAR),
    ("Throttle", col::THROTTLE),
    ("Brake", col::BRAKE),
    ("DRS", col::DRS),
    ("X", col::X),
    ("Y", col::Y),
    ("Z", col::Z),
    ("Distance", col::DISTANCE),
];
