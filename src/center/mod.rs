//! The room service: rooms, users, pushers, MSUs and the sessions that carry
//! them. No sockets here: both front ends (WebSocket gateway, gRPC) open a
//! [`SessionHandle`] and call [`SessionHandle::execute`] with protobuf
//! commands; operators call the admin methods on [`Center`].
//!
//! All state lives in one [`State`] behind one mutex. Every operation takes
//! the lock once, applies the rules, queues the resulting events into the
//! affected sessions' bounded outlets with `try_send` (never waiting), and
//! returns. A session whose outlet is full is marked as a slow consumer and
//! closed by its own task; the room carries on.

mod feed;
mod invites;
mod state;

pub use feed::{EventFilter, lagged};
pub use invites::PendingInvites;

use crate::auth::Grant;
use crate::error::CenterError;
use crate::metrics::{Metrics, StateGauges};
use crate::proto::{self, Command, Reply, Transport, command};
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use state::State;

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
}

/// Settings of the room service.
#[derive(Debug, Clone)]
pub struct CenterConfig {
    /// Events buffered per event-feed watcher before it is told it lagged.
    pub feed_capacity: usize,
    /// Most rooms one session may put users into (0: no limit).
    pub max_rooms_per_session: usize,
    /// Most users one session may carry (0: no limit).
    pub max_users_per_session: usize,
}

impl Default for CenterConfig {
    fn default() -> Self {
        Self {
            feed_capacity: 4096,
            max_rooms_per_session: 0,
            max_users_per_session: 0,
        }
    }
}

/// The room service handle. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Center {
    inner: Arc<Inner>,
}

struct Inner {
    /// The only copy of the rooms, users, MSUs and session registry.
    state: Mutex<State>,
    /// Event feed. Capacity `feed_capacity`; a receiver that falls further
    /// behind gets `Lagged(n)`. Senders never wait.
    feed: broadcast::Sender<Arc<proto::WatchEventsResponse>>,
    next_session: AtomicU64,
    metrics: Arc<Metrics>,
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
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::new(config, feed.clone())),
                feed,
                next_session: AtomicU64::new(1),
                metrics,
            }),
        }
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The state gauges for `/metrics`.
    pub fn state_gauges(&self) -> StateGauges {
        self.inner.state.lock().state_gauges()
    }

    /// Opens a session whose outbound items go to `outlet`.
    ///
    /// The returned handle closes the session (with its clean-up) when it is
    /// dropped, so a session task that ends in any way leaves no state behind.
    pub fn open_session(&self, peer: PeerInfo, grant: Grant, outlet: impl Outlet) -> SessionHandle {
        let id = self.inner.next_session.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(SessionStats::default());
        let overflow = CancellationToken::new();
        self.inner.state.lock().open_session(
            id,
            peer,
            Box::new(outlet),
            stats.clone(),
            overflow.clone(),
        );
        SessionHandle {
            center: self.clone(),
            id,
            stats,
            overflow,
            grant,
            close_reason: None,
        }
    }

    /// Subscribes to the event feed (see [`feed`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<proto::WatchEventsResponse>> {
        self.inner.feed.subscribe()
    }

    /// Every room with its counts, sorted by id.
    pub fn list_rooms(&self) -> Vec<proto::RoomSummary> {
        self.inner.state.lock().list_rooms()
    }

    /// One room in detail.
    pub fn get_room(&self, room_id: &str) -> Result<proto::RoomDetail, CenterError> {
        self.inner.state.lock().get_room(room_id)
    }

    /// Every session, sorted by id.
    pub fn list_sessions(&self) -> Vec<proto::SessionInfo> {
        self.inner.state.lock().list_sessions()
    }

    /// Every MSU, sorted by id.
    pub fn list_msus(&self) -> Vec<proto::MsuInfo> {
        self.inner.state.lock().list_msus()
    }

    /// Removes a user; every session of the room (its own too) gets `userLeave`.
    pub fn remove_user(&self, room_id: &str, user_id: &str) -> Result<u32, CenterError> {
        self.inner.state.lock().remove_user(room_id, user_id)
    }

    /// Closes a room; every session gets `userLeave` for each user.
    pub fn close_room(&self, room_id: &str) -> Result<u32, CenterError> {
        self.inner.state.lock().close_room(room_id)
    }

    /// Sends `textMessage` into a room as the system (`user_id` empty) or a user.
    pub fn send_text(
        &self,
        room_id: &str,
        user_id: &str,
        user_name: &str,
        message: &str,
    ) -> Result<u32, CenterError> {
        self.inner
            .state
            .lock()
            .send_text(room_id, user_id, user_name, message)
    }

    /// Counts: (sessions, rooms, users, msus).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        self.inner.state.lock().counts()
    }
}

/// One peer session's access to the center. Dropping it closes the session.
pub struct SessionHandle {
    center: Center,
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

    /// Runs one command from this session's peer.
    pub fn execute(&self, command: Command) -> Result<Reply, CenterError> {
        self.grant
            .permits(&command)
            .map_err(CenterError::Forbidden)?;
        let kind = command
            .kind
            .ok_or_else(|| CenterError::invalid("command", "empty command"))?;
        if let command::Kind::Echo(r) = kind {
            // The heartbeat needs no state: never wait for the lock.
            return Ok(reply(proto::reply::Kind::Echo(proto::EchoResponse {
                data_json: r.data_json,
            })));
        }
        let mut state = self.center.inner.state.lock();
        let result = match kind {
            command::Kind::Echo(_) => {
                return Err(CenterError::Internal("echo handled above".into()));
            }
            command::Kind::RegisterMsu(r) => {
                proto::reply::Kind::RegisterMsu(state.register_msu(self.id, r)?)
            }
            command::Kind::Join(r) => proto::reply::Kind::Join(state.join(self.id, r)?),
            command::Kind::Push(r) => ack(state.push(self.id, r)?),
            command::Kind::PullRemoteStream(r) => ack(state.pull_remote_stream(self.id, r)?),
            command::Kind::UserDisconnect(r) => ack(state.user_disconnect(self.id, r)?),
            command::Kind::UserLeave(r) => ack(state.user_leave(self.id, r)?),
            command::Kind::TextMessage(r) => ack(state.text_message(self.id, r)?),
            command::Kind::UserReconnect(r) => ack(state.user_reconnect(self.id, r)?),
        };
        Ok(reply(result))
    }

    /// Logs an MSU's answer to `invite` (a refusal at warn).
    pub fn invite_answered(&self, room_id: &str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => tracing::debug!(room.id = room_id, "invite accepted"),
            Err(reason) => tracing::warn!(room.id = room_id, %reason, "invite failed"),
        }
    }

    /// Closes the session now, with a reason for the event feed.
    pub fn close(mut self, reason: impl Into<String>) {
        self.close_reason = Some(reason.into());
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let reason = self.close_reason.take().unwrap_or_else(|| "closed".into());
        self.center
            .inner
            .state
            .lock()
            .close_session(self.id, &reason);
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
