//! `center.yaml`: every section and key, with defaults.
//!
//! Unknown keys are errors (a typo must not silently fall back to a
//! default), and every error names the key it is about.

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// A key is unknown, missing or of the wrong type.
    #[error("{}: key `{key}`: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Dotted key path, e.g. `websocket.listen_port`.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The WebSocket (protoo) listener.
    pub websocket: WebSocketConfig,
    /// The gRPC listener.
    #[serde(default)]
    pub grpc: GrpcConfig,
    /// Room-service settings.
    #[serde(default)]
    pub center: CenterSection,
    /// The HTTP admin listener (`/metrics`, `/healthz`, `/readyz`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Per-session rate limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Authentication (off by default).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Several centers sharing state in Redis (off by default).
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// `cluster:` section: several centers sharing one state in Redis
/// (docs/CLUSTER.md). With `redis_url` empty the center is one process with
/// its state in memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `redis://host:port/db` or `rediss://...`; empty: no cluster. With
    /// `sentinels`, only its user, password, database and scheme are used
    /// (for the master the sentinels name); it may then be empty.
    #[serde(default)]
    pub redis_url: String,
    /// Redis Sentinel: the sentinels' URLs (`redis://host:26379`, with
    /// their own password if they have one). The node talks to whichever
    /// server they name as master of `sentinel_master`, and moves when a
    /// failover names another (docs/CLUSTER.md).
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The master's name the sentinels monitor (`sentinel monitor NAME ...`).
    #[serde(default)]
    pub sentinel_master: String,
    /// This node's id, for operators (default: host name and pid).
    #[serde(default)]
    pub node_id: String,
    /// Seconds after its last lease renewal a silent node is declared lost.
    #[serde(default = "default_node_ttl")]
    pub node_ttl_secs: u64,
    /// Prefix of every Redis key, so several clusters can share one Redis.
    /// Keys carry it as a hash tag (`{pilot}:log`): one Redis Cluster slot.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Seconds a change waits for Redis to take it before the peer gets
    /// 503 "state store unavailable".
    #[serde(default = "default_store_timeout")]
    pub store_timeout_secs: u64,
    /// Every this many log entries one node writes a snapshot of the state
    /// and trims the log below the snapshot before it: the log holds about
    /// two intervals, and a joining node loads the snapshot and replays
    /// less than that.
    #[serde(default = "default_snapshot_every")]
    pub snapshot_every: u64,
}

impl ClusterConfig {
    /// Whether the center is a node of a cluster (else one process).
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty() || !self.sentinels.is_empty()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: String::new(),
            sentinels: Vec::new(),
            sentinel_master: String::new(),
            node_id: String::new(),
            node_ttl_secs: default_node_ttl(),
            key_prefix: default_key_prefix(),
            store_timeout_secs: default_store_timeout(),
            snapshot_every: default_snapshot_every(),
        }
    }
}

fn default_snapshot_every() -> u64 {
    100_000
}

fn default_node_ttl() -> u64 {
    10
}

fn default_key_prefix() -> String {
    "pilot".into()
}

fn default_store_timeout() -> u64 {
    // Two batches in a row stay within the SFU's 8 s request deadline.
    3
}

/// `admin:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Serve the admin listener.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address (keep it on loopback or a private network).
    #[serde(default = "loopback")]
    pub listen_ip: IpAddr,
    /// Port (0 picks a free one).
    #[serde(default = "default_admin_port")]
    pub listen_port: u16,
    /// PEM certificate chain; with `key_path`, the listener serves https.
    #[serde(default)]
    pub cert_path: PathBuf,
    /// PEM private key.
    #[serde(default)]
    pub key_path: PathBuf,
    /// Most open connections (0: no limit); beyond, closed at once.
    #[serde(default = "default_admin_connections")]
    pub max_connections: usize,
    /// Most open connections from one peer address (0: no limit).
    #[serde(default = "default_admin_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Most admin pages following the event feed at once (0: no limit);
    /// beyond, 503.
    #[serde(default = "default_admin_event_streams")]
    pub max_event_streams: usize,
    /// Seconds a new connection has to start its request (or TLS handshake).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
}

