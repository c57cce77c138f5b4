//! The snapshot codec: the whole state of the rules (and, with the
//! registry's part, of the center) as one `pilot.cluster.v1.Snapshot`, and
//! back. Both durable stores use it: a Redis cluster's joining node and the
//! local state directory (`center.state_dir`) start from a snapshot and
//! replay the log entries after it.

use super::rules::{Holder, Holdings, Msu, Room, Rules, RulesConfig, User, millis};
use crate::cluster_proto as cp;
use crate::ids::SessionId;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The rules' state at one moment ([`Rules::freeze`]).
pub struct FrozenRules {
    opened: u64,
    sessions: Vec<(SessionId, Arc<str>, Arc<str>, u64)>,
    rooms: Vec<(String, Arc<Room>)>,
    msus: Vec<(String, SessionId, Vec<String>, SystemTime)>,
    /// MSU id -> its media address.
    media: HashMap<String, (String, i64)>,
    recordings: Vec<crate::proto::Recording>,
    playbacks: Vec<crate::proto::Playback>,
}

impl FrozenRules {
    /// Writes the sessions (id, identity, opening order; the registry adds
    /// the rest), rooms and MSUs into `snap`. Sorted, so equal states give
    /// equal snapshots.
    pub fn write(self, snap: &mut cp::Snapshot) {
        snap.sessions_opened = self.opened;
        snap.sessions = self
            .sessions
            .into_iter()
            .map(
                |(session_id, identity, incarnation, opened)| cp::SnapshotSession {
                    session_id,
                    peer_id: identity.to_string(),
                    incarnation: incarnation.to_string(),
                    opened,
                    ..Default::default()
                },
            )
            .collect();
        snap.sessions.sort_by_key(|s| s.session_id);
        snap.rooms = self
            .rooms
            .into_iter()
            .map(|(room_id, room)| {
                let mut users: Vec<cp::SnapshotUser> = room
                    .users
                    .iter()
                    .map(|(user_id, u)| cp::SnapshotUser {
                        user_id: user_id.clone(),
                        user_name: u.name.clone(),
                        audience: u.audience,
                        pushers: u.pushers.clone(),
                        holder: Some(match &u.holder {
                            Holder::Session { sid, connected } => {
                                cp::snapshot_user::Holder::Session(cp::SnapshotHeld {
                                    session_id: *sid,
                                    connected: *connected,
                                })
                            }
                            Holder::Orphan {
                                identity,
                                incarnation,
                                deadline,
                            } => cp::snapshot_user::Holder::Orphan(cp::SnapshotOrphan {
                                peer_id: identity.to_string(),
                                deadline_ms: millis(*deadline),
                                incarnation: incarnation.to_string(),
                            }),
                        }),
                    })
                    .collect();
                users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
                cp::SnapshotRoom {
                    room_id,
                    msu_id: room.msu.clone().unwrap_or_default(),
                    users,
                    relays: room.relays.values().cloned().collect(),
                }
            })
            .collect();
        snap.rooms.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        snap.recordings = self.recordings;
        snap.playbacks = self.playbacks;
        snap.msus = self
            .msus
            .into_iter()
            .map(|(msu_id, session_id, room_ids, at)| {
                let (udp_ip, udp_port) = self.media.get(&msu_id).cloned().unwrap_or_default();
                cp::SnapshotMsu {
                    msu_id,
                    session_id,
                    room_ids,
                    registered_at_unix_ms: crate::clock::unix_ms(at),
                    udp_ip,
                    udp_port,
                }
            })
            .collect();
    }
}

impl Rules {
    /// The rules' state at this moment, cheap to take under the center's
    /// lock: the rooms are shared, not copied (see [`Room`]).
    /// [`FrozenRules::write`] turns it into a snapshot away from the lock.
    pub fn freeze(&self) -> FrozenRules {
        FrozenRules {
            opened: self.opened,
            sessions: self
                .sessions
                .iter()
                .map(|(sid, h)| (*sid, h.identity.clone(), h.incarnation.clone(), h.opened))
                .collect(),
            rooms: self
                .rooms
                .iter()
                .map(|(id, room)| (id.clone(), room.clone()))
                .collect(),
            msus: self.msus(),
            media: self
                .msus
                .iter()
                .filter_map(|(id, m)| Some((id.clone(), m.media.clone()?)))
                .collect(),
            recordings: self.recordings.values().cloned().collect(),
            playbacks: self.playbacks.values().cloned().collect(),
        }
    }

