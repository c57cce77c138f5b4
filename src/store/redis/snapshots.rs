//! Snapshots of the cluster's state, and trimming the log below them.

use super::keys::Keys;
use super::link::Link;
use super::to_state::ToState;
use prost::Message as _;
use std::sync::Arc;

/// When a node's tailer takes snapshots.
pub(super) struct Snapshots {
    /// `cluster.snapshot_every`.
    pub(super) every: u64,
    /// The entry the latest snapshot this node saw was taken after.
    pub(super) seen: Option<String>,
    /// Entries applied since that snapshot (about: counted from when this
    /// node saw it), or since this node joined.
    pub(super) applied_since: u64,
    /// The connection snapshots are stored on.
    pub(super) store: Link,
    pub(super) node_id: String,
    /// The last entry this node applied, for its lease renewals.
    pub(super) position: Arc<parking_lot::Mutex<String>>,
}

/// Makes the snapshot stored at `ARGV[2]` (after entry `ARGV[1]`) the
/// current one unless a newer one is there (then it is dropped), drops the
/// previous one, trims the log below the previous snapshot (and below the
/// oldest position a node with a lease reported, so no live node loses an
/// entry it has not applied) and releases the lock. The snapshot's bytes
/// are stored by a plain `SET` before: through a script they would be
/// copied twice while Redis serves nobody else. `KEYS[6]`: the leases.
/// Returns 0 when a newer snapshot was there, else 1.
pub(super) const SWITCH_SNAPSHOT: &str = r"
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
pub(super) async fn snapshot_if_due(
    conn: &mut Link,
    keys: &Keys,
    to_state: &ToState,
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
    let Some(frozen) = to_state.freeze(last).await else {
        return Ok(());
    };
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
        let thread = match spawned {
            Ok(thread) => thread,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the snapshot thread");
                return;
            }
        };
        let data = rx.await;
        // It ends right after it sent (or panicked): wait for it off the
        // runtime's workers, so no snapshot thread outlives its task.
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        let Ok(data) = data else {
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

/// Gives the calling thread the lowest CPU priority (nice 19), on Linux
/// (where a thread id names one thread to `setpriority`). If it cannot,
/// the snapshot is built at normal priority: slower sessions, no harm.
#[cfg(target_os = "linux")]
pub(super) fn lower_this_threads_priority() {
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), 19) {
        tracing::debug!(error = %e, "cannot lower the snapshot thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn lower_this_threads_priority() {}
