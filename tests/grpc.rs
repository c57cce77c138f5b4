//! The gRPC surface with the tonic-generated client, beside WebSocket peers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Peer, WAIT, rtp_param};
use pilot_center::proto::{
    self, EventKind, PeerSessionRequest, PeerSessionResponse, command, command_result, peer_event,
    peer_session_request, peer_session_response, watch_events_response::Event,
};
use serde_json::{Value, json};
use std::collections::VecDeque;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

/// A peer on the `PeerSession` stream.
struct GrpcPeer {
    tx: mpsc::Sender<PeerSessionRequest>,
    rx: Streaming<PeerSessionResponse>,
    pending: VecDeque<PeerSessionResponse>,
    next_id: u64,
}

impl GrpcPeer {
    /// A PeerSession that names itself (`x-peer-id`) and its process
    /// (`x-peer-incarnation`).
    async fn open_as(
        server: &pilot_center::server::Server,
        peer: &str,
        incarnation: &str,
    ) -> GrpcPeer {
        Self::open_with(
            server,
            &[("x-peer-id", peer), ("x-peer-incarnation", incarnation)],
        )
        .await
    }

    async fn open(server: &pilot_center::server::Server) -> GrpcPeer {
        Self::open_with(server, &[]).await
    }

    async fn open_with(
        server: &pilot_center::server::Server,
        metadata: &[(&'static str, &str)],
    ) -> GrpcPeer {
        let mut client = common::grpc(server).await;
        let (tx, rx) = mpsc::channel(64);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        for (key, value) in metadata {
            request
                .metadata_mut()
                .insert(*key, value.parse().expect("ascii"));
        }
        let stream = client
            .peer_session(request)
            .await
            .expect("PeerSession")
            .into_inner();
        GrpcPeer {
            tx,
            rx: stream,
            pending: VecDeque::new(),
            next_id: 1,
        }
    }

    async fn next(&mut self) -> Option<PeerSessionResponse> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        tokio::time::timeout(WAIT, self.rx.next())
            .await
            .ok()?
            .map(|r| r.expect("stream ok"))
    }

    async fn run(&mut self, kind: command::Kind) -> command_result::Outcome {
        let id = self.next_id;
        self.next_id += 1;
        let msg = PeerSessionRequest {
            kind: Some(peer_session_request::Kind::Command(proto::PeerCommand {
                id,
                command: Some(proto::Command { kind: Some(kind) }),
            })),
        };
        self.tx.send(msg).await.expect("send");
        loop {
            let m = self.next().await.expect("a result");
            if let Some(peer_session_response::Kind::Result(r)) = &m.kind
                && r.id == id
            {
                return r.outcome.clone().expect("outcome");
            }
            self.pending.push_back(m);
        }
    }

    async fn event(&mut self) -> peer_event::Kind {
        match self.next().await.expect("an event").kind {
            Some(peer_session_response::Kind::Event(e)) => e.kind.expect("kind"),
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

fn join(room: &str, user: &str, name: &str) -> command::Kind {
    command::Kind::Join(proto::JoinRequest {
        room_id: room.into(),
        user_id: user.into(),
        user_name: name.into(),
        ..Default::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_peer_and_a_websocket_sfu_share_a_room() {
    common::bounded(async move {
        let server = common::start().await;
        let mut g = GrpcPeer::open(&server).await;
        let mut w = Peer::connect(&server).await;

        let command_result::Outcome::Reply(r) = g.run(join("r", "g1", "Grace")).await else {
            panic!("join failed")
        };
        assert!(matches!(r.kind, Some(proto::reply::Kind::Join(ref j)) if j.users.is_empty()));
        let d = w.join("r", "w1", "Walt").await;
        assert_eq!(d["users"][0]["userId"], json!("g1"));
        let peer_event::Kind::NewUser(nu) = g.event().await else {
            panic!()
        };
        assert_eq!((nu.user_id.as_str(), nu.user_name.as_str()), ("w1", "Walt"));

        // gRPC push -> WebSocket newPusher, rtpParam verbatim.
        let rtp = rtp_param(99).to_string();
        let push = command::Kind::Push(proto::PushRequest {
            room_id: "r".into(),
            user_id: "g1".into(),
            user_name: "Grace".into(),
            publishers: vec![proto::Publisher {
                pusher_id: "gv".into(),
                rtp_param_json: rtp.clone(),
                extra: [("x_tag".to_owned(), "[1,\"a\"]".to_owned())].into(),
            }],
            extra: Default::default(),
        });
        assert!(matches!(
            g.run(push).await,
            command_result::Outcome::Reply(_)
        ));
        let np = w.expect("newPusher").await;
        assert_eq!(
            np["pushers"],
            json!([{"pusherId": "gv", "rtpParam": rtp_param(99), "x_tag": [1, "a"]}])
        );
        // Invalid JSON from a gRPC peer is refused, never forwarded.
        let bad = command::Kind::Push(proto::PushRequest {
            room_id: "r".into(),
            user_id: "g1".into(),
            publishers: vec![proto::Publisher {
                pusher_id: "p".into(),
                rtp_param_json: "{oops".into(),
                extra: Default::default(),
            }],
            ..Default::default()
        });
        let command_result::Outcome::Error(e) = g.run(bad).await else {
            panic!("accepted invalid JSON")
        };
        assert_eq!(e.code, 400);
        assert!(e.reason.contains("rtp_param_json"), "{}", e.reason);

        // WebSocket pull -> the gRPC peer, payload verbatim.
        let pull = json!({"roomId": "r", "pusher_user_id": "g1", "udp_ip": "1.2.3.4", "udp_port": 5000, "mediaType": "video", "pushInfo": {"pusherId": "gv", "rtpParam": rtp_param(99)}, "x": 1});
        w.notify("pullRemoteStream", pull.clone()).await;
        let peer_event::Kind::PullRemoteStream(p) = g.event().await else {
            panic!()
        };
        assert_eq!((p.udp_port, p.media_type.as_str()), (5000, "video"));
        assert_eq!(
            serde_json::from_str::<Value>(&p.payload_json).unwrap(),
            pull
        );

        // Chat both ways.
        let text = command::Kind::TextMessage(proto::TextMessageRequest {
            room_id: "r".into(),
            user_id: "g1".into(),
            user_name: "Grace".into(),
            message: "from grpc".into(),
            extra: Default::default(),
            payload_json: String::new(),
        });
        g.run(text).await;
        assert_eq!(
            w.expect("textMessage").await,
            json!({"roomId": "r", "userId": "g1", "userName": "Grace", "message": "from grpc"})
        );
        w.notify(
            "textMessage",
            json!({"roomId": "r", "userId": "w1", "userName": "Walt", "message": "from ws"}),
        )
        .await;
        let peer_event::Kind::TextMessage(t) = g.event().await else {
            panic!()
        };
        assert_eq!(t.message, "from ws");

        // Echo and an unknown-room pull answer with results.
        let command_result::Outcome::Reply(r) = g
            .run(command::Kind::Echo(proto::EchoRequest {
                data_json: "{\"a\":1}".into(),
            }))
            .await
        else {
            panic!()
        };
        assert!(matches!(r.kind, Some(proto::reply::Kind::Echo(ref e)) if e.data_json == "{\"a\":1}"));
        let command_result::Outcome::Error(e) = g
            .run(command::Kind::PullRemoteStream(
                proto::PullRemoteStreamRequest {
                    room_id: "nope".into(),
                    pusher_user_id: "x".into(),
                    ..Default::default()
                },
            ))
            .await
        else {
            panic!()
        };
        assert_eq!(e.code, 404);

        // The stream ends: the same clean-up as a dropped socket.
        drop(g);
        assert_eq!(
            w.expect("userDisconnect").await,
            json!({"roomId": "r", "userId": "g1"})
        );
        let room = server.center().get_room("r").unwrap();
        assert_eq!(room.users.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_msu_gets_and_answers_invites() {
    common::bounded(async move {
        let server = common::start().await;
        let mut m = GrpcPeer::open(&server).await;
        let command_result::Outcome::Reply(r) = m
            .run(command::Kind::RegisterMsu(proto::RegisterMsuRequest {
                msu_id: "gm".into(),
                ..Default::default()
            }))
            .await
        else {
            panic!()
        };
        assert!(
            matches!(r.kind, Some(proto::reply::Kind::RegisterMsu(ref x)) if x.registered && x.msu_id == "gm")
        );
        let mut w = Peer::connect(&server).await;
        w.join("r", "u", "U").await;
        let Some(peer_session_response::Kind::Invite(inv)) = m.next().await.unwrap().kind else {
            panic!("no invite")
        };
        assert_eq!(inv.room_id, "r");
        m.tx.send(PeerSessionRequest {
            kind: Some(peer_session_request::Kind::InviteAnswer(proto::InviteAnswer {
                id: inv.id,
                ok: true,
                error: None,
            })),
        })
        .await
        .unwrap();
        let msus = common::grpc(&server)
            .await
            .list_msus(proto::ListMsusRequest::default())
            .await
            .unwrap()
            .into_inner()
            .msus;
        assert_eq!(msus[0].room_ids, vec!["r".to_owned()]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_rpcs_over_websocket_state() {
    common::bounded(async move {
        let server = common::start().await;
        let mut client = common::grpc(&server).await;
        let (mut a, mut b) = (Peer::connect(&server).await, Peer::connect(&server).await);
        a.collect_invites = true;
        a.request("register", json!({"id": "m1"})).await;
        a.join("r", "a1", "Ann").await;
        a.join("r", "a2", "Abe").await;
        b.join("r", "b1", "Bo").await;
        a.expect("newUser").await;
        a.notify("push", json!({"roomId": "r", "userId": "a1", "publishers": [{"pusherId": "v", "rtpParam": {"ssrc": 1, "av_type": 2}}]})).await;
        b.expect("newPusher").await;
        b.join("s", "b2", "Bo2").await;

        let rooms = client
            .list_rooms(proto::ListRoomsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .rooms;
        assert_eq!(
            rooms
                .iter()
                .map(|r| (
                    r.room_id.as_str(),
                    r.user_count,
                    r.session_count,
                    r.msu_id.as_str()
                ))
                .collect::<Vec<_>>(),
            vec![("r", 3, 2, "m1"), ("s", 1, 1, "m1")]
        );

        let room = client
            .get_room(proto::GetRoomRequest {
                room_id: "r".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .room
            .unwrap();
        assert_eq!(room.msu_id, "m1");
        let a1 = &room.users[0];
        assert_eq!((a1.user_id.as_str(), a1.user_name.as_str()), ("a1", "Ann"));
        assert_eq!(
            serde_json::from_str::<Value>(&a1.pushers[0].rtp_param_json).unwrap(),
            json!({"ssrc": 1, "av_type": 2})
        );
        assert_ne!(a1.session_id, room.users[2].session_id);

        let sessions = client
            .list_sessions(proto::ListSessionsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .sessions;
        assert_eq!(sessions.len(), 2);
        let sa = sessions
            .iter()
            .find(|s| s.msu_ids == vec!["m1".to_owned()])
            .unwrap();
        assert_eq!(
            (sa.transport, sa.user_count),
            (proto::Transport::Ws as i32, 2)
        );
        assert!(sa.messages_in >= 4 && sa.messages_out >= 4, "{sa:?}");
        assert!(sa.peer_addr.starts_with("127.0.0.1:"));

        let msus = client
            .list_msus(proto::ListMsusRequest::default())
            .await
            .unwrap()
            .into_inner()
            .msus;
        assert_eq!(
            (
                msus[0].msu_id.as_str(),
                msus[0].room_ids.clone(),
                msus[0].session_id
            ),
            ("m1", vec!["r".to_owned(), "s".to_owned()], sa.session_id)
        );

        // Text as the system and as a user: every session of the room gets it.
        client
            .send_text_message(proto::SendTextMessageRequest {
                room_id: "r".into(),
                message: "maintenance at 5".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(
            a.expect("textMessage").await,
            json!({"roomId": "r", "userId": "", "userName": "system", "message": "maintenance at 5"})
        );
        assert_eq!(b.expect("textMessage").await["userName"], json!("system"));
        client
            .send_text_message(proto::SendTextMessageRequest {
                room_id: "r".into(),
                user_id: "a1".into(),
                message: "hi".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(b.expect("textMessage").await["userName"], json!("Ann"));
        a.expect("textMessage").await;

        // Kick: the room's other sessions and the user's own get userLeave.
        let n = client
            .remove_user(proto::RemoveUserRequest {
                room_id: "r".into(),
                user_id: "b1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(n.sessions_notified, 2);
        assert_eq!(
            a.expect("userLeave").await,
            json!({"roomId": "r", "userId": "b1"})
        );
        assert_eq!(
            b.expect("userLeave").await,
            json!({"roomId": "r", "userId": "b1"})
        );

        // Recording needs an MSU with a media address (m1 gave none): the
        // caller is told, and nothing is recorded.
        let refused = client
            .start_recording(proto::StartRecordingRequest {
                room_id: "r".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        assert!(refused.message().contains("no MSU"), "{refused:?}");
        let listed = client
            .list_recordings(proto::ListRecordingsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(listed.recordings.is_empty());
        let unknown = client
            .delete_recording(proto::DeleteRecordingRequest {
                recording_id: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound, "{unknown:?}");

        // Close: every session gets userLeave for each user; the room is gone.
        let n = client
            .close_room(proto::CloseRoomRequest {
                room_id: "r".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(n.users_removed, 2);
        assert_eq!(a.expect("userLeave").await["userId"], json!("a1"));
        assert_eq!(a.expect("userLeave").await["userId"], json!("a2"));
        b.expect_silence().await;
        assert_eq!(
            client
                .get_room(proto::GetRoomRequest {
                    room_id: "r".into()
                })
                .await
                .unwrap_err()
                .code(),
            Code::NotFound
        );

        // Clear status codes.
        let e = client
            .remove_user(proto::RemoveUserRequest {
                room_id: "s".into(),
                user_id: "ghost".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        let e = client
            .get_room(proto::GetRoomRequest {
                room_id: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("room_id"), "{}", e.message());
        let e = client
            .send_text_message(proto::SendTextMessageRequest {
                room_id: "s".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("message"));
    })
    .await;
}

fn kinds(events: &[proto::WatchEventsResponse]) -> Vec<EventKind> {
    events.iter().map(|e| e.kind()).collect()
}

async fn take(
    stream: &mut Streaming<proto::WatchEventsResponse>,
    n: usize,
) -> Vec<proto::WatchEventsResponse> {
    let mut out = Vec::new();
    while out.len() < n {
        let e = tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("event in time")
            .expect("stream open")
            .expect("ok");
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_sees_a_scripted_scenario_in_order() {
    common::bounded(async move {
        let server = common::start().await;
        let mut client = common::grpc(&server).await;
        let mut all = client
            .watch_events(proto::WatchEventsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let mut room_only = client
            .watch_events(proto::WatchEventsRequest {
                room_ids: vec!["r".into()],
                kinds: vec![
                    EventKind::UserJoined as i32,
                    EventKind::UserDisconnected as i32,
                ],
                after: None,
            })
            .await
            .unwrap()
            .into_inner();

        let mut a = Peer::connect(&server).await;
        a.collect_invites = true;
        a.request("register", json!({"id": "m"})).await;
        a.join("r", "a1", "A").await;
        let mut b = Peer::connect(&server).await;
        b.join("r", "b1", "B").await;
        a.expect("newUser").await;
        a.notify(
            "push",
            json!({"roomId": "r", "userId": "a1", "publishers": [{"pusherId": "p", "rtpParam": {}}]}),
        )
        .await;
        b.expect("newPusher").await;
        b.notify("pullRemoteStream", json!({"roomId": "r", "pusher_user_id": "a1", "udp_ip": "1.1.1.1", "udp_port": 1, "mediaType": "video", "pushInfo": {"pusherId": "p"}})).await;
        a.expect("pullRemoteStream").await;
        b.notify(
            "textMessage",
            json!({"roomId": "r", "userId": "b1", "message": "m"}),
        )
        .await;
        a.expect("textMessage").await;
        a.notify("userDisconnect", json!({"roomId": "r", "userId": "a1"}))
            .await;
        b.expect("userDisconnect").await;
        a.notify(
            "userReConnect",
            json!({"roomId": "r", "userId": "a1", "userName": "A"}),
        )
        .await;
        b.expect("userReConnect").await;
        b.notify("userLeave", json!({"roomId": "r", "userId": "b1"}))
            .await;
        a.expect("userLeave").await;
        drop(b);
        // b's close and a's race otherwise; the expected order has b's first.
        let center = server.center().clone();
        common::eventually("b's session to close", || {
            center.list_sessions().len() == 1
        })
        .await;
        a.ws.close(None).await.unwrap();

        use EventKind as K;
        let expected = vec![
            K::SessionOpened,
            K::MsuRegistered,
            K::RoomCreated,
            K::UserJoined,
            K::MsuInvited,
            K::SessionOpened,
            K::UserJoined,
            K::MsuInvited,
            K::PusherAdded,
            // The MSU has no media address: the publisher's SFU sends to b.
            K::RelayChanged,
            K::PullForwarded,
            K::TextMessage,
            K::UserDisconnected,
            K::UserReconnected,
            K::UserLeft,
            K::SessionClosed,
            // A's close: a1 disconnected and removed (its relay ends), the
            // room closed, the MSU lost.
            K::UserDisconnected,
            K::UserLeft,
            K::RelayEnded,
            K::RoomClosed,
            K::MsuLost,
            K::SessionClosed,
        ];
        let events = take(&mut all, expected.len()).await;
        assert_eq!(kinds(&events), expected);
        for pair in events.windows(2) {
            assert_eq!(pair[1].seq, pair[0].seq + 1, "gap-free sequence numbers");
        }
        assert!(events.iter().all(|e| e.time.is_some()));
        let Some(Event::UserReconnected(r)) = &events[13].event else {
            panic!()
        };
        assert_eq!(r.user_id, "a1");

        let filtered = take(&mut room_only, 4).await;
        assert_eq!(
            kinds(&filtered),
            vec![
                K::UserJoined,
                K::UserJoined,
                K::UserDisconnected,
                K::UserDisconnected
            ]
        );
        assert!(filtered.iter().all(|e| e.room_id == "r"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_told_it_lagged_while_a_fast_one_keeps_up() {
    common::bounded(async move {
        let server = pilot_center::server::Server::start(&common::config_sections(
            false,
            "",
            "  outbound_queue: 8\n",
            "  event_feed_capacity: 1024\n",
        ))
        .await
        .unwrap();
        let mut client = common::grpc(&server).await;
        let mut slow = client
            .watch_events(proto::WatchEventsRequest {
                kinds: vec![EventKind::TextMessage as i32],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut fast = client
            .watch_events(proto::WatchEventsRequest {
                kinds: vec![EventKind::TextMessage as i32],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut a = Peer::connect(&server).await;
        a.join("r", "a", "A").await;
        // Enough bytes (about 10 MB) to get past every buffer between the
        // center and the slow watcher (HTTP/2 windows, send buffers, queues).
        // Bursts of 200 that the fast watcher reads before the next; the slow
        // one reads nothing.
        const N: usize = 40_000;
        const BURST: usize = 200;
        let pad = "x".repeat(200);
        let mut last = 0;
        for burst in 0..N / BURST {
            for i in burst * BURST..(burst + 1) * BURST {
                a.notify(
                    "textMessage",
                    json!({"roomId": "r", "userId": "a", "message": format!("{i}{pad}")}),
                )
                .await;
            }
            for _ in 0..BURST {
                let e = tokio::time::timeout(WAIT, fast.next())
                    .await
                    .expect("in time")
                    .unwrap()
                    .unwrap();
                assert!(
                    !matches!(e.event, Some(Event::Lagged(_))),
                    "the fast watcher lagged"
                );
                assert!(e.seq > last);
                last = e.seq;
            }
        }
        // The slow watcher now reads: somewhere in its stream is a lag marker.
        let mut skipped = 0;
        let mut got = 0;
        while got + skipped < N as u64 {
            match tokio::time::timeout(WAIT, slow.next())
                .await
                .expect("in time")
                .unwrap()
                .unwrap()
                .event
            {
                Some(Event::Lagged(l)) => skipped += l.skipped,
                _ => got += 1,
            }
        }
        assert!(skipped > 0, "no lag marker");
        assert!(got < N as u64);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    common::bounded(async move {
        let server = common::start().await;
        let channel = tonic::transport::Channel::from_shared(format!(
            "http://{}",
            server.grpc_addr().unwrap()
        ))
        .unwrap()
        .connect()
        .await
        .unwrap();
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        for service in ["", "pilot.v1.RoomService"] {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                r.status(),
                tonic_health::pb::health_check_response::ServingStatus::Serving
            );
        }
    })
    .await;
}

/// A gRPC peer `g` and a WebSocket peer `w` in room `r`, `g` having heard
/// `w` join.
async fn grpc_and_ws_in_room_r(server: &pilot_center::server::Server) -> (GrpcPeer, Peer) {
    let mut g = GrpcPeer::open(server).await;
    g.run(join("r", "g", "G")).await;
    let mut w = Peer::connect(server).await;
    w.join("r", "w", "W").await;
    g.event().await;
    (g, w)
}

/// Sends 4 KiB `textMessage`s into room `r` from `w`, 64 at a time, until
/// `done` (checked after each batch is handled: the echo is a barrier);
/// panics with `never` after 4,096 (16 MiB).
async fn flood_until(w: &mut Peer, never: &str, mut done: impl FnMut() -> bool) {
    let pad = "p".repeat(4096);
    let mut sent = 0;
    while !done() {
        assert!(sent < 4096, "{never}");
        for i in sent..sent + 64 {
            w.notify(
                "textMessage",
                json!({"roomId": "r", "userId": "w", "message": format!("{i}{pad}")}),
            )
            .await;
        }
        // The center has handled what w sent before it answers this.
        w.request("echo", json!("step")).await;
        sent += 64;
    }
}

/// How many messages the center holds for the (one) gRPC session.
fn queue_depth_of_grpc_peer(center: &pilot_center::center::Center) -> u32 {
    center
        .list_sessions()
        .iter()
        .find(|s| s.transport == proto::Transport::Grpc as i32)
        .map_or(0, |s| s.queue_depth)
}

/// Floods room `r` from `w` until the center queues for the gRPC peer,
/// which stopped reading, faster than its session can hand on: the session
/// waits for HTTP/2 flow control with 64 messages behind it.
async fn back_up_the_grpc_peer(server: &pilot_center::server::Server, w: &mut Peer) {
    let center = server.center();
    flood_until(w, "the stalled gRPC peer never backed up", || {
        queue_depth_of_grpc_peer(center) >= 64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_peer_that_stops_reading_is_cut_off() {
    common::bounded(async move {
        let server = pilot_center::server::Server::start(&common::config_sections(
            false,
            "",
            "  outbound_queue: 8\n  outbound_max_bytes: 65536\n",
            "",
        ))
        .await
        .unwrap();
        let (mut g, mut w) = grpc_and_ws_in_room_r(&server).await;
        // g stops reading; w floods the room until the center finds g
        // behind. HTTP/2 flow control stops the center's sends after a few
        // MiB whatever the kernel's buffers; then the 64 KiB byte bound is
        // reached (16 MiB is the test's own bound).
        let center = server.center().clone();
        flood_until(&mut w, "the stalled gRPC peer was never cut off", || {
            center.metrics().slow_consumers.get() > 0
        })
        .await;
        common::eventually("the stalled gRPC session to be closed", || {
            center.list_sessions().len() == 1
        })
        .await;
        assert_eq!(w.expect("userDisconnect").await["userId"], json!("g"));
        w.expect_silence().await;
        // The stream ends with RESOURCE_EXHAUSTED once g reads again.
        let status = common::end_status(&mut g.rx).await;
        assert_eq!(status, Code::ResourceExhausted);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_peer_that_takes_nothing_for_the_age_bound_is_cut_off() {
    common::bounded(async move {
        // The byte bound is far away (32 MiB); what cuts the stalled peer
        // off is that nothing it was sent was taken for 30 s (center clock).
        let clock = pilot_center::clock::Clock::manual();
        let config = common::config_sections(false, "", "  outbound_queue: 8\n", "");
        let server = pilot_center::server::Server::start_with_clock(&config, clock.clone())
            .await
            .unwrap();
        let (mut g, mut w) = grpc_and_ws_in_room_r(&server).await;
        back_up_the_grpc_peer(&server, &mut w).await;
        let center = server.center().clone();
        assert_eq!(center.metrics().slow_consumers.get(), 0);
        // Time passes on the center's clock only when the test says so.
        common::eventually("the stalled gRPC session to be cut off", || {
            clock.advance(std::time::Duration::from_secs(30));
            center.list_sessions().len() == 1
        })
        .await;
        assert_eq!(center.metrics().slow_consumers.get(), 1);
        assert_eq!(w.expect("userDisconnect").await["userId"], json!("g"));
        let status = common::end_status(&mut g.rx).await;
        assert_eq!(status, Code::ResourceExhausted);
    })
    .await;
}

/// Copies `r` to `w` until `frozen`; then holds both open, forwarding nothing.
async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    frozen: tokio_util::sync::CancellationToken,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            () = frozen.cancelled() => break,
            n = r.read(&mut buf) => n.unwrap_or(0),
        };
        if n == 0 || w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    std::future::pending::<()>().await;
    drop((r, w));
}

/// A TCP relay to `upstream` that can be frozen (cancel the token): it then
/// forwards nothing either way but keeps both sockets open, like a peer
/// that vanished behind a dead network path. Abort the task to end it.
async fn freezable_relay(
    upstream: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let freeze = tokio_util::sync::CancellationToken::new();
    let frozen = freeze.clone();
    let task = tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let server = tokio::net::TcpStream::connect(upstream).await.unwrap();
        let (cr, cw) = client.into_split();
        let (sr, sw) = server.into_split();
        tokio::join!(pipe(cr, sw, frozen.clone()), pipe(sr, cw, frozen));
    });
    (addr, freeze, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_grpc_peer_is_found_by_keepalive() {
    common::bounded(async move {
        let server = pilot_center::server::Server::start(&common::config_sections(
            false,
            "",
            "  keepalive_interval_secs: 1\n  keepalive_timeout_secs: 1\n",
            "",
        ))
        .await
        .unwrap();
        let (relay, freeze, relay_task) = freezable_relay(server.grpc_addr().unwrap()).await;
        let channel = tonic::transport::Channel::from_shared(format!("http://{relay}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = proto::room_service_client::RoomServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(8);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("x-peer-id", "grpc-sfu".parse().unwrap());
        let stream = client.peer_session(request).await.unwrap().into_inner();
        let mut g = GrpcPeer {
            tx,
            rx: stream,
            pending: VecDeque::new(),
            next_id: 1,
        };
        g.run(join("r", "g", "G")).await;
        let mut w = Peer::connect(&server).await;
        w.join("r", "w", "W").await;
        let sessions = server.center().list_sessions();
        assert_eq!(sessions[0].peer_id, "grpc-sfu", "x-peer-id names the peer");
        // The path dies without a FIN: only HTTP/2 pings can tell.
        freeze.cancel();
        assert_eq!(
            w.expect("userDisconnect").await,
            json!({"roomId": "r", "userId": "g"})
        );
        assert_eq!(server.center().list_sessions().len(), 1);
        relay_task.abort();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_watch_from_the_cursor_has_no_gap_and_no_duplicate() {
    common::bounded(async move {
        let server = pilot_center::server::Server::start(&common::config_sections(
            false,
            "",
            "",
            "  event_log_capacity: 32\n",
        ))
        .await
        .unwrap();
        let mut client = common::grpc(&server).await;
        let mut a = Peer::connect(&server).await;
        a.join("r", "a1", "A").await;
        let listed = client
            .list_rooms(proto::ListRoomsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.rooms.len(), 1);
        // Events after the listing, before anyone watches.
        a.join("r", "a2", "A").await;
        a.join("r", "a3", "A").await;
        let mut watch = client
            .watch_events(proto::WatchEventsRequest {
                after: Some(listed.cursor),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        a.join("r", "a4", "A").await;
        let events = take(&mut watch, 3).await;
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            vec![listed.cursor + 1, listed.cursor + 2, listed.cursor + 3],
            "resumes right after the listing"
        );
        let users: Vec<String> = events
            .iter()
            .map(|e| match &e.event {
                Some(Event::UserJoined(j)) => j.user_id.clone(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(users, vec!["a2", "a3", "a4"]);
        // A session's detail and the session list carry cursors too.
        let detail = client
            .get_room(proto::GetRoomRequest {
                room_id: "r".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(detail.cursor, listed.cursor + 3);
        // Older than the 32 kept events: OUT_OF_RANGE.
        for i in 0..40 {
            a.join("r", &format!("b{i}"), "B").await;
        }
        let e = client
            .watch_events(proto::WatchEventsRequest {
                after: Some(listed.cursor),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        let sessions = client
            .list_sessions(proto::ListSessionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(
            client
                .watch_events(proto::WatchEventsRequest {
                    after: Some(sessions.cursor),
                    ..Default::default()
                })
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_come_in_pages() {
    common::bounded(async move {
        let server = common::start().await;
        let mut client = common::grpc(&server).await;
        let mut sfu = Peer::connect(&server).await;
        let mut want = Vec::new();
        for i in 0..25 {
            let room = format!("room{i:02}");
            sfu.join(&room, "u", "U").await;
            want.push(room);
        }
        let (mut got, mut token, mut pages) = (Vec::new(), String::new(), Vec::new());
        loop {
            let page = client
                .list_rooms(proto::ListRoomsRequest {
                    page_size: 10,
                    page_token: token,
                })
                .await
                .unwrap()
                .into_inner();
            pages.push(page.rooms.len());
            got.extend(page.rooms.into_iter().map(|r| r.room_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        assert_eq!(pages, vec![10, 10, 5]);
        assert_eq!(got, want, "every room once, in order");
        // Sessions page by id too. An answered echo shows a session is open
        // (the upgrade completes a moment before the center registers it).
        let mut others = [Peer::connect(&server).await, Peer::connect(&server).await];
        for p in &mut others {
            p.expect_silence().await;
        }
        let first = client
            .list_sessions(proto::ListSessionsRequest {
                page_size: 2,
                page_token: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        let rest = client
            .list_sessions(proto::ListSessionsRequest {
                page_size: 2,
                page_token: first.next_page_token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let ids: Vec<u64> = first
            .sessions
            .iter()
            .chain(&rest.sessions)
            .map(|s| s.session_id)
            .collect();
        assert_eq!(ids.len(), 3);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(rest.next_page_token.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_peer_hears_every_user_of_a_large_sfu_that_drops() {
    common::bounded(async move {
        // 10,000 users leave in one step: more than `grpc.outbound_queue`
        // messages, which the byte-bounded queue takes without calling the
        // gRPC peer a slow consumer.
        const ROOMS: usize = 500;
        const USERS: usize = 10_000;
        let server = common::start().await;
        let mut g = GrpcPeer::open(&server).await;
        for r in 0..ROOMS {
            let outcome = g
                .run(join(&format!("room{r}"), &format!("g{r}"), "G"))
                .await;
            assert!(matches!(outcome, command_result::Outcome::Reply(_)));
        }
        let mut big = Peer::connect(&server).await;
        let joins: Vec<(String, String)> = (0..USERS)
            .map(|k| (format!("room{}", k % ROOMS), format!("big-{k}")))
            .collect();
        big.join_pipelined(&joins).await;
        for _ in 0..USERS {
            assert!(matches!(g.event().await, peer_event::Kind::NewUser(_)));
        }
        drop(big);
        let mut gone = std::collections::BTreeSet::new();
        for _ in 0..USERS {
            let (room, user) = match g.event().await {
                peer_event::Kind::UserLeft(x) => (x.room_id, x.user_id),
                peer_event::Kind::UserDisconnected(x) => (x.room_id, x.user_id),
                other => panic!("unexpected {other:?}"),
            };
            assert!(gone.insert((room, user)), "twice");
        }
        assert_eq!(gone.len(), USERS);
        // Still open: a command is answered.
        let outcome = g.run(join("room0", "g-late", "G")).await;
        assert!(matches!(outcome, command_result::Outcome::Reply(_)));
        assert_eq!(server.center().metrics().slow_consumers.get(), 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_peer_behind_at_shutdown_gets_its_backlog_in_order_then_unavailable() {
    common::bounded(async move {
        let server = pilot_center::server::Server::start(&common::config_sections(
            false,
            "",
            "  outbound_queue: 8\n",
            "",
        ))
        .await
        .unwrap();
        let (mut g, mut w) = grpc_and_ws_in_room_r(&server).await;
        // g reads nothing while w floods the room, until g's session waits
        // on its full stream with a backlog behind it.
        back_up_the_grpc_peer(&server, &mut w).await;
        drop(w);
        let center = server.center().clone();
        let stopping = tokio::spawn(server.shutdown(std::time::Duration::from_secs(10)));
        // g reads only once the center has let go of its session: the
        // drain's bound passed with g still not reading.
        common::eventually("g's session to end", || center.list_sessions().is_empty()).await;
        // What the drain handed on comes in order with no gap, and the
        // stream ends with UNAVAILABLE: never a plain end, which would pass
        // for "everything delivered".
        let mut next = 0;
        let end = loop {
            match tokio::time::timeout(WAIT, g.rx.next())
                .await
                .expect("the stream ends in time")
            {
                Some(Ok(m)) => match m.kind {
                    Some(peer_session_response::Kind::Event(proto::PeerEvent {
                        kind: Some(peer_event::Kind::TextMessage(t)),
                    })) => {
                        let n: usize = t.message.trim_end_matches('p').parse().unwrap();
                        assert_eq!(n, next, "messages in order, none skipped");
                        next += 1;
                    }
                    // w's departure, after its messages.
                    Some(peer_session_response::Kind::Event(proto::PeerEvent {
                        kind: Some(peer_event::Kind::UserLeft(_)),
                    })) => {}
                    other => panic!("unexpected {other:?}"),
                },
                Some(Err(status)) => break status.code(),
                None => panic!("the stream ended without a status after {next} messages"),
            }
        };
        assert!(next > 0);
        assert_eq!(end, Code::Unavailable);
        drop(g);
        assert!(common::join(stopping).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_peer_back_under_a_new_incarnation_ends_its_old_users_at_once() {
    common::bounded(async move {
        let config = common::config_sections(false, "", "", "  reconnect_grace_secs: 30\n");
        let server = pilot_center::server::Server::start(&config).await.unwrap();
        let mut g = GrpcPeer::open_as(&server, "grpc-sfu", "boot-1").await;
        g.run(join("r", "g", "G")).await;
        let mut w = Peer::connect(&server).await;
        w.join("r", "w", "W").await;
        let listed = server.center().list_sessions();
        assert_eq!(
            listed[0].incarnation, "boot-1",
            "listed with its incarnation"
        );
        drop(g);
        assert_eq!(
            w.expect("userDisconnect").await,
            json!({"roomId": "r", "userId": "g"})
        );
        // The same name, another process: g is gone now, not in 30 s.
        let mut again = GrpcPeer::open_as(&server, "grpc-sfu", "boot-2").await;
        assert_eq!(
            w.expect("userLeave").await,
            json!({"roomId": "r", "userId": "g"})
        );
        w.expect_silence().await;
        again.run(join("r", "g2", "G2")).await;
        assert_eq!(w.expect("newUser").await["userId"], json!("g2"));
        server.shutdown(std::time::Duration::from_secs(5)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_peer_may_not_push_for_a_user_another_session_speaks_for() {
    common::bounded(async move {
        let server = common::start().await;
        let mut w = Peer::connect(&*server).await;
        w.join("r", "u1", "U1").await;
        let mut g = GrpcPeer::open(&server).await;
        g.run(join("r", "g", "G")).await;
        w.expect("newUser").await;
        let push = command::Kind::Push(proto::PushRequest {
            room_id: "r".into(),
            user_id: "u1".into(),
            user_name: "X".into(),
            publishers: vec![proto::Publisher {
                pusher_id: "evil".into(),
                rtp_param_json: "{}".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let command_result::Outcome::Error(e) = g.run(push).await else {
            panic!("pushed for another session's user")
        };
        assert_eq!(
            (e.code, e.reason.as_str()),
            (403, "forbidden: user u1 is held by another session")
        );
        w.expect_silence().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_sessions_and_watchers_are_capped() {
    common::bounded(async move {
        let config =
            common::config_sections(false, "", "  max_peer_sessions: 1\n  max_watchers: 1\n", "");
        let server = pilot_center::server::Server::start(&config).await.unwrap();
        let mut first = GrpcPeer::open(&server).await;
        first.run(join("r", "a", "A")).await;
        let mut client = common::grpc(&server).await;
        let (_tx, rx) = mpsc::channel::<PeerSessionRequest>(1);
        let second = client.peer_session(ReceiverStream::new(rx)).await;
        assert_eq!(
            second.err().map(|s| s.code()),
            Some(Code::ResourceExhausted)
        );
        let _watching = client
            .watch_events(proto::WatchEventsRequest::default())
            .await
            .unwrap();
        let again = client
            .watch_events(proto::WatchEventsRequest::default())
            .await;
        assert_eq!(again.err().map(|s| s.code()), Some(Code::ResourceExhausted));
        // A place comes back when its stream ends.
        drop(first);
        let mut poll = common::Poll::new("the PeerSession place to come back");
        loop {
            let (_tx, rx) = mpsc::channel::<PeerSessionRequest>(1);
            match client.peer_session(ReceiverStream::new(rx)).await {
                Ok(_) => break,
                Err(s) => poll.again(&s).await,
            }
        }
    })
    .await;
}
