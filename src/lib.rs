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
//! - [`store`]: what keeps the log of changes, three stores side by side:
//!   memory, the state directory where a single center keeps its log and
//!   snapshots (the default; `center.state_dir`), and Redis, where several
//!   centers share one log (docs/CLUSTER.md; off by default).
//! - [`ids`]: session ids and the epochs that keep them from repeating.
//! - [`config`]: `center.yaml`. [`tls`]: certificates. [`server`]: wiring of
//!   listeners and graceful shutdown. [`telemetry`]: logging.
//! - `main.rs`: the command line, nothing else.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod center;
pub mod clock;
pub mod config;
pub mod error;
pub mod grpc;
pub mod ids;
pub mod limits;
pub mod metrics;
pub mod operator;
pub mod outbox;
pub mod protoo;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod translate;
pub mod transport;
pub mod view;

/// Code generated from `proto/`, nested as the protobuf packages are (the
/// cluster's entries refer to `pilot.v1` types by relative path).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    /// Package `pilot`.
    pub mod pilot {
        /// Package `pilot.v1`: the API (see [`crate::proto`]).
        pub mod v1 {
            tonic::include_proto!("pilot.v1");

            /// The encoded descriptor set, for gRPC server reflection.
            pub const FILE_DESCRIPTOR_SET: &[u8] =
                tonic::include_file_descriptor_set!("pilot_descriptor");

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

        /// Package `pilot.cluster`.
        pub mod cluster {
            /// Package `pilot.cluster.v1`: the entries of the log several
            /// centers share (internal, not an API).
            pub mod v1 {
                tonic::include_proto!("pilot.cluster.v1");
            }
        }
    }
}

/// The cluster log's entries (`proto/pilot/cluster/v1/entry.proto`).
pub use pb::pilot::cluster::v1 as cluster_proto;
/// The API's messages and services (`proto/pilot/v1/center.proto`).
pub use pb::pilot::v1 as proto;
