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
    /// ws:// or wss:// URL.
    pub url: String,
    /// Accept any certificate.
    pub insecure: bool,
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_connector(insecure: bool) -> tokio_rustls::TlsConnector {
    let provider = pilot_center::tls::provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|_| unreachable_config());
    let config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn unreachable_config() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    // ring supports the default protocol versions; this cannot happen.
    std::process::exit(2)
}

/// Opens one connection, from `source` when given (to spread many
/// connections over several loopback addresses).
pub async fn connect(target: &Target, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let mut request = target.url.as_str().into_client_request()?;
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
        Box::new(tls_connector(target.insecure).connect(name, tcp).await?)
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
