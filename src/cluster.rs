//! A center as one node of a cluster sharing its state in Redis
//! (docs/CLUSTER.md).
//!
//! Redis is the sequencer of one log: every change a node makes is an
//! [`Entry`] appended to one stream (`XADD`, pipelined, one writer task per
//! node so a node's entries keep their order); every node tails the stream
//! (`XREAD BLOCK`) and applies every entry, in stream order, with the same
//! rules a single center runs ([`Center::apply_logged`]). A node answers its
//! own peers' commands when it applies their entries, so the reply comes in
//! the same step as the notifications the command caused, on every node.
//!
//! Node leases: each node renews `{prefix}:node:N` every third of
//! `node_ttl_secs`; a node whose lease lapsed while others still list its
//! sessions is declared lost by an entry ("node lost"), which every node
//! applies: the lost node's users follow the reconnect grace.

use crate::center::{Center, CenterConfig, ClusterNode, Entry, EntryLog, node_of};
use crate::cluster_proto::{self as cp, entry::Kind};
use crate::config::ClusterConfig;
use crate::error::CenterError;
use prost::Message as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamRangeReply, StreamReadReply};
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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

/// The Redis keys of one cluster. Every key carries the prefix as a hash
/// tag, so all of them live in one Redis Cluster slot.
#[derive(Debug, Clone)]
struct Keys {
    log: String,
    node_numbers: String,
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            log: format!("{{{prefix}}}:log"),
            node_numbers: format!("{{{prefix}}}:node-numbers"),
            prefix: prefix.to_owned(),
        }
    }

    fn lease(&self, number: u32) -> String {
        format!("{{{}}}:node:{number}", self.prefix)
    }
}

/// The shared log as a node's center sees it: a queue to this node's writer.
struct RedisLog {
    tx: mpsc::Sender<Entry>,
}

impl EntryLog for RedisLog {
    fn append(&self, entry: Entry) -> Result<(), CenterError> {
        self.tx
            .try_send(entry)
            .map_err(|_| CenterError::StoreUnavailable)
    }
}

