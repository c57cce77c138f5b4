//! An SFU client written from PROTOCOL.md §7, byte for byte: raw TCP/TLS,
//! the SFU's exact upgrade request, its case-sensitive `101` parser, masked
//! FIN frames, a ping every 2 s, integer ids with an 8 s deadline, and a
//! failure on any fragmented message or any loosely typed field.

use serde_json::{Value, json};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinHandle;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::Io;

/// The SFU's request, exactly (its Host has no port).
pub fn upgrade_request(key: &str) -> String {
    upgrade_request_to("/pilot/center", key)
}

/// The SFU's request for its configured `subpath`, written verbatim into
/// the request line (e.g. `/pilot/center?peer=sfu-1`).
pub fn upgrade_request_to(subpath: &str, key: &str) -> String {
    format!(
        "GET {subpath} HTTP/1.1\r\nAccept: */*\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Protocol: protoo\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n"
    )
}

/// Parses a `101` the way the SFU does: split each header line at the first
/// `:`, take the value from two characters after it, case-sensitive names,
/// exact values. Returns the bytes that followed the head in the same read.
pub fn parse_101_like_sfu(read: &[u8], key: &str) -> Result<usize, String> {
    let text = String::from_utf8_lossy(read);
    let end = text
        .find("\r\n\r\n")
        .ok_or("head not complete in one read")?;
    let mut lines = text[..end].split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(format!("status line: {status}"));
    }
    let mut headers = HashMap::new();
    for line in lines {
        let colon = line.find(':').ok_or(format!("no colon: {line}"))?;
        let value = line.get(colon + 2..).unwrap_or_default();
        headers.insert(line[..colon].to_owned(), value.to_owned());
    }
    let want = [
        ("Connection", "Upgrade".to_owned()),
        ("Upgrade", "websocket".to_owned()),
        ("Sec-WebSocket-Accept", derive_accept_key(key.as_bytes())),
    ];
    for (name, value) in want {
        match headers.get(name) {
            Some(v) if *v == value => {}
            other => return Err(format!("{name}: expected {value:?}, found {other:?}")),
        }
    }
    Ok(read.len() - (end + 4))
}

/// Encodes one masked, unfragmented client frame.
pub fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xFFFF => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Checks the JSON types the SFU parses strictly, wherever they appear.
pub fn check_strict_types(v: &Value) {
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                match k.as_str() {
                    "roomId" | "userId" | "userName" | "pusherId" | "udp_ip" | "mediaType"
                    | "pusher_user_id" => {
                        assert!(val.is_string(), "{k} must be a string: {v}")
                    }
                    "udp_port" => assert!(
                        val.is_i64() || val.is_u64(),
                        "udp_port must be an integer: {v}"
                    ),
                    // rtpParam is the publisher's own object: its types are whatever it sent.
                    "rtpParam" => continue,
                    _ => {}
                }
                check_strict_types(val);
            }
        }
        Value::Array(items) => items.iter().for_each(check_strict_types),
        _ => {}
    }
}

/// An SFU connection.
pub struct Sfu {
    writer: Arc<Mutex<WriteHalf<Box<dyn Io>>>>,
    inbox: mpsc::UnboundedReceiver<Value>,
    pending: VecDeque<Value>,
    next_id: u64,
    mask: u32,
    /// Unix-ish ms (since `epoch`) of the last pong received.
    pub last_pong_ms: Arc<AtomicU64>,
    /// Round-trip of each ping, in ms.
    pub ping_rtts: Arc<std::sync::Mutex<Vec<u64>>>,
    /// Set when a fragmented message (or binary frame) arrived.
    pub violation: Arc<std::sync::Mutex<Option<String>>>,
    closed: Arc<AtomicBool>,
    /// The close code the center sent, if any.
    pub close_code: Arc<std::sync::Mutex<Option<u16>>>,
    tcp: std::net::TcpStream,
    tasks: Vec<JoinHandle<()>>,
}

impl Sfu {
    /// Connects like the SFU: TCP, TLS without verification when `tls`,
    /// the exact upgrade, and a ping every 2 s.
    pub async fn connect(addr: std::net::SocketAddr, tls: bool) -> Sfu {
        Self::connect_to(addr, tls, "/pilot/center").await
    }

    /// Connects with `subpath` as the SFU's configured path, e.g.
    /// `/pilot/center?peer=sfu-1` to give itself an identity.
    pub async fn connect_to(addr: std::net::SocketAddr, tls: bool, subpath: &str) -> Sfu {
        Self::try_connect_to(addr, tls, subpath)
            .await
            .unwrap_or_else(|e| panic!("the SFU accepts the 101: {e}"))
    }

    /// Connects like [`Sfu::connect_to`]; a refused upgrade (503 while the
    /// center cannot take sessions) is an error to retry on, as the real
    /// SFU does.
    pub async fn try_connect_to(
        addr: std::net::SocketAddr,
        tls: bool,
        subpath: &str,
    ) -> Result<Sfu, String> {
        tokio::time::timeout(super::WAIT, Self::open(addr, tls, subpath))
            .await
            .expect("the SFU connects in time")
    }

