//! Per-session rate limiting: a token bucket (governor) plus a strike count,
//! shared by both front ends, on the [`Clock`] the server is started with.

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

pub use crate::clock::Clock;

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
