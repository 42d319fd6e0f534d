#![cfg_attr(test, allow(clippy::unwrap_used))]
//! A Dark Store Mesh node: the library behind the `mesh-node` binary.
//!
//! The node is built in layers; each folder is one layer and depends only on the layers listed
//! before it (ARCHITECTURE.md, "Layers", draws the arrows). Component map, bottom to top:
//!
//! | module | owns |
//! |---|---|
//! | `fault` | fault injection for tests (compiled in only with `fault-injection`) |
//! | `durable_fs` | directory entries that survive a power cut (syncs of the parent directory) |
//! | `domain` | ids and partitions (`partition_of`), the placement hash, order lifecycle, validation, clock |
//! | `access` | the role table (`policy`), projections and masks, time windows and the reveal limiter |
//! | `error` | the node error type and its one mapping to gRPC status |
//! | `telemetry` | metric families and the exported trace spans (allow-listed, no PII) |
//! | `security` | identities, PKI, TLS configs, live trust and CRLs, end-to-end proofs, the control key, node and data keys |
//! | `storage` | sealed records under keyed-hash keys, group commit, partition export/import |
//! | `cluster` | layouts (the ring maths), the routing answer, QUIC transport and its test link filter, peer client and dispatch, rebalance |
//! | `audit` | the hash-chained audit log, its checkpoints and the fail-closed recorder |
//! | `api` | the gRPC services: gateway, admin, audit; TLS listener; the client channel |
//! | `ops` | configuration, start-up and shutdown, the plaintext ops port |

pub mod access;
pub mod api;
pub mod audit;
pub mod cluster;
pub mod domain;
pub mod durable_fs;
pub mod error;
pub mod fault;
#[cfg(test)]
mod fuzz;
pub mod ops;
pub mod security;
pub mod storage;
pub mod telemetry;
