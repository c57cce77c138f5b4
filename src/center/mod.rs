//! The room service: rooms, users, pushers, MSUs and the sessions that carry
//! them. No sockets here: both front ends (WebSocket gateway, gRPC) open a
//! [`SessionHandle`] and call [`SessionHandle::execute_then`] with protobuf
//! commands; operators call the admin methods on [`Center`].
//!
//! Two parts with one job each, behind one mutex:
//! - [`rules`]: the rules of PROTOCOL.md §4–§6 as a core that applies a
//!   command to the state and returns its effects (deliveries, feed events);
//! - [`registry`]: the live sessions' outlets and the event feed, which
//!   carries those effects out.
//!
//! One step takes the lock once, applies the rules, queues every resulting
//! item into the affected sessions' bounded outlets with `try_send` (never
//! waiting), queues the reply to the caller in the same step (so no peer
//! gets an answer older than a notification it already has), and returns.
//! A session whose outlet is full is marked as a slow consumer and closed by
//! its own task; the room carries on.

mod feed;
mod invites;
mod registry;
mod rules;

pub use feed::{EventFilter, lagged};
use invites::PendingInvites;
pub use rules::DuplicatePolicy;

use crate::auth::Grant;
use crate::clock::Clock;
use crate::error::CenterError;
use crate::metrics::{Metrics, StateGauges};
use crate::proto::watch_events_response::Event;
use crate::proto::{self, Command, EventKind, Reply, Transport, command};
use parking_lot::Mutex;
pub use registry::Resumed;
use registry::{Registry, SessionEntry};
use rules::{Effects, Rooms, RulesConfig};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

/// Identifies a peer session for the life of the process (never reused).
pub type SessionId = u64;

/// A room event on its way to one or more sessions.
///
/// Shared by every session it goes to; the protoo JSON text is made once, by
/// the first WebSocket session that sends it, and reused by the others.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: proto::PeerEvent,
    /// Cached protoo text of `event`, filled on first use.
    pub json: OnceLock<Utf8Bytes>,
    /// About its size on the wire (its protobuf size), for byte-bounded
    /// queues that take it before its text is made.
    pub size: usize,
}

impl Delivery {
    /// A delivery of `event`.
    pub fn new(event: proto::PeerEvent) -> Self {
        let size = prost::Message::encoded_len(&event);
        Self {
            event,
            json: OnceLock::new(),
            size,
        }
    }
}

/// What the center queues for a session.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A room event.
    Event(Arc<Delivery>),
    /// Ask this session's MSU to serve `room_id` (an `invite` request).
    Invite {
        /// The room.
        room_id: String,
    },
}

impl Outbound {
    /// Roughly what this item costs on the wire (an event's serialized
    /// size; an invite is a small request), for byte-bounded queues.
    pub fn wire_size(&self) -> usize {
        match self {
            Self::Event(d) => d.size,
            Self::Invite { room_id } => 64 + room_id.len(),
        }
    }
}

/// Why an item could not be queued for a session.
#[derive(Debug, PartialEq, Eq)]
pub enum OutletError {
    /// The session's queue is full: it does not keep up.
    Full,
    /// The session's task is gone.
    Closed,
}

/// Where a session receives what the center sends it: the sending half of
/// the session's bounded outbound queue. Implemented for `mpsc::Sender<T>`
/// so each front end can mix center items with its own (responses).
pub trait Outlet: Send + Sync + 'static {
    /// Queues `item` without waiting.
    fn try_deliver(&self, item: Outbound) -> Result<(), OutletError>;
    /// Items queued and not yet taken by the session.
    fn depth(&self) -> usize;
}

impl<T: From<Outbound> + Send + 'static> Outlet for tokio::sync::mpsc::Sender<T> {
    fn try_deliver(&self, item: Outbound) -> Result<(), OutletError> {
        use tokio::sync::mpsc::error::TrySendError;
        self.try_send(T::from(item)).map_err(|e| match e {
            TrySendError::Full(_) => OutletError::Full,
            TrySendError::Closed(_) => OutletError::Closed,
        })
    }

    fn depth(&self) -> usize {
        self.max_capacity() - self.capacity()
    }
}

