//! The session registry: each live session's outlet, counters and peer
//! information, and the event feed's sequence. It carries the [`Effects`]
//! of the rules to sessions and watchers, in the order they were made.

use super::entry::Tense;
use super::feed::{EncodedEvents, EventLog, Feed, FeedReceiver};
use super::outbound::{Delivery, Outbound, Outlet, OutletError, PeerInfo, SessionStats};
use super::rules::{Effects, Notice};
use super::shrink::shrink_after_crowd;
use crate::clock::timestamp;
use crate::error::CenterError;
use crate::ids::{SessionId, SessionMap};
use crate::metrics::StateGauges;
use crate::proto::{self, EventKind, watch_events_response::Event};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// How many feed numbers a local store reserves at a time
/// ([`Registry::reservation_due`]): one kept entry per 32,768 events, and at
/// most this many numbers skipped after a crash.
const FEED_BLOCK: u64 = 65_536;

/// A connected peer, as the registry sees it.
pub struct SessionEntry {
    /// Who it is.
    pub peer: PeerInfo,
    /// Where its items go.
    pub outlet: Box<dyn Outlet>,
    /// Its counters.
    pub stats: Arc<SessionStats>,
    /// Set when the center orders it closed: its queue is full, or another
    /// reason.
    pub eviction: Arc<super::outbound::Eviction>,
    /// When it opened.
    pub connected_at: SystemTime,
}

/// A session another node of the cluster holds: known for listings and for
/// when that node is lost; nothing is delivered to it from here.
pub struct RemoteSession {
    /// Who it is.
    pub peer: PeerInfo,
    /// The node that holds it.
    pub node_id: String,
    /// When its opening was applied here.
    pub connected_at: SystemTime,
}

/// One row of a session listing.
pub struct SessionRow<'a> {
    /// Session id.
    pub id: SessionId,
    /// Who it is.
    pub peer: &'a PeerInfo,
    /// The node that holds it ("" for this process when it is not a cluster node).
    pub node_id: &'a str,
    /// When it opened.
    pub connected_at: SystemTime,
    /// Its counters and outlet, when this process holds it.
    pub local: Option<&'a SessionEntry>,
}

/// The registry's part of a snapshot ([`Registry::freeze`]).
pub struct FrozenRegistry {
    sessions: HashMap<SessionId, (PeerInfo, String, u64)>,
    seq: u64,
    reserved: u64,
    events: EncodedEvents,
}

impl FrozenRegistry {
    /// Completes the sessions the rules wrote into `snap`, and adds the
    /// feed's position and kept events.
    pub fn write(mut self, snap: &mut crate::cluster_proto::Snapshot) {
        for s in &mut snap.sessions {
            if let Some((peer, node_id, at)) = self.sessions.remove(&s.session_id) {
                s.peer_addr = peer.addr;
                s.transport = peer.transport.into();
                s.node_id = node_id;
                s.connected_at_unix_ms = at;
            }
        }
        snap.feed_seq = self.seq;
        snap.feed_reserved = self.reserved;
        snap.feed_events = self.events.split();
    }
}

/// Live sessions and the event feed.
pub struct Registry {
    /// This process's id as a cluster node ("" when it is not one).
    node_id: String,
    sessions: SessionMap<SessionEntry>,
    /// Sessions other cluster nodes hold.
    remote: SessionMap<RemoteSession>,
    /// Event feed. A receiver that falls further behind than its capacity
    /// gets `Lagged(n)`. Senders never wait.
    feed: Feed,
    /// Sequence number of the last feed event.
    seq: u64,
    /// The highest sequence number a local store has reserved for the
    /// feed (see [`Registry::reservation_due`]); 0 in a cluster, whose log
    /// keeps every entry.
    reserved: u64,
    /// The last events, for watchers that resume from a cursor.
    log: EventLog,
    /// INFO lines about pulls and texts that reached nobody, rate-limited.
    drop_log: DropLog,
}

/// Logs a pull or text message that reached nobody at INFO, at most one
/// line a second; the lines left out are counted into the next one. (Every
/// drop is counted in `pilot_pulls_dropped` and shown on the event feed.)
#[derive(Default)]
struct DropLog {
    last: Option<std::time::Instant>,
    left_out: u64,
}

impl DropLog {
    fn note(&mut self, d: &super::rules::Dropped) {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            self.left_out += 1;
            return;
        }
        self.last = Some(now);
        let left_out = std::mem::take(&mut self.left_out);
        tracing::info!(method = d.method, room.id = %d.room_id, user.id = %d.user_id, reason = d.reason_text(), similar_left_out = left_out, "dropped: reached nobody");
    }
}

/// A resumed watch: the kept events after the cursor, then the live feed.
pub struct Resumed {
    /// Events after the cursor, oldest first, still encoded: they are
    /// decoded by [`Resumed::backlog`] outside the center's lock.
    encoded: EncodedEvents,
    /// Everything from the first event after `backlog`.
    pub live: FeedReceiver,
}

