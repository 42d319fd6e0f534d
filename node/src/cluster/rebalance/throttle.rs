//! The rate limit of background partition pulls: a token bucket over bytes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket over bytes: background pulls wait for tokens, pulls a request needs take them
/// without waiting (they may drive the balance negative, delaying the background).
#[derive(Debug)]
pub(super) struct Throttle {
    rate: f64,
    state: Mutex<(f64, Instant)>,
}

impl Throttle {
    pub(super) fn new(rate: u64) -> Throttle {
        Throttle {
            rate: rate as f64,
            state: Mutex::new((rate as f64, Instant::now())),
        }
    }

    fn balance(&self, spend: f64) -> f64 {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.rate).min(self.rate) - spend;
        s.1 = now;
        s.0
    }

    pub(super) fn charge(&self, bytes: usize) {
        self.balance(bytes as f64);
    }

    pub(super) async fn ready(&self) {
        loop {
            let balance = self.balance(0.0);
            if balance >= 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_secs_f64(-balance / self.rate)).await;
        }
    }
}
