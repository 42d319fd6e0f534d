//! Time, in one place. [`Clock`] is time as the access rules see it: the system clock in
//! production, a hand-moved clock in tests (contact handles and courier views end at "closed +
//! grace", which tests must cross on demand). [`now_ms`] is the wall clock for what crosses the
//! wire or goes to disk (proof timestamps, peer deadlines, audit records), which other processes
//! read and which therefore never moves by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch of `at` (0 before it, saturating far after it).
pub(crate) fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The wall clock in milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    unix_ms(SystemTime::now())
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Clock {
    /// `None`: the system clock. `Some`: milliseconds since the epoch, moved by `advance`.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that stands still at `at` until moved.
    #[cfg(test)]
    pub(crate) fn manual(at: SystemTime) -> Clock {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(unix_ms(at)))),
        }
    }

    pub fn now(&self) -> SystemTime {
        match &self.manual {
            None => SystemTime::now(),
            Some(ms) => {
                UNIX_EPOCH
                    + Duration::from_millis(u64::try_from(ms.load(Ordering::SeqCst)).unwrap_or(0))
            }
        }
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    #[cfg(test)]
    pub(crate) fn advance(&self, by: Duration) {
        if let Some(ms) = &self.manual {
            ms.fetch_add(
                i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
                Ordering::SeqCst,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let start = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let c = Clock::manual(start);
        assert_eq!(c.now(), start);
        c.advance(Duration::from_secs(90));
        assert_eq!(c.now(), start + Duration::from_secs(90));
        assert!(Clock::system().now() > start - Duration::from_secs(1_000_000_000));
    }
}
