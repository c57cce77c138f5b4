//! Nobody speaks for what is not theirs, and nobody holds the listeners
//! before authenticating (issue 22). Each finding of the review is played
//! against a real server: first that it is refused, then that nothing
//! changed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::{Peer, WAIT, http_get};
use pilot_center::auth::{Claims, Role};
use pilot_center::config::Config;
use pilot_center::server::Server;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const SECRET: &str = "trust-secret-0123456789-0123456789-0123456789";

fn mint(sub: &str, role: Role) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    pilot_center::auth::mint(
        SECRET,
        &Claims {
            sub: sub.into(),
            role,
            rooms: vec!["*".into()],
            users: Vec::new(),
            exp,
            incarnation: String::new(),
        },
    )
    .unwrap()
}

async fn auth_server() -> Server {
    let auth = format!("  enabled: true\n  hs256_secret: \"{SECRET}\"\n");
    let config = common::config_full(false, "", "", "", "  messages_per_sec: 0\n", &auth);
    Server::start(&config).await.unwrap()
}

fn url_with(server: &Server, token: &str, query: &str) -> String {
    format!("{}?token={token}{query}", server.ws_url())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_token_speaks_for_its_own_user_only() {
    common::bounded(async move {
        let server = auth_server().await;
        let mut sfu = Peer::connect_url(&url_with(&server, &mint("sfu-a", Role::Sfu), "")).await;
        sfu.join("r", "u1", "U1").await;
        let mut alice =
            Peer::connect_url(&url_with(&server, &mint("alice", Role::Client), "")).await;
        // Every way a client could speak for the SFU's user: a request gets
        // 403; notifications (no answer in protoo) change nothing.
        let r = alice
            .request(
                "join",
                json!({"roomId": "r", "userId": "u1", "userName": "X"}),
            )
            .await;
        assert_eq!(
            (r["errorCode"].clone(), r["errorReason"].clone()),
            (
                json!(403),
                json!("forbidden: user u1 is not this token's to speak for")
            )
        );
        for (method, data) in [
            (
                "push",
                json!({"roomId": "r", "userId": "u1", "userName": "X",
                       "publishers": [{"pusherId": "evil", "rtpParam": {}}]}),
            ),
            (
                "textMessage",
                json!({"roomId": "r", "userId": "u1", "userName": "X", "message": "hi"}),
            ),
            ("userLeave", json!({"roomId": "r", "userId": "u1"})),
            ("userDisconnect", json!({"roomId": "r", "userId": "u1"})),
        ] {
            alice.notify(method, data).await;
        }
        alice.expect_silence().await;
        sfu.expect_silence().await;
        let refused = server
            .center()
            .metrics()
            .errors
            .get_or_create(&pilot_center::metrics::CodeLabel { code: 403 })
            .get();
        assert!(refused >= 4, "each refusal is counted: {refused}");
        // Nothing changed: u1 is still the SFU's.
        let room = server.center().get_room("r").unwrap();
        let sfu_session = server.center().list_sessions()[0].session_id;
        assert_eq!(room.users.len(), 1);
        assert_eq!(room.users[0].session_id, sfu_session);
        assert!(room.users[0].pushers.is_empty());
        // Its own user it may join.
        alice.join("r", "alice", "Alice").await;
        assert_eq!(sfu.expect("newUser").await["userId"], json!("alice"));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_session_pushes_or_speaks_for_a_user_another_session_speaks_for() {
    common::bounded(async move {
        // Auth off: the rule is the rooms', whoever the peers are.
        let server = common::start().await;
        let mut a = Peer::connect(&server).await;
        let mut b = Peer::connect(&server).await;
        a.join("r", "u1", "U1").await;
        b.join("r", "u2", "U2").await;
        a.expect("newUser").await;
        let push = json!({"roomId": "r", "userId": "u1", "userName": "X",
                          "publishers": [{"pusherId": "evil", "rtpParam": {}}]});
        b.notify("push", push).await;
        let text = json!({"roomId": "r", "userId": "u1", "userName": "X", "message": "hi"});
        b.notify("textMessage", text).await;
        b.expect_silence().await;
        a.expect_silence().await;
        let center = server.settled().await;
        let room = center.get_room("r").unwrap();
        let u1 = room.users.iter().find(|u| u.user_id == "u1").unwrap();
        assert!(u1.pushers.is_empty(), "no pusher recorded: {u1:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_token_alone_names_the_peer() {
    common::bounded(async move {
        let server = auth_server().await;
        // An SFU token for sfu-a cannot claim sfu-b's name (and its users).
        let url = url_with(&server, &mint("sfu-a", Role::Sfu), "&peer=sfu-b");
        let mut a = Peer::connect_url(&url).await;
        a.join("r", "u1", "U1").await;
        let sessions = server.center().list_sessions();
        assert_eq!(sessions[0].peer_id, "sfu-a");
        // A token naming nobody is refused before the upgrade.
        let nobody = mint("", Role::Sfu);
        let status = common::upgrade_status(
            server.ws_addr(),
            &format!("/pilot/center?token={nobody}&peer=sfu-a"),
            "",
        )
        .await;
        assert_eq!(status, 401);
    })
    .await;
}

/// A TCP connection from `source` (any 127/8 address) to `to`.
async fn connect_from(source: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("loopback aliases bind on Linux");
    tokio::time::timeout(WAIT, socket.connect(to))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// Waits until the center closes `tcp` (EOF or reset). What it sent
/// before (an HTTP/2 server preface) is skipped.
async fn closed_by_the_center(tcp: &mut TcpStream) {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(WAIT, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => panic!("the connection stayed open"),
        }
    }
}

async fn upgrades(mut tcp: TcpStream) -> bool {
    let req = "GET /pilot/center HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("an answer in time")
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_websocket_listener_holds_only_its_own_places_and_not_for_long() {
    common::bounded(async move {
        let config = common::config(
            false,
            "  max_pending_handshakes_per_ip: 4\n  handshake_timeout_secs: 2\n  connections_per_ip_per_sec: 0\n",
        );
        let server = Server::start(&config).await.unwrap();
        let addr = server.ws_addr();
        // Four silent connections from one address take its places...
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(connect_from([127, 0, 0, 1], addr).await);
        }
        // ...so more from it are closed at once, before any work,
        let mut more = connect_from([127, 0, 0, 1], addr).await;
        closed_by_the_center(&mut more).await;
        // while a peer from another address is served.
        assert!(upgrades(connect_from([127, 0, 0, 2], addr).await).await);
        // The silent ones are dropped when their handshake time is up.
        for tcp in &mut silent {
            closed_by_the_center(tcp).await;
        }
        // Their places come back (as their tasks end, just after the close).
        let mut poll = common::Poll::new("the address's places to come back");
        while !upgrades(connect_from([127, 0, 0, 1], addr).await).await {
            poll.again(&"refused").await;
        }
        let dropped = server
            .center()
            .metrics()
            .connections_dropped
            .get_or_create(&pilot_center::metrics::KindLabel {
                kind: "pending_per_ip",
            })
            .get();
        assert!(dropped >= 1, "{dropped}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_opens_connections_at_its_rate_only() {
    common::bounded(async move {
        let clock = pilot_center::clock::Clock::manual();
        let config = common::config(
            false,
            "  connections_per_ip_per_sec: 1\n  connection_burst_per_ip: 2\n",
        );
        let server = Server::start_with_clock(&config, clock.clone())
            .await
            .unwrap();
        let addr = server.ws_addr();
        assert!(upgrades(connect_from([127, 0, 0, 3], addr).await).await);
        assert!(upgrades(connect_from([127, 0, 0, 3], addr).await).await);
        // The burst is spent: the next is closed at once; others are served.
        let mut third = connect_from([127, 0, 0, 3], addr).await;
        closed_by_the_center(&mut third).await;
        assert!(upgrades(connect_from([127, 0, 0, 4], addr).await).await);
        // A second later the address may connect again.
        clock.advance(Duration::from_secs(1));
        assert!(upgrades(connect_from([127, 0, 0, 3], addr).await).await);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_grpc_listener_is_bounded_and_timed_out() {
    common::bounded(async move {
        let config = common::config_sections(
            false,
            "",
            "  max_connections_per_ip: 4\n  handshake_timeout_secs: 2\n",
            "",
        );
        let server = Server::start(&config).await.unwrap();
        let addr = server.grpc_addr().unwrap();
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(connect_from([127, 0, 0, 1], addr).await);
        }
        // A real client is served beside them.
        let mut client = common::grpc(&server).await;
        client
            .list_rooms(pilot_center::proto::ListRoomsRequest::default())
            .await
            .unwrap();
        // The address's places are taken: one more is closed at once.
        let mut more = connect_from([127, 0, 0, 1], addr).await;
        closed_by_the_center(&mut more).await;
        // Silent ones do not keep their places.
        for tcp in &mut silent {
            closed_by_the_center(tcp).await;
        }
        client
            .list_rooms(pilot_center::proto::ListRoomsRequest::default())
            .await
            .unwrap();
    })
    .await;
}

/// A center with its admin listener set by `admin` (YAML lines).
async fn admin_server(admin: &str) -> Server {
    let yaml = format!(
        "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\ngrpc:\n  enabled: false\n\
         admin:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n{admin}center:\n  state_dir: \"\"\n"
    );
    Server::start(&Config::parse(&yaml).unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_admin_listener_is_bounded_and_timed_out() {
    common::bounded(async move {
        let server =
            admin_server("  max_connections_per_ip: 4\n  handshake_timeout_secs: 2\n").await;
        let addr = server.admin_addr().unwrap();
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(connect_from([127, 0, 0, 1], addr).await);
        }
        assert_eq!(http_get(addr, "/healthz").await.0, 200);
        let mut more = Vec::new();
        for _ in 0..2 {
            more.push(connect_from([127, 0, 0, 1], addr).await);
        }
        // Four places: the fifth connection is closed at once.
        closed_by_the_center(&mut more[1]).await;
        for tcp in silent.iter_mut().chain(more.iter_mut().take(1)) {
            closed_by_the_center(tcp).await;
        }
        assert_eq!(http_get(addr, "/healthz").await.0, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_event_streams_are_capped() {
    common::bounded(async move {
        let server = admin_server("  max_event_streams: 1\n").await;
        let addr = server.admin_addr().unwrap();
        let mut first = TcpStream::connect(addr).await.unwrap();
        first
            .write_all(format!("GET /api/events HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut buf = vec![0u8; 256];
        let n = tokio::time::timeout(WAIT, first.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let (status, body) = http_get(addr, "/api/events").await;
        assert_eq!(status, 503, "{body}");
        drop(first);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_page_runs_only_its_own_script_by_nonce() {
    common::bounded(async move {
        let server = admin_server("").await;
        let addr = server.admin_addr().unwrap();
        let mut nonces = Vec::new();
        for _ in 0..2 {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(
                format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut page = String::new();
            tokio::time::timeout(WAIT, tcp.read_to_string(&mut page))
                .await
                .unwrap()
                .unwrap();
            let csp = page
                .lines()
                .find_map(|l| l.strip_prefix("content-security-policy: "))
                .expect("a CSP header")
                .to_owned();
            assert!(!csp.contains("unsafe-inline"), "{csp}");
            let nonce = csp
                .split("script-src 'nonce-")
                .nth(1)
                .and_then(|r| r.split('\'').next())
                .expect("a script nonce")
                .to_owned();
            assert!(nonce.len() >= 32, "{nonce}");
            assert!(page.contains(&format!("<script nonce=\"{nonce}\">")));
            assert!(page.contains(&format!("<style nonce=\"{nonce}\">")));
            nonces.push(nonce);
        }
        assert_ne!(nonces[0], nonces[1], "a fresh nonce per response");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_serves_https_when_given_a_certificate() {
    common::bounded(async move {
        let dir = common::TempDir::new("admin-tls");
        let pair = pilot_center::tls::PemPair::self_signed(&["localhost"]).unwrap();
        std::fs::write(dir.0.join("admin.pem"), &pair.cert_pem).unwrap();
        std::fs::write(dir.0.join("admin.key"), &pair.key_pem).unwrap();
        let server = admin_server(&format!(
            "  cert_path: {:?}\n  key_path: {:?}\n",
            dir.0.join("admin.pem").display().to_string(),
            dir.0.join("admin.key").display().to_string()
        ))
        .await;
        let addr = server.admin_addr().unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = common::insecure_connector()
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(WAIT, tls.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // Plain HTTP gets no page.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(WAIT, plain.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert!(!String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    })
    .await;
}
