//! What the MSU's tests share: a center on port 0, the MSU in this
//! process, SFU-like protoo peers, UDP taps, and real `ffmpeg` as a
//! publisher's SFU.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // tests fail loudly; each test uses a part

use futures_util::{SinkExt, StreamExt};
use pilot_center::config::Config as CenterConfig;
use pilot_center::server::Server;
use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

pub mod publisher;

pub const WAIT: Duration = Duration::from_secs(20);
pub const LIMIT: Duration = Duration::from_secs(120);
pub const VIDEO: u32 = 0x1111_0001;
pub const VIDEO_RTX: u32 = 0x1111_0002;
pub const AUDIO: u32 = 0x2222_0001;

pub async fn bounded<F: std::future::Future>(body: F) -> F::Output {
    tokio::time::timeout(LIMIT, body)
        .await
        .expect("the test finished in time")
}

/// Polls `cond` every 10 ms until it holds, or fails after [`WAIT`].
pub async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn center() -> Server {
    let yaml = "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\n  self_signed: false\n\
                grpc:\n  enabled: false\nadmin:\n  enabled: false\n\
                limits:\n  messages_per_sec: 0\n\
                center:\n  state_dir: \"\"\n  reconnect_grace_secs: 30\n";
    Server::start(&CenterConfig::parse(yaml).unwrap())
        .await
        .unwrap()
}

pub fn msu_yaml(center: &Server, port_min: u16, port_max: u16) -> String {
    format!(
        "center:\n  url: \"ws://{}/pilot/center\"\n  heartbeat_secs: 1\n  stats_secs: 1\n\
         msu:\n  id: hub-1\n\
         media:\n  listen_ip: 127.0.0.1\n  port_min: {port_min}\n  port_max: {port_max}\n  keyframe_interval_ms: 500\n",
        center.ws_addr()
    )
}

/// [`msu_yaml`] recording into `dir`.
pub fn msu_yaml_recording(
    center: &Server,
    port_min: u16,
    port_max: u16,
    dir: &std::path::Path,
) -> String {
    format!(
        "{}recording:\n  dir: \"{}\"\n",
        msu_yaml(center, port_min, port_max),
        dir.display()
    )
}

/// Starts the MSU in this process; stops when the token is cancelled.
pub async fn msu_in_process(
    center: &Server,
) -> (pilot_msu::Msu, tokio_util::sync::CancellationToken) {
    msu_with(center, &msu_yaml(center, 41_000, 41_999)).await
}

/// Starts the MSU of configuration `yaml` in this process; stops when the
/// token is cancelled.
pub async fn msu_with(
    center: &Server,
    yaml: &str,
) -> (pilot_msu::Msu, tokio_util::sync::CancellationToken) {
    let stop = tokio_util::sync::CancellationToken::new();
    let config = pilot_msu::config::Config::parse(yaml).unwrap();
    let token = stop.clone();
    let (msu, _task) = pilot_msu::start(config, async move { token.cancelled().await })
        .await
        .unwrap();
    registered(center).await;
    (msu, stop)
}

/// Waits until the center lists the MSU.
pub async fn registered(center: &Server) {
    let c = center.center().clone();
    until("the MSU registers", || {
        c.list_msus().iter().any(|m| m.msu_id == "hub-1")
    })
    .await;
}

/// A protoo peer (an SFU as the center sees it).
pub struct Peer {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    pending: VecDeque<Value>,
    next_id: u64,
}

