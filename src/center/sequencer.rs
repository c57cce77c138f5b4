//! The one way a change goes through the room service: the sequencer puts
//! every entry in one order and applies it to the [`State`], in one of two
//! forms decided once, by the store:
//! - **local** (memory, the state directory): the entry is taken by the
//!   store and applied at once, under the state lock, and whoever waits for
//!   it is answered in the same step;
//! - **shared** (Redis): the entry is appended to the log under an origin
//!   number, and whoever waits for it is kept here until the log hands the
//!   entry back ([`Sequencer::apply_from_log`]) or refuses it
//!   ([`Sequencer::abandon`]).
//!
//! The pending replies, origin numbers and the closings a store could not
//! take yet live here, not in the store: the store only takes appends and
//! hands entries back.

use super::entry::{Outcome, Tense, changes_state};
use super::state::State;
use crate::clock::Clock;
use crate::cluster_proto::entry::Kind;
use crate::error::CenterError;
use crate::ids::SessionId;
use crate::metrics::Metrics;
use crate::proto::Reply;
use crate::store::{At, Entry, FORMAT, Store, lease_of};
use parking_lot::{Mutex, MutexGuard};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::oneshot;

use super::outbound::Eviction;

/// Who waits for an entry to be applied.
pub(super) enum Waiter {
    /// Nobody.
    None,
    /// A peer's command: its reply is queued in the step that applies it.
    Reply(Box<dyn FnOnce(Result<Reply, CenterError>) + Send>),
    /// An operator action.
    Count(oneshot::Sender<Result<u32, CenterError>>),
    /// The grace timer, a barrier.
    Done(oneshot::Sender<()>),
    /// A session's opening: if it cannot be recorded, the session must
    /// close (it could do nothing), with why.
    Opened(Arc<Eviction>),
    /// A session's closing: if it cannot be recorded now, it is kept and
    /// recorded when the store takes it again ([`Sequencer::retry_closings`]),
    /// so its users get their grace instead of staying bound to a session
    /// that is gone.
    Closed(Weak<Sequencer>, SessionId, String),
}

impl Waiter {
    fn complete(self, outcome: Outcome) {
        match (self, outcome) {
            (Self::Reply(respond), Outcome::Reply(r)) => respond(r),
            (Self::Count(tx), Outcome::Count(r)) => {
                let _ = tx.send(r);
            }
            (Self::Done(tx), _) => {
                let _ = tx.send(());
            }
            (Self::Reply(respond), _) => {
                respond(Err(CenterError::Internal("the entry had no reply".into())))
            }
            (Self::Count(tx), _) => {
                let _ = tx.send(Err(CenterError::Internal("the entry had no count".into())));
            }
            // A local store that could not record the entry says so here.
            (waiter @ (Self::Opened(_) | Self::Closed(..)), Outcome::Count(Err(e))) => {
                waiter.fail(e);
            }
            (Self::None | Self::Opened(_) | Self::Closed(..), _) => {}
        }
    }

    fn fail(self, e: CenterError) {
        match self {
            Self::Reply(respond) => respond(Err(e)),
            Self::Count(tx) => {
                let _ = tx.send(Err(e));
            }
            Self::Opened(eviction) => eviction.evict("state store unavailable"),
            // The session's lease was lost: "node lost" ended it already.
            Self::Closed(..) if e == CenterError::LeaseLost => {}
            Self::Closed(sequencer, sid, reason) => {
                if let Some(s) = sequencer.upgrade() {
                    s.unrecorded_closings.lock().push((sid, reason));
                }
            }
            Self::Done(_) | Self::None => {}
        }
    }
}

/// Orders and applies every change (see the module docs).
pub(super) struct Sequencer {
    /// The only copy of the state. Held for one step at a time, never
    /// across an await.
    state: Mutex<State>,
    /// What keeps the log of entries (memory, the state directory, Redis).
    store: Arc<dyn Store>,
    /// Whether entries go through a log other nodes share.
    shared: bool,
    metrics: Arc<Metrics>,
    clock: Clock,
    /// Entries this node appended, by origin number, whose maker waits.
    pending: Mutex<HashMap<u64, Waiter>>,
    next_origin: AtomicU64,
    /// Session closings the store could not take yet (see [`Waiter::Closed`]).
    unrecorded_closings: Mutex<Vec<(SessionId, String)>>,
}

