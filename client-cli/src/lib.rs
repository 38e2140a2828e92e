//! The `pitwall` client: replays recorded telemetry into Kafka ([`replay`], from a
//! [`session`] file or FastF1 export, multiplied by [`fleet`] and encoded by [`wire`]), and
//! talks to a running server over Arrow Flight ([`client`]) to watch, control and query it
//! ([`commands`], printed by [`output`]); [`udp`] bridges, records and plays EA F1 game
//! telemetry. It depends on the wire contract (`pitwall-proto`) and
//! Arrow Flight only, never on server internals.

// Every dependency the library declares is one it uses (the binaries and tests have their own
// imports; this lint is per compilation unit, so it is checked on the library only, outside
// its unit tests, which also see the dev-dependencies).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

// The binary's own: `main.rs` restores SIGPIPE's default with it.
#[cfg(unix)]
use libc as _;

pub mod bench;
pub mod client;
pub mod commands;
pub mod convert;
pub mod faults;
pub mod fleet;
pub mod output;
pub mod process;
pub mod replay;
pub mod session;
pub mod udp;
pub mod wire;
