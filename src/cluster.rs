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

use crate::center::{At, Center, CenterConfig, Entry, NodeInfo, Store, node_of};
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
    /// Hash: `after` (the last entry it includes), `key` (where its bytes,
    /// a `Snapshot`, are).
    snapshot: String,
    /// Taken by the node writing a snapshot.
    snapshot_lock: String,
    /// The id below which the log was last trimmed.
    trimmed: String,
    /// Hash: node number -> the last entry it applied.
    positions: String,
    prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            log: format!("{{{prefix}}}:log"),
            node_numbers: format!("{{{prefix}}}:node-numbers"),
            snapshot: format!("{{{prefix}}}:snapshot"),
            snapshot_lock: format!("{{{prefix}}}:snapshot-lock"),
            trimmed: format!("{{{prefix}}}:trimmed"),
            positions: format!("{{{prefix}}}:positions"),
            prefix: prefix.to_owned(),
        }
    }

    fn lease(&self, number: u32) -> String {
        format!("{}{number}", self.lease_prefix())
    }

    /// Where the bytes of the snapshot after entry `after` are stored.
    fn snapshot_data(&self, after: &str) -> String {
        format!("{{{}}}:snapshot:{after}", self.prefix)
    }

    /// What every node's lease key starts with (followed by its number).
    fn lease_prefix(&self) -> String {
        format!("{{{}}}:node:", self.prefix)
    }
}

/// The shared log as a node's center sees it: a queue to this node's
/// writer, and whether Redis answers.
struct RedisStore {
    node: NodeInfo,
    /// Entries (origin number, encoded) for the writer.
    tx: mpsc::Sender<(u64, Vec<u8>)>,
    /// Whether the log's store answers (for `/readyz`).
    healthy: Arc<AtomicBool>,
    /// Set when the log was trimmed past what this node applied: its state
    /// has a gap, and it reports not ready until restarted.
    stale: Arc<AtomicBool>,
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn node(&self) -> Option<&NodeInfo> {
        Some(&self.node)
    }

    fn append(&self, entry: &Entry, _at: At) -> Result<(), CenterError> {
        // The log's time is the entry's: the stream id says when Redis took it.
        self.tx
            .try_send((entry.origin_seq, entry.encode_to_vec()))
            .map_err(|_| CenterError::StoreUnavailable)
    }

    fn ready(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && !self.stale.load(Ordering::Relaxed)
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
    // Snapshots (megabytes) go on a connection of their own, so that the
    // writer's appends never queue behind one.
    let snapshot_store = connect(timeout * 10)
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
    let stale = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel(APPEND_QUEUE);
    let center = Center::with_store(
        center_config,
        Arc::new(RedisStore {
            node: NodeInfo {
                id: id.clone(),
                number,
            },
            tx,
            healthy: healthy.clone(),
            stale: stale.clone(),
        }),
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
    if let Some((after, data)) = latest_snapshot(&mut reader, &keys)
        .await
        .map_err(redis_err)?
    {
        let snap = cp::Snapshot::decode(data.as_slice()).map_err(|e| ClusterError::BadEntry {
            url: url.clone(),
            id: format!("snapshot after {after}"),
            reason: e.to_string(),
        })?;
        center.load_snapshot(&snap);
        tracing::info!(after = %after, bytes = data.len(), sessions = snap.sessions.len(), rooms = snap.rooms.len(), "cluster snapshot loaded");
        last = after;
    }
    // From here no trim goes past what this node is about to replay.
    set_position(&mut writer, &keys, number, &last)
        .await
        .map_err(redis_err)?;
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
    // Reported before the replay; the tailer reports it again as it goes.
    let position = Arc::new(parking_lot::Mutex::new(last.clone()));

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
        Snapshots {
            every: config.snapshot_every,
            number,
            seen: None,
            applied_since: 0,
            store: snapshot_store,
            node_id: id.clone(),
            position: position.clone(),
        },
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
        position,
        stale,
        center.clone(),
        shutdown.clone(),
    ));
    Ok(Node { center, id, number })
}

/// The current snapshot: the entry it was taken after, and its bytes.
async fn latest_snapshot(
    conn: &mut ConnectionManager,
    keys: &Keys,
) -> redis::RedisResult<Option<(String, Vec<u8>)>> {
    // A newer snapshot may replace (and drop) the one just named: look again.
    for _ in 0..5 {
        let (after, key): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(&keys.snapshot)
            .arg("after")
            .arg("key")
            .query_async(conn)
            .await?;
        let (Some(after), Some(key)) = (after, key) else {
            return Ok(None);
        };
        let data: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(conn).await?;
        if let Some(data) = data {
            return Ok(Some((after, data)));
        }
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::Io,
        "the cluster snapshot kept changing while it was read",
    )))
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
    mut rx: mpsc::Receiver<(u64, Vec<u8>)>,
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
        for (_, bytes) in &batch {
            pipe.cmd("XADD")
                .arg(&keys.log)
                .arg("*")
                .arg("e")
                .arg(bytes.as_slice())
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
                for (origin_seq, _) in &batch {
                    center.abandon(*origin_seq, CenterError::StoreUnavailable);
                }
            }
        }
        batch.clear();
    }
}

