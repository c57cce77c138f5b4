//! Production hardening: auth, limits, slow consumers, admin endpoints,
//! graceful shutdown and bad input, against the real server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::binary::Binary;
use common::sfu::Sfu;
use common::{Peer, WAIT, config_full, eventually, http_get, token, upgrade_status};
use futures_util::StreamExt;
use pilot_center::auth::Role;
use pilot_center::clock::Clock;
use pilot_center::proto;
use pilot_center::server::Server;
use serde_json::json;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tonic::Code;

const SECRET: &str = "test-secret-0123456789-0123456789-0123456789";

async fn auth_server() -> Server {
    let auth = format!("  enabled: true\n  hs256_secret: \"{SECRET}\"\n");
    Server::start(&config_full(
        false,
        "",
        "",
        "",
        "  messages_per_sec: 0\n",
        &auth,
    ))
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_auth_refuses_before_the_upgrade_and_checks_every_command() {
    common::bounded(async move {
        let server = auth_server().await;
        let addr = server.ws_addr();
        // No token, forged, expired: 401 before any upgrade.
        assert_eq!(upgrade_status(addr, "/pilot/center", "").await, 401);
        let forged = pilot_center::auth::mint(
            "not-the-secret",
            &pilot_center::auth::Claims {
                sub: "x".into(),
                role: Role::Admin,
                rooms: vec!["*".into()],
                users: Vec::new(),
                exp: u64::MAX / 2,
                incarnation: String::new(),
            },
        )
        .unwrap();
        assert_eq!(
            upgrade_status(addr, &format!("/pilot/center?token={forged}"), "").await,
            401
        );
        let expired = token(SECRET, Role::Sfu, &["*"], -3600);
        assert_eq!(
            upgrade_status(
                addr,
                "/pilot/center",
                &format!("Authorization: Bearer {expired}\r\n")
            )
            .await,
            401
        );
        assert_eq!(
            upgrade_status(addr, "/pilot/center", "Authorization: Bearer garbage\r\n").await,
            401
        );

        // An SFU token in the header: joins anywhere, may not register.
        let mut sfu = Peer::connect_with(
            &server.ws_url(),
            Some(&token(SECRET, Role::Sfu, &["*"], 60)),
        )
        .await;
        sfu.join("any-room", "u1", "U").await;
        let r = sfu.request("register", json!({"id": "m"})).await;
        assert_eq!(
            (r["errorCode"].clone(), r["errorReason"].clone()),
            (json!(403), json!("forbidden: role sfu may not register"))
        );

        // A client token in the query, limited to one room.
        let url = format!(
            "{}?token={}",
            server.ws_url(),
            token(SECRET, Role::Client, &["allowed"], 60)
        );
        let mut client = Peer::connect_with(&url, None).await;
        let r = client
            .request("join", json!({"roomId": "any-room", "userId": "c1"}))
            .await;
        assert_eq!(r["errorCode"], json!(403));
        assert!(
            r["errorReason"].as_str().unwrap().contains("outside"),
            "{r}"
        );
        // A client speaks for its own user (the token's sub) only.
        let r = client
            .request("join", json!({"roomId": "allowed", "userId": "c1"}))
            .await;
        assert_eq!(
            (r["errorCode"].clone(), r["errorReason"].clone()),
            (
                json!(403),
                json!("forbidden: user c1 is not this token's to speak for")
            )
        );
        client.join("allowed", "test", "C").await;
        let r = client.request("register", json!({"id": "m"})).await;
        assert_eq!(r["errorCode"], json!(403));
        // Forbidden commands leave the session up.
        assert_eq!(client.request("echo", json!(1)).await["ok"], json!(true));

        // An MSU token registers.
        let mut msu =
            Peer::connect_with(&server.ws_url(), Some(&token(SECRET, Role::Msu, &[], 60))).await;
        assert_eq!(
            msu.request("register", json!({"id": "m1"})).await["ok"],
            json!(true)
        );
        // It joins (the users it plays back) only in the rooms its token
        // grants: none here.
        let r = msu
            .request("join", json!({"roomId": "any-room", "userId": "x"}))
            .await;
        assert_eq!(r["errorCode"], json!(403));
        assert!(
            r["errorReason"]
                .as_str()
                .unwrap()
                .contains("outside this token's grant"),
            "{r}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_does_not_outlive_its_token() {
    common::bounded(async move {
        let server = auth_server().await;
        // Valid at the upgrade, expired two seconds later.
        let mut p =
            Peer::connect_with(&server.ws_url(), Some(&token(SECRET, Role::Sfu, &["*"], 2))).await;
        p.join("r", "u", "U").await;
        let close = p.close_frame().await;
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (1008, "token expired")
        );
    })
    .await;
}

fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_auth_by_role() {
    common::bounded(async move {
        let server = auth_server().await;
        let mut client = common::grpc(&server).await;
        let e = client
            .list_rooms(proto::ListRoomsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let e = client
            .list_rooms(with_token(proto::ListRoomsRequest::default(), "nope"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let expired = token(SECRET, Role::Admin, &["*"], -3600);
        let e = client
            .list_rooms(with_token(proto::ListRoomsRequest::default(), &expired))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated);
        let sfu = token(SECRET, Role::Sfu, &["*"], 60);
        let e = client
            .list_rooms(with_token(proto::ListRoomsRequest::default(), &sfu))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let admin = token(SECRET, Role::Admin, &["*"], 60);
        assert!(
            client
                .list_rooms(with_token(proto::ListRoomsRequest::default(), &admin))
                .await
                .is_ok()
        );
        let e = client
            .watch_events(with_token(proto::WatchEventsRequest::default(), &sfu))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);

        // PeerSession: a client token may not open one; an SFU token is bound by its rooms.
        let (_tx, rx) = tokio::sync::mpsc::channel::<proto::PeerSessionRequest>(4);
        let client_token = token(SECRET, Role::Client, &["*"], 60);
        let e = client
            .peer_session(with_token(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &client_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
        let (tx, rx) = tokio::sync::mpsc::channel::<proto::PeerSessionRequest>(4);
        let limited = token(SECRET, Role::Sfu, &["r1"], 60);
        let mut stream = client
            .peer_session(with_token(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &limited,
            ))
            .await
            .unwrap()
            .into_inner();
        let join = |room: &str| proto::PeerSessionRequest {
            kind: Some(proto::peer_session_request::Kind::Command(proto::PeerCommand {
                id: 1,
                command: Some(proto::Command {
                    kind: Some(proto::command::Kind::Join(proto::JoinRequest {
                        room_id: room.into(),
                        user_id: "g".into(),
                        ..Default::default()
                    })),
                }),
            })),
        };
        tx.send(join("r2")).await.unwrap();
        let m = tokio::time::timeout(WAIT, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let Some(proto::peer_session_response::Kind::Result(r)) = m.kind else {
            panic!()
        };
        assert!(
            matches!(r.outcome, Some(proto::command_result::Outcome::Error(ref e)) if e.code == 403),
            "{r:?}"
        );

        // Health stays open without a token.
        let channel =
            tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr().unwrap()))
                .unwrap()
                .connect()
                .await
                .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
        assert!(
            health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new()
                })
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_slow_peers_down_losing_nothing_and_close_persistent_offenders() {
    common::bounded(async move {
        // The inboxes read a clock that stands still until the test moves
        // it: no token comes back because the machine is slow.
        let clock = Clock::manual();
        let server = Server::start_with_clock(
            &config_full(
                false,
                "",
                "",
                "",
                "  messages_per_sec: 20\n  burst: 20\n  close_after_secs: 5\n",
                "",
            ),
            clock.clone(),
        )
        .await
        .unwrap();
        let mut noisy = Peer::connect(&server).await;
        let mut calm = Peer::connect(&server).await;
        calm.join("r", "calm", "C").await;
        let text = |i: usize| json!({"roomId": "r", "userId": "x", "message": format!("m{i}")});
        let read_texts = async |calm: &mut Peer, range: std::ops::Range<usize>| {
            for i in range {
                assert_eq!(
                    calm.expect("textMessage").await["message"],
                    json!(format!("m{i}"))
                );
            }
        };
        // 50 notifications and a request at once: the burst of 20 goes now,
        // the rest waits, in order.
        for i in 0..50 {
            noisy.notify("textMessage", text(i)).await;
        }
        noisy
            .send_text(
                json!({"request": true, "id": 1, "method": "echo", "data": "after"}).to_string(),
            )
            .await;
        read_texts(&mut calm, 0..20).await;
        calm.expect_silence().await;
        // 20 per second: each second lets 20 more go.
        clock.advance(Duration::from_secs(1));
        read_texts(&mut calm, 20..40).await;
        clock.advance(Duration::from_secs(1));
        read_texts(&mut calm, 40..50).await;
        let r = noisy.response_to(&json!(1)).await;
        assert_eq!(r["data"]["echo"], json!("after"), "answered, not refused");
        calm.expect_silence().await;

        // A peer that stays behind its rate for 5 s is closed with 1008.
        clock.advance(Duration::from_secs(1)); // the bucket is full again
        for i in 100..300 {
            noisy.notify("textMessage", text(i)).await;
        }
        let center = server.center().clone();
        eventually("the center to read the flood", || {
            center.list_sessions().iter().any(|s| s.messages_in >= 251)
        })
        .await;
        read_texts(&mut calm, 100..120).await;
        clock.advance(Duration::from_secs(6));
        let close = noisy.close_frame().await;
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (1008, "rate limit exceeded")
        );
        // Applied before the close: the 20 of the bucket, in order.
        read_texts(&mut calm, 120..140).await;
        calm.expect_silence().await;
        let (_, metrics) = http_get(server.admin_addr().unwrap(), "/metrics").await;
        for needle in [
            "pilot_rate_limited_total{kind=\"request\"} 1",
            "pilot_rate_limited_total{kind=\"notification\"} 50",
            "pilot_rate_limit_closes_total 1",
        ] {
            assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_cut_off_and_the_room_carries_on() {
    common::bounded(async move {
        let server = Server::start(&common::config_sections(
            false,
            "  outbound_max_bytes: 1048576\n",
            "",
            "",
        ))
        .await
        .unwrap();
        let mut sender = Peer::connect(&server).await;
        let mut reader = Peer::connect(&server).await;
        // A 4 KiB receive buffer keeps the TCP window small, so a peer that
        // stops reading backs up the center after a few MiB on any kernel.
        let mut stalled = Peer::connect_small_window(&server, 4096).await;
        sender.join("r", "s", "S").await;
        reader.join("r", "r", "R").await;
        stalled.join("r", "x", "X").await;
        reader.expect("newUser").await;
        sender.expect("newUser").await;
        sender.expect("newUser").await;
        // `stalled` never reads again. Messages of 64 KiB go out in steps of
        // 8; the reader reads each step before the next is sent, so a peer
        // that keeps up is never at risk. The stalled session must be cut
        // off long before the bound (128 MiB).
        const STEP: usize = 8;
        const MAX: usize = 2048;
        let pad = "p".repeat(64 * 1024);
        let center = server.center().clone();
        let mut sent = 0;
        let mut heard_x_go = false;
        // Stop sending as soon as the center finds the session behind (it
        // then spends up to 2 s trying to send it a close frame).
        while center.metrics().slow_consumers.get() == 0 {
            assert!(sent < MAX, "the stalled session was never cut off");
            for i in sent..sent + STEP {
                sender
                    .notify(
                        "textMessage",
                        json!({"roomId": "r", "userId": "s", "message": format!("{i}{pad}")}),
                    )
                    .await;
            }
            for i in sent..sent + STEP {
                // The stalled user's departure may come between two messages.
                let mut m = reader.next_within(WAIT).await.expect("a message");
                if m["method"] == json!("userDisconnect") && !heard_x_go {
                    assert_eq!(m["data"]["userId"], json!("x"));
                    heard_x_go = true;
                    m = reader.next_within(WAIT).await.expect("a message");
                }
                assert_eq!(m["method"], json!("textMessage"), "{m}");
                let text = m["data"]["message"].as_str().unwrap();
                assert!(
                    text.starts_with(&i.to_string())
                        && text.len() == pad.len() + i.to_string().len()
                );
            }
            sent += STEP;
        }
        // Its user was announced gone to the others; the room goes on.
        if !heard_x_go {
            assert_eq!(reader.expect("userDisconnect").await["userId"], json!("x"));
        }
        assert_eq!(sender.expect("userDisconnect").await["userId"], json!("x"));
        sender.expect_silence().await;
        reader.expect_silence().await;
        let (_, metrics) = http_get(server.admin_addr().unwrap(), "/metrics").await;
        assert!(
            metrics.contains("pilot_slow_consumer_closes_total 1"),
            "{metrics}"
        );
        println!("stalled session cut off after {sent} messages of 64 KiB");
        drop(stalled);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_leaves_its_queue_unsent_too_long_is_cut_off() {
    common::bounded(async move {
        // Bytes are no limit here (1 GiB); age is: 5 s of the test's clock
        // with items queued and nothing sent.
        let clock = Clock::manual();
        let server = Server::start_with_clock(
            &common::config_sections(
                false,
                "  outbound_max_bytes: 1073741824\n  outbound_max_delay_secs: 5\n",
                "",
                "",
            ),
            clock.clone(),
        )
        .await
        .unwrap();
        let mut sender = Peer::connect(&server).await;
        let mut stalled = Peer::connect_small_window(&server, 4096).await;
        sender.join("r", "s", "S").await;
        stalled.join("r", "x", "X").await;
        sender.expect("newUser").await;
        // Fill the stalled peer's socket until items wait in its queue.
        let pad = "p".repeat(64 * 1024);
        let center = server.center().clone();
        let queued = |center: &pilot_center::center::Center| {
            center
                .list_sessions()
                .iter()
                .map(|s| s.queue_depth)
                .max()
                .unwrap_or(0)
        };
        let mut sent = 0;
        while queued(&center) < 32 {
            assert!(sent < 2048, "the stalled peer's queue never backed up");
            for _ in 0..8 {
                sender
                    .notify(
                        "textMessage",
                        json!({"roomId": "r", "userId": "s", "message": pad}),
                    )
                    .await;
            }
            sender.expect_silence().await;
            sent += 8;
        }
        // Time passes with nothing sent: the session is cut off.
        common::retry("the stalled session to be cut off", || {
            clock.advance(Duration::from_secs(6));
            let cut = center.metrics().slow_consumers.get() == 1;
            async move {
                if cut {
                    Ok(())
                } else {
                    Err("not yet".to_owned())
                }
            }
        })
        .await;
        assert_eq!(sender.expect("userDisconnect").await["userId"], json!("x"));
        sender.expect_silence().await;
        drop(stalled);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    common::bounded(async move {
        let server = common::start().await;
        let admin = server.admin_addr().unwrap();
        assert_eq!(http_get(admin, "/healthz").await, (200, "ok\n".into()));
        assert_eq!(http_get(admin, "/readyz").await, (200, "ready\n".into()));
        let mut p = Peer::connect(&server).await;
        p.join("r", "u", "U").await;
        p.request("nope", json!({})).await;
        let (status, body) = http_get(admin, "/metrics").await;
        assert_eq!(status, 200);
        for needle in [
            "pilot_sessions{kind=\"ws\"} 1",
            "pilot_rooms 1",
            "pilot_users 1",
            "pilot_msus 0",
            "pilot_messages_in_total{method=\"join\"} 1",
            "pilot_messages_in_total{method=\"other\"} 1",
            "pilot_messages_out_total{method=\"response\"} 2",
            "pilot_errors_total{code=\"404\"} 1",
            "pilot_request_duration_seconds_count{method=\"join\"} 1",
            "pilot_outbound_queue_depth ",
            "pilot_event_feed_skipped_total 0",
        ] {
            assert!(body.contains(needle), "missing {needle} in\n{body}");
        }
        assert_eq!(http_get(admin, "/nope").await.0, 404);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_closes_everything_in_order() {
    common::bounded(async move {
        let server = common::start().await;
        let admin = server.admin_addr().unwrap();
        let mut ws = Peer::connect(&server).await;
        ws.join("r", "u", "U").await;
        // A peer that will not answer the close handshake keeps the drain going a moment.
        let mut lazy = Peer::connect(&server).await;
        lazy.join("r", "l", "L").await;
        let mut client = common::grpc(&server).await;
        let mut watch = client
            .watch_events(proto::WatchEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<proto::PeerSessionRequest>(4);
        let mut peer = client
            .peer_session(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();

        // Responses in flight when the shutdown starts are still delivered: 50
        // echo requests of 64 KiB each, handled by the center but not yet read.
        let big = "e".repeat(64 * 1024);
        for i in 0..50 {
            ws.send_text(
                json!({"request": true, "id": i, "method": "echo", "data": big}).to_string(),
            )
            .await;
        }
        let center = server.center().clone();
        eventually("the center to handle the 50 requests", || {
            center.list_sessions().iter().any(|s| s.messages_in >= 51)
        })
        .await;
        let stopping = tokio::spawn(server.shutdown(Duration::from_secs(10)));
        // The lazy peer holds the drain open (up to 2 s for its close reply),
        // so /readyz is seen unready before the admin listener stops.
        let deadline = tokio::time::Instant::now() + WAIT;
        while http_get(admin, "/readyz").await.0 != 503 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "/readyz turns unready while draining"
            );
            tokio::task::yield_now().await;
        }

        let mut next_id = 0;
        let close = loop {
            match tokio::time::timeout(WAIT, ws.ws.next())
                .await
                .expect("close in time")
            {
                Some(Ok(Message::Text(t))) => {
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    if v["response"] == json!(true) {
                        assert_eq!(v["id"], json!(next_id), "responses in order, none lost");
                        next_id += 1;
                    }
                }
                Some(Ok(Message::Close(Some(f)))) => break f,
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (1001, "going away")
        );
        assert_eq!(
            next_id, 50,
            "every handled request was answered before the close"
        );

        let end = common::end_status(&mut watch).await;
        assert_eq!(end, Code::Unavailable);
        let end = common::end_status(&mut peer).await;
        assert_eq!(end, Code::Unavailable);
        drop(tx);
        assert!(
            common::join(stopping).await,
            "finished within the grace period"
        );
        drop(lazy);
        // Nothing listens any more. A connect can still succeed by chance:
        // the kernel may pick the freed port as the connect's own source
        // port (a self-connect), or another test of this binary may bind
        // it meanwhile; this center's admin listener, stopped while
        // draining, would answer /readyz with 503, anyone else's not.
        if let Ok(mut s) = tokio::net::TcpStream::connect(admin).await
            && s.local_addr().ok() != s.peer_addr().ok()
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let ask = format!("GET /readyz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
            let _ = s.write_all(ask.as_bytes()).await;
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut answer)).await;
            assert!(
                !answer.starts_with(b"HTTP/1.1 503"),
                "the admin listener outlived the shutdown: {}",
                String::from_utf8_lossy(&answer)
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_binary_gracefully() {
    common::bounded(async move {
        let mut center = Binary::start(
            "sigterm",
            "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\ngrpc:\n  enabled: false\nadmin:\n  enabled: false\ncenter:\n  shutdown_grace_secs: 5\n",
            &["--log-level", "info"],
        )
        .await;
        let addr = center.addr("websocket").await;
        let mut p = Peer::connect_url(&format!("ws://{addr}/pilot/center")).await;
        p.join("r", "u", "U").await;
        center.sigterm();
        let close = p.close_frame().await;
        assert_eq!(u16::from(close.code), 1001);
        let status = tokio::time::timeout(WAIT, center.child.wait())
            .await
            .expect("exits by itself after SIGTERM")
            .unwrap();
        assert!(status.success(), "{status}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_appear_in_the_logs_even_at_debug() {
    common::bounded(async move {
        const SECRET: &str = "log-secret-0123456789-0123456789-0123456789";
        let mut center = Binary::start(
            "logs",
            &format!("websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\ngrpc:\n  listen_ip: 127.0.0.1\n  listen_port: 0\nadmin:\n  listen_ip: 127.0.0.1\n  listen_port: 0\ncenter:\n  shutdown_grace_secs: 5\nauth:\n  enabled: true\n  hs256_secret: \"{SECRET}\"\n"),
            &["--log-level", "debug"],
        )
        .await;
        let ws = center.addr("websocket").await;
        let grpc = center.addr("grpc").await;
        let admin = center.addr("admin").await;
        let sfu = token(SECRET, Role::Sfu, &["*"], 600);
        let sfu2 = token(SECRET, Role::Sfu, &["*"], 601);
        let admin_token = token(SECRET, Role::Admin, &["*"], 600);
        let expired = token(SECRET, Role::Sfu, &["*"], -600);

        // A token in the query string, one in a header, one refused.
        let url = format!("ws://{ws}/pilot/center");
        let mut a = Peer::connect_url(&format!("{url}?token={sfu}")).await;
        a.join("r", "a", "A").await;
        let mut b = Peer::connect_with(&url, Some(&sfu2)).await;
        b.join("r", "b", "B").await;
        a.expect("newUser").await;
        assert_eq!(
            upgrade_status(ws.parse().unwrap(), &format!("/pilot/center?token={expired}"), "").await,
            401
        );
        // gRPC metadata and the admin page's API.
        let mut client =
            proto::room_service_client::RoomServiceClient::connect(format!("http://{grpc}"))
                .await
                .unwrap();
        let mut request = tonic::Request::new(proto::ListRoomsRequest::default());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {admin_token}").parse().unwrap(),
        );
        client.list_rooms(request).await.unwrap();
        let (status, _) = common::http(
            admin.parse().unwrap(),
            "GET",
            "/api/overview",
            &format!("Authorization: Bearer {admin_token}\r\n"),
            "",
        )
        .await;
        assert_eq!(status, 200);
        a.request("echo", json!({})).await;

        center.sigterm();
        center.read_to_end().await;
        let log = &center.log;
        // The debug log did see these sessions (so the check has teeth) ...
        assert!(log.contains("DEBUG"), "{log}");
        assert!(log.contains("join"), "{log}");
        // ... and no token, nor the signature that makes one usable.
        for t in [&sfu, &sfu2, &admin_token, &expired] {
            let signature = t.rsplit('.').next().unwrap();
            assert!(!log.contains(signature), "a token in the log: {log}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_in_every_method_is_answered_and_harmless() {
    common::bounded(async move {
        let server = common::start().await;
        let mut bad = Peer::connect(&server).await;
        let mut good = Peer::connect(&server).await;
        good.join("r", "g", "G").await;
        bad.join("r", "b", "B").await;
        good.expect("newUser").await;

        // Requests with wrong field types: 400 with the documented reasons.
        for (method, data, reason) in [
            (
                "join",
                json!({"roomId": ["r"], "userId": "u"}),
                "Invalid roomId or userId",
            ),
            (
                "join",
                json!({"roomId": "r", "userId": {"id": 1}}),
                "Invalid roomId or userId",
            ),
            ("join", json!(null), "Invalid roomId or userId"),
            ("join", json!([1, 2]), "Invalid roomId or userId"),
            ("register", json!({"id": 12}), "Invalid id"),
            ("register", json!({"id": null}), "Invalid id"),
        ] {
            let r = bad.request(method, data.clone()).await;
            assert_eq!(
                (r["errorCode"].clone(), r["errorReason"].clone()),
                (json!(400), json!(reason)),
                "{method} {data}"
            );
        }
        // Notifications with wrong field types: ignored; no one hears anything.
        for (method, data) in [
            (
                "push",
                json!({"roomId": "r", "userId": "b", "publishers": "nope"}),
            ),
            (
                "push",
                json!({"roomId": 5, "userId": "b", "publishers": []}),
            ),
            (
                "push",
                json!({"roomId": "r", "userId": 7, "publishers": []}),
            ),
            (
                "pullRemoteStream",
                json!({"roomId": "r", "pusher_user_id": 1}),
            ),
            ("userLeave", json!({"roomId": "r", "userId": ["b"]})),
            ("userDisconnect", json!({"roomId": {}, "userId": "b"})),
            ("textMessage", json!({"roomId": null})),
            ("userReConnect", json!({"roomId": "r", "userId": 0})),
        ] {
            bad.notify(method, data).await;
        }
        // A publisher entry with a non-string pusherId is skipped, the rest goes through.
        bad.notify("push", json!({"roomId": "r", "userId": "b", "publishers": [{"pusherId": 9}, {"pusherId": "ok", "rtpParam": {}}]})).await;
        assert_eq!(
            good.expect("newPusher").await["pushers"],
            json!([{"pusherId": "ok", "rtpParam": {}}])
        );
        good.expect_silence().await;
        // Huge and odd ids.
        for id in [json!(u64::MAX), json!(-1), json!("x".repeat(10_000))] {
            assert_eq!(
                bad.request_with_id(id.clone(), "echo", json!(1)).await["id"],
                id
            );
        }
        // JSON that strict parsers reject (found by fuzzing): ignored, never forwarded.
        bad.send_text(r#"{"notification":true,"method":"textMessage","data":{"roomId":"r","userId":"b","message":"\uDEEE"}}"#).await;
        bad.send_text(r#"{"notification":true,"method":"textMessage","data":{"roomId":"r","userId":"b","message":"m","n":1e1111}}"#).await;
        let r = bad.request("echo", json!(1)).await;
        assert_eq!(r["ok"], json!(true));
        // Deep nesting inside the size limit: ignored, never forwarded.
        bad.send_text(format!("{{\"notification\":true,\"method\":\"textMessage\",\"data\":{{\"roomId\":\"r\",\"message\":{}{}}}}}", "[".repeat(200), "]".repeat(200))).await;
        bad.expect_silence().await;
        good.expect_silence().await;
        assert_eq!(bad.request("echo", json!("alive")).await["ok"], json!(true));
        // Invalid UTF-8 in a text frame closes that session with 1007, no other.
        let mut sfu = Sfu::connect(server.ws_addr(), false).await;
        sfu.send_frame(0x1, &[0x7b, 0xff, 0xfe, 0x7d]).await;
        eventually("the 1007 close", || sfu.is_closed()).await;
        assert_eq!(*sfu.close_code.lock().unwrap(), Some(1007));
        assert_eq!(good.request("echo", json!(1)).await["ok"], json!(true));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limits() {
    common::bounded(async move {
        let server = Server::start(&common::config_sections(
            false,
            "  max_sessions: 2\n",
            "",
            "",
        ))
        .await
        .unwrap();
        let _a = Peer::connect(&server).await;
        let _b = Peer::connect(&server).await;
        assert_eq!(
            upgrade_status(server.ws_addr(), "/pilot/center", "").await,
            503
        );
        drop(_a);
        // The slot comes back once the closed session's task has finished:
        // refused upgrades take no slot, so retry until one is accepted.
        let url = server.ws_url();
        let _c = common::retry("a free slot", || Peer::try_connect(&url)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_connection_limit() {
    common::bounded(async move {
        let server = Server::start(&common::config_sections(
            false,
            "  max_sessions_per_ip: 1\n",
            "",
            "",
        ))
        .await
        .unwrap();
        let _a = Peer::connect(&server).await;
        assert_eq!(
            upgrade_status(server.ws_addr(), "/pilot/center", "").await,
            429
        );
        let (_, metrics) = http_get(server.admin_addr().unwrap(), "/metrics").await;
        assert!(
            metrics.contains("pilot_upgrades_refused_total{code=\"429\"} 1"),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_and_users_per_session_are_limited() {
    common::bounded(async move {
        let server = Server::start(&common::config_sections(
            false,
            "",
            "",
            "  max_rooms_per_session: 2\n  max_users_per_session: 3\n",
        ))
        .await
        .unwrap();
        let mut p = Peer::connect(&server).await;
        p.join("r1", "a", "A").await;
        p.join("r2", "b", "B").await;
        let r = p
            .request("join", json!({"roomId": "r3", "userId": "c"}))
            .await;
        assert_eq!(
            (r["errorCode"].clone(), r["errorReason"].clone()),
            (
                json!(429),
                json!("limit reached: at most 2 rooms per session")
            )
        );
        p.join("r1", "c", "C").await;
        let r = p
            .request("join", json!({"roomId": "r2", "userId": "d"}))
            .await;
        assert_eq!(r["errorCode"], json!(429));
        // Re-joining a user it already carries is no new user.
        p.join("r1", "a", "A").await;
        // Pushes and reconnects that would add users are refused and leave nothing behind.
        p.notify(
            "push",
            json!({"roomId": "r1", "userId": "z", "publishers": []}),
        )
        .await;
        p.notify("userReConnect", json!({"roomId": "r9", "userId": "y"}))
            .await;
        assert_eq!(p.request("echo", json!(1)).await["ok"], json!(true));
        assert_eq!(server.center().counts(), (1, 2, 3, 0));
        drop(p);
        let center = server.center().clone();
        eventually("an empty center", || center.counts() == (0, 0, 0, 0)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_peers_are_dropped_after_ping_timeout() {
    common::bounded(async move {
        let server = Server::start(&common::config_sections(
            false,
            "  ping_interval_secs: 1\n  pong_timeout_secs: 1\n",
            "",
            "",
        ))
        .await
        .unwrap();
        let mut watcher = Peer::connect(&server).await;
        watcher.join("r", "w", "W").await;
        // A peer that never reads never answers pings (tungstenite only pongs when polled).
        let mut silent = Peer::connect(&server).await;
        silent.join("r", "s", "S").await;
        watcher.expect("newUser").await;
        // The watcher keeps reading (and so answering pings) and hears the silent one go.
        let m = tokio::time::timeout(WAIT, watcher.expect("userDisconnect"))
            .await
            .expect("dropped within ping + timeout");
        assert_eq!(m["userId"], json!("s"));
        assert_eq!(server.center().list_sessions().len(), 1);
        drop(silent);
    })
    .await;
}
