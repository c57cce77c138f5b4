//! The tailer: applies every entry of the log in order, and rejoins from
//! the snapshot when the node's state has a gap.

use super::READ_BLOCK_MS;
use super::catch_up::{CatchUpError, LogRead, catch_up, read, stream_ms};
use super::keys::Keys;
use super::link::Link;
use super::snapshots::{Snapshots, snapshot_if_due};
use super::standing::Standing;
use super::to_state::ToState;
use crate::store::{Entry, readable};
use prost::Message as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the tailer works with.
pub(super) struct Tailer {
    pub(super) conn: Link,
    pub(super) node_id: String,
    /// For reporting its position when it rejoins.
    pub(super) writer: Link,
    pub(super) keys: Keys,
    pub(super) to_state: ToState,
    pub(super) standing: Arc<Standing>,
}

/// Applies every entry of the log after `last`, in order, until shutdown.
/// Redis errors are retried (the connection manager reconnects); entries
/// are never skipped: a node cut off resumes where it was, one whose state
/// has a gap (or that lost its lease) rejoins from the snapshot when asked
/// ([`Standing::rejoin`]), and an entry it cannot read stops it serving.
/// Every quarter of `snapshot_every` entries it checks whether the log is
/// due for a snapshot ([`snapshot_if_due`]): here, between batches, the
/// state is exactly that after `last`.
pub(super) async fn tail(
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
            Ok(LogRead::TrimmedPast) => {
                t.standing
                    .go_stale(&t.to_state, "the log was trimmed past this node's position")
                    .await;
                continue;
            }
            Ok(LogRead::Entries(entries)) => Ok(entries),
            Err(e) => Err(e),
        };
        match batch {
            Ok(entries) => {
                backoff = Duration::from_millis(50);
                since_check += entries.len() as u64;
                snapshots.applied_since += entries.len() as u64;
                let mut handed = Vec::with_capacity(entries.len());
                for (id, bytes) in entries {
                    let entry = Entry::decode(bytes.as_slice())
                        .map_err(|e| e.to_string())
                        .and_then(|entry| {
                            t.standing.saw(entry.node_number);
                            readable(&entry).map_err(|e| e.to_string())?;
                            Ok(entry)
                        });
                    match entry {
                        Ok(entry) => handed.push((entry, stream_ms(&id))),
                        Err(reason) => {
                            // Skipping it would leave this node's state
                            // apart from the others'; applying the rest
                            // without it too. What came before it is applied.
                            t.to_state.entries(handed, false).await;
                            t.standing.broken.store(true, Ordering::Release);
                            let n = t.to_state.evict("node cannot read the log").await;
                            tracing::error!(id = %id, reason, sessions = n, "a log entry this build cannot read: this node stops serving; upgrade it and restart");
                            return;
                        }
                    }
                    last = id;
                }
                t.to_state.entries(handed, false).await;
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
                        &t.to_state,
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
pub(super) async fn rejoin(t: &mut Tailer) -> Option<String> {
    let mut backoff = Duration::from_millis(50);
    loop {
        let number = t.standing.number.load(Ordering::Acquire);
        // Read through the writer's connection: the tailer's own may still
        // carry the blocking read the rejoin interrupted (up to a second).
        let mut reader = t.writer.clone();
        match catch_up(
            &mut reader,
            &mut t.writer,
            &t.keys,
            &t.standing,
            &t.to_state,
        )
        .await
        {
            Ok(caught_up) => {
                t.standing.stale.store(false, Ordering::Release);
                t.standing.fenced.store(false, Ordering::Release);
                // Its sessions from before, whose closings it could not
                // record while it was out, end now (their users get the
                // grace); a fenced node's were ended by "node lost".
                let ended = t.to_state.end_former(number, "node rejoined").await;
                caught_up
                    .log(&t.to_state, &t.node_id, number, "rejoined the cluster")
                    .await;
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
