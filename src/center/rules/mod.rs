//! The room rules of PROTOCOL.md §4–§6 as a functional core: [`Rules`]
//! applies a command to the state and returns its [`Effects`] (who receives
//! what, which events go on the feed), touching no socket and reading no
//! clock it is not handed. [`super::registry::Registry`] carries the effects
//! to sessions. Where the state lives and how effects travel can change
//! (several centers on a shared store) without touching these rules.
//!
//! Users and who holds them:
//! - a user is *held* by one session (the SFU that carries it); the session
//!   *speaks* for it while it is connected (`userDisconnect` keeps it held
//!   but silent). A session hears a room while it holds any of its users.
//! - when a session ends, its users become *orphans* for the reconnect grace:
//!   kept with their pushers, waiting for a session with the same identity
//!   (which takes them all back) or one that names them; unclaimed orphans
//!   leave when the grace ends.

/// Logs what the rules did at INFO, or at DEBUG while they replay the
/// past (it was logged when it happened; see `Tense`).
macro_rules! happened {
    ($rules:expr, $($arg:tt)+) => {
        if $rules.replaying {
            tracing::debug!($($arg)+)
        } else {
            tracing::info!($($arg)+)
        }
    };
}

mod effects;
mod holdings;
mod membership;
mod msu_pool;
mod msus;
mod operator;
mod orphans;
mod playbacks;
mod recordings;
mod relays;
mod sessions;
mod view;

pub use effects::{Dropped, Effects, Notice};
pub(crate) use holdings::Holdings;
pub(crate) use membership::{Holder, Room, User};
pub(crate) use msu_pool::Msu;
use msu_pool::MsuPool;
use orphans::Orphans;

use super::shrink::shrink_after_crowd;
use crate::error::CenterError;
use crate::ids::{SessionId, SessionMap};
use crate::proto::{self, EventKind, peer_event, watch_events_response::Event};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What to do when a `join` names a user another live session speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicatePolicy {
    /// Move the user: the old session gets `userLeave` for it.
    #[default]
    Replace,
    /// Refuse the join with 409.
    Reject,
}

/// Settings of the rules.
#[derive(Debug, Clone, Default)]
pub struct RulesConfig {
    /// Most rooms one session may put users into (0: no limit).
    pub max_rooms_per_session: usize,
    /// Most users one session may hold (0: no limit).
    pub max_users_per_session: usize,
    /// How long the users of an ended session wait for it (0: they go at once).
    pub reconnect_grace: Duration,
    /// A `join` of a user held by another live session.
    pub duplicate_user: DuplicatePolicy,
}

/// Rooms, users, pushers, MSUs and who holds what. See the module docs.
pub struct Rules {
    pub(super) config: RulesConfig,
    pub(super) sessions: SessionMap<Holdings>,
    pub(super) rooms: HashMap<String, Arc<Room>>,
    pub(super) msus: MsuPool,
    /// Users waiting out the grace, by identity and by deadline.
    pub(super) orphans: Orphans,
    /// Sessions opened so far.
    pub(super) opened: u64,
    /// Whether the entries being applied are the past (a replay): then
    /// what they do is logged at DEBUG only ([`happened!`]).
    pub(crate) replaying: bool,
    /// Puller identity -> the relays (room, publisher) with a destination
    /// of it, so that a peer's process ending touches only those.
    pub(crate) pullers: HashMap<String, std::collections::BTreeSet<(String, String)>>,
    /// Recordings, running and stopped, by id.
    pub(crate) recordings: std::collections::BTreeMap<String, proto::Recording>,
    /// Running playbacks, by id.
    pub(crate) playbacks: std::collections::BTreeMap<String, proto::Playback>,
    /// The time of the entry being applied (the rules read no clock).
    pub(crate) now: SystemTime,
}

/// What a session's opening did to the users of earlier sessions with its
/// identity.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Users it took back (same incarnation).
    pub reclaimed: u32,
    /// Users of another incarnation of the peer, who left at once.
    pub gone: u32,
}

fn required(value: &str, field: &'static str, reason: &str) -> Result<(), CenterError> {
    if value.is_empty() {
        Err(CenterError::invalid(field, reason))
    } else {
        Ok(())
    }
}

fn user_left(room_id: &str, user_id: &str) -> peer_event::Kind {
    peer_event::Kind::UserLeft(proto::UserLeft {
        room_id: room_id.to_owned(),
        user_id: user_id.to_owned(),
        extra: HashMap::new(),
    })
}

