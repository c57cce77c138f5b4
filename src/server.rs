//! Wiring: binds the listeners, starts both front ends on one [`Center`],
//! and shuts everything down in order.
//!
//! One shutdown path: a [`CancellationToken`] reaches every accept loop,
//! session and stream; a [`TaskTracker`] tells when they have all finished.

use crate::admin::{self, AdminState};
use crate::auth::{self, AuthError, AuthSettings, Authenticator};
use crate::center::{Center, CenterConfig};
use crate::clock::Clock;
use crate::config::Config;
use crate::grpc::{AuthInterceptor, GrpcSettings, RoomServiceImpl};
use crate::tls::{PemPair, TlsError};
use crate::transport::{self, Gateway, GatewayOptions};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {error}{hint}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
        /// Extra advice (e.g. the port is in use).
        hint: &'static str,
    },
    /// TLS could not be set up.
    #[error("{what}: {error}")]
    Tls {
        /// Which listener.
        what: &'static str,
        /// Why.
        error: TlsError,
    },
    /// The gRPC server failed to start.
    #[error("gRPC: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Authentication could not be set up.
    #[error("auth: {0}")]
    Auth(#[from] AuthError),
    /// The cluster could not be joined.
    #[error(transparent)]
    Cluster(#[from] crate::store::redis::ClusterError),
    /// The state directory could not be used.
    #[error(transparent)]
    State(#[from] crate::store::file::FileStoreError),
}

/// A running center: both listeners and the room service.
pub struct Server {
    center: Center,
    ws_addr: SocketAddr,
    ws_tls: bool,
    grpc_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    admin_task: Option<tokio::task::JoinHandle<()>>,
    /// Stops the listeners, sessions and streams.
    shutdown: CancellationToken,
    /// Stops the admin listener (last).
    admin_stop: CancellationToken,
    ready: Arc<AtomicBool>,
    tracker: TaskTracker,
    /// Stops a cluster node's log tasks (after the sessions).
    cluster_stop: CancellationToken,
    cluster_tracker: TaskTracker,
}

/// Binds `addr`; returns the listener and the address it got (port 0 picks one).
async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let fail = |error: std::io::Error| StartError::Bind {
        what,
        addr,
        hint: if error.kind() == std::io::ErrorKind::AddrInUse {
            " (is another center already running?)"
        } else {
            ""
        },
        error,
    };
    let listener = TcpListener::bind(addr).await.map_err(fail)?;
    let local = listener.local_addr().map_err(fail)?;
    Ok((listener, local))
}

fn authenticator(config: &Config) -> Result<Option<Arc<Authenticator>>, StartError> {
    let a = &config.auth;
    if !a.enabled {
        return Ok(None);
    }
    let public_key_pem = if a.public_key_path.as_os_str().is_empty() {
        None
    } else {
        Some(auth::read_key(&a.public_key_path)?)
    };
    let jwks_json = if a.jwks_path.as_os_str().is_empty() {
        None
    } else {
        Some(auth::read_key(&a.jwks_path)?)
    };
    let settings = AuthSettings {
        hs256_secret: a.hs256_secret.clone(),
        public_key_pem,
        jwks_json,
        audience: a.audience.clone(),
        issuer: a.issuer.clone(),
    };
    Ok(Some(Arc::new(Authenticator::new(&settings)?)))
}

async fn start_grpc(
    config: &Config,
    center: &Center,
    auth: Option<Arc<Authenticator>>,
    invite_timeout: Duration,
    clock: &Clock,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<SocketAddr, StartError> {
    let g = &config.grpc;
    let auth_off = auth.is_none();
    let (listener, addr) = bind("grpc", g.addr()).await?;
    let pem = pem_pair("grpc", &g.cert_path, &g.key_path, false)?;
    let service = RoomServiceImpl::new(
        center.clone(),
        GrpcSettings {
            queue: g.outbound_queue,
            max_bytes: g.outbound_max_bytes,
            max_delay: Duration::from_secs(g.outbound_max_delay_secs),
            clock: clock.clone(),
            invite_timeout,
            rate: config.limits.rate(clock),
            max_peer_sessions: g.max_peer_sessions,
            max_watchers: g.max_watchers,
        },
        shutdown.clone(),
        tracker.clone(),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<crate::proto::room_service_server::RoomServiceServer<RoomServiceImpl>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    // Reflection and health stay open unless the operator protects them.
    let guard = (config.auth.protect_grpc_reflection && auth.is_some()).then(|| auth.clone());
    let open = AuthInterceptor::new(guard.clone().flatten(), guard.is_some());
    // HTTP/2 keepalive finds PeerSession peers that vanished without a word.
    let keepalive =
        (g.keepalive_interval_secs > 0).then(|| Duration::from_secs(g.keepalive_interval_secs));
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(g.max_concurrent_streams.max(1)))
        .http2_keepalive_interval(keepalive)
        .http2_keepalive_timeout(Some(Duration::from_secs(g.keepalive_timeout_secs.max(1))));
    if let Some(pem) = &pem {
        builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&pem.cert_pem, &pem.key_pem),
        ))?;
    }
    let router = builder
        .add_service(service.into_server(auth))
        .add_service(InterceptedService::new(health_service, open.clone()))
        .add_service(InterceptedService::new(reflection_v1, open.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, open));
    let stop = shutdown.clone();
    let (g_max, g_max_per_ip) = (g.max_connections, g.max_connections_per_ip);
    let handshake = Duration::from_secs(g.handshake_timeout_secs.max(1));
    let metrics = center.metrics().clone();
    tracker.spawn(async move {
        // Bounded before anyone shows a token: connections in all and per
        // address, and each must start its handshake in time.
        let incoming = crate::admission::admitted(
            listener,
            crate::admission::Slots::new(g_max, g_max_per_ip),
            handshake,
            metrics,
            ["grpc_full", "grpc_per_ip"],
        );
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
        tracing::info!("grpc listener stopped");
    });
    tracing::info!(addr = %addr, tls = pem.is_some(), "grpc listening");
    if auth_off && !addr.ip().is_loopback() {
        tracing::warn!(
            listener = "grpc",
            addr = %addr,
            "authentication is off on a non-loopback gRPC listener: any caller that reaches it may \
             open PeerSessions, kick users and close rooms. Set auth.enabled (see README, auth)."
        );
    }
    Ok(addr)
}

