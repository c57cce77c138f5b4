//! Per-session rate limiting: a token bucket (governor) plus a strike count,
//! shared by both front ends, on a [`Clock`] the server is started with.

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The time rate gates read: the system's monotonic clock, or a manual
/// clock that only moves when [`Clock::advance`] says so. A manual clock
/// makes rate limits exact in tests: no token comes back because a loaded
/// machine ran a test slowly.
#[derive(Debug, Clone)]
pub struct Clock {
    origin: Instant,
    /// Nanoseconds since the start, set by hand; `None` follows the system.
    manual: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system's monotonic clock.
    pub fn system() -> Self {
        Self {
            origin: Instant::now(),
            manual: None,
        }
    }

    /// A clock that stands still until advanced; clones share its time.
    pub fn manual() -> Self {
        Self {
            origin: Instant::now(),
            manual: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves a manual clock forward; the system clock ignores this.
    pub fn advance(&self, by: Duration) {
        if let Some(ns) = &self.manual {
            let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            ns.fetch_add(by, Ordering::Relaxed);
        }
    }

    /// Time since the clock started.
    pub fn elapsed(&self) -> Duration {
        match &self.manual {
            Some(ns) => Duration::from_nanos(ns.load(Ordering::Relaxed)),
            None => self.origin.elapsed(),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl governor::clock::Clock for Clock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.elapsed()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, Clock, NoOpMiddleware<Duration>>;

/// `limits:` settings for one session.
#[derive(Debug, Clone)]
pub struct RateSettings {
    /// Sustained messages per second (0: no limit).
    pub per_second: u32,
    /// Bucket size: messages allowed in a burst.
    pub burst: u32,
    /// Consecutive refused messages after which the session is closed.
    pub close_after: u32,
    /// The time the gate reads.
    pub clock: Clock,
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limit.
    Pass,
    /// Over the limit: refuse (429) or drop it.
    Limited,
    /// Over the limit for too long: close the session (1008).
    Close,
}

/// One session's rate gate.
pub struct RateGate {
    limiter: Option<Limiter>,
    strikes: u32,
    close_after: u32,
}

impl RateGate {
    /// A gate for `settings` (always passing when `per_second` is 0).
    pub fn new(settings: &RateSettings) -> Self {
        let limiter = NonZeroU32::new(settings.per_second).map(|rate| {
            let burst = NonZeroU32::new(settings.burst).unwrap_or(rate);
            RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                settings.clock.clone(),
            )
        });
        Self {
            limiter,
            strikes: 0,
            close_after: settings.close_after.max(1),
        }
    }

    /// Takes one token for a message.
    pub fn check(&mut self) -> Verdict {
        let Some(limiter) = &self.limiter else {
            return Verdict::Pass;
        };
        if limiter.check().is_ok() {
            self.strikes = 0;
            return Verdict::Pass;
        }
        self.strikes += 1;
        if self.strikes >= self.close_after {
            Verdict::Close
        } else {
            Verdict::Limited
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_limited_then_closed() {
        let clock = Clock::manual();
        let mut gate = RateGate::new(&RateSettings {
            per_second: 1,
            burst: 3,
            close_after: 5,
            clock: clock.clone(),
        });
        assert_eq!(
            (0..3).map(|_| gate.check()).collect::<Vec<_>>(),
            vec![Verdict::Pass; 3]
        );
        assert_eq!(
            (0..4).map(|_| gate.check()).collect::<Vec<_>>(),
            vec![Verdict::Limited; 4]
        );
        assert_eq!(gate.check(), Verdict::Close);
    }

    #[test]
    fn a_manual_clock_refills_exactly_when_advanced() {
        let clock = Clock::manual();
        let mut gate = RateGate::new(&RateSettings {
            per_second: 10,
            burst: 10,
            close_after: 1000,
            clock: clock.clone(),
        });
        assert!((0..10).all(|_| gate.check() == Verdict::Pass));
        assert_eq!(gate.check(), Verdict::Limited);
        // 10 per second: 500 ms gives back exactly 5 tokens.
        clock.advance(Duration::from_millis(500));
        assert!((0..5).all(|_| gate.check() == Verdict::Pass));
        assert_eq!(gate.check(), Verdict::Limited);
    }

    #[test]
    fn zero_means_unlimited() {
        let mut gate = RateGate::new(&RateSettings {
            per_second: 0,
            burst: 0,
            close_after: 1,
            clock: Clock::system(),
        });
        assert!((0..10_000).all(|_| gate.check() == Verdict::Pass));
    }
}
