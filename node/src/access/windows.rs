//! When and how often: the access rules that depend on time or on counting, on top of the role
//! table's "what" (`policy`).
//!
//! - A role's buyer fields are visible only inside its [`Window`]: a courier sees the address while
//!   the parcel is with it and for a grace period after delivery, never again.
//! - A contact handle resolves until the grace period after the order closes.
//! - `RevealField` is limited per principal (a sliding window, [`RevealLimiter`]).
//! - Roles can be required to state a purpose on every read.

use crate::access::policy::{Role, Window};
use mesh_proto::v1::{Order, OrderStatus};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The node's access settings (`[access]` in the config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRules {
    /// How long after an order closes its time-bound views and contact handle still work.
    pub contact_grace: Duration,
    /// Reveals per principal per `reveal_window`.
    pub reveal_limit: u32,
    pub reveal_window: Duration,
    /// Roles that must state a purpose on every read.
    pub require_purpose: Vec<Role>,
}

impl Default for AccessRules {
    fn default() -> Self {
        AccessRules {
            contact_grace: Duration::from_secs(72 * 3600),
            reveal_limit: 20,
            reveal_window: Duration::from_secs(3600),
            require_purpose: vec![Role::Comms, Role::Support],
        }
    }
}

impl AccessRules {
    pub fn requires_purpose(&self, role: Role) -> bool {
        self.require_purpose.contains(&role)
    }
}

fn status(order: &Order) -> OrderStatus {
    OrderStatus::try_from(order.status).unwrap_or(OrderStatus::Unspecified)
}

