//! Arrow Flight against a running server.