impl Peer {
    pub async fn connect(center: &Server, name: &str) -> Peer {
        let url = format!("ws://{}/pilot/center?peer={name}", center.ws_addr());
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Peer {
            ws,
            pending: VecDeque::new(),
            next_id: 1,
        }
    }

    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("open")
                .unwrap();
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).unwrap();
            }
        }
    }

    pub async fn request(&mut self, method: &str, data: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"request": true, "id": id, "method": method, "data": data});
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let m = self.recv().await;
            if m["response"] == json!(true) && m["id"] == json!(id) {
                assert_eq!(m["ok"], json!(true), "{m}");
                return m;
            }
            self.pending.push_back(m);
        }
    }

    pub async fn notify(&mut self, method: &str, data: Value) {
        let msg = json!({"notification": true, "method": method, "data": data});
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
    }

    /// The next notification of `method`, skipping others.
    pub async fn expect(&mut self, method: &str) -> Value {
        loop {
            let m = match self.pending.pop_front() {
                Some(m) => m,
                None => self.recv().await,
            };
            if m["method"] == json!(method) {
                return m["data"].clone();
            }
        }
    }

    /// Proves nothing more of `method` came: an echo's answer comes after
    /// everything due before it.
    pub async fn none_of(&mut self, method: &str) {
        self.request("echo", json!({})).await;
        let seen: Vec<&Value> = self
            .pending
            .iter()
            .filter(|m| m["method"] == json!(method))
            .collect();
        assert!(seen.is_empty(), "unexpected {method}: {seen:?}");
    }
}

pub fn rtp_param(ssrc: u32, pt: u32, rtx: u32) -> Value {
    json!({"av_type": if pt == 111 { 1 } else { 2 }, "codec": if pt == 111 { "opus" } else { "H264" },
           "fmtp_param": "", "rtcp_features": ["nack", "pli"], "ssrc": ssrc, "payload_type": pt,
           "clock_rate": if pt == 111 { 48000 } else { 90000 }, "rtx_ssrc": rtx,
           "rtx_payload_type": if rtx == 0 { 0 } else { 109 }, "use_nack": true})
}

pub fn pull(port: u16, pusher: &str, ssrc: u32, pt: u32, rtx: u32) -> Value {
    json!({"roomId": "r", "pusher_user_id": "u1", "udp_ip": "127.0.0.1", "udp_port": port,
           "mediaType": if pt == 111 { "audio" } else { "video" },
           "pushInfo": {"pusherId": pusher, "rtpParam": rtp_param(ssrc, pt, rtx)}})
}

/// What a UDP socket received: RTP packets by SSRC (with their payload
/// types, sequence numbers and timestamps) and RTCP packets.
#[derive(Default)]
pub struct Seen {
    pub rtp: HashMap<u32, Vec<(u8, u16, u32)>>,
    pub rtcp: Vec<Vec<u8>>,
}

impl Seen {
    /// Notes RTP packet `p`; its (SSRC, sequence number), or `None` when
    /// it is too short to be one.
    pub fn note_rtp(&mut self, p: &[u8]) -> Option<(u32, u16)> {
        let header = p.get(..12)?;
        let ssrc = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
        let seq = u16::from_be_bytes([header[2], header[3]]);
        let ts = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        self.rtp
            .entry(ssrc)
            .or_default()
            .push((header[1] & 0x7f, seq, ts));
        Some((ssrc, seq))
    }
}

/// A UDP socket counting what arrives, in a task of its own; `forward`
/// sends each RTP packet on from the same socket (a publisher's SFU's send
/// relay between ffmpeg and the hub).
pub fn tap(socket: Arc<UdpSocket>, forward: Option<SocketAddr>) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, _)) = socket.recv_from(&mut buf).await {
            let p = &buf[..n];
            if pilot_msu::hub::is_rtcp(p) {
                s.lock().unwrap().rtcp.push(p.to_vec());
                continue;
            }
            if s.lock().unwrap().note_rtp(p).is_none() {
                continue;
            }
            if let Some(to) = forward {
                let _ = socket.send_to(p, to).await;
            }
        }
    });
    seen
}

pub async fn udp() -> Arc<UdpSocket> {
    Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap())
}

pub fn port(s: &UdpSocket) -> u16 {
    s.local_addr().unwrap().port()
}

