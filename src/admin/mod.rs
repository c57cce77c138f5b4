//! The HTTP admin listener: the live admin page (`/`), its JSON API
//! (`/api/...`), `/metrics` (Prometheus text), `/healthz` (process alive) and
//! `/readyz` (listeners up and not draining).
//!
//! The page is one HTML file embedded in the binary (no build step, no CDN).
//! It reads [`Center::overview`] and follows the event feed from that
//! overview's cursor, so it misses nothing between the two; actions (kick,
//! close a room, send text) call the same room-service API as gRPC. With auth
//! on, every `/api` call needs an admin token (`Authorization: Bearer`); the
//! page itself holds no data. With auth off, the page and `/api` answer
//! only loopback peers (the metrics and health endpoints answer anyone the
//! listener is reachable by). Actions take JSON bodies only, so a form on
//! another site cannot post them (a cross-origin JSON post needs a CORS
//! preflight, which this listener never grants). The page runs under a
//! per-response nonce CSP: no script or style but its own runs.
//!
//! Like the other listeners, it bounds what anyone can hold before
//! authenticating: connections in all and per address, each with a
//! deadline to start its request (or TLS handshake), and the event streams.

use crate::auth::{self, Authenticator, Role};
use crate::center::{Center, Overview};
use crate::error::CenterError;
use crate::view;
use axum::Router;
use axum::extract::{ConnectInfo, Json, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

/// The page, embedded at build time.
const PAGE: &str = include_str!("page.html");

/// Rooms the page shows in detail; the rest are counted. The page is for
/// people: a list longer than this is for `pilot-center rooms` or gRPC.
pub const PAGE_ROOMS: usize = 500;

/// Events buffered per page on their way out; a page that falls further
/// behind waits (the producer waits, then the feed marks it lagged).
const PAGE_EVENTS_QUEUE: usize = 1024;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    /// The room service (for state gauges, metrics, the page and its actions).
    pub center: Center,
    /// True once every listener is up; false again while draining.
    pub ready: Arc<AtomicBool>,
    /// Verifies admin tokens for `/api`; `None` when auth is off.
    pub auth: Option<Arc<Authenticator>>,
}

/// How the admin listener bounds and secures its connections.
#[derive(Clone)]
pub struct AdminOptions {
    /// https when set.
    pub tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Open connections, in all and per address (0: no bound).
    pub max_connections: usize,
    /// Open connections from one address (0: no bound).
    pub max_connections_per_ip: usize,
    /// Event streams at once (0: no bound).
    pub max_event_streams: usize,
    /// Time a new connection has to start its request or TLS handshake.
    pub handshake_timeout: std::time::Duration,
}

/// [`AdminState`] plus the stop signal that ends event streams.
#[derive(Clone)]
struct AdminContext {
    state: AdminState,
    stop: CancellationToken,
    /// Places for event streams; `None`: no bound.
    event_streams: Option<Arc<tokio::sync::Semaphore>>,
}

/// The address of the peer of a request.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub std::net::SocketAddr);

/// A connection of the admin listener: admitted, and over TLS when https.
type AdminIo = tokio_util::either::Either<
    crate::admission::Admitted,
    tokio_rustls::server::TlsStream<crate::admission::Admitted>,
>;

