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

mod entry;
mod feed;
pub mod ids;
mod invites;
mod registry;
mod rules;
mod snapshot;
pub mod store;

pub use entry::{Entry, FORMAT, lease_of};
pub use feed::{EventFilter, lagged};
pub use ids::{SessionId, node_of};
use invites::PendingInvites;
pub use rules::DuplicatePolicy;
pub use store::{At, MemoryStore, Store};

use crate::auth::Grant;
use crate::clock::Clock;
use crate::cluster_proto::{self as cp, entry::Kind};
use crate::error::CenterError;
use crate::metrics::{Metrics, StateGauges};
use crate::proto::{self, Command, Reply, Transport, command};
use entry::{Outcome, Tense};
use parking_lot::Mutex;
pub use registry::Resumed;
use registry::{Registry, SessionEntry};
use rules::{Rules, RulesConfig};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::{broadcast, oneshot};
use tokio_util::sync::CancellationToken;

/// Gives a map's memory back once it holds a small fraction of what it
/// once did (a crowd left), so the heap can be trimmed; rare enough to cost
/// nothing in steady state.
pub(crate) fn shrink_after_crowd<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 8 {
        map.shrink_to_fit();
    }
}

/// A room event on its way to one or more sessions.
///
/// Shared by every session it goes to. The center queues it as a value; a
/// front end encodes it in its own task, outside the center's lock, and the
/// first one to do so leaves its encoding here for the others (one encoding
/// per room broadcast).
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: proto::PeerEvent,
    /// The event as text on the wire (protoo JSON), filled on first use.
    pub encoded: OnceLock<bytes::Bytes>,
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
            encoded: OnceLock::new(),
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

/// The center's order to a session's task to close, with why: its node
/// lost its place in the cluster, its state went stale. Told once; the
/// first reason stays.
#[derive(Debug, Default)]
pub struct Eviction {
    token: CancellationToken,
    reason: OnceLock<&'static str>,
}