/// When and as whom a node's tailer takes snapshots.
struct Snapshots {
    /// `cluster.snapshot_every`.
    every: u64,
    /// This node's number.
    number: u32,
    /// The entry the latest snapshot this node saw was taken after.
    seen: Option<String>,
    /// Entries applied since that snapshot (about: counted from when this
    /// node saw it), or since this node joined.
    applied_since: u64,
    /// The connection snapshots are stored on.
    store: ConnectionManager,
    node_id: String,
    /// The last entry this node applied, for its lease renewals.
    position: Arc<parking_lot::Mutex<String>>,
}

/// Applies every entry of the log after `last`, in order, until shutdown.
/// Redis errors are retried (the connection manager reconnects); entries
/// are never skipped, so a node that was cut off resumes where it was.
/// Every quarter of `snapshot_every` entries it checks whether the log is
/// due for a snapshot ([`snapshot_if_due`]): here, between batches, the
/// state is exactly that after `last`.
async fn tail(
    mut conn: ConnectionManager,
    keys: Keys,
    mut last: String,
    mut snapshots: Snapshots,
    center: Center,
    healthy: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let check_every = (snapshots.every / 4).max(1);
    let mut since_check = 0u64;
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return,
            r = read(&mut conn, &keys.log, &last, Some(READ_BLOCK_MS)) => r,
        };
        match batch {
            Ok(entries) => {
                backoff = Duration::from_millis(50);
                since_check += entries.len() as u64;
                snapshots.applied_since += entries.len() as u64;
                for (id, bytes) in entries {
                    match Entry::decode(bytes.as_slice()) {
                        Ok(entry) => center.apply_logged(entry, stream_ms(&id)),
                        Err(e) => {
                            tracing::error!(id = %id, error = %e, "unreadable log entry skipped")
                        }
                    }
                    last = id;
                }
                snapshots.position.lock().clone_from(&last);
                if since_check >= check_every {
                    since_check = 0;
                    if let Err(e) =
                        snapshot_if_due(&mut conn, &keys, &center, &last, &mut snapshots).await
                    {
                        tracing::warn!(error = %e, "cannot write a snapshot of the cluster state");
                    }
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

/// Makes the snapshot stored at `ARGV[2]` (after entry `ARGV[1]`) the
/// current one unless a newer one is there (then it is dropped), drops the
/// previous one, trims the log below the previous snapshot (and below the
/// oldest position a node with a lease reported, so no live node loses an
/// entry it has not applied) and releases the lock. The snapshot's bytes
/// are stored by a plain `SET` before: through a script they would be
/// copied twice while Redis serves nobody else. `ARGV[3]`: the lease keys'
/// prefix. Returns 0 when a newer snapshot was there, else 1.
const SWITCH_SNAPSHOT: &str = r"
local function id(s)
  local ms, seq = string.match(s, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function after(a, b)
  local am, as = id(a)
  local bm, bs = id(b)
  return am > bm or (am == bm and as > bs)
end
local previous = redis.call('HMGET', KEYS[1], 'after', 'key')
redis.call('DEL', KEYS[4])
if previous[1] and not after(ARGV[1], previous[1]) then
  redis.call('UNLINK', ARGV[2])
  return 0
end
redis.call('HSET', KEYS[1], 'after', ARGV[1], 'key', ARGV[2])
redis.call('PERSIST', ARGV[2])
if previous[2] then redis.call('UNLINK', previous[2]) end
local below = previous[1] or '0-0'
local positions = redis.call('HGETALL', KEYS[5])
for i = 1, #positions, 2 do
  if redis.call('EXISTS', ARGV[3] .. positions[i]) == 1 then
    if after(below, positions[i + 1]) then below = positions[i + 1] end
  else
    -- A node without a lease is gone: it holds nothing back.
    redis.call('HDEL', KEYS[5], positions[i])
  end
end
if below ~= '0-0' then
  -- Exact: with '~' Redis trims at most 10,000 entries per call.
  redis.call('XTRIM', KEYS[2], 'MINID', below)
  redis.call('SET', KEYS[3], below)
end
return 1
";

/// Writes a snapshot of the state after `last` when the log has grown by
/// `snapshot_every` entries past the last one (one node at a time, by a
/// lock), and trims the log below the previous snapshot.
async fn snapshot_if_due(
    conn: &mut ConnectionManager,
    keys: &Keys,
    center: &Center,
    last: &str,
    snapshots: &mut Snapshots,
) -> redis::RedisResult<()> {
    // Report this node's position (no trim goes past it) and see whether
    // another node stored a snapshot since the last look.
    let (have,): (Option<String>,) = redis::pipe()
        .cmd("HSET")
        .arg(&keys.positions)
        .arg(snapshots.number)
        .arg(last)
        .ignore()
        .cmd("HGET")
        .arg(&keys.snapshot)
        .arg("after")
        .query_async(conn)
        .await?;
    if have != snapshots.seen {
        // Taken moments ago, near this node's position: count from here.
        snapshots.seen = have;
        snapshots.applied_since = 0;
    }
    if snapshots.applied_since < snapshots.every {
        return Ok(());
    }
    let locked: Option<String> = redis::cmd("SET")
        .arg(&keys.snapshot_lock)
        .arg(&snapshots.node_id)
        .arg("NX")
        .arg("PX")
        .arg(60_000)
        .query_async(conn)
        .await?;
    if locked.is_none() {
        return Ok(());
    }
    snapshots.applied_since = 0;
    // Only this step holds the state lock (the rooms are shared, not
    // copied); the tailer goes on applying while a task copies, encodes and
    // stores the snapshot on a connection of its own.
    let started = std::time::Instant::now();
    let frozen = center.freeze(last);
    let frozen_in = started.elapsed();
    let mut store = snapshots.store.clone();
    let (keys, last) = (keys.clone(), last.to_owned());
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Copying every user out takes a while on a large state: a thread
        // of its own, at the lowest priority, so sessions keep the CPU.
        let spawned = std::thread::Builder::new()
            .name("pilot-snapshot".into())
            .spawn(move || {
                lower_this_threads_priority();
                let _ = tx.send(frozen.into_snapshot().encode_to_vec());
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the snapshot thread");
            return;
        }
        let Ok(data) = rx.await else {
            return;
        };
        let built = started.elapsed();
        let key = keys.snapshot_data(&last);
        let stored: redis::RedisResult<i64> = redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(data.as_slice())
            // Kept only if the switch below runs (it makes it permanent).
            .arg("PX")
            .arg(600_000)
            .ignore()
            .cmd("EVAL")
            .arg(SWITCH_SNAPSHOT)
            .arg(5)
            .arg(&keys.snapshot)
            .arg(&keys.log)
            .arg(&keys.trimmed)
            .arg(&keys.snapshot_lock)
            .arg(&keys.positions)
            .arg(&last)
            .arg(&key)
            .arg(keys.lease_prefix())
            .query_async::<(i64,)>(&mut store)
            .await
            .map(|(n,)| n);
        match stored {
            Ok(n) if n > 0 => {
                tracing::info!(after = %last, bytes = data.len(), locked = ?frozen_in, built = ?built, "cluster snapshot written, log trimmed");
            }
            Ok(_) => tracing::debug!(after = %last, "a newer cluster snapshot was there"),
            Err(e) => tracing::warn!(error = %e, "cannot store a snapshot of the cluster state"),
        }
    });
    Ok(())
}

/// Gives the calling thread the lowest CPU priority (nice 19), on Linux.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn lower_this_threads_priority() {
    // SAFETY: gettid and setpriority only read and set the scheduling
    // priority of the calling thread; no memory is shared.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority() {}

/// Reports the last entry this node applied: no trim goes past it.
async fn set_position(
    conn: &mut ConnectionManager,
    keys: &Keys,
    number: u32,
    last: &str,
) -> redis::RedisResult<()> {
    redis::cmd("HSET")
        .arg(&keys.positions)
        .arg(number)
        .arg(last)
        .query_async(conn)
        .await
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
#[allow(clippy::too_many_arguments)] // one task's whole context, passed once
async fn leases(
    mut conn: ConnectionManager,
    keys: Keys,
    number: u32,
    id: String,
    ttl: Duration,
    position: Arc<parking_lot::Mutex<String>>,
    stale: Arc<AtomicBool>,
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
        let applied = position.lock().clone();
        let trimmed: redis::RedisResult<Option<String>> = redis::pipe()
            .cmd("HSET")
            .arg(&keys.positions)
            .arg(number)
            .arg(&applied)
            .ignore()
            .cmd("GET")
            .arg(&keys.trimmed)
            .query_async::<(Option<String>,)>(&mut conn)
            .await
            .map(|(t,)| t);
        // The log was trimmed past what this node applied (it was cut off
        // from Redis while the others went on): its state has a gap only a
        // restart (which loads the snapshot) closes.
        if let Ok(Some(trimmed)) = trimmed
            && !passed(&applied, &trimmed)
            && !stale.swap(true, Ordering::Relaxed)
        {
            tracing::error!(applied = %applied, trimmed = %trimmed, "the cluster log was trimmed past this node's position: its state is stale; restart it (it then loads the latest snapshot)");
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
                let _: redis::RedisResult<()> = redis::cmd("HDEL")
                    .arg(&keys.positions)
                    .arg(n)
                    .query_async(&mut conn)
                    .await;
                center.append_entry(Kind::NodeLost(cp::NodeLost {
                    node_number: n,
                    node_id: String::new(),
                }));
            }
        }
    }
    let _: redis::RedisResult<()> = redis::pipe()
        .cmd("DEL")
        .arg(keys.lease(number))
        .ignore()
        .cmd("HDEL")
        .arg(&keys.positions)
        .arg(number)
        .ignore()
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