/// Counters of one session, shared by its task and the center.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Messages received from the peer.
    pub messages_in: AtomicU64,
    /// Messages queued to the peer.
    pub messages_out: AtomicU64,
    /// Unix time (ms) of the last message from the peer.
    pub last_seen_ms: AtomicU64,
}

/// Who a session is, for listings and the event feed.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Peer address (ip:port).
    pub addr: String,
    /// How it is connected.
    pub transport: Transport,
    /// The identity that outlives the connection (PROTOCOL.md §6): token
    /// `sub`, else `?peer=` / `x-peer-id`, else the peer's IP address.
    pub identity: String,
}

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

/// The room service handle. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Center {
    inner: Arc<Inner>,
}

/// The rules' state and the registry, changed together in one step.
struct Shared {
    rooms: Rooms,
    registry: Registry,
}

impl Shared {
    /// Applies `step` to the rules and carries out its effects.
    fn step<T>(
        &mut self,
        metrics: &Metrics,
        step: impl FnOnce(&mut Rooms, &mut Effects) -> T,
    ) -> T {
        let mut fx = Effects::default();
        let out = step(&mut self.rooms, &mut fx);
        self.registry.apply(fx, metrics);
        out
    }
}

struct Inner {
    /// The only copy of the state. Held for one step at a time, never
    /// across an await.
    state: Mutex<Shared>,
    /// Event feed (see [`Registry`]); kept here to subscribe without the lock.
    feed: broadcast::Sender<Arc<proto::WatchEventsResponse>>,
    next_session: AtomicU64,
    metrics: Arc<Metrics>,
    clock: Clock,
}

impl Default for Center {
    fn default() -> Self {
        Self::new(CenterConfig::default())
    }
}

