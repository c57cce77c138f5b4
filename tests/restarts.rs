//! The center's view through every restart (issue 20): an SFU restarted
//! under a new incarnation, a user joined again, the center itself stopped
//! and started on its state directory. The SFUs are played byte for byte
//! (`common::sfu`), and like the real one they replay nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::binary::Binary;
use common::sfu::Sfu;
use common::{TempDir, rtp_param};
use serde_json::json;
use std::time::Duration;

fn join(room: &str, user: &str) -> serde_json::Value {
    json!({"roomId": room, "userId": user, "userName": user.to_uppercase()})
}

fn push(room: &str, user: &str, pusher: &str) -> serde_json::Value {
    json!({"roomId": room, "userId": user, "userName": user.to_uppercase(),
           "publishers": [{"pusherId": pusher, "rtpParam": rtp_param(7)}]})
}

fn pull(room: &str, user: &str, pusher: &str) -> serde_json::Value {
    json!({"roomId": room, "pusher_user_id": user, "udp_ip": "10.0.0.7", "udp_port": 40000,
           "mediaType": "video", "pushInfo": {"pusherId": pusher, "rtpParam": rtp_param(7)}})
}

/// SFU A (`peer=sfu-a`, incarnation `1`) holds u1 and u2 of room r; SFU B
/// holds u3 there. A's link drops without a word.
async fn a_drops(addr: std::net::SocketAddr) -> Sfu {
    let mut a = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-a&incarnation=1").await;
    let mut b = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-b").await;
    a.request("join", join("r", "u1")).await;
    a.request("join", join("r", "u2")).await;
    b.request("join", join("r", "u3")).await;
    a.expect("newUser").await;
    a.reset();
    for u in ["u1", "u2"] {
        assert_eq!(
            b.expect("userDisconnect").await,
            json!({"roomId": "r", "userId": u})
        );
    }
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sfu_back_under_a_new_incarnation_takes_nothing_and_its_old_users_leave_at_once() {
    common::bounded(async move {
        let (server, clock) = common::start_with_grace(true).await;
        let addr = server.ws_addr();
        let mut b = a_drops(addr).await;
        // The SFU process restarted (new boot id), well inside the grace:
        // its old users are gone with the old process, now, not in 30 s.
        let mut a = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-a&incarnation=2").await;
        for u in ["u1", "u2"] {
            assert_eq!(
                b.expect("userLeave").await,
                json!({"roomId": "r", "userId": u})
            );
        }
        a.expect_silence().await;
        b.expect_silence().await;
        let room = server.center().get_room("r").unwrap();
        assert_eq!(room.users.len(), 1, "only u3 is left: {room:?}");
        // A new user joins through the new process; B hears of it.
        a.request("join", join("r", "u4")).await;
        assert_eq!(b.expect("newUser").await["userId"], json!("u4"));
        // Nothing is left for the grace to end.
        clock.advance(Duration::from_secs(60));
        server.center().expire_grace().await.unwrap();
        b.expect_silence().await;
        a.assert_clean();
        b.assert_clean();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sfu_back_under_the_same_incarnation_takes_its_users_back() {
    common::bounded(async move {
        let (server, _clock) = common::start_with_grace(true).await;
        let addr = server.ws_addr();
        let mut b = a_drops(addr).await;
        let mut a = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-a&incarnation=1").await;
        for u in ["u1", "u2"] {
            let back = b.expect("userReConnect").await;
            assert_eq!(
                (back["roomId"].clone(), back["userId"].clone()),
                (json!("r"), json!(u))
            );
        }
        // The link blip lost nothing: a pull for u1 reaches the new session.
        a.notify("push", push("r", "u1", "u1-v")).await;
        assert_eq!(b.expect("newPusher").await["userId"], json!("u1"));
        b.notify("pullRemoteStream", pull("r", "u1", "u1-v")).await;
        assert_eq!(
            a.expect("pullRemoteStream").await["pusher_user_id"],
            json!("u1")
        );
        assert_eq!(server.center().get_room("r").unwrap().users.len(), 3);
        a.assert_clean();
        b.assert_clean();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_replaces_the_pushers_and_a_pull_reaches_only_live_ones() {
    common::bounded(async move {
        let server = common::start_tls().await;
        let mut a = Sfu::connect_to(server.ws_addr(), true, "/pilot/center?peer=sfu-a").await;
        let mut b = Sfu::connect_to(server.ws_addr(), true, "/pilot/center?peer=sfu-b").await;
        a.request("join", join("r", "u1")).await;
        b.request("join", join("r", "u2")).await;
        a.expect("newUser").await;
        a.notify("push", push("r", "u1", "old")).await;
        b.expect("newPusher").await;
        // The user's client reconnected to its SFU: joined again, pushes anew.
        a.request("join", join("r", "u1")).await;
        b.expect("newUser").await;
        a.notify("push", push("r", "u1", "new")).await;
        b.expect("newPusher").await;
        let center = server.settled().await;
        let room = center.get_room("r").unwrap();
        let u1 = room.users.iter().find(|u| u.user_id == "u1").unwrap();
        let pushers: Vec<&str> = u1.pushers.iter().map(|p| p.pusher_id.as_str()).collect();
        assert_eq!(pushers, ["new"]);
        // A pull of the stale stream goes nowhere, visibly; the live one routes.
        b.notify("pullRemoteStream", pull("r", "u1", "old")).await;
        b.expect_silence().await;
        a.expect_silence().await;
        b.notify("pullRemoteStream", pull("r", "u1", "new")).await;
        assert_eq!(
            a.expect("pullRemoteStream").await["pushInfo"]["pusherId"],
            json!("new")
        );
        let label = pilot_center::metrics::DropLabel {
            method: "pullRemoteStream",
            reason: "pusher_not_found",
        };
        let dropped = center.metrics().pulls_dropped.get_or_create(&label).get();
        assert_eq!(dropped, 1);
        a.assert_clean();
        b.assert_clean();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_for_an_unknown_user_is_counted_and_on_the_feed() {
    common::bounded(async move {
        let server = common::start_tls().await;
        let mut feed = server.center().subscribe();
        let mut b = Sfu::connect_to(server.ws_addr(), true, "/pilot/center?peer=sfu-b").await;
        b.request("join", join("r", "u2")).await;
        b.notify("pullRemoteStream", pull("r", "ghost", "v")).await;
        b.notify("pullRemoteStream", pull("nowhere", "ghost", "v"))
            .await;
        b.expect_silence().await;
        let mut seen = Vec::new();
        while seen.len() < 2 {
            let e = tokio::time::timeout(common::WAIT, feed.recv())
                .await
                .expect("an event in time")
                .expect("the feed");
            if let Some(pilot_center::proto::watch_events_response::Event::RoutingDropped(d)) =
                &e.event
            {
                seen.push((e.room_id.clone(), d.user_id.clone(), d.reason.clone()));
            }
        }
        assert_eq!(
            seen,
            [
                ("r".into(), "ghost".into(), "user not found".into()),
                ("nowhere".into(), "ghost".into(), "room not found".into()),
            ]
        );
    })
    .await;
}

/// A center on `state` (wss, grace `grace_secs`, `fsync`), as a process.
async fn center_on(name: &str, state: &TempDir, grace_secs: u64, fsync: &str) -> (Binary, String) {
    let yaml = format!(
        "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n  self_signed: true\n\
         grpc:\n  enabled: false\nadmin:\n  enabled: false\n\
         center:\n  state_dir: {:?}\n  fsync: {fsync}\n  reconnect_grace_secs: {grace_secs}\n",
        state.0.display().to_string()
    );
    let mut center = Binary::start(name, &yaml, &[]).await;
    let addr = center.addr("websocket").await;
    (center, addr)
}

/// SFU A holds u1 (pushing `v`), SFU B holds u2, in room r.
async fn two_sfus(addr: std::net::SocketAddr) -> (Sfu, Sfu) {
    let mut a = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-a").await;
    let mut b = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-b").await;
    a.request("join", join("r", "u1")).await;
    b.request("join", join("r", "u2")).await;
    a.expect("newUser").await;
    a.notify("push", push("r", "u1", "v")).await;
    b.expect("newPusher").await;
    // Barriers: everything above was applied (and, with fsync always, synced).
    a.expect_silence().await;
    (a, b)
}

async fn restart_keeps_the_state(name: &str, stop: fn(&Binary), fsync: &str) {
    let state = TempDir::new(name);
    let (mut first, addr) = center_on(&format!("{name}-1"), &state, 30, fsync).await;
    let (a, b) = two_sfus(addr.parse().unwrap()).await;
    stop(&first);
    first.read_to_end().await;
    drop((a, b));
    let (mut second, addr) = center_on(&format!("{name}-2"), &state, 30, fsync).await;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    // Both SFUs reconnect under their names, replaying nothing, as the
    // real one does; the users they held are theirs again.
    let mut a = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-a").await;
    let mut b = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-b").await;
    assert_eq!(a.expect("userReConnect").await["userId"], json!("u2"));
    // A new subscriber's pull for the old publisher routes, with no re-join.
    b.notify("pullRemoteStream", pull("r", "u1", "v")).await;
    assert_eq!(
        a.expect("pullRemoteStream").await["pusher_user_id"],
        json!("u1")
    );
    // And the room is whole: a new user hears of both.
    let mut c = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-c").await;
    let joined = c.request("join", join("r", "u3")).await;
    let mut users: Vec<String> = joined["data"]["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["userId"].as_str().unwrap().to_owned())
        .collect();
    users.sort();
    assert_eq!(users, ["u1", "u2"]);
    second.sigterm();
    second.read_to_end().await;
    assert!(
        second.log.contains("state loaded"),
        "the second start loaded the state:\n{}",
        second.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_center_stopped_with_sigterm_comes_back_with_every_user() {
    common::bounded(restart_keeps_the_state("sigterm", Binary::sigterm, "batch")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_center_killed_with_sigkill_comes_back_with_every_synced_user() {
    common::bounded(restart_keeps_the_state("sigkill", Binary::kill9, "always")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_grace_still_ends_users_nobody_claims() {
    common::bounded(async move {
        let state = TempDir::new("restart-grace");
        let (mut first, addr) = center_on("grace-1", &state, 2, "always").await;
        let (a, b) = two_sfus(addr.parse().unwrap()).await;
        first.kill9();
        first.read_to_end().await;
        drop((a, b));
        let (_second, addr) = center_on("grace-2", &state, 2, "always").await;
        // Only B comes back; A never does: u1 leaves when the grace ends.
        let mut b = Sfu::connect_to(addr.parse().unwrap(), true, "/pilot/center?peer=sfu-b").await;
        assert_eq!(
            b.expect("userLeave").await,
            json!({"roomId": "r", "userId": "u1"})
        );
        b.expect_silence().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_file_stops_the_start_with_a_way_forward() {
    common::bounded(async move {
        let state = TempDir::new("damaged");
        let (mut first, addr) = center_on("damaged-1", &state, 30, "always").await;
        let (a, b) = two_sfus(addr.parse().unwrap()).await;
        first.kill9();
        first.read_to_end().await;
        drop((a, b));
        // Flip a byte of the first record, which has more after it: damage,
        // not a torn tail.
        let log = std::fs::read_dir(&state.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with("log."))
            .expect("a log segment");
        let mut bytes = std::fs::read(&log).unwrap();
        let first_record = b"PILOTLG1".len() + 8 + 4;
        bytes[first_record] ^= 0xff;
        std::fs::write(&log, &bytes).unwrap();
        let (mut broken, _) = {
            let yaml = format!(
                "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n  self_signed: true\n\
                 grpc:\n  enabled: false\nadmin:\n  enabled: false\n\
                 center:\n  state_dir: {:?}\n",
                state.0.display().to_string()
            );
            (Binary::start("damaged-2", &yaml, &[]).await, ())
        };
        broken.read_to_end().await;
        let status = broken.child.wait().await.unwrap();
        assert!(!status.success(), "refused to start");
        assert!(
            broken.log.contains("damaged at byte") && broken.log.contains("repair-state"),
            "a clear error with the way forward:\n{}",
            broken.log
        );
        // The way forward works: the valid prefix is kept, the center starts.
        let repaired = tokio::process::Command::new(env!("CARGO_BIN_EXE_pilot-center"))
            .arg("repair-state")
            .arg(&state.0)
            .output()
            .await
            .unwrap();
        assert!(repaired.status.success(), "{repaired:?}");
        assert!(String::from_utf8_lossy(&repaired.stdout).contains("moved aside"));
        let (mut again, _) = center_on("damaged-3", &state, 30, "always").await;
        again.sigterm();
        again.read_to_end().await;
        assert!(again.child.wait().await.unwrap().success(), "{}", again.log);
    })
    .await;
}

/// A center on `state` with its admin listener (for `/metrics`), as a
/// process; returns it with its WebSocket and admin addresses.
async fn center_with_admin(
    name: &str,
    state: &TempDir,
) -> (Binary, std::net::SocketAddr, std::net::SocketAddr) {
    let yaml = format!(
        "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n  self_signed: true\n\
         grpc:\n  enabled: false\nadmin:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n\
         center:\n  state_dir: {:?}\n  fsync: always\n  reconnect_grace_secs: 30\n",
        state.0.display().to_string()
    );
    let mut center = Binary::start(name, &yaml, &[]).await;
    let ws = center.addr("websocket").await.parse().unwrap();
    let admin = center.addr("admin").await.parse().unwrap();
    (center, ws, admin)
}

/// The session ids a center's log says it opened.
fn opened_ids(log: &str) -> Vec<u64> {
    log.lines()
        .filter(|l| l.contains("session opened"))
        .filter_map(|l| l.split("session.id=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// Issue 27: session ids name one session for the life of a state
/// directory, through a SIGTERM and a `kill -9`; a start after `kill -9`
/// replays the log quietly (one summary line, no past event logged or
/// counted as if it happened now).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ids_never_repeat_across_restarts_and_replay_is_quiet() {
    common::bounded(async move {
        let state = TempDir::new("ids");
        let mut ids = Vec::new();

        // First start: two SFUs, a user each, a pusher.
        let (mut first, ws, _) = center_with_admin("ids-1", &state).await;
        let (a, b) = two_sfus(ws).await;
        first.sigterm();
        first.read_to_end().await;
        drop((a, b));
        ids.extend(opened_ids(&first.log));

        // Second start, after SIGTERM: the SFUs come back (taking their
        // users back), a third joins, a pull reaches nobody.
        let (mut second, ws, _) = center_with_admin("ids-2", &state).await;
        let mut a = Sfu::connect_to(ws, true, "/pilot/center?peer=sfu-a").await;
        let mut b = Sfu::connect_to(ws, true, "/pilot/center?peer=sfu-b").await;
        assert_eq!(a.expect("userReConnect").await["userId"], json!("u2"));
        let mut c = Sfu::connect_to(ws, true, "/pilot/center?peer=sfu-c").await;
        c.request("join", join("r", "u3")).await;
        for sfu in [&mut a, &mut b] {
            assert_eq!(sfu.expect("newUser").await["userId"], json!("u3"));
        }
        b.notify("pullRemoteStream", pull("r", "ghost", "v")).await;
        for sfu in [&mut a, &mut b, &mut c] {
            sfu.expect_silence().await;
        }
        second.kill9();
        second.read_to_end().await;
        drop((a, b, c));
        assert!(
            second.log.contains("users taken back after reconnect")
                && second.log.contains("dropped: reached nobody"),
            "the second start logged what happened then:\n{}",
            second.log
        );
        ids.extend(opened_ids(&second.log));

        // Third start, after kill -9: the replay says one line and nothing
        // of the past (read up to the listeners: no session yet).
        let (mut third, ws, admin) = center_with_admin("ids-3", &state).await;
        let at_start = third.log.clone();
        assert_eq!(
            at_start.matches("state loaded").count(),
            1,
            "one summary line:\n{at_start}"
        );
        for past in [
            "user joined",
            "users taken back",
            "dropped: reached nobody",
            "room created",
            "user reconnected",
            "newPusher",
        ] {
            assert!(
                !at_start.contains(past),
                "a past event logged as a live one ({past}):\n{at_start}"
            );
        }
        let (_, metrics) = common::http_get(admin, "/metrics").await;
        assert!(
            !metrics.contains("pilot_pulls_dropped_total{")
                && metrics.contains("pilot_users_reclaimed_total 0"),
            "the past counted again:\n{metrics}"
        );
        let mut a = Sfu::connect_to(ws, true, "/pilot/center?peer=sfu-a").await;
        let mut b = Sfu::connect_to(ws, true, "/pilot/center?peer=sfu-b").await;
        assert_eq!(a.expect("userReConnect").await["userId"], json!("u2"));
        a.expect_silence().await;
        b.expect_silence().await;
        third.sigterm();
        third.read_to_end().await;
        ids.extend(opened_ids(&third.log));

        assert_eq!(ids.len(), 2 + 3 + 2, "{ids:?}");
        let distinct: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
        assert_eq!(distinct.len(), ids.len(), "a session id twice: {ids:?}");
    })
    .await;
}

/// A center on `state` with gRPC (for the event feed), `fsync: always`.
async fn center_with_grpc(name: &str, state: &TempDir) -> (Binary, std::net::SocketAddr, String) {
    let yaml = format!(
        "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n  self_signed: true\n\
         grpc:\n  listen_ip: 127.0.0.1\n  listen_port: 0\nadmin:\n  enabled: false\n\
         center:\n  state_dir: {:?}\n  fsync: always\n  reconnect_grace_secs: 30\n",
        state.0.display().to_string()
    );
    let mut center = Binary::start(name, &yaml, &[]).await;
    let ws = center.addr("websocket").await.parse().unwrap();
    let grpc = format!("http://{}", center.addr("grpc").await);
    (center, ws, grpc)
}

type Feed = tonic::Streaming<pilot_center::proto::WatchEventsResponse>;

/// The center's event feed, after `after` (from now on when `None`).
async fn watch(grpc: &str, after: Option<u64>) -> Feed {
    let connect =
        pilot_center::proto::room_service_client::RoomServiceClient::connect(grpc.to_owned());
    let mut client = tokio::time::timeout(common::WAIT, connect)
        .await
        .expect("grpc connect in time")
        .expect("grpc connect");
    client
        .watch_events(pilot_center::proto::WatchEventsRequest {
            after,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner()
}

/// Reads the feed until `n` events of `kind` arrived; returns the numbers
/// of every event read.
async fn read_feed(feed: &mut Feed, kind: pilot_center::proto::EventKind, n: usize) -> Vec<u64> {
    let (mut seqs, mut found) = (Vec::new(), 0);
    while found < n {
        let e = tokio::time::timeout(common::WAIT, feed.message())
            .await
            .expect("an event in time")
            .expect("the feed")
            .expect("an event");
        seqs.push(e.seq);
        found += usize::from(e.kind == i32::from(kind));
    }
    seqs
}

/// The bytes of the state directory's log segments.
fn log_bytes(state: &TempDir) -> u64 {
    std::fs::read_dir(&state.0)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("log."))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Issue 28: a text message changes no state, so the state directory does
/// not keep it; and still the event feed never gives a number twice, through
/// a `kill -9` (the numbers its texts took are reserved ahead of use) and a
/// SIGTERM, and a watcher resumes across both from its last number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_stay_out_of_the_log_and_feed_numbers_never_repeat() {
    use pilot_center::proto::EventKind;
    const TEXTS: usize = 40;
    common::bounded(async move {
        let state = TempDir::new("feed");
        let mut seen: Vec<u64> = Vec::new();

        let (first, ws, grpc) = center_with_grpc("feed-1", &state).await;
        let mut feed = watch(&grpc, None).await;
        let (mut a, mut b) = two_sfus(ws).await;
        seen.extend(read_feed(&mut feed, EventKind::PusherAdded, 1).await);
        let kept = log_bytes(&state);
        for i in 0..TEXTS {
            let text = json!({"roomId": "r", "userId": "u1", "message": format!("m{i}")});
            a.notify("textMessage", text).await;
        }
        for _ in 0..TEXTS {
            b.expect("textMessage").await;
        }
        seen.extend(read_feed(&mut feed, EventKind::TextMessage, TEXTS).await);
        assert_eq!(log_bytes(&state), kept, "the texts were kept in the log");
        first.kill9();
        drop((a, b, feed));

        // After kill -9: the watcher resumes from its last number; the
        // first new event is numbered past every number given before.
        let (mut second, ws, grpc) = center_with_grpc("feed-2", &state).await;
        let last = *seen.last().unwrap();
        let mut feed = watch(&grpc, Some(last)).await;
        let mut a = Sfu::connect_to(ws, true, "/pilot/center?peer=sfu-a").await;
        let mut b = Sfu::connect_to(ws, true, "/pilot/center?peer=sfu-b").await;
        assert_eq!(a.expect("userReConnect").await["userId"], json!("u2"));
        a.notify(
            "textMessage",
            json!({"roomId": "r", "userId": "u1", "message": "after"}),
        )
        .await;
        b.expect("textMessage").await;
        let after_kill = read_feed(&mut feed, EventKind::TextMessage, 1).await;
        assert!(after_kill[0] > last, "{after_kill:?} after {seen:?}");
        seen.extend(after_kill);
        second.sigterm();
        second.read_to_end().await;
        drop((a, b, feed));

        // After SIGTERM: the same, and the final snapshot kept the texts'
        // events for a watcher resuming from before them.
        let (third, ws, grpc) = center_with_grpc("feed-3", &state).await;
        let last = *seen.last().unwrap();
        let mut feed = watch(&grpc, Some(last)).await;
        let a = Sfu::connect_to(ws, true, "/pilot/center?peer=sfu-a").await;
        let after_stop = read_feed(&mut feed, EventKind::SessionOpened, 1).await;
        let mut before = watch(&grpc, Some(last - 1)).await;
        let resumed = tokio::time::timeout(common::WAIT, before.message())
            .await
            .expect("an event in time")
            .expect("the feed")
            .expect("an event");
        assert_eq!(
            (resumed.seq, resumed.kind),
            (last, i32::from(EventKind::TextMessage)),
            "the kept events after a clean stop"
        );
        seen.extend(after_stop);
        drop((a, feed, before, third));

        let mut sorted = seen.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, seen, "a feed number twice or out of order");
    })
    .await;
}