/// SFU A holds publisher u1 (video with RTX, and audio) in room r; one
/// more SFU per port of `pullers` holds a user there and pulls u1's tracks
/// to that port. Returns A and the pullers after checking what A was
/// asked: each track once, with the hub's address.
pub async fn room_of_sfus(
    center: &Server,
    media: SocketAddr,
    pullers: &[u16],
) -> (Peer, Vec<Peer>) {
    let mut a = Peer::connect(center, "sfu-a").await;
    a.request(
        "join",
        json!({"roomId": "r", "userId": "u1", "userName": "u1"}),
    )
    .await;
    let mut others = Vec::new();
    for i in 0..pullers.len() {
        let mut p = Peer::connect(center, &format!("sfu-{i}")).await;
        let user = format!("v{i}");
        p.request(
            "join",
            json!({"roomId": "r", "userId": user, "userName": user}),
        )
        .await;
        others.push(p);
    }
    push_u1(&mut a).await;
    for (p, port) in others.iter_mut().zip(pullers) {
        p.expect("newPusher").await;
        p.notify("pullRemoteStream", pull(*port, "v", VIDEO, 108, VIDEO_RTX))
            .await;
        p.notify("pullRemoteStream", pull(*port, "a", AUDIO, 111, 0))
            .await;
        p.request("echo", json!({})).await;
    }
    asked_to_send_to(&mut a, media).await;
    a.none_of("pullRemoteStream").await;
    (a, others)
}

pub fn ffmpeg_available() -> bool {
    let found = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("ffmpeg is not installed: this test needs it (CI installs it); skipped");
    }
    found
}

/// Real ffmpeg plays the publisher's SFU for `secs` seconds: H264 and Opus
/// RTP to `to`.
pub async fn ffmpeg_publishes(to: u16, secs: u32) {
    let publisher = publisher::Publisher {
        secs,
        size: "320x240",
        gop: 25,
        bitrate: None,
        video: VIDEO,
        audio: AUDIO,
    };
    let out = publisher.command(to).output().await.unwrap();
    assert!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn pli(ssrc: u32) -> Vec<u8> {
    // RTCP PSFB (206), FMT 1, length 2: sender SSRC, media SSRC.
    let mut p = vec![0x81, 206, 0, 2];
    p.extend_from_slice(&0xdead_beef_u32.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p
}

pub fn nack(ssrc: u32, seq: u16) -> Vec<u8> {
    // RTCP RTPFB (205), FMT 1, length 3: sender, media, one (PID, BLP=0).
    let mut p = vec![0x81, 205, 0, 3];
    p.extend_from_slice(&0xdead_beef_u32.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0]);
    p
}

/// The publisher's SFU `a` is asked for each of u1's tracks once, to send
/// it to the hub at `media`.
pub async fn asked_to_send_to(a: &mut Peer, media: SocketAddr) {
    for pusher in ["v", "a"] {
        let asked = a.expect("pullRemoteStream").await;
        assert_eq!(asked["pushInfo"]["pusherId"], json!(pusher), "{asked}");
        assert_eq!(
            (
                asked["udp_ip"].as_str().unwrap(),
                asked["udp_port"].as_u64().unwrap()
            ),
            (media.ip().to_string().as_str(), u64::from(media.port())),
            "{asked}"
        );
    }
}

/// `pilot-msu` as its own process on configuration file `config` (killed
/// when dropped).
pub fn spawn_msu(config: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_pilot-msu"))
        .arg(config)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A UDP port free now (for an MSU that must come back on the same one).
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// `a` pushes u1's video (with RTX) and audio in room r.
pub async fn push_u1(a: &mut Peer) {
    a.notify(
        "push",
        json!({"roomId": "r", "userId": "u1", "userName": "u1", "publishers": [
        {"pusherId": "v", "rtpParam": rtp_param(VIDEO, 108, VIDEO_RTX)},
        {"pusherId": "a", "rtpParam": rtp_param(AUDIO, 111, 0)}]}),
    )
    .await;
}