impl Eviction {
    /// Orders the session closed for `reason`.
    pub fn evict(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Resolves when the session must close, with why.
    pub async fn evicted(&self) -> &'static str {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or("closed by the center")
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
    /// Which process of the peer this is (`?incarnation=`,
    /// `x-peer-incarnation` or the token's claim; "" when none is given).
    /// Another incarnation under the same identity means the old process
    /// is gone, and its users with it.
    pub incarnation: String,
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

/// The state at one moment ([`Center::freeze`]), not yet a snapshot.
pub struct FrozenState {
    after: String,
    rules: snapshot::FrozenRules,
    registry: registry::FrozenRegistry,
}

impl FrozenState {
    /// The snapshot message (the costly part: every user copied out).
    pub fn into_snapshot(self) -> cp::Snapshot {
        let mut snap = cp::Snapshot {
            after: self.after,
            ..Default::default()
        };
        self.rules.write(&mut snap);
        self.registry.write(&mut snap);
        snap
    }
}

/// An entry of the shared log this build cannot read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unreadable log entry: {0}")]
pub struct UnknownEntry(pub String);

/// Who waits for an entry to be applied.
enum Waiter {
    /// Nobody.
    None,
    /// A peer's command: its reply is queued in the step that applies it.
    Reply(Box<dyn FnOnce(Result<Reply, CenterError>) + Send>),
    /// An operator action.
    Count(oneshot::Sender<Result<u32, CenterError>>),
    /// The grace timer.
    Done(oneshot::Sender<()>),
    /// A session's opening: if it cannot be recorded, the session must
    /// close (it could do nothing), with why.
    Opened(Arc<Eviction>),
    /// A session's closing: if it cannot be recorded now, it is kept and
    /// recorded when the store takes it again ([`Center::retry_closings`]),
    /// so its users get their grace instead of staying bound to a session
    /// that is gone.
    Closed(std::sync::Weak<Inner>, SessionId, String),
}

impl Waiter {
    fn complete(self, outcome: Outcome) {
        match (self, outcome) {
            (Self::Reply(respond), Outcome::Reply(r)) => respond(r),
            (Self::Count(tx), Outcome::Count(r)) => {
                let _ = tx.send(r);
            }
            (Self::Done(tx), _) => {
                let _ = tx.send(());
            }
            (Self::Reply(respond), _) => {
                respond(Err(CenterError::Internal("the entry had no reply".into())))
            }
            (Self::Count(tx), _) => {
                let _ = tx.send(Err(CenterError::Internal("the entry had no count".into())));
            }
            // A local store that could not record the entry says so here.
            (waiter @ (Self::Opened(_) | Self::Closed(..)), Outcome::Count(Err(e))) => {
                waiter.fail(e);
            }
            (Self::None | Self::Opened(_) | Self::Closed(..), _) => {}
        }
    }

    fn fail(self, e: CenterError) {
        match self {
            Self::Reply(respond) => respond(Err(e)),
            Self::Count(tx) => {
                let _ = tx.send(Err(e));
            }
            Self::Opened(eviction) => eviction.evict("state store unavailable"),
            // The session's lease was lost: "node lost" ended it already.
            Self::Closed(..) if e == CenterError::LeaseLost => {}
            Self::Closed(inner, sid, reason) => {
                if let Some(inner) = inner.upgrade() {
                    inner.unrecorded_closings.lock().push((sid, reason));
                }
            }
            Self::Done(_) | Self::None => {}
        }
    }
}

/// How long an operator action waits for the shared log to apply it.
const OPERATOR_WAIT: Duration = Duration::from_secs(10);

/// The room service handle. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Center {
    inner: Arc<Inner>,
}

/// The rules' state and the registry, changed together in one step.
struct Shared {
    rooms: Rules,
    registry: Registry,
}

impl Shared {
    /// The state at this moment, for a snapshot taken after log entry
    /// `after` ("" for a local store): the rooms are shared, not copied.
    fn freeze(&self, after: &str) -> FrozenState {
        FrozenState {
            after: after.to_owned(),
            rules: self.rooms.freeze(),
            registry: self.registry.freeze(),
        }
    }
}

struct Inner {
    /// The only copy of the state. Held for one step at a time, never
    /// across an await.
    state: Mutex<Shared>,
    /// Event feed (see [`Registry`]); kept here to subscribe without the lock.
    feed: broadcast::Sender<Arc<proto::WatchEventsResponse>>,
    next_session: AtomicU64,
    /// Recordings and playbacks started here, for their ids.
    next_recording: AtomicU64,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// What keeps the log of entries (memory, the state directory, Redis).
    store: Arc<dyn Store>,
    /// Entries this node appended, by origin number, whose maker waits.
    pending: Mutex<HashMap<u64, Waiter>>,
    /// Session closings the store could not take yet (see [`Waiter::Closed`]).
    unrecorded_closings: Mutex<Vec<(SessionId, String)>>,
    next_origin: AtomicU64,
}

impl Default for Center {
    fn default() -> Self {
        Self::new(CenterConfig::default())
    }
}

impl Center {
    /// An empty center holding its state in memory.
    pub fn new(config: CenterConfig) -> Self {
        Self::with_store(config, Arc::new(MemoryStore))
    }

    /// An empty center whose entries `store` keeps. A shared store's node
    /// applies what the log hands back ([`Center::apply_logged`]); a durable
    /// local one loads what it kept first ([`Center::load_snapshot`],
    /// [`Center::replay`]).
    pub fn with_store(config: CenterConfig, store: Arc<dyn Store>) -> Self {
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
                    rooms: Rules::new(rules),
                    registry: Registry::new(
                        store.node_id().unwrap_or_default().to_owned(),
                        feed.clone(),
                        config.event_log_capacity,
                    ),
                }),
                feed,
                next_session: AtomicU64::new(1),
                next_recording: AtomicU64::new(1),
                metrics,
                clock: config.clock,
                store,
                pending: Mutex::new(HashMap::new()),
                unrecorded_closings: Mutex::new(Vec::new()),
                next_origin: AtomicU64::new(1),
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

    /// This node's id in a cluster ("" for a single center).
    pub fn node_id(&self) -> &str {
        self.inner.store.node_id().unwrap_or_default()
    }

    /// Whether the state store answers (always, in memory).
    pub fn store_ready(&self) -> bool {
        self.inner.store.ready()
    }

    /// Whether this process may serve sessions (see [`Store::serving`]).
    pub fn serving(&self) -> bool {
        self.inner.store.serving()
    }

    /// Whether entries go through a log other nodes share (then they are
    /// applied when the log hands them back, not in the step that makes them).
    fn shared(&self) -> bool {
        self.inner.store.node_id().is_some()
    }

