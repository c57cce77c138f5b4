//! The WebSocket front end: accept, TLS, the HTTP upgrade, then one
//! [`session`] per connection.
//!
//! The accept loop logs and carries on after errors; a peer that fails its
//! TLS or HTTP handshake is logged at debug and dropped.

pub mod handshake;
pub mod session;

use crate::admission::{Full, Slot, Slots};
use crate::auth::{Authenticator, Grant};
use crate::center::Center;
use crate::config::WebSocketConfig;
use crate::limits::RateSettings;
use crate::proto::Transport;
use handshake::{Parsed, Refusal, Rejection};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig as WsProtocolConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// The WebSocket path peers connect to.
pub const PATH: &str = "/pilot/center";

/// Everything a connection needs; shared by all of them.
pub struct Gateway {
    center: Center,
    config: WebSocketConfig,
    invite_timeout: std::time::Duration,
    tls: Option<TlsAcceptor>,
    /// Token verifier; `None` when authentication is off.
    auth: Option<Arc<Authenticator>>,
    rate: RateSettings,
    /// Sessions past the upgrade, for the connection limits.
    slots: Arc<Slots>,
    /// Connections not yet past their upgrade: what anyone can hold open
    /// before authenticating is bounded, in all and per address.
    pending: Arc<Slots>,
    /// New connections per address and second.
    connection_rate: Option<ConnectionRate>,
}

/// New connections per peer address, rate-limited.
type ConnectionRate = governor::RateLimiter<
    IpAddr,
    governor::state::keyed::HashMapStateStore<IpAddr>,
    crate::clock::Clock,
    governor::middleware::NoOpMiddleware<Duration>,
>;

/// The gateway's settings beyond the `websocket:` section.
pub struct GatewayOptions {
    /// Time an MSU has to answer `invite`.
    pub invite_timeout: std::time::Duration,
    /// wss when set.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Token verifier; `None` when authentication is off.
    pub auth: Option<Arc<Authenticator>>,
    /// Per-session rate limit.
    pub rate: RateSettings,
}

impl Gateway {
    /// A gateway to `center`.
    pub fn new(center: Center, config: WebSocketConfig, options: GatewayOptions) -> Self {
        Self {
            center,
            invite_timeout: options.invite_timeout,
            tls: options.tls.map(TlsAcceptor::from),
            auth: options.auth,
            slots: Slots::new(config.max_sessions, config.max_sessions_per_ip),
            pending: Slots::new(
                config.max_pending_handshakes,
                config.max_pending_handshakes_per_ip,
            ),
            connection_rate: std::num::NonZeroU32::new(config.connections_per_ip_per_sec).map(
                |rate| {
                    let burst = std::num::NonZeroU32::new(config.connection_burst_per_ip)
                        .unwrap_or(rate)
                        .max(rate);
                    governor::RateLimiter::hashmap_with_clock(
                        governor::Quota::per_second(rate).allow_burst(burst),
                        options.rate.clock.clone(),
                    )
                },
            ),
            rate: options.rate,
            config,
        }
    }

    /// Admits a new connection from `ip` to its handshake, or says why not
    /// (then it is closed at once, before any TLS or HTTP work).
    fn admit(&self, ip: IpAddr) -> Result<Slot, &'static str> {
        if let Some(rate) = &self.connection_rate
            && rate.check_key(&ip).is_err()
        {
            return Err("rate_per_ip");
        }
        self.pending.take(ip).map_err(|full| match full {
            Full::Total => "pending_full",
            Full::PerIp => "pending_per_ip",
        })
    }

    /// The grant of an upgrade request, or why it is refused.
    fn authorize(&self, request: &handshake::UpgradeRequest) -> Result<Grant, Refusal> {
        let Some(auth) = &self.auth else {
            return Ok(Grant::unrestricted());
        };
        let token =
            Authenticator::token_of(request.authorization.as_deref(), request.query.as_deref())
                .ok_or(Refusal::Unauthorized)?;
        auth.verify(token).map_err(|e| {
            tracing::info!(error = %e, "token refused");
            Refusal::Unauthorized
        })
    }

    fn protocol_config(&self) -> WsProtocolConfig {
        // Small buffers: tungstenite's defaults (128 KiB read, 128 KiB write)
        // would cost far more per idle session than the session itself.
        WsProtocolConfig::default()
            .read_buffer_size(2 * 1024)
            .write_buffer_size(16 * 1024)
            .max_message_size(Some(self.config.max_message_size))
            .max_frame_size(Some(self.config.max_message_size))
    }
}