/// The admin listener as axum sees it: connections already admitted (and
/// their TLS handshakes done, each in a task of its own, so a slow one
/// holds up nobody).
struct AdminListener {
    rx: mpsc::Receiver<(AdminIo, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for AdminListener {
    type Io = AdminIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task stopped (shutdown): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AdminListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdminListener>) -> Self {
        Self(*stream.remote_addr())
    }
}

/// Accepts, admits and (for https) handshakes connections for the admin
/// listener until `stop`.
fn accept_admitted(
    listener: TcpListener,
    options: &AdminOptions,
    metrics: Arc<crate::metrics::Metrics>,
    stop: CancellationToken,
) -> std::io::Result<AdminListener> {
    use futures_util::StreamExt as _;
    let local = listener.local_addr()?;
    let (tx, rx) = mpsc::channel(64);
    let slots =
        crate::admission::Slots::new(options.max_connections, options.max_connections_per_ip);
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let within = options.handshake_timeout;
    let mut incoming = Box::pin(crate::admission::admitted(
        listener,
        slots,
        within,
        metrics,
        ["admin_full", "admin_per_ip"],
    ));
    tokio::spawn(async move {
        loop {
            let io = tokio::select! {
                () = stop.cancelled() => return,
                io = incoming.next() => match io {
                    Some(Ok(io)) => io,
                    Some(Err(_)) => continue,
                    None => return,
                },
            };
            let Ok(peer) = io.peer_addr() else { continue };
            let (tx, tls) = (tx.clone(), tls.clone());
            tokio::spawn(async move {
                let io = match tls {
                    None => tokio_util::either::Either::Left(io),
                    Some(acceptor) => {
                        match tokio::time::timeout(within, acceptor.accept(io)).await {
                            Ok(Ok(tls)) => tokio_util::either::Either::Right(tls),
                            _ => {
                                return tracing::debug!(peer.addr = %peer, "admin: TLS handshake failed");
                            }
                        }
                    }
                };
                let _ = tx.send((io, peer)).await;
            });
        }
    });
    Ok(AdminListener { rx, local })
}

async fn metrics(State(s): State<AdminContext>) -> impl IntoResponse {
    let center = &s.state.center;
    let body = center.metrics().render(&center.state_gauges());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminContext>) -> impl IntoResponse {
    if !s.state.center.store_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "state store unavailable\n")
    } else if s.state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// A fresh CSP nonce: 16 random bytes, hex.
fn nonce() -> String {
    use tokio_rustls::rustls::crypto::ring::default_provider;
    let mut bytes = [0u8; 16];
    // The system's random source; should it ever fail, the time still
    // differs per response (the nonce only has to be unguessable ahead).
    if default_provider().secure_random.fill(&mut bytes).is_err() {
        bytes = crate::clock::unix_ms(std::time::SystemTime::now())
            .to_le_bytes()
            .repeat(2)[..16]
            .try_into()
            .unwrap_or_default();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `/serving`, for load balancers: 200 while this node serves sessions,
/// also through a short outage of the shared store (then it refuses new
/// sessions with 503 but keeps its links: taking every node out of a load
/// balancer at once would cut every SFU's link); 503 while it drains, lost
/// its lease, rejoins after a gap, or cannot read the log.
async fn serving(State(s): State<AdminContext>) -> impl IntoResponse {
    if s.state.ready.load(Ordering::Relaxed) && s.state.center.serving() {
        (StatusCode::OK, "serving\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}

async fn page(
    State(s): State<AdminContext>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
) -> Result<impl IntoResponse, ApiError> {
    loopback_unless_auth(&s, peer)?;
    let nonce = nonce();
    let html = PAGE
        .replacen("<script>", &format!("<script nonce=\"{nonce}\">"), 1)
        .replacen("<style>", &format!("<style nonce=\"{nonce}\">"), 1);
    // Only the page's own script and style run (no injected one can: it
    // cannot know this response's nonce), and nothing is loaded from
    // elsewhere.
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    Ok((
        [
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::CONTENT_SECURITY_POLICY, csp),
        ],
        Html(html),
    ))
}

/// With auth off, only loopback peers may see the page or use the API:
/// anyone else who reaches the listener would be an admin.
fn loopback_unless_auth(s: &AdminContext, peer: PeerAddr) -> Result<(), ApiError> {
    if s.state.auth.is_none() && !peer.0.ip().to_canonical().is_loopback() {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "permission_denied",
            "with auth off the admin page and API answer loopback peers only; turn auth on to use them from elsewhere".into(),
        ));
    }
    Ok(())
}

/// An `/api` refusal: HTTP status and `{"error": code, "reason": text}`.
struct ApiError(StatusCode, &'static str, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let ApiError(status, code, reason) = self;
        (status, Json(json!({"error": code, "reason": reason}))).into_response()
    }
}

impl From<CenterError> for ApiError {
    fn from(e: CenterError) -> Self {
        let status =
            StatusCode::from_u16(e.protoo_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let code = match status {
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::BAD_REQUEST => "invalid_argument",
            StatusCode::FORBIDDEN => "permission_denied",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PRECONDITION_FAILED => "failed_precondition",
            StatusCode::TOO_MANY_REQUESTS => "limit_reached",
            StatusCode::SERVICE_UNAVAILABLE => "unavailable",
            _ => "internal",
        };
        ApiError(status, code, e.to_string())
    }
}

/// True when `host` (a `Host` header) names the listener by address or as
/// `localhost`, as a person typing the admin URL does. A page of another
/// site that rebinds its own name to this address (DNS rebinding) sends its
/// own name, and with auth off that is all that stands between it and the
/// API: a token cannot be read across origins, so with auth on this check
/// is not needed.
fn host_is_direct(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        // [v6]:port
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Lets the call through with an admin token, or when auth is off, the peer
/// is on loopback and the page was reached by address (see
/// [`host_is_direct`]).
fn require_admin(s: &AdminContext, headers: &HeaderMap, peer: PeerAddr) -> Result<(), ApiError> {
    loopback_unless_auth(s, peer)?;
    let Some(auth) = &s.state.auth else {
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if host_is_direct(host) {
            return Ok(());
        }
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!(
                "with auth off the admin API answers only requests to an IP address or localhost, not {host:?}; open the page by address or turn auth on"
            ),
        ));
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
        .ok_or_else(|| {
            ApiError(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "an admin token is required (Authorization: Bearer TOKEN)".into(),
            )
        })?;
    let grant = auth
        .verify(token)
        .map_err(|e| ApiError(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()))?;
    if grant.role != Role::Admin {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("{:?} tokens may not use the admin page", grant.role).to_lowercase(),
        ));
    }
    Ok(())
}

