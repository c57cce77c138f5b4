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

use crate::center::ids::{EPOCH_BASE_UNIX_MS, EPOCH_UNIT_MS, MAX_EPOCH, node_of};
use crate::center::{At, Center, CenterConfig, Entry, FORMAT, Store};
use crate::cluster_proto::{self as cp, entry::Kind};
use crate::config::ClusterConfig;
use crate::error::CenterError;
use link::{Link, Target};
use prost::Message as _;
use redis::aio::ConnectionManagerConfig;
use redis::streams::{StreamRangeReply, StreamReadReply};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod link;

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
    /// Sorted set: node number -> when its lease ends (Redis time, ms).
    leases: String,
    /// Hash: node number -> node id, for logs.
    node_ids: String,
    /// When any node last renewed its lease (Redis time, ms).
    renewed: String,
    /// Since when leases have been renewed without a gap longer than a
    /// lease (Redis time, ms): a lease that lapsed before then lapsed in an
    /// outage for everyone, and does not make its node lost.
    live_since: String,
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
            leases: format!("{{{prefix}}}:leases"),
            node_ids: format!("{{{prefix}}}:node-ids"),
            renewed: format!("{{{prefix}}}:renewed"),
            live_since: format!("{{{prefix}}}:live-since"),
            prefix: prefix.to_owned(),
        }
    }

    /// Where the bytes of the snapshot after entry `after` are stored.
    fn snapshot_data(&self, after: &str) -> String {
        format!("{{{}}}:snapshot:{after}", self.prefix)
    }
}

/// Where a node stands in its cluster, shared by its tasks and its store.
#[derive(Default)]
struct Standing {
    /// Whether the log's store answers.
    healthy: AtomicBool,
    /// Its state has a gap (the log was trimmed past it, or went back): it
    /// serves nobody until it has rejoined from the snapshot.
    stale: AtomicBool,
    /// It lost its lease (another node declared it lost): its appends are
    /// refused; it serves nobody until it has a new lease and rejoined.
    fenced: AtomicBool,
    /// Its state cannot follow the log (an entry it cannot read): it serves
    /// nobody until restarted with a build that reads it.
    broken: AtomicBool,
    /// Its number: its current lease, never reused.
    number: AtomicU32,
    /// The last lease it found lost: while it is the current one, the
    /// lease task takes a new one (once; then the tailer rejoins).
    lost: AtomicU32,
    /// Every lease this process held, the current one last: entries of
    /// them the log hands back answer this process's waiters.
    leases: parking_lot::Mutex<Vec<u32>>,
    /// The highest lease this node has seen anywhere (its own, in the
    /// entries it applied, in the sessions of a snapshot): a new lease is
    /// taken above it, so a Redis that lost its counter cannot hand out a
    /// number again while a node that saw it lives.
    highest_seen: AtomicU32,
    /// Asks the tailer to reload the snapshot and replay from there.
    rejoin: tokio::sync::Notify,
}

impl Standing {
    /// This node now holds lease `n`.
    fn hold(&self, n: u32) {
        self.leases.lock().push(n);
        self.saw(n);
        self.number.store(n, Ordering::Release);
    }

    /// Lease `n` was seen (in an entry, a session id, a snapshot).
    fn saw(&self, n: u32) {
        self.highest_seen.fetch_max(n, Ordering::AcqRel);
    }

    fn serving(&self) -> bool {
        !self.stale.load(Ordering::Relaxed)
            && !self.fenced.load(Ordering::Relaxed)
            && !self.broken.load(Ordering::Relaxed)
    }

    /// This node lost lease `lease`: if that is its current one, it stops
    /// serving now (its sessions close with "node lost", so their SFUs
    /// reconnect to another node); the lease task takes a new lease, then
    /// asks the tailer to rejoin. The refusal of an older lease (a batch
    /// sent before the node took its new one) changes nothing.
    fn fence(&self, center: &Center, lease: u32) {
        if lease != self.number.load(Ordering::Acquire) {
            return;
        }
        self.lost.store(lease, Ordering::Release);
        if !self.fenced.swap(true, Ordering::AcqRel) {
            let n = center.evict_local_sessions("node lost");
            tracing::error!(
                node.number = self.number.load(Ordering::Relaxed),
                sessions = n,
                "this node lost its lease (declared lost, or cut off past it): its sessions close; it rejoins under a new lease"
            );
        }
    }

