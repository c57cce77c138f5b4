//! # Pilot Center
//!
//! A signaling center for WebRTC media servers. SFUs, MSUs and clients speak
//! protoo JSON over WebSocket (`/pilot/center`); backends speak gRPC. Both
//! front ends drive one room service.
//!
//! # Layout
//! - [`protoo`]: the protoo wire format (parse and write frames), no I/O.
//! - [`translate`]: protoo JSON ⇄ the protobuf commands and events of [`proto`].
//! - [`center`]: the room service: rooms, users, pushers, MSUs, sessions and
//!   the event feed. State and rules, no sockets.
//! - [`transport`]: WebSocket front end: accept, TLS, our own HTTP upgrade
//!   ([`transport::handshake`]), one task pair per session, bounded queues.
//! - [`outbox`]: a peer session's outbound queue, bounded in bytes, for both
//!   front ends.
//! - [`grpc`]: the gRPC front end: the same room service over tonic, with
//!   reflection and health.
//! - [`auth`]: JWT tokens and what each role may do; [`limits`]: per-session
//!   rate limits. Both enforced the same way for both front ends.
//! - [`admin`]: the HTTP admin listener (`/metrics`, `/healthz`, `/readyz`);
//!   [`metrics`]: the Prometheus registry.
//! - [`operator`]: the operator CLI, a gRPC client; [`view`]: listings and
//!   events as tables and JSON, for the CLI and the admin page.
//! - [`config`]: `center.yaml`. [`tls`]: certificates. [`server`]: wiring of
//!   listeners and graceful shutdown. [`telemetry`]: logging.
//! - `main.rs`: the command line, nothing else.

pub mod admin;
pub mod auth;
pub mod center;
pub mod clock;
pub mod config;
pub mod error;
pub mod grpc;
pub mod limits;
pub mod metrics;
pub mod operator;
pub mod outbox;
pub mod protoo;
pub mod server;
pub mod telemetry;
pub mod tls;
pub mod translate;
pub mod transport;
pub mod view;

/// Code generated from `proto/pilot/v1/center.proto`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("pilot.v1");

    /// The encoded descriptor set, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pilot_descriptor");

    impl Transport {
        /// The name operators see: `ws`, `wss`, `grpc` (`other` when unset).
        pub fn short_name(self) -> &'static str {
            match self {
                Self::Ws => "ws",
                Self::Wss => "wss",
                Self::Grpc => "grpc",
                Self::Unspecified => "other",
            }
        }
    }
}