impl Center {
    /// An empty center.
    pub fn new(config: CenterConfig) -> Self {
        let (feed, _) = broadcast::channel(config.feed_capacity.max(16));
        let metrics = Arc::new(Metrics::new());
        let rules = RulesConfig {
            max_rooms_per_session: config.max_rooms_per_session,
            max_users_per_session: config.max_users_per_session,
            reconnect_grace: config.reconnect_grace,
            duplicate_user: config.duplicate_user,
        };
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(Shared {
                    rooms: Rooms::new(rules),
                    registry: Registry::new(feed.clone(), config.event_log_capacity),
                }),
                feed,
                next_session: AtomicU64::new(1),
                metrics,
                clock: config.clock,
            }),
        }
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The state gauges for `/metrics`.
    pub fn state_gauges(&self) -> StateGauges {
        let state = self.inner.state.lock();
        state.registry.gauges(state.rooms.counts())
    }

    fn step<T>(&self, step: impl FnOnce(&mut Rooms, &mut Effects) -> T) -> T {
        self.inner.state.lock().step(&self.inner.metrics, step)
    }

    /// Opens a session whose outbound items go to `outlet`. It takes back
    /// the users an earlier session with the same identity left behind.
    ///
    /// The returned handle closes the session (with its clean-up) when it is
    /// dropped, so a session task that ends in any way leaves no state behind.
    pub fn open_session(&self, peer: PeerInfo, grant: Grant, outlet: impl Outlet) -> SessionHandle {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(SessionStats::default());
        let overflow = CancellationToken::new();
        let mut state = self.inner.state.lock();
        let opened = proto::SessionOpened {
            session_id: id,
            peer_addr: peer.addr.clone(),
            transport: peer.transport.into(),
            peer_id: peer.identity.clone(),
            users_reclaimed: 0,
        };
        let identity = peer.identity.clone();
        state.registry.open(
            id,
            SessionEntry {
                peer,
                outlet: Box::new(outlet),
                stats: stats.clone(),
                overflow: overflow.clone(),
                connected_at: SystemTime::now(),
            },
        );
        let mut fx = Effects::default();
        let reclaimed = state.rooms.open_session(id, &identity, &mut fx);
        // The opening comes first on the feed, then what it took back.
        state.registry.emit(
            String::new(),
            EventKind::SessionOpened,
            Event::SessionOpened(proto::SessionOpened {
                users_reclaimed: reclaimed,
                ..opened
            }),
        );
        state.registry.apply(fx, &self.inner.metrics);
        drop(state);
        if reclaimed > 0 {
            self.inner
                .metrics
                .users_reclaimed
                .inc_by(u64::from(reclaimed));
        }
        SessionHandle {
            center: self.clone(),
            invites: PendingInvites::default(),
            id,
            stats,
            overflow,
            grant,
            close_reason: None,
        }
    }

    /// Users whose reconnect grace ended leave (`userLeave` to their rooms).
    pub fn expire_grace(&self) {
        let now = self.inner.clock.elapsed();
        self.step(|rooms, fx| rooms.expire(now, fx));
    }

    /// Ends reconnect graces on time until `shutdown`: wakes at the next
    /// deadline, and at least once a second of the center's clock.
    pub async fn run_grace_timer(self, shutdown: CancellationToken) {
        let clock = self.inner.clock.clone();
        loop {
            let now = clock.elapsed();
            let next = self.inner.state.lock().rooms.next_deadline();
            let wake = next.map_or(now + Duration::from_secs(1), |d| {
                d.clamp(now, now + Duration::from_secs(1))
            });
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = clock.sleep_until(wake) => self.expire_grace(),
            }
        }
    }

    /// Subscribes to the event feed from now on (see [`feed`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<proto::WatchEventsResponse>> {
        self.inner.feed.subscribe()
    }

    /// Subscribes to the event feed after `after` (a listing's cursor or the
    /// last sequence number seen; `None`: from now on): the kept events
    /// after it, then the live feed, with no gap and no duplicate.
    pub fn resume(&self, after: Option<u64>) -> Result<Resumed, CenterError> {
        self.inner.state.lock().registry.resume(after)
    }

    /// Every room with its counts, sorted by id.
    pub fn list_rooms(&self) -> Vec<proto::RoomSummary> {
        self.list_rooms_at().0
    }

    /// Every room, and the feed's cursor at which the list was taken.
    pub fn list_rooms_at(&self) -> (Vec<proto::RoomSummary>, u64) {
        let state = self.inner.state.lock();
        (state.rooms.list_rooms(), state.registry.cursor())
    }

    /// One room in detail.
    pub fn get_room(&self, room_id: &str) -> Result<proto::RoomDetail, CenterError> {
        Ok(self.get_room_at(room_id)?.0)
    }

    /// One room in detail, and the feed's cursor at which it was read.
    pub fn get_room_at(&self, room_id: &str) -> Result<(proto::RoomDetail, u64), CenterError> {
        let state = self.inner.state.lock();
        Ok((state.rooms.get_room(room_id)?, state.registry.cursor()))
    }

    /// Every session, sorted by id.
    pub fn list_sessions(&self) -> Vec<proto::SessionInfo> {
        self.list_sessions_at().0
    }

    /// Every session, and the feed's cursor at which the list was taken.
    pub fn list_sessions_at(&self) -> (Vec<proto::SessionInfo>, u64) {
        let state = self.inner.state.lock();
        (sessions_of(&state), state.registry.cursor())
    }

    /// Every MSU, sorted by id.
    pub fn list_msus(&self) -> Vec<proto::MsuInfo> {
        msus_of(&self.inner.state.lock())
    }

    /// What the admin page shows, read under one lock so that it is one
    /// moment of the center: the first `max_rooms` rooms (by id) in detail,
    /// every session and MSU, and the feed's cursor to follow on from.
    pub fn overview(&self, max_rooms: usize) -> Overview {
        let state = self.inner.state.lock();
        let summaries = state.rooms.list_rooms();
        Overview {
            rooms_total: summaries.len(),
            rooms: summaries
                .iter()
                .take(max_rooms)
                .filter_map(|r| state.rooms.get_room(&r.room_id).ok())
                .collect(),
            sessions: sessions_of(&state),
            msus: msus_of(&state),
            cursor: state.registry.cursor(),
        }
    }

    /// Removes a user; every session of the room (its own too) gets `userLeave`.
    pub fn remove_user(&self, room_id: &str, user_id: &str) -> Result<u32, CenterError> {
        self.step(|rooms, fx| rooms.remove_user(room_id, user_id, fx))
    }

    /// Closes a room; every session gets `userLeave` for each user.
    pub fn close_room(&self, room_id: &str) -> Result<u32, CenterError> {
        self.step(|rooms, fx| rooms.close_room(room_id, fx))
    }

    /// Sends `textMessage` into a room as the system (`user_id` empty) or a user.
    pub fn send_text(
        &self,
        room_id: &str,
        user_id: &str,
        user_name: &str,
        message: &str,
    ) -> Result<u32, CenterError> {
        self.step(|rooms, fx| rooms.send_text(room_id, user_id, user_name, message, fx))
    }

    /// Counts: (sessions, rooms, users, msus).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let state = self.inner.state.lock();
        let (rooms, users, msus) = state.rooms.counts();
        (state.registry.len(), rooms, users, msus)
    }
}

