//! Fault injection for tests, the one system for it: `DSM_FAULT_POINT=<name>[,<name>...]` arms
//! named points in a node. Only built with the `fault-injection` feature, which the test harness
//! enables; without it every point compiles to nothing, so a shipped binary has neither the points
//! nor the variable's name (checked by `strings` in CI, see `.ci/run`).
//!
//! Two kinds of point:
//! - crash points ([`point`]): the process aborts there (no drain, no flush: the same as `kill -9`).
//!   `handoff-exported` (old owner, partition exported, not yet sent), `handoff-imported` (new
//!   owner, partition and its "received" mark committed in one batch, not yet synced), `handoff-received` (new
//!   owner, durable and marked, not yet serving), `handoff-shredded` (old owner, copy deleted, not
//!   yet forgotten).
//!   A handoff point may name one partition, `<name>@<partition>`, so a test crashes the handoff
//!   of a partition it knows holds orders ([`point_at`]); bare, it fires on the first handoff.
//! - failure points ([`fails`]): the operation there reports an error instead of running.
//!   `audit-append` (every audit append fails, so the node must refuse the access it records).
//!
//! The set is small and fixed, so a few lines serve better than a failpoint registry crate.

#[cfg(feature = "fault-injection")]
fn armed(name: &str) -> bool {
    std::env::var("DSM_FAULT_POINT").is_ok_and(|v| v.split(',').any(|p| p == name))
}

/// A crash point in the handoff of `partition`: aborts when `name` or `name@<partition>` is armed.
#[cfg(feature = "fault-injection")]
pub fn point_at(name: &str, partition: u16) {
    let qualified = format!("{name}@{partition}");
    if armed(name) || armed(&qualified) {
        eprintln!("fault injection: aborting at {qualified}");
        std::process::abort();
    }
}

/// A crash point: aborts the process when `name` is armed.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    if armed(name) {
        eprintln!("fault injection: aborting at {name}");
        std::process::abort();
    }
}

/// A failure point: whether the operation named `name` must fail.
#[cfg(feature = "fault-injection")]
pub fn fails(name: &str) -> bool {
    armed(name)
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point_at(_name: &str, _partition: u16) {}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fails(_name: &str) -> bool {
    false
}
