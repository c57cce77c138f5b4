//! Wiring: binds the listeners, starts both front ends on one [`Center`],
//! and shuts everything down in order.
//!
//! One shutdown path: a [`CancellationToken`] reaches every accept loop,
//! session and stream; a [`TaskTracker`] tells when they have all finished.

use crate::center::{Center, CenterConfig};
use crate::config::Config;
use crate::grpc::{GrpcSettings, RoomServiceImpl};
use crate::tls::{PemPair, TlsError};
use crate::transport::{self, Gateway};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
}

/// A running center: both listeners and the room service.
pub struct Server {
    center: Center,
    ws_addr: SocketAddr,
    ws_tls: bool,
    grpc_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind {
            what,
            addr,
            hint: if error.kind() == std::io::ErrorKind::AddrInUse {
                " (is another center already running?)"
            } else {
                ""
            },
            error,
        })
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
        tracing::warn!("{what}: serving a self-signed certificate (development only)");
        return PemPair::self_signed(&["localhost", "127.0.0.1"])
            .map(Some)
            .map_err(tls);
    }
    Ok(None)
}

impl Server {
    /// Binds every configured listener and starts serving.
    pub async fn start(config: &Config) -> Result<Self, StartError> {
        let center = Center::new(CenterConfig {
            feed_capacity: config.center.event_feed_capacity,
            max_rooms_per_session: config.center.max_rooms_per_session,
            max_users_per_session: config.center.max_users_per_session,
        });
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        let invite_timeout = Duration::from_secs(config.center.invite_timeout_secs);

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
        let ws_listener = bind("websocket", ws.addr()).await?;
        let ws_addr = ws_listener.local_addr().map_err(|error| StartError::Bind {
            what: "websocket",
            addr: ws.addr(),
            error,
            hint: "",
        })?;
        let gateway = Arc::new(Gateway::new(
            center.clone(),
            ws.clone(),
            invite_timeout,
            ws_tls.clone(),
        ));
        tracker.spawn(transport::serve(
            ws_listener,
            gateway,
            shutdown.clone(),
            tracker.clone(),
        ));
        tracing::info!(addr = %ws_addr, tls = ws_tls.is_some(), path = transport::PATH, "websocket listening");

        let grpc_addr = if config.grpc.enabled {
            let g = &config.grpc;
            let listener = bind("grpc", g.addr()).await?;
            let addr = listener.local_addr().map_err(|error| StartError::Bind {
                what: "grpc",
                addr: g.addr(),
                error,
                hint: "",
            })?;
            let pem = pem_pair("grpc", &g.cert_path, &g.key_path, false)?;
            let service = RoomServiceImpl::new(
                center.clone(),
                GrpcSettings {
                    queue: g.outbound_queue,
                    invite_timeout,
                },
                shutdown.clone(),
            );
            let (health, health_service) = tonic_health::server::health_reporter();
            health.set_serving::<crate::proto::room_service_server::RoomServiceServer<RoomServiceImpl>>().await;
            let reflection_v1 = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .map_err(|e| StartError::Tls {
                    what: "reflection",
                    error: TlsError::Pem {
                        what: "descriptor",
                        reason: e.to_string(),
                    },
                })?;
            let reflection_v1alpha = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1alpha()
                .map_err(|e| StartError::Tls {
                    what: "reflection",
                    error: TlsError::Pem {
                        what: "descriptor",
                        reason: e.to_string(),
                    },
                })?;
            let mut builder = tonic::transport::Server::builder();
            if let Some(pem) = &pem {
                builder = builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(
                    tonic::transport::Identity::from_pem(&pem.cert_pem, &pem.key_pem),
                ))?;
            }
            let router = builder
                .add_service(service.into_server())
                .add_service(health_service)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha);
            let stop = shutdown.clone();
            tracker.spawn(async move {
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                if let Err(e) = router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await
                {
                    tracing::error!(error = %e, "gRPC server failed");
                }
                tracing::info!("grpc listener stopped");
            });
            tracing::info!(addr = %addr, tls = pem.is_some(), "grpc listening");
            Some(addr)
        } else {
            None
        };
        tracker.close();
        Ok(Self {
            center,
            ws_addr,
            ws_tls: ws_tls.is_some(),
            grpc_addr,
            shutdown,
            tracker,
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

    /// The token that stops everything; cancel it to begin shutting down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, closes sessions with 1001 and streams with
    /// `UNAVAILABLE`, and waits up to `grace` for them. Returns whether
    /// everything finished in time.
    pub async fn shutdown(self, grace: Duration) -> bool {
        self.shutdown.cancel();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}