    /// Every session id known here (this node's and, in a cluster, the
    /// others'), for lease checks.
    pub fn session_ids(&self) -> Vec<SessionId> {
        let state = self.inner.state.lock();
        let mut ids: Vec<SessionId> = state
            .registry
            .ids()
            .chain(state.rooms.session_ids())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Waits until this node has applied every change made anywhere in the
    /// cluster before the call (at once for a single center), so that a
    /// listing taken next is not older than what a peer of another node was
    /// already told. Bounded: the store may be unreachable.
    pub async fn settle(&self) -> Result<(), CenterError> {
        if !self.shared() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        self.submit(Kind::Barrier(cp::Barrier {}), Waiter::Done(tx));
        match tokio::time::timeout(OPERATOR_WAIT, rx).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(CenterError::StoreUnavailable),
        }
    }

    /// Makes a change nobody waits for (a cluster's "node lost").
    pub fn append_entry(&self, kind: Kind) {
        self.submit(kind, Waiter::None);
    }

    /// The time graces are counted in: about Unix time, from the center's
    /// clock for a local store, from the system in a cluster (where entries
    /// carry the log's time).
    fn grace_now(&self) -> Duration {
        if self.shared() {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
        } else {
            self.inner.clock.since_epoch()
        }
    }

    /// When an entry made now by a local store is applied.
    fn now(&self) -> At {
        At {
            grace: self.inner.clock.since_epoch(),
            wall: SystemTime::now(),
        }
    }

    /// Applies `kind` now, with the state lock held: the store takes it
    /// first (a durable one records it; if it cannot, nothing changes and
    /// the maker hears why), then the rules apply it.
    fn apply_local(&self, state: &mut Shared, kind: Kind) -> Outcome {
        let at = self.now();
        let entry = Entry {
            node_id: String::new(),
            origin_seq: 0,
            node_number: lease_of(&kind).unwrap_or_else(|| self.inner.store.node_number()),
            kind: Some(kind),
            format: FORMAT,
        };
        if let Err(e) = self.inner.store.append(&entry, at) {
            return match entry.kind {
                Some(Kind::PeerCommand(_)) => Outcome::Reply(Err(e)),
                _ => Outcome::Count(Err(e)),
            };
        }
        let Some(kind) = entry.kind else {
            return Outcome::Done;
        };
        let outcome = state.apply("", kind, at, Tense::Now(&self.inner.metrics));
        if self.inner.store.wants_snapshot() {
            self.inner.store.compact(state.freeze(""));
        }
        outcome
    }

    /// Makes a change: applied at once by a single center (with `waiter`
    /// completed in the same step), appended to the shared log by a cluster
    /// node (`waiter` completed when the log hands it back).
    fn submit(&self, kind: Kind, waiter: Waiter) {
        match self.inner.store.node_id() {
            None => {
                let mut state = self.inner.state.lock();
                let outcome = self.apply_local(&mut state, kind);
                waiter.complete(outcome);
            }
            Some(node_id) => {
                let origin_seq = self.inner.next_origin.fetch_add(1, Ordering::Relaxed);
                if !matches!(waiter, Waiter::None) {
                    self.inner.pending.lock().insert(origin_seq, waiter);
                }
                // A session's entry goes under the lease it was opened
                // with: if that lease is lost, the log refuses it.
                let entry = Entry {
                    node_id: node_id.to_owned(),
                    origin_seq,
                    node_number: lease_of(&kind).unwrap_or_else(|| self.inner.store.node_number()),
                    kind: Some(kind),
                    format: FORMAT,
                };
                let at = At {
                    grace: self.grace_now(),
                    wall: SystemTime::now(),
                };
                if let Err(e) = self.inner.store.append(&entry, at) {
                    self.abandon(origin_seq, e);
                }
            }
        }
    }

    /// The log could not take entry `origin_seq` of this node: whoever waits
    /// for it gets `e` (it will not be applied).
    pub fn abandon(&self, origin_seq: u64, e: CenterError) {
        let waiter = self.inner.pending.lock().remove(&origin_seq);
        if let Some(w) = waiter {
            w.fail(e);
        }
    }

    /// The whole state as applied so far, for a cluster snapshot taken
    /// after log entry `after`. Holds the state lock only to share the
    /// rooms and copy the sessions and feed; [`FrozenState::into_snapshot`]
    /// does the rest without it.
    pub fn freeze(&self, after: &str) -> FrozenState {
        self.inner.state.lock().freeze(after)
    }