/// A joined node: its center, caught up with the log, and its tasks.
pub struct Node {
    /// The room service, applying the shared log.
    pub center: Center,
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

/// Milliseconds of a stream id (`ms-seq`): the entry's time in the cluster.
fn stream_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

/// Joins the cluster: takes a node number, builds the center, replays the
/// log up to its end (so the node starts with the cluster's state) and
/// starts the writer, the tailer and the lease tasks on `tracker`; they
/// stop on `shutdown`. Only then may the node accept peers.
pub async fn join(
    config: &ClusterConfig,
    center_config: CenterConfig,
    shutdown: &CancellationToken,
    tracker: &TaskTracker,
) -> Result<Node, ClusterError> {
    let url = redacted(&config.redis_url);
    let redis_err = |error| ClusterError::Redis {
        url: url.clone(),
        error,
    };
    let timeout = Duration::from_secs(config.store_timeout_secs);
    let bounded = |secs| ClusterError::Timeout {
        url: url.clone(),
        secs,
    };
    let client = redis::Client::open(config.redis_url.as_str()).map_err(redis_err)?;
    let manager = |response: Duration| {
        ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(response))
            .set_max_delay(Duration::from_secs(1))
    };
    let connect = |response| {
        let client = client.clone();
        let cfg = manager(response);
        async move {
            tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, cfg)).await
        }
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
    let keys = Keys::new(&config.key_prefix);
    let number: u64 = redis::cmd("INCR")
        .arg(&keys.node_numbers)
        .query_async(&mut writer)
        .await
        .map_err(redis_err)?;
    let number = u32::try_from(number).unwrap_or(u32::MAX);
    let id = if config.node_id.is_empty() {
        default_node_id()
    } else {
        config.node_id.clone()
    };
    let healthy = Arc::new(AtomicBool::new(true));
    let (tx, rx) = mpsc::channel(APPEND_QUEUE);
    let center = Center::clustered(
        center_config,
        ClusterNode {
            id: id.clone(),
            number,
            log: Arc::new(RedisLog { tx }),
            healthy: healthy.clone(),
        },
    );
    let ttl = Duration::from_secs(config.node_ttl_secs);
    renew_lease(&mut writer, &keys, number, &id, ttl)
        .await
        .map_err(redis_err)?;

    // Replay the log up to where it ends now, before serving anyone.
    let end: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&keys.log)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut reader)
        .await
        .map_err(redis_err)?;
    let mut last = "0-0".to_owned();
    if let Some(end_id) = end.ids.first().map(|e| e.id.clone()) {
        let mut applied = 0u64;
        while !passed(&last, &end_id) {
            let batch = read(&mut reader, &keys.log, &last, None)
                .await
                .map_err(redis_err)?;
            if batch.is_empty() {
                break;
            }
            for (entry_id, bytes) in batch {
                let entry =
                    Entry::decode(bytes.as_slice()).map_err(|e| ClusterError::BadEntry {
                        url: url.clone(),
                        id: entry_id.clone(),
                        reason: e.to_string(),
                    })?;
                center.apply_logged(entry, stream_ms(&entry_id));
                last = entry_id;
                applied += 1;
            }
        }
        tracing::info!(entries = applied, last = %last, "cluster log replayed");
    }
    tracing::info!(node.id = %id, node.number = number, redis = %url, "joined the cluster");

    tracker.spawn(write_entries(
        rx,
        writer.clone(),
        keys.clone(),
        center.clone(),
        healthy.clone(),
        timeout,
        shutdown.clone(),
    ));
    tracker.spawn(tail(
        reader,
        keys.clone(),
        last,
        center.clone(),
        healthy,
        shutdown.clone(),
    ));
    tracker.spawn(leases(
        writer,
        keys,
        number,
        id.clone(),
        ttl,
        center.clone(),
        shutdown.clone(),
    ));
    Ok(Node { center, id, number })
}

/// Whether stream id `a` is at or after `b` (ids compare as (ms, seq)).
fn passed(a: &str, b: &str) -> bool {
    let parse = |id: &str| {
        let mut it = id.split('-').map(|p| p.parse::<u64>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    parse(a) >= parse(b)
}

/// Reads the entries after `last` (blocking up to `block_ms` when given).
async fn read(
    conn: &mut ConnectionManager,
    log: &str,
    last: &str,
    block_ms: Option<u64>,
) -> redis::RedisResult<Vec<(String, Vec<u8>)>> {
    let mut cmd = redis::cmd("XREAD");
    cmd.arg("COUNT").arg(READ_BATCH);
    if let Some(ms) = block_ms {
        cmd.arg("BLOCK").arg(ms);
    }
    cmd.arg("STREAMS").arg(log).arg(last);
    let reply: Option<StreamReadReply> = cmd.query_async(conn).await?;
    let mut out = Vec::new();
    for key in reply.map(|r| r.keys).unwrap_or_default() {
        for sid in key.ids {
            let bytes = match sid.map.get("e") {
                Some(redis::Value::BulkString(b)) => b.clone(),
                _ => Vec::new(),
            };
            out.push((sid.id, bytes));
        }
    }
    Ok(out)
}

/// This node's writer: appends queued entries in order, pipelined in
/// batches. A batch Redis does not confirm within `timeout` is answered
/// with 503 "state store unavailable" to whoever waits for its entries.
async fn write_entries(
    mut rx: mpsc::Receiver<Entry>,
    mut conn: ConnectionManager,
    keys: Keys,
    center: Center,
    healthy: Arc<AtomicBool>,
    timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(APPEND_BATCH);
    loop {
        // After shutdown, what sessions queued while closing still goes out
        // (their closing entries), then the writer stops.
        let first = if shutdown.is_cancelled() {
            match rx.try_recv() {
                Ok(e) => e,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                e = rx.recv() => match e { Some(e) => e, None => return },
                () = shutdown.cancelled() => continue,
            }
        };
        batch.push(first);
        while batch.len() < APPEND_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut pipe = redis::pipe();
        for e in &batch {
            pipe.cmd("XADD")
                .arg(&keys.log)
                .arg("*")
                .arg("e")
                .arg(e.encode_to_vec())
                .ignore();
        }
        match tokio::time::timeout(timeout, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => {
                if !healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("state store reachable again");
                }
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} s", timeout.as_secs()),
                };
                if healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %why, entries = batch.len(), "state store unavailable: changes refused");
                }
                for e in &batch {
                    center.abandon(e.origin_seq, CenterError::StoreUnavailable);
                }
            }
        }
        batch.clear();
    }
}