    /// This node's state has a gap: it stops serving and rejoins from the
    /// snapshot.
    fn go_stale(&self, center: &Center, why: &str) {
        if !self.stale.swap(true, Ordering::AcqRel) {
            let n = center.evict_local_sessions("node stale");
            tracing::error!(
                why,
                sessions = n,
                "this node's state has a gap: its sessions close; it rejoins from the snapshot"
            );
            self.rejoin.notify_one();
        }
    }
}

/// An entry on its way to the log: who waits for it (its origin number),
/// the lease it belongs to, its bytes.
struct Queued {
    origin_seq: u64,
    lease: u32,
    bytes: Vec<u8>,
}

/// The shared log as a node's center sees it: a queue to this node's
/// writer, and where the node stands.
struct RedisStore {
    id: String,
    /// Entries for the writer.
    tx: mpsc::Sender<Queued>,
    standing: Arc<Standing>,
}

impl Store for RedisStore {
    fn node_id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn node_number(&self) -> u32 {
        self.standing.number.load(Ordering::Relaxed)
    }

    fn owns_lease(&self, n: u32) -> bool {
        self.standing.leases.lock().contains(&n)
    }

    fn append(&self, entry: &Entry, _at: At) -> Result<(), CenterError> {
        // A session of a lease this node lost speaks no more: its entries
        // are refused here, and by the log if they got past (the writer
        // appends under the entry's own lease).
        if self.standing.fenced.load(Ordering::Acquire)
            || entry.node_number != self.standing.number.load(Ordering::Acquire)
        {
            return Err(CenterError::LeaseLost);
        }
        if !self.standing.serving() {
            return Err(CenterError::StoreUnavailable);
        }
        // The log's time is the entry's: the stream id says when Redis took it.
        self.tx
            .try_send(Queued {
                origin_seq: entry.origin_seq,
                lease: entry.node_number,
                bytes: entry.encode_to_vec(),
            })
            .map_err(|_| CenterError::StoreUnavailable)
    }

    fn ready(&self) -> bool {
        self.standing.healthy.load(Ordering::Relaxed) && self.standing.serving()
    }

    fn serving(&self) -> bool {
        self.standing.serving()
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

/// Redis time in ms, for the lease scripts (leases are counted in Redis's
/// clock, never in the nodes').
const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n";

/// Notes a renewal at `now` (KEYS[a] renewed, KEYS[b] live-since): after a
/// gap longer than a lease (`ARGV[ttl]`) with no renewal from anyone, the
/// cluster is live again only from now.
const NOTE_RENEWAL: &str = "local last = tonumber(redis.call('GET', RENEWED) or '0')\nif now - last > TTL then redis.call('SET', LIVE_SINCE, now) end\nredis.call('SET', RENEWED, now)\n";

/// A new lease: a node number never used before, its lease until now+ttl.
/// The number is the counter's next, but never below `ARGV[3]` (above the
/// highest number the node has seen) nor below the epoch floor of Redis's
/// clock (`ARGV[4]` base ms, `ARGV[5]` unit ms: [`crate::center::ids`]), so
/// a Redis that lost its counter does not count from 1 again; the counter
/// is raised to the number taken. KEYS: node-numbers, leases, renewed,
/// live-since, node-ids; ARGV: ttl ms, node id, floors. Returns the number.
static JOIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{NOW}local n = redis.call('INCR', KEYS[1])\nlocal floor = math.max(tonumber(ARGV[3]), math.floor((now - tonumber(ARGV[4])) / tonumber(ARGV[5])) + 1)\nif n < floor then n = floor redis.call('SET', KEYS[1], n) end\nredis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), n)\nredis.call('HSET', KEYS[5], n, ARGV[2])\n{}return n",
        NOTE_RENEWAL
            .replace("RENEWED", "KEYS[3]")
            .replace("LIVE_SINCE", "KEYS[4]")
            .replace("TTL", "tonumber(ARGV[1])")
    )
});

