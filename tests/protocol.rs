//! PROTOCOL.md §2–§6 against the real server over real WebSocket clients.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Peer, WAIT, eventually, rtp_param};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_keeps_data_and_id_types() {
    common::bounded(async move {
        let server = common::start().await;
        let mut p = Peer::connect(&server).await;
        let data = json!({"ts": 1_700_000_000_123u64, "index": 7});
        for id in [json!(12345678), json!("abc-1"), json!(0)] {
            let r = p.request_with_id(id.clone(), "echo", data.clone()).await;
            assert_eq!(
                r,
                json!({"response": true, "id": id, "ok": true, "data": {"echo": data}})
            );
        }
        // Ids beyond 64 bits come back byte for byte.
        p.send_text(
            r#"{"request":true,"id":123456789012345678901234567890,"method":"echo","data":[1]}"#,
        )
        .await;
        let Some(Ok(Message::Text(t))) = p.ws.next().await else {
            panic!("no response")
        };
        assert!(t.contains(r#""id":123456789012345678901234567890"#), "{t}");
        // Absent (or null) data counts as {}.
        let r = p.request("echo", Value::Null).await;
        assert_eq!(r["data"], json!({"echo": {}}));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_documented_codes_and_reasons() {
    common::bounded(async move {
        let server = common::start().await;
        let mut p = Peer::connect(&server).await;
        let r = p.request("nope", json!({})).await;
        assert_eq!(
            (
                r["ok"].clone(),
                r["errorCode"].clone(),
                r["errorReason"].clone()
            ),
            (json!(false), json!(404), json!("Unknown method: nope"))
        );
        // A notification method used as a request is unknown as a request.
        let r = p.request("push", json!({"roomId": "r"})).await;
        assert_eq!(r["errorCode"], json!(404));
        for bad in [
            json!({"roomId": 1, "userId": "u"}),
            json!({"roomId": "r"}),
            json!({"roomId": "r", "userId": ["u"]}),
            json!("x"),
            json!({"roomId": "", "userId": "u"}),
        ] {
            let r = p.request("join", bad.clone()).await;
            assert_eq!(
                (r["errorCode"].clone(), r["errorReason"].clone()),
                (json!(400), json!("Invalid roomId or userId")),
                "{bad}"
            );
        }
        for bad in [json!({}), json!({"id": 5}), json!({"id": ""})] {
            let r = p.request("register", bad.clone()).await;
            assert_eq!(
                (r["errorCode"].clone(), r["errorReason"].clone()),
                (json!(400), json!("Invalid id")),
                "{bad}"
            );
        }
        // A request whose id is neither an integer nor a string: 400 "Invalid id", id echoed.
        p.send_text(r#"{"request":true,"method":"echo","data":{}}"#)
            .await;
        let r = p.response_to(&Value::Null).await;
        assert_eq!(
            (r["errorCode"].clone(), r["errorReason"].clone()),
            (json!(400), json!("Invalid id"))
        );
        p.send_text(r#"{"request":true,"id":{"x":1},"method":"echo"}"#)
            .await;
        let r = p.response_to(&json!({"x": 1})).await;
        assert_eq!(r["errorCode"], json!(400));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_msu() {
    common::bounded(async move {
        let server = common::start().await;
        let mut m = Peer::connect(&server).await;
        let r = m.request("register", json!({"id": "msu-1"})).await;
        assert_eq!(r["data"], json!({"registered": true, "msuId": "msu-1"}));
        assert_eq!(server.settled().await.list_msus()[0].msu_id, "msu-1");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_snapshots_and_broadcasts_once_per_other_session() {
    common::bounded(async move {
        let server = common::start().await;
        let (mut a, mut b) = (Peer::connect(&server).await, Peer::connect(&server).await);
        let d = a.join("room", "a1", "Alice").await;
        assert_eq!(
            d,
            json!({"code": 0, "message": "join success", "roomId": "room", "users": []})
        );
        let d = a.join("room", "a2", "Ann").await;
        assert_eq!(
            d["users"],
            json!([{"userId": "a1", "userName": "Alice", "pushers": []}])
        );
        a.expect_silence().await;

        let mut d = b.join("room", "b1", "Bob").await;
        let mut users = d["users"].as_array_mut().unwrap().clone();
        users.sort_by_key(|u| u["userId"].as_str().unwrap().to_owned());
        assert_eq!(
            users,
            vec![
                json!({"userId": "a1", "userName": "Alice", "pushers": []}),
                json!({"userId": "a2", "userName": "Ann", "pushers": []})
            ]
        );
        // A carries two users of the room but hears of b1 once.
        assert_eq!(
            a.expect("newUser").await,
            json!({"roomId": "room", "userId": "b1", "userName": "Bob"})
        );
        a.expect_silence().await;
        b.expect_silence().await;

        let _ = b.join("room", "b2", "Bea").await;
        assert_eq!(a.expect("newUser").await["userId"], json!("b2"));
        b.expect_silence().await;
        a.expect_silence().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_name_is_always_a_string() {
    common::bounded(async move {
        let server = common::start().await;
        let (mut a, mut b) = (Peer::connect(&server).await, Peer::connect(&server).await);
        a.join("r", "a", "A").await;
        let r = b
            .request(
                "join",
                json!({"roomId": "r", "userId": "b", "userName": 42}),
            )
            .await;
        assert_eq!(r["ok"], json!(true));
        assert_eq!(a.expect("newUser").await["userName"], json!(""));
        let r = b
            .request("join", json!({"roomId": "r", "userId": "c"}))
            .await;
        assert_eq!(r["ok"], json!(true));
        assert_eq!(a.expect("newUser").await["userName"], json!(""));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_and_late_join_keep_every_field() {
    common::bounded(async move {
        let server = common::start().await;
        let (mut a, mut b) = Peer::pair_in_room(&server, "Alice", "Bob").await;

        let publishers = json!([
            {"pusherId": "v1", "rtpParam": rtp_param(11111), "x_layer": {"k": [1, 2.5, "s"]}},
            {"pusherId": "a1", "rtpParam": {"av_type": 2, "codec": "opus", "ssrc": 22222, "clock_rate": 48000, "channel": 2}}
        ]);
        // Raw text so the exact bytes (1.5e6, 0.25, null) can be checked on the far side.
        let push = json!({"roomId": "r", "userId": "a1", "userName": "ignored: the held name wins", "publishers": publishers, "x_top": {"deep": {"er": true}}});
        a.send_text(json!({"notification": true, "method": "push", "data": push}).to_string())
            .await;
        let np = b.expect("newPusher").await;
        assert_eq!(
            np,
            json!({"roomId": "r", "userId": "a1", "userName": "Alice", "pushers": publishers, "x_top": {"deep": {"er": true}}})
        );
        assert_eq!(
            np["pushers"][1]["rtpParam"]["av_type"],
            json!(2),
            "an integer av_type stays an integer"
        );
        assert!(
            np["pushers"][0]["rtpParam"]["ssrc"].is_u64(),
            "ssrc stays an integer"
        );
        a.expect_silence().await;

        // Late joiner: the snapshot carries the pushers with every field.
        let mut c = Peer::connect(&server).await;
        let d = c.join("r", "c1", "Cy").await;
        let a1 = d["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["userId"] == json!("a1"))
            .unwrap()
            .clone();
        assert_eq!(
            a1,
            json!({"userId": "a1", "userName": "Alice", "pushers": publishers})
        );
        a.expect("newUser").await;
        b.expect("newUser").await;

        // pullRemoteStream reaches only the pusher's session, unchanged.
        let pull = json!({"roomId": "r", "pusher_user_id": "a1", "udp_ip": "192.168.1.4", "udp_port": 10001, "mediaType": "video",
            "pushInfo": {"pusherId": "v1", "rtpParam": rtp_param(11111)}, "x_pull": [null, {"n": -0.5}]});
        let text =
            json!({"notification": true, "method": "pullRemoteStream", "data": pull}).to_string();
        c.send_text(text.clone()).await;
        let got = a.expect("pullRemoteStream").await;
        assert_eq!(got, pull);
        // Byte for byte, odd spacing and number spellings included.
        let odd = r#"{ "roomId":"r", "pusher_user_id" : "a1","udp_ip":"10.0.0.9","udp_port":10002,"mediaType":"audio","big":1.5e6,"esc":"\u00e9"}"#;
        c.send_text(format!(
            r#"{{"notification":true,"method":"pullRemoteStream","data":{odd}}}"#
        ))
        .await;
        let Some(Ok(Message::Text(raw))) = a.ws.next().await else {
            panic!("no pull at a")
        };
        assert!(raw.contains(odd), "payload forwarded byte for byte: {raw}");
        b.expect_silence().await;
        c.expect_silence().await;

        // Unknown pusher: nobody gets anything.
        c.notify("pullRemoteStream", json!({"roomId": "r", "pusher_user_id": "ghost", "udp_ip": "1.2.3.4", "udp_port": 1, "mediaType": "audio"})).await;
        c.expect_silence().await;
        a.expect_silence().await;
        b.expect_silence().await;
    })
    .await;
}

/// Frames that reach the center in one read are all applied, in order,
/// even with the peer's close frame among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_that_arrive_together_are_all_applied_in_order_before_a_close() {
    common::bounded(async move {
        let server = common::start().await;
        let (mut a, mut b) = Peer::pair_in_room(&server, "A", "B").await;
        const N: usize = 300;
        for i in 0..N {
            let msg = json!({"notification": true, "method": "textMessage", "data": {"roomId": "r", "userId": "a1", "message": i.to_string()}});
            a.ws.feed(Message::Text(msg.to_string().into())).await.unwrap();
        }
        // One flush: the frames and the close leave in as few segments as
        // the kernel makes, so the center reads many of them at once.
        a.ws.feed(Message::Close(None)).await.unwrap();
        a.ws.flush().await.unwrap();
        for i in 0..N {
            let got = b.expect("textMessage").await;
            assert_eq!(got["message"], json!(i.to_string()), "{got}");
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_leave_and_text_message() {
    common::bounded(async move {
        let server = common::start().await;
        let (mut a, mut b, mut c) = (
            Peer::connect(&server).await,
            Peer::connect(&server).await,
            Peer::connect(&server).await,
        );
        a.join("r", "a1", "A").await;
        b.join("r", "b1", "B").await;
        a.expect("newUser").await;
        c.join("r", "c1", "C").await;
        a.expect("newUser").await;
        b.expect("newUser").await;

        let msg = json!({"roomId": "r", "userId": "a1", "userName": "A", "message": "hello 👋", "x_fmt": {"bold": true}});
        a.notify("textMessage", msg.clone()).await;
        assert_eq!(b.expect("textMessage").await, msg);
        assert_eq!(c.expect("textMessage").await, msg);
        a.expect_silence().await;

        a.notify("userDisconnect", json!({"roomId": "r", "userId": "a1"}))
            .await;
        assert_eq!(
            b.expect("userDisconnect").await,
            json!({"roomId": "r", "userId": "a1"})
        );
        assert_eq!(
            c.expect("userDisconnect").await,
            json!({"roomId": "r", "userId": "a1"})
        );
        a.expect_silence().await;
        // Kept (it may come back), but unbound: pulls for it go nowhere.
        assert_eq!(
            server.settled().await
                .get_room("r")
                .unwrap()
                .users
                .iter()
                .find(|u| u.user_id == "a1")
                .unwrap()
                .session_id,
            0
        );
        b.notify("pullRemoteStream", json!({"roomId": "r", "pusher_user_id": "a1", "udp_ip": "1.1.1.1", "udp_port": 5, "mediaType": "video"})).await;
        b.expect_silence().await;
        a.expect_silence().await;

        b.notify("userLeave", json!({"roomId": "r", "userId": "b1"}))
            .await;
        assert_eq!(
            c.expect("userLeave").await,
            json!({"roomId": "r", "userId": "b1"})
        );
        // A still holds a1 (disconnected, the SFU keeps it for its return),
        // so it keeps hearing the room.
        assert_eq!(
            a.expect("userLeave").await,
            json!({"roomId": "r", "userId": "b1"})
        );
        b.expect_silence().await;
        let room = server.settled().await.get_room("r").unwrap();
        assert!(room.users.iter().all(|u| u.user_id != "b1"));

        // Notifications without a roomId, or of unknown methods, are ignored.
        a.notify("textMessage", json!({"userId": "a1", "message": "x"}))
            .await;
        a.notify("whatever", json!({"roomId": "r"})).await;
        a.expect_silence().await;
        b.expect_silence().await;
        c.expect_silence().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_is_not_announced_but_hears_the_room() {
    common::bounded(async move {
        let server = common::start().await;
        let (mut a, mut b) = (Peer::connect(&server).await, Peer::connect(&server).await);
        a.join("r", "host", "H").await;
        let r = b
            .request(
                "join",
                json!({"roomId": "r", "userId": "viewer", "userName": "V", "audience": true}),
            )
            .await;
        assert_eq!(r["data"]["users"][0]["userId"], json!("host"));
        a.expect_silence().await;
        a.notify("push", json!({"roomId": "r", "userId": "host", "publishers": [{"pusherId": "p", "rtpParam": rtp_param(1)}]})).await;
        assert_eq!(b.expect("newPusher").await["userId"], json!("host"));
        // "audience": "yes" is not a boolean: a normal join.
        let mut c = Peer::connect(&server).await;
        c.request(
            "join",
            json!({"roomId": "r", "userId": "c", "audience": "yes"}),
        )
        .await;
        assert_eq!(a.expect("newUser").await["userId"], json!("c"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_from_another_session_rebinds_the_user() {
    common::bounded(async move {
        let server = common::start().await;
        let (mut a, mut b, mut c) = (
            Peer::connect(&server).await,
            Peer::connect(&server).await,
            Peer::connect(&server).await,
        );
        a.join("r", "u", "U").await;
        c.join("r", "c", "C").await;
        a.expect("newUser").await;
        b.join("r", "u", "U").await;
        // The user moved (duplicate_user: replace): A hears it left A, and
        // carries nobody in the room any more; C hears of it as new.
        assert_eq!(
            a.expect("userLeave").await,
            json!({"roomId": "r", "userId": "u"})
        );
        assert_eq!(c.expect("newUser").await["userId"], json!("u"));
        a.expect_silence().await;
        let room = server.settled().await.get_room("r").unwrap();
        assert_eq!(room.session_ids.len(), 2, "A left the room's broadcast set");
        // Pulls for u now go to B only.
        c.notify("pullRemoteStream", json!({"roomId": "r", "pusher_user_id": "u", "udp_ip": "1.1.1.1", "udp_port": 5, "mediaType": "video"})).await;
        assert_eq!(
            b.expect("pullRemoteStream").await["pusher_user_id"],
            json!("u")
        );
        a.expect_silence().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_sessions_are_cleaned_up_with_and_without_close_frames() {
    common::bounded(async move {
        let server = common::start().await;
        let (mut a, mut b, mut c) = (
            Peer::connect(&server).await,
            Peer::connect(&server).await,
            Peer::connect(&server).await,
        );
        a.join("r", "a1", "A").await;
        a.join("r", "a2", "A2").await;
        b.join("r", "b1", "B").await;
        a.expect("newUser").await;
        c.join("r", "c1", "C").await;
        a.expect("newUser").await;
        b.expect("newUser").await;

        // A closes politely: everyone else hears userDisconnect for each of its users.
        a.ws.close(None).await.unwrap();
        let mut lost = vec![
            b.expect("userDisconnect").await["userId"].clone(),
            b.expect("userDisconnect").await["userId"].clone(),
        ];
        lost.sort_by_key(|v| v.to_string());
        assert_eq!(lost, vec![json!("a1"), json!("a2")]);
        c.expect("userDisconnect").await;
        c.expect("userDisconnect").await;

        // B vanishes without a close frame.
        drop(b);
        assert_eq!(
            c.expect("userDisconnect").await,
            json!({"roomId": "r", "userId": "b1"})
        );
        let room = server.settled().await.get_room("r").unwrap();
        assert_eq!(
            room.users
                .iter()
                .map(|u| u.user_id.as_str())
                .collect::<Vec<_>>(),
            vec!["c1"]
        );

        // The last user leaves: the room is deleted.
        c.notify("userLeave", json!({"roomId": "r", "userId": "c1"}))
            .await;
        c.expect_silence().await;
        assert!(
            server.settled().await.list_rooms().is_empty(),
            "room not deleted"
        );
        drop(c);
        let center = server.center().clone();
        eventually("an empty center", || center.counts() == (0, 0, 0, 0)).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msu_invites_never_delay_joins() {
    common::bounded(async move {
        // MSUs get 30 s to answer: a join that waited for one would take
        // that long, far beyond the bound below however slow the machine.
        let server = common::start_server(&common::config_sections(
            false,
            "",
            "",
            "  invite_timeout_secs: 30\n",
        ))
        .await;
        const PROMPT: Duration = Duration::from_secs(10);
        let mut m1 = Peer::connect(&server).await;
        m1.request("register", json!({"id": "m1"})).await;
        let mut m2 = Peer::connect(&server).await;
        m2.request("register", json!({"id": "m2"})).await;

        let mut sfu = Peer::connect(&server).await;
        let t = std::time::Instant::now();
        sfu.join("r1", "u1", "U").await;
        assert!(t.elapsed() < PROMPT, "join waited for the MSU");
        // r1 goes to m1 (tie broken by id), r2 to m2 (fewest rooms); neither answers.
        let inv = m1.next_within(WAIT).await.unwrap();
        assert_eq!(
            (
                inv["request"].clone(),
                inv["method"].clone(),
                inv["data"].clone()
            ),
            (json!(true), json!("invite"), json!({"roomId": "r1"}))
        );
        assert!(inv["id"].is_u64());
        sfu.join("r2", "u2", "U").await;
        assert_eq!(
            m2.next_within(WAIT).await.unwrap()["data"],
            json!({"roomId": "r2"})
        );
        // m1 answers its invite; an audience join sends none.
        m1.send_text(
            json!({"response": true, "id": inv["id"], "ok": true, "data": {}}).to_string(),
        )
        .await;
        sfu.request(
            "join",
            json!({"roomId": "r1", "userId": "aud", "audience": true}),
        )
        .await;
        m1.expect_silence().await;

        // m1's session dies: it is removed; joins go on, now invited to m2.
        drop(m1);
        let center = server.center().clone();
        eventually("m1 to be removed", || center.list_msus().len() == 1).await;
        let t = std::time::Instant::now();
        sfu.join("r1", "u3", "U").await;
        assert!(t.elapsed() < PROMPT, "join waited for the MSU");
        assert_eq!(
            m2.next_within(WAIT).await.unwrap()["data"],
            json!({"roomId": "r1"})
        );
        assert_eq!(server.settled().await.get_room("r1").unwrap().msu_id, "m2");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_never_kills_the_session() {
    common::bounded(async move {
        let server =
            common::start_server(&common::config(false, "  max_message_size: 65536\n")).await;
        let mut p = Peer::connect(&server).await;
        let mut other = Peer::connect(&server).await;
        for junk in [
            "not json",
            "[1,2]",
            "42",
            "\"s\"",
            "{}",
            r#"{"request":true}"#,
            r#"{"notification":true}"#,
            r#"{"response":true,"id":99,"ok":true}"#,
            &format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)),
        ] {
            if junk.len() < 65536 {
                p.send_text(junk).await;
            }
        }
        p.ws.send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .unwrap();
        // Nesting deeper than the parser allows, inside the size limit.
        p.send_text(format!("{}{}", "[".repeat(1000), "]".repeat(1000)))
            .await;
        let r = p.request("echo", json!({"still": "alive"})).await;
        assert_eq!(r["data"]["echo"], json!({"still": "alive"}));
        // The request without an id was answered with 400 before the echo.
        let early = p.take_pending();
        assert_eq!(
            early.len(),
            1,
            "only the 400 came before the echo: {early:?}"
        );
        assert_eq!(early[0]["errorCode"], json!(400));

        // A frame over the limit closes that session with 1009, and only it.
        p.send_text("x".repeat(70_000)).await;
        let close = p.close_frame().await;
        assert_eq!(u16::from(close.code), 1009);
        let r = other.request("echo", json!(1)).await;
        assert_eq!(r["ok"], json!(true));
    })
    .await;
}

use futures_util::SinkExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_get_404_before_the_upgrade() {
    common::bounded(async move {
        let server = common::start().await;
        let mut tcp = tokio::net::TcpStream::connect(server.ws_addr())
            .await
            .unwrap();
        tcp.write_all(b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").await.unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 404 Not Found\r\n"), "{out}");
        assert!(
            out.contains("Content-Length: ") && out.contains("Connection: close"),
            "{out}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_with_certificate_files() {
    common::bounded(async move {
        let dir = std::env::temp_dir().join(format!("pilot-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pair = pilot_center::tls::PemPair::self_signed(&["localhost"]).unwrap();
        std::fs::write(dir.join("c.pem"), &pair.cert_pem).unwrap();
        std::fs::write(dir.join("k.pem"), &pair.key_pem).unwrap();
        let yaml = "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n  cert_path: c.pem\n  key_path: k.pem\ngrpc:\n  enabled: false\nadmin:\n  enabled: false\n";
        std::fs::write(dir.join("center.yaml"), yaml).unwrap();
        let config = pilot_center::config::Config::load(&dir.join("center.yaml")).unwrap();
        let server = common::start_server(&config).await;
        assert!(server.ws_url().starts_with("wss://"));
        let (mut a, mut b) = (Peer::connect(&server).await, Peer::connect(&server).await);
        a.join("r", "a", "A").await;
        b.join("r", "b", "B").await;
        assert_eq!(a.expect("newUser").await["userId"], json!("b"));
        std::fs::remove_dir_all(&dir).ok();
    })
    .await;
}