    /// Replaces the state by the one `snap` describes (see
    /// [`Rules::freeze`]); what only points elsewhere (who hears a room, a
    /// session's holdings, orphans by identity, grace deadlines) is rebuilt
    /// from the users.
    pub fn load(&mut self, snap: &cp::Snapshot) {
        *self = Self::import(self.config.clone(), snap);
    }

    pub(super) fn import(config: RulesConfig, snap: &cp::Snapshot) -> Self {
        let mut rules = Self::new(config);
        rules.opened = snap.sessions_opened;
        // One shared string per identity, as sessions opening would make.
        let mut identities: HashMap<&str, Arc<str>> = HashMap::new();
        fn intern<'a>(identities: &mut HashMap<&'a str, Arc<str>>, id: &'a str) -> Arc<str> {
            identities
                .entry(id)
                .or_insert_with(|| Arc::from(id))
                .clone()
        }
        for s in &snap.sessions {
            rules.sessions.insert(
                s.session_id,
                Holdings {
                    identity: intern(&mut identities, &s.peer_id),
                    incarnation: intern(&mut identities, &s.incarnation),
                    opened: s.opened,
                    rooms: HashMap::new(),
                    msus: HashSet::new(),
                },
            );
        }
        for r in &snap.rooms {
            let mut room = Room {
                msu: (!r.msu_id.is_empty()).then(|| r.msu_id.clone()),
                relays: r
                    .relays
                    .iter()
                    .map(|relay| (relay.pusher_user_id.clone(), relay.clone()))
                    .collect(),
                ..Room::default()
            };
            for u in &r.users {
                let holder = match &u.holder {
                    Some(cp::snapshot_user::Holder::Session(h)) => {
                        *room.listeners.entry(h.session_id).or_default() += 1;
                        if let Some(held) = rules.sessions.get_mut(&h.session_id) {
                            held.rooms
                                .entry(r.room_id.clone())
                                .or_default()
                                .insert(u.user_id.clone());
                        }
                        Holder::Session {
                            sid: h.session_id,
                            connected: h.connected,
                        }
                    }
                    Some(cp::snapshot_user::Holder::Orphan(o)) => {
                        let identity = intern(&mut identities, &o.peer_id);
                        let incarnation = intern(&mut identities, &o.incarnation);
                        let deadline = Duration::from_millis(o.deadline_ms);
                        let key = (r.room_id.clone(), u.user_id.clone());
                        rules.orphans.add(&identity, key, deadline);
                        Holder::Orphan {
                            identity,
                            incarnation,
                            deadline,
                        }
                    }
                    // Written by every export; a snapshot without it is not ours.
                    None => continue,
                };
                room.users.insert(
                    u.user_id.clone(),
                    User {
                        name: u.user_name.clone(),
                        audience: u.audience,
                        holder,
                        pushers: u.pushers.clone(),
                    },
                );
            }
            for relay in room.relays.values() {
                for d in &relay.destinations {
                    rules
                        .pullers
                        .entry(d.peer_id.clone())
                        .or_default()
                        .insert((r.room_id.clone(), relay.pusher_user_id.clone()));
                }
            }
            rules.rooms.insert(r.room_id.clone(), Arc::new(room));
        }
        for r in &snap.recordings {
            rules.recordings.insert(r.recording_id.clone(), r.clone());
            if r.state() == crate::proto::RecordingState::Recording
                && let Some(room) = rules.rooms.get_mut(&r.room_id).map(Arc::make_mut)
            {
                room.recording = Some(r.recording_id.clone());
            }
        }
        for p in &snap.playbacks {
            rules.playbacks.insert(p.playback_id.clone(), p.clone());
        }
        for m in &snap.msus {
            if let Some(held) = rules.sessions.get_mut(&m.session_id) {
                held.msus.insert(m.msu_id.clone());
            }
            rules.msus.restore(
                m.msu_id.clone(),
                Msu {
                    session: m.session_id,
                    rooms: m.room_ids.iter().cloned().collect(),
                    registered_at: SystemTime::UNIX_EPOCH
                        + Duration::from_millis(m.registered_at_unix_ms),
                    media: (!m.udp_ip.is_empty()).then(|| (m.udp_ip.clone(), m.udp_port)),
                },
            );
        }
        rules
    }
}
