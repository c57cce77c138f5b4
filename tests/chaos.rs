//! Chaos: hundreds of sessions join, push and vanish at random (close
//! frames, dropped sockets, explicit userLeave) while a watcher reads the
//! event feed. At the end every survivor heard exactly one userDisconnect or
//! userLeave per lost user of its room, and nothing is left.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Peer, eventually, rtp_param};
use futures_util::StreamExt;
use pilot_center::proto::{self, EventKind};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Barrier, oneshot};
use tokio_util::sync::CancellationToken;

const SESSIONS: usize = 240;
const ROOMS: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Survive,
    CloseFrame,
    Drop,
    LeaveThenClose,
}

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Users of the sessions that survive.
fn surviving_users(fates: &[Fate]) -> usize {
    (0..fates.len())
        .filter(|i| fates[*i] == Fate::Survive)
        .map(|i| users_of(i).len())
        .sum()
}

/// Every userDisconnect / userLeave received until an echo round trip, by
/// (method, user), each checked to be about `room`.
async fn count_departures(p: &mut Peer, room: &str) -> BTreeMap<(String, String), u32> {
    p.request("echo", json!("barrier")).await;
    let mut heard = BTreeMap::new();
    for msg in p.take_pending() {
        let method = msg["method"].as_str().unwrap_or_default().to_owned();
        if method == "userDisconnect" || method == "userLeave" {
            assert_eq!(msg["data"]["roomId"], json!(room));
            let user = msg["data"]["userId"].as_str().unwrap().to_owned();
            *heard.entry((method, user)).or_default() += 1;
        }
    }
    heard
}