    /// Replaces the state by a snapshot's, before a joining node (or a
    /// restarting center) replays the log after it and serves anyone.
    pub fn load_snapshot(&self, snap: &cp::Snapshot) {
        let mut state = self.inner.state.lock();
        state.rooms.load(snap);
        state.registry.load(snap);
    }

    /// Applies an entry a durable local store kept, as it was applied
    /// before (at `at`), before this center serves anyone. Nothing is
    /// recorded again.
    pub fn replay(&self, entry: Entry, at: At) {
        let Some(kind) = entry.kind else {
            return;
        };
        let mut state = self.inner.state.lock();
        state.apply("", kind, at, Tense::Past);
    }

    /// After a restart: every session the loaded state lists belonged to
    /// the former process and is gone. Each one's closing is applied (and
    /// kept) now, so its users wait out the reconnect grace for their peer
    /// to come back under its identity. Returns how many there were.
    pub fn end_former_sessions(&self) -> usize {
        self.end_sessions_held_elsewhere(|_| true, "center restarted")
    }

    /// Ends (records the closing of) every session the state lists that
    /// this process does not hold and `whose` accepts; returns how many.
    fn end_sessions_held_elsewhere(
        &self,
        whose: impl Fn(SessionId) -> bool,
        reason: &str,
    ) -> usize {
        let former: Vec<SessionId> = {
            let state = self.inner.state.lock();
            let mut ids: Vec<SessionId> = state
                .rooms
                .session_ids()
                .into_iter()
                .chain(state.registry.ids())
                .filter(|sid| whose(*sid) && !state.registry.is_local(*sid))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids
        };
        for sid in &former {
            self.close_recorded(*sid, reason.to_owned());
        }
        former.len()
    }

    /// Closes every session this process holds, for `reason` (its node lost
    /// its place in the cluster, or its state went stale): their peers
    /// reconnect, elsewhere if they can. Returns how many.
    pub fn evict_local_sessions(&self, reason: &'static str) -> usize {
        self.inner.state.lock().registry.evict_all(reason)
    }

    /// Hands the store the state as it is now, to keep as a snapshot (a
    /// state directory's log before it can then go).
    pub fn compact_store(&self) {
        // Under the lock: no entry may fall between the state frozen and
        // the store starting its next log after it.
        let state = self.inner.state.lock();
        self.inner.store.compact(state.freeze(""));
    }

    /// After a cluster node rejoined: the sessions the log still lists as
    /// this node's (`number`) but that it no longer holds end now, as their
    /// closings could not be recorded while it was out. Returns how many.
    pub fn end_own_former_sessions(&self, number: u32) -> usize {
        self.end_sessions_held_elsewhere(|sid| node_of(sid) == number, "node rejoined")
    }

    /// The process is stopping: the store makes everything durable (a
    /// state directory writes a snapshot of the final state).
    pub fn close_store(&self) -> Result<(), CenterError> {
        let frozen = self.freeze("");
        self.inner.store.close(frozen)
    }

    /// Applies an entry the shared log handed back, at `unix_ms` (the log's
    /// time for it). Every node applies every entry in the log's order; the
    /// node that made it answers its maker in the same step. An entry this
    /// build cannot read (a newer format, a kind it does not know) is
    /// refused, never skipped: skipping it would leave this node's state
    /// apart from the others'.
    pub fn apply_logged(&self, entry: Entry, unix_ms: u64) -> Result<(), UnknownEntry> {
        self.apply_from_log(entry, unix_ms, Tense::Now(&self.inner.metrics))
    }

    /// Applies an entry of the shared log that happened before this node
    /// caught up (joining, or rejoining from the snapshot), as
    /// [`Center::apply_logged`] does, but quietly: it is the past, logged
    /// and counted when it happened.
    pub fn catch_up_logged(&self, entry: Entry, unix_ms: u64) -> Result<(), UnknownEntry> {
        self.apply_from_log(entry, unix_ms, Tense::Past)
    }

