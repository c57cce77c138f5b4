//! A center as one node of a cluster sharing its state in Redis
//! (docs/CLUSTER.md).
//!
//! Redis is the sequencer of one log: every change a node makes is an
//! [`Entry`](crate::store::Entry) appended to one stream (`XADD`, pipelined, one writer task per
//! node so a node's entries keep their order); every node tails the stream
//! (`XREAD BLOCK`) and hands every entry, in stream order, to the center,
//! which applies it with the same rules a single center runs: over one
//! channel ([`FromLog`]), never by calling the center. A node answers its
//! own peers' commands when it applies their entries, so the reply comes in
//! the same step as the notifications the command caused, on every node.
//!
//! Node leases: each node renews `{prefix}:node:N` every third of
//! `node_ttl_secs`; a node whose lease lapsed while others still list its
//! sessions is declared lost by an entry ("node lost"), which every node
//! applies: the lost node's users follow the reconnect grace.

use super::Store;
use crate::config::ClusterConfig;
use catch_up::{CatchUpError, catch_up};
use keys::Keys;
use leases::{Leaseholder, leases, new_lease};
use link::Target;
use redis::aio::ConnectionManagerConfig;
use snapshots::Snapshots;
use standing::{RedisStore, Standing};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use tailer::{Tailer, tail};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use writer::write_entries;

mod catch_up;
mod keys;
mod leases;
mod link;
mod scripts;
mod snapshots;
mod standing;
mod tailer;
mod to_state;
mod writer;

pub use to_state::FromLog;
use to_state::ToState;

/// Entries a node may have queued for Redis and not yet written; more are
/// refused with 503 "state store unavailable" (the store is too far behind).
const APPEND_QUEUE: usize = 65_536;
/// Entries written in one pipelined round trip at most.
const APPEND_BATCH: usize = 512;
/// Entries read in one `XREAD` at most.
const READ_BATCH: usize = 1_000;
/// How long one `XREAD` blocks waiting for new entries.
const READ_BLOCK_MS: u64 = 1_000;

/// Why a node could not join its cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Redis refused or could not be reached.
    #[error("redis {url}: {error}")]
    Redis {
        /// The configured URL, without credentials.
        url: String,
        /// Why.
        error: redis::RedisError,
    },
    /// Redis did not answer in time.
    #[error("redis {url}: no answer within {secs} s")]
    Timeout {
        /// The configured URL, without credentials.
        url: String,
        /// The bound.
        secs: u64,
    },
    /// The log holds an entry this node cannot read.
    #[error("redis {url}: unreadable log entry {id}: {reason}")]
    BadEntry {
        /// The configured URL, without credentials.
        url: String,
        /// The stream id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// A joined node: its state, caught up with the log, and its tasks.
pub struct Node<R> {
    /// What `build` made on the node's store (the room service), fed by
    /// the shared log.
    pub built: R,
    /// The node's id.
    pub id: String,
    /// The node's number in the cluster.
    pub number: u32,
}

/// The URL as logs may show it: no password.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// The default node id: host name and process id.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into());
    format!("{host}-{}", std::process::id())
}

