//! Settings of the room service.

use super::rules::DuplicatePolicy;
use crate::clock::Clock;
use std::time::Duration;

/// Settings of the room service.
#[derive(Debug, Clone)]
pub struct CenterConfig {
    /// Events buffered per event-feed watcher before it is told it lagged.
    pub feed_capacity: usize,
    /// Events kept for watchers that resume from a cursor.
    pub event_log_capacity: usize,
    /// Most rooms one session may put users into (0: no limit).
    pub max_rooms_per_session: usize,
    /// Most users one session may hold (0: no limit).
    pub max_users_per_session: usize,
    /// How long the users of an ended session wait for a session with its
    /// identity (zero: they go with it).
    pub reconnect_grace: Duration,
    /// A `join` of a user another live session speaks for.
    pub duplicate_user: DuplicatePolicy,
    /// The time the grace is counted in.
    pub clock: Clock,
}

impl Default for CenterConfig {
    fn default() -> Self {
        Self {
            feed_capacity: 4096,
            event_log_capacity: 10_000,
            max_rooms_per_session: 0,
            max_users_per_session: 0,
            reconnect_grace: Duration::from_secs(30),
            duplicate_user: DuplicatePolicy::Replace,
            clock: Clock::system(),
        }
    }
}
