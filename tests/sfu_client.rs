//! The real RTCPilot SFU's client, played byte for byte (PROTOCOL.md §7),
//! against the real server over wss.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::sfu::{Sfu, parse_101_like_sfu, upgrade_request};
use common::{Peer, WAIT, rtp_param};
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sfu_parser_accepts_the_centers_101_and_would_catch_lower_case() {
    common::bounded(async move {
        let server = common::start().await;
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let mut tcp = tokio::net::TcpStream::connect(server.ws_addr())
            .await
            .unwrap();
        tcp.write_all(upgrade_request(key).as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tcp.read(&mut buf).await.unwrap();
        assert_eq!(parse_101_like_sfu(&buf[..n], key), Ok(0));
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: protoo\r\n\r\n"
        );
        // What tungstenite's own handshake writes: the SFU rejects it.
        let lower = b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(parse_101_like_sfu(lower, key).is_err());
        let two_spaces = b"HTTP/1.1 101 Switching Protocols\r\nConnection:  Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert!(parse_101_like_sfu(two_spaces, key).is_err());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rooms_whole_life_with_three_sfus_over_wss() {
    common::bounded(async move {
        let server = common::start_tls().await;
        let addr = server.ws_addr();
        // A registered MSU that never answers its invites.
        let mut msu = Peer::connect(&server).await;
        msu.request("register", json!({"id": "silent-msu"})).await;

        let mut s1 = Sfu::connect(addr, true).await;
        let mut s2 = Sfu::connect(addr, true).await;
        for (i, s) in [&mut s1, &mut s2].into_iter().enumerate() {
            let r = s
                .request("echo", json!({"ts": 1_732_000_000_000u64, "index": i}))
                .await;
            assert_eq!(r["data"]["echo"]["index"], json!(i));
        }

        // Joins answer at once although the MSU is silent.
        let d = s1
            .request(
                "join",
                json!({"roomId": "room1", "userId": "u1", "userName": "Ann"}),
            )
            .await;
        assert_eq!(d["data"]["users"], json!([]));
        s1.request(
            "join",
            json!({"roomId": "room1", "userId": "u2", "userName": "Ben"}),
        )
        .await;
        let d = s2
            .request(
                "join",
                json!({"roomId": "room1", "userId": "u3", "userName": "Cat"}),
            )
            .await;
        assert_eq!(d["data"]["users"].as_array().unwrap().len(), 2);
        assert_eq!(
            s1.expect("newUser").await,
            json!({"roomId": "room1", "userId": "u3", "userName": "Cat"})
        );
        for _ in 0..3 {
            assert_eq!(
                msu.next_within(WAIT).await.unwrap()["method"],
                json!("invite")
            );
        }

        // u1 publishes with unknown nested fields.
        let publishers = json!([{"pusherId": "u1-video", "rtpParam": rtp_param(4242)}, {"pusherId": "u1-audio", "rtpParam": {"av_type": 1, "codec": "opus", "ssrc": 5151, "payload_type": 111, "clock_rate": 48000, "x": {"y": [true]}}}]);
        s1.notify(
            "push",
            json!({"roomId": "room1", "userId": "u1", "userName": "Ann", "publishers": publishers}),
        )
        .await;
        assert_eq!(s2.expect("newPusher").await["pushers"], publishers);
        s1.expect_silence().await;

        // A late SFU sees everyone and the streams in its snapshot.
        let mut s3 = Sfu::connect(addr, true).await;
        let d = s3
            .request(
                "join",
                json!({"roomId": "room1", "userId": "u4", "userName": "Dan"}),
            )
            .await;
        let users = d["data"]["users"].as_array().unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(
            users.iter().find(|u| u["userId"] == json!("u1")).unwrap()["pushers"],
            publishers
        );
        s1.expect("newUser").await;
        s2.expect("newUser").await;

        // Pulls reach only the pusher's SFU.
        let pull = json!({"roomId": "room1", "pusher_user_id": "u1", "udp_ip": "10.0.0.7", "udp_port": 40000, "mediaType": "video", "pushInfo": {"pusherId": "u1-video", "rtpParam": rtp_param(4242)}});
        s3.notify("pullRemoteStream", pull.clone()).await;
        assert_eq!(s1.expect("pullRemoteStream").await, pull);
        s2.expect_silence().await;
        s3.expect_silence().await;

        // Chat.
        let text = json!({"roomId": "room1", "userId": "u3", "userName": "Cat", "message": "hi all"});
        s2.notify("textMessage", text.clone()).await;
        assert_eq!(s1.expect("textMessage").await, text);
        assert_eq!(s3.expect("textMessage").await, text);
        s2.expect_silence().await;

        // u1 drops off its SFU, then comes back (the SFU sends userReConnect, not join).
        s1.notify("userDisconnect", json!({"roomId": "room1", "userId": "u1"}))
            .await;
        assert_eq!(
            s2.expect("userDisconnect").await,
            json!({"roomId": "room1", "userId": "u1"})
        );
        s3.expect("userDisconnect").await;
        s3.notify("pullRemoteStream", pull.clone()).await;
        s3.expect_silence().await;
        s1.expect_silence().await;
        s1.notify(
            "userReConnect",
            json!({"roomId": "room1", "userId": "u1", "userName": "Ann"}),
        )
        .await;
        assert_eq!(
            s2.expect("userReConnect").await,
            json!({"roomId": "room1", "userId": "u1", "userName": "Ann"})
        );
        assert_eq!(s3.expect("userReConnect").await["userId"], json!("u1"));
        s3.notify("pullRemoteStream", pull.clone()).await;
        assert_eq!(
            s1.expect("pullRemoteStream").await,
            pull,
            "pulls reach the SFU again after userReConnect"
        );
        let room = server.settled().await.get_room("room1").unwrap();
        assert_eq!(
            room.users
                .iter()
                .find(|u| u.user_id == "u1")
                .unwrap()
                .pushers
                .len(),
            2,
            "pushers kept"
        );

        // u2 leaves.
        s1.notify("userLeave", json!({"roomId": "room1", "userId": "u2"}))
            .await;
        s2.expect("userLeave").await;
        s3.expect("userLeave").await;

        // S2's TCP connection is reset without a close frame.
        s2.reset();
        assert_eq!(
            s1.expect("userDisconnect").await,
            json!({"roomId": "room1", "userId": "u3"})
        );
        assert_eq!(
            s3.expect("userDisconnect").await,
            json!({"roomId": "room1", "userId": "u3"})
        );

        // Heartbeats go on; the SFUs saw nothing they would reject.
        s1.request("echo", json!({"ts": 1, "index": 99})).await;
        s1.assert_clean();
        s3.assert_clean();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_over_64_kib_are_single_frames() {
    common::bounded(async move {
        let server = common::start_tls().await;
        let mut s1 = Sfu::connect(server.ws_addr(), true).await;
        let mut s2 = Sfu::connect(server.ws_addr(), true).await;
        s1.request(
            "join",
            json!({"roomId": "big", "userId": "pub", "userName": "P"}),
        )
        .await;
        s2.request(
            "join",
            json!({"roomId": "big", "userId": "sub", "userName": "S"}),
        )
        .await;
        s1.expect("newUser").await;
        // ~100 KiB of rtpParam in one push: the newPusher and the next join snapshot exceed 64 KiB.
        let padding: Vec<Value> = (0..1500)
            .map(|i| json!({"k": i, "v": "abcdefghijklmnopqrstuvwxyz0123456789abcdefghij"}))
            .collect();
        let mut rtp = rtp_param(7);
        rtp["x_padding"] = json!(padding);
        s1.notify("push", json!({"roomId": "big", "userId": "pub", "publishers": [{"pusherId": "v", "rtpParam": rtp}]})).await;
        let np = s2.expect("newPusher").await;
        assert!(np.to_string().len() > 64 * 1024);
        let mut s3 = Sfu::connect(server.ws_addr(), true).await;
        let d = s3
            .request(
                "join",
                json!({"roomId": "big", "userId": "late", "userName": "L"}),
            )
            .await;
        assert!(d.to_string().len() > 64 * 1024);
        s1.assert_clean();
        s2.assert_clean();
        s3.assert_clean();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pongs_come_fast_while_the_room_floods() {
    common::bounded(async move {
        let server = common::start_tls().await;
        let mut flooder = Sfu::connect(server.ws_addr(), true).await;
        let mut listener = Sfu::connect(server.ws_addr(), true).await;
        flooder
            .request(
                "join",
                json!({"roomId": "busy", "userId": "f", "userName": "F"}),
            )
            .await;
        listener
            .request(
                "join",
                json!({"roomId": "busy", "userId": "l", "userName": "L"}),
            )
            .await;
        flooder.expect("newUser").await;
        // Flood until the listener's own pings (every 2 s) have been answered
        // twice in the middle of it. The listener reads each batch before the
        // next is sent, so the flood runs at the center's pace on any machine
        // and the listener never falls behind.
        let mut sent = 0u64;
        let deadline = std::time::Instant::now() + WAIT;
        while listener.ping_rtts.lock().unwrap().len() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the listener's pings were not answered during the flood"
            );
            for _ in 0..100 {
                flooder.notify("textMessage", json!({"roomId": "busy", "userId": "f", "userName": "F", "message": format!("m{sent}")})).await;
                sent += 1;
            }
            for _ in 0..100 {
                listener.expect("textMessage").await;
            }
        }
        let rtts = listener.ping_rtts.lock().unwrap().clone();
        println!("pong round trips (ms) under a flood of {sent} messages: {rtts:?}");
        // The SFU gives up after 15 s without a pong; 2 s leaves a wide
        // margin on a loaded machine (the typical figure is in the README).
        assert!(
            rtts.iter().all(|ms| *ms < 2000),
            "pong round trips (ms) under flood of {sent}: {rtts:?}"
        );
        listener.assert_clean();
        flooder.assert_clean();
    })
    .await;
}

/// sfu-1 with u1 and sfu-2 with u2 in room1, each having heard of the other.
/// u1 (on `s1`) publishes `u1-video` in room1; returns its publishers.
async fn push_u1_video(s1: &mut Sfu) -> Value {
    let publishers = json!([{"pusherId": "u1-video", "rtpParam": rtp_param(4242)}]);
    s1.notify(
        "push",
        json!({"roomId": "room1", "userId": "u1", "userName": "Ann", "publishers": publishers}),
    )
    .await;
    publishers
}

async fn two_named_sfus_in_room1(addr: std::net::SocketAddr) -> (Sfu, Sfu) {
    let mut s1 = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-1").await;
    let mut s2 = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-2").await;
    s1.request(
        "join",
        json!({"roomId": "room1", "userId": "u1", "userName": "Ann"}),
    )
    .await;
    s2.request(
        "join",
        json!({"roomId": "room1", "userId": "u2", "userName": "Ben"}),
    )
    .await;
    s1.expect("newUser").await;
    (s1, s2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sfu_that_reconnects_within_the_grace_keeps_its_users_and_streams() {
    common::bounded(async move {
        let (server, clock) = common::start_with_grace(true).await;
        let addr = server.ws_addr();
        let (mut s1, mut s2) = two_named_sfus_in_room1(addr).await;
        let publishers = push_u1_video(&mut s1).await;
        s2.expect("newPusher").await;

        // The link drops without a close frame.
        s1.reset();
        assert_eq!(
            s2.expect("userDisconnect").await,
            json!({"roomId": "room1", "userId": "u1"})
        );
        // 20 s later, inside the grace, the SFU is back under the same name
        // and does not replay its rooms: the center gives it its users back.
        clock.advance(Duration::from_secs(20));
        let mut s1 = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-1").await;
        assert_eq!(
            s2.expect("userReConnect").await,
            json!({"roomId": "room1", "userId": "u1", "userName": "Ann"})
        );
        // The next joiner's snapshot has u1 with its streams.
        let mut s3 = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-3").await;
        let d = s3
            .request(
                "join",
                json!({"roomId": "room1", "userId": "u3", "userName": "Cat"}),
            )
            .await;
        let users = d["data"]["users"].as_array().unwrap();
        assert_eq!(
            users.iter().find(|u| u["userId"] == json!("u1")).unwrap()["pushers"],
            publishers
        );
        s1.expect("newUser").await;
        s2.expect("newUser").await;
        // A pull from another SFU reaches the reconnected session.
        let pull = json!({"roomId": "room1", "pusher_user_id": "u1", "udp_ip": "10.0.0.7", "udp_port": 40000, "mediaType": "video", "pushInfo": {"pusherId": "u1-video", "rtpParam": rtp_param(4242)}});
        s3.notify("pullRemoteStream", pull.clone()).await;
        assert_eq!(s1.expect("pullRemoteStream").await, pull);
        // Long after the grace would have ended, nobody has left.
        clock.advance(Duration::from_secs(60));
        server.center().expire_grace();
        for s in [&mut s1, &mut s2, &mut s3] {
            s.expect_silence().await;
            s.assert_clean();
        }
        assert_eq!(server.center().get_room("room1").unwrap().users.len(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sfu_that_never_returns_loses_its_users_when_the_grace_ends() {
    common::bounded(async move {
        let (server, clock) = common::start_with_grace(true).await;
        let addr = server.ws_addr();
        let (s1, mut s2) = two_named_sfus_in_room1(addr).await;
        s1.reset();
        s2.expect("userDisconnect").await;
        // During the grace a pull for u1 is dropped and counted, never misrouted.
        let pull = json!({"roomId": "room1", "pusher_user_id": "u1", "udp_ip": "10.0.0.7", "udp_port": 40000, "mediaType": "video"});
        s2.notify("pullRemoteStream", pull).await;
        s2.expect_silence().await;
        let dropped = pilot_center::metrics::DropLabel {
            method: "pullRemoteStream",
            reason: "user_disconnected",
        };
        let metrics = server.center().metrics();
        assert_eq!(metrics.pulls_dropped.get_or_create(&dropped).get(), 1);
        // The grace ends: the others hear userLeave, once.
        clock.advance(Duration::from_secs(30));
        server.center().expire_grace();
        assert_eq!(
            s2.expect("userLeave").await,
            json!({"roomId": "room1", "userId": "u1"})
        );
        s2.expect_silence().await;
        let room = server.center().get_room("room1").unwrap();
        assert_eq!(room.users.len(), 1);
        // The same user can join again later, from another SFU: a plain newUser.
        let mut s3 = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-3").await;
        s3.request(
            "join",
            json!({"roomId": "room1", "userId": "u1", "userName": "Ann"}),
        )
        .await;
        assert_eq!(
            s2.expect("newUser").await,
            json!({"roomId": "room1", "userId": "u1", "userName": "Ann"})
        );
        s2.assert_clean();
        s3.assert_clean();
    })
    .await;
}

/// Each SFU pulls `user`'s video to its port, one after the other (an echo
/// between: the center handled the first pull before the second).
async fn pull_in_turn(sfus: [(&mut Sfu, u16); 2], room: &str, user: &str, ssrc: u64) {
    for (sfu, port) in sfus {
        let pull = json!({"roomId": room, "pusher_user_id": user, "udp_ip": "10.0.0.2", "udp_port": port,
                          "mediaType": "video", "pushInfo": {"pusherId": format!("{user}-video"), "rtpParam": rtp_param(ssrc)}});
        sfu.notify("pullRemoteStream", pull).await;
        sfu.expect_silence().await;
    }
}

/// Issue 29 (PROTOCOL.md §8): the real SFU sends each publisher to the
/// first puller only. Without an MSU a second SFU's pull is still
/// forwarded, and counted and put on the feed as unserved; with an MSU
/// that registered a media address, the publisher's SFU is asked once per
/// track to send to the hub (a pull it reads like any other SFU's, strict
/// types and all), and every pull becomes a destination the MSU hears of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hubs_pulls_look_like_another_sfus_and_without_a_hub_a_second_pull_is_unserved() {
    common::bounded(async move {
        let config = common::config_sections(true, "", "", "  invite_timeout_secs: 60\n");
        let server = common::start_server(&config).await;
        let addr = server.ws_addr();

        // No MSU: room1 spans three SFUs.
        let (mut s1, mut s2) = two_named_sfus_in_room1(addr).await;
        let mut s3 = Sfu::connect_to(addr, true, "/pilot/center?peer=sfu-3").await;
        s3.request(
            "join",
            json!({"roomId": "room1", "userId": "u3", "userName": "Cat"}),
        )
        .await;
        s1.expect("newUser").await;
        s2.expect("newUser").await;
        push_u1_video(&mut s1).await;
        s2.expect("newPusher").await;
        s3.expect("newPusher").await;
        pull_in_turn([(&mut s2, 5002), (&mut s3, 5003)], "room1", "u1", 4242).await;
        for port in [5002, 5003] {
            assert_eq!(
                s1.expect("pullRemoteStream").await["udp_port"],
                json!(port),
                "forwarded verbatim"
            );
        }
        s1.expect_silence().await;
        server.settled().await;
        let metrics = server
            .center()
            .metrics()
            .render(&server.center().state_gauges());
        assert!(
            metrics.contains("pilot_pulls_unserved_total 1"),
            "{metrics}"
        );
        let unserved: Vec<_> = server
            .center()
            .resume(Some(0))
            .unwrap()
            .backlog()
            .filter_map(|e| match e.event {
                Some(pilot_center::proto::watch_events_response::Event::PullUnserved(u)) => Some(u),
                _ => None,
            })
            .collect();
        assert_eq!(unserved.len(), 1, "{unserved:?}");
        assert_eq!(
            (unserved[0].udp_port, unserved[0].serving_udp_port),
            (5003, 5002)
        );

        // An MSU with a media address: room2's media goes through it.
        let mut msu = Peer::connect(&server).await;
        msu.request(
            "register",
            json!({"id": "m1", "udp_ip": "10.9.9.9", "udp_port": 40000}),
        )
        .await;
        for (sfu, user) in [(&mut s1, "u4"), (&mut s2, "u5"), (&mut s3, "u6")] {
            sfu.request(
                "join",
                json!({"roomId": "room2", "userId": user, "userName": user}),
            )
            .await;
        }
        let publishers = json!([{"pusherId": "u4-video", "rtpParam": rtp_param(7777)}]);
        s1.notify(
            "push",
            json!({"roomId": "room2", "userId": "u4", "userName": "u4", "publishers": publishers}),
        )
        .await;
        for user in ["u5", "u6"] {
            assert_eq!(s1.expect("newUser").await["userId"], json!(user));
        }
        assert_eq!(s2.expect("newUser").await["userId"], json!("u6"));
        s2.expect("newPusher").await;
        s3.expect("newPusher").await;
        pull_in_turn([(&mut s2, 6002), (&mut s3, 6003)], "room2", "u4", 7777).await;
        // The publisher's SFU is asked once, to send to the hub.
        let mut asked = None;
        while asked.is_none() {
            let m = s1.expect_any().await;
            if m["method"] == json!("pullRemoteStream") {
                asked = Some(m["data"].clone());
            }
        }
        let asked = asked.unwrap();
        assert_eq!(
            (
                &asked["udp_ip"],
                &asked["udp_port"],
                &asked["pushInfo"]["pusherId"]
            ),
            (&json!("10.9.9.9"), &json!(40000), &json!("u4-video"))
        );
        s1.expect_silence().await;
        server.settled().await;
        let relays = server.center().list_relays("room2");
        assert_eq!(relays.len(), 1);
        let ports: Vec<i64> = relays[0].destinations.iter().map(|d| d.udp_port).collect();
        assert_eq!(ports, [6002, 6003]);
        // And the MSU heard the whole relay.
        let mut heard = 0;
        while heard < 2 {
            let m = msu.next_within(WAIT).await.expect("a relay for the MSU");
            if m["method"] == json!("relay") {
                heard = m["data"]["destinations"].as_array().unwrap().len();
            }
        }

        // Issue 30: recording room2 (an operator, on whichever node this
        // center is) puts the recording's id on the relay the MSU hears; the
        // track is asked of s1 already, so s1 hears nothing new. Stopped,
        // the id goes.
        let relay_to_msu = async |msu: &mut Peer| loop {
            let m = msu.next_within(WAIT).await.expect("a relay for the MSU");
            if m["method"] == json!("relay") {
                return m["data"].clone();
            }
        };
        let recording = server
            .center()
            .start_recording("room2", "board")
            .await
            .unwrap();
        assert_eq!(recording.msu_id, "m1");
        let relay = relay_to_msu(&mut msu).await;
        assert_eq!(relay["recordingId"], json!("board"), "{relay}");
        assert_eq!(relay["destinations"].as_array().unwrap().len(), 2);
        s1.expect_silence().await;
        server.settled().await;
        let listed = server.center().list_recordings("room2");
        assert_eq!(listed.len(), 1);
        server.center().stop_recording("room2").await.unwrap();
        let relay = relay_to_msu(&mut msu).await;
        assert_eq!(relay.get("recordingId"), None, "{relay}");
    })
    .await;
}
