//! Waiting without guessing: [`assert_eventually!`](crate::assert_eventually) polls a condition to a
//! deadline, and [`within`] gives a whole test body one, so a hang fails instead of stalling CI.
//! What a test needs built (the binaries, or the container image) is prepared before its clock
//! starts: a cold build must not eat the test's time budget.

use std::time::Duration;

/// Polls `cond` until it holds or `timeout` passes; never a bare sleep that guesses.
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + $timeout;
        loop {
            if $cond { break; }
            if std::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }};
}

/// Runs an async test body with a deadline of `secs`, after building (or finding) the
/// `mesh-node` and `mesh-ctl` binaries.
pub async fn within<F: Future<Output = T>, T>(secs: u64, body: F) -> T {
    within_after(
        || {
            crate::bin_dir();
        },
        secs,
        body,
    )
    .await
}

/// As [`within`], with `prepare` (run on a blocking thread, outside the deadline) in place of the
/// binaries: the container tests build their image instead (`containers::image`).
pub async fn within_after<P, F, T>(prepare: P, secs: u64, body: F) -> T
where
    P: FnOnce() + Send + 'static,
    F: Future<Output = T>,
{
    tokio::task::spawn_blocking(prepare)
        .await
        .expect("preparing what the test runs");
    tokio::time::timeout(Duration::from_secs(secs), body)
        .await
        .unwrap_or_else(|_| panic!("test did not finish within {secs}s"))
}
