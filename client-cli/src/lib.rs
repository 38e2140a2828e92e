//! The `pitwall` client: replays recorded telemetry into Kafka ([`replay`], from a
//! [`session`] file or FastF1 export, multiplied by [`fleet`] and encoded by [`wire`]), and
//! talks to a running server over Arrow Flight ([`client`]) to watch, control and query it
//! ([`commands`], printed by [`output`]). It depends on the wire contract (`pitwall-proto`) and
//! Arrow Flight only, never on server internals.

pub mod bench;
pub mod client;
pub mod commands;
pub mod convert;
pub mod fleet;
pub mod output;
pub mod replay;
pub mod session;
pub mod wire;
