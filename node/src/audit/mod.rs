//! The audit trail: every access to customer data and every administrative action, recorded on the
//! node that owns the data, hash-chained, checkpointed with the node's signature, and fail-closed.
//!
//! - `chain`: the record and checkpoint format and its verification (pure; the spec for auditors).
//! - `log`: the on-disk log: group-committed appends, recovery, checkpoints, live tail, scans.
//! - `recorder`: the one fail-closed recorder every service records its requests through.
//! - `handoff`: the log as the rebalance journal (partition exports, imports, shreds, refusals).
//!
//! The gRPC service that reads the trail is `api::audit`; see ARCHITECTURE.md, "The audit chain".

pub mod chain;
pub mod handoff;
pub mod log;
pub mod recorder;

#[cfg(test)]
mod tests;