/// Joins the cluster: takes a node number, builds the center on this
/// store and the receiving end of what the log hands it ([`FromLog`],
/// which the center applies in order), hands it the log up to its end (so
/// the node starts with the cluster's state) and starts the writer, the
/// tailer and the lease tasks on `tracker`; they stop on `shutdown`. Only
/// then may the node accept peers.
pub async fn join<R>(
    config: &ClusterConfig,
    build: impl FnOnce(Arc<dyn Store>, mpsc::Receiver<FromLog>) -> R,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Node<R>, ClusterError> {
    let url = if config.sentinels.is_empty() {
        redacted(&config.redis_url)
    } else {
        let sentinels: Vec<String> = config.sentinels.iter().map(|u| redacted(u)).collect();
        format!(
            "master {} of sentinels {}",
            config.sentinel_master,
            sentinels.join(",")
        )
    };
    let redis_err = |error| ClusterError::Redis {
        url: url.clone(),
        error,
    };
    let timeout = Duration::from_secs(config.store_timeout_secs);
    let bounded = |secs| ClusterError::Timeout {
        url: url.clone(),
        secs,
    };
    let target = tokio::time::timeout(
        timeout,
        Target::new(
            &config.redis_url,
            &config.sentinels,
            &config.sentinel_master,
            timeout,
        ),
    )
    .await
    .map_err(|_| bounded(config.store_timeout_secs))?
    .map_err(redis_err)?;
    let manager = |response: Duration| {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(response))
            .set_max_delay(Duration::from_secs(1))
    };
    let connect = |response| {
        let cfg = manager(response);
        let target = &target;
        async move { tokio::time::timeout(timeout, target.connect(cfg)).await }
    };
    let mut writer = connect(timeout)
        .await
        .map_err(|_| bounded(config.store_timeout_secs))?
        .map_err(redis_err)?;
    // The tailer's reads block up to READ_BLOCK_MS: its timeout is longer.
    let mut reader = connect(timeout + Duration::from_millis(READ_BLOCK_MS))
        .await
        .map_err(|_| bounded(config.store_timeout_secs))?
        .map_err(redis_err)?;
    // Snapshots (megabytes) go on a connection of their own, so that the
    // writer's appends never queue behind one.
    let snapshot_store = connect(timeout * 10)
        .await
        .map_err(|_| bounded(config.store_timeout_secs))?
        .map_err(redis_err)?;
    let keys = Keys::new(&config.key_prefix);
    let id = if config.node_id.is_empty() {
        default_node_id()
    } else {
        config.node_id.clone()
    };
    let ttl = Duration::from_secs(config.node_ttl_secs);
    let number = new_lease(&mut writer, &keys, &id, ttl, 0)
        .await
        .map_err(redis_err)?;
    let standing = Arc::new(Standing {
        healthy: AtomicBool::new(true),
        ..Standing::default()
    });
    standing.hold(number);
    let (tx, rx) = mpsc::channel(APPEND_QUEUE);
    let (to_state, from_log) = ToState::channel();
    let built = build(
        Arc::new(RedisStore {
            id: id.clone(),
            tx,
            standing: standing.clone(),
        }),
        from_log,
    );
    // Replay the log up to where it ends now, before serving anyone.
    let caught_up = catch_up(&mut reader, &mut writer, &keys, &standing, &to_state)
        .await
        .map_err(|e| match e {
            CatchUpError::Redis(error) => redis_err(error),
            CatchUpError::Unreadable { id, reason } => ClusterError::BadEntry {
                url: url.clone(),
                id,
                reason,
            },
        })?;
    tracing::info!(node.id = %id, node.number = number, redis = %url, "joined the cluster");
    caught_up
        .log(&to_state, &id, number, "joined the cluster")
        .await;
    let last = caught_up.last;
    // Reported before the replay; the tailer reports it again as it goes.
    let position = Arc::new(parking_lot::Mutex::new(last.clone()));

    tracker.spawn(write_entries(
        rx,
        writer.clone(),
        keys.clone(),
        to_state.clone(),
        standing.clone(),
        timeout,
        shutdown.clone(),
    ));
    tracker.spawn(tail(
        Tailer {
            conn: reader,
            node_id: id.clone(),
            writer: writer.clone(),
            keys: keys.clone(),
            to_state: to_state.clone(),
            standing: standing.clone(),
        },
        last,
        Snapshots {
            every: config.snapshot_every,
            seen: None,
            applied_since: 0,
            store: snapshot_store,
            node_id: id.clone(),
            position: position.clone(),
        },
        shutdown.clone(),
    ));
    tracker.spawn(leases(
        Leaseholder {
            conn: writer,
            keys,
            id: id.clone(),
            ttl,
            position,
            standing,
            to_state,
        },
        shutdown.clone(),
    ));
    Ok(Node { built, id, number })
}

#[cfg(test)]
mod tests {
    use super::catch_up::{passed, stream_ms};
    use super::*;

    #[test]
    fn urls_lose_their_passwords_in_logs() {
        assert_eq!(
            redacted("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn stream_ids_order_and_time() {
        assert_eq!(stream_ms("1700000000123-7"), 1_700_000_000_123);
        assert!(passed("5-1", "5-0"));
        assert!(passed("5-0", "5-0"));
        assert!(!passed("4-9", "5-0"));
        assert!(passed("10-0", "9-99"));
    }

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("pilot");
        for key in [
            &k.log,
            &k.node_numbers,
            &k.snapshot,
            &k.snapshot_lock,
            &k.trimmed,
            &k.positions,
            &k.leases,
            &k.node_ids,
            &k.renewed,
            &k.live_since,
        ] {
            assert!(key.starts_with("{pilot}:"), "{key}");
        }
        assert!(k.snapshot_data("1-0").starts_with("{pilot}:"));
    }
}
