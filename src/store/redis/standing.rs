//! Where a node stands in its cluster (lease, health, gaps), and the store
//! the node's center appends through: it queues entries for the writer and
//! refuses those of a lease the node lost.

use super::to_state::ToState;
use crate::error::CenterError;
use crate::store::{At, Entry, Store};
use prost::Message as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use tokio::sync::mpsc;

/// Where a node stands in its cluster, shared by its tasks and its store.
#[derive(Default)]
pub(super) struct Standing {
    /// Whether the log's store answers.
    pub(super) healthy: AtomicBool,
    /// Its state has a gap (the log was trimmed past it, or went back): it
    /// serves nobody until it has rejoined from the snapshot.
    pub(super) stale: AtomicBool,
    /// It lost its lease (another node declared it lost): its appends are
    /// refused; it serves nobody until it has a new lease and rejoined.
    pub(super) fenced: AtomicBool,
    /// Its state cannot follow the log (an entry it cannot read): it serves
    /// nobody until restarted with a build that reads it.
    pub(super) broken: AtomicBool,
    /// Its number: its current lease, never reused.
    pub(super) number: AtomicU32,
    /// The last lease it found lost: while it is the current one, the
    /// lease task takes a new one (once; then the tailer rejoins).
    pub(super) lost: AtomicU32,
    /// Every lease this process held, the current one last: entries of
    /// them the log hands back answer this process's waiters.
    pub(super) leases: parking_lot::Mutex<Vec<u32>>,
    /// The highest lease this node has seen anywhere (its own, in the
    /// entries it applied, in the sessions of a snapshot): a new lease is
    /// taken above it, so a Redis that lost its counter cannot hand out a
    /// number again while a node that saw it lives.
    pub(super) highest_seen: AtomicU32,
    /// Asks the tailer to reload the snapshot and replay from there.
    pub(super) rejoin: tokio::sync::Notify,
}

impl Standing {
    /// This node now holds lease `n`.
    pub(super) fn hold(&self, n: u32) {
        self.leases.lock().push(n);
        self.saw(n);
        self.number.store(n, Ordering::Release);
    }

    /// Lease `n` was seen (in an entry, a session id, a snapshot).
    pub(super) fn saw(&self, n: u32) {
        self.highest_seen.fetch_max(n, Ordering::AcqRel);
    }

    pub(super) fn serving(&self) -> bool {
        !self.stale.load(Ordering::Relaxed)
            && !self.fenced.load(Ordering::Relaxed)
            && !self.broken.load(Ordering::Relaxed)
    }

    /// This node lost lease `lease`: if that is its current one, it stops
    /// serving now (its sessions close with "node lost", so their SFUs
    /// reconnect to another node); the lease task takes a new lease, then
    /// asks the tailer to rejoin. The refusal of an older lease (a batch
    /// sent before the node took its new one) changes nothing.
    pub(super) async fn fence(&self, to_state: &ToState, lease: u32) {
        if lease != self.number.load(Ordering::Acquire) {
            return;
        }
        self.lost.store(lease, Ordering::Release);
        if !self.fenced.swap(true, Ordering::AcqRel) {
            let n = to_state.evict("node lost").await;
            tracing::error!(
                node.number = self.number.load(Ordering::Relaxed),
                sessions = n,
                "this node lost its lease (declared lost, or cut off past it): its sessions close; it rejoins under a new lease"
            );
        }
    }

    /// This node's state has a gap: it stops serving and rejoins from the
    /// snapshot.
    pub(super) async fn go_stale(&self, to_state: &ToState, why: &str) {
        if !self.stale.swap(true, Ordering::AcqRel) {
            let n = to_state.evict("node stale").await;
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
pub(super) struct Queued {
    pub(super) origin_seq: u64,
    pub(super) lease: u32,
    pub(super) bytes: Vec<u8>,
}

/// The shared log as a node's center sees it: a queue to this node's
/// writer, and where the node stands.
pub(super) struct RedisStore {
    pub(super) id: String,
    /// Entries for the writer.
    pub(super) tx: mpsc::Sender<Queued>,
    pub(super) standing: Arc<Standing>,
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