impl Resumed {
    /// The kept events after the cursor, oldest first.
    pub fn backlog(&self) -> impl Iterator<Item = proto::WatchEventsResponse> + '_ {
        self.encoded.decode()
    }
}

impl Registry {
    /// No sessions; events go to `feed`, and the last `log_capacity` are kept.
    pub fn new(node_id: String, feed: Feed, log_capacity: usize) -> Self {
        Self {
            node_id,
            sessions: SessionMap::default(),
            remote: SessionMap::default(),
            feed,
            seq: 0,
            reserved: 0,
            log: EventLog::new(log_capacity),
            drop_log: DropLog::default(),
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
        let oldest_kept = self.log.oldest().unwrap_or(self.seq + 1);
        if after + 1 < oldest_kept {
            return Err(CenterError::OutOfRange(format!(
                "cursor {after} is older than the kept events ({oldest_kept}..={})",
                self.seq
            )));
        }
        Ok(Resumed {
            encoded: self.log.after(after),
            live,
        })
    }

    /// A local store keeps no text messages, yet their feed events take
    /// numbers; so the feed reserves numbers ahead of use, in blocks, each
    /// reservation an entry the store keeps, and a start continues past the
    /// last one ([`Registry::continue_past_reserved`]): after a crash no
    /// number is given twice. Returns the next reservation when half the
    /// current one is used: a batch store writes it within 10 ms, far
    /// sooner than half a block of events can follow.
    pub fn reservation_due(&self) -> Option<u64> {
        (self.seq + FEED_BLOCK / 2 > self.reserved).then_some(self.seq + FEED_BLOCK)
    }

    /// The store kept a reservation of the feed's numbers up to `through`.
    pub fn reserved(&mut self, through: u64) {
        self.reserved = self.reserved.max(through);
    }

    /// A replayed entry was applied when the feed's last number was `seq`:
    /// its events take the numbers they took then (the text messages
    /// between were not kept).
    pub fn replaying_from(&mut self, seq: u64) {
        self.seq = self.seq.max(seq);
    }

    /// The replay is over: the feed continues past every number the former
    /// process reserved, whether or not it gave them.
    pub fn continue_past_reserved(&mut self) {
        self.seq = self.seq.max(self.reserved);
    }

    /// The final state, written at a clean stop, accounts for every number
    /// given: the reservation shrinks to them (a later event reserves
    /// again, through the store).
    pub fn settle_reservation(&mut self) {
        self.reserved = self.seq;
    }

    /// Adds a session.
    pub fn open(&mut self, sid: SessionId, entry: SessionEntry) {
        self.sessions.insert(sid, entry);
    }

    /// Applies a session's opening from the shared log: a session another
    /// node holds becomes known here (this process's own are already open).
    pub fn note_open(
        &mut self,
        node_id: &str,
        o: &crate::cluster_proto::SessionOpen,
        opened_at: SystemTime,
    ) {
        if self.sessions.contains_key(&o.session_id) {
            return;
        }
        self.remote.insert(
            o.session_id,
            RemoteSession {
                peer: PeerInfo {
                    addr: o.peer_addr.clone(),
                    transport: proto::Transport::try_from(o.transport).unwrap_or_default(),
                    identity: o.peer_id.clone(),
                    incarnation: o.incarnation.clone(),
                },
                node_id: node_id.to_owned(),
                connected_at: opened_at,
            },
        );
    }

    /// What the registry adds to a snapshot, taken under the center's lock:
    /// each session's address, transport, node and opening time, and the
    /// event feed's position and kept events.
    pub fn freeze(&self) -> FrozenRegistry {
        FrozenRegistry {
            sessions: self
                .sorted()
                .into_iter()
                .map(|r| {
                    let at = super::unix_ms(r.connected_at);
                    (r.id, (r.peer.clone(), r.node_id.to_owned(), at))
                })
                .collect(),
            seq: self.seq,
            reserved: self.reserved,
            events: self.log.newest(self.log.len()),
        }
    }

    /// Takes the sessions (all held by other nodes: this one has just
    /// joined) and the feed's position from a snapshot.
    pub fn load(&mut self, snap: &crate::cluster_proto::Snapshot) {
        self.remote = snap
            .sessions
            .iter()
            .filter(|s| !self.sessions.contains_key(&s.session_id))
            .map(|s| {
                (
                    s.session_id,
                    RemoteSession {
                        peer: PeerInfo {
                            addr: s.peer_addr.clone(),
                            transport: proto::Transport::try_from(s.transport).unwrap_or_default(),
                            identity: s.peer_id.clone(),
                            incarnation: s.incarnation.clone(),
                        },
                        node_id: s.node_id.clone(),
                        connected_at: SystemTime::UNIX_EPOCH
                            + std::time::Duration::from_millis(s.connected_at_unix_ms),
                    },
                )
            })
            .collect();
        self.seq = snap.feed_seq;
        self.reserved = snap.feed_reserved;
        self.log.load(&snap.feed_events);
    }

    /// Whether this process holds session `sid`.
    pub fn is_local(&self, sid: SessionId) -> bool {
        self.sessions.contains_key(&sid)
    }

    /// Every session known here, this process's and other nodes'.
    pub fn ids(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.sessions.keys().chain(self.remote.keys()).copied()
    }

    /// The cluster declared the node holding `sid` lost: a session held here
    /// (this node was cut off from the store for too long) must close, so
    /// its peer reconnects and takes its users back; another node's is
    /// forgotten.
    pub fn lose(&mut self, sid: SessionId) {
        if let Some(entry) = self.sessions.get(&sid) {
            entry.eviction.evict("node lost");
        }
        self.remote.remove(&sid);
    }

    /// Orders every session this process holds closed for `reason`;
    /// returns how many.
    pub fn evict_all(&self, reason: &'static str) -> usize {
        for entry in self.sessions.values() {
            entry.eviction.evict(reason);
        }
        self.sessions.len()
    }

    /// Removes a session; nothing reaches it any more.
    pub fn close(&mut self, sid: SessionId) -> Option<SessionEntry> {
        self.remote.remove(&sid);
        let entry = self.sessions.remove(&sid);
        shrink_after_crowd(&mut self.sessions);
        shrink_after_crowd(&mut self.remote);
        entry
    }

    /// A live session this process holds.
    pub fn get(&self, sid: SessionId) -> Option<&SessionEntry> {
        self.sessions.get(&sid)
    }

    /// Every live session, this process's and other nodes', sorted by id.
    pub fn sorted(&self) -> Vec<SessionRow<'_>> {
        let mut all: Vec<_> = self
            .sessions
            .iter()
            .map(|(id, e)| SessionRow {
                id: *id,
                peer: &e.peer,
                node_id: &self.node_id,
                connected_at: e.connected_at,
                local: Some(e),
            })
            .chain(self.remote.iter().map(|(id, r)| SessionRow {
                id: *id,
                peer: &r.peer,
                node_id: &r.node_id,
                connected_at: r.connected_at,
                local: None,
            }))
            .collect();
        all.sort_by_key(|r| r.id);
        all
    }

