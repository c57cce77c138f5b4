//! Property test: random sequences of join/push/pull/leave/disconnect/
//! reconnect/text over several sessions, sessions vanishing (their peer
//! returning under the same identity or not) and time passing, played
//! against the real room service (in process, on a manual clock), checked
//! after every step against a simple model of PROTOCOL.md §6: who hears a
//! room, reconnect grace and reclaim by identity, duplicate users
//! (`replace`), reports about users a session does not hold. Every
//! broadcast reaches each other session exactly once, nothing goes back to
//! the originating session, the state matches the model, and once all
//! sessions close and the grace ends nothing is left.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

use pilot_center::auth::Grant;
use pilot_center::center::{Center, CenterConfig, Outbound, PeerInfo, SessionHandle};
use pilot_center::clock::Clock;
use pilot_center::error::CenterError;
use pilot_center::proto::{self, Command, Transport, command, peer_event};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use tokio::sync::mpsc;

/// Runs a command on a center in memory, which answers in the same step.
trait RunNow {
    fn run(&self, command: Command) -> Result<proto::Reply, CenterError>;
}

impl RunNow for SessionHandle {
    fn run(&self, command: Command) -> Result<proto::Reply, CenterError> {
        futures_util::FutureExt::now_or_never(self.execute(command))
            .expect("a center in memory answers in the same step")
    }
}

const SLOTS: usize = 4;
const ROOMS: u8 = 3;
const USERS: u8 = 5;

#[derive(Debug, Clone)]
enum Op {
    Join {
        s: usize,
        r: u8,
        u: u8,
        audience: bool,
    },
    Push {
        s: usize,
        r: u8,
        u: u8,
    },
    Pull {
        s: usize,
        r: u8,
        u: u8,
    },
    Disconnect {
        s: usize,
        r: u8,
        u: u8,
    },
    Leave {
        s: usize,
        r: u8,
        u: u8,
    },
    Reconnect {
        s: usize,
        r: u8,
        u: u8,
    },
    Text {
        s: usize,
        r: u8,
        u: u8,
    },
    /// The session vanishes; a new peer (another identity) takes the slot.
    Drop {
        s: usize,
    },
    /// The session vanishes and its peer comes back under the same identity.
    Return {
        s: usize,
    },
    /// Time passes: 6 s of the 10 s reconnect grace.
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SLOTS;
    let r = 0..ROOMS;
    let u = 0..USERS;
    prop_oneof![
        4 => (s.clone(), r.clone(), u.clone(), proptest::bool::weighted(0.2)).prop_map(|(s, r, u, audience)| Op::Join { s, r, u, audience }),
        2 => (s.clone(), r.clone(), u.clone()).prop_map(|(s, r, u)| Op::Push { s, r, u }),
        2 => (s.clone(), r.clone(), u.clone()).prop_map(|(s, r, u)| Op::Pull { s, r, u }),
        1 => (s.clone(), r.clone(), u.clone()).prop_map(|(s, r, u)| Op::Disconnect { s, r, u }),
        1 => (s.clone(), r.clone(), u.clone()).prop_map(|(s, r, u)| Op::Leave { s, r, u }),
        1 => (s.clone(), r.clone(), u.clone()).prop_map(|(s, r, u)| Op::Reconnect { s, r, u }),
        1 => (s.clone(), r.clone(), u.clone()).prop_map(|(s, r, u)| Op::Text { s, r, u }),
        1 => s.clone().prop_map(|s| Op::Drop { s }),
        1 => s.prop_map(|s| Op::Return { s }),
        1 => Just(Op::Tick),
    ]
}

/// A user in the model: the session that speaks for it (if any), the
/// session that holds it (0: none, it is an orphan), and while an orphan the
/// identity it waits for and when its grace ends (seconds).
#[derive(Debug, Clone, Copy)]
struct MUser {
    session: Option<u64>,
    host: u64,
    orphan: Option<(u64, u64)>,
}

/// The reconnect grace of the model, in seconds of the manual clock.
const GRACE: u64 = 10;

#[derive(Default)]
struct Model {
    rooms: BTreeMap<String, BTreeMap<String, MUser>>,
}

