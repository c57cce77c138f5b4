//! Sessions opening and ending: users taken back by the same identity and
//! incarnation, left at once for another incarnation, orphaned for the
//! grace when their session ends, and gone when it is over.

use super::*;

impl Rules {
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
        // Another process of the peer: its receive relays are gone.
        self.drop_destinations(&identity, Some(&incarnation), fx);
        if gone > 0 {
            happened!(self, session.id = sid, peer.id = %identity, peer.incarnation = %incarnation, users = gone, "users of the peer's previous process left");
        }
        Opened { reclaimed, gone }
    }

    /// Every user `sid` holds leaves now (its peer's process is gone);
    /// returns how many.
    pub(super) fn forget_holdings(&mut self, sid: SessionId, fx: &mut Effects) -> u32 {
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
            if self.remove(&room_id, &user_id, fx) {
                self.announce_left(&room_id, &user_id, "peer restarted", fx);
                gone += 1;
            }
        }
        gone
    }

    /// Tells the room a removed user left (`userLeave` to every session
    /// hearing it, the feed), and drops the room if it is empty now.
    pub(super) fn announce_left(
        &mut self,
        room_id: &str,
        user_id: &str,
        reason: &str,
        fx: &mut Effects,
    ) {
        if let Some(room) = self.rooms.get(room_id) {
            fx.send(room.audience_but(&[]), user_left(room_id, user_id));
        }
        happened!(self, room.id = %room_id, user.id = %user_id, reason, "user left");
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
    pub(super) fn take_orphans(
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
            } else if self.remove(&room_id, &user_id, fx) {
                self.announce_left(&room_id, &user_id, "peer restarted", fx);
                gone += 1;
            }
        }
        if taken > 0 {
            happened!(self, session.id = sid, peer.id = %identity, users = taken, "users taken back after reconnect");
        }
        (taken, gone)
    }

    /// `sid` takes an unbound user back: `userReConnect` to the room.
    pub(super) fn reclaim(
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
            let mut left: Vec<String> = Vec::new();
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
                    left.push(user_id);
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
            for user_id in left {
                self.end_relay(&room_id, &user_id, "publisher left", fx);
            }
            self.drop_if_empty(&room_id, fx);
        }
        let mut msus: Vec<String> = h.msus.into_iter().collect();
        msus.sort();
        for msu_id in msus {
            self.lose_msu(&msu_id, fx);
        }
        if grace.is_zero() {
            // No grace: its process may not come back for what it pulled.
            self.drop_destinations(&h.identity, None, fx);
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
        let mut gone: Vec<Arc<str>> = Vec::new();
        while let Some((deadline, due)) = self.orphans.due(now) {
            for (room_id, user_id) in due {
                let identity = self
                    .rooms
                    .get(&room_id)
                    .and_then(|r| r.users.get(&user_id))
                    .and_then(|u| match &u.holder {
                        Holder::Orphan {
                            deadline: d,
                            identity,
                            ..
                        } if *d == deadline => Some(identity.clone()),
                        _ => None,
                    });
                let Some(identity) = identity else {
                    continue;
                };
                gone.push(identity);
                self.remove(&room_id, &user_id, fx);
                self.announce_left(&room_id, &user_id, "grace expired", fx);
            }
        }
        // The peers whose grace is over: what they pulled goes too.
        gone.sort();
        gone.dedup();
        for identity in gone {
            self.drop_destinations(&identity, None, fx);
        }
    }

    /// When the next grace ends, if any user is waiting.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.orphans.next_deadline()
    }
}
