#![cfg_attr(test, allow(clippy::unwrap_used))]
//! A Dark Store Mesh node: the library behind the `mesh-node` binary.
//!
//! Component map (pure logic first, I/O at the edges):
//!
//! | module        | owns                                                                  |
//! |---------------|-----------------------------------------------------------------------|
//! | `identity`    | SPIFFE-style mesh identities parsed from certificates                 |
//! | `policy`      | the role table: who may call what, see which fields, reveal, set      |
//! | `access`      | time and rate rules: role windows, contact handle lifetime, reveals   |
//! | `clock`       | system time, or a hand-moved clock in tests                           |
//! | `projection`  | an order as one role may see it (`project(order, role, at)`)          |
//! | `mask`        | masking rules for phones, emails and names                            |
//! | `validate`    | request validation that names every bad field                         |
//! | `lifecycle`   | legal order status transitions                                        |
//! | `ids`         | partitions (`partition_of(customer_id)`), routable order ids, handles |
//! | `crypto`      | node key file, per-customer data keys, keyed hashes                   |
//! | `storage`     | sled store: sealed records, key layout, group commit                  |
//! | `pki`         | mesh CA and leaf certificate issuance (shared with `mesh-ctl`)        |
//! | `tls`         | the one place TLS configs are built (TLS 1.3, aws-lc-rs, PQ hybrid)   |
//! | `trust`       | live certificates, trust bundle and CRLs: reloaded, re-checked per request |
//! | `listener`    | gateway TLS accept loop that attaches the caller's identity           |
//! | `gateway`     | the `dsm.v1.OrderGateway` gRPC service                                |
//! | `layout`      | signed, versioned partition tables and the assignment algorithm       |
//! | `mesh`        | this node's layouts and the routing question: mine, or whose?         |
//! | `rebalance`   | layout changes: partition handoff between nodes, throttled, resumable |
//! | `transport`   | the peer protocol over mutually authenticated QUIC                    |
//! | `fault`       | crash points for tests (compiled in only with `fault-injection`)      |
//! | `error`       | the node error type and its single mapping to gRPC codes              |
//! | `ops`, `metrics` | plaintext health/readiness/metrics port                            |
//! | `telemetry`   | OpenTelemetry spans (an allow-list, no PII) and the OTLP exporter     |
//! | `config`      | file + environment configuration, validated before anything binds     |
//! | `server`      | node lifecycle: start, serve, drain, flush                            |
//! | `client`      | mTLS client channel used by `mesh-ctl`, tests and benchmarks          |

pub mod access;
pub mod admin;
pub mod audit;
pub mod client;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod error;
pub mod fault;
pub mod gateway;
pub mod identity;
pub mod ids;
pub mod layout;
pub mod lifecycle;
pub mod listener;
pub mod mask;
pub mod mesh;
pub mod metrics;
pub mod ops;
pub mod pki;
pub mod policy;
pub mod projection;
pub mod proof;
pub mod rebalance;
pub mod server;
pub mod storage;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod trust;
pub mod validate;