/// Applies every entry of the log after `last`, in order, until shutdown.
/// Redis errors are retried (the connection manager reconnects); entries
/// are never skipped, so a node that was cut off resumes where it was.
async fn tail(
    mut conn: ConnectionManager,
    keys: Keys,
    mut last: String,
    center: Center,
    healthy: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return,
            r = read(&mut conn, &keys.log, &last, Some(READ_BLOCK_MS)) => r,
        };
        match batch {
            Ok(entries) => {
                backoff = Duration::from_millis(50);
                for (id, bytes) in entries {
                    match Entry::decode(bytes.as_slice()) {
                        Ok(entry) => center.apply_logged(entry, stream_ms(&id)),
                        Err(e) => {
                            tracing::error!(id = %id, error = %e, "unreadable log entry skipped")
                        }
                    }
                    last = id;
                }
            }
            Err(e) => {
                if healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, "state store unavailable: cannot read the log");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn renew_lease(
    conn: &mut ConnectionManager,
    keys: &Keys,
    number: u32,
    id: &str,
    ttl: Duration,
) -> redis::RedisResult<()> {
    redis::cmd("SET")
        .arg(keys.lease(number))
        .arg(id)
        .arg("PX")
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        .query_async(conn)
        .await
}

/// Renews this node's lease and declares lost the nodes whose leases lapsed
/// while their sessions are still listed. On shutdown the lease is dropped,
/// so the others act at once on what is left.
async fn leases(
    mut conn: ConnectionManager,
    keys: Keys,
    number: u32,
    id: String,
    ttl: Duration,
    center: Center,
    shutdown: CancellationToken,
) {
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut declared: HashSet<u32> = HashSet::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(period) => {}
        }
        if let Err(e) = renew_lease(&mut conn, &keys, number, &id, ttl).await {
            tracing::warn!(error = %e, "cannot renew this node's lease");
            continue;
        }
        let mut others: Vec<u32> = center
            .session_ids()
            .into_iter()
            .map(node_of)
            .filter(|n| *n != number)
            .collect();
        others.sort_unstable();
        others.dedup();
        declared.retain(|n| others.contains(n));
        for n in others {
            if declared.contains(&n) {
                continue;
            }
            let alive: redis::RedisResult<bool> = redis::cmd("EXISTS")
                .arg(keys.lease(n))
                .query_async(&mut conn)
                .await;
            if alive == Ok(false) {
                tracing::warn!(node.number = n, "node lease lapsed: declaring it lost");
                declared.insert(n);
                center.append_entry(Kind::NodeLost(cp::NodeLost {
                    node_number: n,
                    node_id: String::new(),
                }));
            }
        }
    }
    let _: redis::RedisResult<()> = redis::cmd("DEL")
        .arg(keys.lease(number))
        .query_async(&mut conn)
        .await;
}

#[cfg(test)]
mod tests {
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
        assert_eq!(k.log, "{pilot}:log");
        assert_eq!(k.lease(3), "{pilot}:node:3");
    }
}