impl Sequencer {
    pub(super) fn new(
        state: State,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Self {
        Self {
            state: Mutex::new(state),
            shared: store.node_id().is_some(),
            store,
            metrics,
            clock,
            pending: Mutex::new(HashMap::new()),
            next_origin: AtomicU64::new(1),
            unrecorded_closings: Mutex::new(Vec::new()),
        }
    }

    /// The state, for one step (never held across an await).
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock()
    }

    /// The clock graces are counted in (see [`Sequencer::grace_now`]).
    pub(super) fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The store.
    pub(super) fn store(&self) -> &dyn Store {
        &*self.store
    }

    /// Whether entries go through a log other nodes share (then they are
    /// applied when the log hands them back, not in the step that makes them).
    pub(super) fn shared(&self) -> bool {
        self.shared
    }

    /// The time graces are counted in: about Unix time, from the center's
    /// clock for a local store, from the system in a cluster (where entries
    /// carry the log's time).
    pub(super) fn grace_now(&self) -> Duration {
        if self.shared {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
        } else {
            self.clock.since_epoch()
        }
    }

    /// Applies `kind` now, with the state lock held: the store takes it
    /// first (a durable one records it; if it cannot, nothing changes and
    /// the maker hears why), then the rules apply it. What changes no state
    /// (a text message) is not kept: only the feed numbers its events take
    /// are, reserved ahead of use.
    pub(super) fn apply_local(&self, state: &mut State, kind: Kind) -> Outcome {
        // Coarse clocks: a step's time is kept to the millisecond at best,
        // and a precise clock read per step showed in profiles.
        let at = At {
            grace: self.clock.since_epoch_coarse(),
            wall: crate::clock::coarse_system_time(),
        };
        // Numbers are reserved before the events that take them.
        if let Some(through) = state.registry.reservation_due() {
            self.reserve_feed(state, through, at);
        }
        let keep = changes_state(&kind);
        let entry = self.local_entry(kind, state);
        if keep && let Err(e) = self.store.append(&entry, at) {
            return match entry.kind {
                Some(Kind::PeerCommand(_)) => Outcome::Reply(Err(e)),
                _ => Outcome::Count(Err(e)),
            };
        }
        let Some(kind) = entry.kind else {
            return Outcome::Done;
        };
        let outcome = state.apply("", kind, at, Tense::Now(&self.metrics));
        if self.store.wants_snapshot() {
            self.store.compact(Box::new(state.freeze("")));
        }
        outcome
    }

    /// An entry of the local form: made and applied in one step, so no
    /// node id or origin number; it carries the feed's number before it.
    fn local_entry(&self, kind: Kind, state: &State) -> Entry {
        Entry {
            node_id: String::new(),
            origin_seq: 0,
            node_number: lease_of(&kind).unwrap_or_else(|| self.store.node_number()),
            kind: Some(kind),
            format: FORMAT,
            feed_seq: state.registry.cursor(),
        }
    }

    /// Has the store keep a reservation of the feed's numbers up to
    /// `through`. If it cannot now, the next step tries again (half a block
    /// is still reserved, and the store is reported unready meanwhile).
    fn reserve_feed(&self, state: &mut State, through: u64, at: At) {
        let reservation = Kind::FeedReserved(crate::cluster_proto::FeedReserved { through });
        let entry = self.local_entry(reservation, state);
        match self.store.append(&entry, at) {
            Ok(()) => state.registry.reserved(through),
            Err(e) => tracing::debug!(error = %e, "cannot reserve feed numbers yet"),
        }
    }