fn pem_pair(
    what: &'static str,
    cert: &std::path::Path,
    key: &std::path::Path,
    self_signed: bool,
) -> Result<Option<PemPair>, StartError> {
    let tls = |error| StartError::Tls { what, error };
    if !cert.as_os_str().is_empty() {
        return PemPair::load(cert, key).map(Some).map_err(tls);
    }
    if self_signed {
        tracing::warn!(
            "{what}: serving TLS with a DEVELOPMENT certificate generated at start-up (self-signed, \
             valid for localhost and 127.0.0.1): the RTCPilot SFU accepts it, browsers and \
             verifying clients do not. Set {what}.cert_path and key_path to a real certificate."
        );
        return PemPair::self_signed(&["localhost", "127.0.0.1"])
            .map(Some)
            .map_err(tls);
    }
    Ok(None)
}

impl Server {
    /// Binds every configured listener and starts serving.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        Self::start_with_clock(config, Clock::system()).await
    }

    /// Like [`Server::start`], with rate limits reading `clock` (a manual
    /// clock makes them exact in tests).
    pub async fn start_with_clock(config: &Config, clock: Clock) -> Result<Self, StartError> {
        let center_config = CenterConfig {
            feed_capacity: config.center.event_feed_capacity,
            event_log_capacity: config.center.event_log_capacity,
            max_rooms_per_session: config.center.max_rooms_per_session,
            max_users_per_session: config.center.max_users_per_session,
            reconnect_grace: Duration::from_secs(config.center.reconnect_grace_secs),
            duplicate_user: config.center.duplicate_user,
            clock: clock.clone(),
        };
        // A cluster node's log tasks outlive its sessions: the sessions'
        // closings still go to the log after `shutdown`.
        let cluster_stop = CancellationToken::new();
        let cluster_tracker = TaskTracker::new();
        let center = if config.cluster.enabled() {
            crate::store::redis::join(
                &config.cluster,
                |store, from_log| {
                    let center = Center::with_store(center_config, store);
                    center.follow(from_log);
                    center
                },
                &cluster_stop,
                &cluster_tracker,
            )
            .await?
            .built
        } else if config.center.state_dir.as_os_str().is_empty() {
            tracing::info!(
                "state in memory only (center.state_dir is empty): a restart forgets every room"
            );
            Center::new(center_config)
        } else {
            let store = crate::store::file::FileStoreConfig {
                dir: config.center.state_dir.clone(),
                fsync: config.center.fsync,
                snapshot_every: config.center.snapshot_every,
            };
            // Blocking file work, once, before anything is served.
            crate::store::file::open(&store, |store| Center::with_store(center_config, store))?.0
        };
        cluster_tracker.close();
        let shutdown = CancellationToken::new();
        let admin_stop = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(false));
        let tracker = TaskTracker::new();
        let invite_timeout = Duration::from_secs(config.center.invite_timeout_secs);
        let auth = authenticator(config)?;

        let ws = &config.websocket;
        let ws_pem = pem_pair("websocket", &ws.cert_path, &ws.key_path, ws.self_signed)?;
        let ws_tls = ws_pem
            .as_ref()
            .map(PemPair::server_config)
            .transpose()
            .map_err(|error| StartError::Tls {
                what: "websocket",
                error,
            })?;
        let (ws_listener, ws_addr) = bind("websocket", ws.addr()).await?;
        let gateway = Arc::new(Gateway::new(
            center.clone(),
            ws.clone(),
            GatewayOptions {
                invite_timeout,
                tls: ws_tls.clone(),
                auth: auth.clone(),
                rate: config.limits.rate(&clock),
            },
        ));
        tracker.spawn(center.clone().run_grace_timer(shutdown.clone()));
        tracker.spawn(transport::serve(
            ws_listener,
            gateway,
            shutdown.clone(),
            tracker.clone(),
        ));
        tracing::info!(addr = %ws_addr, tls = ws_tls.is_some(), path = transport::PATH, auth = auth.is_some(), "websocket listening");
        if auth.is_none() && !ws_addr.ip().is_loopback() {
            tracing::warn!(
                listener = "websocket",
                addr = %ws_addr,
                "authentication is off on a non-loopback listener: any peer that reaches it may join \
                 any room, register MSUs and speak for any user. Set auth.enabled (see README, auth)."
            );
        }

        let grpc_addr = if config.grpc.enabled {
            Some(
                start_grpc(
                    config,
                    &center,
                    auth.clone(),
                    invite_timeout,
                    &clock,
                    &shutdown,
                    &tracker,
                )
                .await?,
            )
        } else {
            None
        };

        let admin = if config.admin.enabled {
            let (listener, addr) = bind("admin", config.admin.addr()).await?;
            let state = AdminState {
                center: center.clone(),
                ready: ready.clone(),
                auth: auth.clone(),
            };
            let a = &config.admin;
            let pem = pem_pair("admin", &a.cert_path, &a.key_path, false)?;
            let tls = pem
                .as_ref()
                .map(PemPair::server_config)
                .transpose()
                .map_err(|error| StartError::Tls {
                    what: "admin",
                    error,
                })?;
            let options = admin::AdminOptions {
                tls,
                max_connections: a.max_connections,
                max_connections_per_ip: a.max_connections_per_ip,
                max_event_streams: a.max_event_streams,
                handshake_timeout: Duration::from_secs(a.handshake_timeout_secs.max(1)),
            };
            let task = tokio::spawn(admin::serve(listener, state, options, admin_stop.clone()));
            tracing::info!(addr = %addr, tls = pem.is_some(), "admin listening (/ admin page, /metrics, /healthz, /readyz)");
            if auth.is_none() && !addr.ip().is_loopback() {
                tracing::warn!(
                    addr = %addr,
                    "authentication is off on a non-loopback admin listener: its page and API answer \
                     loopback peers only; /metrics, /healthz and /readyz answer anyone. Set \
                     auth.enabled to use the page from elsewhere."
                );
            }
            Some((addr, task))
        } else {
            None
        };
        let (admin_addr, admin_task) = admin.unzip();
        tracker.close();
        ready.store(true, Ordering::Relaxed);
        Ok(Self {
            center,
            ws_addr,
            ws_tls: ws_tls.is_some(),
            grpc_addr,
            admin_addr,
            admin_task,
            shutdown,
            admin_stop,
            ready,
            tracker,
            cluster_stop,
            cluster_tracker,
        })
    }

    /// The room service.
    pub fn center(&self) -> &Center {
        &self.center
    }

    /// Where the WebSocket listener is bound.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The WebSocket URL of this server.
    pub fn ws_url(&self) -> String {
        let scheme = if self.ws_tls { "wss" } else { "ws" };
        format!("{scheme}://{}{}", self.ws_addr, transport::PATH)
    }

    /// Where the gRPC listener is bound, when enabled.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// Where the admin listener is bound, when enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Whether `/readyz` reports ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Stops accepting, closes sessions with 1001 and streams with
    /// `UNAVAILABLE`, and waits up to `grace` for them; `/readyz` reports
    /// unready meanwhile. Returns whether everything finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.ready.store(false, Ordering::Relaxed);
        self.shutdown.cancel();
        let in_time = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        // Then a cluster node writes what its sessions' closings queued and
        // gives up its lease; a state directory keeps the final state.
        self.cluster_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.cluster_tracker.wait()).await;
        let center = self.center.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || center.close_store()).await {
            tracing::error!(error = %e, "cannot save the state");
        }
        // The admin listener closes last, so `/readyz` answers while draining.
        self.admin_stop.cancel();
        if let Some(task) = self.admin_task {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        in_time
    }
}
