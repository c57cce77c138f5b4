//! Per-session rate limits that lose nothing (PROTOCOL.md §6): what a peer
//! sends over its rate waits, in order, in a bounded [`Inbox`] and is
//! applied when the token bucket (governor) allows; the session stops
//! reading only when the inbox is full (TCP then slows the peer down), and
//! only a peer that stays behind for `close_after` is closed. Shared by both
//! front ends, on the [`Clock`] the server is started with.

use governor::clock::Clock as _;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use std::collections::VecDeque;
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
    /// Bytes of messages that may wait before the session stops reading.
    pub inbox_bytes: usize,
    /// A session that stays behind its rate this long is closed (1008).
    pub close_after: Duration,
    /// The time the bucket refills in.
    pub clock: Clock,
}

/// What the inbox has for the session now.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// Apply this message now; `true` when it had to wait for the rate.
    Ready(T, bool),
    /// The next message waits for the rate: see [`Inbox::ready`].
    Wait,
    /// Nothing waits.
    Empty,
    /// The peer has stayed behind its rate for too long: close it.
    Close,
}

/// One session's messages on their way in. See the module docs.
pub struct Inbox<T> {
    items: VecDeque<(T, usize)>,
    bytes: usize,
    max_bytes: usize,
    limiter: Option<Limiter>,
    clock: Clock,
    close_after: Duration,
    /// Since when the inbox has been behind the rate (`None`: keeping up).
    behind_since: Option<Duration>,
    /// When the next message may go, while one waits.
    wait_until: Option<Duration>,
}

impl<T> Inbox<T> {
    /// An empty inbox for `settings` (never waiting when `per_second` is 0).
    pub fn new(settings: &RateSettings) -> Self {
        let limiter = NonZeroU32::new(settings.per_second).map(|rate| {
            let burst = NonZeroU32::new(settings.burst).unwrap_or(rate);
            RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                settings.clock.clone(),
            )
        });
        Self {
            items: VecDeque::new(),
            bytes: 0,
            max_bytes: settings.inbox_bytes.max(1),
            limiter,
            clock: settings.clock.clone(),
            close_after: settings.close_after,
            behind_since: None,
            wait_until: None,
        }
    }

    /// Queues a message of `bytes` bytes.
    pub fn push(&mut self, item: T, bytes: usize) {
        self.bytes += bytes;
        self.items.push_back((item, bytes));
    }

    /// Whether the session should stop reading until messages go out.
    pub fn is_full(&self) -> bool {
        self.bytes >= self.max_bytes
    }

    /// Messages waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether a message waits for the rate (then await [`Inbox::ready`]).
    pub fn is_waiting(&self) -> bool {
        self.wait_until.is_some()
    }

    /// Takes the next message, if the rate allows it now.
    pub fn take(&mut self) -> Next<T> {
        if self.items.is_empty() {
            self.behind_since = None;
            self.wait_until = None;
            return Next::Empty;
        }
        if let Some(limiter) = &self.limiter
            && let Err(not_until) = limiter.check()
        {
            // The clock is read only when the rate holds a message back.
            let now = self.clock.elapsed();
            let since = *self.behind_since.get_or_insert(now);
            if now.saturating_sub(since) >= self.close_after {
                return Next::Close;
            }
            self.wait_until = Some(now + not_until.wait_time_from(self.clock.now()));
            return Next::Wait;
        }
        let delayed = self.wait_until.take().is_some() || self.behind_since.is_some();
        let Some((item, bytes)) = self.items.pop_front() else {
            return Next::Empty;
        };
        self.bytes -= bytes;
        if self.items.is_empty() {
            // Caught up: the peer is within its rate again.
            self.behind_since = None;
        }
        Next::Ready(item, delayed)
    }

    /// Resolves when the waiting message may go (never, when none waits).
    pub async fn ready(&self) {
        match self.wait_until {
            Some(at) => self.clock.sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(per_second: u32, burst: u32, clock: &Clock) -> RateSettings {
        RateSettings {
            per_second,
            burst,
            inbox_bytes: 100,
            close_after: Duration::from_secs(5),
            clock: clock.clone(),
        }
    }

    fn drain(inbox: &mut Inbox<u32>) -> (Vec<u32>, Next<u32>) {
        let mut out = Vec::new();
        loop {
            match inbox.take() {
                Next::Ready(i, _) => out.push(i),
                other => return (out, other),
            }
        }
    }

    #[test]
    fn over_the_rate_messages_wait_in_order_and_none_is_lost() {
        let clock = Clock::manual();
        let mut inbox = Inbox::new(&settings(10, 10, &clock));
        for i in 0..25 {
            inbox.push(i, 1);
        }
        assert_eq!(drain(&mut inbox), ((0..10).collect(), Next::Wait));
        assert!(inbox.is_waiting());
        // 10 per second: 500 ms lets exactly 5 more go, in order.
        clock.advance(Duration::from_millis(500));
        assert_eq!(drain(&mut inbox), ((10..15).collect(), Next::Wait));
        clock.advance(Duration::from_secs(1));
        assert_eq!(drain(&mut inbox), ((15..25).collect(), Next::Empty));
        assert!(!inbox.is_waiting());
    }

    #[test]
    fn a_full_inbox_stops_reading_and_a_peer_behind_for_too_long_is_closed() {
        let clock = Clock::manual();
        let mut inbox = Inbox::new(&settings(1, 1, &clock));
        for i in 0..10 {
            inbox.push(i, 10);
        }
        assert!(inbox.is_full());
        assert_eq!(drain(&mut inbox), (vec![0], Next::Wait));
        clock.advance(Duration::from_secs(1));
        assert_eq!(drain(&mut inbox), (vec![1], Next::Wait));
        assert!(!inbox.is_full());
        clock.advance(Duration::from_secs(3));
        assert_eq!(drain(&mut inbox), (vec![2], Next::Wait));
        // Behind since t=0; at t=5 it is closed.
        clock.advance(Duration::from_secs(1));
        assert_eq!(inbox.take(), Next::Ready(3, true));
        assert_eq!(inbox.take(), Next::Close);
    }

    #[test]
    fn zero_means_unlimited() {
        let clock = Clock::manual();
        let mut inbox = Inbox::new(&settings(0, 0, &clock));
        for i in 0..10_000 {
            inbox.push(i, 0);
        }
        let (out, next) = drain(&mut inbox);
        assert_eq!((out.len(), next), (10_000, Next::Empty));
    }
}
