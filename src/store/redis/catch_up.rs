//! Reading the log: the snapshot and the entries after it, for a node
//! that joins or rejoins, and the reads the tailer makes.

use super::READ_BATCH;
use super::keys::Keys;
use super::leases::set_position;
use super::link::Link;
use super::standing::Standing;
use super::to_state::ToState;
use crate::cluster_proto as cp;
use crate::ids::node_of;
use crate::store::StateCounts;
use crate::store::{Entry, readable};
use prost::Message as _;
use redis::streams::{StreamRangeReply, StreamReadReply};
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Milliseconds of a stream id (`ms-seq`): the entry's time in the cluster.
pub(super) fn stream_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

/// Why catching up with the log failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum CatchUpError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("entry {id}: {reason}")]
    Unreadable { id: String, reason: String },
}

/// What catching up with the log did, for the one line a join or a rejoin
/// logs about it.
pub(super) struct CaughtUp {
    /// The last entry applied.
    pub(super) last: String,
    /// The entry the snapshot it started from was taken after, and its size.
    pub(super) snapshot: Option<(String, usize)>,
    /// Entries replayed after the snapshot.
    pub(super) entries: u64,
    pub(super) took: Duration,
}

impl CaughtUp {
    /// The one line about it (the entries replayed are the past: they log
    /// nothing of their own: they are handed as the past).
    pub(super) async fn log(
        &self,
        to_state: &ToState,
        node_id: &str,
        number: u32,
        what: &'static str,
    ) {
        let StateCounts {
            sessions,
            rooms,
            users,
        } = to_state.counts().await;
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
pub(super) async fn catch_up(
    reader: &mut Link,
    writer: &mut Link,
    keys: &Keys,
    standing: &Standing,
    to_state: &ToState,
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
            for s in &snap.sessions {
                standing.saw(node_of(s.session_id));
            }
            to_state.snapshot(snap).await;
            snapshot = Some((after.clone(), data.len()));
            last = after;
        }
        None => to_state.snapshot(cp::Snapshot::default()).await,
    }
    set_position(writer, keys, number, &last).await?;
    let mut applied = 0u64;
    if let Some(end_id) = end.ids.first().map(|e| e.id.clone()) {
        while !passed(&last, &end_id) {
            let LogRead::Entries(batch) = read(reader, keys, &last, None).await? else {
                return Err(CatchUpError::Redis(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "the log was trimmed past the snapshot while it was replayed",
                ))));
            };
            if batch.is_empty() {
                break;
            }
            let mut handed = Vec::with_capacity(batch.len());
            for (entry_id, bytes) in batch {
                let unreadable = |reason: String| CatchUpError::Unreadable {
                    id: entry_id.clone(),
                    reason,
                };
                let entry =
                    Entry::decode(bytes.as_slice()).map_err(|e| unreadable(e.to_string()))?;
                standing.saw(entry.node_number);
                readable(&entry).map_err(|e| unreadable(e.to_string()))?;
                handed.push((entry, stream_ms(&entry_id)));
                last = entry_id;
                applied += 1;
            }
            to_state.entries(handed, true).await;
        }
    }
    Ok(CaughtUp {
        last,
        snapshot,
        entries: applied,
        took: started.elapsed(),
    })
}

/// The current snapshot: the entry it was taken after, and its bytes.
pub(super) async fn latest_snapshot(
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
pub(super) fn passed(a: &str, b: &str) -> bool {
    let parse = |id: &str| {
        let mut it = id.split('-').map(|p| p.parse::<u64>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    parse(a) >= parse(b)
}

/// What one read of the log found after a position.
pub(super) enum LogRead {
    /// The entries after it (maybe none), in order.
    Entries(Vec<(String, Vec<u8>)>),
    /// The log was trimmed past it: entries after it are gone, and whoever
    /// applied what follows would skip them.
    TrimmedPast,
}

/// Reads the entries after `last` (blocking up to `block_ms` when given),
/// with where the log was trimmed, read right after them: a trim past
/// `last` is found on the read that would skip entries, not later.
pub(super) async fn read(
    conn: &mut Link,
    keys: &Keys,
    last: &str,
    block_ms: Option<u64>,
) -> redis::RedisResult<LogRead> {
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
        return Ok(LogRead::TrimmedPast);
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
    Ok(LogRead::Entries(out))
}
