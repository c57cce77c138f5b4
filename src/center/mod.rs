//! The room service: rooms, users, pushers, MSUs and the sessions that carry
//! them. No sockets here: both front ends (WebSocket gateway, gRPC) open a
//! [`SessionHandle`] and call [`SessionHandle::execute_then`] with protobuf
//! commands; operators call the admin methods on [`Center`].
//!
//! [`Center`] is the facade over three parts, each in its own file:
//! - `rules/`: the rules of PROTOCOL.md §4–§6 as a core that applies a
//!   command to the state and returns its effects (deliveries, feed events);
//! - `registry.rs`: the live sessions' outlets and the event feed, which
//!   carry those effects out;
//! - `sequencer.rs`: the one way a change goes through: every change is an
//!   entry, put in one order and applied to the state (`state.rs`) by
//!   `entry.rs`, at once for a local store, when the log hands it back for
//!   a shared one ([`crate::store`]).
//!
//! One step takes the lock once, applies the rules, queues every resulting
//! item into the affected sessions' bounded outlets without waiting (as
//! values: each front end encodes them in its own task), queues the reply
//! to the caller in the same step (so no peer gets an answer older than a
//! notification it already has), and returns. A session whose outlet is
//! full is marked as a slow consumer and closed by its own task; the room
//! carries on.

mod config;
mod entry;
mod feed;
mod invites;
mod listings;
mod outbound;
mod registry;
mod rules;
mod sequencer;
mod session;
pub(crate) mod shrink;
mod snapshot;
mod state;

pub use crate::ids::{self, SessionId, node_of};
pub use config::CenterConfig;
pub use entry::Outcome;
use feed::Feed;
pub use feed::{EventFilter, FeedReceiver, lagged};
pub use listings::Overview;
pub use outbound::{
    Delivery, Eviction, Outbound, Outlet, OutletError, PeerInfo, SLOW_CONSUMER, SessionStats,
};
pub use registry::Resumed;
pub use rules::DuplicatePolicy;
pub use session::{ReplyTally, SessionHandle};
pub use state::FrozenState;

use crate::auth::Grant;
use crate::clock::unix_ms;
use crate::cluster_proto::{self as cp, entry::Kind};
use crate::error::CenterError;
use crate::metrics::{Metrics, StateGauges};
use crate::proto;
use crate::store::{At, Entry, FromLog, Frozen, MemoryStore, Replica, StateCounts, Store};
use invites::PendingInvites;
use listings::{msus_of, sessions_of};
use parking_lot::MutexGuard;
use registry::{Registry, SessionEntry};
use rules::{Rules, RulesConfig};
use sequencer::{Sequencer, Waiter};
use state::State;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long an operator action waits for the shared log to apply it.
const OPERATOR_WAIT: Duration = Duration::from_secs(10);

/// The room service handle. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Center {
    inner: Arc<Inner>,
}

struct Inner {
    /// The state and the one way changes go into it.
    seq: Arc<Sequencer>,
    /// Event feed (see [`Registry`]); kept here to subscribe without the lock.
    feed: Feed,
    next_session: AtomicU64,
    /// Recordings and playbacks started here, for their ids.
    next_recording: AtomicU64,
    metrics: Arc<Metrics>,
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
    /// applies what the log hands it ([`Center::follow`]); a
    /// durable local one loads what it kept first ([`Replica::load_snapshot`],
    /// [`Replica::replay`]).
    pub fn with_store(config: CenterConfig, store: Arc<dyn Store>) -> Self {
        let feed = Feed::new(config.feed_capacity.max(16));
        let metrics = Arc::new(Metrics::new());
        let rules = RulesConfig {
            max_rooms_per_session: config.max_rooms_per_session,
            max_users_per_session: config.max_users_per_session,
            reconnect_grace: config.reconnect_grace,
            duplicate_user: config.duplicate_user,
        };
        let state = State {
            rules: Rules::new(rules),
            registry: Registry::new(
                store.node_id().unwrap_or_default().to_owned(),
                feed.clone(),
                config.event_log_capacity,
            ),
        };
        Self {
            inner: Arc::new(Inner {
                seq: Arc::new(Sequencer::new(state, store, metrics.clone(), config.clock)),
                feed,
                next_session: AtomicU64::new(1),
                next_recording: AtomicU64::new(1),
                metrics,
            }),
        }
    }

