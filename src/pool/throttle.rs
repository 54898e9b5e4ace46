//! Rate limits for background maintenance (scrub, resync): a MiB/s budget, like ZFS's scrub
//! and resilver limits, so maintenance leaves the devices to the clients.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Default rate of a scrub and of background resync: 64 MiB/s.
pub const DEFAULT_RATE: u64 = 64 << 20;

/// The rates sspd was started with (`--scrub-rate`, `--resync-rate`), in bytes per second;
/// 0 means unlimited.
#[derive(Debug)]
pub struct Rates {
    pub scrub: AtomicU64,
    pub resync: AtomicU64,
    /// Background reclaim of removed volumes (bytes of their data released per second).
    pub reclaim: AtomicU64,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            scrub: AtomicU64::new(DEFAULT_RATE),
            resync: AtomicU64::new(DEFAULT_RATE),
            reclaim: AtomicU64::new(super::reclaim::DEFAULT_RATE),
        }
    }
}

impl Rates {
    pub fn scrub(&self) -> u64 {
        self.scrub.load(Ordering::Relaxed)
    }
    pub fn resync(&self) -> u64 {
        self.resync.load(Ordering::Relaxed)
    }
    pub fn reclaim(&self) -> u64 {
        self.reclaim.load(Ordering::Relaxed)
    }
}

/// A token bucket: `rate` bytes per second, with at most one second of credit saved up.
/// Work is charged after it is done, so one slice may overdraw; the next waits it off.
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    /// Bytes that may still be spent (negative: owed).
    tokens: f64,
    last: Instant,
}

impl Throttle {
    pub fn new(rate: u64) -> Throttle {
        Throttle {
            rate,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Change the rate, keeping what was spent.
    pub fn set_rate(&mut self, rate: u64) {
        self.refill();
        self.rate = rate;
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        if self.rate > 0 {
            self.tokens = (self.tokens + dt * self.rate as f64).min(self.rate as f64);
        }
    }

    /// Charge `bytes` of work done.
    pub fn spend(&mut self, bytes: u64) {
        self.refill();
        if self.rate > 0 {
            self.tokens -= bytes as f64;
        }
    }

    /// How long to wait before the next slice may start (zero: now).
    pub fn wait_time(&mut self) -> Duration {
        if self.rate == 0 {
            return Duration::ZERO;
        }
        self.refill();
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate as f64)
        }
    }

    /// Whether the next slice may start now.
    pub fn ready(&mut self) -> bool {
        self.wait_time().is_zero()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let mut t = Throttle::new(0);
        t.spend(1 << 40);
        assert!(t.ready());
    }

    #[test]
    fn overdraw_is_waited_off_at_the_rate() {
        let mut t = Throttle::new(1 << 20);
        t.spend(2 << 20);
        let w = t.wait_time();
        assert!(
            w > Duration::from_millis(1900) && w <= Duration::from_secs(2),
            "{w:?}"
        );
    }
}