fn user_left_event(user_id: &str, reason: &str) -> Event {
    Event::UserLeft(proto::UserLeftEvent {
        user_id: user_id.to_owned(),
        reason: reason.to_owned(),
    })
}

fn room_user(user_id: &str, user: &User) -> proto::RoomUser {
    proto::RoomUser {
        user_id: user_id.to_owned(),
        user_name: user.name.clone(),
        pushers: user.pushers.clone(),
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl Rules {
    /// No rooms, no sessions.
    pub fn new(config: RulesConfig) -> Self {
        Self {
            config,
            sessions: SessionMap::default(),
            rooms: HashMap::new(),
            msus: MsuPool::default(),
            orphans: Orphans::default(),
            opened: 0,
            replaying: false,
            pullers: HashMap::new(),
            recordings: std::collections::BTreeMap::new(),
            playbacks: std::collections::BTreeMap::new(),
            now: SystemTime::UNIX_EPOCH,
        }
    }

    // ----- who holds whom -------------------------------------------------

    /// Makes `sid` hold `user_id` of `room_id`, connected, taking it from
    /// whoever held it. A live session that loses the user this way gets
    /// `userLeave` for it: its SFU must not keep a user another one carries.
    fn take(&mut self, room_id: &str, user_id: &str, sid: SessionId, fx: &mut Effects) {
        let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) else {
            return;
        };
        let Some(user) = room.users.get_mut(user_id) else {
            return;
        };
        let old = std::mem::replace(
            &mut user.holder,
            Holder::Session {
                sid,
                connected: true,
            },
        );
        match old {
            Holder::Session { sid: old, .. } if old == sid => return,
            Holder::Session { sid: old, .. } => {
                room.stop_hearing(old);
                self.unhold(old, room_id, user_id);
                fx.send(vec![old], user_left(room_id, user_id));
                fx.event(
                    room_id,
                    EventKind::UserLeft,
                    user_left_event(user_id, "replaced"),
                );
                fx.users_replaced += 1;
                happened!(
                    self,
                    room.id = room_id,
                    user.id = user_id,
                    from = old,
                    to = sid,
                    "user moved to another session"
                );
            }
            Holder::Orphan { identity, .. } => self.orphans.remove(&identity, room_id, user_id),
        }
        if let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) {
            *room.listeners.entry(sid).or_default() += 1;
        }
        if let Some(h) = self.sessions.get_mut(&sid) {
            h.rooms
                .entry(room_id.to_owned())
                .or_default()
                .insert(user_id.to_owned());
        }
    }

    fn unhold(&mut self, sid: SessionId, room_id: &str, user_id: &str) {
        if let Some(h) = self.sessions.get_mut(&sid)
            && let Some(users) = h.rooms.get_mut(room_id)
        {
            users.remove(user_id);
            if users.is_empty() {
                h.rooms.remove(room_id);
            }
        }
    }

    /// Removes a user and whatever pointed at it; returns whether it existed.
    fn remove(&mut self, room_id: &str, user_id: &str, fx: &mut Effects) -> bool {
        self.end_relay(room_id, user_id, "publisher left", fx);
        let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) else {
            return false;
        };
        let Some(user) = room.users.remove(user_id) else {
            return false;
        };
        match user.holder {
            Holder::Session { sid, .. } => {
                room.stop_hearing(sid);
                self.unhold(sid, room_id, user_id);
            }
            Holder::Orphan { identity, .. } => self.orphans.remove(&identity, room_id, user_id),
        }
        true
    }

    /// The room `room_id`, created when missing (then it gets an MSU).
    fn room_entry(&mut self, room_id: &str, fx: &mut Effects) {
        if !self.rooms.contains_key(room_id) {
            self.rooms
                .insert(room_id.to_owned(), Arc::new(Room::default()));
            happened!(self, room.id = room_id, "room created");
            fx.event(
                room_id,
                EventKind::RoomCreated,
                Event::RoomCreated(proto::RoomCreated {}),
            );
        }
    }

    /// Deletes a room whose last user went, and frees its MSU slot.
    fn drop_if_empty(&mut self, room_id: &str, fx: &mut Effects) {
        if !self
            .rooms
            .get(room_id)
            .is_some_and(|room| room.users.is_empty())
        {
            return;
        }
        if self.rooms[room_id].recording.is_some() {
            let _ = self.stop_recording(room_id, "room closed", fx);
        }
        let Some(room) = self.rooms.remove(room_id) else {
            return;
        };
        shrink_after_crowd(&mut self.rooms);
        if let Some(msu) = &room.msu {
            self.msus.release(msu, room_id);
        }
        happened!(self, room.id = room_id, "room closed");
        fx.event(
            room_id,
            EventKind::RoomClosed,
            Event::RoomClosed(proto::RoomClosed {}),
        );
    }

    /// Checks the per-session limits before `sid` takes `user_id` of `room_id`.
    fn check_limits(
        &self,
        sid: SessionId,
        room_id: &str,
        user_id: &str,
    ) -> Result<(), CenterError> {
        let Some(h) = self.sessions.get(&sid) else {
            return Err(CenterError::Internal("session is closed".into()));
        };
        if h.rooms.get(room_id).is_some_and(|u| u.contains(user_id)) {
            // Already held: nothing new to count.
            return Ok(());
        }
        let max_rooms = self.config.max_rooms_per_session;
        if max_rooms > 0 && !h.rooms.contains_key(room_id) && h.rooms.len() >= max_rooms {
            return Err(CenterError::LimitReached(format!(
                "at most {max_rooms} rooms per session"
            )));
        }
        let max_users = self.config.max_users_per_session;
        if max_users > 0 && h.rooms.values().map(HashSet::len).sum::<usize>() >= max_users {
            return Err(CenterError::LimitReached(format!(
                "at most {max_users} users per session"
            )));
        }
        Ok(())
    }

    /// Creates the user, held by `sid`, when unknown; returns whether the
    /// room was created.
    fn ensure_user(
        &mut self,
        sid: SessionId,
        room_id: &str,
        user_id: &str,
        name: &str,
        fx: &mut Effects,
    ) -> bool {
        let created = !self.rooms.contains_key(room_id);
        self.room_entry(room_id, fx);
        let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) else {
            return created;
        };
        if !room.users.contains_key(user_id) {
            room.users.insert(
                user_id.to_owned(),
                User {
                    name: name.to_owned(),
                    audience: false,
                    holder: Holder::Session {
                        sid,
                        connected: true,
                    },
                    pushers: Vec::new(),
                },
            );
            *room.listeners.entry(sid).or_default() += 1;
            if let Some(h) = self.sessions.get_mut(&sid) {
                h.rooms
                    .entry(room_id.to_owned())
                    .or_default()
                    .insert(user_id.to_owned());
            }
        }
        created
    }

    // ----- commands ---------------------------------------------------------

    /// `join`: binds the user to `sid` and answers with the room's other users.
    pub fn join(
        &mut self,
        sid: SessionId,
        r: proto::JoinRequest,
        fx: &mut Effects,
    ) -> Result<proto::JoinResponse, CenterError> {
        const REASON: &str = "Invalid roomId or userId";
        required(&r.room_id, "room_id", REASON)?;
        required(&r.user_id, "user_id", REASON)?;
        let speaker = self
            .rooms
            .get(&r.room_id)
            .and_then(|room| room.users.get(&r.user_id))
            .and_then(User::speaker)
            .filter(|s| *s != sid);
        if speaker.is_some() && self.config.duplicate_user == DuplicatePolicy::Reject {
            happened!(self, room.id = %r.room_id, user.id = %r.user_id, session.id = sid, "join refused: user already joined from another session");
            return Err(CenterError::Conflict(
                "user already joined from another session".into(),
            ));
        }
        self.check_limits(sid, &r.room_id, &r.user_id)?;
        // `replace`: the old session learns the user left it (in `take`).
        self.ensure_user(sid, &r.room_id, &r.user_id, &r.user_name, fx);
        self.take(&r.room_id, &r.user_id, sid, fx);
        let room = self
            .rooms
            .get_mut(&r.room_id)
            .map(Arc::make_mut)
            .ok_or_else(|| CenterError::Internal("room vanished".into()))?;
        if let Some(user) = room.users.get_mut(&r.user_id) {
            user.name.clone_from(&r.user_name);
            user.audience = r.audience;
            // An SFU joins a user when its client (re)connects: whatever the
            // user published before is gone with that connection, and the
            // SFU pushes anew (issue 20: stale pushers routed pulls to a
            // process that had no such stream).
            user.pushers.clear();
        }
        let users = room
            .users
            .iter()
            .filter(|(id, _)| **id != r.user_id)
            .map(|(id, u)| room_user(id, u))
            .collect();
        if !r.audience {
            fx.send(
                room.audience_but(&[Some(sid)]),
                peer_event::Kind::NewUser(proto::NewUser {
                    room_id: r.room_id.clone(),
                    user_id: r.user_id.clone(),
                    user_name: r.user_name.clone(),
                    extra: r.extra,
                }),
            );
        }
        happened!(self, room.id = %r.room_id, user.id = %r.user_id, session.id = sid, audience = r.audience, "user joined");
        fx.event(
            &r.room_id,
            EventKind::UserJoined,
            Event::UserJoined(proto::UserJoined {
                user_id: r.user_id,
                user_name: r.user_name,
                audience: r.audience,
                session_id: sid,
            }),
        );
        if !r.audience {
            self.invite_msu(&r.room_id, None, fx);
        }
        Ok(proto::JoinResponse {
            room_id: r.room_id,
            users,
        })
    }

    /// `push`: records the publishers; `newPusher` to the room. An unbound
    /// user named here is taken by `sid` (SFUs do not replay their rooms).
    pub fn push(
        &mut self,
        sid: SessionId,
        r: proto::PushRequest,
        fx: &mut Effects,
    ) -> Result<(), CenterError> {
        required(&r.room_id, "room_id", "Invalid roomId")?;
        required(&r.user_id, "user_id", "Invalid userId")?;
        let speaker = self
            .rooms
            .get(&r.room_id)
            .and_then(|room| room.users.get(&r.user_id))
            .and_then(User::speaker);
        if let Some(other) = speaker.filter(|s| *s != sid) {
            // Only the session speaking for a user publishes for it.
            happened!(self, room.id = %r.room_id, user.id = %r.user_id, session.id = sid, holder = other, "push refused: the user is another session's");
            return Err(CenterError::Forbidden(format!(
                "user {} is held by another session",
                r.user_id
            )));
        }
        if speaker.is_none() {
            // A refused push leaves nothing behind: check first.
            self.check_limits(sid, &r.room_id, &r.user_id)?;
        }
        let created = self.ensure_user(sid, &r.room_id, &r.user_id, &r.user_name, fx);
        if speaker.is_none() {
            self.take(&r.room_id, &r.user_id, sid, fx);
        }
        let room = self
            .rooms
            .get_mut(&r.room_id)
            .map(Arc::make_mut)
            .ok_or_else(|| CenterError::Internal("room vanished".into()))?;
        let user = room
            .users
            .get_mut(&r.user_id)
            .ok_or_else(|| CenterError::Internal("user vanished".into()))?;
        if user.name.is_empty() {
            user.name.clone_from(&r.user_name);
        }
        for p in &r.publishers {
            match user.pushers.iter_mut().find(|q| q.pusher_id == p.pusher_id) {
                Some(q) => q.clone_from(p),
                None => user.pushers.push(p.clone()),
            }
        }
        let (name, speaker) = (user.name.clone(), user.speaker());
        fx.send(
            room.audience_but(&[Some(sid), speaker]),
            peer_event::Kind::NewPusher(proto::NewPusher {
                room_id: r.room_id.clone(),
                user_id: r.user_id.clone(),
                user_name: name,
                pushers: r.publishers.clone(),
                extra: r.extra,
            }),
        );
        tracing::debug!(room.id = %r.room_id, user.id = %r.user_id, pushers = r.publishers.len(), "push");
        let user_id = r.user_id.clone();
        fx.event(
            &r.room_id,
            EventKind::PusherAdded,
            Event::PusherAdded(proto::PusherAdded {
                user_id: r.user_id,
                pushers: r.publishers,
            }),
        );
        if created {
            self.invite_msu(&r.room_id, None, fx);
        }
        // A recorded room records its publishers as they push.
        if self
            .rooms
            .get(&r.room_id)
            .is_some_and(|room| room.recording.is_some())
        {
            self.record_user(&r.room_id, &user_id, fx);
        }
        Ok(())
    }

    /// `pullRemoteStream`: forwarded to the session speaking for the pusher
    /// only, and only for a pusher it published; otherwise refused and made
    /// visible ([`Dropped`]): the SFU that asked never hears of a failure.
    pub fn pull_remote_stream(
        &mut self,
        sid: SessionId,
        r: proto::PullRemoteStreamRequest,
        fx: &mut Effects,
    ) -> Result<(), CenterError> {
        let pusher_id = r
            .push_info
            .as_ref()
            .map(|p| p.pusher_id.clone())
            .unwrap_or_default();
        let target = match self.route_pull(&r.room_id, &r.pusher_user_id, &pusher_id) {
            Ok(target) => target,
            Err((reason, e)) => {
                fx.drop_routing(
                    sid,
                    "pullRemoteStream",
                    &r.room_id,
                    &r.pusher_user_id,
                    &pusher_id,
                    reason,
                );
                return Err(e);
            }
        };
        let (room_id, pusher_user_id) = (r.room_id.clone(), r.pusher_user_id.clone());
        // Through the room's MSU, once per track; else straight on.
        let Some(r) = self.relay_pull(sid, &r, fx) else {
            return Ok(());
        };
        fx.send(vec![target], peer_event::Kind::PullRemoteStream(r));
        tracing::debug!(room.id = %room_id, pusher.user = %pusher_user_id, to = target, "pull forwarded");
        fx.event(
            &room_id,
            EventKind::PullForwarded,
            Event::PullForwarded(proto::PullForwarded {
                pusher_user_id,
                from_session_id: sid,
                to_session_id: target,
                pusher_id,
            }),
        );
        Ok(())
    }

    /// The session a pull of `pusher_id` of `user_id` goes to, or why none.
    fn route_pull(
        &self,
        room_id: &str,
        user_id: &str,
        pusher_id: &str,
    ) -> Result<SessionId, (&'static str, CenterError)> {
        let room = self.room(room_id).map_err(|e| ("room_not_found", e))?;
        let Some(user) = room.users.get(user_id) else {
            return Err((
                "user_not_found",
                CenterError::UserNotFound(user_id.to_owned()),
            ));
        };
        let Some(target) = user.speaker() else {
            return Err((
                "user_disconnected",
                CenterError::UserNotFound(format!("{user_id} (disconnected)")),
            ));
        };
        if !pusher_id.is_empty() && !user.pushers.iter().any(|p| p.pusher_id == pusher_id) {
            return Err((
                "pusher_not_found",
                CenterError::PusherNotFound(format!("{pusher_id} of user {user_id}")),
            ));
        }
        Ok(target)
    }

    /// The room `room_id`, or [`CenterError::RoomNotFound`].
    fn room(&self, room_id: &str) -> Result<&Room, CenterError> {
        self.rooms
            .get(room_id)
            .map(|room| &**room)
            .ok_or_else(|| CenterError::RoomNotFound(room_id.to_owned()))
    }

    /// Only the session holding a user may report on it; anything else is
    /// a stale report (e.g. after a center restart) and is refused, so
    /// nothing is broadcast about a user the sender does not hold.
    fn held_by(&self, sid: SessionId, room_id: &str, user_id: &str) -> Result<&User, CenterError> {
        let user = self
            .room(room_id)?
            .users
            .get(user_id)
            .ok_or_else(|| CenterError::UserNotFound(user_id.to_owned()))?;
        if user.holder_session() == Some(sid) {
            Ok(user)
        } else {
            Err(CenterError::Forbidden(format!(
                "user {user_id} is not held by this session"
            )))
        }
    }

    /// `userDisconnect`: the user stays, held but silent; the session keeps
    /// hearing the room (the SFU keeps it for the user's return).
    pub fn user_disconnect(
        &mut self,
        sid: SessionId,
        r: proto::UserDisconnectRequest,
        fx: &mut Effects,
    ) -> Result<(), CenterError> {
        if self
            .held_by(sid, &r.room_id, &r.user_id)?
            .speaker()
            .is_none()
        {
            // Already disconnected: nothing new to tell.
            return Ok(());
        }
        let room = self
            .rooms
            .get_mut(&r.room_id)
            .map(Arc::make_mut)
            .ok_or_else(|| CenterError::RoomNotFound(r.room_id.clone()))?;
        if let Some(user) = room.users.get_mut(&r.user_id) {
            user.holder = Holder::Session {
                sid,
                connected: false,
            };
        }
        fx.send(
            room.audience_but(&[Some(sid)]),
            peer_event::Kind::UserDisconnected(proto::UserDisconnected {
                room_id: r.room_id.clone(),
                user_id: r.user_id.clone(),
                extra: r.extra,
            }),
        );
        happened!(self, room.id = %r.room_id, user.id = %r.user_id, "user disconnected");
        fx.event(
            &r.room_id,
            EventKind::UserDisconnected,
            Event::UserDisconnected(proto::UserDisconnectedEvent {
                user_id: r.user_id,
                reason: "userDisconnect".into(),
            }),
        );
        Ok(())
    }

    /// `userLeave`: the user and its pushers go; `userLeave` to the room.
    pub fn user_leave(
        &mut self,
        sid: SessionId,
        r: proto::UserLeaveRequest,
        fx: &mut Effects,
    ) -> Result<(), CenterError> {
        self.held_by(sid, &r.room_id, &r.user_id)?;
        let to = self.room(&r.room_id)?.audience_but(&[Some(sid)]);
        fx.send(
            to,
            peer_event::Kind::UserLeft(proto::UserLeft {
                room_id: r.room_id.clone(),
                user_id: r.user_id.clone(),
                extra: r.extra,
            }),
        );
        self.remove(&r.room_id, &r.user_id, fx);
        happened!(self, room.id = %r.room_id, user.id = %r.user_id, "user left");
        fx.event(
            &r.room_id,
            EventKind::UserLeft,
            user_left_event(&r.user_id, "userLeave"),
        );
        self.drop_if_empty(&r.room_id, fx);
        Ok(())
    }

    /// `textMessage`: to the room but the sender and the user's own session.
    pub fn text_message(
        &mut self,
        sid: SessionId,
        r: proto::TextMessageRequest,
        fx: &mut Effects,
    ) -> Result<(), CenterError> {
        let room = match self.room(&r.room_id) {
            Ok(room) => room,
            Err(e) => {
                fx.drop_routing(
                    sid,
                    "textMessage",
                    &r.room_id,
                    &r.user_id,
                    "",
                    "room_not_found",
                );
                return Err(e);
            }
        };
        let speaker = room.users.get(&r.user_id).and_then(User::speaker);
        if speaker.is_some_and(|s| s != sid) {
            // Nobody speaks for a user another session speaks for.
            return Err(CenterError::Forbidden(format!(
                "user {} is held by another session",
                r.user_id
            )));
        }
        let to = room.audience_but(&[Some(sid), speaker]);
        fx.event(
            &r.room_id,
            EventKind::TextMessage,
            Event::TextMessage(proto::TextMessageEvent {
                user_id: r.user_id.clone(),
                message: r.message.clone(),
            }),
        );
        fx.send(
            to,
            peer_event::Kind::TextMessage(proto::TextMessage {
                room_id: r.room_id,
                user_id: r.user_id,
                user_name: r.user_name,
                message: r.message,
                extra: r.extra,
                payload_json: r.payload_json,
            }),
        );
        Ok(())
    }

    /// `userReConnect`: binds the user to `sid` again (creating it when
    /// unknown, keeping its pushers); `userReConnect` to the room.
    pub fn user_reconnect(
        &mut self,
        sid: SessionId,
        r: proto::UserReConnectRequest,
        fx: &mut Effects,
    ) -> Result<(), CenterError> {
        const REASON: &str = "Invalid roomId or userId";
        required(&r.room_id, "room_id", REASON)?;
        required(&r.user_id, "user_id", REASON)?;
        self.check_limits(sid, &r.room_id, &r.user_id)?;
        let created = self.ensure_user(sid, &r.room_id, &r.user_id, &r.user_name, fx);
        self.take(&r.room_id, &r.user_id, sid, fx);
        let room = self
            .rooms
            .get_mut(&r.room_id)
            .map(Arc::make_mut)
            .ok_or_else(|| CenterError::Internal("room vanished".into()))?;
        if let Some(user) = room.users.get_mut(&r.user_id)
            && !r.user_name.is_empty()
        {
            user.name.clone_from(&r.user_name);
        }
        fx.send(
            room.audience_but(&[Some(sid)]),
            peer_event::Kind::UserReconnected(proto::UserReConnected {
                room_id: r.room_id.clone(),
                user_id: r.user_id.clone(),
                user_name: r.user_name,
                extra: r.extra,
            }),
        );
        happened!(self, room.id = %r.room_id, user.id = %r.user_id, session.id = sid, "user reconnected");
        fx.event(
            &r.room_id,
            EventKind::UserReconnected,
            Event::UserReconnected(proto::UserReconnectedEvent {
                user_id: r.user_id,
                session_id: sid,
                reason: "userReConnect".into(),
            }),
        );
        if created {
            self.invite_msu(&r.room_id, None, fx);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
