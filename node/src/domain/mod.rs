//! The domain layer: the rules of orders and partitions, with no I/O. Everything above builds on
//! these types; nothing here depends on another layer (see ARCHITECTURE.md, "Layers").
//!
//! - `ids`: partitions (`partition_of(customer_id)`), routable order ids, contact handles.
//! - `hash`: the one stable 64-bit hash keys are placed by.
//! - `lifecycle`: legal order status transitions.
//! - `validate`: request validation that names every bad field.
//! - `clock`: system time, or a hand-moved clock in tests.

pub mod clock;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod hash;
pub mod ids;
pub mod lifecycle;
pub mod validate;
