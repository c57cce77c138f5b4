//! Test helpers: start the real server on port 0 and talk to it over real
//! sockets with a real WebSocket client.
#![allow(dead_code)]

pub mod binary;
pub mod proxy;
pub mod redis;
pub mod sfu;

use futures_util::{SinkExt, StreamExt};
use pilot_center::config::Config;
use pilot_center::server::Server;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};

/// How long a test waits for something that should happen. Generous: a
/// loaded machine running a debug build is slow, and waiting longer costs
/// nothing when the thing happens.
pub const WAIT: Duration = Duration::from_secs(20);
/// The most any one test may take, whatever it waits for.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Runs a test body under [`TEST_LIMIT`]: a test that hangs fails instead
/// of blocking the suite.
pub async fn bounded<F: std::future::Future>(body: F) -> F::Output {
    match tokio::time::timeout(TEST_LIMIT, body).await {
        Ok(out) => out,
        Err(_) => panic!("the test did not finish within {TEST_LIMIT:?}"),
    }
}

/// Runs a test body of many rounds under `limit` (longer than
/// [`TEST_LIMIT`], for the few tests that repeat a fault many times).
pub async fn bounded_for<F: std::future::Future>(limit: Duration, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(out) => out,
        Err(_) => panic!("the test did not finish within {limit:?}"),
    }
}

/// Awaits a spawned task under [`WAIT`], failing the test with the task's
/// own panic message if it panicked.
pub async fn join<T>(task: tokio::task::JoinHandle<T>) -> T {
    match tokio::time::timeout(WAIT, task).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(e)) => panic!("task failed: {e}"),
        Err(_) => panic!("task did not finish within {WAIT:?}"),
    }
}

/// A configuration for tests: both listeners on 127.0.0.1:0; `extra` YAML is
/// appended under `websocket:` (indent two spaces).
pub fn config(tls: bool, extra_ws: &str) -> Config {
    config_sections(tls, extra_ws, "", "")
}

/// Like [`config`], with extra keys for each section (two-space indented lines).
pub fn config_sections(tls: bool, ws: &str, grpc: &str, center: &str) -> Config {
    config_full(tls, ws, grpc, center, "  messages_per_sec: 0\n", "")
}

/// Every section: extra keys for `websocket`, `grpc`, `center`, `limits`
/// and `auth`. Admin listens on 127.0.0.1:0.
pub fn config_full(
    tls: bool,
    ws: &str,
    grpc: &str,
    center: &str,
    limits: &str,
    auth: &str,
) -> Config {
    // MSUs answer within 1 s, and users leave with their session (no
    // reconnect grace), unless the test says otherwise.
    let mut invite = String::new();
    if !center.contains("invite_timeout_secs") {
        invite.push_str("  invite_timeout_secs: 1\n");
    }
    if !center.contains("reconnect_grace_secs") {
        invite.push_str("  reconnect_grace_secs: 0\n");
    }
    // State in memory unless the test (or PILOT_TEST_STORE=file) says where.
    if !center.contains("state_dir") {
        invite.push_str("  state_dir: \"\"\n");
    }
    let yaml = format!(
        "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n  self_signed: {tls}\n{ws}\ngrpc:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n{grpc}\ncenter:\n{invite}{center}\nadmin:\n  listen_ip: 127.0.0.1\n  listen_port: 0\nlimits:\n{limits}\nauth:\n{auth}\n"
    );
    Config::parse(&yaml).expect("test config")
}

/// A gRPC client of the server.
pub async fn grpc(
    server: &Server,
) -> pilot_center::proto::room_service_client::RoomServiceClient<tonic::transport::Channel> {
    let addr = server.grpc_addr().expect("grpc enabled");
    let connect = pilot_center::proto::room_service_client::RoomServiceClient::connect(format!(
        "http://{addr}"
    ));
    tokio::time::timeout(WAIT, connect)
        .await
        .expect("grpc connect in time")
        .expect("grpc connect")
}

/// Where the suites keep the center's state, from `PILOT_TEST_STORE`:
/// unset, in memory; `file`, a state directory of the test's own; `redis`,
/// one cluster node on a `redis-server` of the test's own; `redis2`, two
/// nodes on one Redis with the peers spread over them (`.ci/run` runs the
/// protocol, SFU and session suites every way).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// One center, state in memory (the default).
    Memory,
    /// One center, state in a temporary state directory.
    File,
    /// One cluster node on Redis.
    Redis,
    /// Two cluster nodes on one Redis; peers connect to them in turn.
    RedisTwoNodes,
}