/// The page's view of the center at one moment, with the cursor to follow.
fn overview_json(o: &Overview) -> Value {
    json!({
        "cursor": o.cursor,
        "roomsTotal": o.rooms_total,
        "rooms": o.rooms.iter().map(view::room_json).collect::<Vec<_>>(),
        "sessions": o.sessions.iter().map(view::session_json).collect::<Vec<_>>(),
        "msus": o.msus.iter().map(view::msu_json).collect::<Vec<_>>(),
    })
}

async fn overview(
    State(s): State<AdminContext>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, peer)?;
    s.state.center.settle().await?;
    Ok(Json(overview_json(&s.state.center.overview(PAGE_ROOMS))))
}

/// `GET /api/events?after=CURSOR`: server-sent events, one per feed event
/// (`id` is its `seq`), from just after the cursor. An `after` older than the
/// kept window gets 400 `out_of_range`: reload the overview and follow on.
async fn events(
    State(s): State<AdminContext>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&s, &headers, peer)?;
    let place = match &s.event_streams {
        None => None,
        Some(cap) => Some(cap.clone().try_acquire_owned().map_err(|_| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "too many event streams open; close another admin page".into(),
            )
        })?),
    };
    let after = match auth::query_param(query.as_deref(), "after") {
        None => None,
        Some(v) => Some(v.parse::<u64>().map_err(|_| {
            ApiError(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                format!("after: not a cursor: {v:?}"),
            )
        })?),
    };
    let resumed = s.state.center.resume(after)?;
    let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(PAGE_EVENTS_QUEUE);
    // The producer is a task, so a page that went away is noticed by a failed
    // send, and the stop signal ends the stream (the listener's graceful
    // shutdown waits for open responses).
    tokio::spawn(async move {
        // Held while the stream lasts.
        let _place = place;
        let sse = |e: &crate::proto::WatchEventsResponse| {
            SseEvent::default()
                .id(e.seq.to_string())
                .data(view::event_json(e).to_string())
        };
        for event in resumed.backlog() {
            if tx.send(Ok(sse(&event))).await.is_err() {
                return;
            }
        }
        let mut feed = resumed.live;
        loop {
            let item = tokio::select! {
                () = s.stop.cancelled() => return,
                () = tx.closed() => return,
                item = feed.recv() => item,
            };
            let out = match item {
                Ok(event) => sse(&event),
                // The page reloads the overview and follows on from there.
                Err(broadcast::error::RecvError::Lagged(skipped)) => SseEvent::default()
                    .event("lagged")
                    .data(json!({"skipped": skipped}).to_string()),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default()))
}

/// Body of `POST /api/kick`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KickBody {
    room_id: String,
    user_id: String,
}

/// Body of `POST /api/close`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CloseBody {
    room_id: String,
}

