//! Rooms, users, MSUs and the session registry, with the rules of
//! PROTOCOL.md §4–§6. Only [`super::Center`] touches this, under its lock.

use super::{CenterConfig, Outlet, timestamp};
use super::{Delivery, Outbound, OutletError, PeerInfo, SessionId, SessionStats};
use crate::error::CenterError;
use crate::metrics::StateGauges;
use crate::proto::{self, EventKind, peer_event, watch_events_response::Event};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// A connected peer, as the center sees it.
struct SessionEntry {
    peer: PeerInfo,
    outlet: Box<dyn Outlet>,
    stats: Arc<SessionStats>,
    overflow: CancellationToken,
    connected_at: SystemTime,
    /// Room id -> users this session hosts there: bound to it, or unbound by
    /// `userDisconnect` while it was their last session. Drives clean-up.
    hosted: HashMap<String, HashSet<String>>,
    /// MSUs registered through this session.
    msus: HashSet<String>,
}

/// One room.
#[derive(Default)]
struct Room {
    users: HashMap<String, User>,
    /// Session -> number of this room's users bound to it: the broadcast set.
    sessions: HashMap<SessionId, u32>,
    /// The MSU serving this room.
    msu: Option<String>,
}

/// One user of a room.
struct User {
    name: String,
    audience: bool,
    /// The session that speaks for the user; `None` after `userDisconnect`.
    session: Option<SessionId>,
    /// The session the user was last bound to (owns its clean-up).
    host: SessionId,
    pushers: Vec<proto::Publisher>,
}

/// A registered media server unit.
struct Msu {
    session: SessionId,
    rooms: HashSet<String>,
    registered_at: SystemTime,
}

/// All center state. See the module docs.
pub(super) struct State {
    config: CenterConfig,
    sessions: HashMap<SessionId, SessionEntry>,
    rooms: HashMap<String, Room>,
    msus: HashMap<String, Msu>,
    feed: broadcast::Sender<Arc<proto::WatchEventsResponse>>,
    /// Sequence number of the last feed event.
    seq: u64,
}

fn required(value: &str, field: &'static str, reason: &str) -> Result<(), CenterError> {
    if value.is_empty() {
        Err(CenterError::invalid(field, reason))
    } else {
        Ok(())
    }
}

/// Queues `item` for session `sid`. A full queue marks the session as a slow
/// consumer (its task closes it); a closed one is already on its way out.
fn deliver(sessions: &HashMap<SessionId, SessionEntry>, sid: SessionId, item: Outbound) -> bool {
    let Some(entry) = sessions.get(&sid) else {
        return false;
    };
    match entry.outlet.try_deliver(item) {
        Ok(()) => {
            entry.stats.messages_out.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(OutletError::Full) => {
            if !entry.overflow.is_cancelled() {
                tracing::warn!(
                    session.id = sid,
                    "outbound queue full: closing slow consumer"
                );
                entry.overflow.cancel();
            }
            false
        }
        Err(OutletError::Closed) => false,
    }
}

/// Sends `event` once to every session of `room` but the excluded ones.
fn broadcast(
    sessions: &HashMap<SessionId, SessionEntry>,
    room: &Room,
    exclude: &[Option<SessionId>],
    event: peer_event::Kind,
) -> u32 {
    let mut targets = room
        .sessions
        .keys()
        .filter(|s| !exclude.contains(&Some(**s)))
        .peekable();
    if targets.peek().is_none() {
        return 0;
    }
    let delivery = Arc::new(Delivery {
        event: proto::PeerEvent { kind: Some(event) },
        json: OnceLock::new(),
    });
    targets
        .map(|sid| u32::from(deliver(sessions, *sid, Outbound::Event(delivery.clone()))))
        .sum()
}

fn decrement(room: &mut Room, sid: SessionId) {
    if let Some(n) = room.sessions.get_mut(&sid) {
        *n -= 1;
        if *n == 0 {
            room.sessions.remove(&sid);
        }
    }
}

fn unhost(
    sessions: &mut HashMap<SessionId, SessionEntry>,
    host: SessionId,
    room_id: &str,
    user_id: &str,
) {
    if let Some(entry) = sessions.get_mut(&host)
        && let Some(users) = entry.hosted.get_mut(room_id)
    {
        users.remove(user_id);
        if users.is_empty() {
            entry.hosted.remove(room_id);
        }
    }
}

/// Binds a user of `room` to `sid`, taking it from any other session.
fn bind(
    sessions: &mut HashMap<SessionId, SessionEntry>,
    room: &mut Room,
    room_id: &str,
    user_id: &str,
    sid: SessionId,
) {
    let Some(user) = room.users.get_mut(user_id) else {
        return;
    };
    if user.session == Some(sid) {
        return;
    }
    let old_session = user.session.replace(sid);
    let old_host = std::mem::replace(&mut user.host, sid);
    if let Some(old) = old_session {
        decrement(room, old);
    }
    if old_host != sid {
        unhost(sessions, old_host, room_id, user_id);
    }
    *room.sessions.entry(sid).or_default() += 1;
    if let Some(entry) = sessions.get_mut(&sid) {
        entry
            .hosted
            .entry(room_id.to_owned())
            .or_default()
            .insert(user_id.to_owned());
    }
}

/// Removes a user from `room` and from its host's bookkeeping.
fn remove_user(
    sessions: &mut HashMap<SessionId, SessionEntry>,
    room: &mut Room,
    room_id: &str,
    user_id: &str,
) -> Option<User> {
    let user = room.users.remove(user_id)?;
    if let Some(sid) = user.session {
        decrement(room, sid);
    }
    unhost(sessions, user.host, room_id, user_id);
    Some(user)
}

/// The room `room_id` for changing, or [`CenterError::RoomNotFound`].
fn room_mut<'r>(
    rooms: &'r mut HashMap<String, Room>,
    room_id: &str,
) -> Result<&'r mut Room, CenterError> {
    rooms
        .get_mut(room_id)
        .ok_or_else(|| CenterError::RoomNotFound(room_id.to_owned()))
}

