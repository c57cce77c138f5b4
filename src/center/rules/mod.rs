//! The room rules of PROTOCOL.md §4–§6 as a functional core: [`Rooms`]
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

mod effects;
mod holdings;
mod membership;
mod msu_pool;
mod orphans;
mod view;

pub use effects::{Dropped, Effects, Notice};
pub(crate) use holdings::Holdings;
pub(crate) use membership::{Holder, Room, User};
pub(crate) use msu_pool::Msu;
use msu_pool::MsuPool;
use orphans::Orphans;

use super::{SessionId, shrink_after_crowd};
use crate::error::CenterError;
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
    pub(super) sessions: HashMap<SessionId, Holdings>,
    pub(super) rooms: HashMap<String, Arc<Room>>,
    pub(super) msus: MsuPool,
    /// Users waiting out the grace, by identity and by deadline.
    pub(super) orphans: Orphans,
    /// Sessions opened so far.
    pub(super) opened: u64,
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
            sessions: HashMap::new(),
            rooms: HashMap::new(),
            msus: MsuPool::default(),
            orphans: Orphans::default(),
            opened: 0,
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
                tracing::info!(
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
    fn remove(&mut self, room_id: &str, user_id: &str) -> bool {
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
            tracing::info!(room.id = room_id, "room created");
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
        let Some(room) = self.rooms.remove(room_id) else {
            return;
        };
        shrink_after_crowd(&mut self.rooms);
        if let Some(msu) = &room.msu {
            self.msus.release(msu, room_id);
        }
        tracing::info!(room.id = room_id, "room closed");
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

    // ----- sessions -------------------------------------------------------

    /// A session opened with `identity` and `incarnation`: it takes back
    /// every orphan of an earlier session with the same identity and
    /// incarnation (`userReConnect` to the rest of each room). An earlier
    /// session of the identity with another incarnation was another process
    /// of the peer, which is gone: its users leave at once (`userLeave`),
    /// orphaned or still held by a session not yet found dead.
    pub fn open_session(
        &mut self,
        sid: SessionId,
        identity: &str,
        incarnation: &str,
        fx: &mut Effects,
    ) -> Opened {
        let identity: Arc<str> = Arc::from(identity);
        let incarnation: Arc<str> = Arc::from(incarnation);
        let mut gone = 0;
        let mut older: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, h)| h.identity == identity && h.incarnation != incarnation)
            .map(|(id, _)| *id)
            .collect();
        older.sort_unstable();
        for old in older {
            gone += self.forget_holdings(old, fx);
        }
        self.opened += 1;
        self.sessions.insert(
            sid,
            Holdings {
                identity: identity.clone(),
                incarnation: incarnation.clone(),
                opened: self.opened,
                rooms: HashMap::new(),
                msus: HashSet::new(),
            },
        );
        let (reclaimed, left) = self.take_orphans(sid, &identity, &incarnation, fx);
        gone += left;
        if gone > 0 {
            tracing::info!(session.id = sid, peer.id = %identity, peer.incarnation = %incarnation, users = gone, "users of the peer's previous process left");
        }
        Opened { reclaimed, gone }
    }

    /// Every user `sid` holds leaves now (its peer's process is gone);
    /// returns how many.
    fn forget_holdings(&mut self, sid: SessionId, fx: &mut Effects) -> u32 {
        let Some(h) = self.sessions.get_mut(&sid) else {
            return 0;
        };
        let mut held: Vec<(String, String)> = std::mem::take(&mut h.rooms)
            .into_iter()
            .flat_map(|(room, users)| users.into_iter().map(move |u| (room.clone(), u)))
            .collect();
        held.sort();
        let mut gone = 0;
        for (room_id, user_id) in held {
            if self.remove(&room_id, &user_id) {
                self.announce_left(&room_id, &user_id, "peer restarted", fx);
                gone += 1;
            }
        }
        gone
    }

    /// Tells the room a removed user left (`userLeave` to every session
    /// hearing it, the feed), and drops the room if it is empty now.
    fn announce_left(&mut self, room_id: &str, user_id: &str, reason: &str, fx: &mut Effects) {
        if let Some(room) = self.rooms.get(room_id) {
            fx.send(room.audience_but(&[]), user_left(room_id, user_id));
        }
        tracing::info!(room.id = %room_id, user.id = %user_id, reason, "user left");
        fx.event(
            room_id,
            EventKind::UserLeft,
            user_left_event(user_id, reason),
        );
        self.drop_if_empty(room_id, fx);
    }

    /// `sid` takes back every orphan of `identity` left by the same
    /// `incarnation`; those of another incarnation leave now. Returns
    /// (taken back, left).
    fn take_orphans(
        &mut self,
        sid: SessionId,
        identity: &Arc<str>,
        incarnation: &Arc<str>,
        fx: &mut Effects,
    ) -> (u32, u32) {
        let orphans = self.orphans.take(identity);
        let (mut taken, mut gone) = (0, 0);
        for (room_id, user_id) in orphans {
            let same = self
                .rooms
                .get(&room_id)
                .and_then(|r| r.users.get(&user_id))
                .is_some_and(|u| {
                    matches!(&u.holder, Holder::Orphan { incarnation: i, .. } if i == incarnation)
                });
            if same {
                if self.reclaim(sid, &room_id, &user_id, "reclaimed", fx) {
                    taken += 1;
                }
            } else if self.remove(&room_id, &user_id) {
                self.announce_left(&room_id, &user_id, "peer restarted", fx);
                gone += 1;
            }
        }
        if taken > 0 {
            tracing::info!(session.id = sid, peer.id = %identity, users = taken, "users taken back after reconnect");
        }
        (taken, gone)
    }

    /// `sid` takes an unbound user back: `userReConnect` to the room.
    fn reclaim(
        &mut self,
        sid: SessionId,
        room_id: &str,
        user_id: &str,
        reason: &str,
        fx: &mut Effects,
    ) -> bool {
        let Some(name) = self
            .rooms
            .get(room_id)
            .and_then(|r| r.users.get(user_id))
            .map(|u| u.name.clone())
        else {
            return false;
        };
        self.take(room_id, user_id, sid, fx);
        let Some(room) = self.rooms.get(room_id) else {
            return false;
        };
        fx.send(
            room.audience_but(&[Some(sid)]),
            peer_event::Kind::UserReconnected(proto::UserReConnected {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
                user_name: name,
                extra: HashMap::new(),
            }),
        );
        fx.event(
            room_id,
            EventKind::UserReconnected,
            Event::UserReconnected(proto::UserReconnectedEvent {
                user_id: user_id.to_owned(),
                session_id: sid,
                reason: reason.to_owned(),
            }),
        );
        true
    }

    /// A session ended at `now`: each user it spoke for is announced with
    /// `userDisconnect`; with a grace, its users wait as orphans, else they
    /// go. Its MSUs go and their rooms move to other MSUs.
    pub fn close_session(&mut self, sid: SessionId, now: Duration, fx: &mut Effects) {
        let Some(h) = self.sessions.remove(&sid) else {
            return;
        };
        shrink_after_crowd(&mut self.sessions);
        let grace = self.config.reconnect_grace;
        let mut held: Vec<(String, Vec<String>)> = h
            .rooms
            .into_iter()
            .map(|(room, users)| {
                let mut users: Vec<String> = users.into_iter().collect();
                users.sort();
                (room, users)
            })
            .collect();
        held.sort();
        for (room_id, users) in held {
            let Some(room) = self.rooms.get_mut(&room_id).map(Arc::make_mut) else {
                continue;
            };
            room.listeners.remove(&sid);
            let to = room.audience_but(&[Some(sid)]);
            for user_id in users {
                let Some(user) = room.users.get_mut(&user_id) else {
                    continue;
                };
                let was_connected = user.speaker() == Some(sid);
                if was_connected {
                    fx.send(
                        to.clone(),
                        peer_event::Kind::UserDisconnected(proto::UserDisconnected {
                            room_id: room_id.clone(),
                            user_id: user_id.clone(),
                            extra: HashMap::new(),
                        }),
                    );
                    fx.event(
                        &room_id,
                        EventKind::UserDisconnected,
                        Event::UserDisconnected(proto::UserDisconnectedEvent {
                            user_id: user_id.clone(),
                            reason: "session closed".into(),
                        }),
                    );
                }
                if grace.is_zero() {
                    room.users.remove(&user_id);
                    fx.event(
                        &room_id,
                        EventKind::UserLeft,
                        user_left_event(&user_id, "session closed"),
                    );
                } else {
                    let deadline = now + grace;
                    user.holder = Holder::Orphan {
                        identity: h.identity.clone(),
                        incarnation: h.incarnation.clone(),
                        deadline,
                    };
                    self.orphans
                        .add(&h.identity, (room_id.clone(), user_id), deadline);
                }
            }
            self.drop_if_empty(&room_id, fx);
        }
        let mut msus: Vec<String> = h.msus.into_iter().collect();
        msus.sort();
        for msu_id in msus {
            self.lose_msu(&msu_id, fx);
        }
        // The peer came back before its old session was found dead (a
        // half-open connection, a node lost after its SFU reconnected
        // elsewhere): the newer session takes the users now.
        let newer = self
            .sessions
            .iter()
            .filter(|(_, n)| n.identity == h.identity && n.opened > h.opened)
            .max_by_key(|(_, n)| n.opened)
            .map(|(id, _)| *id);
        if let Some(newer) = newer {
            let incarnation = self
                .sessions
                .get(&newer)
                .map(|n| n.incarnation.clone())
                .unwrap_or_default();
            self.take_orphans(newer, &h.identity, &incarnation, fx);
        }
    }

    /// Users whose grace ended by `now` leave: `userLeave` to their rooms.
    pub fn expire(&mut self, now: Duration, fx: &mut Effects) {
        while let Some((deadline, due)) = self.orphans.due(now) {
            for (room_id, user_id) in due {
                let still_orphan = self
                    .rooms
                    .get(&room_id)
                    .and_then(|r| r.users.get(&user_id))
                    .is_some_and(
                        |u| matches!(u.holder, Holder::Orphan { deadline: d, .. } if d == deadline),
                    );
                if !still_orphan {
                    continue;
                }
                self.remove(&room_id, &user_id);
                self.announce_left(&room_id, &user_id, "grace expired", fx);
            }
        }
    }

    /// When the next grace ends, if any user is waiting.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.orphans.next_deadline()
    }

    // ----- MSUs -------------------------------------------------------------

    /// `register`: adds or refreshes an MSU bound to `sid`; an id another
    /// live session holds is refused with 409.
    pub fn register_msu(
        &mut self,
        sid: SessionId,
        r: proto::RegisterMsuRequest,
        now: SystemTime,
        fx: &mut Effects,
    ) -> Result<proto::RegisterMsuResponse, CenterError> {
        required(&r.msu_id, "msu_id", "Invalid id")?;
        self.msus.register(&r.msu_id, sid, now)?;
        if let Some(h) = self.sessions.get_mut(&sid) {
            h.msus.insert(r.msu_id.clone());
        }
        tracing::info!(msu.id = %r.msu_id, session.id = sid, "msu registered");
        fx.event(
            "",
            EventKind::MsuRegistered,
            Event::MsuRegistered(proto::MsuRegistered {
                msu_id: r.msu_id.clone(),
                session_id: sid,
            }),
        );
        Ok(proto::RegisterMsuResponse {
            registered: true,
            msu_id: r.msu_id,
        })
    }

    /// Sends `invite` to the room's MSU, first choosing the live MSU with the
    /// fewest rooms (not `avoid`) when the room has none. Never waits.
    fn invite_msu(&mut self, room_id: &str, avoid: Option<&str>, fx: &mut Effects) {
        let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) else {
            return;
        };
        let current = room.msu.clone().filter(|m| self.msus.contains(m));
        let msu_id = match current {
            Some(m) => m,
            None => {
                room.msu = self.msus.assign(room_id, avoid);
                let Some(m) = room.msu.clone() else {
                    return;
                };
                m
            }
        };
        let Some(session) = self.msus.session_of(&msu_id) else {
            return;
        };
        fx.notices.push(Notice::Invite {
            to: session,
            room_id: room_id.to_owned(),
        });
        fx.event(
            room_id,
            EventKind::MsuInvited,
            Event::MsuInvited(proto::MsuInvited { msu_id }),
        );
    }

    /// An MSU is gone: its rooms are invited to the other live MSUs.
    fn lose_msu(&mut self, msu_id: &str, fx: &mut Effects) {
        let Some(room_ids) = self.msus.remove(msu_id) else {
            return;
        };
        for room_id in &room_ids {
            if let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) {
                room.msu = None;
            }
        }
        tracing::info!(msu.id = %msu_id, rooms = room_ids.len(), "msu lost");
        fx.event(
            "",
            EventKind::MsuLost,
            Event::MsuLost(proto::MsuLost {
                msu_id: msu_id.to_owned(),
                room_ids: room_ids.clone(),
            }),
        );
        for room_id in room_ids {
            self.invite_msu(&room_id, None, fx);
        }
    }

    /// An MSU refused an `invite` or let it time out: the room moves to
    /// another live MSU (or stays without one when there is none).
    pub fn invite_failed(&mut self, room_id: &str, msu_session: SessionId, fx: &mut Effects) {
        let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) else {
            return;
        };
        let Some(msu_id) = room.msu.clone() else {
            return;
        };
        if self.msus.session_of(&msu_id) != Some(msu_session) {
            // The room moved meanwhile.
            return;
        }
        room.msu = None;
        self.msus.release(&msu_id, room_id);
        self.invite_msu(room_id, Some(&msu_id), fx);
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
            tracing::info!(room.id = %r.room_id, user.id = %r.user_id, session.id = sid, "join refused: user already joined from another session");
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
        tracing::info!(room.id = %r.room_id, user.id = %r.user_id, session.id = sid, audience = r.audience, "user joined");
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
            tracing::info!(room.id = %r.room_id, user.id = %r.user_id, session.id = sid, holder = other, "push refused: the user is another session's");
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
        tracing::info!(room.id = %r.room_id, user.id = %r.user_id, "user disconnected");
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
        self.remove(&r.room_id, &r.user_id);
        tracing::info!(room.id = %r.room_id, user.id = %r.user_id, "user left");
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
        tracing::info!(room.id = %r.room_id, user.id = %r.user_id, session.id = sid, "user reconnected");
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

    // ----- operator operations ---------------------------------------------

    /// Removes a user; every session of the room (its own too) gets
    /// `userLeave`. Returns how many sessions were told.
    pub fn remove_user(
        &mut self,
        room_id: &str,
        user_id: &str,
        fx: &mut Effects,
    ) -> Result<u32, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        required(user_id, "user_id", "user_id is required")?;
        let room = self.room(room_id)?;
        if !room.users.contains_key(user_id) {
            return Err(CenterError::UserNotFound(user_id.to_owned()));
        }
        let notified = fx.send(room.audience_but(&[]), user_left(room_id, user_id));
        self.remove(room_id, user_id);
        tracing::info!(
            room.id = room_id,
            user.id = user_id,
            "user removed by operator"
        );
        fx.event(
            room_id,
            EventKind::UserLeft,
            user_left_event(user_id, "kicked"),
        );
        self.drop_if_empty(room_id, fx);
        Ok(notified)
    }

    /// Closes a room; every session gets `userLeave` for each user.
    pub fn close_room(&mut self, room_id: &str, fx: &mut Effects) -> Result<u32, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        let room = self.room(room_id)?;
        let mut user_ids: Vec<String> = room.users.keys().cloned().collect();
        user_ids.sort();
        let to = room.audience_but(&[]);
        for user_id in &user_ids {
            fx.send(to.clone(), user_left(room_id, user_id));
        }
        for user_id in &user_ids {
            self.remove(room_id, user_id);
            fx.event(
                room_id,
                EventKind::UserLeft,
                user_left_event(user_id, "room closed"),
            );
        }
        self.drop_if_empty(room_id, fx);
        Ok(count(user_ids.len()))
    }

    /// `textMessage` into a room as the system (`user_id` empty) or a user.
    pub fn send_text(
        &self,
        room_id: &str,
        user_id: &str,
        user_name: &str,
        message: &str,
        fx: &mut Effects,
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
        let reached = fx.send(
            room.audience_but(&[]),
            peer_event::Kind::TextMessage(proto::TextMessage {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
                user_name: name,
                message: message.to_owned(),
                extra: HashMap::new(),
            }),
        );
        fx.event(
            room_id,
            EventKind::TextMessage,
            Event::TextMessage(proto::TextMessageEvent {
                user_id: user_id.to_owned(),
                message: message.to_owned(),
            }),
        );
        Ok(reached)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster_proto as cp;
    use prost::Message as _;

    /// Everything the rules hold, indexes included, in a stable order.
    fn fingerprint(r: &Rules) -> String {
        let mut rooms: Vec<_> = r
            .rooms
            .iter()
            .map(|(id, room)| {
                let mut users: Vec<_> = room
                    .users
                    .iter()
                    .map(|(u, user)| {
                        format!(
                            "{u}:{}:{}:{:?}:{:?}",
                            user.name, user.audience, user.holder, user.pushers
                        )
                    })
                    .collect();
                users.sort();
                let mut listeners: Vec<_> = room.listeners.iter().collect();
                listeners.sort();
                format!("{id} msu={:?} users={users:?} hear={listeners:?}", room.msu)
            })
            .collect();
        rooms.sort();
        let mut sessions: Vec<_> = r
            .sessions
            .iter()
            .map(|(sid, h)| {
                let mut held: Vec<_> = h
                    .rooms
                    .iter()
                    .map(|(room, users)| {
                        let mut users: Vec<_> = users.iter().collect();
                        users.sort();
                        format!("{room}={users:?}")
                    })
                    .collect();
                held.sort();
                let mut msus: Vec<_> = h.msus.iter().collect();
                msus.sort();
                format!(
                    "{sid}:{}:{}:{}:{held:?}:{msus:?}",
                    h.identity, h.incarnation, h.opened
                )
            })
            .collect();
        sessions.sort();
        let orphans = r.orphans.listed();
        // Deadlines may hold entries of users claimed since; only the due
        // orphans they name matter.
        let deadlines: Vec<_> =
            r.orphans
                .deadlines()
                .map(|(d, k)| (d, k.clone()))
                .filter(|(d, (room, user))| {
                    r.rooms.get(room).and_then(|x| x.users.get(user)).is_some_and(
                    |u| matches!(u.holder, Holder::Orphan { deadline, .. } if deadline == *d),
                )
                })
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
        format!(
            "opened={} rooms={rooms:#?} sessions={sessions:#?} orphans={orphans:?} deadlines={deadlines:?} msus={:?}",
            r.opened,
            r.msus()
        )
    }

    fn join(r: &mut Rules, sid: SessionId, room: &str, user: &str) {
        let req = proto::JoinRequest {
            room_id: room.into(),
            user_id: user.into(),
            user_name: user.to_uppercase(),
            ..Default::default()
        };
        r.join(sid, req, &mut Effects::default()).unwrap();
    }

    /// Every index agrees with the rooms: a user held by a session is in
    /// that session's holdings and counts once in the room's listeners;
    /// an orphan is listed under its identity with its deadline; a room's
    /// MSU serves it; no empty room or holding is kept.
    fn check_indexes(r: &Rules) -> Result<(), String> {
        let listed = r.orphans.listed();
        for (room_id, room) in &r.rooms {
            if room.users.is_empty() {
                return Err(format!("empty room {room_id} kept"));
            }
            let mut listeners: HashMap<SessionId, u32> = HashMap::new();
            for (user_id, user) in &room.users {
                let key = (room_id.clone(), user_id.clone());
                match &user.holder {
                    Holder::Session { sid, .. } => {
                        *listeners.entry(*sid).or_default() += 1;
                        let held = r
                            .sessions
                            .get(sid)
                            .and_then(|h| h.rooms.get(room_id))
                            .is_some_and(|users| users.contains(user_id));
                        if !held {
                            return Err(format!("{key:?} held by {sid}, which does not list it"));
                        }
                    }
                    Holder::Orphan {
                        identity, deadline, ..
                    } => {
                        if !listed.contains(&(identity.to_string(), key.clone())) {
                            return Err(format!("orphan {key:?} not listed under {identity}"));
                        }
                        if !r
                            .orphans
                            .deadlines()
                            .any(|(d, k)| d == *deadline && *k == key)
                        {
                            return Err(format!("orphan {key:?} has no deadline entry"));
                        }
                    }
                }
            }
            if listeners != room.listeners {
                return Err(format!(
                    "{room_id} listeners {:?}, held {listeners:?}",
                    room.listeners
                ));
            }
            if let Some(msu) = &room.msu
                && !r
                    .msus
                    .iter()
                    .any(|(id, m)| id == msu && m.rooms.contains(room_id))
            {
                return Err(format!(
                    "{room_id} names MSU {msu}, which does not serve it"
                ));
            }
        }
        for (sid, h) in &r.sessions {
            for (room_id, users) in &h.rooms {
                if users.is_empty() {
                    return Err(format!("session {sid} keeps an empty holding in {room_id}"));
                }
                for user_id in users {
                    let holder = r
                        .rooms
                        .get(room_id)
                        .and_then(|room| room.users.get(user_id))
                        .and_then(User::holder_session);
                    if holder != Some(*sid) {
                        return Err(format!(
                            "{sid} lists {room_id}/{user_id}, held by {holder:?}"
                        ));
                    }
                }
            }
        }
        for (identity, (room_id, user_id)) in listed {
            let orphan_of = r
                .rooms
                .get(&room_id)
                .and_then(|room| room.users.get(&user_id))
                .and_then(|u| match &u.holder {
                    Holder::Orphan { identity, .. } => Some(identity.to_string()),
                    Holder::Session { .. } => None,
                });
            if orphan_of.as_deref() != Some(identity.as_str()) {
                return Err(format!(
                    "{identity} lists {room_id}/{user_id}, an orphan of {orphan_of:?}"
                ));
            }
        }
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Step {
        Open {
            sid: u8,
            peer: u8,
            incarnation: u8,
        },
        Close {
            sid: u8,
        },
        Join {
            sid: u8,
            room: u8,
            user: u8,
            audience: bool,
        },
        Push {
            sid: u8,
            room: u8,
            user: u8,
        },
        Disconnect {
            sid: u8,
            room: u8,
            user: u8,
        },
        Reconnect {
            sid: u8,
            room: u8,
            user: u8,
        },
        Leave {
            sid: u8,
            room: u8,
            user: u8,
        },
        Remove {
            room: u8,
            user: u8,
        },
        CloseRoom {
            room: u8,
        },
        Msu {
            sid: u8,
            msu: u8,
        },
        InviteFailed {
            sid: u8,
            room: u8,
        },
        Wait {
            secs: u8,
        },
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        let (s, r, u) = (0..4u8, 0..3u8, 0..4u8);
        prop_oneof![
            (s.clone(), 0..3u8, 0..2u8).prop_map(|(sid, peer, incarnation)| Step::Open {
                sid,
                peer,
                incarnation
            }),
            s.clone().prop_map(|sid| Step::Close { sid }),
            (s.clone(), r.clone(), u.clone(), any::<bool>()).prop_map(
                |(sid, room, user, audience)| Step::Join {
                    sid,
                    room,
                    user,
                    audience
                }
            ),
            (s.clone(), r.clone(), u.clone()).prop_map(|(sid, room, user)| Step::Push {
                sid,
                room,
                user
            }),
            (s.clone(), r.clone(), u.clone()).prop_map(|(sid, room, user)| Step::Disconnect {
                sid,
                room,
                user
            }),
            (s.clone(), r.clone(), u.clone()).prop_map(|(sid, room, user)| Step::Reconnect {
                sid,
                room,
                user
            }),
            (s.clone(), r.clone(), u.clone()).prop_map(|(sid, room, user)| Step::Leave {
                sid,
                room,
                user
            }),
            (r.clone(), u.clone()).prop_map(|(room, user)| Step::Remove { room, user }),
            r.clone().prop_map(|room| Step::CloseRoom { room }),
            (s.clone(), 0..2u8).prop_map(|(sid, msu)| Step::Msu { sid, msu }),
            (s, r).prop_map(|(sid, room)| Step::InviteFailed { sid, room }),
            (0..40u8).prop_map(|secs| Step::Wait { secs }),
        ]
    }

    proptest::proptest! {
        /// Any sequence of commands, sessions ending and time passing
        /// (refused commands included) leaves every index consistent with
        /// the rooms, and a snapshot of the state restores it exactly.
        #[test]
        fn every_step_keeps_the_indexes_consistent(
            steps in proptest::collection::vec(step(), 1..60),
            replace in proptest::prelude::any::<bool>(),
        ) {
            let config = RulesConfig {
                reconnect_grace: Duration::from_secs(30),
                duplicate_user: if replace { DuplicatePolicy::Replace } else { DuplicatePolicy::Reject },
                max_users_per_session: 6,
                ..RulesConfig::default()
            };
            let mut r = Rules::new(config.clone());
            let fx = &mut Effects::default();
            let mut now = Duration::ZERO;
            let mut open: HashSet<SessionId> = HashSet::new();
            let mut next_sid = 100;
            // Slot -> its session id now (a slot reopened gets a new id).
            let mut slot: HashMap<u8, SessionId> = HashMap::new();
            let name = |room: u8, user: u8| (format!("r{room}"), format!("u{user}"));
            for st in steps {
                let live = |s: u8, slot: &HashMap<u8, SessionId>, open: &HashSet<SessionId>| {
                    slot.get(&s).copied().filter(|sid| open.contains(sid))
                };
                match st {
                    Step::Open { sid, peer, incarnation } => {
                        if live(sid, &slot, &open).is_none() {
                            next_sid += 1;
                            slot.insert(sid, next_sid);
                            open.insert(next_sid);
                            r.open_session(next_sid, &format!("sfu{peer}"), &format!("i{incarnation}"), fx);
                        }
                    }
                    Step::Close { sid } => {
                        if let Some(id) = live(sid, &slot, &open) {
                            open.remove(&id);
                            r.close_session(id, now, fx);
                        }
                    }
                    Step::Join { sid, room, user, audience } => if let Some(id) = live(sid, &slot, &open) {
                        let (room_id, user_id) = name(room, user);
                        let _ = r.join(id, proto::JoinRequest { room_id, user_id, user_name: "n".into(), audience, ..Default::default() }, fx);
                    }
                    Step::Push { sid, room, user } => if let Some(id) = live(sid, &slot, &open) {
                        let (room_id, user_id) = name(room, user);
                        let publishers = vec![proto::Publisher { pusher_id: format!("p{sid}"), ..Default::default() }];
                        let _ = r.push(id, proto::PushRequest { room_id, user_id, publishers, ..Default::default() }, fx);
                    }
                    Step::Disconnect { sid, room, user } => if let Some(id) = live(sid, &slot, &open) {
                        let (room_id, user_id) = name(room, user);
                        let _ = r.user_disconnect(id, proto::UserDisconnectRequest { room_id, user_id, ..Default::default() }, fx);
                    }
                    Step::Reconnect { sid, room, user } => if let Some(id) = live(sid, &slot, &open) {
                        let (room_id, user_id) = name(room, user);
                        let _ = r.user_reconnect(id, proto::UserReConnectRequest { room_id, user_id, ..Default::default() }, fx);
                    }
                    Step::Leave { sid, room, user } => if let Some(id) = live(sid, &slot, &open) {
                        let (room_id, user_id) = name(room, user);
                        let _ = r.user_leave(id, proto::UserLeaveRequest { room_id, user_id, ..Default::default() }, fx);
                    }
                    Step::Remove { room, user } => {
                        let (room_id, user_id) = name(room, user);
                        let _ = r.remove_user(&room_id, &user_id, fx);
                    }
                    Step::CloseRoom { room } => {
                        let _ = r.close_room(&name(room, 0).0, fx);
                    }
                    Step::Msu { sid, msu } => if let Some(id) = live(sid, &slot, &open) {
                        let req = proto::RegisterMsuRequest { msu_id: format!("m{msu}") };
                        let _ = r.register_msu(id, req, SystemTime::UNIX_EPOCH, fx);
                    }
                    Step::InviteFailed { sid, room } => if let Some(id) = live(sid, &slot, &open) {
                        r.invite_failed(&name(room, 0).0, id, fx);
                    }
                    Step::Wait { secs } => {
                        now += Duration::from_secs(secs.into());
                        r.expire(now, fx);
                    }
                }
                if let Err(e) = check_indexes(&r) {
                    proptest::prop_assert!(false, "{e}");
                }
            }
            let mut snap = cp::Snapshot::default();
            r.freeze().write(&mut snap);
            let restored = Rules::import(config, &snap);
            proptest::prop_assert_eq!(fingerprint(&restored), fingerprint(&r));
        }
    }

    #[test]
    fn indexes_give_their_memory_back_after_a_crowd_of_orphans_expires() {
        // 5,000 SFUs of one user each drop and never return: after their
        // grace every index that grew with them is small again, so the
        // heap it used can go back to the OS (issue 11, item 8).
        let config = RulesConfig {
            reconnect_grace: Duration::from_secs(30),
            ..RulesConfig::default()
        };
        let mut r = Rules::new(config);
        let fx = &mut Effects::default();
        for sid in 1..=5000u64 {
            r.open_session(sid, &format!("sfu-{sid}"), "", fx);
            join(&mut r, sid, &format!("room-{sid}"), "u");
        }
        for sid in 1..=5000u64 {
            r.close_session(sid, Duration::ZERO, fx);
        }
        assert_eq!(r.orphans.identities(), 5000);
        r.expire(Duration::from_secs(30), fx);
        assert!(r.rooms.is_empty() && r.sessions.is_empty() && r.orphans.identities() == 0);
        for (name, capacity) in [
            ("rooms", r.rooms.capacity()),
            ("sessions", r.sessions.capacity()),
            ("orphans", r.orphans.capacity()),
        ] {
            assert!(capacity <= 1024, "{name} keeps room for {capacity}");
        }
    }

    #[test]
    fn a_snapshot_restores_every_rule_and_index() {
        let config = RulesConfig {
            reconnect_grace: Duration::from_secs(30),
            ..RulesConfig::default()
        };
        let mut r = Rules::new(config.clone());
        let fx = &mut Effects::default();
        for (sid, identity) in [(1, "sfu-a"), (2, "sfu-b"), (3, "msu"), (4, "sfu-c")] {
            r.open_session(sid, identity, "", fx);
        }
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        r.register_msu(
            3,
            proto::RegisterMsuRequest {
                msu_id: "m1".into(),
            },
            at,
            fx,
        )
        .unwrap();
        join(&mut r, 1, "r1", "u1");
        join(&mut r, 2, "r1", "u2");
        join(&mut r, 1, "r2", "u3");
        join(&mut r, 4, "r2", "u4");
        let push = proto::PushRequest {
            room_id: "r1".into(),
            user_id: "u1".into(),
            publishers: vec![proto::Publisher {
                pusher_id: "p1".into(),
                rtp_param_json: r#"{"x": 1.50}"#.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        r.push(1, push, fx).unwrap();
        let gone = proto::UserDisconnectRequest {
            room_id: "r1".into(),
            user_id: "u2".into(),
            ..Default::default()
        };
        r.user_disconnect(2, gone, fx).unwrap();
        r.close_session(1, Duration::from_secs(10), fx);

        let mut snap = cp::Snapshot::default();
        r.freeze().write(&mut snap);
        let snap = cp::Snapshot::decode(snap.encode_to_vec().as_slice()).unwrap();
        let mut loaded = Rules::new(config);
        loaded.open_session(99, "stale", "", &mut Effects::default());
        join(&mut loaded, 99, "stale", "x"); // replaced by the load
        loaded.load(&snap);
        assert_eq!(fingerprint(&loaded), fingerprint(&r));
        let mut again = cp::Snapshot::default();
        loaded.freeze().write(&mut again);
        assert_eq!(again, snap);

        // And both go on alike: sfu-a back takes its users, then the rest
        // of the grace ends. A state frozen before stays as it was.
        let frozen = r.freeze();
        let (mut a, mut b) = (Effects::default(), Effects::default());
        assert_eq!(r.open_session(5, "sfu-a", "", &mut a).reclaimed, 2);
        assert_eq!(loaded.open_session(5, "sfu-a", "", &mut b).reclaimed, 2);
        r.close_session(2, Duration::from_secs(20), &mut a);
        loaded.close_session(2, Duration::from_secs(20), &mut b);
        r.expire(Duration::from_secs(60), &mut a);
        loaded.expire(Duration::from_secs(60), &mut b);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_eq!(fingerprint(&loaded), fingerprint(&r));
        let mut then = cp::Snapshot::default();
        frozen.write(&mut then);
        assert_eq!(then, snap);
        assert_ne!(
            fingerprint(&loaded),
            fingerprint(&Rules::import(RulesConfig::default(), &snap))
        );
    }
}