/// Body of `POST /api/record` and `POST /api/stop-recording`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RecordBody {
    room_id: String,
}

/// Body of `POST /api/say`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SayBody {
    room_id: String,
    message: String,
}

async fn kick(
    State(s): State<AdminContext>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    Json(b): Json<KickBody>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, peer)?;
    let n = s.state.center.remove_user(&b.room_id, &b.user_id).await?;
    tracing::info!(room.id = %b.room_id, user.id = %b.user_id, "user removed from the admin page");
    Ok(Json(json!({"sessionsNotified": n})))
}

async fn close(
    State(s): State<AdminContext>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    Json(b): Json<CloseBody>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, peer)?;
    let n = s.state.center.close_room(&b.room_id).await?;
    tracing::info!(room.id = %b.room_id, "room closed from the admin page");
    Ok(Json(json!({"usersRemoved": n})))
}

async fn record(
    State(s): State<AdminContext>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    Json(b): Json<RecordBody>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, peer)?;
    let r = s.state.center.start_recording(&b.room_id, "").await?;
    tracing::info!(room.id = %b.room_id, recording.id = %r.recording_id, "recording started from the admin page");
    Ok(Json(json!({"recordingId": r.recording_id})))
}

async fn stop_recording(
    State(s): State<AdminContext>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    Json(b): Json<RecordBody>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, peer)?;
    let r = s.state.center.stop_recording(&b.room_id).await?;
    tracing::info!(room.id = %b.room_id, recording.id = %r.recording_id, "recording stopped from the admin page");
    Ok(Json(json!({"recordingId": r.recording_id})))
}

async fn say(
    State(s): State<AdminContext>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    Json(b): Json<SayBody>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&s, &headers, peer)?;
    let n = s
        .state
        .center
        .send_text(&b.room_id, "", "", &b.message)
        .await?;
    Ok(Json(json!({"sessionsReached": n})))
}

/// Serves the admin endpoints on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    options: AdminOptions,
    stop: CancellationToken,
) {
    let counters = state.center.metrics().clone();
    let listener = match accept_admitted(listener, &options, counters, stop.clone()) {
        Ok(l) => l,
        Err(e) => return tracing::error!(error = %e, "admin listener failed"),
    };
    let event_streams = (options.max_event_streams > 0)
        .then(|| Arc::new(tokio::sync::Semaphore::new(options.max_event_streams)));
    let app = Router::new()
        .route("/", get(page))
        .route("/api/overview", get(overview))
        .route("/api/events", get(events))
        .route("/api/kick", post(kick))
        .route("/api/close", post(close))
        .route("/api/say", post(say))
        .route("/api/record", post(record))
        .route("/api/stop-recording", post(stop_recording))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/serving", get(serving))
        .with_state(AdminContext {
            state,
            stop: stop.clone(),
            event_streams,
        });
    let app = app.into_make_service_with_connect_info::<PeerAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "admin listener failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_auth_off_only_loopback_peers_reach_the_page_and_api() {
        let shared = AdminContext {
            state: AdminState {
                center: Center::default(),
                ready: Arc::default(),
                auth: None,
            },
            stop: CancellationToken::new(),
            event_streams: None,
        };
        for (peer, allowed) in [
            ("127.0.0.1:1", true),
            ("127.9.9.9:1", true),
            ("[::1]:1", true),
            ("[::ffff:127.0.0.1]:1", true),
            ("10.0.0.7:1", false),
            ("192.168.1.2:1", false),
            ("[2001:db8::1]:1", false),
            ("[::ffff:10.0.0.7]:1", false),
        ] {
            let peer = PeerAddr(peer.parse().unwrap());
            assert_eq!(
                loopback_unless_auth(&shared, peer).is_ok(),
                allowed,
                "{peer:?}"
            );
        }
    }

    #[test]
    fn hosts_named_by_address_or_localhost_are_direct() {
        for host in [
            "127.0.0.1:9445",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:9445",
            "localhost:9445",
            "LOCALHOST",
        ] {
            assert!(host_is_direct(host), "{host}");
        }
        for host in [
            "evil.example:9445",
            "evil.example",
            "",
            "localhost.evil.example:1",
        ] {
            assert!(!host_is_direct(host), "{host}");
        }
    }
}