fn room_user(user_id: &str, user: &User) -> proto::RoomUser {
    proto::RoomUser {
        user_id: user_id.to_owned(),
        user_name: user.name.clone(),
        pushers: user.pushers.clone(),
    }
}

impl State {
    pub(super) fn new(
        config: CenterConfig,
        feed: broadcast::Sender<Arc<proto::WatchEventsResponse>>,
    ) -> Self {
        Self {
            config,
            sessions: HashMap::new(),
            rooms: HashMap::new(),
            msus: HashMap::new(),
            feed,
            seq: 0,
        }
    }

    pub(super) fn state_gauges(&self) -> StateGauges {
        let mut by_transport: Vec<(&'static str, i64)> = Vec::new();
        let (mut depth, mut depth_max) = (0i64, 0i64);
        for s in self.sessions.values() {
            let name = match s.peer.transport {
                proto::Transport::Ws => "ws",
                proto::Transport::Wss => "wss",
                proto::Transport::Grpc => "grpc",
                proto::Transport::Unspecified => "other",
            };
            match by_transport.iter_mut().find(|(k, _)| *k == name) {
                Some((_, n)) => *n += 1,
                None => by_transport.push((name, 1)),
            }
            let d = i64::try_from(s.outlet.depth()).unwrap_or(i64::MAX);
            depth = depth.saturating_add(d);
            depth_max = depth_max.max(d);
        }
        let (_, rooms, users, msus) = self.counts();
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

    /// Puts one event on the feed. `make` runs only when someone watches;
    /// the sequence number advances either way, so watchers see no gaps.
    fn emit(&mut self, room_id: &str, kind: EventKind, make: impl FnOnce() -> Event) {
        self.seq += 1;
        if self.feed.receiver_count() == 0 {
            return;
        }
        let event = proto::WatchEventsResponse {
            seq: self.seq,
            time: Some(timestamp(SystemTime::now())),
            room_id: room_id.to_owned(),
            kind: kind.into(),
            event: Some(make()),
        };
        // Err only means every receiver went away meanwhile.
        let _ = self.feed.send(Arc::new(event));
    }

    pub(super) fn open_session(
        &mut self,
        id: SessionId,
        peer: PeerInfo,
        outlet: Box<dyn Outlet>,
        stats: Arc<SessionStats>,
        overflow: CancellationToken,
    ) {
        let (addr, transport) = (peer.addr.clone(), peer.transport);
        self.sessions.insert(
            id,
            SessionEntry {
                peer,
                outlet,
                stats,
                overflow,
                connected_at: SystemTime::now(),
                hosted: HashMap::new(),
                msus: HashSet::new(),
            },
        );
        self.emit("", EventKind::SessionOpened, || {
            Event::SessionOpened(proto::SessionOpened {
                session_id: id,
                peer_addr: addr,
                transport: transport.into(),
            })
        });
    }

    /// Runs the clean-up of PROTOCOL.md §6 for a session that closed.
    pub(super) fn close_session(&mut self, sid: SessionId, reason: &str) {
        let Some(entry) = self.sessions.remove(&sid) else {
            return;
        };
        for (room_id, users) in entry.hosted {
            let Some(room) = self.rooms.get_mut(&room_id) else {
                continue;
            };
            let mut lost = Vec::with_capacity(users.len());
            for user_id in users {
                let was_bound = room.users.get(&user_id).map(|u| u.session == Some(sid));
                let Some(was_bound) = was_bound else { continue };
                if was_bound {
                    decrement(room, sid);
                    broadcast(
                        &self.sessions,
                        room,
                        &[Some(sid)],
                        peer_event::Kind::UserDisconnected(proto::UserDisconnected {
                            room_id: room_id.clone(),
                            user_id: user_id.clone(),
                            extra: HashMap::new(),
                        }),
                    );
                }
                room.users.remove(&user_id);
                lost.push((user_id, was_bound));
            }
            let empty = room.users.is_empty();
            for (user_id, was_bound) in lost {
                if was_bound {
                    let uid = user_id.clone();
                    self.emit(&room_id, EventKind::UserDisconnected, || {
                        Event::UserDisconnected(proto::UserDisconnectedEvent {
                            user_id: uid,
                            reason: "session closed".into(),
                        })
                    });
                }
                self.emit(&room_id, EventKind::UserLeft, || {
                    Event::UserLeft(proto::UserLeftEvent {
                        user_id,
                        reason: "session closed".into(),
                    })
                });
            }
            if empty {
                self.drop_room(&room_id);
            }
        }
        for msu_id in entry.msus {
            if let Some(msu) = self.msus.remove(&msu_id) {
                for room_id in &msu.rooms {
                    if let Some(room) = self.rooms.get_mut(room_id) {
                        room.msu = None;
                    }
                }
                let mut room_ids: Vec<String> = msu.rooms.into_iter().collect();
                room_ids.sort();
                tracing::info!(msu.id = %msu_id, "msu lost");
                self.emit("", EventKind::MsuLost, || {
                    Event::MsuLost(proto::MsuLost { msu_id, room_ids })
                });
            }
        }
        let reason = reason.to_owned();
        self.emit("", EventKind::SessionClosed, || {
            Event::SessionClosed(proto::SessionClosed {
                session_id: sid,
                reason,
            })
        });
    }

    /// Deletes a room (its users must already be gone) and frees its MSU slot.
    fn drop_room(&mut self, room_id: &str) {
        let Some(room) = self.rooms.remove(room_id) else {
            return;
        };
        for (user_id, user) in &room.users {
            unhost(&mut self.sessions, user.host, room_id, user_id);
        }
        if let Some(msu) = room.msu.and_then(|m| self.msus.get_mut(&m)) {
            msu.rooms.remove(room_id);
        }
        tracing::info!(room.id = room_id, "room closed");
        self.emit(room_id, EventKind::RoomClosed, || {
            Event::RoomClosed(proto::RoomClosed {})
        });
    }

    /// The room `room_id`, created when missing.
    fn room_entry(&mut self, room_id: &str) -> &mut Room {
        if !self.rooms.contains_key(room_id) {
            self.rooms.insert(room_id.to_owned(), Room::default());
            tracing::info!(room.id = room_id, "room created");
            self.emit(room_id, EventKind::RoomCreated, || {
                Event::RoomCreated(proto::RoomCreated {})
            });
        }
        // Inserted just above when it was missing.
        self.rooms.entry(room_id.to_owned()).or_default()
    }

    /// Checks the per-session limits before `sid` takes `user_id` of `room_id`.
    fn check_session_limits(
        &self,
        sid: SessionId,
        room_id: &str,
        user_id: &str,
    ) -> Result<(), CenterError> {
        let Some(entry) = self.sessions.get(&sid) else {
            return Err(CenterError::Internal("session is closed".into()));
        };
        if entry
            .hosted
            .get(room_id)
            .is_some_and(|users| users.contains(user_id))
        {
            // Already carried: nothing new to count.
            return Ok(());
        }
        let max_rooms = self.config.max_rooms_per_session;
        if max_rooms > 0 && !entry.hosted.contains_key(room_id) && entry.hosted.len() >= max_rooms {
            return Err(CenterError::LimitReached(format!(
                "at most {max_rooms} rooms per session"
            )));
        }
        let max_users = self.config.max_users_per_session;
        if max_users > 0 && entry.hosted.values().map(HashSet::len).sum::<usize>() >= max_users {
            return Err(CenterError::LimitReached(format!(
                "at most {max_users} users per session"
            )));
        }
        Ok(())
    }

    /// Creates the room and the user when unknown.
    fn ensure_user(&mut self, sid: SessionId, room_id: &str, user_id: &str, name: &str) {
        let room = self.room_entry(room_id);
        if room.users.contains_key(user_id) {
            return;
        }
        room.users.insert(
            user_id.to_owned(),
            User {
                name: name.to_owned(),
                audience: false,
                session: None,
                host: sid,
                pushers: Vec::new(),
            },
        );
    }

    pub(super) fn register_msu(
        &mut self,
        sid: SessionId,
        r: proto::RegisterMsuRequest,
    ) -> Result<proto::RegisterMsuResponse, CenterError> {
        required(&r.msu_id, "msu_id", "Invalid id")?;
        let now = SystemTime::now();
        match self.msus.get_mut(&r.msu_id) {
            Some(msu) => {
                if msu.session != sid
                    && let Some(old) = self.sessions.get_mut(&msu.session)
                {
                    old.msus.remove(&r.msu_id);
                }
                msu.session = sid;
                msu.registered_at = now;
            }
            None => {
                self.msus.insert(
                    r.msu_id.clone(),
                    Msu {
                        session: sid,
                        rooms: HashSet::new(),
                        registered_at: now,
                    },
                );
            }
        }
        if let Some(entry) = self.sessions.get_mut(&sid) {
            entry.msus.insert(r.msu_id.clone());
        }
        tracing::info!(msu.id = %r.msu_id, session.id = sid, "msu registered");
        let msu_id = r.msu_id.clone();
        self.emit("", EventKind::MsuRegistered, || {
            Event::MsuRegistered(proto::MsuRegistered {
                msu_id,
                session_id: sid,
            })
        });
        Ok(proto::RegisterMsuResponse {
            registered: true,
            msu_id: r.msu_id,
        })
    }

    pub(super) fn join(
        &mut self,
        sid: SessionId,
        r: proto::JoinRequest,
    ) -> Result<proto::JoinResponse, CenterError> {
        const REASON: &str = "Invalid roomId or userId";
        required(&r.room_id, "room_id", REASON)?;
        required(&r.user_id, "user_id", REASON)?;
        self.check_session_limits(sid, &r.room_id, &r.user_id)?;
        self.ensure_user(sid, &r.room_id, &r.user_id, &r.user_name);
        let room = room_mut(&mut self.rooms, &r.room_id)?;
        if let Some(user) = room.users.get_mut(&r.user_id) {
            user.name.clone_from(&r.user_name);
            user.audience = r.audience;
        }
        bind(&mut self.sessions, room, &r.room_id, &r.user_id, sid);
        let users = room
            .users
            .iter()
            .filter(|(id, _)| **id != r.user_id)
            .map(|(id, u)| room_user(id, u))
            .collect();
        if !r.audience {
            broadcast(
                &self.sessions,
                room,
                &[Some(sid)],
                peer_event::Kind::NewUser(proto::NewUser {
                    room_id: r.room_id.clone(),
                    user_id: r.user_id.clone(),
                    user_name: r.user_name.clone(),
                    extra: r.extra,
                }),
            );
        }
        tracing::info!(room.id = %r.room_id, user.id = %r.user_id, session.id = sid, audience = r.audience, "user joined");
        let (user_id, user_name, audience) = (r.user_id, r.user_name, r.audience);
        self.emit(&r.room_id, EventKind::UserJoined, || {
            Event::UserJoined(proto::UserJoined {
                user_id,
                user_name,
                audience,
                session_id: sid,
            })
        });
        if !audience {
            self.invite_msu(&r.room_id);
        }
        Ok(proto::JoinResponse {
            room_id: r.room_id,
            users,
        })
    }

    /// Sends `invite` to the room's MSU, first choosing the live MSU with the
    /// fewest rooms when the room has none. Never waits for the answer.
    fn invite_msu(&mut self, room_id: &str) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let current = room.msu.clone().filter(|m| self.msus.contains_key(m));
        let msu_id = match current {
            Some(m) => m,
            None => {
                let Some((id, msu)) = self
                    .msus
                    .iter_mut()
                    .min_by(|a, b| a.1.rooms.len().cmp(&b.1.rooms.len()).then(a.0.cmp(b.0)))
                else {
                    return;
                };
                msu.rooms.insert(room_id.to_owned());
                room.msu = Some(id.clone());
                id.clone()
            }
        };
        let Some(session) = self.msus.get(&msu_id).map(|m| m.session) else {
            return;
        };
        deliver(
            &self.sessions,
            session,
            Outbound::Invite {
                room_id: room_id.to_owned(),
            },
        );
        self.emit(room_id, EventKind::MsuInvited, || {
            Event::MsuInvited(proto::MsuInvited { msu_id })
        });
    }

    pub(super) fn push(
        &mut self,
        sid: SessionId,
        r: proto::PushRequest,
    ) -> Result<(), CenterError> {
        required(&r.room_id, "room_id", "Invalid roomId")?;
        required(&r.user_id, "user_id", "Invalid userId")?;
        // A push binds a new or unbound user to this session: check first,
        // so a refused push leaves nothing behind.
        let bound = self
            .rooms
            .get(&r.room_id)
            .and_then(|room| room.users.get(&r.user_id))
            .map(|u| u.session);
        if !matches!(bound, Some(Some(_))) {
            self.check_session_limits(sid, &r.room_id, &r.user_id)?;
        }
        self.ensure_user(sid, &r.room_id, &r.user_id, &r.user_name);
        let room = room_mut(&mut self.rooms, &r.room_id)?;
        let Some(user) = room.users.get_mut(&r.user_id) else {
            return Err(CenterError::Internal("user vanished".into()));
        };
        if user.name.is_empty() {
            user.name.clone_from(&r.user_name);
        }
        for p in &r.publishers {
            match user.pushers.iter_mut().find(|q| q.pusher_id == p.pusher_id) {
                Some(q) => q.clone_from(p),
                None => user.pushers.push(p.clone()),
            }
        }
        let (name, unbound) = (user.name.clone(), user.session.is_none());
        if unbound {
            // A push proves the user is on this session (e.g. after a restart
            // of the center, which SFUs do not replay).
            bind(&mut self.sessions, room, &r.room_id, &r.user_id, sid);
        }
        let bound = room.users.get(&r.user_id).and_then(|u| u.session);
        broadcast(
            &self.sessions,
            room,
            &[Some(sid), bound],
            peer_event::Kind::NewPusher(proto::NewPusher {
                room_id: r.room_id.clone(),
                user_id: r.user_id.clone(),
                user_name: name,
                pushers: r.publishers.clone(),
                extra: r.extra,
            }),
        );
        tracing::debug!(room.id = %r.room_id, user.id = %r.user_id, pushers = r.publishers.len(), "push");
        let (user_id, pushers) = (r.user_id, r.publishers);
        self.emit(&r.room_id, EventKind::PusherAdded, || {
            Event::PusherAdded(proto::PusherAdded { user_id, pushers })
        });
        Ok(())
    }

    pub(super) fn pull_remote_stream(
        &mut self,
        sid: SessionId,
        r: proto::PullRemoteStreamRequest,
    ) -> Result<(), CenterError> {
        let room = self.room(&r.room_id)?;
        let target = room
            .users
            .get(&r.pusher_user_id)
            .ok_or_else(|| CenterError::UserNotFound(r.pusher_user_id.clone()))?
            .session
            .ok_or_else(|| {
                CenterError::UserNotFound(format!("{} (disconnected)", r.pusher_user_id))
            })?;
        let (room_id, pusher_user_id) = (r.room_id.clone(), r.pusher_user_id.clone());
        let pusher_id = r
            .push_info
            .as_ref()
            .map(|p| p.pusher_id.clone())
            .unwrap_or_default();
        let delivery = Arc::new(Delivery {
            event: proto::PeerEvent {
                kind: Some(peer_event::Kind::PullRemoteStream(r)),
            },
            json: OnceLock::new(),
        });
        deliver(&self.sessions, target, Outbound::Event(delivery));
        tracing::debug!(room.id = %room_id, pusher.user = %pusher_user_id, to = target, "pull forwarded");
        self.emit(&room_id, EventKind::PullForwarded, || {
            Event::PullForwarded(proto::PullForwarded {
                pusher_user_id,
                from_session_id: sid,
                to_session_id: target,
                pusher_id,
            })
        });
        Ok(())
    }

    /// The room `room_id`, or [`CenterError::RoomNotFound`].
    fn room(&self, room_id: &str) -> Result<&Room, CenterError> {
        self.rooms
            .get(room_id)
            .ok_or_else(|| CenterError::RoomNotFound(room_id.to_owned()))
    }

    /// The session that speaks for `user_id`, or an error when another
    /// session does (the single-session model: stale reports are ignored).
    fn speaker(
        &self,
        sid: SessionId,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<SessionId>, CenterError> {
        let room = self.room(room_id)?;
        match room.users.get(user_id).and_then(|u| u.session) {
            Some(other) if other != sid => Err(CenterError::Forbidden(format!(
                "user {user_id} is bound to another session"
            ))),
            bound => Ok(bound),
        }
    }

    /// The shared first half of `userDisconnect` and `userLeave`: only the
    /// session speaking for the user may report it; the room's other
    /// sessions hear `event`. Returns the user's session before the report.
    fn announce_departure(
        &mut self,
        sid: SessionId,
        room_id: &str,
        user_id: &str,
        event: peer_event::Kind,
    ) -> Result<Option<SessionId>, CenterError> {
        let bound = self.speaker(sid, room_id, user_id)?;
        let room = self.room(room_id)?;
        broadcast(&self.sessions, room, &[Some(sid)], event);
        Ok(bound)
    }

    pub(super) fn user_disconnect(
        &mut self,
        sid: SessionId,
        r: proto::UserDisconnectRequest,
    ) -> Result<(), CenterError> {
        let event = peer_event::Kind::UserDisconnected(proto::UserDisconnected {
            room_id: r.room_id.clone(),
            user_id: r.user_id.clone(),
            extra: r.extra,
        });
        let bound = self.announce_departure(sid, &r.room_id, &r.user_id, event)?;
        if bound.is_some()
            && let Some(room) = self.rooms.get_mut(&r.room_id)
            && let Some(user) = room.users.get_mut(&r.user_id)
        {
            user.session = None;
            decrement(room, sid);
        }
        tracing::info!(room.id = %r.room_id, user.id = %r.user_id, "user disconnected");
        let user_id = r.user_id;
        self.emit(&r.room_id, EventKind::UserDisconnected, || {
            Event::UserDisconnected(proto::UserDisconnectedEvent {
                user_id,
                reason: "userDisconnect".into(),
            })
        });
        Ok(())
    }

    pub(super) fn user_leave(
        &mut self,
        sid: SessionId,
        r: proto::UserLeaveRequest,
    ) -> Result<(), CenterError> {
        let event = peer_event::Kind::UserLeft(proto::UserLeft {
            room_id: r.room_id.clone(),
            user_id: r.user_id.clone(),
            extra: r.extra,
        });
        self.announce_departure(sid, &r.room_id, &r.user_id, event)?;
        let room = room_mut(&mut self.rooms, &r.room_id)?;
        let removed = remove_user(&mut self.sessions, room, &r.room_id, &r.user_id).is_some();
        let empty = room.users.is_empty();
        tracing::info!(room.id = %r.room_id, user.id = %r.user_id, "user left");
        if removed {
            let user_id = r.user_id;
            self.emit(&r.room_id, EventKind::UserLeft, || {
                Event::UserLeft(proto::UserLeftEvent {
                    user_id,
                    reason: "userLeave".into(),
                })
            });
        }
        if empty {
            self.drop_room(&r.room_id);
        }
        Ok(())
    }

    pub(super) fn text_message(
        &mut self,
        sid: SessionId,
        r: proto::TextMessageRequest,
    ) -> Result<(), CenterError> {
        let room = self.room(&r.room_id)?;
        let bound = room.users.get(&r.user_id).and_then(|u| u.session);
        let (room_id, user_id, message) = (r.room_id.clone(), r.user_id.clone(), r.message.clone());
        broadcast(
            &self.sessions,
            room,
            &[Some(sid), bound],
            peer_event::Kind::TextMessage(proto::TextMessage {
                room_id: r.room_id,
                user_id: r.user_id,
                user_name: r.user_name,
                message: r.message,
                extra: r.extra,
            }),
        );
        self.emit(&room_id, EventKind::TextMessage, || {
            Event::TextMessage(proto::TextMessageEvent { user_id, message })
        });
        Ok(())
    }

    pub(super) fn user_reconnect(
        &mut self,
        sid: SessionId,
        r: proto::UserReConnectRequest,
    ) -> Result<(), CenterError> {
        const REASON: &str = "Invalid roomId or userId";
        required(&r.room_id, "room_id", REASON)?;
        required(&r.user_id, "user_id", REASON)?;
        self.check_session_limits(sid, &r.room_id, &r.user_id)?;
        self.ensure_user(sid, &r.room_id, &r.user_id, &r.user_name);
        let room = room_mut(&mut self.rooms, &r.room_id)?;
        if let Some(user) = room.users.get_mut(&r.user_id)
            && !r.user_name.is_empty()
        {
            user.name.clone_from(&r.user_name);
        }
        bind(&mut self.sessions, room, &r.room_id, &r.user_id, sid);
        broadcast(
            &self.sessions,
            room,
            &[Some(sid)],
            peer_event::Kind::UserReconnected(proto::UserReConnected {
                room_id: r.room_id.clone(),
                user_id: r.user_id.clone(),
                user_name: r.user_name,
                extra: r.extra,
            }),
        );
        tracing::info!(room.id = %r.room_id, user.id = %r.user_id, session.id = sid, "user reconnected");
        let user_id = r.user_id;
        self.emit(&r.room_id, EventKind::UserReconnected, || {
            Event::UserReconnected(proto::UserReconnectedEvent {
                user_id,
                session_id: sid,
            })
        });
        Ok(())
    }

    // ----- operator operations -------------------------------------------

    pub(super) fn remove_user(&mut self, room_id: &str, user_id: &str) -> Result<u32, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        required(user_id, "user_id", "user_id is required")?;
        let room = room_mut(&mut self.rooms, room_id)?;
        if !room.users.contains_key(user_id) {
            return Err(CenterError::UserNotFound(user_id.to_owned()));
        }
        let notified = broadcast(&self.sessions, room, &[], user_left(room_id, user_id));
        remove_user(&mut self.sessions, room, room_id, user_id);
        let empty = room.users.is_empty();
        tracing::info!(
            room.id = room_id,
            user.id = user_id,
            "user removed by operator"
        );
        let uid = user_id.to_owned();
        self.emit(room_id, EventKind::UserLeft, || {
            Event::UserLeft(proto::UserLeftEvent {
                user_id: uid,
                reason: "kicked".into(),
            })
        });
        if empty {
            self.drop_room(room_id);
        }
        Ok(notified)
    }

    pub(super) fn close_room(&mut self, room_id: &str) -> Result<u32, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        let room = room_mut(&mut self.rooms, room_id)?;
        let mut user_ids: Vec<String> = room.users.keys().cloned().collect();
        user_ids.sort();
        for user_id in &user_ids {
            broadcast(&self.sessions, room, &[], user_left(room_id, user_id));
        }
        for user_id in &user_ids {
            remove_user(&mut self.sessions, room, room_id, user_id);
        }
        for user_id in &user_ids {
            let uid = user_id.clone();
            self.emit(room_id, EventKind::UserLeft, || {
                Event::UserLeft(proto::UserLeftEvent {
                    user_id: uid,
                    reason: "room closed".into(),
                })
            });
        }
        self.drop_room(room_id);
        u32::try_from(user_ids.len()).map_err(|_| CenterError::Internal("too many users".into()))
    }

