//! The time the center's rules count in (rate limits, reconnect grace): the
//! system's monotonic clock, or a manual clock that moves only when told, so
//! tests of time-based rules are exact on any machine.

use governor::clock::Clock as GovernorClock;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A clock. Cheap to clone; clones share one time.
#[derive(Debug, Clone)]
pub struct Clock {
    origin: Instant,
    /// The kernel's coarse monotonic clock at `origin` (within a tick).
    coarse_origin: Duration,
    /// Unix time at `origin`: [`Clock::since_epoch`] counts from it.
    epoch_at_origin: Duration,
    /// Time since the start, set by hand; `None` follows the system. A watch
    /// channel so that sleepers wake when the time moves.
    manual: Option<Arc<watch::Sender<Duration>>>,
}

impl Clock {
    /// The system's monotonic clock.
    pub fn system() -> Self {
        Self {
            origin: Instant::now(),
            coarse_origin: coarse_monotonic(),
            epoch_at_origin: unix_now(),
            manual: None,
        }
    }

    /// A clock that stands still until advanced.
    pub fn manual() -> Self {
        Self {
            origin: Instant::now(),
            coarse_origin: coarse_monotonic(),
            epoch_at_origin: unix_now(),
            manual: Some(Arc::new(watch::Sender::new(Duration::ZERO))),
        }
    }

    /// Moves a manual clock forward, waking whoever sleeps past the new
    /// time; the system clock ignores this.
    pub fn advance(&self, by: Duration) {
        if let Some(time) = &self.manual {
            time.send_modify(|t| *t = t.saturating_add(by));
        }
    }

    /// Time since the clock started.
    pub fn elapsed(&self) -> Duration {
        match &self.manual {
            Some(time) => *time.borrow(),
            None => self.origin.elapsed(),
        }
    }

    /// About the Unix time, moving as [`Clock::elapsed`] does: the Unix
    /// time when the clock started plus the time since. Monotonic within a
    /// process (a wall-clock step does not move it), and comparable across
    /// restarts, so a deadline kept on disk means the same after one.
    pub fn since_epoch(&self) -> Duration {
        self.epoch_at_origin + self.elapsed()
    }

    /// [`Clock::since_epoch`] to within a tick of the kernel's coarse
    /// clock (a few ms), without a precise clock read: for the time of every
    /// step the center applies, where graces count in seconds.
    pub fn since_epoch_coarse(&self) -> Duration {
        match &self.manual {
            Some(_) => self.since_epoch(),
            None => self.epoch_at_origin + coarse_monotonic().saturating_sub(self.coarse_origin),
        }
    }

    /// Waits until the clock has moved on by `by`.
    pub async fn sleep(&self, by: Duration) {
        self.sleep_until(self.elapsed().saturating_add(by)).await;
    }

    /// Waits until the clock reads at least `at` (see [`Clock::elapsed`]).
    pub async fn sleep_until(&self, at: Duration) {
        match &self.manual {
            Some(time) => {
                let mut rx = time.subscribe();
                // Err only if the sender is gone, which this clock holds.
                let _ = rx.wait_for(|t| *t >= at).await;
            }
            None => tokio::time::sleep(at.saturating_sub(self.elapsed())).await,
        }
    }
}

fn unix_now() -> Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl GovernorClock for Clock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.elapsed()
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix time in milliseconds from the kernel's coarse clock (a tick's
/// resolution, a few ms): for "last seen" marks taken on every message,
/// where a full clock read per message showed in profiles.
pub fn coarse_unix_ms() -> u64 {
    let t = coarse_system_time()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
}

/// The wall time from the kernel's coarse clock (a tick's resolution):
/// for stamps taken on every step of the center, such as an event's time.
pub fn coarse_system_time() -> std::time::SystemTime {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse);
    std::time::SystemTime::UNIX_EPOCH + timespec(t)
}

fn coarse_monotonic() -> Duration {
    timespec(rustix::time::clock_gettime(
        rustix::time::ClockId::MonotonicCoarse,
    ))
}

fn timespec(t: rustix::time::Timespec) -> Duration {
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// A protobuf timestamp for `t`.
pub fn timestamp(t: std::time::SystemTime) -> prost_types::Timestamp {
    let d = t
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_clock_wakes_sleepers_when_advanced() {
        let clock = Clock::manual();
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(Duration::from_secs(30)).await }
        });
        clock.advance(Duration::from_secs(10));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(20));
        tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .expect("woken")
            .expect("no panic");
        assert_eq!(clock.elapsed(), Duration::from_secs(30));
    }
}
