//! What keeps the room service's log of [`Entry`]s: every change to the
//! state is one entry, and the state is what applying them in order gives.
//! Three stores, one trait:
//! - [`MemoryStore`]: nothing kept; the state lives and dies with the process;
//! - the state directory ([`crate::file_store`]): entries appended to a
//!   local file, with snapshots, so a restarted center loads what it had;
//! - Redis ([`crate::cluster`]): one log several centers share, each node
//!   applying every entry when the log hands it back.
//!
//! The first two are *local*: this process orders its entries itself and
//! applies each in the step that makes it. Redis is *shared*: the log orders
//! them, and a node applies its own entries only when it reads them back.

use super::{Entry, FrozenState};
use crate::error::CenterError;
use std::time::{Duration, SystemTime};

/// When an entry is applied: the time reconnect graces are counted in, and
/// the wall time MSU registrations are stamped with. A durable store keeps
/// both with the entry, so a replay applies it as it was.
#[derive(Debug, Clone, Copy)]
pub struct At {
    /// Grace time: about Unix time ([`crate::clock::Clock::since_epoch`]
    /// for a local store, the log's time in a cluster).
    pub grace: Duration,
    /// Wall time.
    pub wall: SystemTime,
}

/// Keeps the log of entries (see the module docs).
pub trait Store: Send + Sync + 'static {
    /// This process's id as a node of a cluster sharing the log; `None`
    /// for a local store, which applies each entry as it makes it.
    fn node_id(&self) -> Option<&str> {
        None
    }

    /// The epoch now (see [`super::ids`]): a cluster node's lease, never
    /// reused, a state directory's start; the high 32 bits of the session
    /// ids it hands out (0 in memory only). A cluster node's changes when it
    /// lost its lease and took a new one.
    fn node_number(&self) -> u32 {
        0
    }

    /// Whether lease `n` is, or was, this process's: entries of it that
    /// the log hands back answer this process's waiters.
    fn owns_lease(&self, n: u32) -> bool {
        n == self.node_number()
    }

    /// Takes `entry`, made at `at`. A local store is called under the
    /// center's lock, in the order entries are applied, right before this
    /// one is; a shared one queues it for the log, which hands it back
    /// through [`super::Center::apply_logged`]. An error means it will not
    /// be applied.
    fn append(&self, entry: &Entry, at: At) -> Result<(), CenterError>;

    /// Whether it answers (for `/readyz`).
    fn ready(&self) -> bool {
        true
    }

    /// Whether this process may serve sessions at all: false while a
    /// cluster node has lost its lease or its state has a gap (it is
    /// rejoining). True through a short outage of the store, which
    /// [`Store::ready`] reports: a load balancer that took every node out
    /// then would cut every SFU's link (`/serving` answers this one).
    fn serving(&self) -> bool {
        true
    }

    /// Asked under the center's lock after each entry a local store took:
    /// whether it wants the state as it is now ([`Store::compact`]).
    fn wants_snapshot(&self) -> bool {
        false
    }

    /// The state after every entry taken so far (frozen under the lock):
    /// a durable local store writes it and forgets the entries before it.
    fn compact(&self, _state: FrozenState) {}

    /// The process is stopping: whatever is not yet durable becomes so;
    /// `state` is the final state, for a store that keeps a snapshot.
    fn close(&self, _state: FrozenState) -> Result<(), CenterError> {
        Ok(())
    }
}

/// Keeps nothing: the state lives in memory only.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl Store for MemoryStore {
    fn append(&self, _entry: &Entry, _at: At) -> Result<(), CenterError> {
        Ok(())
    }
}
