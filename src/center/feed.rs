//! The event feed: what watchers of `WatchEvents` receive, and their filters.
//!
//! Events are put on a `tokio::sync::broadcast` channel under the state lock,
//! so their order and sequence numbers match the order of state changes. A
//! receiver that falls more than the channel's capacity behind loses the
//! oldest events and learns how many: [`lagged`] turns that into a marker.

use crate::proto::watch_events_response::Event;
use crate::proto::{EventKind, Lagged, WatchEventsRequest, WatchEventsResponse};
use prost::Message;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::broadcast;

/// The live feed: a broadcast channel, and how many follow it. The count
/// is kept beside the channel because the channel's own count takes its
/// lock, and the center asks once per event (every text message), mostly
/// when nobody follows.
#[derive(Debug, Clone)]
pub struct Feed {
    tx: broadcast::Sender<Arc<WatchEventsResponse>>,
    followers: Arc<AtomicUsize>,
}

impl Feed {
    /// A feed whose followers may fall `capacity` events behind.
    pub fn new(capacity: usize) -> Self {
        Self {
            tx: broadcast::channel(capacity).0,
            followers: Arc::default(),
        }
    }

    /// Follows the feed from now on.
    pub fn subscribe(&self) -> FeedReceiver {
        // Counted before subscribing: an event sent in between finds a
        // follower count but no receiver yet, which costs nothing.
        self.followers.fetch_add(1, Ordering::SeqCst);
        FeedReceiver {
            rx: self.tx.subscribe(),
            followers: self.followers.clone(),
        }
    }

    /// Sends `event` to the followers, if any.
    pub fn send(&self, event: WatchEventsResponse) {
        if self.followers.load(Ordering::SeqCst) > 0 {
            // Err only means every receiver went away meanwhile.
            let _ = self.tx.send(Arc::new(event));
        }
    }
}

/// One follower of the live feed ([`crate::center::Center::subscribe`],
/// [`crate::center::Center::resume`]).
#[derive(Debug)]
pub struct FeedReceiver {
    rx: broadcast::Receiver<Arc<WatchEventsResponse>>,
    followers: Arc<AtomicUsize>,
}

impl FeedReceiver {
    /// The next event; `Lagged(n)` when this follower fell behind the
    /// feed's capacity and lost the `n` oldest.
    pub async fn recv(&mut self) -> Result<Arc<WatchEventsResponse>, broadcast::error::RecvError> {
        self.rx.recv().await
    }
}

impl Drop for FeedReceiver {
    fn drop(&mut self) {
        self.followers.fetch_sub(1, Ordering::SeqCst);
    }
}

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
        time: Some(crate::clock::timestamp(std::time::SystemTime::now())),
        room_id: String::new(),
        kind: EventKind::Unspecified.into(),
        event: Some(Event::Lagged(Lagged { skipped })),
    }
}

/// The last `capacity` events, protobuf-encoded back to back in one ring of
/// bytes, for watchers that resume from a cursor.
///
/// Why not a queue of messages: kept as messages (five allocations an event,
/// freed 10,000 events later on a cold cache) the log cost the `sfu`
/// benchmark a sixth of its throughput, and the scattered survivors pinned
/// ~20 MB of freed session memory after a crowd left (glibc can return only
/// whole free pages). One contiguous ring costs a copy per event and is
/// mapped apart from the sessions' heap once it passes the mmap threshold.
#[derive(Debug, Default)]
pub struct EventLog {
    /// The encoded events, oldest first.
    bytes: VecDeque<u8>,
    /// The length of each event in `bytes`, oldest first.
    lens: VecDeque<u32>,
    /// The sequence number of each event, oldest first: increasing, with
    /// gaps after a restart (see [`EventLog::after`]).
    seqs: VecDeque<u64>,
    /// At most this many events are kept; 0 keeps none.
    capacity: usize,
    /// Encoding buffer, reused so an append allocates nothing once warm.
    scratch: Vec<u8>,
}

