//! What keeps the room service's log of [`Entry`]s: every change to the
//! state is one entry, and the state is what applying them in order gives.
//! One trait, three stores side by side:
//! - [`memory::MemoryStore`]: nothing kept; the state lives and dies with
//!   the process;
//! - [`mod@file`], the state directory: entries appended to a local file, with
//!   snapshots, so a restarted center loads what it had;
//! - [`redis`]: one log several centers share, each node applying every
//!   entry when the log hands it back.
//!
//! The first two are *local*: this process orders its entries itself and
//! applies each in the step that makes it. Redis is *shared*: the log orders
//! them, and a node applies its own entries only when it reads them back.
//!
//! This layer sits below the room service: a store knows entries and
//! snapshots, never the center's types. Data goes one way: a state
//! directory loads what it kept into a [`Replica`] once, at start; the
//! shared log hands the room service what it reads over one channel
//! ([`FromLog`]), which the room service applies in order.

pub mod file;
pub mod memory;
pub mod redis;

use crate::cluster_proto::{self as cp, entry::Kind};
use crate::error::CenterError;
use crate::ids::node_of;
use std::time::{Duration, SystemTime};

pub use cp::Entry;
pub use memory::MemoryStore;
pub use redis::FromLog;

/// The entry format this build writes and reads ([`Entry::format`]).
pub const FORMAT: u32 = 1;

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

/// The epoch (a cluster node's lease) of the session an entry of `kind`
/// comes from; `None` for entries no session made (operator actions, the
/// grace timer, barriers), which belong to the lease current when they are
/// made. An entry is appended under this lease or not at all: nothing a
/// session of a lost lease sends reaches the log.
pub fn lease_of(kind: &Kind) -> Option<u32> {
    match kind {
        Kind::SessionOpen(o) => Some(node_of(o.session_id)),
        Kind::SessionClose(c) => Some(node_of(c.session_id)),
        Kind::PeerCommand(c) => Some(node_of(c.session_id)),
        Kind::InviteFailed(f) => Some(node_of(f.session_id)),
        Kind::NodeLost(_)
        | Kind::Barrier(_)
        | Kind::FeedReserved(_)
        | Kind::ExpireGrace(_)
        | Kind::RemoveUser(_)
        | Kind::CloseRoom(_)
        | Kind::SendText(_)
        | Kind::StartRecording(_)
        | Kind::StopRecording(_)
        | Kind::DeleteRecording(_)
        | Kind::StartPlayback(_)
        | Kind::StopPlayback(_) => None,
    }
}

/// An entry of the log this build cannot read.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unreadable log entry: {0}")]
pub struct UnknownEntry(pub String);

/// Whether this build can apply `entry`: one of a newer format or of a kind
/// it does not know is refused, never skipped (skipping it would leave this
/// node's state apart from the others').
pub fn readable(entry: &Entry) -> Result<(), UnknownEntry> {
    if entry.format > FORMAT {
        return Err(UnknownEntry(format!(
            "format {} (this build reads {FORMAT})",
            entry.format
        )));
    }
    if entry.kind.is_none() {
        return Err(UnknownEntry("a kind this build does not know".into()));
    }
    Ok(())
}

/// The state at one moment, frozen under the room service's lock; made into
/// a snapshot later, off the lock (the costly part: every user copied out).
pub trait Frozen: Send {
    /// The snapshot message.
    fn into_snapshot(self: Box<Self>) -> cp::Snapshot;
}

/// Sizes of the state, for the one line a store logs after loading it.
#[derive(Debug, Clone, Copy, Default)]
pub struct StateCounts {
    /// Sessions (this process's and, in a cluster, the others').
    pub sessions: usize,
    /// Rooms.
    pub rooms: usize,
    /// Users.
    pub users: usize,
}

/// The state a state directory's entries build (the room service), loaded
/// once at start: the snapshot, then the entries after it. (The shared log
/// hands its entries over a channel instead: [`FromLog`].)
pub trait Replica: Send + Sync + 'static {
    /// Replaces the state by a snapshot's.
    fn load_snapshot(&self, snap: &cp::Snapshot);
    /// Applies an entry a durable local store kept, as it was applied then.
    fn replay(&self, entry: Entry, at: At);
    /// The replay is over: what is applied from now on happens now.
    fn replay_finished(&self);
    /// The state as applied so far, for a snapshot.
    fn freeze(&self) -> Box<dyn Frozen>;
    /// Ends every session the state lists that this process does not hold
    /// (the former process's); how many.
    fn end_former_sessions(&self) -> usize;
    /// Sizes of the state.
    fn state_counts(&self) -> StateCounts;
}

/// Keeps the log of entries (see the module docs).
pub trait Store: Send + Sync + 'static {
    /// This process's id as a node of a cluster sharing the log; `None`
    /// for a local store, which applies each entry as it makes it.
    fn node_id(&self) -> Option<&str> {
        None
    }

    /// The epoch now (see [`crate::ids`]): a cluster node's lease, never
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
    /// ([`FromLog::Entries`]). An error means it will not be
    /// applied.
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
    fn compact(&self, _state: Box<dyn Frozen>) {}

    /// The process is stopping: whatever is not yet durable becomes so;
    /// `state` is the final state, for a store that keeps a snapshot.
    fn close(&self, _state: Box<dyn Frozen>) -> Result<(), CenterError> {
        Ok(())
    }
}