fn default_admin_connections() -> usize {
    256
}
fn default_admin_connections_per_ip() -> usize {
    32
}
fn default_admin_event_streams() -> usize {
    32
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen_ip: loopback(),
            listen_port: default_admin_port(),
            cert_path: PathBuf::new(),
            key_path: PathBuf::new(),
            max_connections: default_admin_connections(),
            max_connections_per_ip: default_admin_connections_per_ip(),
            max_event_streams: default_admin_event_streams(),
            handshake_timeout_secs: default_handshake_timeout(),
        }
    }
}

impl AdminConfig {
    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_ip, self.listen_port)
    }
}

/// `limits:` section: a token bucket per session (WebSocket and gRPC) that
/// slows peers down and loses nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained messages per second per session (0: no limit). Messages
    /// over it wait, in order, and are applied at this rate.
    #[serde(default = "default_rate")]
    pub messages_per_sec: u32,
    /// Messages a session may send in a burst.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Bytes of messages that may wait; when full, the session stops reading
    /// its socket (pings are answered again as soon as it reads).
    #[serde(default = "default_inbox_bytes")]
    pub inbox_bytes: usize,
    /// A session that stays behind its rate this long is closed with 1008.
    #[serde(default = "default_close_after")]
    pub close_after_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            messages_per_sec: default_rate(),
            burst: default_burst(),
            inbox_bytes: default_inbox_bytes(),
            close_after_secs: default_close_after(),
        }
    }
}

impl LimitsConfig {
    /// The settings of one session's inbox, reading `clock`.
    pub fn rate(&self, clock: &crate::limits::Clock) -> crate::limits::RateSettings {
        crate::limits::RateSettings {
            clock: clock.clone(),
            per_second: self.messages_per_sec,
            burst: self.burst,
            inbox_bytes: self.inbox_bytes,
            close_after: std::time::Duration::from_secs(self.close_after_secs),
        }
    }
}

/// `auth:` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a token from every WebSocket peer and gRPC caller.
    #[serde(default)]
    pub enabled: bool,
    /// Shared secret for HS256 tokens (also used by `pilot-center token`).
    #[serde(default)]
    pub hs256_secret: String,
    /// PEM public key (RSA or EC) for RS256/ES256 tokens.
    #[serde(default)]
    pub public_key_path: PathBuf,
    /// A JWKS file (JSON `{"keys": [...]}`) of RSA or EC public keys for
    /// RS256/ES256 tokens; read at start, never fetched.
    #[serde(default)]
    pub jwks_path: PathBuf,
    /// When set, a token must carry this `aud`.
    #[serde(default)]
    pub audience: String,
    /// When set, a token must carry this `iss`.
    #[serde(default)]
    pub issuer: String,
    /// Also require an admin token for gRPC reflection and health.
    #[serde(default)]
    pub protect_grpc_reflection: bool,
}

/// `websocket:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Address to listen on.
    pub listen_ip: IpAddr,
    /// Port to listen on (0 picks a free one).
    pub listen_port: u16,
    /// PEM certificate chain; with `key_path`, enables wss.
    #[serde(default)]
    pub cert_path: PathBuf,
    /// PEM private key.
    #[serde(default)]
    pub key_path: PathBuf,
    /// Development only: when no certificate is configured, serve wss with a
    /// self-signed certificate generated at start-up.
    #[serde(default)]
    pub self_signed: bool,
    /// Largest message accepted from a peer, in bytes; larger closes the
    /// session with 1009.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Bytes queued to one session before it counts as a slow consumer (an
    /// item is always accepted by an empty queue).
    #[serde(default = "default_outbound_max_bytes")]
    pub outbound_max_bytes: usize,
    /// Seconds a write to the peer may take before the session counts as a
    /// slow consumer (what waits behind it is that old).
    #[serde(default = "default_outbound_max_delay")]
    pub outbound_max_delay_secs: u64,
    /// Seconds between the center's pings.
    #[serde(default = "default_ping_interval")]
    pub ping_interval_secs: u64,
    /// Seconds a peer may stay silent after a ping before it is dropped.
    #[serde(default = "default_pong_timeout")]
    pub pong_timeout_secs: u64,
    /// Seconds for the TLS handshake and the HTTP upgrade request.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
    /// Most concurrent sessions (0: no limit); beyond, HTTP 503.
    #[serde(default)]
    pub max_sessions: usize,
    /// Most concurrent sessions from one peer address (0: no limit);
    /// beyond, HTTP 429.
    #[serde(default)]
    pub max_sessions_per_ip: usize,
    /// Most connections between accept and the end of their upgrade (TLS
    /// and HTTP), in all (0: no limit); beyond, a new connection is closed
    /// at once. Bounds the work anyone can cause before authenticating.
    #[serde(default = "default_max_pending_handshakes")]
    pub max_pending_handshakes: usize,
    /// The same, from one peer address (0: no limit), so one address cannot
    /// take every place.
    #[serde(default = "default_max_pending_per_ip")]
    pub max_pending_handshakes_per_ip: usize,
    /// New connections one peer address may open per second, on average
    /// (0: no limit); beyond, they are closed at once.
    #[serde(default = "default_connections_per_ip")]
    pub connections_per_ip_per_sec: u32,
    /// Connections one address may open at once above that rate.
    #[serde(default = "default_connection_burst")]
    pub connection_burst_per_ip: u32,
}