    async fn open(addr: std::net::SocketAddr, tls: bool, subpath: &str) -> Result<Sfu, String> {
        let tcp = TcpStream::connect(addr).await.expect("tcp connect");
        tcp.set_nodelay(true).ok();
        let std_tcp = tcp.into_std().expect("std");
        let clone = std_tcp.try_clone().expect("dup");
        let tcp = TcpStream::from_std(std_tcp).expect("tokio");
        let mut io: Box<dyn Io> = if tls {
            Box::new(
                super::insecure_connector()
                    .connect(ServerName::try_from("localhost").expect("name"), tcp)
                    .await
                    .expect("tls"),
            )
        } else {
            Box::new(tcp)
        };
        let key = "x3JJHMbDL1EzLkh9GBhXDw==";
        io.write_all(upgrade_request_to(subpath, key).as_bytes())
            .await
            .expect("write upgrade");
        // One read, as the SFU does: the head must be complete in it.
        let mut buf = vec![0u8; 4096];
        let n = io.read(&mut buf).await.expect("read 101");
        let trailing = parse_101_like_sfu(&buf[..n], key)?;
        assert_eq!(
            trailing, 0,
            "nothing may follow the 101 until the SFU speaks (it would be discarded)"
        );

        let (reader, writer) = tokio::io::split(io);
        let writer = Arc::new(Mutex::new(writer));
        let (tx, inbox) = mpsc::unbounded_channel();
        let epoch = Instant::now();
        let last_pong_ms = Arc::new(AtomicU64::new(0));
        let ping_rtts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let violation = Arc::new(std::sync::Mutex::new(None));
        let closed = Arc::new(AtomicBool::new(false));
        let close_code = Arc::new(std::sync::Mutex::new(None));
        let ping_sent = Arc::new(std::sync::Mutex::new(None::<Instant>));
        let read_task = tokio::spawn(read_frames(
            reader,
            writer.clone(),
            tx,
            ReadState {
                epoch,
                last_pong_ms: last_pong_ms.clone(),
                ping_rtts: ping_rtts.clone(),
                ping_sent: ping_sent.clone(),
                violation: violation.clone(),
                closed: closed.clone(),
                close_code: close_code.clone(),
            },
        ));
        let ping_writer = writer.clone();
        let ping_task = tokio::spawn(async move {
            // The SFU pings every 2 s.
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.tick().await;
            loop {
                tick.tick().await;
                *ping_sent.lock().unwrap() = Some(Instant::now());
                let frame = client_frame(0x9, b"", [1, 2, 3, 4]);
                if ping_writer.lock().await.write_all(&frame).await.is_err() {
                    return;
                }
            }
        });
        Ok(Sfu {
            writer,
            inbox,
            pending: VecDeque::new(),
            next_id: 1,
            mask: 0x9e37_79b9,
            last_pong_ms,
            ping_rtts,
            violation,
            closed,
            close_code,
            tcp: clone,
            tasks: vec![read_task, ping_task],
        })
    }

    /// Sends a text message as one masked FIN frame.
    pub async fn send_text(&mut self, text: &str) {
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        self.send_frame(0x1, text.as_bytes()).await;
    }

