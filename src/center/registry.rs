//! The session registry: each live session's outlet, counters and peer
//! information, and the event feed's sequence. It carries the [`Effects`]
//! of the rules to sessions and watchers, in the order they were made.

use super::feed::{EncodedEvents, EventLog};
use super::rules::Effects;
use super::{Outbound, Outlet, OutletError, PeerInfo, SessionId, SessionStats, timestamp};
use crate::error::CenterError;
use crate::metrics::{Metrics, StateGauges};
use crate::proto::{self, EventKind, watch_events_response::Event};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A connected peer, as the registry sees it.
pub struct SessionEntry {
    /// Who it is.
    pub peer: PeerInfo,
    /// Where its items go.
    pub outlet: Box<dyn Outlet>,
    /// Its counters.
    pub stats: Arc<SessionStats>,
    /// Cancelled when its queue is full: its task closes it.
    pub overflow: CancellationToken,
    /// When it opened.
    pub connected_at: SystemTime,
}

/// Gives a map's memory back once it holds a small fraction of what it
/// once did (a crowd left), so the heap can be trimmed; rare enough to cost
/// nothing in steady state.
pub fn shrink_after_crowd<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 8 {
        map.shrink_to_fit();
    }
}

/// Live sessions and the event feed.
pub struct Registry {
    sessions: HashMap<SessionId, SessionEntry>,
    /// Event feed. A receiver that falls further behind than its capacity
    /// gets `Lagged(n)`. Senders never wait.
    feed: broadcast::Sender<Arc<proto::WatchEventsResponse>>,
    /// Sequence number of the last feed event.
    seq: u64,
    /// The last events, for watchers that resume from a cursor.
    log: EventLog,
}

/// A resumed watch: the kept events after the cursor, then the live feed.
pub struct Resumed {
    /// Events after the cursor, oldest first, still encoded: they are
    /// decoded by [`Resumed::backlog`] outside the center's lock.
    encoded: EncodedEvents,
    /// Everything from the first event after `backlog`.
    pub live: broadcast::Receiver<Arc<proto::WatchEventsResponse>>,
}

impl Resumed {
    /// The kept events after the cursor, oldest first.
    pub fn backlog(&self) -> impl Iterator<Item = proto::WatchEventsResponse> + '_ {
        self.encoded.decode()
    }
}

impl Registry {
    /// No sessions; events go to `feed`, and the last `log_capacity` are kept.
    pub fn new(
        feed: broadcast::Sender<Arc<proto::WatchEventsResponse>>,
        log_capacity: usize,
    ) -> Self {
        Self {
            sessions: HashMap::new(),
            feed,
            seq: 0,
            log: EventLog::new(log_capacity),
        }
    }

    /// The sequence number of the last event: a listing taken now is
    /// followed, with no gap and no duplicate, by the events after it.
    pub fn cursor(&self) -> u64 {
        self.seq
    }

    /// Subscribes to the feed after `after` (`None`: from now on). Called
    /// under the center's lock, so no event falls between the backlog and
    /// the live feed. An `after` older than the kept window is refused.
    pub fn resume(&self, after: Option<u64>) -> Result<Resumed, CenterError> {
        let live = self.feed.subscribe();
        let Some(after) = after else {
            return Ok(Resumed {
                encoded: EncodedEvents::default(),
                live,
            });
        };
        if after > self.seq {
            return Err(CenterError::OutOfRange(format!(
                "cursor {after} is ahead of the feed ({})",
                self.seq
            )));
        }
        let oldest_kept = self.seq + 1 - self.log.len() as u64;
        if after + 1 < oldest_kept {
            return Err(CenterError::OutOfRange(format!(
                "cursor {after} is older than the kept events ({oldest_kept}..={})",
                self.seq
            )));
        }
        let newer = usize::try_from(self.seq - after).unwrap_or(usize::MAX);
        Ok(Resumed {
            encoded: self.log.newest(newer),
            live,
        })
    }

    /// Adds a session.
    pub fn open(&mut self, sid: SessionId, entry: SessionEntry) {
        self.sessions.insert(sid, entry);
    }

    /// Removes a session; nothing reaches it any more.
    pub fn close(&mut self, sid: SessionId) -> Option<SessionEntry> {
        let entry = self.sessions.remove(&sid);
        shrink_after_crowd(&mut self.sessions);
        entry
    }

    /// A live session.
    pub fn get(&self, sid: SessionId) -> Option<&SessionEntry> {
        self.sessions.get(&sid)
    }

    /// Every live session, sorted by id.
    pub fn sorted(&self) -> Vec<(SessionId, &SessionEntry)> {
        let mut all: Vec<_> = self.sessions.iter().map(|(id, e)| (*id, e)).collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Carries out what the rules decided: items to sessions, then events to
    /// the feed, each in order.
    pub fn apply(&mut self, fx: Effects, metrics: &Metrics) {
        for send in fx.sends {
            for sid in send.to {
                self.deliver(sid, send.item.clone());
            }
        }
        for (room_id, kind, event) in fx.events {
            self.emit(room_id, kind, event);
        }
        if fx.pulls_dropped > 0 {
            metrics.pulls_dropped.inc_by(fx.pulls_dropped);
        }
        if fx.users_replaced > 0 {
            metrics.users_replaced.inc_by(fx.users_replaced);
        }
    }

    /// Queues `item` for session `sid`. A full queue marks the session as a
    /// slow consumer (its task closes it); a closed one is on its way out.
    fn deliver(&self, sid: SessionId, item: Outbound) {
        let Some(entry) = self.sessions.get(&sid) else {
            return;
        };
        match entry.outlet.try_deliver(item) {
            Ok(()) => {
                entry.stats.messages_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(OutletError::Full) => {
                if !entry.overflow.is_cancelled() {
                    tracing::warn!(
                        session.id = sid,
                        "outbound queue full: closing slow consumer"
                    );
                    entry.overflow.cancel();
                }
            }
            Err(OutletError::Closed) => {}
        }
    }

    /// Puts one event on the feed and in the log. The sequence number
    /// advances with every event, so watchers see no gaps.
    pub fn emit(&mut self, room_id: String, kind: EventKind, event: Event) {
        self.seq += 1;
        let event = proto::WatchEventsResponse {
            seq: self.seq,
            time: Some(timestamp(SystemTime::now())),
            room_id,
            kind: kind.into(),
            event: Some(event),
        };
        self.log.push(&event);
        if self.feed.receiver_count() > 0 {
            // Err only means every receiver went away meanwhile.
            let _ = self.feed.send(Arc::new(event));
        }
    }

    /// Sessions by transport and queue depths, for `/metrics`.
    pub fn gauges(&self, (rooms, users, msus): (usize, usize, usize)) -> StateGauges {
        let mut by_transport: Vec<(&'static str, i64)> = Vec::new();
        let (mut depth, mut depth_max) = (0i64, 0i64);
        for s in self.sessions.values() {
            let name = s.peer.transport.short_name();
            match by_transport.iter_mut().find(|(k, _)| *k == name) {
                Some((_, n)) => *n += 1,
                None => by_transport.push((name, 1)),
            }
            let d = i64::try_from(s.outlet.depth()).unwrap_or(i64::MAX);
            depth = depth.saturating_add(d);
            depth_max = depth_max.max(d);
        }
        let n = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
        StateGauges {
            sessions: by_transport,
            rooms: n(rooms),
            users: n(users),
            msus: n(msus),
            queue_depth: depth,
            queue_depth_max: depth_max,
        }
    }
}