    /// The state, for one step.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.seq.lock()
    }

    fn store(&self) -> &dyn Store {
        self.inner.seq.store()
    }

    fn submit(&self, kind: Kind, waiter: Waiter) {
        self.inner.seq.submit(kind, waiter);
    }

    fn shared(&self) -> bool {
        self.inner.seq.shared()
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// The state gauges for `/metrics`.
    pub fn state_gauges(&self) -> StateGauges {
        let state = self.state();
        state.registry.gauges(state.rules.counts())
    }

    /// This node's id in a cluster ("" for a single center).
    pub fn node_id(&self) -> &str {
        self.store().node_id().unwrap_or_default()
    }

    /// Whether the state store answers (always, in memory).
    pub fn store_ready(&self) -> bool {
        self.store().ready()
    }

    /// Whether this process may serve sessions (see [`Store::serving`]).
    pub fn serving(&self) -> bool {
        self.store().serving()
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

    /// After a restart: every session the loaded state lists belonged to
    /// the former process and is gone. Each one's closing is applied (and
    /// kept) now, so its users wait out the reconnect grace for their peer
    /// to come back under its identity. Returns how many there were.
    pub fn end_former_sessions(&self) -> usize {
        self.end_sessions_held_elsewhere(&|_| true, "center restarted")
    }

    /// Hands the store the state as it is now, to keep as a snapshot (a
    /// state directory's log before it can then go).
    pub fn compact_store(&self) {
        // Under the lock: no entry may fall between the state frozen and
        // the store starting its next log after it.
        let state = self.state();
        self.store().compact(Box::new(state.freeze("")));
    }

    /// The process is stopping: the store makes everything durable (a
    /// state directory writes a snapshot of the final state).
    pub fn close_store(&self) -> Result<(), CenterError> {
        let frozen = {
            let mut state = self.state();
            state.registry.settle_reservation();
            state.freeze("")
        };
        self.store().close(Box::new(frozen))
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
        let number = self.store().node_number();
        let id = ids::session_id(
            number,
            self.inner.next_session.fetch_add(1, Ordering::Relaxed),
        );
        let stats = Arc::new(SessionStats::default());
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
        self.state().registry.open(
            id,
            SessionEntry {
                peer,
                outlet: Box::new(outlet),
                stats: stats.clone(),
                eviction: eviction.clone(),
                connected_at: SystemTime::now(),
            },
        );
        self.submit(Kind::SessionOpen(opened), Waiter::Opened(eviction.clone()));
        SessionHandle {
            seq: self.inner.seq.clone(),
            invites: PendingInvites::default(),
            id,
            tally: ReplyTally::new(stats, eviction, self.inner.metrics.clone()),
            grant,
            close_reason: None,
        }
    }

    /// Session closings waiting for the store to take them.
    pub fn unrecorded_closings(&self) -> usize {
        self.inner.seq.unrecorded_closings()
    }

    /// Records again the session closings the store could not take (an
    /// outage): called every second by the grace timer. Returns how many
    /// were tried.
    pub fn retry_closings(&self) -> usize {
        self.inner.seq.retry_closings()
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
        let clock = self.inner.seq.clock().clone();
        loop {
            self.retry_closings();
            let now = self.inner.seq.grace_now();
            let next = self.state().rules.next_deadline();
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

    /// Subscribes to the event feed from now on (see `feed.rs`).
    pub fn subscribe(&self) -> FeedReceiver {
        self.inner.feed.subscribe()
    }

    /// Subscribes to the event feed after `after` (a listing's cursor or the
    /// last sequence number seen; `None`: from now on): the kept events
    /// after it, then the live feed, with no gap and no duplicate.
    pub fn resume(&self, after: Option<u64>) -> Result<Resumed, CenterError> {
        self.state().registry.resume(after)
    }

    /// Every room with its counts, sorted by id.
    pub fn list_rooms(&self) -> Vec<proto::RoomSummary> {
        self.list_rooms_at().0
    }

    /// Every room, and the feed's cursor at which the list was taken.
    pub fn list_rooms_at(&self) -> (Vec<proto::RoomSummary>, u64) {
        let state = self.state();
        (state.rules.list_rooms(), state.registry.cursor())
    }

    /// One room in detail.
    pub fn get_room(&self, room_id: &str) -> Result<proto::RoomDetail, CenterError> {
        Ok(self.get_room_at(room_id)?.0)
    }

    /// One room in detail, and the feed's cursor at which it was read.
    pub fn get_room_at(&self, room_id: &str) -> Result<(proto::RoomDetail, u64), CenterError> {
        let state = self.state();
        Ok((state.rules.get_room(room_id)?, state.registry.cursor()))
    }

    /// Every session, sorted by id.
    pub fn list_sessions(&self) -> Vec<proto::SessionInfo> {
        self.list_sessions_at().0
    }

    /// Every session, and the feed's cursor at which the list was taken.
    pub fn list_sessions_at(&self) -> (Vec<proto::SessionInfo>, u64) {
        let state = self.state();
        (sessions_of(&state), state.registry.cursor())
    }

    /// The media relays of `room_id` (every room's when empty), sorted by
    /// room and publisher.
    pub fn list_relays(&self, room_id: &str) -> Vec<proto::Relay> {
        self.state().rules.relays(room_id)
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
        self.state().rules.recordings(room_id)
    }

    /// A new id: `prefix`, the time in ms, this node's number and a count,
    /// so no two ever meet.
    fn new_id(&self, prefix: &str) -> String {
        format!(
            "{prefix}-{}-{}-{}",
            unix_ms(SystemTime::now()),
            self.store().node_number(),
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
        self.state()
            .rules
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
        self.state().rules.playbacks()
    }

    fn recording(&self, id: &str) -> Result<proto::Recording, CenterError> {
        self.state()
            .rules
            .recordings
            .get(id)
            .cloned()
            .ok_or_else(|| CenterError::NotFound(format!("recording not found: {id}")))
    }

    /// Every MSU, sorted by id.
    pub fn list_msus(&self) -> Vec<proto::MsuInfo> {
        msus_of(&self.state())
    }

    /// What the admin page shows, read under one lock so that it is one
    /// moment of the center: the first `max_rooms` rooms (by id) in detail,
    /// every session and MSU, and the feed's cursor to follow on from.
    pub fn overview(&self, max_rooms: usize) -> Overview {
        let state = self.state();
        let summaries = state.rules.list_rooms();
        Overview {
            rooms_total: summaries.len(),
            rooms: summaries
                .iter()
                .take(max_rooms)
                .filter_map(|r| state.rules.get_room(&r.room_id).ok())
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
        let state = self.state();
        let (rooms, users, msus) = state.rules.counts();
        (state.registry.len(), rooms, users, msus)
    }
}

impl Center {
    /// Applies what the shared log hands this node ([`FromLog`]), in the
    /// log's order, on a task of its own, until the log's tasks stop: the
    /// Redis side produces entries and never calls the center.
    pub fn follow(&self, mut from_log: mpsc::Receiver<FromLog>) {
        let center = self.clone();
        tokio::spawn(async move {
            while let Some(item) = from_log.recv().await {
                center.take(item);
            }
        });
    }

    fn take(&self, item: FromLog) {
        let seq = &self.inner.seq;
        match item {
            FromLog::Snapshot(snap) => self.load_snapshot(&snap),
            FromLog::Entries { entries, past } => {
                for (entry, unix_ms) in entries {
                    seq.apply_from_log(entry, unix_ms, past);
                }
            }
            FromLog::Refused { origin_seqs, error } => {
                for origin_seq in origin_seqs {
                    seq.abandon(origin_seq, error.clone());
                }
            }
            // A dropped answer: the asker stopped waiting (shutdown).
            FromLog::Evict { reason, done } => {
                let _ = done.send(self.state().registry.evict_all(reason));
            }
            FromLog::EndFormer {
                lease,
                reason,
                done,
            } => {
                let _ =
                    done.send(self.end_sessions_held_elsewhere(
                        &|sid| crate::ids::node_of(sid) == lease,
                        reason,
                    ));
            }
            FromLog::Freeze { after, done } => {
                let _ = done.send(Box::new(self.state().freeze(&after)));
            }
            FromLog::Counts { done } => {
                let _ = done.send(self.state_counts());
            }
        }
    }

    /// Ends every session the state lists that this process does not hold
    /// and `whose` accepts (the former process's after a restart, a
    /// rejoined node's own former ones); how many.
    fn end_sessions_held_elsewhere(
        &self,
        whose: &dyn Fn(SessionId) -> bool,
        reason: &str,
    ) -> usize {
        let former: Vec<SessionId> = {
            let state = self.state();
            let mut ids: Vec<SessionId> = state
                .rules
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
            self.inner.seq.close_recorded(*sid, reason.to_owned());
        }
        former.len()
    }
}

/// What a state directory loads and replays into.
impl Replica for Center {
    fn load_snapshot(&self, snap: &cp::Snapshot) {
        let mut state = self.state();
        state.rules.load(snap);
        state.registry.load(snap);
    }

    fn replay(&self, entry: Entry, at: At) {
        self.inner.seq.replay(entry, at);
    }

    fn replay_finished(&self) {
        self.state().registry.continue_past_reserved();
    }

    /// Holds the state lock only to share the rooms and copy the sessions
    /// and feed; [`FrozenState::into_snapshot`] does the rest without it.
    fn freeze(&self) -> Box<dyn Frozen> {
        Box::new(self.state().freeze(""))
    }

    fn end_former_sessions(&self) -> usize {
        Center::end_former_sessions(self)
    }

    fn state_counts(&self) -> StateCounts {
        let (sessions, rooms, users, _) = self.counts();
        StateCounts {
            sessions,
            rooms,
            users,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::clock::timestamp;
    use crate::proto::{Command, command};
    use crate::store::FORMAT;

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
            feed_seq: 0,
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
