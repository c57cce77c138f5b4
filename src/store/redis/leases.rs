//! Leases: a node's number, renewed while it lives; a node whose lease
//! lapsed is declared lost (docs/CLUSTER.md, "Leases are epochs").

use super::catch_up::passed;
use super::keys::Keys;
use super::link::Link;
use super::scripts::{DECLARE_LOST, JOIN, RENEW, eval};
use super::standing::Standing;
use super::to_state::ToState;
use crate::cluster_proto::{self as cp, entry::Kind};
use crate::ids::{EPOCH_BASE_UNIX_MS, EPOCH_UNIT_MS, MAX_EPOCH};
use crate::store::Entry;
use crate::store::FORMAT;
use prost::Message as _;
use redis::streams::StreamRangeReply;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Takes a new lease (a new node number) for node `id`, above `highest_seen`.
pub(super) async fn new_lease(
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

pub(super) fn ttl_ms(ttl: Duration) -> String {
    ttl.as_millis().to_string()
}

/// Reports the last entry this node applied: no trim goes past it.
pub(super) async fn set_position(
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
pub(super) struct Leaseholder {
    pub(super) conn: Link,
    pub(super) keys: Keys,
    pub(super) id: String,
    pub(super) ttl: Duration,
    /// The last entry this node applied.
    pub(super) position: Arc<parking_lot::Mutex<String>>,
    pub(super) standing: Arc<Standing>,
    pub(super) to_state: ToState,
}

/// Renews this node's lease every third of its time and declares lost the
/// nodes whose leases lapsed while the cluster was live; finds out when
/// this node itself was fenced (its lease gone: it takes a new one and
/// rejoins) or its state has a gap (the log trimmed past its position, or
/// gone back behind it after a Redis failover: it rejoins). On shutdown its
/// lease ends at once, so the others act at once on what is left.
pub(super) async fn leases(mut l: Leaseholder, shutdown: CancellationToken) {
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
                l.standing.fence(&l.to_state, number).await;
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
pub(super) async fn check_position(l: &mut Leaseholder) -> redis::RedisResult<()> {
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
            .go_stale(&l.to_state, "the log was trimmed past this node's position")
            .await;
    }
    let end = end.ids.first().map_or("0-0", |e| e.id.as_str());
    if applied != "0-0" && !passed(end, &applied) {
        l.standing
            .go_stale(
                &l.to_state,
                "the log ends before this node's position (it went back)",
            )
            .await;
    }
    Ok(())
}

/// Declares lost every other node whose lease lapsed (by Redis time `now`)
/// while the cluster was live: one script per node checks and appends its
/// "node lost" entry in one step.
pub(super) async fn declare_lapsed(
    l: &mut Leaseholder,
    number: u32,
    now: u64,
) -> redis::RedisResult<()> {
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
            feed_seq: 0,
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
                l.standing.fence(&l.to_state, number).await;
                return Ok(());
            }
            _ => {}
        }
    }
    Ok(())
}
