//! Tests of the rules as a whole: every index consistent after any step,
//! a snapshot that restores every rule, memory given back after a crowd.

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
            format!(
                "{id} msu={:?} users={users:?} hear={listeners:?} relays={:?} recording={:?}",
                room.msu, room.relays, room.recording
            )
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
    let deadlines: Vec<_> = r
        .orphans
        .deadlines()
        .map(|(d, k)| (d, k.clone()))
        .filter(|(d, (room, user))| {
            r.rooms
                .get(room)
                .and_then(|x| x.users.get(user))
                .is_some_and(
                    |u| matches!(u.holder, Holder::Orphan { deadline, .. } if deadline == *d),
                )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    format!(
        "opened={} rooms={rooms:#?} sessions={sessions:#?} orphans={orphans:?} deadlines={deadlines:?} msus={:?} recordings={:?}",
        r.opened,
        r.msus(),
        r.recordings
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
        let mut listeners: std::collections::BTreeMap<SessionId, u32> = Default::default();
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
    // Who pulls which relay, as the relays' destinations say.
    let mut pullers: HashMap<String, std::collections::BTreeSet<(String, String)>> = HashMap::new();
    for (room_id, room) in &r.rooms {
        for (user_id, relay) in &room.relays {
            for d in &relay.destinations {
                pullers
                    .entry(d.peer_id.clone())
                    .or_default()
                    .insert((room_id.clone(), user_id.clone()));
            }
        }
    }
    if pullers != r.pullers {
        return Err(format!("pullers {:?}, relays say {pullers:?}", r.pullers));
    }
    Ok(())
}

/// What a peer says about a user.
#[derive(Debug, Clone, Copy)]
enum Act {
    Join {
        audience: bool,
    },
    Push,
    Disconnect,
    Reconnect,
    Leave,
    /// Pull the user's stream (a relay destination per session slot).
    Pull,
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
    /// A peer command about one user, from session slot `sid`.
    User {
        sid: u8,
        room: u8,
        user: u8,
        act: Act,
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

fn act() -> impl proptest::strategy::Strategy<Value = Act> {
    use proptest::prelude::*;
    prop_oneof![
        any::<bool>().prop_map(|audience| Act::Join { audience }),
        Just(Act::Push),
        Just(Act::Disconnect),
        Just(Act::Reconnect),
        Just(Act::Leave),
        Just(Act::Pull),
    ]
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
        (s.clone(), r.clone(), u.clone(), act()).prop_map(|(sid, room, user, act)| Step::User {
            sid,
            room,
            user,
            act
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
                Step::User { sid, room, user, act } => if let Some(id) = live(sid, &slot, &open) {
                    let (room_id, user_id) = name(room, user);
                    let _ = match act {
                        Act::Join { audience } => r.join(id, proto::JoinRequest { room_id, user_id, user_name: "n".into(), audience, ..Default::default() }, fx).map(drop),
                        Act::Push => {
                            let publishers = vec![proto::Publisher { pusher_id: format!("p{sid}"), ..Default::default() }];
                            r.push(id, proto::PushRequest { room_id, user_id, publishers, ..Default::default() }, fx)
                        }
                        Act::Disconnect => r.user_disconnect(id, proto::UserDisconnectRequest { room_id, user_id, ..Default::default() }, fx),
                        Act::Reconnect => r.user_reconnect(id, proto::UserReConnectRequest { room_id, user_id, ..Default::default() }, fx),
                        Act::Leave => r.user_leave(id, proto::UserLeaveRequest { room_id, user_id, ..Default::default() }, fx),
                        Act::Pull => {
                            // Any pusher of the user (the sessions push p{slot}).
                            let pusher = r.rooms.get(&room_id).and_then(|x| x.users.get(&user_id)).and_then(|u| u.pushers.first()).map(|p| p.pusher_id.clone()).unwrap_or_default();
                            r.pull_remote_stream(id, pull(&room_id, &user_id, &pusher, 5000 + i64::from(sid)), fx)
                        }
                    };
                }
                Step::Remove { room, user } => {
                    let (room_id, user_id) = name(room, user);
                    let _ = r.remove_user(&room_id, &user_id, fx);
                }
                Step::CloseRoom { room } => {
                    let _ = r.close_room(&name(room, 0).0, fx);
                }
                Step::Msu { sid, msu } => if let Some(id) = live(sid, &slot, &open) {
                    let req = proto::RegisterMsuRequest {
                        msu_id: format!("m{msu}"),
                        ..Default::default()
                    };
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
            udp_ip: "10.0.0.9".into(),
            udp_port: 40_000,
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
    // sfu-b pulls u1's stream: a relay through m1, kept by the snapshot.
    r.pull_remote_stream(2, pull("r1", "u1", "p1", 40_002), fx)
        .unwrap();
    assert_eq!(r.relays("r1").len(), 1);
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
    assert_eq!(loaded.pullers, r.pullers);
    assert!(!r.pullers.is_empty());
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

fn pull(room: &str, user: &str, pusher: &str, port: i64) -> proto::PullRemoteStreamRequest {
    proto::PullRemoteStreamRequest {
        room_id: room.into(),
        pusher_user_id: user.into(),
        udp_ip: "10.0.0.2".into(),
        udp_port: port,
        media_type: "video".into(),
        push_info: Some(proto::Publisher {
            pusher_id: pusher.into(),
            rtp_param_json: r#"{"ssrc": 7}"#.into(),
            ..Default::default()
        }),
        payload_json: "{}".into(),
    }
}

/// Pulls sent (to whom, which address), relays sent (to whom, how many
/// destinations).
type Sent = (Vec<(SessionId, String)>, Vec<(SessionId, usize)>);

/// The pulls and relays in `fx`.
fn sent(fx: &Effects) -> Sent {
    let mut pulls = Vec::new();
    let mut relays = Vec::new();
    for n in &fx.notices {
        if let Notice::Event { to, event } = n {
            match event {
                peer_event::Kind::PullRemoteStream(p) => {
                    pulls.push((to[0], format!("{}:{}", p.udp_ip, p.udp_port)));
                }
                peer_event::Kind::Relay(r) => relays.push((to[0], r.destinations.len())),
                _ => {}
            }
        }
    }
    (pulls, relays)
}

/// PROTOCOL.md §8: the publisher's SFU serves one destination. With an
/// MSU, its first pull of a track goes upstream with the MSU's address and
/// every pull is a destination the MSU hears of; without one, a pull to
/// another address is forwarded but counted as unserved.
#[test]
fn pulls_go_through_the_rooms_msu_and_without_one_the_second_is_unserved() {
    for with_msu in [true, false] {
        let mut r = Rules::new(RulesConfig::default());
        let fx = &mut Effects::default();
        for (sid, identity) in [(1, "sfu-a"), (2, "sfu-b"), (3, "sfu-c"), (9, "msu")] {
            r.open_session(sid, identity, "", fx);
        }
        if with_msu {
            let m = proto::RegisterMsuRequest {
                msu_id: "m1".into(),
                udp_ip: "10.0.0.9".into(),
                udp_port: 40_000,
            };
            r.register_msu(9, m, SystemTime::UNIX_EPOCH, fx).unwrap();
        }
        join(&mut r, 1, "r", "u1");
        join(&mut r, 2, "r", "u2");
        join(&mut r, 3, "r", "u3");
        let track = |id: &str| proto::Publisher {
            pusher_id: id.into(),
            ..Default::default()
        };
        let push = proto::PushRequest {
            room_id: "r".into(),
            user_id: "u1".into(),
            publishers: vec![track("v"), track("a")],
            ..Default::default()
        };
        r.push(1, push, fx).unwrap();
        let mut first = Effects::default();
        r.pull_remote_stream(2, pull("r", "u1", "v", 40_002), &mut first)
            .unwrap();
        let mut second = Effects::default();
        r.pull_remote_stream(3, pull("r", "u1", "v", 40_003), &mut second)
            .unwrap();
        let mut audio = Effects::default();
        r.pull_remote_stream(3, pull("r", "u1", "a", 40_003), &mut audio)
            .unwrap();
        if with_msu {
            assert_eq!(
                sent(&first),
                (vec![(1, "10.0.0.9:40000".into())], vec![(9, 1)])
            );
            // The track is asked already: the MSU adds a destination.
            assert_eq!(sent(&second), (vec![], vec![(9, 2)]));
            // A new track goes upstream, to the MSU again.
            assert_eq!(
                sent(&audio),
                (vec![(1, "10.0.0.9:40000".into())], vec![(9, 2)])
            );
            assert_eq!(second.pulls_unserved, 0);
            // The same pull again (another subscriber on sfu-b): nothing new.
            let mut again = Effects::default();
            r.pull_remote_stream(2, pull("r", "u1", "v", 40_002), &mut again)
                .unwrap();
            assert_eq!(sent(&again), (vec![], vec![]));
            assert!(
                again
                    .events
                    .iter()
                    .all(|(_, k, _)| *k != EventKind::RelayChanged)
            );
            let relay = &r.relays("r")[0];
            assert_eq!(relay.destinations[1].pusher_ids, ["v", "a"]);
            // The MSU's counters are kept; another session's are not.
            let stats = |n| proto::RelayStatsRequest {
                relays: vec![proto::RelayCounters {
                    room_id: "r".into(),
                    pusher_user_id: "u1".into(),
                    packets_in: n,
                    packets_out: 2 * n,
                    worst_fraction_lost: 3,
                }],
            };
            r.relay_stats(9, stats(10));
            r.relay_stats(2, stats(99));
            let relay = &r.relays("r")[0];
            assert_eq!((relay.packets_in, relay.packets_out), (10, 20));
            // sfu-c's process is gone (another incarnation): its
            // destination goes, and the MSU hears it.
            let mut gone = Effects::default();
            r.close_session(3, Duration::ZERO, &mut gone);
            r.open_session(4, "sfu-c", "2", &mut gone);
            assert_eq!(sent(&gone).1.last(), Some(&(9, 1)));
            check_indexes(&r).unwrap();
            // The publisher leaves: the relay ends.
            let mut left = Effects::default();
            let leave = proto::UserLeaveRequest {
                room_id: "r".into(),
                user_id: "u1".into(),
                ..Default::default()
            };
            r.user_leave(1, leave, &mut left).unwrap();
            assert!(r.relays("r").is_empty());
            assert!(left.notices.iter().any(|n| matches!(n,
                Notice::Event { to, event: peer_event::Kind::RelayEnded(_) } if to == &vec![9])));
            assert!(r.pullers.is_empty(), "{:?}", r.pullers);
        } else {
            assert_eq!(sent(&first).0, vec![(1, "10.0.0.2:40002".into())]);
            assert_eq!(sent(&second).0, vec![(1, "10.0.0.2:40003".into())]);
            assert_eq!((first.pulls_unserved, second.pulls_unserved), (0, 1));
            assert!(
                second
                    .events
                    .iter()
                    .any(|(_, k, _)| *k == EventKind::PullUnserved)
            );
        }
        check_indexes(&r).unwrap();
    }
}

/// Rules with sessions `sfus` (id, identity) and MSU m1 on session 9,
/// with a media address (10.0.0.9:40000).
fn with_msu(sfus: &[(SessionId, &str)]) -> Rules {
    let mut r = Rules::new(RulesConfig::default());
    let fx = &mut Effects::default();
    for (sid, identity) in sfus.iter().copied().chain([(9, "msu")]) {
        r.open_session(sid, identity, "", fx);
    }
    let m = proto::RegisterMsuRequest {
        msu_id: "m1".into(),
        udp_ip: "10.0.0.9".into(),
        udp_port: 40_000,
    };
    r.register_msu(9, m, SystemTime::UNIX_EPOCH, fx).unwrap();
    r
}

/// The recordings in `fx`'s relays sent to the MSU: (user, recording id).
fn recorded(fx: &Effects) -> Vec<(String, String)> {
    fx.notices
        .iter()
        .filter_map(|n| match n {
            Notice::Event {
                event: peer_event::Kind::Relay(r),
                ..
            } => Some((r.pusher_user_id.clone(), r.recording_id.clone())),
            _ => None,
        })
        .collect()
}

/// Issue 30: a recording rides on relays through the room's MSU. Starting
/// it asks each publisher's SFU to send every track to the MSU and tells the
/// MSU to record; a user who publishes later is recorded from then; a
/// snapshot keeps it all; stopping clears the relays' recording; a room
/// that closes ends its recording; only the recording's MSU reports its
/// files; a running recording cannot be deleted, a stopped one can.
#[test]
fn a_recorded_room_records_its_publishers_now_and_later_until_it_stops() {
    let (mut r, fx) = (
        with_msu(&[(1, "sfu-a"), (2, "sfu-b")]),
        &mut Effects::default(),
    );
    join(&mut r, 1, "r", "u1");
    join(&mut r, 2, "r", "u2");
    let track = |id: &str, codec: &str| proto::Publisher {
        pusher_id: id.into(),
        rtp_param_json: format!(r#"{{"codec": "{codec}", "ssrc": 7}}"#),
        ..Default::default()
    };
    let push = |user: &str, pushers| proto::PushRequest {
        room_id: "r".into(),
        user_id: user.into(),
        publishers: pushers,
        ..Default::default()
    };
    r.push(
        1,
        push("u1", vec![track("v", "H264"), track("a", "opus")]),
        fx,
    )
    .unwrap();
    let start = |id: &str| proto::StartRecordingRequest {
        room_id: "r".into(),
        recording_id: id.into(),
    };
    let bad = r.start_recording(&start("../x"), &mut Effects::default());
    assert!(
        matches!(bad, Err(CenterError::InvalidArgument { .. })),
        "{bad:?}"
    );

    let mut started = Effects::default();
    assert_eq!(r.start_recording(&start("rec1"), &mut started), Ok(1));
    let to_msu = "10.0.0.9:40000".to_owned();
    assert_eq!(
        sent(&started).0,
        vec![(1, to_msu.clone()), (1, to_msu.clone())]
    );
    assert_eq!(recorded(&started), vec![("u1".into(), "rec1".into())]);
    let media: Vec<String> = started
        .notices
        .iter()
        .filter_map(|n| match n {
            Notice::Event {
                event: peer_event::Kind::PullRemoteStream(p),
                ..
            } => Some(p.media_type.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(media, ["video", "audio"]);
    assert!(
        started
            .events
            .iter()
            .any(|(_, k, _)| *k == EventKind::RecordingStarted)
    );
    let twice = r.start_recording(&start("rec9"), &mut Effects::default());
    assert!(matches!(twice, Err(CenterError::Conflict(_))), "{twice:?}");

    // u2 publishes later: recorded from then.
    let mut later = Effects::default();
    r.push(2, push("u2", vec![track("cam", "H264")]), &mut later)
        .unwrap();
    assert_eq!(sent(&later).0, vec![(2, to_msu.clone())]);
    assert_eq!(recorded(&later), vec![("u2".into(), "rec1".into())]);
    check_indexes(&r).unwrap();

    // A snapshot keeps the recording and the room's tie to it.
    let mut snap = cp::Snapshot::default();
    r.freeze().write(&mut snap);
    let restored = Rules::import(RulesConfig::default(), &snap);
    assert_eq!(fingerprint(&restored), fingerprint(&r));

    // Only the recording's MSU reports its files.
    let status = |state: proto::RecordingFileState| proto::RecordingStatusRequest {
        recording_id: "rec1".into(),
        room_id: "r".into(),
        user_id: "u1".into(),
        state: state.into(),
        file: "u1-1.mp4".into(),
        bytes: 1234,
        reason: String::new(),
    };
    let other = r.recording_status(2, status(proto::RecordingFileState::Started), fx);
    assert!(matches!(other, Err(CenterError::Forbidden(_))), "{other:?}");
    r.recording_status(9, status(proto::RecordingFileState::Started), fx)
        .unwrap();
    r.recording_status(9, status(proto::RecordingFileState::Ended), fx)
        .unwrap();
    let files = &r.recordings("r")[0].files;
    assert_eq!(
        (files.len(), files[0].closed, files[0].bytes),
        (1, true, 1234)
    );

    let running = r.delete_recording("rec1", &mut Effects::default());
    assert!(
        matches!(running, Err(CenterError::FailedPrecondition(_))),
        "{running:?}"
    );
    let mut stopped = Effects::default();
    assert_eq!(r.stop_recording("r", "stopped", &mut stopped), Ok(2));
    assert_eq!(
        recorded(&stopped),
        vec![("u1".into(), String::new()), ("u2".into(), String::new())]
    );
    assert_eq!(r.recordings("r")[0].state(), proto::RecordingState::Stopped);
    // Not recorded any more: a new track goes nowhere new.
    let mut after = Effects::default();
    r.push(2, push("u2", vec![track("mic", "opus")]), &mut after)
        .unwrap();
    assert_eq!(sent(&after), (vec![], vec![]));

    // A room that closes ends its recording.
    r.start_recording(&start("rec2"), fx).unwrap();
    let mut closed = Effects::default();
    r.close_room("r", &mut closed).unwrap();
    let rec2 = r
        .recordings("r")
        .into_iter()
        .find(|x| x.recording_id == "rec2")
        .unwrap();
    assert_eq!(
        (rec2.state(), rec2.stop_reason.as_str()),
        (proto::RecordingState::Stopped, "room closed")
    );
    check_indexes(&r).unwrap();

    // Deleted: the MSU is told to remove the files.
    let mut deleted = Effects::default();
    assert_eq!(r.delete_recording("rec2", &mut deleted), Ok(1));
    assert!(deleted.notices.iter().any(|n| matches!(n,
        Notice::Event { to, event: peer_event::Kind::RecordingDelete(_) } if to == &vec![9])));
    assert_eq!(r.recordings("").len(), 1);
    let gone = r.delete_recording("rec2", &mut Effects::default());
    assert!(matches!(gone, Err(CenterError::NotFound(_))), "{gone:?}");
}

/// Issue 30: a playback needs a recording with files of the user to play,
/// its MSU connected, and a user id free in the room; the MSU is told, only
/// it may say the playback is over, and its playbacks end with it.
#[test]
fn a_playback_is_checked_told_to_the_recordings_msu_and_ends_with_it() {
    let (mut r, fx) = (with_msu(&[(1, "sfu-a")]), &mut Effects::default());
    join(&mut r, 1, "r", "u1");
    join(&mut r, 1, "r", "u2");
    let start = proto::StartRecordingRequest {
        room_id: "r".into(),
        recording_id: "rec".into(),
    };
    r.start_recording(&start, fx).unwrap();
    for user in ["u1", "u2"] {
        let status = proto::RecordingStatusRequest {
            recording_id: "rec".into(),
            room_id: "r".into(),
            user_id: user.into(),
            state: proto::RecordingFileState::Started.into(),
            file: format!("{user}-1.mp4"),
            ..Default::default()
        };
        r.recording_status(9, status, fx).unwrap();
    }
    let play = |source: &str, user: &str, id: &str| proto::StartPlaybackRequest {
        recording_id: "rec".into(),
        source_user_id: source.into(),
        room_id: "r".into(),
        user_id: user.into(),
        r#loop: false,
        playback_id: id.into(),
    };
    let mut e = Effects::default();
    let which = r.start_playback(&play("", "again", "p1"), &mut e);
    assert!(
        matches!(&which, Err(CenterError::InvalidArgument { reason, .. }) if reason.contains("u1, u2")),
        "{which:?}"
    );
    let nobody = r.start_playback(&play("u9", "again", "p1"), &mut e);
    assert!(
        matches!(nobody, Err(CenterError::NotFound(_))),
        "{nobody:?}"
    );
    let taken = r.start_playback(&play("u1", "u2", "p1"), &mut e);
    assert!(matches!(taken, Err(CenterError::Conflict(_))), "{taken:?}");
    assert!(e.notices.is_empty() && r.playbacks().is_empty());

    let mut started = Effects::default();
    assert_eq!(
        r.start_playback(&play("u1", "again", "p1"), &mut started),
        Ok(1)
    );
    assert!(started.notices.iter().any(|n| matches!(n,
        Notice::Event { to, event: peer_event::Kind::Playback(p) } if to == &vec![9] && p.source_user_id == "u1")));
    let twice = r.start_playback(&play("u1", "again", "p2"), &mut Effects::default());
    assert!(matches!(twice, Err(CenterError::Conflict(_))), "{twice:?}");
    let ended = proto::PlaybackEndedRequest {
        playback_id: "p1".into(),
        reason: "ended".into(),
    };
    let other = r.playback_ended(1, ended.clone(), &mut Effects::default());
    assert!(matches!(other, Err(CenterError::Forbidden(_))), "{other:?}");
    let mut snap = cp::Snapshot::default();
    r.freeze().write(&mut snap);
    assert_eq!(
        Rules::import(RulesConfig::default(), &snap).playbacks(),
        r.playbacks()
    );
    r.playback_ended(9, ended.clone(), fx).unwrap();
    assert!(r.playbacks().is_empty());
    // Said again (it was stopped meanwhile): no error.
    r.playback_ended(9, ended, fx).unwrap();

    // Stopped: the MSU is told. Its MSU gone: the others end.
    r.start_playback(&play("u1", "again", "p3"), fx).unwrap();
    let mut stopped = Effects::default();
    assert_eq!(r.stop_playback("p3", &mut stopped), Ok(1));
    assert!(stopped.notices.iter().any(|n| matches!(n,
        Notice::Event { to, event: peer_event::Kind::PlaybackStop(_) } if to == &vec![9])));
    r.start_playback(&play("u2", "again", "p4"), fx).unwrap();
    let mut lost = Effects::default();
    r.close_session(9, Duration::ZERO, &mut lost);
    assert!(r.playbacks().is_empty());
    assert!(
        lost.events
            .iter()
            .any(|(_, k, e)| *k == EventKind::PlaybackEnded
                && matches!(e, Event::PlaybackEnded(p) if p.reason == "msu lost"))
    );
    let gone = r.start_playback(&play("u1", "again", "p5"), &mut Effects::default());
    assert!(
        matches!(gone, Err(CenterError::FailedPrecondition(_))),
        "{gone:?}"
    );
}