type Expected = BTreeMap<u64, Vec<(&'static str, String)>>;

impl Model {
    /// The sessions that hear a room: those holding any of its users,
    /// connected or not (PROTOCOL.md §6).
    fn listeners(&self, room: &str) -> BTreeSet<u64> {
        self.rooms
            .get(room)
            .map(|users| users.values().map(|u| u.host).filter(|h| *h != 0).collect())
            .unwrap_or_default()
    }

    fn send(
        &self,
        exp: &mut Expected,
        room: &str,
        exclude: &[Option<u64>],
        method: &'static str,
        user: &str,
    ) {
        for sid in self.listeners(room) {
            if !exclude.contains(&Some(sid)) {
                exp.entry(sid).or_default().push((method, user.to_owned()));
            }
        }
    }

    /// `sid` takes the user; another session that held it hears it left.
    fn take(&mut self, exp: &mut Expected, room: &str, user: &str, sid: u64) {
        let old = self
            .rooms
            .get(room)
            .and_then(|us| us.get(user))
            .map(|x| x.host)
            .filter(|h| *h != sid && *h != 0);
        if let Some(old) = old {
            exp.entry(old)
                .or_default()
                .push(("userLeave", user.to_owned()));
        }
        self.bind(room, user, sid);
    }

    fn bind(&mut self, room: &str, user: &str, sid: u64) {
        let users = self.rooms.entry(room.to_owned()).or_default();
        let u = users.entry(user.to_owned()).or_insert(MUser {
            session: None,
            host: sid,
            orphan: None,
        });
        u.session = Some(sid);
        u.host = sid;
        u.orphan = None;
    }

    /// Session `sid` (of `identity`) ends at `now`: each user it spoke for
    /// is announced with userDisconnect; all it held wait as orphans.
    fn vanish(&mut self, exp: &mut Expected, sid: u64, identity: u64, now: u64) {
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            let targets: Vec<u64> = self
                .listeners(&room)
                .into_iter()
                .filter(|l| *l != sid)
                .collect();
            for (user, u) in self.rooms.get_mut(&room).unwrap().iter_mut() {
                if u.host != sid {
                    continue;
                }
                if u.session == Some(sid) {
                    for t in &targets {
                        exp.entry(*t)
                            .or_default()
                            .push(("userDisconnect", user.clone()));
                    }
                }
                *u = MUser {
                    session: None,
                    host: 0,
                    orphan: Some((identity, now + GRACE)),
                };
            }
        }
    }

    /// A new session `sid` with `identity` takes back its orphans.
    fn reclaim(&mut self, exp: &mut Expected, sid: u64, identity: u64) {
        let waiting: Vec<(String, String)> = self
            .rooms
            .iter()
            .flat_map(|(room, users)| {
                users
                    .iter()
                    .filter(|(_, u)| u.orphan.is_some_and(|(id, _)| id == identity))
                    .map(|(user, _)| (room.clone(), user.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (room, user) in waiting {
            self.bind(&room, &user, sid);
            self.send(exp, &room, &[Some(sid)], "userReConnect", &user);
        }
    }

    /// Orphans whose grace ended by `now` leave.
    fn expire(&mut self, exp: &mut Expected, now: u64) {
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            let due: Vec<String> = self.rooms[&room]
                .iter()
                .filter(|(_, u)| u.orphan.is_some_and(|(_, d)| d <= now))
                .map(|(k, _)| k.clone())
                .collect();
            for user in due {
                self.rooms.get_mut(&room).unwrap().remove(&user);
                self.send(exp, &room, &[], "userLeave", &user);
            }
            self.drop_empty(&room);
        }
    }

    fn drop_empty(&mut self, room: &str) {
        if self.rooms.get(room).is_some_and(|u| u.is_empty()) {
            self.rooms.remove(room);
        }
    }
}

struct Slot {
    handle: Option<SessionHandle>,
    rx: mpsc::Receiver<Outbound>,
    id: u64,
    identity: u64,
}

/// Opens a session for a peer with `identity`.
fn open(center: &Center, identity: u64) -> Slot {
    let (tx, rx) = mpsc::channel(100_000);
    let handle = center.open_session(
        PeerInfo {
            addr: "model".into(),
            transport: Transport::Ws,
            identity: format!("model-{identity}"),
            incarnation: String::new(),
        },
        Grant::unrestricted(),
        tx,
    );
    Slot {
        id: handle.id(),
        handle: Some(handle),
        rx,
        identity,
    }
}

fn cmd(kind: command::Kind) -> Command {
    Command { kind: Some(kind) }
}

fn received(slot: &mut Slot) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    while let Ok(item) = slot.rx.try_recv() {
        let Outbound::Event(d) = item else { continue };
        let user = match d.event.kind.as_ref().unwrap() {
            peer_event::Kind::NewUser(e) => e.user_id.clone(),
            peer_event::Kind::NewPusher(e) => e.user_id.clone(),
            peer_event::Kind::PullRemoteStream(e) => e.pusher_user_id.clone(),
            peer_event::Kind::UserDisconnected(e) => e.user_id.clone(),
            peer_event::Kind::UserLeft(e) => e.user_id.clone(),
            peer_event::Kind::TextMessage(e) => e.user_id.clone(),
            peer_event::Kind::UserReconnected(e) => e.user_id.clone(),
            // The model has no MSU: no relay reaches anyone.
            peer_event::Kind::Relay(e) => e.pusher_user_id.clone(),
            peer_event::Kind::RelayEnded(e) => e.pusher_user_id.clone(),
            peer_event::Kind::RecordingDelete(e) => e.recording_id.clone(),
            peer_event::Kind::Playback(e) => e.user_id.clone(),
            peer_event::Kind::PlaybackStop(e) => e.playback_id.clone(),
        };
        out.push((pilot_center::translate::event_method(&d.event), user));
    }
    out.sort();
    out
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    // A 10 s reconnect grace on a clock only the test moves.
    let clock = Clock::manual();
    let center = Center::new(CenterConfig {
        reconnect_grace: Duration::from_secs(GRACE),
        clock: clock.clone(),
        ..CenterConfig::default()
    });
    let mut now = 0u64;
    let mut identities = SLOTS as u64;
    let mut slots: Vec<Slot> = (0..SLOTS).map(|i| open(&center, i as u64)).collect();
    let mut model = Model::default();
    for op in ops {
        let mut exp = Expected::new();
        match op {
            Op::Drop { s } | Op::Return { s } => {
                let (sid, identity) = (slots[s].id, slots[s].identity);
                model.vanish(&mut exp, sid, identity, now);
                drop(slots[s].handle.take());
                // A returning peer keeps its identity; another peer gets a new one.
                let identity = if matches!(op, Op::Return { .. }) {
                    identity
                } else {
                    identities += 1;
                    identities
                };
                slots[s] = open(&center, identity);
                model.reclaim(&mut exp, slots[s].id, identity);
            }
            Op::Tick => {
                now += 6;
                clock.advance(Duration::from_secs(6));
                center.expire_grace();
                model.expire(&mut exp, now);
            }
            Op::Join { s, r, u, audience } => {
                let (room, user, sid) = (format!("r{r}"), format!("u{u}"), slots[s].id);
                let reply = slots[s]
                    .handle
                    .as_ref()
                    .unwrap()
                    .run(cmd(command::Kind::Join(proto::JoinRequest {
                        room_id: room.clone(),
                        user_id: user.clone(),
                        user_name: "n".into(),
                        audience,
                        extra: Default::default(),
                    })))
                    .unwrap();
                let Some(proto::reply::Kind::Join(j)) = reply.kind else {
                    panic!()
                };
                let others: BTreeSet<String> = model
                    .rooms
                    .get(&room)
                    .map(|us| us.keys().filter(|k| **k != user).cloned().collect())
                    .unwrap_or_default();
                prop_assert_eq!(
                    j.users
                        .iter()
                        .map(|u| u.user_id.clone())
                        .collect::<BTreeSet<_>>(),
                    others,
                    "join snapshot"
                );
                model.take(&mut exp, &room, &user, sid);
                if !audience {
                    model.send(&mut exp, &room, &[Some(sid)], "newUser", &user);
                }
            }
            Op::Push { s, r, u } => {
                let (room, user, sid) = (format!("r{r}"), format!("u{u}"), slots[s].id);
                let p = proto::Publisher {
                    pusher_id: "p".into(),
                    rtp_param_json: "{\"ssrc\":1}".into(),
                    extra: Default::default(),
                };
                let result = slots[s]
                    .handle
                    .as_ref()
                    .unwrap()
                    .run(cmd(command::Kind::Push(proto::PushRequest {
                        room_id: room.clone(),
                        user_id: user.clone(),
                        user_name: "n".into(),
                        publishers: vec![p],
                        extra: Default::default(),
                    })));
                let existing = model.rooms.get(&room).and_then(|us| us.get(&user)).copied();
                // Only the session speaking for a user pushes for it.
                if existing.and_then(|x| x.session).is_some_and(|o| o != sid) {
                    prop_assert!(
                        matches!(result, Err(pilot_center::error::CenterError::Forbidden(_))),
                        "{result:?}"
                    );
                } else {
                    result.unwrap();
                    if existing.is_none_or(|x| x.session.is_none()) {
                        model.take(&mut exp, &room, &user, sid);
                    }
                    let bound = model.rooms[&room][&user].session;
                    model.send(&mut exp, &room, &[Some(sid), bound], "newPusher", &user);
                }
            }
            Op::Pull { s, r, u } => {
                let (room, user) = (format!("r{r}"), format!("u{u}"));
                let result =
                    slots[s]
                        .handle
                        .as_ref()
                        .unwrap()
                        .run(cmd(command::Kind::PullRemoteStream(
                            proto::PullRemoteStreamRequest {
                                room_id: room.clone(),
                                pusher_user_id: user.clone(),
                                payload_json: "{}".into(),
                                ..Default::default()
                            },
                        )));
                match model
                    .rooms
                    .get(&room)
                    .and_then(|us| us.get(&user))
                    .and_then(|x| x.session)
                {
                    Some(target) => {
                        prop_assert!(result.is_ok());
                        exp.entry(target)
                            .or_default()
                            .push(("pullRemoteStream", user));
                    }
                    None => prop_assert!(result.is_err()),
                }
            }
            Op::Disconnect { s, r, u } | Op::Leave { s, r, u } => {
                let leave = matches!(op, Op::Leave { .. });
                let (room, user, sid) = (format!("r{r}"), format!("u{u}"), slots[s].id);
                let kind = if leave {
                    command::Kind::UserLeave(proto::UserLeaveRequest {
                        room_id: room.clone(),
                        user_id: user.clone(),
                        extra: Default::default(),
                    })
                } else {
                    command::Kind::UserDisconnect(proto::UserDisconnectRequest {
                        room_id: room.clone(),
                        user_id: user.clone(),
                        extra: Default::default(),
                    })
                };
                let result = slots[s].handle.as_ref().unwrap().run(cmd(kind));
                // Only the session holding the user may report on it; reports
                // about anyone else change nothing and reach no one.
                let held = model
                    .rooms
                    .get(&room)
                    .and_then(|us| us.get(&user))
                    .copied()
                    .filter(|x| x.host == sid);
                prop_assert_eq!(result.is_ok(), held.is_some());
                if let Some(x) = held {
                    // A second userDisconnect has nothing new to tell.
                    if leave || x.session.is_some() {
                        model.send(
                            &mut exp,
                            &room,
                            &[Some(sid)],
                            if leave { "userLeave" } else { "userDisconnect" },
                            &user,
                        );
                    }
                    let users = model.rooms.get_mut(&room).unwrap();
                    if leave {
                        users.remove(&user);
                        model.drop_empty(&room);
                    } else if let Some(x) = users.get_mut(&user) {
                        x.session = None;
                    }
                }
            }
            Op::Reconnect { s, r, u } => {
                let (room, user, sid) = (format!("r{r}"), format!("u{u}"), slots[s].id);
                slots[s]
                    .handle
                    .as_ref()
                    .unwrap()
                    .run(cmd(command::Kind::UserReconnect(
                        proto::UserReConnectRequest {
                            room_id: room.clone(),
                            user_id: user.clone(),
                            user_name: "n".into(),
                            extra: Default::default(),
                        },
                    )))
                    .unwrap();
                model.take(&mut exp, &room, &user, sid);
                model.send(&mut exp, &room, &[Some(sid)], "userReConnect", &user);
            }
            Op::Text { s, r, u } => {
                let (room, user, sid) = (format!("r{r}"), format!("u{u}"), slots[s].id);
                let result =
                    slots[s]
                        .handle
                        .as_ref()
                        .unwrap()
                        .run(cmd(command::Kind::TextMessage(proto::TextMessageRequest {
                            room_id: room.clone(),
                            user_id: user.clone(),
                            user_name: "n".into(),
                            message: "m".into(),
                            extra: Default::default(),
                            payload_json: String::new(),
                        })));
                let bound = model
                    .rooms
                    .get(&room)
                    .and_then(|us| us.get(&user))
                    .and_then(|x| x.session);
                // Nobody speaks for a user another session speaks for.
                let spoken_for = bound.is_some_and(|b| b != sid);
                prop_assert_eq!(
                    result.is_ok(),
                    model.rooms.contains_key(&room) && !spoken_for
                );
                if result.is_ok() {
                    model.send(&mut exp, &room, &[Some(sid), bound], "textMessage", &user);
                }
            }
        }
        // Deliveries: exactly the expected ones, per session.
        for slot in &mut slots {
            let mut want = exp.remove(&slot.id).unwrap_or_default();
            want.sort();
            prop_assert_eq!(received(slot), want, "deliveries to session {}", slot.id);
        }
        // State: rooms, users and their bindings match the model.
        let rooms: BTreeSet<String> = center.list_rooms().into_iter().map(|r| r.room_id).collect();
        prop_assert_eq!(
            &rooms,
            &model.rooms.keys().cloned().collect::<BTreeSet<_>>()
        );
        for (room, users) in &model.rooms {
            let detail = center.get_room(room).unwrap();
            let got: BTreeMap<String, u64> = detail
                .users
                .iter()
                .map(|u| (u.user_id.clone(), u.session_id))
                .collect();
            let want: BTreeMap<String, u64> = users
                .iter()
                .map(|(k, u)| (k.clone(), u.session.unwrap_or(0)))
                .collect();
            prop_assert_eq!(got, want, "room {}", room);
        }
    }
    for slot in &mut slots {
        drop(slot.handle.take());
    }
    // Their users wait out the grace, then nothing is left.
    clock.advance(Duration::from_secs(GRACE));
    center.expire_grace();
    prop_assert_eq!(
        center.counts(),
        (0, 0, 0, 0),
        "nothing left after every session closed and the grace ended"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn room_service_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops)?;
    }
}
