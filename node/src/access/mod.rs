//! The access layer: who may see and do what, as data and pure functions (no I/O).
//!
//! - `policy`: the role table: who may call what, see which fields, reveal, set.
//! - `projection`: an order as one role may see it (`project(order, role, at)`).
//! - `mask`: masking rules for phones, emails and names.
//! - `windows`: time and rate rules: role windows, contact handle lifetime, the reveal limiter.

pub mod mask;
pub mod policy;
pub mod projection;
pub mod windows;