    /// Makes a change: applied at once by the local form (with `waiter`
    /// completed in the same step), appended to the shared log by the
    /// shared one (`waiter` completed when the log hands it back).
    pub(super) fn submit(&self, kind: Kind, waiter: Waiter) {
        let Some(node_id) = self.store.node_id() else {
            let mut state = self.state.lock();
            let outcome = self.apply_local(&mut state, kind);
            drop(state);
            return waiter.complete(outcome);
        };
        let origin_seq = self.next_origin.fetch_add(1, Ordering::Relaxed);
        if !matches!(waiter, Waiter::None) {
            self.pending.lock().insert(origin_seq, waiter);
        }
        // A session's entry goes under the lease it was opened with: if
        // that lease is lost, the log refuses it.
        let entry = Entry {
            node_id: node_id.to_owned(),
            origin_seq,
            node_number: lease_of(&kind).unwrap_or_else(|| self.store.node_number()),
            kind: Some(kind),
            format: FORMAT,
            feed_seq: 0,
        };
        let at = At {
            grace: self.grace_now(),
            wall: SystemTime::now(),
        };
        if let Err(e) = self.store.append(&entry, at) {
            self.abandon(origin_seq, e);
        }
    }

    /// The log could not take entry `origin_seq` of this node: whoever waits
    /// for it gets `e` (it will not be applied).
    pub(super) fn abandon(&self, origin_seq: u64, e: CenterError) {
        let waiter = self.pending.lock().remove(&origin_seq);
        if let Some(w) = waiter {
            w.fail(e);
        }
    }

    /// Applies an entry the shared log handed back, at `unix_ms` (the log's
    /// time for it). Every node applies every entry in the log's order; the
    /// node that made it answers its maker in the same step. (The log hands
    /// over only entries this build can read: [`crate::store::readable`].)
    pub(super) fn apply_from_log(&self, entry: Entry, unix_ms: u64, past: bool) {
        let Some(kind) = entry.kind else {
            return;
        };
        let at = At {
            grace: Duration::from_millis(unix_ms),
            wall: SystemTime::UNIX_EPOCH + Duration::from_millis(unix_ms),
        };
        let tense = if past {
            Tense::Past
        } else {
            Tense::Now(&self.metrics)
        };
        // Its maker waits here if it came from one of this process's leases
        // (the current one, or one lost after the entry was appended).
        let mine = self.shared && self.store.owns_lease(entry.node_number);
        let mut state = self.state.lock();
        let outcome = state.apply(&entry.node_id, kind, at, tense);
        if mine {
            let waiter = self.pending.lock().remove(&entry.origin_seq);
            if let Some(w) = waiter {
                w.complete(outcome);
            }
        }
    }

    /// Applies an entry a durable local store kept, as it was applied
    /// before (at `at`). Nothing is recorded again.
    pub(super) fn replay(&self, entry: Entry, at: At) {
        if let Some(kind) = entry.kind {
            let mut state = self.state.lock();
            // Its events take the numbers they took when it was applied
            // (the texts between them were not kept).
            state.registry.replaying_from(entry.feed_seq);
            state.apply("", kind, at, Tense::Past);
        }
    }

    /// Records that session `sid` ended, now or (if the store cannot take
    /// it now) once it can: a closing is never lost, and applying one twice
    /// changes nothing.
    pub(super) fn close_recorded(self: &Arc<Self>, sid: SessionId, reason: String) {
        self.submit(
            Kind::SessionClose(crate::cluster_proto::SessionClose {
                session_id: sid,
                reason: reason.clone(),
            }),
            Waiter::Closed(Arc::downgrade(self), sid, reason),
        );
    }

    /// Session closings waiting for the store to take them.
    pub(super) fn unrecorded_closings(&self) -> usize {
        self.unrecorded_closings.lock().len()
    }

    /// Records again the session closings the store could not take (an
    /// outage). Returns how many were tried.
    pub(super) fn retry_closings(self: &Arc<Self>) -> usize {
        if !self.store.ready() {
            return 0;
        }
        let closings = std::mem::take(&mut *self.unrecorded_closings.lock());
        let n = closings.len();
        if n > 0 {
            tracing::info!(
                sessions = n,
                "recording the closings of sessions that ended while the state store was unavailable"
            );
        }
        for (sid, reason) in closings {
            self.close_recorded(sid, reason);
        }
        n
    }
}