fn users_of(i: usize) -> Vec<String> {
    if i.is_multiple_of(2) {
        vec![format!("u{i}a"), format!("u{i}b")]
    } else {
        vec![format!("u{i}a")]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_vanishing_at_random_leave_a_clean_state() {
    common::bounded(async move {
        // A 30 s reconnect grace on a clock the test moves.
        let clock = pilot_center::clock::Clock::manual();
        let server = pilot_center::server::Server::start_with_clock(
            &common::config_sections(
                false,
                "",
                "",
                "  event_feed_capacity: 100000\n  reconnect_grace_secs: 30\n",
            ),
            clock.clone(),
        )
        .await
        .unwrap();
        let mut client = common::grpc(&server).await;
        let mut feed = client
            .watch_events(proto::WatchEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let watcher = tokio::spawn(async move {
            let (mut last, mut opened, mut closed) = (0u64, 0, 0);
            while let Some(Ok(e)) = feed.next().await {
                assert!(
                    !matches!(
                        e.event,
                        Some(proto::watch_events_response::Event::Lagged(_))
                    ),
                    "watcher lagged"
                );
                assert!(
                    last == 0 || e.seq == last + 1,
                    "gap in the feed: {last} -> {}",
                    e.seq
                );
                last = e.seq;
                match e.kind() {
                    EventKind::SessionOpened => opened += 1,
                    EventKind::SessionClosed => closed += 1,
                    _ => {}
                }
                if opened == SESSIONS && closed == SESSIONS {
                    return (opened, closed);
                }
            }
            (opened, closed)
        });

        let mut rng = Rng(0x5eed_1234_abcd_9876);
        let fates: Vec<Fate> = (0..SESSIONS)
            .map(|_| match rng.next() % 10 {
                0..=3 => Fate::Survive,
                4 | 5 => Fate::CloseFrame,
                6 | 7 => Fate::Drop,
                _ => Fate::LeaveThenClose,
            })
            .collect();
        let joined = Arc::new(Barrier::new(SESSIONS + 1));
        // Cancelled once the center has cleaned up every vanished session.
        let settled = CancellationToken::new();
        // Survivors have counted what they heard so far; then the grace ends.
        let survivors = fates.iter().filter(|f| **f == Fate::Survive).count();
        let counted = Arc::new(Barrier::new(survivors + 1));
        let expired = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut go = Vec::new();
        for i in 0..SESSIONS {
            let url = server.ws_url();
            let joined = joined.clone();
            let (settled, counted, expired) = (settled.clone(), counted.clone(), expired.clone());
            let (tx, rx) = oneshot::channel::<Fate>();
            go.push(tx);
            // Each survivor returns what it heard about lost users: user id -> times.
            tasks.push(tokio::spawn(async move {
                let room = format!("room{}", i % ROOMS);
                let mut p = Peer::connect_url(&format!("{url}?peer=chaos-{i}")).await;
                for u in users_of(i) {
                    let r = p.request("join", json!({"roomId": room, "userId": u, "userName": u})).await;
                    assert_eq!(r["ok"], json!(true));
                }
                p.notify("push", json!({"roomId": room, "userId": users_of(i)[0], "publishers": [{"pusherId": "v", "rtpParam": rtp_param(i as u64)}]})).await;
                joined.wait().await;
                match rx.await.unwrap() {
                    Fate::Survive => {}
                    Fate::CloseFrame => {
                        p.ws.close(None).await.ok();
                        return None;
                    }
                    Fate::Drop => {
                        drop(p);
                        return None;
                    }
                    Fate::LeaveThenClose => {
                        for u in users_of(i) {
                            p.notify("userLeave", json!({"roomId": room, "userId": u})).await;
                        }
                        // Wait until the center has applied the leaves: closing
                        // with unread data makes the kernel reset the
                        // connection, and a reset discards what the center had
                        // not read yet.
                        p.request("echo", json!("applied")).await;
                        p.ws.close(None).await.ok();
                        return None;
                    }
                }
                // Once the center has settled, an echo round trip brings in
                // everything it queued for this session before the answer.
                settled.cancelled().await;
                let heard = count_departures(&mut p, &room).await;
                counted.wait().await;
                // After the grace: the users of vanished sessions leave.
                expired.cancelled().await;
                let after = count_departures(&mut p, &room).await;
                // The peer stays open until every survivor has been checked:
                // its departure is not part of the check.
                Some((i, heard, after, p))
            }));
        }
        joined.wait().await;
        assert_eq!(server.center().counts().0, SESSIONS);
        for (tx, fate) in go.into_iter().zip(&fates) {
            tx.send(*fate).unwrap();
        }
        let center = server.center().clone();
        // A session's departure is applied in one step, announcements
        // included: when the count is down, everything has been queued.
        eventually("vanished sessions to be cleaned up", || {
            center.counts().0 == survivors
        })
        .await;
        settled.cancel();
        // Expected losses per room.
        let mut lost: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (i, fate) in fates.iter().enumerate() {
            if *fate != Fate::Survive {
                lost.entry(i % ROOMS).or_default().extend(users_of(i));
            }
        }
        // Each lost user once: userLeave if it left, else userDisconnect
        // now and userLeave when the grace ends.
        let want_for = |i: usize, after_grace: bool| -> BTreeMap<(String, String), u32> {
            (0..SESSIONS)
                .filter(|j| j % ROOMS == i % ROOMS && fates[*j] != Fate::Survive)
                .flat_map(|j| {
                    let method = match (fates[j], after_grace) {
                        (Fate::LeaveThenClose, false) => Some("userLeave"),
                        (Fate::LeaveThenClose, true) => None,
                        (_, false) => Some("userDisconnect"),
                        (_, true) => Some("userLeave"),
                    };
                    users_of(j)
                        .into_iter()
                        .filter_map(move |u| method.map(|m| ((m.to_owned(), u), 1)))
                })
                .collect()
        };
        counted.wait().await;
        clock.advance(Duration::from_secs(30));
        center.expire_grace();
        expired.cancel();
        let mut checked = Vec::new();
        for task in tasks {
            if let Some((i, heard, after, peer)) = common::join(task).await {
                assert_eq!(heard, want_for(i, false), "session {i} (room {})", i % ROOMS);
                assert_eq!(after, want_for(i, true), "session {i} after the grace");
                checked.push(peer);
            }
        }
        assert_eq!(checked.len(), survivors);
        assert_eq!(
            center.counts().2,
            surviving_users(&fates),
            "after the grace only the survivors' users are left"
        );
        drop(checked);
        // The survivors' users wait out their own grace, then nothing is left.
        eventually("every session to close", || center.counts().0 == 0).await;
        clock.advance(Duration::from_secs(30));
        center.expire_grace();
        assert_eq!(center.counts(), (0, 0, 0, 0));
        let (opened, closed) = common::join(watcher).await;
        assert_eq!((opened, closed), (SESSIONS, SESSIONS));
        println!(
            "chaos: {SESSIONS} sessions in {ROOMS} rooms, {survivors} survivors checked, {} users lost",
            lost.values().map(Vec::len).sum::<usize>()
        );
    })
    .await;
}
