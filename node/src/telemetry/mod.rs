//! Instrumentation every layer records into: Prometheus metric families and the exported trace
//! spans (an allow-list, no PII). It sits low in the tree so that recording never points upward;
//! the ops port that serves the metrics is in `ops`.
//!
//! - `metrics`: the metric families and their registry.
//! - `trace`: OpenTelemetry spans and the OTLP exporter.

pub mod metrics;
pub mod trace;
