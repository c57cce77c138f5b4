//! PROTOCOL.md §6 against the real server: peer identity, reconnect grace,
//! duplicate users, reports about users a session does not hold, the order
//! of replies and notifications, and MSU reassignment.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Peer, WAIT, eventually};
use pilot_center::server::Server;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

async fn start_with(center: &str) -> common::TestServer {
    common::start_server(&common::config_sections(false, "", "", center)).await
}

fn url_as(server: &impl common::Target, peer: &str) -> String {
    format!("{}?peer={peer}", server.ws_url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_comes_from_the_peer_name_or_the_address() {
    common::bounded(async move {
        let server = common::start().await;
        let mut named = Peer::connect_url(&url_as(&server, "sfu-7")).await;
        // An answered echo shows the session is open (the upgrade completes a
        // moment before the center registers it); in this order.
        named.expect_silence().await;
        let mut anonymous = Peer::connect(&server).await;
        anonymous.expect_silence().await;
        let ids: Vec<String> = server
            .settled()
            .await
            .list_sessions()
            .into_iter()
            .map(|s| s.peer_id)
            .collect();
        assert_eq!(ids, vec!["sfu-7".to_owned(), "127.0.0.1".to_owned()]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_wait_for_their_session_and_leave_when_the_grace_ends() {
    common::bounded(async move {
        let (server, clock) = common::start_with_grace(false).await;
        let mut a = Peer::connect_url(&url_as(&server, "sfu-a")).await;
        let mut b = Peer::connect_url(&url_as(&server, "sfu-b")).await;
        a.join("r", "a1", "A1").await;
        a.join("r", "a2", "A2").await;
        b.join("r", "b1", "B1").await;
        a.expect("newUser").await;
        a.notify("userDisconnect", json!({"roomId": "r", "userId": "a2"}))
            .await;
        b.expect("userDisconnect").await;
        a.expect_silence().await;

        // A goes: b hears userDisconnect for the user A still spoke for,
        // and nothing more yet.
        drop(a);
        assert_eq!(b.expect("userDisconnect").await["userId"], json!("a1"));
        eventually("a's session to close", || {
            server.center().list_sessions().len() == 1
        })
        .await;
        b.expect_silence().await;
        assert_eq!(server.center().get_room("r").unwrap().users.len(), 3);

        // Another session names a2 in userReConnect: it takes that one user.
        let mut c = Peer::connect_url(&url_as(&server, "sfu-c")).await;
        c.notify(
            "userReConnect",
            json!({"roomId": "r", "userId": "a2", "userName": "A2"}),
        )
        .await;
        assert_eq!(b.expect("userReConnect").await["userId"], json!("a2"));
        c.expect_silence().await;

        // 29 s: still waiting. 30 s: a1 leaves; a2 (taken) stays.
        clock.advance(Duration::from_secs(29));
        server.center().expire_grace();
        b.expect_silence().await;
        clock.advance(Duration::from_secs(1));
        server.center().expire_grace();
        assert_eq!(
            b.expect("userLeave").await,
            json!({"roomId": "r", "userId": "a1"})
        );
        assert_eq!(c.expect("userLeave").await["userId"], json!("a1"));
        b.expect_silence().await;
        c.expect_silence().await;
        let users: Vec<String> = server
            .center()
            .get_room("r")
            .unwrap()
            .users
            .into_iter()
            .map(|u| u.user_id)
            .collect();
        assert_eq!(users, vec!["a2", "b1"]);
        // When the last sessions go and their grace ends, nothing is left.
        drop((b, c));
        eventually("sessions to close", || {
            server.center().list_sessions().is_empty()
        })
        .await;
        clock.advance(Duration::from_secs(30));
        server.center().expire_grace();
        assert_eq!(server.center().counts(), (0, 0, 0, 0));
    })
    .await;
}

/// The peer reconnects before its old connection is found dead (a half-open
/// TCP connection; in a cluster, a node lost after its SFU moved): when the
/// old session ends, the newer one with the same identity takes the users
/// at once, instead of leaving them to the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_back_before_its_old_session_ends_takes_its_users_when_it_does() {
    common::bounded(async move {
        let (server, _clock) = common::start_with_grace(false).await;
        let mut old = Peer::connect_url(&url_as(&server, "sfu-a")).await;
        let mut b = Peer::connect_url(&url_as(&server, "sfu-b")).await;
        old.join("r", "a1", "A1").await;
        b.join("r", "b1", "B1").await;
        let mut new = Peer::connect_url(&url_as(&server, "sfu-a")).await;
        new.expect_silence().await;
        drop(old);
        assert_eq!(b.expect("userDisconnect").await["userId"], json!("a1"));
        assert_eq!(b.expect("userReConnect").await["userId"], json!("a1"));
        let pull = json!({"roomId": "r", "pusher_user_id": "a1", "udp_ip": "10.0.0.1", "udp_port": 1, "mediaType": "video", "pushInfo": {}});
        b.notify("pullRemoteStream", pull.clone()).await;
        assert_eq!(new.expect("pullRemoteStream").await, pull);
        b.expect_silence().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_timer_ends_graces_by_itself() {
    common::bounded(async move {
        let (server, clock) = common::start_with_grace(false).await;
        let mut a = Peer::connect_url(&url_as(&server, "sfu-a")).await;
        let mut b = Peer::connect_url(&url_as(&server, "sfu-b")).await;
        a.join("r", "a1", "A1").await;
        b.join("r", "b1", "B1").await;
        a.expect("newUser").await;
        drop(a);
        b.expect("userDisconnect").await;
        eventually("a's session to close", || {
            server.center().list_sessions().len() == 1
        })
        .await;
        // Nobody calls expire_grace here: the server's timer does.
        clock.advance(Duration::from_secs(31));
        assert_eq!(b.expect("userLeave").await["userId"], json!("a1"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_join_moves_the_user_or_is_refused() {
    common::bounded(async move {
        // replace (the default): the old session hears userLeave.
        let server = common::start().await;
        let (mut a, mut b) = (Peer::connect(&server).await, Peer::connect(&server).await);
        a.join("r", "u", "U").await;
        a.join("r", "x", "X").await;
        b.join("r", "u", "U").await;
        assert_eq!(
            a.expect("userLeave").await,
            json!({"roomId": "r", "userId": "u"})
        );
        // A still holds x, so it hears u arrive on B.
        assert_eq!(a.expect("newUser").await["userId"], json!("u"));
        a.expect_silence().await;
        assert_eq!(server.settled().await.metrics().users_replaced.get(), 1);

        // reject: 409, and nothing moves.
        let server = start_with("  duplicate_user: reject\n").await;
        let (mut a, mut b) = (Peer::connect(&server).await, Peer::connect(&server).await);
        a.join("r", "u", "U").await;
        let r = b
            .request("join", json!({"roomId": "r", "userId": "u"}))
            .await;
        assert_eq!(
            (r["errorCode"].clone(), r["errorReason"].clone()),
            (
                json!(409),
                json!("user already joined from another session")
            )
        );
        a.expect_silence().await;
        let room = server.settled().await.get_room("r").unwrap();
        assert_eq!(room.session_ids.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_about_users_the_session_does_not_hold_are_ignored() {
    common::bounded(async move {
        let server = common::start().await;
        let (mut a, mut b) = Peer::pair_in_room(&server, "A", "B").await;
        // What an SFU sends after a center restart, or about someone else's user.
        for (method, user) in [
            ("userDisconnect", "a1"),
            ("userLeave", "a1"),
            ("userDisconnect", "ghost"),
            ("userLeave", "ghost"),
        ] {
            b.notify(method, json!({"roomId": "r", "userId": user}))
                .await;
        }
        b.expect_silence().await;
        a.expect_silence().await;
        let room = server.settled().await.get_room("r").unwrap();
        assert!(room.users.iter().all(|u| u.session_id != 0), "{room:?}");
        // A second userDisconnect of the same user tells nobody anything new.
        a.notify("userDisconnect", json!({"roomId": "r", "userId": "a1"}))
            .await;
        b.expect("userDisconnect").await;
        a.notify("userDisconnect", json!({"roomId": "r", "userId": "a1"}))
            .await;
        a.expect_silence().await;
        b.expect_silence().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msu_ids_are_owned_and_rooms_move_when_an_msu_fails() {
    common::bounded(async move {
        let server = common::start().await;
        let mut m1 = Peer::connect(&server).await;
        m1.request("register", json!({"id": "m1"})).await;
        // An id held by a live session is refused; its owner may refresh it.
        let mut m2 = Peer::connect(&server).await;
        let r = m2.request("register", json!({"id": "m1"})).await;
        assert_eq!(r["errorCode"], json!(409));
        assert_eq!(
            m1.request("register", json!({"id": "m1"})).await["ok"],
            json!(true)
        );
        m2.request("register", json!({"id": "m2"})).await;

        let mut sfu = Peer::connect(&server).await;
        // r1 goes to m1 (fewest rooms, then id); m1 refuses: it moves to m2.
        sfu.join("r1", "u1", "U").await;
        let inv = m1.next_within(WAIT).await.unwrap();
        assert_eq!(inv["data"], json!({"roomId": "r1"}));
        m1.send_text(
            json!({"response": true, "id": inv["id"], "ok": false, "errorCode": 500, "errorReason": "full"})
                .to_string(),
        )
        .await;
        let inv = m2.next_within(WAIT).await.unwrap();
        assert_eq!(inv["data"], json!({"roomId": "r1"}));
        m2.send_text(json!({"response": true, "id": inv["id"], "ok": true}).to_string())
            .await;
        m2.expect_silence().await;
        assert_eq!(server.settled().await.get_room("r1").unwrap().msu_id, "m2");

        // r2 goes to m1, which never answers: after the invite timeout (1 s
        // in tests) it moves to m2.
        sfu.join("r2", "u2", "U").await;
        assert_eq!(
            m1.next_within(WAIT).await.unwrap()["data"],
            json!({"roomId": "r2"})
        );
        assert_eq!(
            m2.next_within(WAIT).await.unwrap()["data"],
            json!({"roomId": "r2"})
        );

        // m2's session dies: its rooms are invited to m1.
        drop(m2);
        let mut moved = BTreeSet::new();
        for _ in 0..2 {
            let inv = m1.next_within(WAIT).await.unwrap();
            assert_eq!(inv["method"], json!("invite"));
            moved.insert(inv["data"]["roomId"].as_str().unwrap().to_owned());
        }
        assert_eq!(moved, BTreeSet::from(["r1".to_owned(), "r2".to_owned()]));
        // A room created by a push gets an MSU too.
        sfu.notify(
            "push",
            json!({"roomId": "r3", "userId": "p", "publishers": []}),
        )
        .await;
        assert_eq!(
            m1.next_within(WAIT).await.unwrap()["data"],
            json!({"roomId": "r3"})
        );
    })
    .await;
}

/// A session's view of a room, built only from what the center sent it.
#[derive(Default)]
struct View(BTreeSet<String>);

impl View {
    fn apply(&mut self, msg: &Value) {
        let user = msg["data"]["userId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match msg["method"].as_str() {
            Some("newUser") => {
                self.0.insert(user);
            }
            Some("userLeave") => {
                self.0.remove(&user);
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_view_built_from_answers_and_notifications_matches_the_room() {
    common::bounded(async move {
        // Sessions join and leave users of one room at the same time. Each
        // keeps a view: a join answer resets it (the answer's users plus the
        // one joined), notifications change it. Replies are queued in the
        // same step as notifications, so no answer is older than what came
        // before it, and at the end every view is the room.
        const SESSIONS: usize = 8;
        const ROUNDS: usize = 300;
        let server = common::start().await;
        let url = server.ws_url();
        let start = Arc::new(tokio::sync::Barrier::new(SESSIONS));
        let done = Arc::new(tokio::sync::Barrier::new(SESSIONS));
        let mut tasks = Vec::new();
        for i in 0..SESSIONS {
            let (url, start, done) = (url.clone(), start.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut p = Peer::connect_url(&url).await;
                let mut view = View::default();
                start.wait().await;
                for k in 0..ROUNDS {
                    let user = format!("s{i}-{}", k % 3);
                    if k % 3 == 2 {
                        let leaving = format!("s{i}-{}", k % 2);
                        if view.0.remove(&leaving) {
                            p.notify("userLeave", json!({"roomId": "r", "userId": leaving}))
                                .await;
                        }
                        continue;
                    }
                    let r = p
                        .request(
                            "join",
                            json!({"roomId": "r", "userId": user, "userName": "n"}),
                        )
                        .await;
                    assert_eq!(r["ok"], json!(true), "{r}");
                    let answer: BTreeSet<String> = r["data"]["users"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|u| u["userId"].as_str().unwrap().to_owned())
                        .collect();
                    // What came before the answer is older than it: the
                    // answer agrees with the last word on every user.
                    let mut last = std::collections::BTreeMap::new();
                    for m in p.take_pending() {
                        let who = m["data"]["userId"].as_str().unwrap_or_default().to_owned();
                        last.insert(who, m["method"].as_str().unwrap_or_default().to_owned());
                        view.apply(&m);
                    }
                    for (who, method) in &last {
                        match method.as_str() {
                            "newUser" => assert!(
                                answer.contains(who),
                                "answer without {who}, after its newUser"
                            ),
                            "userLeave" => assert!(
                                !answer.contains(who),
                                "answer lists {who}, after its userLeave"
                            ),
                            _ => {}
                        }
                    }
                    view.0 = answer;
                    view.0.insert(user);
                }
                // The center has handled all this session sent once it
                // answers this echo.
                p.request("echo", json!("flush")).await;
                for m in p.take_pending() {
                    view.apply(&m);
                }
                done.wait().await;
                // Everyone has stopped: an echo brings in the rest.
                p.request("echo", json!("settle")).await;
                for m in p.take_pending() {
                    view.apply(&m);
                }
                (view.0, p)
            }));
        }
        let mut peers = Vec::new();
        let mut views = Vec::new();
        for task in tasks {
            let (view, peer) = common::join(task).await;
            views.push(view);
            peers.push(peer);
        }
        let room: BTreeSet<String> = server
            .settled()
            .await
            .get_room("r")
            .unwrap()
            .users
            .into_iter()
            .map(|u| u.user_id)
            .collect();
        for (i, view) in views.iter().enumerate() {
            assert_eq!(view, &room, "session {i}'s view");
        }
    })
    .await;
}

/// Reads `n` notifications of `method`, counting each user once per room.
async fn read_all(p: &mut Peer, method: &str, n: usize) -> BTreeSet<(String, String)> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let d = p.expect(method).await;
        let key = (
            d["roomId"].as_str().unwrap().to_owned(),
            d["userId"].as_str().unwrap().to_owned(),
        );
        assert!(seen.insert(key.clone()), "{method} twice for {key:?}");
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sfu_with_20000_users_drops_and_the_other_sfus_hear_every_one() {
    common::bounded(async move {
        // 200 rooms of 100 users on one SFU, shared with two other SFUs. Its
        // drop queues 20,000 userDisconnect to each of them in one step (and
        // 20,000 userLeave when the grace ends): byte-bounded queues take it.
        const ROOMS: usize = 1000;
        const PER_ROOM: usize = 20;
        const USERS: usize = ROOMS * PER_ROOM;
        let (server, clock) = common::start_with_grace(false).await;
        let mut others = [Peer::connect(&server).await, Peer::connect(&server).await];
        for (i, o) in others.iter_mut().enumerate() {
            let joins: Vec<(String, String)> = (0..ROOMS)
                .map(|r| (format!("room{r}"), format!("o{i}-{r}")))
                .collect();
            o.join_pipelined(&joins).await;
        }
        for _ in 0..ROOMS {
            others[0].expect("newUser").await;
        }
        let mut big = Peer::connect(&server).await;
        let joins: Vec<(String, String)> = (0..USERS)
            .map(|k| (format!("room{}", k % ROOMS), format!("big-{k}")))
            .collect();
        big.join_pipelined(&joins).await;
        for o in &mut others {
            assert_eq!(read_all(o, "newUser", USERS).await.len(), USERS);
            o.expect_silence().await;
        }
        drop(big);
        for o in &mut others {
            assert_eq!(read_all(o, "userDisconnect", USERS).await.len(), USERS);
        }
        clock.advance(Duration::from_secs(30));
        server.center().expire_grace();
        for o in &mut others {
            assert_eq!(read_all(o, "userLeave", USERS).await.len(), USERS);
            o.expect_silence().await;
        }
        assert_eq!(server.center().metrics().slow_consumers.get(), 0);
        assert_eq!(server.center().counts(), (2, ROOMS, 2 * ROOMS, 0));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_under_the_default_limits_loses_nothing() {
    common::bounded(async move {
        // An SFU coming back sends userReConnect and push for each of its
        // 10,000 users at once; the default limits take all of it.
        const ROOMS: usize = 100;
        const USERS: usize = 10_000;
        let config = common::config_full(false, "", "", "", "", "");
        let server = Server::start(&config).await.unwrap();
        let mut observer = Peer::connect(&server).await;
        for r in 0..ROOMS {
            observer.join(&format!("room{r}"), &format!("obs-{r}"), "O").await;
        }
        let mut sfu = Peer::connect(&server).await;
        for k in 0..USERS {
            let (room, user) = (format!("room{}", k % ROOMS), format!("u{k}"));
            sfu.notify(
                "userReConnect",
                json!({"roomId": room, "userId": user, "userName": "U"}),
            )
            .await;
            sfu.notify("push", json!({"roomId": room, "userId": user, "publishers": [{"pusherId": "v", "rtpParam": {"ssrc": k}}]}))
                .await;
        }
        sfu.expect_silence().await;
        let mut reconnected = BTreeSet::new();
        let mut pushed = BTreeSet::new();
        for _ in 0..2 * USERS {
            let m = observer.next_within(WAIT).await.expect("a notification");
            let user = m["data"]["userId"].as_str().unwrap().to_owned();
            match m["method"].as_str() {
                Some("userReConnect") => assert!(reconnected.insert(user)),
                Some("newPusher") => assert!(pushed.insert(user)),
                _ => panic!("unexpected {m}"),
            }
        }
        observer.expect_silence().await;
        assert_eq!((reconnected.len(), pushed.len()), (USERS, USERS));
        let (_, _, users, _) = server.center().counts();
        assert_eq!(users, USERS + ROOMS);
        assert_eq!(server.center().metrics().rate_limit_closes.get(), 0);
    })
    .await;
}