/// One moment of the center, for the admin page (see [`Center::overview`]).
#[derive(Debug, Clone, Default)]
pub struct Overview {
    /// The first rooms by id, in detail.
    pub rooms: Vec<proto::RoomDetail>,
    /// How many rooms there are in all.
    pub rooms_total: usize,
    /// Every session, sorted by id.
    pub sessions: Vec<proto::SessionInfo>,
    /// Every MSU, sorted by id.
    pub msus: Vec<proto::MsuInfo>,
    /// The feed's sequence number at that moment.
    pub cursor: u64,
}

fn sessions_of(state: &Shared) -> Vec<proto::SessionInfo> {
    state
        .registry
        .sorted()
        .into_iter()
        .map(|(id, s)| {
            let (_, user_count, msu_ids) = state.rooms.session_view(id).unwrap_or_default();
            proto::SessionInfo {
                session_id: id,
                peer_addr: s.peer.addr.clone(),
                transport: s.peer.transport.into(),
                user_count,
                connected_at: Some(timestamp(s.connected_at)),
                messages_in: s.stats.messages_in.load(Ordering::Relaxed),
                messages_out: s.stats.messages_out.load(Ordering::Relaxed),
                msu_ids,
                peer_id: s.peer.identity.clone(),
                queue_depth: u32::try_from(s.outlet.depth()).unwrap_or(u32::MAX),
            }
        })
        .collect()
}

fn msus_of(state: &Shared) -> Vec<proto::MsuInfo> {
    state
        .rooms
        .msus()
        .into_iter()
        .map(|(msu_id, session_id, room_ids, registered_at)| {
            let seen_ms = state
                .registry
                .get(session_id)
                .map_or(0, |s| s.stats.last_seen_ms.load(Ordering::Relaxed));
            let seen = SystemTime::UNIX_EPOCH + Duration::from_millis(seen_ms);
            proto::MsuInfo {
                msu_id,
                session_id,
                room_ids,
                last_seen: Some(timestamp(seen.max(registered_at))),
            }
        })
        .collect()
}

/// One peer session's access to the center. Dropping it closes the session.
pub struct SessionHandle {
    center: Center,
    /// `invite`s sent to this session's MSU and not answered yet.
    invites: PendingInvites,
    id: SessionId,
    stats: Arc<SessionStats>,
    overflow: CancellationToken,
    grant: Grant,
    close_reason: Option<String>,
}

