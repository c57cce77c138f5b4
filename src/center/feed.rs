//! The event feed: what watchers of `WatchEvents` receive, and their filters.
//!
//! Events are put on a `tokio::sync::broadcast` channel under the state lock,
//! so their order and sequence numbers match the order of state changes. A
//! receiver that falls more than the channel's capacity behind loses the
//! oldest events and learns how many: [`lagged`] turns that into a marker.

use crate::proto::watch_events_response::Event;
use crate::proto::{EventKind, Lagged, WatchEventsRequest, WatchEventsResponse};
use std::collections::HashSet;

/// Which events a watcher wants. Empty sets match everything.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    rooms: HashSet<String>,
    kinds: HashSet<i32>,
}

impl EventFilter {
    /// The filter a `WatchEvents` request asks for.
    pub fn new(request: &WatchEventsRequest) -> Self {
        Self {
            rooms: request.room_ids.iter().cloned().collect(),
            kinds: request.kinds.iter().copied().collect(),
        }
    }

    /// True when `event` passes the filter. Lag markers always pass.
    pub fn matches(&self, event: &WatchEventsResponse) -> bool {
        if matches!(event.event, Some(Event::Lagged(_))) {
            return true;
        }
        (self.rooms.is_empty() || self.rooms.contains(&event.room_id))
            && (self.kinds.is_empty() || self.kinds.contains(&event.kind))
    }
}

/// A marker telling a watcher it missed `skipped` events.
pub fn lagged(skipped: u64) -> WatchEventsResponse {
    WatchEventsResponse {
        seq: 0,
        time: Some(super::timestamp(std::time::SystemTime::now())),
        room_id: String::new(),
        kind: EventKind::Unspecified.into(),
        event: Some(Event::Lagged(Lagged { skipped })),
    }
}
