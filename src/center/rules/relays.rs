//! Media relays between SFUs (PROTOCOL.md §8): where each publisher's
//! media goes once another SFU pulled it.
//!
//! The real SFU sends a publisher to one destination only, the first
//! `pullRemoteStream`'s, for as long as the publisher stays. So:
//! - in a room with an MSU that registered a media address, the first pull
//!   of a publisher is sent upstream with the **MSU's** address (and so is
//!   each later pull of a track not asked yet), and every pull, from any
//!   SFU, becomes a destination the MSU forwards the publisher's RTP to;
//!   the MSU hears the whole relay (`relay`) each time it changes;
//! - with no MSU, the first pull's address is where the SFU sends; a pull
//!   naming another address is still forwarded, but the SFU will not serve
//!   it: it is counted, logged and on the feed (`PullUnserved`).
//!
//! A relay stays bound to its MSU (and address) for the publisher's stay:
//! the SFU keeps sending there, so an MSU that comes back under its id on
//! the same address is given its relays again. A destination lives as long
//! as its puller's process: through a reconnect (same identity and
//! incarnation) and its grace, not past another incarnation of it or the
//! end of its grace.

use super::*;

/// A destination's address.
type Addr = (String, i64);

impl Rules {
    /// Records `r`, a pull `sid` sent for a user of an existing room that
    /// `target` speaks for, in the publisher's relay; returns the pull to
    /// forward to `target`, if any (the original one, or one naming the
    /// MSU's address).
    pub(super) fn relay_pull(
        &mut self,
        sid: SessionId,
        r: &proto::PullRemoteStreamRequest,
        fx: &mut Effects,
    ) -> Option<proto::PullRemoteStreamRequest> {
        let (identity, incarnation) = self
            .sessions
            .get(&sid)
            .map(|h| (h.identity.to_string(), h.incarnation.to_string()))
            .unwrap_or_default();
        let pusher_id = r
            .push_info
            .as_ref()
            .map(|p| p.pusher_id.clone())
            .unwrap_or_default();
        let asked: Addr = (r.udp_ip.clone(), r.udp_port);
        let hub = self
            .rooms
            .get(&r.room_id)?
            .msu
            .as_ref()
            .and_then(|m| Some((m.clone(), self.msus.media_of(m)?.clone())));
        let room = self.rooms.get_mut(&r.room_id).map(Arc::make_mut)?;
        let relay = room
            .relays
            .entry(r.pusher_user_id.clone())
            .or_insert_with(|| {
                let (msu_id, (udp_ip, udp_port)) = match &hub {
                    Some((msu, addr)) => (msu.clone(), addr.clone()),
                    None => (String::new(), asked.clone()),
                };
                proto::Relay {
                    room_id: r.room_id.clone(),
                    pusher_user_id: r.pusher_user_id.clone(),
                    msu_id,
                    udp_ip,
                    udp_port,
                    ..Default::default()
                }
            });
        let new_track = !relay.pushers.iter().any(|p| p.pusher_id == pusher_id);
        if new_track && let Some(p) = &r.push_info {
            relay.pushers.push(p.clone());
        }
        let serving: Addr = (relay.udp_ip.clone(), relay.udp_port);
        let through_msu = !relay.msu_id.is_empty();
        if !through_msu && asked != serving {
            // The SFU sends this publisher to the first puller only.
            happened!(self, room.id = %r.room_id, pusher.user = %r.pusher_user_id, session.id = sid, udp = %format!("{}:{}", asked.0, asked.1), serving = %format!("{}:{}", serving.0, serving.1), "pull unserved: no MSU in the room, and the publisher's SFU sends to another puller");
            fx.pulls_unserved += 1;
            fx.event(
                &r.room_id,
                EventKind::PullUnserved,
                Event::PullUnserved(proto::PullUnserved {
                    pusher_user_id: r.pusher_user_id.clone(),
                    from_session_id: sid,
                    udp_ip: asked.0,
                    udp_port: asked.1,
                    serving_udp_ip: serving.0,
                    serving_udp_port: serving.1,
                }),
            );
            // Forwarded all the same: an SFU that serves more gets it.
            return Some(r.clone());
        }
        let added = add_destination(relay, sid, &identity, &incarnation, asked, &pusher_id);
        let relay = relay.clone();
        self.pullers
            .entry(identity)
            .or_default()
            .insert((r.room_id.clone(), r.pusher_user_id.clone()));
        // A pull repeated (another subscriber on the same SFU) changes
        // nothing: no word to the MSU, no event.
        if added || new_track {
            self.relay_changed(&relay, fx);
        }
        if !through_msu {
            return Some(r.clone());
        }
        // Through the MSU: its address, once per track.
        new_track.then(|| proto::PullRemoteStreamRequest {
            udp_ip: relay.udp_ip.clone(),
            udp_port: relay.udp_port,
            payload_json: String::new(),
            ..r.clone()
        })
    }