/// Renews lease `ARGV[1]` for `ARGV[2]` ms if it is still held. KEYS:
/// leases, renewed, live-since. Returns Redis time (ms), or 0 when the lease
/// is gone (the node was declared lost: it is fenced).
static RENEW: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{NOW}if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end\n{}redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])\nreturn now",
        NOTE_RENEWAL
            .replace("RENEWED", "KEYS[2]")
            .replace("LIVE_SINCE", "KEYS[3]")
            .replace("TTL", "tonumber(ARGV[2])")
    )
});

/// Appends `ARGV[2..]`, entries of lease `ARGV[1]`, to the log if that
/// lease is still held: a node declared lost can never append again
/// (fencing). KEYS: leases, log. Returns how many were appended, or -1
/// when the lease is gone (nothing appended).
const APPEND: &str = "if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end\nfor i = 2, #ARGV do redis.call('XADD', KEYS[2], '*', 'e', ARGV[i]) end\nreturn #ARGV - 1";

/// Declares node `ARGV[2]` lost if its lease lapsed while the cluster was
/// live (not in an outage for everyone), by the holder of lease `ARGV[1]`:
/// removes the lease and its position and appends `ARGV[4]` (its "node
/// lost" entry) in one step. KEYS: leases, live-since, log, positions;
/// ARGV[3]: ttl ms. Returns 1 (declared), 0 (not), -1 (the declarer itself
/// is fenced).
static DECLARE_LOST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{NOW}if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return -1 end\nlocal live = tonumber(redis.call('GET', KEYS[2]) or '0')\nif now - live < tonumber(ARGV[3]) then return 0 end\nlocal e = redis.call('ZSCORE', KEYS[1], ARGV[2])\nif not e or tonumber(e) >= now then return 0 end\nredis.call('ZREM', KEYS[1], ARGV[2])\nredis.call('HDEL', KEYS[4], ARGV[2])\nredis.call('XADD', KEYS[3], '*', 'e', ARGV[4])\nreturn 1"
    )
});

/// Runs `script` with `keys` and `args`.
async fn eval<T: redis::FromRedisValue>(
    conn: &mut Link,
    script: &str,
    keys: &[&str],
    args: &[&[u8]],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(script).arg(keys.len());
    for k in keys {
        cmd.arg(*k);
    }
    for a in args {
        cmd.arg(*a);
    }
    cmd.query_async(conn).await
}

/// Takes a new lease (a new node number) for node `id`, above `highest_seen`.
async fn new_lease(
    conn: &mut Link,
    keys: &Keys,
    id: &str,
    ttl: Duration,
    highest_seen: u32,
) -> redis::RedisResult<u32> {
    let floor = (u64::from(highest_seen) + 1).to_string();
    let (base, unit) = (EPOCH_BASE_UNIX_MS.to_string(), EPOCH_UNIT_MS.to_string());
    let n: u64 = eval(
        conn,
        &JOIN,
        &[
            &keys.node_numbers,
            &keys.leases,
            &keys.renewed,
            &keys.live_since,
            &keys.node_ids,
        ],
        &[
            ttl_ms(ttl).as_bytes(),
            id.as_bytes(),
            floor.as_bytes(),
            base.as_bytes(),
            unit.as_bytes(),
        ],
    )
    .await?;
    match u32::try_from(n) {
        Ok(n) if n <= MAX_EPOCH => Ok(n),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::Client,
            "node numbers are used up (session ids would pass 2^53)",
        ))),
    }
}

fn ttl_ms(ttl: Duration) -> String {
    ttl.as_millis().to_string()
}

/// Why catching up with the log failed.
#[derive(Debug, thiserror::Error)]
enum CatchUpError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("entry {id}: {reason}")]
    Unreadable { id: String, reason: String },
}

/// What catching up with the log did, for the one line a join or a rejoin
/// logs about it.
struct CaughtUp {
    /// The last entry applied.
    last: String,
    /// The entry the snapshot it started from was taken after, and its size.
    snapshot: Option<(String, usize)>,
    /// Entries replayed after the snapshot.
    entries: u64,
    took: Duration,
}

