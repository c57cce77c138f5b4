//! The admin page's API against a running center: the overview, the event
//! stream from the overview's cursor, the actions, auth and bad input. The
//! page itself is driven in a real browser by `tests/interop/admin_page.js`
//! (run by `.ci/run`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Peer, WAIT, http};
use pilot_center::auth::Role;
use serde_json::{Value, json};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const JSON: &str = "Content-Type: application/json\r\n";

/// `GET /api/overview` as JSON.
async fn overview(admin: SocketAddr, headers: &str) -> Value {
    let (status, body) = http(admin, "GET", "/api/overview", headers, "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// An open `text/event-stream` response, read as it arrives.
struct EventStream {
    tcp: TcpStream,
    seen: String,
}

impl EventStream {
    /// Sends the request and waits for the response head.
    async fn open(admin: SocketAddr, path: &str) -> Self {
        let mut tcp = TcpStream::connect(admin).await.unwrap();
        tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut stream = Self {
            tcp,
            seen: String::new(),
        };
        // The center subscribes before it answers, so the response's head is
        // the barrier after which every event reaches this stream.
        stream.until("\r\n\r\n").await;
        stream
    }

    /// Reads until what arrived contains `needle`; returns all of it.
    async fn until(&mut self, needle: &str) -> &str {
        let mut buf = vec![0u8; 4096];
        tokio::time::timeout(WAIT, async {
            while !self.seen.contains(needle) {
                let n = self.tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "stream ended before {needle:?}: {}", self.seen);
                self.seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{needle:?} never came: {}", self.seen));
        &self.seen
    }
}

/// The `id:` of every event that arrived.
fn ids(stream: &str) -> Vec<u64> {
    stream
        .lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_from_the_binary() {
    common::bounded(async move {
        let server = common::start().await;
        let (status, body) = common::http_get(server.admin_addr().unwrap(), "/").await;
        assert_eq!(status, 200);
        assert!(body.contains("<title>Pilot Center</title>"), "{body}");
        // Nothing is fetched from elsewhere: no build step, no CDN.
        assert!(!body.contains("src=\"http"), "external script");
        assert!(!body.contains("href=\"http"), "external stylesheet");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_and_the_stream_after_its_cursor_miss_nothing_and_repeat_nothing() {
    common::bounded(async move {
        let server = common::start().await;
        let admin = server.admin_addr().unwrap();
        let url = format!("{}?peer=sfu-a", server.ws_url());
        let mut a = Peer::connect_url(&url).await;
        a.join("lobby", "alice", "Alice").await;
        a.join("lobby", "carol", "Carol").await;
        a.notify(
            "push",
            json!({"roomId": "lobby", "userId": "alice", "publishers": [{"pusherId": "cam", "rtpParam": {}}]}),
        )
        .await;
        a.request("echo", json!({})).await; // barrier: the push is applied

        let o = overview(admin, "").await;
        let room = &o["rooms"][0];
        assert_eq!(room["roomId"], "lobby");
        assert_eq!(room["users"][0]["userId"], "alice");
        assert_eq!(room["users"][0]["pushers"], json!(["cam"]));
        assert_eq!(o["roomsTotal"], 1);
        let session = &o["sessions"][0];
        assert_eq!(session["peerId"], "sfu-a");
        assert_eq!(session["transport"], "ws");
        assert_eq!(session["users"], 2);
        let cursor = o["cursor"].as_u64().unwrap();

        let mut events = EventStream::open(admin, &format!("/api/events?after={cursor}")).await;
        a.notify("userLeave", json!({"roomId": "lobby", "userId": "carol"}))
            .await;
        let seen = events.until("\"kind\":\"user_left\"").await;
        assert!(seen.contains("text/event-stream"), "{seen}");
        assert!(seen.contains("user=carol"), "{seen}");
        let got = ids(seen);
        assert_eq!(got, [cursor + 1], "only what came after the overview");
        let o = overview(admin, "").await;
        assert_eq!(o["cursor"].as_u64().unwrap(), cursor + 1);
        assert_eq!(o["rooms"][0]["users"].as_array().unwrap().len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_reach_the_peers_and_take_json_only() {
    common::bounded(async move {
        let server = common::start().await;
        let admin = server.admin_addr().unwrap();
        let mut a = Peer::connect(&server).await;
        a.join("lobby", "alice", "Alice").await;
        let mut b = Peer::connect(&server).await;
        b.join("lobby", "bob", "Bob").await;
        a.expect("newUser").await;

        // A form post (what another site could make a browser send) is refused.
        let (status, _) = http(
            admin,
            "POST",
            "/api/close",
            "Content-Type: application/x-www-form-urlencoded\r\n",
            "roomId=lobby",
        )
        .await;
        assert_eq!(status, 415);
        a.expect_silence().await;

        let (status, body) = http(
            admin,
            "POST",
            "/api/say",
            JSON,
            r#"{"roomId":"lobby","message":"maintenance at noon"}"#,
        )
        .await;
        assert_eq!((status, body.as_str()), (200, r#"{"sessionsReached":2}"#));
        assert_eq!(
            a.expect("textMessage").await["message"],
            "maintenance at noon"
        );
        b.expect("textMessage").await;

        let (status, body) = http(
            admin,
            "POST",
            "/api/kick",
            JSON,
            r#"{"roomId":"lobby","userId":"bob"}"#,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(a.expect("userLeave").await["userId"], "bob");
        assert_eq!(b.expect("userLeave").await["userId"], "bob");

        let (status, body) = http(admin, "POST", "/api/close", JSON, r#"{"roomId":"lobby"}"#).await;
        assert_eq!((status, body.as_str()), (200, r#"{"usersRemoved":1}"#));
        assert_eq!(a.expect("userLeave").await["userId"], "alice");
        assert_eq!(overview(admin, "").await["roomsTotal"], 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    common::bounded(async move {
        let server = common::start().await;
        let admin = server.admin_addr().unwrap();
        let mut a = Peer::connect(&server).await;
        a.join("lobby", "alice", "Alice").await;

        let (status, body) = http(admin, "POST", "/api/close", JSON, r#"{"roomId":"nope"}"#).await;
        assert_eq!(status, 404);
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["error"], "not_found");
        assert!(body["reason"].as_str().unwrap().contains("nope"), "{body}");

        for bad in [
            "{",
            r#"{"roomId":"lobby"}"#,
            r#"{"roomId":"lobby","userId":"alice","extra":1}"#,
        ] {
            let (status, _) = http(admin, "POST", "/api/kick", JSON, bad).await;
            assert!((400..500).contains(&status), "{bad}: {status}");
        }
        let (status, body) = http(admin, "GET", "/api/events?after=x", "", "").await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("invalid_argument"), "{body}");
        let (status, body) = http(admin, "GET", "/api/events?after=999999", "", "").await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("ahead of the feed"), "{body}");

        a.expect_silence().await;
        assert_eq!(
            overview(admin, "").await["rooms"][0]["users"][0]["userId"],
            "alice"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_off_the_api_answers_only_requests_by_address() {
    common::bounded(async move {
        // A page of another site whose name was rebound to this address
        // sends its own name as Host: with auth off it is refused.
        let server = common::start().await;
        let admin = server.admin_addr().unwrap();
        let mut a = Peer::connect(&server).await;
        a.join("lobby", "alice", "Alice").await;
        let raw = |host: &'static str, method: &'static str, path: &'static str| async move {
            let mut tcp = TcpStream::connect(admin).await.unwrap();
            let body = r#"{"roomId":"lobby"}"#;
            tcp.write_all(
                format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{JSON}Content-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                    .as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            tokio::time::timeout(WAIT, tcp.read_to_string(&mut out))
                .await
                .unwrap()
                .unwrap();
            out
        };
        let out = raw("evil.example:9445", "GET", "/api/overview").await;
        assert!(out.starts_with("HTTP/1.1 403"), "{out}");
        assert!(out.contains("turn auth on"), "{out}");
        let out = raw("evil.example:9445", "POST", "/api/close").await;
        assert!(out.starts_with("HTTP/1.1 403"), "{out}");
        a.expect_silence().await;
        let out = raw("localhost:9445", "GET", "/api/overview").await;
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        // The page itself, health and metrics are not the API.
        assert!(raw("evil.example", "GET", "/").await.starts_with("HTTP/1.1 200"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_api_needs_an_admin_token() {
    common::bounded(async move {
        const SECRET: &str = "admin-page-secret-0123456789-0123456789-0123456789";
        let auth = format!("  enabled: true\n  hs256_secret: \"{SECRET}\"\n");
        let config = common::config_full(false, "", "", "", "  messages_per_sec: 0\n", &auth);
        let server = pilot_center::server::Server::start(&config).await.unwrap();
        let admin = server.admin_addr().unwrap();

        // The page holds no data; it asks for the token when the API says 401.
        assert_eq!(common::http_get(admin, "/").await.0, 200);
        let (status, body) = http(admin, "GET", "/api/overview", "", "").await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("unauthenticated"), "{body}");
        let bearer = |t: &str| format!("Authorization: Bearer {t}\r\n");
        let (status, _) = http(admin, "GET", "/api/overview", &bearer("forged"), "").await;
        assert_eq!(status, 401);
        let sfu = common::token(SECRET, Role::Sfu, &["*"], 60);
        let (status, body) = http(admin, "GET", "/api/overview", &bearer(&sfu), "").await;
        assert_eq!(status, 403, "{body}");
        let headers = format!("{}{JSON}", bearer(&sfu));
        let (status, _) = http(
            admin,
            "POST",
            "/api/say",
            &headers,
            r#"{"roomId":"r","message":"m"}"#,
        )
        .await;
        assert_eq!(status, 403);
        let (status, _) = http(admin, "GET", "/api/events", &bearer(&sfu), "").await;
        assert_eq!(status, 403);

        let admin_token = common::token(SECRET, Role::Admin, &["*"], 60);
        let o = overview(admin, &bearer(&admin_token)).await;
        assert_eq!(o["roomsTotal"], 0);
        // Metrics and health stay open to scrapers and probes.
        assert_eq!(common::http_get(admin, "/metrics").await.0, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_event_streams() {
    common::bounded(async move {
        let server = common::start().await;
        let admin = server.admin_addr().unwrap();
        let mut events = EventStream::open(admin, "/api/events").await;
        let mut a = Peer::connect(&server).await;
        a.join("lobby", "alice", "Alice").await;
        events.until("user_joined").await;
        // The listener's graceful shutdown waits for open responses: the
        // stream must end by itself for the shutdown to finish.
        assert!(server.shutdown(std::time::Duration::from_secs(10)).await);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(WAIT, events.tcp.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the stream ended");
    })
    .await;
}

/// Issue 30: the page's record button asks the room service; a room with
/// no MSU gets 412 with what to do, and nothing is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_a_room_without_an_msu_is_refused_with_what_to_do() {
    common::bounded(async move {
        let server = common::start().await;
        let admin = server.admin_addr().unwrap();
        let mut a = Peer::connect(&server).await;
        a.join("lobby", "alice", "Alice").await;
        let (status, body) =
            http(admin, "POST", "/api/record", JSON, r#"{"roomId":"lobby"}"#).await;
        assert_eq!(status, 412, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"], "failed_precondition");
        assert!(v["reason"].as_str().unwrap().contains("no MSU"), "{body}");
        let (status, body) = http(
            admin,
            "POST",
            "/api/stop-recording",
            JSON,
            r#"{"roomId":"lobby"}"#,
        )
        .await;
        assert_eq!(status, 412, "{body}");
        assert!(server.center().list_recordings("").is_empty());
        let o = overview(admin, "").await;
        assert_eq!(o["rooms"][0]["recordingId"], "");
    })
    .await;
}