    /// The relay changed: its MSU (when live) hears it whole; the feed too.
    pub(super) fn relay_changed(&self, relay: &proto::Relay, fx: &mut Effects) {
        // An MSU id is never empty: a relay without one finds no session.
        if let Some(session) = self.msus.session_of(&relay.msu_id) {
            fx.send(vec![session], peer_event::Kind::Relay(relay.clone()));
        }
        fx.event(
            &relay.room_id,
            EventKind::RelayChanged,
            Event::RelayChanged(relay.clone()),
        );
    }

    /// `relayStats` from the MSU of session `sid`: the counters of the
    /// relays bound to it (others' are left alone). No event: counters
    /// change all the time; listings show them.
    pub fn relay_stats(&mut self, sid: SessionId, r: proto::RelayStatsRequest) {
        let Some(msus) = self.sessions.get(&sid).map(|h| h.msus.clone()) else {
            return;
        };
        for c in r.relays {
            let Some(room) = self.rooms.get_mut(&c.room_id).map(Arc::make_mut) else {
                continue;
            };
            if let Some(relay) = room.relays.get_mut(&c.pusher_user_id)
                && msus.contains(&relay.msu_id)
            {
                relay.packets_in = c.packets_in;
                relay.packets_out = c.packets_out;
                relay.worst_fraction_lost = c.worst_fraction_lost;
            }
        }
    }