impl CaughtUp {
    /// The one line about it (the entries replayed are the past: they log
    /// nothing of their own, see `Center::catch_up_logged`).
    fn log(&self, center: &Center, node_id: &str, number: u32, what: &'static str) {
        let (sessions, rooms, users, _) = center.counts();
        let (after, bytes) = self
            .snapshot
            .as_ref()
            .map_or(("", 0), |(a, b)| (a.as_str(), *b));
        tracing::info!(
            node.id = %node_id,
            node.number = number,
            snapshot.after = after,
            snapshot.bytes = bytes,
            entries = self.entries,
            last = %self.last,
            sessions,
            rooms,
            users,
            took = ?self.took,
            "{what}: state loaded from the snapshot and the log after it"
        );
    }
}

/// Loads the latest snapshot (or starts from nothing) and applies the log
/// after it up to where it ends now, quietly (it is the past); reports the
/// position first, so no trim passes what it is about to replay. Every
/// lease it sees raises `standing`'s highest.
async fn catch_up(
    reader: &mut Link,
    writer: &mut Link,
    keys: &Keys,
    standing: &Standing,
    center: &Center,
) -> Result<CaughtUp, CatchUpError> {
    let started = std::time::Instant::now();
    let number = standing.number.load(Ordering::Acquire);
    let end: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&keys.log)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(reader)
        .await?;
    let mut last = "0-0".to_owned();
    let mut snapshot = None;
    match latest_snapshot(reader, keys).await? {
        Some((after, data)) => {
            let snap =
                cp::Snapshot::decode(data.as_slice()).map_err(|e| CatchUpError::Unreadable {
                    id: format!("snapshot after {after}"),
                    reason: e.to_string(),
                })?;
            center.load_snapshot(&snap);
            for s in &snap.sessions {
                standing.saw(node_of(s.session_id));
            }
            snapshot = Some((after.clone(), data.len()));
            last = after;
        }
        None => center.load_snapshot(&cp::Snapshot::default()),
    }
    set_position(writer, keys, number, &last).await?;
    let mut applied = 0u64;
    if let Some(end_id) = end.ids.first().map(|e| e.id.clone()) {
        while !passed(&last, &end_id) {
            let Read::Entries(batch) = read(reader, keys, &last, None).await? else {
                return Err(CatchUpError::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the log was trimmed past the snapshot while it was replayed",
                ))));
            };
            if batch.is_empty() {
                break;
            }
            for (entry_id, bytes) in batch {
                let unreadable = |reason: String| CatchUpError::Unreadable {
                    id: entry_id.clone(),
                    reason,
                };
                let entry =
                    Entry::decode(bytes.as_slice()).map_err(|e| unreadable(e.to_string()))?;
                standing.saw(entry.node_number);
                center
                    .catch_up_logged(entry, stream_ms(&entry_id))
                    .map_err(|e| unreadable(e.to_string()))?;
                last = entry_id;
                applied += 1;
            }
        }
    }
    Ok(CaughtUp {
        last,
        snapshot,
        entries: applied,
        took: started.elapsed(),
    })
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
    let center = Center::with_store(
        center_config,
        Arc::new(RedisStore {
            id: id.clone(),
            tx,
            standing: standing.clone(),
        }),
    );
    // Replay the log up to where it ends now, before serving anyone.
    let caught_up = catch_up(&mut reader, &mut writer, &keys, &standing, &center)
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
    caught_up.log(&center, &id, number, "joined the cluster");
    let last = caught_up.last;
    // Reported before the replay; the tailer reports it again as it goes.
    let position = Arc::new(parking_lot::Mutex::new(last.clone()));

    tracker.spawn(write_entries(
        rx,
        writer.clone(),
        keys.clone(),
        center.clone(),
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
            center: center.clone(),
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
            center: center.clone(),
        },
        shutdown.clone(),
    ));
    Ok(Node { center, id, number })
}