/// When the order closed (DELIVERED, RTO or CANCELLED), if it has. An order that reached a final
/// status before `closed_at` existed counts as closed at its last update, so it does not stay
/// visible forever.
pub fn closed_at(order: &Order) -> Option<SystemTime> {
    order
        .closed_at
        .or_else(|| closes(status(order)).then_some(order.updated_at).flatten())
        .map(|t| SystemTime::try_from(t).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// Whether `now` is before the end of the grace period after the order closed (true while open).
fn before_grace_end(order: &Order, now: SystemTime, grace: Duration) -> bool {
    closed_at(order).is_none_or(|closed| now < closed + grace)
}

/// Whether a role with `window` sees this order's buyer fields at `now`.
pub(crate) fn in_window(order: &Order, window: Window, now: SystemTime, grace: Duration) -> bool {
    match window {
        Window::Always => true,
        Window::UntilClosed => before_grace_end(order, now, grace),
        Window::InTransit => match status(order) {
            OrderStatus::Shipped | OrderStatus::OutForDelivery | OrderStatus::DeliveryFailed => {
                true
            }
            OrderStatus::Delivered | OrderStatus::Rto => before_grace_end(order, now, grace),
            _ => false,
        },
    }
}

/// Until when the order's contact handle resolves: `None` while the order is open.
pub(crate) fn handle_valid_until(order: &Order, grace: Duration) -> Option<SystemTime> {
    closed_at(order).map(|closed| closed + grace)
}

/// Whether the order's contact handle still resolves at `now`.
pub(crate) fn handle_resolves(order: &Order, now: SystemTime, grace: Duration) -> bool {
    before_grace_end(order, now, grace)
}

/// Whether `status` closes an order (it starts the grace period).
pub fn closes(status: OrderStatus) -> bool {
    matches!(
        status,
        OrderStatus::Delivered | OrderStatus::Rto | OrderStatus::Cancelled
    )
}

/// A sliding-window limit on reveals per principal. Each principal keeps at most `limit`
/// timestamps; principals with nothing inside the window are dropped as the map grows.
#[derive(Debug)]
pub(crate) struct RevealLimiter {
    limit: u32,
    window: Duration,
    seen: Mutex<HashMap<String, VecDeque<SystemTime>>>,
}

/// The limit is reached; the next reveal is possible after `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exhausted {
    pub limit: u32,
    pub window: Duration,
    pub retry_after: Duration,
}

/// Above this many tracked principals, idle ones are swept on the next reveal.
const SWEEP_ABOVE: usize = 10_000;

impl RevealLimiter {
    pub fn new(limit: u32, window: Duration) -> RevealLimiter {
        RevealLimiter {
            limit,
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one reveal for `principal` at `now`; returns how many remain in the window.
    pub fn take(&self, principal: &str, now: SystemTime) -> Result<u32, Exhausted> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let window = self.window;
        let expired = |t: &SystemTime| now.duration_since(*t).is_ok_and(|age| age >= window);
        if seen.len() > SWEEP_ABOVE {
            seen.retain(|_, times| times.back().is_some_and(|t| !expired(t)));
        }
        let times = seen.entry(principal.to_owned()).or_default();
        while times.front().is_some_and(expired) {
            times.pop_front();
        }
        let used = u32::try_from(times.len()).unwrap_or(u32::MAX);
        if used >= self.limit {
            let oldest = times.front().copied().unwrap_or(now);
            let retry_after = (oldest + window)
                .duration_since(now)
                .unwrap_or(Duration::ZERO);
            return Err(Exhausted {
                limit: self.limit,
                window,
                retry_after,
            });
        }
        times.push_back(now);
        Ok(self.limit - used - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::Clock;
    use std::time::UNIX_EPOCH;

    fn order(status: OrderStatus, closed: Option<SystemTime>) -> Order {
        Order {
            status: status as i32,
            closed_at: closed.map(prost_types::Timestamp::from),
            ..Order::default()
        }
    }

    #[test]
    fn windows_follow_the_lifecycle_and_end_after_grace() {
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let grace = Duration::from_secs(3600);
        let open = |s| order(s, None);
        for s in [OrderStatus::Placed, OrderStatus::Packed] {
            assert!(!in_window(&open(s), Window::InTransit, clock.now(), grace));
            assert!(in_window(&open(s), Window::UntilClosed, clock.now(), grace));
        }
        for s in [
            OrderStatus::Shipped,
            OrderStatus::OutForDelivery,
            OrderStatus::DeliveryFailed,
        ] {
            assert!(in_window(&open(s), Window::InTransit, clock.now(), grace));
        }
        let delivered = order(OrderStatus::Delivered, Some(clock.now()));
        let cancelled = order(OrderStatus::Cancelled, Some(clock.now()));
        assert!(!in_window(
            &cancelled,
            Window::InTransit,
            clock.now(),
            grace
        ));
        clock.advance(grace - Duration::from_millis(1));
        assert!(in_window(&delivered, Window::InTransit, clock.now(), grace));
        assert!(in_window(
            &delivered,
            Window::UntilClosed,
            clock.now(),
            grace
        ));
        assert!(handle_resolves(&delivered, clock.now(), grace));
        clock.advance(Duration::from_millis(1));
        assert!(!in_window(
            &delivered,
            Window::InTransit,
            clock.now(),
            grace
        ));
        assert!(!in_window(
            &delivered,
            Window::UntilClosed,
            clock.now(),
            grace
        ));
        assert!(!handle_resolves(&delivered, clock.now(), grace));
        assert!(in_window(&delivered, Window::Always, clock.now(), grace));
    }

    #[test]
    fn an_order_closed_before_closed_at_existed_counts_as_closed_at_its_last_update() {
        let updated = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let old = Order {
            status: OrderStatus::Delivered as i32,
            updated_at: Some(updated.into()),
            ..Order::default()
        };
        let grace = Duration::from_secs(60);
        assert_eq!(closed_at(&old), Some(updated));
        assert!(!in_window(&old, Window::InTransit, updated + grace, grace));
        assert!(!handle_resolves(&old, updated + grace, grace));
        let open = Order {
            status: OrderStatus::Shipped as i32,
            updated_at: Some(updated.into()),
            ..Order::default()
        };
        assert_eq!(closed_at(&open), None);
    }

    #[test]
    fn reveals_are_limited_per_principal_in_a_sliding_window() {
        let clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_800_000_000));
        let limiter = RevealLimiter::new(3, Duration::from_secs(3600));
        assert_eq!(limiter.take("a", clock.now()), Ok(2));
        clock.advance(Duration::from_secs(600));
        assert_eq!(limiter.take("a", clock.now()), Ok(1));
        assert_eq!(limiter.take("a", clock.now()), Ok(0));
        let refused = limiter.take("a", clock.now()).expect_err("over the limit");
        assert_eq!(refused.retry_after, Duration::from_secs(3000));
        assert_eq!(limiter.take("b", clock.now()), Ok(2), "per principal");
        clock.advance(Duration::from_secs(3000));
        assert_eq!(
            limiter.take("a", clock.now()),
            Ok(0),
            "the oldest left the window"
        );
        assert!(limiter.take("a", clock.now()).is_err());
    }
}
