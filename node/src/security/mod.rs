//! The security layer: who a caller is and what proves it.
//!
//! - `identity`: SPIFFE-style mesh identities parsed from certificates.
//! - `pki`: mesh CA and leaf certificate issuance (shared with `mesh-ctl`).
//! - `tls`: the one place TLS configs are built (TLS 1.3, aws-lc-rs, post-quantum hybrid).
//! - `trust`: live certificates, trust bundle and CRLs: reloaded, re-checked per request.
//! - `proof`: end-to-end client proofs that let an owner authorise a forwarded request.
//! - `control_key`: the Ed25519 key layouts are signed with (`mesh-ctl`) and verified by (nodes).
//! - `crypto`: the node key file, per-customer data keys, keyed hashes.

pub mod control_key;
pub mod crypto;
pub mod identity;
pub mod pki;
pub mod proof;
pub mod tls;
pub mod trust;