/// The current snapshot: the entry it was taken after, and its bytes.
async fn latest_snapshot(
    conn: &mut Link,
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

/// What one read of the log found after a position.
enum Read {
    /// The entries after it (maybe none), in order.
    Entries(Vec<(String, Vec<u8>)>),
    /// The log was trimmed past it: entries after it are gone, and whoever
    /// applied what follows would skip them.
    TrimmedPast,
}

/// Reads the entries after `last` (blocking up to `block_ms` when given),
/// with where the log was trimmed, read right after them: a trim past
/// `last` is found on the read that would skip entries, not later.
async fn read(
    conn: &mut Link,
    keys: &Keys,
    last: &str,
    block_ms: Option<u64>,
) -> redis::RedisResult<Read> {
    let mut pipe = redis::pipe();
    let xread = pipe.cmd("XREAD").arg("COUNT").arg(READ_BATCH);
    if let Some(ms) = block_ms {
        xread.arg("BLOCK").arg(ms);
    }
    xread.arg("STREAMS").arg(&keys.log).arg(last);
    pipe.cmd("GET").arg(&keys.trimmed);
    let (reply, trimmed): (Option<StreamReadReply>, Option<String>) =
        pipe.query_async(conn).await?;
    if trimmed.is_some_and(|t| !passed(last, &t)) {
        return Ok(Read::TrimmedPast);
    }
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
    Ok(Read::Entries(out))
}

/// This node's writer: appends queued entries in order, in batches, each
/// batch by one script that first checks this node still holds its lease
/// (fencing: a node declared lost never appends again). A batch Redis does
/// not confirm within `timeout` is answered with 503 "state store
/// unavailable" to whoever waits for its entries.
async fn write_entries(
    mut rx: mpsc::Receiver<Queued>,
    mut conn: Link,
    keys: Keys,
    center: Center,
    standing: Arc<Standing>,
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
        // Entries of a lease this node no longer holds (its sessions spoke
        // before the node found it was fenced) never go out.
        let lease = standing.number.load(Ordering::Acquire);
        let fenced = standing.fenced.load(Ordering::Acquire);
        let before = batch.len();
        batch.retain(|q| {
            let current = !fenced && q.lease == lease;
            if !current {
                center.abandon(q.origin_seq, CenterError::LeaseLost);
            }
            current
        });
        if batch.len() < before {
            tracing::info!(
                entries = before - batch.len(),
                "discarded what sessions of a lost lease sent"
            );
        }
        if batch.is_empty() {
            continue;
        }
        let number = lease.to_string();
        let mut args: Vec<&[u8]> = Vec::with_capacity(batch.len() + 1);
        args.push(number.as_bytes());
        args.extend(batch.iter().map(|q| q.bytes.as_slice()));
        let script_keys = [keys.leases.as_str(), keys.log.as_str()];
        let appended = eval::<i64>(&mut conn, APPEND, &script_keys, &args);
        match tokio::time::timeout(timeout, appended).await {
            Ok(Ok(n)) if n >= 0 => {
                if !standing.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("state store reachable again");
                }
            }
            Ok(Ok(_)) => {
                // The log refused the lease: this node was declared lost.
                standing.fence(&center, lease);
                for q in &batch {
                    center.abandon(q.origin_seq, CenterError::LeaseLost);
                }
            }
            outcome => {
                // A batch Redis refused, or could not be sent, was not
                // applied: 503. One sent but not confirmed in time may
                // still be in the log: its waiters hear 504, never "not
                // applied". (A connection that drops in the instant after
                // Redis took a batch is answered 503 too; that cannot be
                // told apart from a batch never sent.)
                let (error, why) = match outcome {
                    Ok(Err(e)) if e.is_timeout() => (CenterError::StoreUnconfirmed, e.to_string()),
                    Ok(Err(e)) => (CenterError::StoreUnavailable, e.to_string()),
                    _ => (
                        CenterError::StoreUnconfirmed,
                        format!("no answer within {} s", timeout.as_secs()),
                    ),
                };
                if standing.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %why, entries = batch.len(), "state store unavailable: changes refused");
                }
                for q in &batch {
                    center.abandon(q.origin_seq, error.clone());
                }
            }
        }
        batch.clear();
    }
}

