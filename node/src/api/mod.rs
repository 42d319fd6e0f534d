//! The API layer: the gRPC services every node serves on its gateway port.
//!
//! - `listener`: the TLS accept loop that attaches the caller's verified identity.
//! - `gateway`: `dsm.v1.OrderGateway`: entry, routing, forwarding, and the methods on the owner.
//! - `authz`: the one authorization check, and the proof a request carries to another node.
//! - `ledger`: the mesh-wide reveal allowance of each principal.
//! - `admin`: `dsm.v1.Admin`, for `admin` certificates.
//! - `audit`: `dsm.v1.Audit`, query and watch the trail, for `auditor` certificates.
//! - `client`: the mTLS client channel used by `mesh-ctl`, tests and benchmarks.

pub mod admin;
pub mod audit;
pub mod authz;
pub mod client;
pub mod gateway;
pub mod ledger;
pub mod listener;