impl EventLog {
    /// An empty log keeping at most `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// How many events are kept.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Appends `event`, dropping the oldest when full.
    pub fn push(&mut self, event: &WatchEventsResponse) {
        if self.capacity == 0 {
            return;
        }
        self.scratch.clear();
        // Neither can fail for what the center builds (a Vec grows as
        // needed; no event nears 4 GiB); if one did, the event is left out
        // and a resuming watcher sees the gap in `seq`.
        if event.encode(&mut self.scratch).is_err() {
            return;
        }
        let Ok(len) = u32::try_from(self.scratch.len()) else {
            return;
        };
        if self.lens.len() == self.capacity {
            self.pop();
        }
        self.reserve(self.scratch.len());
        self.bytes.extend(self.scratch.iter());
        self.lens.push_back(len);
        self.seqs.push_back(event.seq);
    }

    /// The sequence number of the oldest event kept.
    pub fn oldest(&self) -> Option<u64> {
        self.seqs.front().copied()
    }

    /// Makes room for `n` more bytes, growing by an eighth rather than
    /// doubling: a full log keeps about the same number of bytes as it
    /// turns over, and a ring writes every page of its capacity, so a
    /// doubled ring would keep up to twice its events' size resident
    /// (measured after a crowd of 5,000 sessions with the reconnect grace:
    /// 4.0 → 3.5 MB anonymous).
    fn reserve(&mut self, n: usize) {
        let need = self.bytes.len() + n;
        if need > self.bytes.capacity() {
            self.bytes.reserve_exact(n + self.bytes.len() / 8);
        }
    }

    fn pop(&mut self) {
        if let Some(len) = self.lens.pop_front() {
            self.bytes.drain(..len as usize);
            self.seqs.pop_front();
        }
    }

    /// Keeps `events` (encoded, oldest first) instead of what it kept: the
    /// newest of them up to the capacity.
    pub fn load(&mut self, events: &[Vec<u8>]) {
        self.bytes.clear();
        self.lens.clear();
        self.seqs.clear();
        let skip = events.len().saturating_sub(self.capacity);
        for event in &events[skip..] {
            // Each was encoded from a valid message; one that is not would
            // be left out (a gap in `seq` a resuming watcher can see).
            let (Ok(len), Ok(decoded)) = (
                u32::try_from(event.len()),
                WatchEventsResponse::decode(event.as_slice()),
            ) else {
                continue;
            };
            self.reserve(event.len());
            self.bytes.extend(event.iter());
            self.lens.push_back(len);
            self.seqs.push_back(decoded.seq);
        }
    }

    /// Copies the events numbered after `seq`, oldest first. The numbers
    /// are increasing but may have gaps: a center on a state directory
    /// does not keep text messages, so after a crash their events are not
    /// among the kept ones, and the feed continues past every number the
    /// former process may have given.
    pub fn after(&self, seq: u64) -> EncodedEvents {
        let older = self.seqs.partition_point(|&s| s <= seq);
        self.newest(self.seqs.len() - older)
    }

    /// Copies the newest `n` events (all kept if fewer), oldest first, to
    /// be decoded by [`EncodedEvents::decode`] away from any lock.
    pub fn newest(&self, n: usize) -> EncodedEvents {
        let n = n.min(self.lens.len());
        let lens: Vec<u32> = self
            .lens
            .iter()
            .skip(self.lens.len() - n)
            .copied()
            .collect();
        let total: usize = lens.iter().map(|&l| l as usize).sum();
        let bytes = self
            .bytes
            .range(self.bytes.len() - total..)
            .copied()
            .collect();
        EncodedEvents { bytes, lens }
    }
}

/// Events copied out of an [`EventLog`], still encoded.
#[derive(Debug, Default)]
pub struct EncodedEvents {
    bytes: Vec<u8>,
    lens: Vec<u32>,
}

impl EncodedEvents {
    /// Each event's bytes, oldest first (for a cluster snapshot).
    pub fn split(&self) -> Vec<Vec<u8>> {
        let mut at = 0usize;
        self.lens
            .iter()
            .map(|&len| {
                let end = at + len as usize;
                let event = self.bytes.get(at..end).unwrap_or_default().to_vec();
                at = end;
                event
            })
            .collect()
    }