/// When a node's tailer takes snapshots.
struct Snapshots {
    /// `cluster.snapshot_every`.
    every: u64,
    /// The entry the latest snapshot this node saw was taken after.
    seen: Option<String>,
    /// Entries applied since that snapshot (about: counted from when this
    /// node saw it), or since this node joined.
    applied_since: u64,
    /// The connection snapshots are stored on.
    store: Link,
    node_id: String,
    /// The last entry this node applied, for its lease renewals.
    position: Arc<parking_lot::Mutex<String>>,
}

/// What the tailer works with.
struct Tailer {
    conn: Link,
    node_id: String,
    /// For reporting its position when it rejoins.
    writer: Link,
    keys: Keys,
    center: Center,
    standing: Arc<Standing>,
}

/// Applies every entry of the log after `last`, in order, until shutdown.
/// Redis errors are retried (the connection manager reconnects); entries
/// are never skipped: a node cut off resumes where it was, one whose state
/// has a gap (or that lost its lease) rejoins from the snapshot when asked
/// ([`Standing::rejoin`]), and an entry it cannot read stops it serving.
/// Every quarter of `snapshot_every` entries it checks whether the log is
/// due for a snapshot ([`snapshot_if_due`]): here, between batches, the
/// state is exactly that after `last`.
async fn tail(
    mut t: Tailer,
    mut last: String,
    mut snapshots: Snapshots,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(50);
    let check_every = (snapshots.every / 4).max(1);
    let mut since_check = 0u64;
    loop {
        let batch = tokio::select! {
            () = shutdown.cancelled() => return,
            () = t.standing.rejoin.notified() => {
                match rejoin(&mut t).await {
                    Some(at) => {
                        last = at;
                        snapshots.position.lock().clone_from(&last);
                    }
                    None => return,
                }
                continue;
            }
            // Back from an outage, the first read does not block: it says
            // at once that the store answers again.
            r = read(&mut t.conn, &t.keys, &last, t.standing.healthy.load(Ordering::Relaxed).then_some(READ_BLOCK_MS)) => r,
        };
        let batch = match batch {
            Ok(Read::TrimmedPast) => {
                t.standing
                    .go_stale(&t.center, "the log was trimmed past this node's position");
                continue;
            }
            Ok(Read::Entries(entries)) => Ok(entries),
            Err(e) => Err(e),
        };
        match batch {
            Ok(entries) => {
                backoff = Duration::from_millis(50);
                since_check += entries.len() as u64;
                snapshots.applied_since += entries.len() as u64;
                for (id, bytes) in entries {
                    let applied = Entry::decode(bytes.as_slice())
                        .map_err(|e| e.to_string())
                        .and_then(|entry| {
                            t.standing.saw(entry.node_number);
                            t.center
                                .apply_logged(entry, stream_ms(&id))
                                .map_err(|e| e.to_string())
                        });
                    if let Err(reason) = applied {
                        // Skipping it would leave this node's state apart
                        // from the others'; applying the rest without it too.
                        t.standing.broken.store(true, Ordering::Release);
                        let n = t.center.evict_local_sessions("node cannot read the log");
                        tracing::error!(id = %id, reason, sessions = n, "a log entry this build cannot read: this node stops serving; upgrade it and restart");
                        return;
                    }
                    last = id;
                }
                if !t.standing.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("state store reachable again");
                }
                snapshots.position.lock().clone_from(&last);
                if since_check >= check_every {
                    since_check = 0;
                    let number = t.standing.number.load(Ordering::Relaxed);
                    if let Err(e) = snapshot_if_due(
                        &mut t.conn,
                        &t.keys,
                        &t.center,
                        &last,
                        number,
                        &mut snapshots,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "cannot write a snapshot of the cluster state");
                    }
                }
            }
            Err(e) => {
                if t.standing.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(error = %e, "state store unavailable: cannot read the log");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                // Resume within a quarter second of Redis answering again.
                backoff = (backoff * 2).min(Duration::from_millis(250));
            }
        }
    }
}

