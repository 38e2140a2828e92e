//! The Pitwall wire contract, shared by the server and every client.
//!
//! Telemetry enters Pitwall as Kafka messages (JSON with FastF1 column names, or the Protobuf
//! messages of `telemetry.proto`), is decoded into one canonical Arrow schema ([`schema`]), and
//! leaves as Arrow Flight streams whose control messages are those of `control.proto`.

// Every dependency the library declares is one it uses (the binaries and tests have their own
// imports; this lint is per compilation unit, so it is checked on the library only, outside
// its unit tests, which also see the dev-dependencies).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

// Declared for feature alignment only (see Cargo.toml), not used.
use stable_deref_trait as _;
use zerofrom as _;

pub mod bundled;
pub mod f1udp;
pub mod faults;
pub mod schema;
pub mod timedelta;

/// Generated from `telemetry.proto` and `control.proto` (package `pitwall.v1`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/pitwall.v1.rs"));
}

pub use v1::*;

/// Type URL under which a [`v1::SubscribeTicket`] is packed in a `google.protobuf.Any` ticket.
pub const SUBSCRIBE_TICKET_TYPE_URL: &str = "type.googleapis.com/pitwall.v1.SubscribeTicket";

/// Kafka header naming the payload encoding: `json`, `protobuf` or `protobuf-batch`.
pub const FORMAT_HEADER: &str = "pitwall-format";

/// Names of the `DoAction` types the server understands.
pub mod actions {
    pub const LIST_QUERIES: &str = "list_queries";
    pub const SHOW: &str = "show";
    pub const SUBMIT: &str = "submit";
    pub const REPLACE: &str = "replace";
    pub const DROP: &str = "drop";
    pub const PAUSE: &str = "pause";
    pub const RESUME: &str = "resume";
    pub const SET: &str = "set";
    pub const STATS: &str = "stats";
    /// Answer: an Arrow IPC stream with one row per archived session.
    pub const SESSIONS: &str = "sessions";
}