    /// `user_id` left `room_id`: its relay ends (its SFU stops sending).
    pub(super) fn end_relay(
        &mut self,
        room_id: &str,
        user_id: &str,
        reason: &str,
        fx: &mut Effects,
    ) {
        let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) else {
            return;
        };
        let Some(relay) = room.relays.remove(user_id) else {
            return;
        };
        let key = (room_id.to_owned(), user_id.to_owned());
        for d in &relay.destinations {
            self.forget_puller(&d.peer_id, &key);
        }
        let ended = proto::RelayEnded {
            room_id: room_id.to_owned(),
            pusher_user_id: user_id.to_owned(),
            msu_id: relay.msu_id.clone(),
            reason: reason.to_owned(),
        };
        // An MSU id is never empty: a relay without one finds no session.
        if let Some(session) = self.msus.session_of(&relay.msu_id) {
            fx.send(vec![session], peer_event::Kind::RelayEnded(ended.clone()));
        }
        fx.event(room_id, EventKind::RelayEnded, Event::RelayEnded(ended));
    }

    /// MSU `msu_id` (re)registered through `sid`: it hears every relay
    /// bound to it, in order, so that it forwards again what its SFUs still
    /// send it; a room of those left without an MSU is its again.
    pub(super) fn resend_relays(&mut self, msu_id: &str, sid: SessionId, fx: &mut Effects) {
        let mut room_ids: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, room)| room.relays.values().any(|r| r.msu_id == msu_id))
            .map(|(id, _)| id.clone())
            .collect();
        room_ids.sort();
        for room_id in &room_ids {
            if let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut)
                && room.msu.is_none()
            {
                room.msu = Some(msu_id.to_owned());
                self.msus.adopt(msu_id, room_id);
            }
            for relay in self.rooms[room_id].relays.values() {
                if relay.msu_id == msu_id {
                    fx.send(vec![sid], peer_event::Kind::Relay(relay.clone()));
                }
            }
        }
    }

    /// Drops the destinations of `identity` whose process is gone: those of
    /// another incarnation than `live` (`None`: of every incarnation that
    /// has no live session and no user waiting out its grace).
    pub(super) fn drop_destinations(
        &mut self,
        identity: &str,
        live: Option<&str>,
        fx: &mut Effects,
    ) {
        let alive = |rules: &Rules, incarnation: &str| match live {
            Some(live) => live == incarnation,
            None => {
                rules.orphans.has(identity)
                    || rules
                        .sessions
                        .values()
                        .any(|h| &*h.identity == identity && &*h.incarnation == incarnation)
            }
        };
        // Only the relays this identity pulls (sorted: the same order on
        // every node).
        let changed: Vec<(String, String)> = self
            .pullers
            .get(identity)
            .into_iter()
            .flatten()
            .filter(|(room_id, user_id)| {
                self.rooms
                    .get(room_id)
                    .and_then(|room| room.relays.get(user_id))
                    .is_some_and(|relay| {
                        relay
                            .destinations
                            .iter()
                            .any(|d| d.peer_id == identity && !alive(self, &d.incarnation))
                    })
            })
            .cloned()
            .collect();
        for (room_id, user_id) in changed {
            let keep: Vec<bool> = self.rooms[&room_id].relays[&user_id]
                .destinations
                .iter()
                .map(|d| d.peer_id != identity || alive(self, &d.incarnation))
                .collect();
            let Some(room) = self.rooms.get_mut(&room_id).map(Arc::make_mut) else {
                continue;
            };
            let Some(relay) = room.relays.get_mut(&user_id) else {
                continue;
            };
            let mut keep = keep.into_iter();
            relay.destinations.retain(|_| keep.next().unwrap_or(true));
            let relay = relay.clone();
            if !relay.destinations.iter().any(|d| d.peer_id == identity) {
                self.forget_puller(identity, &(room_id.clone(), user_id.clone()));
            }
            happened!(self, room.id = %room_id, pusher.user = %user_id, peer.id = identity, "relay destination dropped: its puller's process is gone");
            self.relay_changed(&relay, fx);
        }
    }
}

impl Rules {
    /// `identity` pulls relay `key` no more.
    fn forget_puller(&mut self, identity: &str, key: &(String, String)) {
        if let Some(keys) = self.pullers.get_mut(identity) {
            keys.remove(key);
            if keys.is_empty() {
                self.pullers.remove(identity);
            }
        }
    }
}

/// Adds (or refreshes) the destination at `addr` for track `pusher_id`;
/// whether the MSU has something new to hear (a destination or a track of
/// one).
fn add_destination(
    relay: &mut proto::Relay,
    sid: SessionId,
    identity: &str,
    incarnation: &str,
    addr: Addr,
    pusher_id: &str,
) -> bool {
    let at = relay
        .destinations
        .iter()
        .position(|d| d.udp_ip == addr.0 && d.udp_port == addr.1);
    let d = match at {
        Some(i) => &mut relay.destinations[i],
        None => {
            relay.destinations.push(proto::RelayDestination {
                udp_ip: addr.0,
                udp_port: addr.1,
                ..Default::default()
            });
            let last = relay.destinations.len() - 1;
            &mut relay.destinations[last]
        }
    };
    d.session_id = sid;
    identity.clone_into(&mut d.peer_id);
    incarnation.clone_into(&mut d.incarnation);
    if d.pusher_ids.iter().any(|p| p == pusher_id) {
        return at.is_none();
    }
    d.pusher_ids.push(pusher_id.to_owned());
    true
}