    fn apply_from_log(
        &self,
        entry: Entry,
        unix_ms: u64,
        tense: Tense<'_>,
    ) -> Result<(), UnknownEntry> {
        if entry.format > FORMAT {
            return Err(UnknownEntry(format!(
                "format {} (this build reads {FORMAT})",
                entry.format
            )));
        }
        let Some(kind) = entry.kind else {
            return Err(UnknownEntry("a kind this build does not know".into()));
        };
        let wall = SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms);
        let at = At {
            grace: Duration::from_millis(unix_ms),
            wall,
        };
        // Its maker waits here if it came from one of this process's leases
        // (the current one, or one lost after the entry was appended).
        let mine = self.shared() && self.inner.store.owns_lease(entry.node_number);
        let mut state = self.inner.state.lock();
        let outcome = state.apply(&entry.node_id, kind, at, tense);
        if mine {
            let waiter = self.inner.pending.lock().remove(&entry.origin_seq);
            if let Some(w) = waiter {
                w.complete(outcome);
            }
        }
        Ok(())
    }

    /// Makes an operator change and waits for its count (bounded in a
    /// cluster: the store may be unreachable).
    async fn operator(&self, kind: Kind) -> Result<u32, CenterError> {
        let (tx, rx) = oneshot::channel();
        self.submit(kind, Waiter::Count(tx));
        match tokio::time::timeout(OPERATOR_WAIT, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(CenterError::StoreUnavailable),
            Err(_) => Err(CenterError::StoreUnconfirmed),
        }
    }

    /// Opens a session whose outbound items go to `outlet`. It takes back
    /// the users an earlier session with the same identity left behind.
    ///
    /// The returned handle closes the session (with its clean-up) when it is
    /// dropped, so a session task that ends in any way leaves no state behind.
    pub fn open_session(&self, peer: PeerInfo, grant: Grant, outlet: impl Outlet) -> SessionHandle {
        let number = self.inner.store.node_number();
        let id = ids::session_id(
            number,
            self.inner.next_session.fetch_add(1, Ordering::Relaxed),
        );
        let stats = Arc::new(SessionStats::default());
        let overflow = CancellationToken::new();
        let eviction = Arc::new(Eviction::default());
        let opened = cp::SessionOpen {
            session_id: id,
            peer_addr: peer.addr.clone(),
            transport: peer.transport.into(),
            peer_id: peer.identity.clone(),
            incarnation: peer.incarnation.clone(),
        };
        // Registered before its opening is applied, so that what the opening
        // takes back reaches it.
        self.inner.state.lock().registry.open(
            id,
            SessionEntry {
                peer,
                outlet: Box::new(outlet),
                stats: stats.clone(),
                overflow: overflow.clone(),
                eviction: eviction.clone(),
                connected_at: SystemTime::now(),
            },
        );
        self.submit(Kind::SessionOpen(opened), Waiter::Opened(eviction.clone()));
        SessionHandle {
            center: self.clone(),
            invites: PendingInvites::default(),
            id,
            stats,
            overflow,
            eviction,
            grant,
            close_reason: None,
        }
    }

    /// Records that session `sid` ended, now or (if the store cannot take
    /// it now) once it can: a closing is never lost, and applying one twice
    /// changes nothing.
    fn close_recorded(&self, sid: SessionId, reason: String) {
        self.submit(
            Kind::SessionClose(cp::SessionClose {
                session_id: sid,
                reason: reason.clone(),
            }),
            Waiter::Closed(Arc::downgrade(&self.inner), sid, reason),
        );
    }

    /// Session closings waiting for the store to take them.
    pub fn unrecorded_closings(&self) -> usize {
        self.inner.unrecorded_closings.lock().len()
    }

    /// Records again the session closings the store could not take (an
    /// outage): called every second by the grace timer. Returns how many
    /// were tried.
    pub fn retry_closings(&self) -> usize {
        if !self.store_ready() {
            return 0;
        }
        let closings = std::mem::take(&mut *self.inner.unrecorded_closings.lock());
        let n = closings.len();
        if n > 0 {
            tracing::info!(
                sessions = n,
                "recording the closings of sessions that ended while the state store was unavailable"
            );
        }
        for (sid, reason) in closings {
            self.close_recorded(sid, reason);
        }
        n
    }

    /// Users whose reconnect grace ended leave (`userLeave` to their rooms).
    /// In a cluster this is an entry of the log; the returned receiver
    /// resolves when it was applied (at once for a single center).
    pub fn expire_grace(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(Kind::ExpireGrace(cp::ExpireGrace {}), Waiter::Done(tx));
        rx
    }

    /// Ends reconnect graces on time until `shutdown`: wakes at the next
    /// deadline, and at least once a second of the center's clock.
    pub async fn run_grace_timer(self, shutdown: CancellationToken) {
        let clock = self.inner.clock.clone();
        loop {
            self.retry_closings();
            let now = self.grace_now();
            let next = self.inner.state.lock().rooms.next_deadline();
            if self.shared() {
                // Every node may append the expiry; applying it twice is a no-op.
                if next.is_some_and(|d| d <= now) {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        _ = tokio::time::timeout(OPERATOR_WAIT, self.expire_grace()) => {}
                    }
                }
                let wait = next.map_or(Duration::from_secs(1), |d| {
                    d.saturating_sub(now)
                        .clamp(Duration::from_millis(10), Duration::from_secs(1))
                });
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
                continue;
            }
            let wait = next.map_or(Duration::from_secs(1), |d| {
                d.saturating_sub(now).min(Duration::from_secs(1))
            });
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = clock.sleep(wait) => drop(self.expire_grace()),
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

    /// The media relays of `room_id` (every room's when empty), sorted by
    /// room and publisher.
    pub fn list_relays(&self, room_id: &str) -> Vec<proto::Relay> {
        self.inner.state.lock().rooms.relays(room_id)
    }

    /// Starts recording `room_id` (see `rules/recordings.rs`) as
    /// `recording_id`, or under a new id when it is empty: the start time
    /// in ms, this node's number and a count, so no two ever meet.
    pub async fn start_recording(
        &self,
        room_id: &str,
        recording_id: &str,
    ) -> Result<proto::Recording, CenterError> {
        let id = if recording_id.is_empty() {
            self.new_id("rec")
        } else {
            recording_id.to_owned()
        };
        self.operator(Kind::StartRecording(proto::StartRecordingRequest {
            room_id: room_id.to_owned(),
            recording_id: id.clone(),
        }))
        .await?;
        self.recording(&id)
    }

    /// Stops the recording of `room_id`; returns it as it stands.
    pub async fn stop_recording(&self, room_id: &str) -> Result<proto::Recording, CenterError> {
        self.operator(Kind::StopRecording(proto::StopRecordingRequest {
            room_id: room_id.to_owned(),
        }))
        .await?;
        // The rules refused unless one ran: the one stopped last is it.
        self.list_recordings(room_id)
            .into_iter()
            .filter(|r| r.state() == proto::RecordingState::Stopped)
            .max_by_key(|r| r.stopped_at.map(|t| (t.seconds, t.nanos)))
            .ok_or_else(|| CenterError::Internal(format!("room {room_id}: no stopped recording")))
    }

    /// Deletes stopped recording `recording_id`; whether its MSU was told
    /// to remove the files.
    pub async fn delete_recording(&self, recording_id: &str) -> Result<bool, CenterError> {
        let told = self
            .operator(Kind::DeleteRecording(proto::DeleteRecordingRequest {
                recording_id: recording_id.to_owned(),
            }))
            .await?;
        Ok(told > 0)
    }

    /// The recordings of `room_id` (empty: all), sorted by id.
    pub fn list_recordings(&self, room_id: &str) -> Vec<proto::Recording> {
        self.inner.state.lock().rooms.recordings(room_id)
    }

    /// A new id: `prefix`, the time in ms, this node's number and a count,
    /// so no two ever meet.
    fn new_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}-{}",
            unix_ms(SystemTime::now()),
            self.inner.store.node_number(),
            self.inner.next_recording.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Starts playback `r` (see `rules/playbacks.rs`); an empty
    /// `playback_id` gets a new one.
    pub async fn start_playback(
        &self,
        mut r: proto::StartPlaybackRequest,
    ) -> Result<proto::Playback, CenterError> {
        if r.playback_id.is_empty() {
            r.playback_id = self.new_id("play");
        }
        let id = r.playback_id.clone();
        self.operator(Kind::StartPlayback(r)).await?;
        self.inner
            .state
            .lock()
            .rooms
            .playbacks
            .get(&id)
            .cloned()
            // Over already (a file that could not be read ends at once).
            .ok_or_else(|| CenterError::NotFound(format!("playback {id} is over already")))
    }

    /// Stops playback `playback_id`.
    pub async fn stop_playback(&self, playback_id: &str) -> Result<(), CenterError> {
        self.operator(Kind::StopPlayback(proto::StopPlaybackRequest {
            playback_id: playback_id.to_owned(),
        }))
        .await?;
        Ok(())
    }

    /// The running playbacks, sorted by id.
    pub fn list_playbacks(&self) -> Vec<proto::Playback> {
        self.inner.state.lock().rooms.playbacks()
    }

    fn recording(&self, id: &str) -> Result<proto::Recording, CenterError> {
        self.inner
            .state
            .lock()
            .rooms
            .recordings
            .get(id)
            .cloned()
            .ok_or_else(|| CenterError::NotFound(format!("recording not found: {id}")))
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
    pub async fn remove_user(&self, room_id: &str, user_id: &str) -> Result<u32, CenterError> {
        self.operator(Kind::RemoveUser(proto::RemoveUserRequest {
            room_id: room_id.to_owned(),
            user_id: user_id.to_owned(),
        }))
        .await
    }

    /// Closes a room; every session gets `userLeave` for each user.
    pub async fn close_room(&self, room_id: &str) -> Result<u32, CenterError> {
        self.operator(Kind::CloseRoom(proto::CloseRoomRequest {
            room_id: room_id.to_owned(),
        }))
        .await
    }

    /// Sends `textMessage` into a room as the system (`user_id` empty) or a user.
    pub async fn send_text(
        &self,
        room_id: &str,
        user_id: &str,
        user_name: &str,
        message: &str,
    ) -> Result<u32, CenterError> {
        self.operator(Kind::SendText(proto::SendTextMessageRequest {
            room_id: room_id.to_owned(),
            user_id: user_id.to_owned(),
            user_name: user_name.to_owned(),
            message: message.to_owned(),
        }))
        .await
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
        .map(|row| {
            let (_, user_count, msu_ids) = state.rooms.session_view(row.id).unwrap_or_default();
            let stat = |f: fn(&SessionStats) -> &AtomicU64| {
                row.local.map_or(0, |e| f(&e.stats).load(Ordering::Relaxed))
            };
            proto::SessionInfo {
                session_id: row.id,
                peer_addr: row.peer.addr.clone(),
                transport: row.peer.transport.into(),
                user_count,
                connected_at: Some(timestamp(row.connected_at)),
                messages_in: stat(|s| &s.messages_in),
                messages_out: stat(|s| &s.messages_out),
                msu_ids,
                peer_id: row.peer.identity.clone(),
                queue_depth: row
                    .local
                    .map_or(0, |e| u32::try_from(e.outlet.depth()).unwrap_or(u32::MAX)),
                node_id: row.node_id.to_owned(),
                incarnation: row.peer.incarnation.clone(),
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

/// What queuing a reply to a session's peer needs, detached from the
/// session's handle: a cluster node queues a reply when the shared log
/// hands the command back, after the front end moved on.
#[derive(Clone)]
pub struct ReplyTally {
    stats: Arc<SessionStats>,
    overflow: CancellationToken,
    metrics: Arc<Metrics>,
}

impl ReplyTally {
    /// Counts a reply queued to the peer; a full queue makes the session a
    /// slow consumer.
    pub fn queued(&self, result: Result<(), OutletError>) {
        match result {
            Ok(()) => {
                self.stats.messages_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(OutletError::Full) => self.overflow.cancel(),
            Err(OutletError::Closed) => {}
        }
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// One peer session's access to the center. Dropping it closes the session.
pub struct SessionHandle {
    center: Center,
    /// `invite`s sent to this session's MSU and not answered yet.
    invites: PendingInvites,
    id: SessionId,
    stats: Arc<SessionStats>,
    overflow: CancellationToken,
    eviction: Arc<Eviction>,
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

    /// What a reply queued later (see [`SessionHandle::execute_then`]) needs.
    pub fn tally(&self) -> ReplyTally {
        ReplyTally {
            stats: self.stats.clone(),
            overflow: self.overflow.clone(),
            metrics: self.center.inner.metrics.clone(),
        }
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

    /// Resolves when the center orders this session closed (see
    /// [`Eviction`]), with the reason to close it with.
    pub async fn evicted(&self) -> &'static str {
        self.eviction.evicted().await
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
    ///
    /// In a cluster the command is appended to the shared log and `respond`
    /// runs when this node applies it, hence `Send + 'static`.
    pub fn execute_then(
        &self,
        command: Command,
        respond: impl FnOnce(Result<Reply, CenterError>) + Send + 'static,
    ) {
        if let Err(e) = self.grant.permits(&command) {
            return respond(Err(CenterError::Forbidden(e)));
        }
        let Some(kind) = command.kind else {
            return respond(Err(CenterError::invalid("command", "empty command")));
        };
        if let command::Kind::Echo(r) = &kind {
            let echo = reply(proto::reply::Kind::Echo(proto::EchoResponse {
                data_json: r.data_json.clone(),
            }));
            if !self.center.shared() {
                // The heartbeat needs no state: never wait for the lock.
                return respond(Ok(echo));
            }
            // A cluster node answers it in the log's order, so an echo stays
            // a barrier (everything due to this session before it arrives
            // first); but the heartbeat never fails for want of the store.
            let entry = Kind::PeerCommand(cp::PeerCommand {
                session_id: self.id,
                command: Some(Command { kind: Some(kind) }),
            });
            let respond = move |r: Result<Reply, CenterError>| {
                respond(r.or(Ok(echo)));
            };
            return self.center.submit(entry, Waiter::Reply(Box::new(respond)));
        }
        let entry = Kind::PeerCommand(cp::PeerCommand {
            session_id: self.id,
            command: Some(Command { kind: Some(kind) }),
        });
        if self.center.shared() {
            return self.center.submit(entry, Waiter::Reply(Box::new(respond)));
        }
        // A local store answers in the same step, without boxing.
        let mut state = self.center.inner.state.lock();
        match self.center.apply_local(&mut state, entry) {
            Outcome::Reply(r) => respond(r),
            _ => respond(Err(CenterError::Internal("a command had no reply".into()))),
        }
        drop(state);
    }

    /// Runs one command and returns its result (for callers that do not
    /// queue replies, such as tests of the rules).
    /// In a cluster the reply only comes when the log hands the command back:
    /// use [`SessionHandle::execute_then`] there.
    pub fn execute(&self, command: Command) -> Result<Reply, CenterError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.execute_then(command, move |r| {
            let _ = tx.send(r);
        });
        rx.try_recv().unwrap_or_else(|_| {
            Err(CenterError::Internal(
                "the reply comes when the shared log applies the command".into(),
            ))
        })
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
                self.center.submit(
                    Kind::InviteFailed(cp::InviteFailed {
                        room_id: room_id.to_owned(),
                        session_id: self.id,
                    }),
                    Waiter::None,
                );
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
        // Nothing reaches it from now on, whenever its closing is applied.
        if self.center.shared() {
            self.center.inner.state.lock().registry.close(self.id);
        }
        self.center.close_recorded(self.id, reason);
    }
}

fn reply(kind: proto::reply::Kind) -> Reply {
    Reply { kind: Some(kind) }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A replayed entry is the past: its feed event carries the time it
    /// was first applied at, and it is counted in no metric.
    #[test]
    fn a_replayed_entry_keeps_its_time_and_counts_nothing() {
        let center = Center::default();
        let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_790_000_000);
        let at = At {
            grace: Duration::from_secs(1_790_000_000),
            wall: then,
        };
        let open = |sid| Entry {
            node_id: String::new(),
            origin_seq: 0,
            node_number: 0,
            kind: Some(Kind::SessionOpen(cp::SessionOpen {
                session_id: sid,
                peer_addr: "127.0.0.1:1".into(),
                transport: 0,
                peer_id: "sfu-a".into(),
                incarnation: String::new(),
            })),
            format: FORMAT,
        };
        center.replay(open(1), at);
        center.replay(
            Entry {
                kind: Some(Kind::PeerCommand(cp::PeerCommand {
                    session_id: 1,
                    command: Some(Command {
                        kind: Some(command::Kind::PullRemoteStream(
                            proto::PullRemoteStreamRequest {
                                room_id: "nowhere".into(),
                                pusher_user_id: "ghost".into(),
                                ..Default::default()
                            },
                        )),
                    }),
                })),
                ..open(1)
            },
            at,
        );
        let resumed = center.resume(Some(0)).unwrap();
        let events: Vec<_> = resumed.backlog().collect();
        assert!(events.len() >= 2, "{events:?}");
        for e in &events {
            assert_eq!(e.time, Some(timestamp(then)), "{e:?}");
        }
        let text = center.metrics().render(&center.state_gauges());
        assert!(!text.contains("pilot_pulls_dropped_total{"), "{text}");
    }
}
