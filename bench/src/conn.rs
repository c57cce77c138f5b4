//! Client connections as an SFU opens them: ws or wss (optionally without
//! certificate checks), subprotocol `protoo`, small buffers so thousands fit.

use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::rustls;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A byte stream (TCP or TLS).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A WebSocket over TCP or TLS.
pub type Ws = WebSocketStream<Box<dyn Io>>;

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    /// ws:// or wss:// URLs: one center, or the nodes of a cluster, which
    /// connections are spread over in turn.
    pub urls: Vec<String>,
    /// Accept any certificate.
    pub insecure: bool,
}

impl Target {
    /// The URL for the `n`th connection (round robin over the nodes).
    pub fn url(&self, n: usize) -> &str {
        match self.urls.len() {
            0 => "",
            len => &self.urls[n % len],
        }
    }

    /// Every URL, as reports name the target.
    pub fn describe(&self) -> String {
        self.urls.join(",")
    }
}

fn tls_connector(insecure: bool) -> anyhow::Result<tokio_rustls::TlsConnector> {
    if insecure {
        return Ok(tokio_rustls::TlsConnector::from(
            pilot_center::tls::insecure_client_config()?,
        ));
    }
    anyhow::bail!(
        "wss without --insecure needs a trusted certificate, which pilot-bench does not load; pass --insecure"
    )
}

/// Connections opened by this process, for their peer names.
static OPENED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Opens one connection, from `source` when given (to spread many
/// connections over several loopback addresses), to the next of the
/// target's URLs in turn. Each connection names itself (`peer=bench-PID-N`)
/// as a distinct SFU would: connections from one address would otherwise
/// share an identity, and a new one would take back the users of one that
/// vanished (PROTOCOL.md §6).
pub async fn connect(target: &Target, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let n = OPENED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = format!("bench-{}-{n}", std::process::id());
    connect_as(target, usize::try_from(n).unwrap_or(0), source, &name).await
}

/// Opens one connection to the target's `node`th URL (round robin) with the
/// peer name `name` (two connections with one name are one SFU
/// reconnecting, to the same node or to another).
pub async fn connect_as(
    target: &Target,
    node: usize,
    source: Option<IpAddr>,
    name: &str,
) -> anyhow::Result<Ws> {
    let base = target.url(node);
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}peer={name}");
    let mut request = url.as_str().into_client_request()?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("protoo"));
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or("127.0.0.1").to_owned();
    let port = uri.port_u16().unwrap_or(9443);
    let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("cannot resolve {host}"))?;
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "pilot-bench only targets loopback addresses, not {addr}"
    );
    let tcp = match source {
        Some(ip) => {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    tcp.set_nodelay(true)?;
    let stream: Box<dyn Io> = if uri.scheme_str() == Some("wss") {
        let name = rustls::pki_types::ServerName::try_from(host)?;
        Box::new(tls_connector(target.insecure)?.connect(name, tcp).await?)
    } else {
        Box::new(tcp)
    };
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024);
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    Ok(ws)
}

/// Called with (connection index, text) for every text frame received.
pub type OnText = Arc<dyn Fn(usize, &str) + Send + Sync>;

/// A connection driven by two tasks: a writer fed by `out`, and a reader
/// that hands every text frame to a handler.
pub struct Conn {
    /// Frames to send.
    pub out: mpsc::UnboundedSender<Message>,
}

impl Conn {
    /// Splits `ws` and spawns its reader and writer. `on_text` sees every
    /// text frame, with this connection's index.
    pub fn spawn(ws: Ws, index: usize, on_text: OnText) -> Conn {
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                if sink.feed(first).await.is_err() {
                    return;
                }
                while let Ok(next) = rx.try_recv() {
                    if sink.feed(next).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                if let Message::Text(t) = msg {
                    on_text(index, &t);
                }
            }
        });
        Conn { out }
    }

    /// Queues a text frame.
    pub fn send(&self, text: String) {
        let _ = self.out.send(Message::Text(Utf8Bytes::from(text)));
    }
}