/// The store the suites run on (see [`Store`]).
pub fn store() -> Store {
    match std::env::var("PILOT_TEST_STORE").as_deref() {
        Ok("redis") => Store::Redis,
        Ok("redis2") => Store::RedisTwoNodes,
        Ok("file") => Store::File,
        Ok("") | Ok("memory") | Err(_) => Store::Memory,
        Ok(other) => panic!("PILOT_TEST_STORE={other}: expected memory, file, redis or redis2"),
    }
}

/// Something peers connect to: a server, or a test's set of nodes.
pub trait Target {
    /// The WebSocket URL the next peer connects to.
    fn ws_url(&self) -> String;
}

impl Target for Server {
    fn ws_url(&self) -> String {
        Server::ws_url(self)
    }
}

/// What [`start_server`] started: one center, or the cluster nodes of
/// [`store`] on a `redis-server` of their own, which stops with them. It
/// derefs to the first node; [`TestServer::ws_url`] hands the nodes out in
/// turn, so consecutive peers land on different nodes.
pub struct TestServer {
    nodes: Vec<Server>,
    next: std::sync::atomic::AtomicUsize,
    redis: Option<redis::RedisServer>,
    state: Option<TempDir>,
}

/// A directory of the test's own, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A new, empty directory named after `what`.
    pub fn new(what: &str) -> Self {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("pilot-{what}-{}-{n}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

impl std::ops::Deref for TestServer {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.nodes[0]
    }
}

impl Target for TestServer {
    fn ws_url(&self) -> String {
        TestServer::ws_url(self)
    }
}

impl TestServer {
    /// The next node in turn (the only one for a single center).
    fn next_node(&self) -> &Server {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.nodes[i % self.nodes.len()]
    }

    /// The URL of the next node in turn.
    pub fn ws_url(&self) -> String {
        self.next_node().ws_url()
    }

    /// The WebSocket address of the next node in turn.
    pub fn ws_addr(&self) -> std::net::SocketAddr {
        self.next_node().ws_addr()
    }

    /// The first node's center once it has applied everything any node
    /// appended before this call (a read barrier; nothing to wait for on a
    /// single center). Use it for one-shot reads of state that peers on
    /// other nodes changed.
    pub async fn settled(&self) -> &pilot_center::center::Center {
        settle(&self.nodes[0]).await;
        self.nodes[0].center()
    }

    /// Shuts the nodes down (see [`Server::shutdown`]), then their Redis.
    pub async fn shutdown(self, grace: Duration) -> bool {
        let mut done = true;
        for node in self.nodes {
            done &= node.shutdown(grace).await;
        }
        drop(self.redis);
        drop(self.state);
        done
    }
}

/// Waits until `server` has applied every change made anywhere in its
/// cluster so far (a read barrier; at once for a single center).
pub async fn settle(server: &Server) {
    server.center().settle().await.expect("the store answers");
}

/// Starts the center of [`store`] on `config`: as it is, or as one or two
/// cluster nodes on a Redis of their own.
pub async fn start_server(config: &Config) -> TestServer {
    let count = match store() {
        Store::Memory | Store::File => {
            let mut config = config.clone();
            let state = file_store_dir(&mut config);
            let server = Server::start(&config).await.expect("server starts");
            assert_eq!(server.center().node_id(), "", "a single center");
            return TestServer {
                nodes: vec![server],
                next: Default::default(),
                redis: None,
                state,
            };
        }
        Store::Redis => 1,
        Store::RedisTwoNodes => 2,
    };
    let redis = redis::RedisServer::start("suite", false)
        .await
        .expect("PILOT_TEST_STORE asks for Redis: install redis-server");
    let mut nodes = Vec::new();
    for n in 1..=count {
        let mut config = config.clone();
        config.cluster.redis_url = redis.url();
        config.cluster.node_id = format!("suite-node-{n}");
        let server = Server::start(&config).await.expect("node starts");
        assert_eq!(server.center().node_id(), config.cluster.node_id);
        nodes.push(server);
    }
    TestServer {
        nodes,
        next: Default::default(),
        redis: Some(redis),
        state: None,
    }
}

/// Under `PILOT_TEST_STORE=file`, points `config` at a fresh state
/// directory (unless the test chose one), returned to be removed after.
fn file_store_dir(config: &mut Config) -> Option<TempDir> {
    if store() != Store::File || !config.center.state_dir.as_os_str().is_empty() {
        return None;
    }
    let dir = TempDir::new("state");
    config.center.state_dir = dir.0.clone();
    Some(dir)
}

/// Starts a plain-ws server.
pub async fn start() -> TestServer {
    start_server(&config(false, "")).await
}

/// Starts a server (wss when `tls`) whose 30 s reconnect grace, rate
/// limits and outbound ages run on the returned manual clock.
pub async fn start_with_grace(tls: bool) -> (Server, pilot_center::clock::Clock) {
    let clock = pilot_center::clock::Clock::manual();
    let mut config = config_sections(tls, "", "", "  reconnect_grace_secs: 30\n");
    // The server outlives this function, so its directory is left in the
    // system's temp folder (a few KiB; only under PILOT_TEST_STORE=file).
    std::mem::forget(file_store_dir(&mut config));
    let server = Server::start_with_clock(&config, clock.clone())
        .await
        .expect("server starts");
    (server, clock)
}

/// Starts a server over TLS (self-signed).
pub async fn start_tls() -> TestServer {
    start_server(&config(true, "")).await
}

/// A TLS connector that trusts any certificate, as the real SFU does.
pub fn insecure_connector() -> tokio_rustls::TlsConnector {
    tokio_rustls::TlsConnector::from(
        pilot_center::tls::insecure_client_config().expect("TLS client config"),
    )
}

/// Any byte stream a test client runs over (TCP or TLS).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// A protoo peer over a real WebSocket connection.
pub struct Peer {
    pub ws: Ws,
    /// Messages received while waiting for something else.
    pending: VecDeque<Value>,
    next_id: u64,
    /// When set, `invite` requests are kept in `invites` instead of being
    /// returned by `expect`/`next_within` (an MSU that does not answer).
    pub collect_invites: bool,
    /// `invite` requests collected.
    pub invites: Vec<Value>,
}

impl Peer {
    /// Connects to the server's WebSocket listener, offering `protoo`.
    pub async fn connect(server: &impl Target) -> Peer {
        Self::connect_url(&server.ws_url()).await
    }

    /// Connects to `url` (ws or wss, any certificate accepted).
    pub async fn connect_url(url: &str) -> Peer {
        Self::connect_with(url, None).await
    }

    /// Connects presenting `Authorization: Bearer TOKEN` when given.
    pub async fn connect_with(url: &str, bearer: Option<&str>) -> Peer {
        Self::connect_full(url, bearer, None).await
    }

    /// Connects with a receive buffer of about `bytes` (`SO_RCVBUF` set
    /// before the connection opens, so the TCP window stays small): a peer
    /// that stops reading backs the center up after a few KiB, whatever the
    /// kernel's default buffer sizes.
    pub async fn connect_small_window(server: &impl Target, bytes: u32) -> Peer {
        Self::connect_full(&server.ws_url(), None, Some(bytes)).await
    }

    /// Connects, returning the upgrade's failure (e.g. a refusal with 503)
    /// instead of panicking.
    pub async fn try_connect(url: &str) -> Result<Peer, String> {
        Self::try_connect_full(url, None, None).await
    }

    async fn connect_full(url: &str, bearer: Option<&str>, rcvbuf: Option<u32>) -> Peer {
        Self::try_connect_full(url, bearer, rcvbuf)
            .await
            .unwrap_or_else(|e| panic!("upgrade: {e}"))
    }

    async fn try_connect_full(
        url: &str,
        bearer: Option<&str>,
        rcvbuf: Option<u32>,
    ) -> Result<Peer, String> {
        let mut request = url.into_client_request().expect("request");
        if let Some(token) = bearer {
            request.headers_mut().insert(
                "Authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
            );
        }
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("protoo"));
        let uri = request.uri().clone();
        let host = uri.host().expect("host").to_owned();
        let port = uri.port_u16().expect("port");
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .expect("resolve")
            .next()
            .expect("an address");
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .expect("socket");
        if let Some(bytes) = rcvbuf {
            socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
        }
        let tcp = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("tcp connect in time")
            .expect("tcp connect");
        let stream: Box<dyn Io> = if uri.scheme_str() == Some("wss") {
            let tls = insecure_connector()
                .connect(ServerName::try_from("localhost").expect("name"), tcp)
                .await
                .expect("tls connect");
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        let (ws, response) =
            tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
                .await
                .expect("upgrade in time")
                .map_err(|e| e.to_string())?;
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.to_str().unwrap()),
            Some("protoo"),
            "the center selects protoo when offered"
        );
        Ok(Peer {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
            collect_invites: false,
            invites: Vec::new(),
        })
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: impl Into<String>) {
        tokio::time::timeout(WAIT, self.ws.send(Message::Text(text.into().into())))
            .await
            .expect("sent in time")
            .expect("send");
    }

    /// Sends a notification.
    pub async fn notify(&mut self, method: &str, data: Value) {
        let msg = json!({"notification": true, "method": method, "data": data});
        self.send_text(msg.to_string()).await;
    }

    /// Sends a request and returns its response (other messages are kept).
    pub async fn request(&mut self, method: &str, data: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.request_with_id(json!(id), method, data).await
    }

    /// Sends a request with the given id and returns the response to it.
    pub async fn request_with_id(&mut self, id: Value, method: &str, data: Value) -> Value {
        let msg = json!({"request": true, "id": id, "method": method, "data": data});
        self.send_text(msg.to_string()).await;
        self.response_to(&id).await
    }

    /// Waits for the response with this id.
    pub async fn response_to(&mut self, id: &Value) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let msg = self
                .read_until(deadline)
                .await
                .unwrap_or_else(|| panic!("no response to {id}"));
            if msg["response"] == json!(true) && &msg["id"] == id {
                return msg;
            }
            self.pending.push_back(msg);
        }
    }

    async fn read_until(&mut self, deadline: tokio::time::Instant) -> Option<Value> {
        loop {
            let frame = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()??;
            match frame.expect("read") {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("center sends JSON");
                    if self.collect_invites
                        && v["method"] == json!("invite")
                        && v["request"] == json!(true)
                    {
                        self.invites.push(v);
                        continue;
                    }
                    return Some(v);
                }
                Message::Close(_) => return None,
                _ => {}
            }
        }
    }

    /// The next message (pending first), or None within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        self.read_until(tokio::time::Instant::now() + wait).await
    }

    /// The next notification of `method`; fails on any other message first.
    pub async fn expect(&mut self, method: &str) -> Value {
        let msg = self
            .next_within(WAIT)
            .await
            .unwrap_or_else(|| panic!("no {method} arrived"));
        assert_eq!(msg["method"], json!(method), "expected {method}, got {msg}");
        assert_eq!(msg["notification"], json!(true), "{msg}");
        msg["data"].clone()
    }

    /// Proves that nothing is due to this peer: sends an `echo` and asserts
    /// that its response is the next message. The center handles a
    /// session's messages in order and its outbound queue is FIFO, so
    /// anything caused before the echo was handled arrives ahead of the
    /// answer. (To prove that another peer's notification caused nothing
    /// here, call this on that peer first: its answer shows the center
    /// handled the notification.)
    pub async fn expect_silence(&mut self) {
        if let Some(msg) = self.pending.pop_front() {
            panic!("unexpected message: {msg}");
        }
        let id = json!(format!("barrier-{}", self.next_id));
        self.next_id += 1;
        let msg = json!({"request": true, "id": id, "method": "echo", "data": {}});
        self.send_text(msg.to_string()).await;
        let deadline = tokio::time::Instant::now() + WAIT;
        let msg = self
            .read_until(deadline)
            .await
            .unwrap_or_else(|| panic!("no answer to the echo barrier"));
        assert!(
            msg["response"] == json!(true) && msg["id"] == id,
            "unexpected message: {msg}"
        );
    }

    /// The messages received so far while waiting for responses.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// Skips whatever comes until the center's close frame, and returns it.
    pub async fn close_frame(&mut self) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
        self.pending.clear();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("closed in time")
            {
                Some(Ok(Message::Close(Some(f)))) => return f,
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Joins `(room, user)`s 500 at a time, each batch sent before its
    /// answers are read; the answers must all be ok.
    pub async fn join_pipelined(&mut self, joins: &[(String, String)]) {
        for (b, batch) in joins.chunks(500).enumerate() {
            for (i, (room, user)) in batch.iter().enumerate() {
                self.send_text(
                    json!({"request": true, "id": format!("j{b}-{i}"), "method": "join", "data": {"roomId": room, "userId": user, "userName": "n"}})
                        .to_string(),
                )
                .await;
            }
            for i in 0..batch.len() {
                let r = self.response_to(&json!(format!("j{b}-{i}"))).await;
                assert_eq!(r["ok"], json!(true), "{r}");
            }
        }
    }

    /// Two peers in room "r": users "a1" (named `a_name`) and "b1"
    /// (`b_name`), the first having heard the second join.
    pub async fn pair_in_room(server: &impl Target, a_name: &str, b_name: &str) -> (Peer, Peer) {
        let (mut a, mut b) = (Peer::connect(server).await, Peer::connect(server).await);
        a.join("r", "a1", a_name).await;
        b.join("r", "b1", b_name).await;
        a.expect("newUser").await;
        (a, b)
    }

    /// Joins a user; returns the response data.
    pub async fn join(&mut self, room: &str, user: &str, name: &str) -> Value {
        let r = self
            .request(
                "join",
                json!({"roomId": room, "userId": user, "userName": name}),
            )
            .await;
        assert_eq!(r["ok"], json!(true), "{r}");
        r["data"].clone()
    }
}