impl SessionHandle {
    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// What this session's peer may do.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.center.inner.metrics
    }

    /// This session's counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    /// Cancelled when the center could not queue an item for this session
    /// (its queue was full): the session must close as a slow consumer.
    pub fn overflow(&self) -> &CancellationToken {
        &self.overflow
    }

    /// Counts one message received from the peer.
    pub fn note_inbound(&self) {
        self.stats.messages_in.fetch_add(1, Ordering::Relaxed);
        self.stats
            .last_seen_ms
            .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }

    /// Counts one message queued to the peer by the front end itself.
    pub fn note_outbound(&self) {
        self.stats.messages_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs one command from this session's peer and hands its result to
    /// `respond` in the same step as the notifications it caused, with the
    /// center's lock held: `respond` queues the reply and must not call back
    /// into the center. So no peer ever gets an answer that describes an
    /// older state than a notification it already received.
    pub fn execute_then(&self, command: Command, respond: impl FnOnce(Result<Reply, CenterError>)) {
        if let Err(e) = self.grant.permits(&command) {
            return respond(Err(CenterError::Forbidden(e)));
        }
        let Some(kind) = command.kind else {
            return respond(Err(CenterError::invalid("command", "empty command")));
        };
        if let command::Kind::Echo(r) = kind {
            // The heartbeat needs no state: never wait for the lock.
            return respond(Ok(reply(proto::reply::Kind::Echo(proto::EchoResponse {
                data_json: r.data_json,
            }))));
        }
        let sid = self.id;
        let now = SystemTime::now();
        let mut state = self.center.inner.state.lock();
        let result = state.step(&self.center.inner.metrics, |rooms, fx| {
            Ok(match kind {
                command::Kind::Echo(r) => proto::reply::Kind::Echo(proto::EchoResponse {
                    data_json: r.data_json,
                }),
                command::Kind::RegisterMsu(r) => {
                    proto::reply::Kind::RegisterMsu(rooms.register_msu(sid, r, now, fx)?)
                }
                command::Kind::Join(r) => proto::reply::Kind::Join(rooms.join(sid, r, fx)?),
                command::Kind::Push(r) => ack(rooms.push(sid, r, fx)?),
                command::Kind::PullRemoteStream(r) => ack(rooms.pull_remote_stream(sid, r, fx)?),
                command::Kind::UserDisconnect(r) => ack(rooms.user_disconnect(sid, r, fx)?),
                command::Kind::UserLeave(r) => ack(rooms.user_leave(sid, r, fx)?),
                command::Kind::TextMessage(r) => ack(rooms.text_message(sid, r, fx)?),
                command::Kind::UserReconnect(r) => ack(rooms.user_reconnect(sid, r, fx)?),
            })
        });
        respond(result.map(reply));
        drop(state);
    }

    /// Runs one command and returns its result (for callers that do not
    /// queue replies, such as tests of the rules).
    pub fn execute(&self, command: Command) -> Result<Reply, CenterError> {
        let mut out = Err(CenterError::Internal("no result".into()));
        self.execute_then(command, |r| out = r);
        out
    }

    /// Records an `invite` for `room_id` this session's MSU must answer by
    /// `deadline`; returns the request id to send it with.
    pub fn invite_sent(&self, room_id: String, deadline: tokio::time::Instant) -> u64 {
        self.invites.start(room_id, deadline)
    }

    /// The MSU's answer to invite `id`: a refusal (`Err` with its reason)
    /// moves the room to another live MSU. Answers to no pending invite are
    /// logged and ignored.
    pub fn invite_answered(&self, id: u64, outcome: Result<(), String>) {
        match self.invites.answer(id) {
            Some(room_id) => self.invite_outcome(&room_id, outcome),
            None => tracing::debug!(id, "answer to no pending invite"),
        }
    }

    fn invite_outcome(&self, room_id: &str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => tracing::debug!(room.id = room_id, "invite accepted"),
            Err(reason) => {
                tracing::warn!(room.id = room_id, %reason, "invite failed: the room moves to another MSU");
                let sid = self.id;
                self.center
                    .step(|rooms, fx| rooms.invite_failed(room_id, sid, fx));
            }
        }
    }

    /// The per-session checks both front ends run once a second: invites
    /// not answered in time move their rooms; a session whose token expired
    /// must close, and this returns why.
    pub fn tick(&self, now: tokio::time::Instant) -> Option<&'static str> {
        for room_id in self.invites.expire(now) {
            self.invite_outcome(&room_id, Err("not answered in time".into()));
        }
        if self.grant.is_expired(SystemTime::now()) {
            tracing::info!("token expired: closing");
            return Some("token expired");
        }
        None
    }

    /// Closes the session now, with a reason for the event feed.
    pub fn close(mut self, reason: impl Into<String>) {
        self.close_reason = Some(reason.into());
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let reason = self.close_reason.take().unwrap_or_else(|| "closed".into());
        let sid = self.id;
        let now = self.center.inner.clock.elapsed();
        let mut state = self.center.inner.state.lock();
        state.registry.close(sid);
        state.step(&self.center.inner.metrics, |rooms, fx| {
            rooms.close_session(sid, now, fx);
            fx.events.push((
                String::new(),
                EventKind::SessionClosed,
                Event::SessionClosed(proto::SessionClosed {
                    session_id: sid,
                    reason,
                }),
            ));
        });
    }
}

fn reply(kind: proto::reply::Kind) -> Reply {
    Reply { kind: Some(kind) }
}

fn ack((): ()) -> proto::reply::Kind {
    proto::reply::Kind::Ack(proto::Ack {})
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A protobuf timestamp for `t`.
pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    prost_types::Timestamp {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}