/// Reloads the state from the latest snapshot and the log after it, until
/// it works (or shutdown); then this node serves again. Returns the last
/// entry applied (`None` when the node cannot follow the log).
async fn rejoin(t: &mut Tailer) -> Option<String> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let number = t.standing.number.load(Ordering::Acquire);
        // Read through the writer's connection: the tailer's own may still
        // carry the blocking read the rejoin interrupted (up to a second).
        let mut reader = t.writer.clone();
        match catch_up(&mut reader, &mut t.writer, &t.keys, &t.standing, &t.center).await {
            Ok(caught_up) => {
                t.standing.stale.store(false, Ordering::Release);
                t.standing.fenced.store(false, Ordering::Release);
                // Its sessions from before, whose closings it could not
                // record while it was out, end now (their users get the
                // grace); a fenced node's were ended by "node lost".
                let ended = t.center.end_own_former_sessions(number);
                caught_up.log(&t.center, &t.node_id, number, "rejoined the cluster");
                tracing::info!(
                    node.number = number,
                    former_sessions = ended,
                    "serving again"
                );
                return Some(caught_up.last);
            }
            Err(CatchUpError::Unreadable { id, reason }) => {
                t.standing.broken.store(true, Ordering::Release);
                tracing::error!(id = %id, reason, "a log entry this build cannot read: this node stops serving; upgrade it and restart");
                return None;
            }
            Err(CatchUpError::Redis(e)) => {
                tracing::warn!(error = %e, "cannot rejoin yet: retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(250));
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
/// copied twice while Redis serves nobody else. `KEYS[6]`: the leases.
/// Returns 0 when a newer snapshot was there, else 1.
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
  if redis.call('ZSCORE', KEYS[6], positions[i]) then
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
    conn: &mut Link,
    keys: &Keys,
    center: &Center,
    last: &str,
    number: u32,
    snapshots: &mut Snapshots,
) -> redis::RedisResult<()> {
    // Report this node's position (no trim goes past it) and see whether
    // another node stored a snapshot since the last look.
    let (have,): (Option<String>,) = redis::pipe()
        .cmd("HSET")
        .arg(&keys.positions)
        .arg(number)
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
            .arg(6)
            .arg(&keys.snapshot)
            .arg(&keys.log)
            .arg(&keys.trimmed)
            .arg(&keys.snapshot_lock)
            .arg(&keys.positions)
            .arg(&keys.leases)
            .arg(&last)
            .arg(&key)
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
    conn: &mut Link,
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

/// What the lease task works with.
struct Leaseholder {
    conn: Link,
    keys: Keys,
    id: String,
    ttl: Duration,
    /// The last entry this node applied.
    position: Arc<parking_lot::Mutex<String>>,
    standing: Arc<Standing>,
    center: Center,
}

/// Renews this node's lease every third of its time and declares lost the
/// nodes whose leases lapsed while the cluster was live; finds out when
/// this node itself was fenced (its lease gone: it takes a new one and
/// rejoins) or its state has a gap (the log trimmed past its position, or
/// gone back behind it after a Redis failover: it rejoins). On shutdown its
/// lease ends at once, so the others act at once on what is left.
async fn leases(mut l: Leaseholder, shutdown: CancellationToken) {
    let period = (l.ttl / 3).max(Duration::from_millis(100));
    let ttl = ttl_ms(l.ttl);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(period) => {}
        }
        let number = l.standing.number.load(Ordering::Acquire);
        let renewed: redis::RedisResult<u64> = eval(
            &mut l.conn,
            &RENEW,
            &[&l.keys.leases, &l.keys.renewed, &l.keys.live_since],
            &[number.to_string().as_bytes(), ttl.as_bytes()],
        )
        .await;
        let now = match renewed {
            Ok(0) => {
                l.standing.fence(&l.center, number);
                None
            }
            Ok(now) => Some(now),
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew this node's lease");
                continue;
            }
        };
        let fenced = l.standing.fenced.load(Ordering::Acquire);
        let lost = fenced && l.standing.lost.load(Ordering::Acquire) == number;
        if fenced && !lost {
            // It holds a new lease (renewed just now) and the tailer is
            // rejoining under it: nothing else to do until it serves.
            continue;
        }
        // Fenced, by this refused renewal or by a refused append before it:
        // the current lease is lost whatever this renewal said. Take a new
        // one (once) and rejoin under it.
        let Some(now) = now.filter(|_| !lost) else {
            // Its sessions were stopped when it found the lease lost
            // (`Standing::fence`), and nothing of theirs is appended from
            // here on: their entries carry the old lease.
            let highest = l.standing.highest_seen.load(Ordering::Acquire);
            match new_lease(&mut l.conn, &l.keys, &l.id, l.ttl, highest).await {
                Ok(n) => {
                    tracing::warn!(node.id = %l.id, old = number, new = n, "took a new lease");
                    l.standing.hold(n);
                    l.standing.rejoin.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "cannot take a new lease yet"),
            }
            continue;
        };
        if let Err(e) = check_position(&mut l).await {
            tracing::warn!(error = %e, "cannot check this node's position in the log");
        }
        if let Err(e) = declare_lapsed(&mut l, number, now).await {
            tracing::warn!(error = %e, "cannot check the other nodes' leases");
        }
    }
    let number = l.standing.number.load(Ordering::Acquire);
    let _: redis::RedisResult<()> = redis::pipe()
        .cmd("ZADD")
        .arg(&l.keys.leases)
        .arg(0)
        .arg(number)
        .ignore()
        .cmd("HDEL")
        .arg(&l.keys.positions)
        .arg(number)
        .ignore()
        .query_async(&mut l.conn)
        .await;
}