/// A realistic `rtpParam` with unknown nested fields and mixed JSON types.
pub fn rtp_param(ssrc: u64) -> Value {
    json!({
        "av_type": "video", "codec": "H264",
        "fmtp_param": "profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1;",
        "rtcp_features": ["nack", "pli", "transport-cc"], "channel": 0, "ssrc": ssrc,
        "payload_type": 96, "clock_rate": 90000, "rtx_ssrc": ssrc + 1, "rtx_payload_type": 97,
        "use_nack": true, "key_request": false, "mid_ext_id": 1, "tcc_ext_id": 3,
        "x_vendor": {"simulcast": [{"rid": "h", "bitrate": 1.5e6}, {"rid": "l", "scale": 0.25}], "note": null}
    })
}

/// A plain HTTP/1.1 GET over a fresh connection: (status, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path, "", "").await
}

/// One HTTP/1.1 request over a fresh connection (`headers`: lines ending in
/// `\r\n`; a body gets its length): (status, body).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut out = String::new();
    tokio::time::timeout(WAIT, async {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let length = if body.is_empty() && method == "GET" {
            String::new()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        tcp.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}{length}\r\n{body}"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
        tcp.read_to_string(&mut out).await.expect("read");
    })
    .await
    .expect("HTTP answer in time");
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sends a raw upgrade request and returns the response's status code.
pub async fn upgrade_status(addr: std::net::SocketAddr, target: &str, extra_headers: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .expect("connect in time")
        .expect("connect");
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra_headers}\r\n"
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("answer in time")
        .expect("read");
    let head = String::from_utf8_lossy(&buf[..n]).to_string();
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Mints a token for tests.
pub fn token(
    secret: &str,
    role: pilot_center::auth::Role,
    rooms: &[&str],
    ttl_secs: i64,
) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = pilot_center::auth::Claims {
        sub: "test".into(),
        role,
        rooms: rooms.iter().map(|r| (*r).to_owned()).collect(),
        users: Vec::new(),
        exp: u64::try_from(now + ttl_secs).unwrap_or(0),
        incarnation: String::new(),
    };
    pilot_center::auth::mint(secret, &claims).expect("mint")
}