fn default_max_pending_handshakes() -> usize {
    4096
}
fn default_max_pending_per_ip() -> usize {
    256
}
fn default_connections_per_ip() -> u32 {
    100
}
fn default_connection_burst() -> u32 {
    1000
}

/// `grpc:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcConfig {
    /// Serve gRPC at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Address to listen on.
    #[serde(default = "loopback")]
    pub listen_ip: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[serde(default = "default_grpc_port")]
    pub listen_port: u16,
    /// PEM certificate chain; with `key_path`, enables TLS.
    #[serde(default)]
    pub cert_path: PathBuf,
    /// PEM private key.
    #[serde(default)]
    pub key_path: PathBuf,
    /// Messages buffered in each `PeerSession` stream (and per event
    /// watcher) on their way to HTTP/2. A full `PeerSession` buffer makes the
    /// session wait for its peer, up to `outbound_max_delay_secs`.
    #[serde(default = "default_outbound_queue")]
    pub outbound_queue: usize,
    /// Bytes queued to one `PeerSession` before it counts as a slow consumer
    /// (as `websocket.outbound_max_bytes`).
    #[serde(default = "default_outbound_max_bytes")]
    pub outbound_max_bytes: usize,
    /// Seconds a `PeerSession` may wait for its peer to take a message before
    /// it counts as a slow consumer (as `websocket.outbound_max_delay_secs`).
    #[serde(default = "default_outbound_max_delay")]
    pub outbound_max_delay_secs: u64,
    /// Seconds between HTTP/2 pings to each gRPC peer (0: none).
    #[serde(default = "default_keepalive_interval")]
    pub keepalive_interval_secs: u64,
    /// Seconds without an answer to an HTTP/2 ping before the connection
    /// (and its `PeerSession`s) is closed.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout_secs: u64,
    /// Most open connections (0: no limit); beyond, closed at once.
    #[serde(default = "default_grpc_connections")]
    pub max_connections: usize,
    /// Most open connections from one peer address (0: no limit).
    #[serde(default = "default_grpc_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Most concurrent calls on one connection (HTTP/2 streams).
    #[serde(default = "default_grpc_streams")]
    pub max_concurrent_streams: u32,
    /// Most `PeerSession`s at once (0: no limit); beyond, RESOURCE_EXHAUSTED.
    #[serde(default = "default_grpc_peer_sessions")]
    pub max_peer_sessions: usize,
    /// Most `WatchEvents` streams at once (0: no limit); beyond,
    /// RESOURCE_EXHAUSTED.
    #[serde(default = "default_grpc_watchers")]
    pub max_watchers: usize,
    /// Seconds a new connection has to start its handshake (TLS or the
    /// HTTP/2 preface).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout_secs: u64,
}

fn default_grpc_connections() -> usize {
    4096
}
fn default_grpc_connections_per_ip() -> usize {
    256
}
fn default_grpc_streams() -> u32 {
    256
}
fn default_grpc_peer_sessions() -> usize {
    10_000
}
fn default_grpc_watchers() -> usize {
    64
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen_ip: loopback(),
            listen_port: default_grpc_port(),
            cert_path: PathBuf::new(),
            key_path: PathBuf::new(),
            outbound_queue: default_outbound_queue(),
            outbound_max_bytes: default_outbound_max_bytes(),
            outbound_max_delay_secs: default_outbound_max_delay(),
            keepalive_interval_secs: default_keepalive_interval(),
            keepalive_timeout_secs: default_keepalive_timeout(),
            max_connections: default_grpc_connections(),
            max_connections_per_ip: default_grpc_connections_per_ip(),
            max_concurrent_streams: default_grpc_streams(),
            max_peer_sessions: default_grpc_peer_sessions(),
            max_watchers: default_grpc_watchers(),
            handshake_timeout_secs: default_handshake_timeout(),
        }
    }
}