/// Reports this node's position, and finds a gap in its state: the log
/// trimmed past it, or ending before it (Redis failed over to a replica
/// that had not got the latest entries).
async fn check_position(l: &mut Leaseholder) -> redis::RedisResult<()> {
    let applied = l.position.lock().clone();
    let number = l.standing.number.load(Ordering::Acquire);
    let (trimmed, end): (Option<String>, StreamRangeReply) = redis::pipe()
        .cmd("HSET")
        .arg(&l.keys.positions)
        .arg(number)
        .arg(&applied)
        .ignore()
        .cmd("GET")
        .arg(&l.keys.trimmed)
        .cmd("XREVRANGE")
        .arg(&l.keys.log)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut l.conn)
        .await?;
    if let Some(trimmed) = trimmed
        && !passed(&applied, &trimmed)
    {
        l.standing
            .go_stale(&l.center, "the log was trimmed past this node's position");
    }
    let end = end.ids.first().map_or("0-0", |e| e.id.as_str());
    if applied != "0-0" && !passed(end, &applied) {
        l.standing.go_stale(
            &l.center,
            "the log ends before this node's position (it went back)",
        );
    }
    Ok(())
}

/// Declares lost every other node whose lease lapsed (by Redis time `now`)
/// while the cluster was live: one script per node checks and appends its
/// "node lost" entry in one step.
async fn declare_lapsed(l: &mut Leaseholder, number: u32, now: u64) -> redis::RedisResult<()> {
    let leases: Vec<(u32, f64)> = redis::cmd("ZRANGE")
        .arg(&l.keys.leases)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut l.conn)
        .await?;
    let ttl = ttl_ms(l.ttl);
    #[allow(clippy::cast_precision_loss)] // ms since 1970 fit a double exactly
    let lapsed = leases
        .into_iter()
        .filter(|(n, until)| *n != number && *until < now as f64);
    for (n, _) in lapsed {
        let node_id: Option<String> = redis::cmd("HGET")
            .arg(&l.keys.node_ids)
            .arg(n)
            .query_async(&mut l.conn)
            .await?;
        let node_id = node_id.unwrap_or_default();
        let entry = Entry {
            node_id: l.id.clone(),
            origin_seq: 0,
            kind: Some(Kind::NodeLost(cp::NodeLost {
                node_number: n,
                node_id: node_id.clone(),
            })),
            node_number: number,
            format: FORMAT,
        }
        .encode_to_vec();
        let declared: i64 = eval(
            &mut l.conn,
            &DECLARE_LOST,
            &[
                &l.keys.leases,
                &l.keys.live_since,
                &l.keys.log,
                &l.keys.positions,
            ],
            &[
                number.to_string().as_bytes(),
                n.to_string().as_bytes(),
                ttl.as_bytes(),
                &entry,
            ],
        )
        .await?;
        match declared {
            1 => {
                tracing::warn!(node.id = %node_id, node.number = n, "node lease lapsed: declared it lost")
            }
            -1 => {
                l.standing.fence(&l.center, number);
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
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