/// Waits until `cond` holds (polling), or panics with `what`. For state
/// that no message announces (a session's task finishing, a gauge).
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    retry(what, || {
        let ok = cond();
        async move {
            if ok {
                Ok(())
            } else {
                Err("not yet".to_owned())
            }
        }
    })
    .await
}

/// Runs `attempt` until it succeeds, for at most [`WAIT`]; the last error
/// is in the panic message.
pub async fn retry<T, F: std::future::Future<Output = Result<T, String>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut poll = Poll::new(what);
    loop {
        match attempt().await {
            Ok(out) => return out,
            Err(e) => poll.again(&e).await,
        }
    }
}

/// The pacing of a wait for a condition that nothing announces (a
/// process answering, a store coming back): every attempt within [`WAIT`],
/// 10 ms apart. The one place the tests wait between attempts.
pub struct Poll<'a> {
    what: &'a str,
    deadline: tokio::time::Instant,
}

impl<'a> Poll<'a> {
    /// Starts waiting for `what`.
    pub fn new(what: &'a str) -> Self {
        Self {
            what,
            deadline: tokio::time::Instant::now() + WAIT,
        }
    }

    /// After a failed attempt: panics with `last` once the deadline has
    /// passed, else waits until the next attempt is due.
    pub async fn again(&mut self, last: &dyn std::fmt::Display) {
        assert!(
            tokio::time::Instant::now() < self.deadline,
            "timed out waiting for {}: {last}",
            self.what
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Skips the messages of a gRPC stream until it ends with an error status,
/// and returns its code (panics if it ends cleanly).
pub async fn end_status<T>(stream: &mut tonic::Streaming<T>) -> tonic::Code {
    loop {
        match tokio::time::timeout(WAIT, stream.next())
            .await
            .expect("stream ends in time")
        {
            Some(Ok(_)) => continue,
            Some(Err(status)) => return status.code(),
            None => panic!("stream ended without a status"),
        }
    }
}