/// Accepts connections on `listener` until `shutdown` is cancelled. Every
/// connection task is spawned on `tracker`, so the caller can wait for them.
pub async fn serve(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    // The rate limiter remembers every address it saw: forget quiet ones.
    let mut tidy = tokio::time::interval(Duration::from_secs(60));
    tidy.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            _ = tidy.tick() => {
                if let Some(rate) = &gateway.connection_rate {
                    rate.retain_recent();
                    rate.shrink_to_fit();
                }
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let pending = match gateway.admit(peer.ip()) {
                    Ok(slot) => slot,
                    Err(reason) => {
                        // Closed before any work: nothing to answer in yet.
                        gateway.center.metrics().connection_dropped(reason);
                        tracing::debug!(peer.addr = %peer, reason, "connection dropped before its handshake");
                        continue;
                    }
                };
                let gateway = gateway.clone();
                // A child token: a session polls its own, not the lock of one
                // token every session on every core polls at each wake-up.
                let shutdown = shutdown.child_token();
                tracker
                    .spawn(async move { gateway.connection(tcp, peer, pending, shutdown).await });
            }
            Err(e) => {
                // E.g. out of file descriptors: keep serving the others.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!("websocket listener stopped");
}

impl Gateway {
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        pending: Slot,
        shutdown: CancellationToken,
    ) {
        // Signaling is latency-bound and made of small messages.
        let _ = tcp.set_nodelay(true);
        let timeout = self.config.handshake_timeout();
        // Each stage is boxed at its own size: the TLS handshake's state is
        // freed once done, and a plain session does not carry room for the
        // (larger) TLS one. This is most of an idle session's memory.
        match &self.tls {
            Some(acceptor) => {
                match Box::pin(tokio::time::timeout(timeout, acceptor.accept(tcp))).await {
                    Ok(Ok(tls)) => {
                        Box::pin(self.upgrade(tls, peer, Transport::Wss, pending, shutdown)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(peer.addr = %peer, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(peer.addr = %peer, "TLS handshake timed out"),
                }
            }
            None => Box::pin(self.upgrade(tcp, peer, Transport::Ws, pending, shutdown)).await,
        }
    }

    async fn upgrade<S>(
        &self,
        mut stream: S,
        peer: SocketAddr,
        transport: Transport,
        pending: Slot,
        shutdown: CancellationToken,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let head =
            tokio::time::timeout(self.config.handshake_timeout(), read_head(&mut stream)).await;
        let (head_len, request, buf) = match head {
            Ok(Ok(Ok((head_len, request, buf)))) => (head_len, request, buf),
            Ok(Ok(Err(Rejection::Refuse(refusal)))) => {
                return self.refuse(&mut stream, peer, refusal).await;
            }
            Ok(Ok(Err(Rejection::HeadTooLarge))) => {
                return tracing::debug!(peer.addr = %peer, "request head too large: dropped");
            }
            Ok(Err(e)) => {
                return tracing::debug!(peer.addr = %peer, error = %e, "read failed before upgrade");
            }
            Err(_) => return tracing::debug!(peer.addr = %peer, "upgrade request timed out"),
        };
        if shutdown.is_cancelled() {
            return self
                .refuse(&mut stream, peer, Refusal::Unavailable("shutting down"))
                .await;
        }
        if !self.center.store_ready() {
            // A session now could not record anything: the peer had better
            // try another node, or again shortly.
            return self
                .refuse(
                    &mut stream,
                    peer,
                    Refusal::Unavailable("state store unavailable"),
                )
                .await;
        }
        let _slot = match self.slots.take(peer.ip()) {
            Ok(slot) => slot,
            Err(Full::Total) => {
                let refusal = Refusal::Unavailable("too many sessions");
                return self.refuse(&mut stream, peer, refusal).await;
            }
            Err(Full::PerIp) => {
                return self
                    .refuse(&mut stream, peer, Refusal::TooManyRequests)
                    .await;
            }
        };
        let grant = match self.authorize(&request) {
            Ok(grant) => grant,
            Err(refusal) => return self.refuse(&mut stream, peer, refusal).await,
        };
        let identity = crate::auth::peer_identity(
            &grant,
            crate::auth::query_param(request.query.as_deref(), "peer"),
            peer.ip(),
        );
        let incarnation = crate::auth::peer_incarnation(
            &grant,
            crate::auth::query_param(request.query.as_deref(), "incarnation"),
        );
        // The whole 101 in one write (one TLS record): the SFU's reader
        // mishandles a head split across reads.
        let response = handshake::switching_protocols(&request);
        if let Err(e) = async {
            stream.write_all(&response).await?;
            stream.flush().await
        }
        .await
        {
            return tracing::debug!(peer.addr = %peer, error = %e, "write of 101 failed");
        }
        let leftover = buf[head_len..].to_vec();
        drop((buf, request));
        // Past its upgrade: a session now, counted by the session limits.
        drop(pending);
        let ws = WebSocketStream::from_partially_read(
            stream,
            leftover,
            Role::Server,
            Some(self.protocol_config()),
        )
        .await;
        // A DEBUG span: the subscriber keeps a slot per span ever open at
        // once, with a small allocation each that outlives the session and
        // pinned ~18 MB of freed heap after 5,000 sessions left (docs/
        // PERFORMANCE.md). The INFO lines of a session carry its ids instead.
        let span = tracing::debug_span!("session", peer.addr = %peer, peer.id = %identity, transport = transport.short_name());
        session::run(
            ws,
            session::Settings {
                center: &self.center,
                peer,
                transport,
                outbound_max_bytes: self.config.outbound_max_bytes,
                outbound_max_delay: Duration::from_secs(self.config.outbound_max_delay_secs),
                clock: self.rate.clock.clone(),
                ping_interval: self.config.ping_interval(),
                pong_timeout: self.config.pong_timeout(),
                invite_timeout: self.invite_timeout,
                grant,
                identity,
                incarnation,
                rate: self.rate.clone(),
            },
            shutdown,
        )
        .instrument(span)
        .await;
    }
}

impl Gateway {
    async fn refuse<S: AsyncWrite + Unpin>(
        &self,
        stream: &mut S,
        peer: SocketAddr,
        refusal: Refusal,
    ) {
        let code = refusal.status().0;
        tracing::debug!(peer.addr = %peer, status = code, "upgrade refused");
        self.center
            .metrics()
            .refused
            .get_or_create(&crate::metrics::CodeLabel { code })
            .inc();
        let _ = stream.write_all(&refusal.response()).await;
        let _ = stream.shutdown().await;
    }
}

/// Reads until the request head is complete (or refused). Returns the head
/// length, the request and every byte read (frames may follow the head).
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> std::io::Result<Result<(usize, handshake::UpgradeRequest, Vec<u8>), Rejection>> {
    // Read straight into the heap buffer: a stack array here would sit in
    // every session's task for its whole life.
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(1024);
        }
        let n = stream.read_buf(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        match handshake::parse_request(&buf, PATH) {
            Ok(Parsed::Partial) => continue,
            Ok(Parsed::Upgrade { head_len, request }) => return Ok(Ok((head_len, request, buf))),
            Err(rejection) => return Ok(Err(rejection)),
        }
    }
}
