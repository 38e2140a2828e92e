//! End-to-end tests against a real Kafka-protocol broker (see `support`): replay into Kafka,
//! the server consuming it, and clients over Arrow Flight.

mod support;

mod archive;
mod dashboard;
mod engine;
mod faults;
mod flight;
mod group;
mod replay;
mod udp;
mod web;