/// `center:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CenterSection {
    /// Seconds to wait for an MSU's answer to `invite` (then logged).
    #[serde(default = "default_invite_timeout")]
    pub invite_timeout_secs: u64,
    /// Events buffered per event-feed watcher before it is told it lagged.
    #[serde(default = "default_feed_capacity")]
    pub event_feed_capacity: usize,
    /// Events kept for watchers that resume from a cursor (`WatchEvents`
    /// `after`); an older cursor gets OUT_OF_RANGE.
    #[serde(default = "default_event_log")]
    pub event_log_capacity: usize,
    /// Most rooms one session may put users into (0: no limit).
    #[serde(default)]
    pub max_rooms_per_session: usize,
    /// Most users one session may carry (0: no limit).
    #[serde(default)]
    pub max_users_per_session: usize,
    /// Seconds to finish in-flight work on SIGTERM/SIGINT before exiting.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_secs: u64,
    /// Seconds the users of an ended session wait, with their pushers, for
    /// a session with the same identity (0: they leave with it).
    #[serde(default = "default_reconnect_grace")]
    pub reconnect_grace_secs: u64,
    /// A `join` of a user another live session speaks for: `replace` moves
    /// it, `reject` refuses with 409.
    #[serde(default)]
    pub duplicate_user: crate::center::DuplicatePolicy,
    /// Where a single center keeps its state, so a restart loses nothing
    /// (relative to the configuration file's folder; "" keeps it in memory
    /// only). Not used by a cluster node (Redis keeps the state).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// When changes reach the disk in `state_dir`: `always` (each change
    /// synced before it takes effect), `batch` (synced every 10 ms) or
    /// `never` (written every 10 ms, synced by the OS).
    #[serde(default)]
    pub fsync: crate::store::file::Fsync,
    /// Changes between snapshots of `state_dir` (each lets the log before
    /// it go).
    #[serde(default = "default_state_snapshot_every")]
    pub snapshot_every: u64,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("state")
}

fn default_state_snapshot_every() -> u64 {
    100_000
}

impl Default for CenterSection {
    fn default() -> Self {
        Self {
            invite_timeout_secs: default_invite_timeout(),
            event_feed_capacity: default_feed_capacity(),
            event_log_capacity: default_event_log(),
            max_rooms_per_session: 0,
            max_users_per_session: 0,
            shutdown_grace_secs: default_shutdown_grace(),
            reconnect_grace_secs: default_reconnect_grace(),
            duplicate_user: crate::center::DuplicatePolicy::default(),
            state_dir: default_state_dir(),
            fsync: crate::store::file::Fsync::default(),
            snapshot_every: default_state_snapshot_every(),
        }
    }
}

fn default_event_log() -> usize {
    10_000
}

fn default_reconnect_grace() -> u64 {
    30
}

fn yes() -> bool {
    true
}
fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}
fn default_grpc_port() -> u16 {
    9444
}
fn default_max_message_size() -> usize {
    1 << 20
}
// A mass event (an SFU with 20,000 users dropping) is ~2 MB of
// userDisconnect per other SFU: far below this.
fn default_outbound_max_bytes() -> usize {
    32 << 20
}
fn default_outbound_max_delay() -> u64 {
    30
}
// A vanished PeerSession peer is closed within 10 + 20 s (its users then
// follow the reconnect grace).
fn default_keepalive_interval() -> u64 {
    10
}
fn default_keepalive_timeout() -> u64 {
    20
}
fn default_outbound_queue() -> usize {
    4096
}
fn default_ping_interval() -> u64 {
    30
}
fn default_pong_timeout() -> u64 {
    20
}
fn default_handshake_timeout() -> u64 {
    5
}
fn default_invite_timeout() -> u64 {
    10
}
fn default_feed_capacity() -> usize {
    4096
}
fn default_shutdown_grace() -> u64 {
    10
}
fn default_admin_port() -> u16 {
    9445
}
// One SFU session carries all its users: a reconnect storm of 10,000
// userReConnect + 10,000 push in one second fits in the burst.
fn default_rate() -> u32 {
    10_000
}
fn default_burst() -> u32 {
    20_000
}
fn default_inbox_bytes() -> usize {
    8 << 20
}
fn default_close_after() -> u64 {
    30
}