    /// Sends one raw masked frame (e.g. invalid UTF-8 in a text frame).
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let frame = client_frame(opcode, payload, self.mask.to_be_bytes());
        tokio::time::timeout(super::WAIT, async {
            self.writer.lock().await.write_all(&frame).await
        })
        .await
        .expect("frame written in time")
        .expect("write frame");
    }

    /// Sends a text message if the connection still takes it; false once
    /// it does not (the center closed it), for peers that keep talking
    /// while the center may be going away.
    pub async fn try_send_text(&mut self, text: &str) -> bool {
        self.mask = self
            .mask
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let frame = client_frame(0x1, text.as_bytes(), self.mask.to_be_bytes());
        matches!(
            tokio::time::timeout(super::WAIT, async {
                self.writer.lock().await.write_all(&frame).await
            })
            .await,
            Ok(Ok(()))
        )
    }

    /// Whether the center closed the connection (close frame or EOF).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Sends a notification.
    pub async fn notify(&mut self, method: &str, data: Value) {
        let msg = json!({"notification": true, "method": method, "data": data});
        self.send_text(&msg.to_string()).await;
    }

    /// Sends a request with an integer id; returns the response, which must
    /// come within the SFU's 8 s deadline with an integer id.
    pub async fn request(&mut self, method: &str, data: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"request": true, "id": id, "method": method, "data": data});
        let sent = Instant::now();
        self.send_text(&msg.to_string()).await;
        loop {
            let msg = self
                .recv(Duration::from_secs(8))
                .await
                .unwrap_or_else(|| panic!("no response to {method} within 8 s"));
            if msg["response"] == json!(true) {
                assert!(msg["id"].is_u64(), "the SFU reads ids as integers: {msg}");
                if msg["id"] == json!(id) {
                    assert!(
                        sent.elapsed() < Duration::from_secs(8),
                        "response after the SFU's deadline"
                    );
                    return msg;
                }
            }
            self.pending.push_back(msg);
        }
    }

    async fn recv(&mut self, wait: Duration) -> Option<Value> {
        if let Some(m) = self.pending.pop_front() {
            return Some(m);
        }
        let msg = tokio::time::timeout(wait, self.inbox.recv()).await.ok()??;
        check_strict_types(&msg);
        Some(msg)
    }

    /// The next message, whatever it is.
    pub async fn expect_any(&mut self) -> Value {
        self.recv(super::WAIT).await.expect("a message in time")
    }

    /// The next notification, which must be `method`.
    pub async fn expect(&mut self, method: &str) -> Value {
        let msg = self
            .recv(super::WAIT)
            .await
            .unwrap_or_else(|| panic!("no {method} arrived"));
        assert_eq!(msg["method"], json!(method), "expected {method}, got {msg}");
        msg["data"].clone()
    }

    /// Proves nothing is due to this SFU with an `echo` barrier: its
    /// response must be the next message (see `Peer::expect_silence`).
    pub async fn expect_silence(&mut self) {
        if let Some(msg) = self.pending.pop_front() {
            panic!("unexpected message: {msg}");
        }
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"request": true, "id": id, "method": "echo", "data": {"barrier": id}});
        self.send_text(&msg.to_string()).await;
        let msg = self
            .recv(super::WAIT)
            .await
            .unwrap_or_else(|| panic!("no answer to the echo barrier"));
        assert!(
            msg["response"] == json!(true) && msg["id"] == json!(id),
            "unexpected message: {msg}"
        );
    }

    /// Panics if the center broke one of the SFU's rules so far.
    pub fn assert_clean(&self) {
        if let Some(v) = self.violation.lock().unwrap().as_ref() {
            panic!("SFU rule broken: {v}");
        }
        assert!(
            !self.closed.load(Ordering::Relaxed),
            "the center closed the SFU's connection"
        );
    }

    /// Kills the TCP connection with a reset, no close frame.
    pub fn reset(self) {
        let sock = TcpStream::from_std(socket_of(&self.tcp)).expect("tokio socket");
        #[allow(deprecated)]
        sock.set_linger(Some(Duration::ZERO)).ok();
        for t in &self.tasks {
            t.abort();
        }
        drop(self);
    }
}

fn socket_of(tcp: &std::net::TcpStream) -> std::net::TcpStream {
    tcp.try_clone().expect("dup")
}

impl Drop for Sfu {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct ReadState {
    epoch: Instant,
    last_pong_ms: Arc<AtomicU64>,
    ping_rtts: Arc<std::sync::Mutex<Vec<u64>>>,
    ping_sent: Arc<std::sync::Mutex<Option<Instant>>>,
    violation: Arc<std::sync::Mutex<Option<String>>>,
    closed: Arc<AtomicBool>,
    close_code: Arc<std::sync::Mutex<Option<u16>>>,
}

async fn read_frames(
    mut reader: ReadHalf<Box<dyn Io>>,
    writer: Arc<Mutex<WriteHalf<Box<dyn Io>>>>,
    tx: mpsc::UnboundedSender<Value>,
    st: ReadState,
) {
    let violate = |s: String| {
        st.violation.lock().unwrap().get_or_insert(s);
    };
    loop {
        let mut head = [0u8; 2];
        if reader.read_exact(&mut head).await.is_err() {
            st.closed.store(true, Ordering::Relaxed);
            return;
        }
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0F;
        if head[1] & 0x80 != 0 {
            violate("server frames must not be masked".into());
        }
        let len = match head[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                if reader.read_exact(&mut b).await.is_err() {
                    return;
                }
                u64::from(u16::from_be_bytes(b))
            }
            127 => {
                let mut b = [0u8; 8];
                if reader.read_exact(&mut b).await.is_err() {
                    return;
                }
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        if reader.read_exact(&mut payload).await.is_err() {
            return;
        }
        if !fin || opcode == 0 {
            violate(format!(
                "fragmented message (fin={fin}, opcode={opcode}): the SFU cannot reassemble it"
            ));
            continue;
        }
        match opcode {
            0x1 => match serde_json::from_slice::<Value>(&payload) {
                Ok(v) => {
                    let _ = tx.send(v);
                }
                Err(e) => violate(format!("text frame is not JSON: {e}")),
            },
            0x2 => violate("binary frame sent".into()),
            0x8 => {
                if payload.len() >= 2 {
                    *st.close_code.lock().unwrap() =
                        Some(u16::from_be_bytes([payload[0], payload[1]]));
                }
                st.closed.store(true, Ordering::Relaxed);
                return;
            }
            0x9 => {
                let frame = client_frame(0xA, &payload, [9, 8, 7, 6]);
                let _ = writer.lock().await.write_all(&frame).await;
            }
            0xA => {
                let ms = st.epoch.elapsed().as_millis() as u64;
                st.last_pong_ms.store(ms, Ordering::Relaxed);
                if let Some(sent) = st.ping_sent.lock().unwrap().take() {
                    st.ping_rtts
                        .lock()
                        .unwrap()
                        .push(sent.elapsed().as_millis() as u64);
                }
            }
            other => violate(format!("unknown opcode {other}")),
        }
    }
}
