//! What the shared log hands the room service, and the one way it does:
//! a bounded channel whose other end the room service's sequencer reads
//! and applies, in order. The Redis side produces these and never holds or
//! calls the room service: whatever it asks of the state (how many
//! sessions an eviction closed, the state frozen after an entry) comes
//! back on a oneshot, after everything handed before it was applied.

use crate::cluster_proto as cp;
use crate::error::CenterError;
use crate::store::{Entry, Frozen, StateCounts};
use tokio::sync::{mpsc, oneshot};

/// How many items may wait for the sequencer: the tailer, the writer and
/// the lease task wait (and the tailer reads no further) when it is full.
const DEPTH: usize = 64;

/// One item the shared log hands the room service.
pub enum FromLog {
    /// The state is this snapshot's from now on (a node joining or
    /// rejoining); the entries after it follow.
    Snapshot(Box<cp::Snapshot>),
    /// Entries in the log's order, each readable by this build (checked
    /// before they are handed) with the log's time for it (Unix ms).
    /// `past`: a node catching up (applied quietly, counted nowhere).
    Entries {
        /// The entries and their times.
        entries: Vec<(Entry, u64)>,
        /// Whether they are the past.
        past: bool,
    },
    /// The log refused these entries of this process (by origin number):
    /// whoever waits for them gets `error`.
    Refused {
        /// The entries' origin numbers.
        origin_seqs: Vec<u64>,
        /// Why.
        error: CenterError,
    },
    /// Close every session this process holds, for `reason`; how many.
    Evict {
        /// The close reason.
        reason: &'static str,
        /// How many sessions closed.
        done: oneshot::Sender<usize>,
    },
    /// End every session the state lists under lease `lease` that this
    /// process does not hold (a rejoined node's former ones); how many.
    EndFormer {
        /// The lease.
        lease: u32,
        /// The close reason.
        reason: &'static str,
        /// How many ended.
        done: oneshot::Sender<usize>,
    },
    /// The state as applied up to here, for a snapshot taken after log
    /// entry `after`.
    Freeze {
        /// The log entry the snapshot is taken after.
        after: String,
        /// The frozen state.
        done: oneshot::Sender<Box<dyn Frozen>>,
    },
    /// Sizes of the state as applied up to here.
    Counts {
        /// The sizes.
        done: oneshot::Sender<StateCounts>,
    },
}

/// The Redis side's end of the channel (see the module docs).
#[derive(Clone)]
pub(super) struct ToState(mpsc::Sender<FromLog>);

impl ToState {
    /// The channel: this end for the Redis side, the other for the
    /// sequencer.
    pub(super) fn channel() -> (Self, mpsc::Receiver<FromLog>) {
        let (tx, rx) = mpsc::channel(DEPTH);
        (Self(tx), rx)
    }

    /// Hands `item` over. Fails only when the room service is gone (the
    /// process is stopping): then nothing is left to apply it to.
    async fn hand(&self, item: FromLog) -> bool {
        self.0.send(item).await.is_ok()
    }

    /// Asks for a value the sequencer sends back once it applied everything
    /// handed before; `None` when it is gone.
    async fn ask<T>(&self, item: impl FnOnce(oneshot::Sender<T>) -> FromLog) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        if !self.hand(item(tx)).await {
            return None;
        }
        rx.await.ok()
    }

    /// See [`FromLog::Snapshot`].
    pub(super) async fn snapshot(&self, snap: cp::Snapshot) {
        self.hand(FromLog::Snapshot(Box::new(snap))).await;
    }

    /// See [`FromLog::Entries`].
    pub(super) async fn entries(&self, entries: Vec<(Entry, u64)>, past: bool) {
        if !entries.is_empty() {
            self.hand(FromLog::Entries { entries, past }).await;
        }
    }

    /// See [`FromLog::Refused`].
    pub(super) async fn refused(&self, origin_seqs: Vec<u64>, error: CenterError) {
        if !origin_seqs.is_empty() {
            self.hand(FromLog::Refused { origin_seqs, error }).await;
        }
    }

    /// See [`FromLog::Evict`].
    pub(super) async fn evict(&self, reason: &'static str) -> usize {
        self.ask(|done| FromLog::Evict { reason, done })
            .await
            .unwrap_or(0)
    }

    /// See [`FromLog::EndFormer`].
    pub(super) async fn end_former(&self, lease: u32, reason: &'static str) -> usize {
        self.ask(|done| FromLog::EndFormer {
            lease,
            reason,
            done,
        })
        .await
        .unwrap_or(0)
    }

    /// See [`FromLog::Freeze`].
    pub(super) async fn freeze(&self, after: &str) -> Option<Box<dyn Frozen>> {
        let after = after.to_owned();
        self.ask(|done| FromLog::Freeze { after, done }).await
    }

    /// See [`FromLog::Counts`].
    pub(super) async fn counts(&self) -> StateCounts {
        self.ask(|done| FromLog::Counts { done })
            .await
            .unwrap_or_default()
    }
}