impl WebSocketConfig {
    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_ip, self.listen_port)
    }
    /// Ping interval.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }
    /// Pong timeout.
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_secs(self.pong_timeout_secs)
    }
    /// Handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
}

impl GrpcConfig {
    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.listen_ip, self.listen_port)
    }
}

/// The shortest HS256 secret accepted (RFC 7518 §3.2: a key as long as
/// the hash).
pub const MIN_HS256_SECRET: usize = 32;

impl Config {
    /// Reads and checks `path`; relative certificate paths resolve against
    /// the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let mut config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { key, message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                key,
                message,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut config.websocket.cert_path,
            &mut config.websocket.key_path,
            &mut config.grpc.cert_path,
            &mut config.grpc.key_path,
            &mut config.auth.public_key_path,
            &mut config.auth.jwks_path,
            &mut config.admin.cert_path,
            &mut config.admin.key_path,
            &mut config.center.state_dir,
        ] {
            if !p.as_os_str().is_empty() && p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(config)
    }

    /// Parses and checks YAML text (paths are left as written).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = match e.path().to_string() {
                p if p == "." => "(top level)".to_owned(),
                p => p,
            };
            let message = e.into_inner().to_string();
            // The YAML error may already start with the key: say it once.
            let message = message
                .strip_prefix(&format!("{key}: "))
                .map_or_else(|| message.clone(), str::to_owned);
            ConfigError::Parse {
                path: PathBuf::new(),
                key,
                message,
            }
        })?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let ws = &self.websocket;
        if ws.cert_path.as_os_str().is_empty() != ws.key_path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "websocket.cert_path",
                reason: "cert_path and key_path must both be set (wss) or both be empty (ws)"
                    .into(),
            });
        }
        let a = &self.auth;
        if a.enabled
            && a.hs256_secret.is_empty()
            && a.public_key_path.as_os_str().is_empty()
            && a.jwks_path.as_os_str().is_empty()
        {
            return Err(ConfigError::Invalid {
                key: "auth.enabled",
                reason: "auth needs hs256_secret, public_key_path or jwks_path".into(),
            });
        }
        if !a.hs256_secret.is_empty() && a.hs256_secret.len() < MIN_HS256_SECRET {
            // A short shared secret can be found by brute force from one token.
            return Err(ConfigError::Invalid {
                key: "auth.hs256_secret",
                reason: format!(
                    "at least {MIN_HS256_SECRET} bytes (256 bits) for HS256, e.g. `openssl rand -hex 32`"
                ),
            });
        }
        let ad = &self.admin;
        if ad.cert_path.as_os_str().is_empty() != ad.key_path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "admin.cert_path",
                reason: "cert_path and key_path must both be set (https) or both be empty".into(),
            });
        }
        let g = &self.grpc;
        if g.cert_path.as_os_str().is_empty() != g.key_path.as_os_str().is_empty() {
            return Err(ConfigError::Invalid {
                key: "grpc.cert_path",
                reason: "cert_path and key_path must both be set (TLS) or both be empty".into(),
            });
        }
        for (key, value) in [
            ("websocket.max_message_size", ws.max_message_size),
            ("websocket.outbound_max_bytes", ws.outbound_max_bytes),
            ("grpc.outbound_queue", g.outbound_queue),
            ("grpc.outbound_max_bytes", g.outbound_max_bytes),
            (
                "center.event_feed_capacity",
                self.center.event_feed_capacity,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be greater than 0".into(),
                });
            }
        }
        for (key, value) in [
            ("websocket.ping_interval_secs", ws.ping_interval_secs),
            ("websocket.pong_timeout_secs", ws.pong_timeout_secs),
            (
                "websocket.handshake_timeout_secs",
                ws.handshake_timeout_secs,
            ),
            (
                "center.invite_timeout_secs",
                self.center.invite_timeout_secs,
            ),
            ("cluster.node_ttl_secs", self.cluster.node_ttl_secs),
            (
                "cluster.store_timeout_secs",
                self.cluster.store_timeout_secs,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    key,
                    reason: "must be at least 1 second".into(),
                });
            }
        }
        let c = &self.cluster;
        if c.snapshot_every < 10 {
            return Err(ConfigError::Invalid {
                key: "cluster.snapshot_every",
                reason: "must be at least 10 entries".into(),
            });
        }
        let redis_scheme = |url: &str| url.starts_with("redis://") || url.starts_with("rediss://");
        if !c.redis_url.is_empty() && !redis_scheme(&c.redis_url) {
            return Err(ConfigError::Invalid {
                key: "cluster.redis_url",
                reason: "must start with redis:// or rediss://".into(),
            });
        }
        if c.sentinels.iter().any(|u| !redis_scheme(u)) {
            return Err(ConfigError::Invalid {
                key: "cluster.sentinels",
                reason: "each must start with redis:// or rediss://".into(),
            });
        }
        if c.sentinels.is_empty() != c.sentinel_master.is_empty() {
            return Err(ConfigError::Invalid {
                key: "cluster.sentinel_master",
                reason: "is needed with cluster.sentinels, and only with them".into(),
            });
        }
        if c.key_prefix.is_empty() || c.key_prefix.contains(['{', '}']) {
            return Err(ConfigError::Invalid {
                key: "cluster.key_prefix",
                reason: "must be non-empty, without braces".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "websocket:\n  listen_ip: \"0.0.0.0\"\n  listen_port: 9443\n  cert_path: \"\"\n  key_path: \"\"\n";

    #[test]
    fn sentinels_need_a_master_name_and_redis_urls() {
        let with = |cluster: &str| Config::parse(&format!("{MINIMAL}cluster:\n{cluster}"));
        let ok =
            with("  sentinels: [\"redis://127.0.0.1:26379\"]\n  sentinel_master: pilot\n").unwrap();
        assert!(ok.cluster.enabled());
        assert!(with("  sentinels: [\"redis://127.0.0.1:26379\"]\n").is_err());
        assert!(with("  sentinel_master: pilot\n").is_err());
        assert!(with("  sentinels: [\"127.0.0.1:26379\"]\n  sentinel_master: pilot\n").is_err());
        assert!(!with("  node_id: n\n").unwrap().cluster.enabled());
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.websocket.listen_port, 9443);
        assert_eq!(c.websocket.max_message_size, 1 << 20);
        assert_eq!(c.websocket.ping_interval_secs, 30);
        assert_eq!(c.grpc.listen_port, 9444);
        assert_eq!(c.center.invite_timeout_secs, 10);
    }

    #[test]
    fn errors_name_the_key() {
        let bad_port = MINIMAL.replace("9443", "\"abc\"");
        let e = Config::parse(&bad_port).unwrap_err().to_string();
        assert!(e.contains("websocket.listen_port"), "{e}");
        let unknown = format!("{MINIMAL}  listen_prot: 1\n");
        let e = Config::parse(&unknown).unwrap_err().to_string();
        assert!(e.contains("listen_prot"), "{e}");
        let half_tls = MINIMAL.replace("cert_path: \"\"", "cert_path: \"a.pem\"");
        let e = Config::parse(&half_tls).unwrap_err().to_string();
        assert!(e.contains("websocket.cert_path"), "{e}");
        let e = Config::parse("grpc: {}\n").unwrap_err().to_string();
        assert!(e.contains("websocket"), "{e}");
    }

    #[test]
    fn short_hs256_secrets_are_refused() {
        let yaml = |secret: &str| {
            format!(
                "websocket:\n  listen_ip: 127.0.0.1\n  listen_port: 0\nauth:\n  enabled: true\n  hs256_secret: \"{secret}\"\n"
            )
        };
        let err = Config::parse(&yaml(&"x".repeat(31)))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("auth.hs256_secret") && err.contains("32 bytes"),
            "{err}"
        );
        assert!(Config::parse(&yaml(&"x".repeat(32))).is_ok());
    }

    #[test]
    fn relative_paths_resolve_against_the_file() {
        let dir = std::env::temp_dir().join(format!("pilot-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        std::fs::write(
            &file,
            MINIMAL
                .replace("cert_path: \"\"", "cert_path: \"c.pem\"")
                .replace("key_path: \"\"", "key_path: \"/abs/k.pem\""),
        )
        .unwrap();
        let c = Config::load(&file).unwrap();
        assert_eq!(c.websocket.cert_path, dir.join("c.pem"));
        assert_eq!(c.websocket.key_path, PathBuf::from("/abs/k.pem"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