    /// The events, oldest first. Each was encoded from a valid message, so
    /// none fails to decode; one that did would be skipped (a gap in `seq`
    /// the watcher can see).
    pub fn decode(&self) -> impl Iterator<Item = WatchEventsResponse> + '_ {
        let mut at = 0usize;
        self.lens.iter().filter_map(move |&len| {
            let end = at + len as usize;
            let event = self
                .bytes
                .get(at..end)
                .and_then(|b| WatchEventsResponse::decode(b).ok());
            at = end;
            event
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64, room: &str) -> WatchEventsResponse {
        WatchEventsResponse {
            seq,
            room_id: room.to_owned(),
            ..Default::default()
        }
    }

    /// The next event's number, waiting at most 5 s.
    async fn next(rx: &mut FeedReceiver) -> Option<u64> {
        let wait = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv());
        wait.await.ok().and_then(Result::ok).map(|e| e.seq)
    }

    #[tokio::test]
    async fn a_follower_gets_what_is_sent_while_it_follows_and_only_that() {
        let feed = Feed::new(16);
        feed.send(event(1, "before anyone follows"));
        let mut first = feed.subscribe();
        let second = feed.subscribe();
        drop(second);
        assert_eq!(feed.followers.load(Ordering::SeqCst), 1);
        feed.send(event(2, "r"));
        assert_eq!(next(&mut first).await, Some(2));
        drop(first);
        // Nobody follows: the channel is not even asked.
        assert_eq!(feed.followers.load(Ordering::SeqCst), 0);
        feed.send(event(3, "after everyone left"));
        let mut again = feed.subscribe();
        feed.send(event(4, "r"));
        assert_eq!(next(&mut again).await, Some(4));
    }

    fn seqs(events: &EncodedEvents) -> Vec<u64> {
        events.decode().map(|e| e.seq).collect()
    }

    #[test]
    fn keeps_the_newest_events_in_order() {
        let mut log = EventLog::new(3);
        for seq in 1..=5 {
            // Rooms of different lengths: events of different sizes.
            log.push(&event(seq, &"r".repeat(seq as usize)));
        }
        assert_eq!(log.len(), 3);
        assert_eq!(seqs(&log.newest(10)), [3, 4, 5]);
        assert_eq!(seqs(&log.newest(2)), [4, 5]);
        assert_eq!(seqs(&log.newest(0)), Vec::<u64>::new());
        let last: Vec<_> = log.newest(1).decode().collect();
        assert_eq!(last, [event(5, "rrrrr")]);
    }

    #[test]
    fn exported_events_load_into_another_log() {
        let mut log = EventLog::new(3);
        for seq in 1..=4 {
            log.push(&event(seq, &"r".repeat(seq as usize)));
        }
        let mut other = EventLog::new(2);
        other.push(&event(9, "x"));
        let all = log.newest(log.len()).split();
        other.load(&all);
        assert_eq!(seqs(&other.newest(10)), [3, 4]);
        let mut same = EventLog::new(3);
        same.load(&all);
        assert_eq!(same.newest(3).split(), all);
        assert_eq!(same.oldest(), Some(2));
        assert_eq!(seqs(&same.after(2)), [3, 4]);
    }

    /// After a restart the kept numbers have gaps (texts the state
    /// directory did not keep): a cursor is found by number, not position.
    #[test]
    fn events_after_a_cursor_are_found_across_gaps() {
        let mut log = EventLog::new(10);
        for seq in [4, 5, 9, 20, 21] {
            log.push(&event(seq, "r"));
        }
        assert_eq!(log.oldest(), Some(4));
        assert_eq!(seqs(&log.after(3)), [4, 5, 9, 20, 21]);
        assert_eq!(seqs(&log.after(5)), [9, 20, 21]);
        assert_eq!(seqs(&log.after(7)), [9, 20, 21]);
        assert_eq!(seqs(&log.after(20)), [21]);
        assert_eq!(seqs(&log.after(21)), Vec::<u64>::new());
        assert_eq!(seqs(&log.after(99)), Vec::<u64>::new());
    }

    #[test]
    fn capacity_zero_keeps_nothing() {
        let mut log = EventLog::new(0);
        log.push(&event(1, "a"));
        assert_eq!(log.len(), 0);
        assert_eq!(seqs(&log.newest(5)), Vec::<u64>::new());
    }
}
