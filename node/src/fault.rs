//! Crash points for tests: `DSM_FAULT_POINT=<name>` makes the process abort (no drain, no flush:
//! the same as `kill -9`) when it reaches the named point. Only built with the `fault-injection`
//! feature, which the test harness enables; shipped binaries compile every point to nothing.
//!
//! Points: `handoff-exported` (old owner, partition exported, not yet sent), `handoff-imported`
//! (new owner, partition and its "received" mark written, not yet flushed), `handoff-received`
//! (new owner, durable and marked, not yet serving), `handoff-shredded` (old owner, copy deleted,
//! not yet forgotten).

#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    if std::env::var("DSM_FAULT_POINT").is_ok_and(|v| v == name) {
        eprintln!("fault injection: aborting at {name}");
        std::process::abort();
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}
