//! The ops layer, the top of the tree: configuration, start-up and shutdown, and the plaintext port
//! for probes and metrics.
//!
//! - `config`: file + environment configuration, validated before anything binds.
//! - `server`: node lifecycle: start, serve, drain, flush.
//! - `port`: the plaintext health/readiness/metrics port.

pub mod config;
pub mod port;
pub mod server;