    pub(super) fn send_text(
        &mut self,
        room_id: &str,
        user_id: &str,
        user_name: &str,
        message: &str,
    ) -> Result<u32, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        required(message, "message", "message is required")?;
        let room = self.room(room_id)?;
        let name = if !user_name.is_empty() {
            user_name.to_owned()
        } else if user_id.is_empty() {
            "system".to_owned()
        } else {
            room.users
                .get(user_id)
                .ok_or_else(|| CenterError::UserNotFound(user_id.to_owned()))?
                .name
                .clone()
        };
        let reached = broadcast(
            &self.sessions,
            room,
            &[],
            peer_event::Kind::TextMessage(proto::TextMessage {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
                user_name: name,
                message: message.to_owned(),
                extra: HashMap::new(),
            }),
        );
        let (uid, msg) = (user_id.to_owned(), message.to_owned());
        self.emit(room_id, EventKind::TextMessage, || {
            Event::TextMessage(proto::TextMessageEvent {
                user_id: uid,
                message: msg,
            })
        });
        Ok(reached)
    }

    pub(super) fn list_rooms(&self) -> Vec<proto::RoomSummary> {
        let mut rooms: Vec<_> = self
            .rooms
            .iter()
            .map(|(id, room)| proto::RoomSummary {
                room_id: id.clone(),
                user_count: count(room.users.len()),
                session_count: count(room.sessions.len()),
                msu_id: room.msu.clone().unwrap_or_default(),
            })
            .collect();
        rooms.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        rooms
    }

    pub(super) fn get_room(&self, room_id: &str) -> Result<proto::RoomDetail, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        let room = self.room(room_id)?;
        let mut users: Vec<_> = room
            .users
            .iter()
            .map(|(id, u)| proto::RoomMember {
                user_id: id.clone(),
                user_name: u.name.clone(),
                audience: u.audience,
                session_id: u.session.unwrap_or(0),
                pushers: u.pushers.clone(),
            })
            .collect();
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let mut session_ids: Vec<_> = room.sessions.keys().copied().collect();
        session_ids.sort_unstable();
        Ok(proto::RoomDetail {
            room_id: room_id.to_owned(),
            msu_id: room.msu.clone().unwrap_or_default(),
            users,
            session_ids,
        })
    }

    pub(super) fn list_sessions(&self) -> Vec<proto::SessionInfo> {
        let mut sessions: Vec<_> = self
            .sessions
            .iter()
            .map(|(id, s)| {
                let mut msu_ids: Vec<_> = s.msus.iter().cloned().collect();
                msu_ids.sort();
                proto::SessionInfo {
                    session_id: *id,
                    peer_addr: s.peer.addr.clone(),
                    transport: s.peer.transport.into(),
                    user_count: count(self.rooms_bound_users(*id, &s.hosted)),
                    connected_at: Some(timestamp(s.connected_at)),
                    messages_in: s.stats.messages_in.load(Ordering::Relaxed),
                    messages_out: s.stats.messages_out.load(Ordering::Relaxed),
                    msu_ids,
                }
            })
            .collect();
        sessions.sort_by_key(|s| s.session_id);
        sessions
    }

    fn rooms_bound_users(
        &self,
        sid: SessionId,
        hosted: &HashMap<String, HashSet<String>>,
    ) -> usize {
        hosted
            .keys()
            .filter_map(|r| self.rooms.get(r))
            .map(|room| room.sessions.get(&sid).copied().unwrap_or(0) as usize)
            .sum()
    }

    pub(super) fn list_msus(&self) -> Vec<proto::MsuInfo> {
        let mut msus: Vec<_> = self
            .msus
            .iter()
            .map(|(id, m)| {
                let mut room_ids: Vec<_> = m.rooms.iter().cloned().collect();
                room_ids.sort();
                let seen_ms = self
                    .sessions
                    .get(&m.session)
                    .map_or(0, |s| s.stats.last_seen_ms.load(Ordering::Relaxed));
                let seen = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(seen_ms);
                proto::MsuInfo {
                    msu_id: id.clone(),
                    session_id: m.session,
                    room_ids,
                    last_seen: Some(timestamp(seen.max(m.registered_at))),
                }
            })
            .collect();
        msus.sort_by(|a, b| a.msu_id.cmp(&b.msu_id));
        msus
    }

    pub(super) fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.sessions.len(),
            self.rooms.len(),
            self.rooms.values().map(|r| r.users.len()).sum(),
            self.msus.len(),
        )
    }
}

fn user_left(room_id: &str, user_id: &str) -> peer_event::Kind {
    peer_event::Kind::UserLeft(proto::UserLeft {
        room_id: room_id.to_owned(),
        user_id: user_id.to_owned(),
        extra: HashMap::new(),
    })
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