    /// How many sessions are live, this process's and other nodes'.
    pub fn len(&self) -> usize {
        self.sessions.len() + self.remote.len()
    }

    /// Carries out what the rules decided at `at`: items to sessions, then
    /// events to the feed (stamped `at`), each in order; counted in the
    /// metrics only when it happens now.
    pub(super) fn apply(&mut self, fx: Effects, at: SystemTime, tense: Tense<'_>) {
        for notice in fx.notices {
            match notice {
                Notice::Event { to, event } => {
                    // Encoded once, whoever hears it.
                    let item = Outbound::Event(Arc::new(Delivery::new(proto::PeerEvent {
                        kind: Some(event),
                    })));
                    for sid in to {
                        self.deliver(sid, item.clone());
                    }
                }
                Notice::Invite { to, room_id } => self.deliver(to, Outbound::Invite { room_id }),
            }
        }
        for (room_id, kind, event) in fx.events {
            self.emit(room_id, kind, event, at);
        }
        let Tense::Now(metrics) = tense else {
            return;
        };
        for d in fx.dropped {
            metrics
                .pulls_dropped
                .get_or_create(&crate::metrics::DropLabel {
                    method: d.method,
                    reason: d.reason,
                })
                .inc();
            self.drop_log.note(&d);
        }
        if fx.users_replaced > 0 {
            metrics.users_replaced.inc_by(fx.users_replaced);
        }
        if fx.pulls_unserved > 0 {
            metrics.pulls_unserved.inc_by(fx.pulls_unserved);
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
                if !entry.eviction.is_ordered() {
                    tracing::warn!(
                        session.id = sid,
                        "outbound queue full: closing slow consumer"
                    );
                    entry.eviction.evict(super::outbound::SLOW_CONSUMER);
                }
            }
            Err(OutletError::Closed) => {}
        }
    }

    /// Puts one event on the feed and in the log. The sequence number
    /// advances with every event, so watchers see no gaps (but see
    /// [`Registry::reservation_due`] for a start after a crash).
    pub fn emit(&mut self, room_id: String, kind: EventKind, event: Event, at: SystemTime) {
        self.seq += 1;
        let event = proto::WatchEventsResponse {
            seq: self.seq,
            time: Some(timestamp(at)),
            room_id,
            kind: kind.into(),
            event: Some(event),
        };
        self.log.push(&event);
        self.feed.send(event);
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
