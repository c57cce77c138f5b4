//! The writer: one task per node appends the node's entries in order,
//! pipelined, under the lease they were made under.

use super::APPEND_BATCH;
use super::keys::Keys;
use super::link::Link;
use super::scripts::{APPEND, Appended, eval};
use super::standing::Queued;
use super::standing::Standing;
use super::to_state::ToState;
use crate::error::CenterError;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// This node's writer: appends queued entries in order, in batches, each
/// batch by one script that first checks this node still holds its lease
/// (fencing: a node declared lost never appends again). A batch Redis does
/// not confirm within `timeout` is answered with 503 "state store
/// unavailable" to whoever waits for its entries.
pub(super) async fn write_entries(
    mut rx: mpsc::Receiver<Queued>,
    mut conn: Link,
    keys: Keys,
    to_state: ToState,
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
        let (current, stale): (Vec<Queued>, Vec<Queued>) =
            batch.drain(..).partition(|q| !fenced && q.lease == lease);
        batch = current;
        if !stale.is_empty() {
            tracing::info!(
                entries = stale.len(),
                "discarded what sessions of a lost lease sent"
            );
            let refused = stale.iter().map(|q| q.origin_seq).collect();
            to_state.refused(refused, CenterError::LeaseLost).await;
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
        let appended = tokio::time::timeout(timeout, appended)
            .await
            .map(|r| r.map(Appended::from_reply));
        match appended {
            Ok(Ok(Appended::Taken)) => {
                if !standing.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("state store reachable again");
                }
            }
            Ok(Ok(Appended::Fenced)) => {
                // The log refused the lease: this node was declared lost.
                standing.fence(&to_state, lease).await;
                let refused = batch.iter().map(|q| q.origin_seq).collect();
                to_state.refused(refused, CenterError::LeaseLost).await;
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
                let refused = batch.iter().map(|q| q.origin_seq).collect();
                to_state.refused(refused, error).await;
            }
        }
        batch.clear();
    }
}
