//! One peer session's access to the room service, for both front ends.

use super::entry::Outcome;
use super::invites::PendingInvites;
use super::outbound::{Eviction, OutletError, SLOW_CONSUMER, SessionStats};
use super::sequencer::{Sequencer, Waiter};
use crate::auth::Grant;
use crate::cluster_proto::{self as cp, entry::Kind};
use crate::error::CenterError;
use crate::ids::SessionId;
use crate::metrics::Metrics;
use crate::proto::{self, Command, Reply, command};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;
use tokio::sync::oneshot;

/// What queuing a reply to a session's peer needs, detached from the
/// session's handle: a cluster node queues a reply when the shared log
/// hands the command back, after the front end moved on. One `Arc`: every
/// message takes a copy (a cancellation token's copy takes a lock).
#[derive(Clone)]
pub struct ReplyTally(Arc<TallyParts>);

struct TallyParts {
    stats: Arc<SessionStats>,
    eviction: Arc<Eviction>,
    metrics: Arc<Metrics>,
}

impl ReplyTally {
    /// The tally of the session with these counters, order to close and
    /// metrics.
    pub(super) fn new(
        stats: Arc<SessionStats>,
        eviction: Arc<Eviction>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self(Arc::new(TallyParts {
            stats,
            eviction,
            metrics,
        }))
    }
}

impl ReplyTally {
    /// Counts a reply queued to the peer; a full queue makes the session a
    /// slow consumer.
    pub fn queued(&self, result: Result<(), OutletError>) {
        match result {
            Ok(()) => {
                self.0.stats.messages_out.fetch_add(1, Ordering::Relaxed);
            }
            Err(OutletError::Full) => self.0.eviction.evict(SLOW_CONSUMER),
            Err(OutletError::Closed) => {}
        }
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }
}

/// One peer session's access to the center. Dropping it closes the session.
pub struct SessionHandle {
    /// Where its commands go.
    pub(super) seq: Arc<Sequencer>,
    /// `invite`s sent to this session's MSU and not answered yet.
    pub(super) invites: PendingInvites,
    pub(super) id: SessionId,
    pub(super) grant: Grant,
    pub(super) close_reason: Option<String>,
    /// Its counters, its order to close and the process's metrics, handed
    /// to each reply and notification (see [`ReplyTally`]).
    pub(super) tally: ReplyTally,
}

impl SessionHandle {
    /// This session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// What this session's peer may do.
    pub fn grant(&self) -> &Grant {
        &self.grant
    }

    /// The process's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.tally.0.metrics
    }

    /// What a reply queued later (see [`SessionHandle::execute_then`]) needs.
    pub fn tally(&self) -> ReplyTally {
        self.tally.clone()
    }

    /// This session's counters.
    pub fn stats(&self) -> &SessionStats {
        &self.tally.0.stats
    }

    /// Orders this session closed as a slow consumer ([`SLOW_CONSUMER`]):
    /// an item for its peer found its queue full.
    pub fn fell_behind(&self) {
        self.tally.0.eviction.evict(SLOW_CONSUMER);
    }

    /// Resolves when the center orders this session closed (see
    /// [`Eviction`]), with the reason to close it with: [`SLOW_CONSUMER`]
    /// when an item for it found its queue full.
    pub async fn evicted(&self) -> &'static str {
        self.tally.0.eviction.evicted().await
    }

    /// Counts one message received from the peer.
    pub fn note_inbound(&self) {
        let stats = self.stats();
        stats.messages_in.fetch_add(1, Ordering::Relaxed);
        stats
            .last_seen_ms
            .store(crate::clock::coarse_unix_ms(), Ordering::Relaxed);
    }

    /// Counts one message queued to the peer by the front end itself.
    pub fn note_outbound(&self) {
        self.stats().messages_out.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs one command from this session's peer and hands its result to
    /// `respond` in the same step as the notifications it caused, with the
    /// center's lock held: `respond` queues the reply and must not call back
    /// into the center. So no peer ever gets an answer that describes an
    /// older state than a notification it already received.
    ///
    /// In a cluster the command is appended to the shared log and `respond`
    /// runs when this node applies it, hence `Send + 'static`.
    pub fn execute_then(
        &self,
        command: Command,
        respond: impl FnOnce(Result<Reply, CenterError>) + Send + 'static,
    ) {
        if let Err(e) = self.grant.permits(&command) {
            return respond(Err(CenterError::Forbidden(e)));
        }
        let Some(kind) = command.kind else {
            return respond(Err(CenterError::invalid("command", "empty command")));
        };
        if let command::Kind::Echo(r) = &kind {
            let echo = reply(proto::reply::Kind::Echo(proto::EchoResponse {
                data_json: r.data_json.clone(),
            }));
            if !self.seq.shared() {
                // The heartbeat needs no state: never wait for the lock.
                return respond(Ok(echo));
            }
            // A cluster node answers it in the log's order, so an echo stays
            // a barrier (everything due to this session before it arrives
            // first); but the heartbeat never fails for want of the store.
            let entry = Kind::PeerCommand(cp::PeerCommand {
                session_id: self.id,
                command: Some(Command { kind: Some(kind) }),
            });
            let respond = move |r: Result<Reply, CenterError>| {
                respond(r.or(Ok(echo)));
            };
            return self.seq.submit(entry, Waiter::Reply(Box::new(respond)));
        }
        let entry = Kind::PeerCommand(cp::PeerCommand {
            session_id: self.id,
            command: Some(Command { kind: Some(kind) }),
        });
        if self.seq.shared() {
            return self.seq.submit(entry, Waiter::Reply(Box::new(respond)));
        }
        // A local store answers in the same step, without boxing.
        let mut state = self.seq.lock();
        match self.seq.apply_local(&mut state, entry) {
            Outcome::Reply(r) => respond(r),
            _ => respond(Err(CenterError::Internal("a command had no reply".into()))),
        }
        drop(state);
    }

    /// Runs one command and resolves to its result, on any store: at once
    /// for a local one (the future is ready when returned), when the log
    /// hands the command back on a cluster node. For callers that do not
    /// queue replies (tests, benchmarks); front ends use
    /// [`SessionHandle::execute_then`].
    pub fn execute(
        &self,
        command: Command,
    ) -> impl std::future::Future<Output = Result<Reply, CenterError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        self.execute_then(command, move |r| {
            let _ = tx.send(r);
        });
        async move {
            rx.await
                .unwrap_or_else(|_| Err(CenterError::Internal("the reply was dropped".into())))
        }
    }

    /// Records an `invite` for `room_id` this session's MSU must answer by
    /// `deadline`; returns the request id to send it with.
    pub fn invite_sent(&self, room_id: String, deadline: tokio::time::Instant) -> u64 {
        self.invites.start(room_id, deadline)
    }

    /// The MSU's answer to invite `id`: a refusal (`Err` with its reason)
    /// moves the room to another live MSU. Answers to no pending invite are
    /// logged and ignored.
    pub fn invite_answered(&self, id: u64, outcome: Result<(), String>) {
        match self.invites.answer(id) {
            Some(room_id) => self.invite_outcome(&room_id, outcome),
            None => tracing::debug!(id, "answer to no pending invite"),
        }
    }

    fn invite_outcome(&self, room_id: &str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => tracing::debug!(room.id = room_id, "invite accepted"),
            Err(reason) => {
                tracing::warn!(room.id = room_id, %reason, "invite failed: the room moves to another MSU");
                self.seq.submit(
                    Kind::InviteFailed(cp::InviteFailed {
                        room_id: room_id.to_owned(),
                        session_id: self.id,
                    }),
                    Waiter::None,
                );
            }
        }
    }

    /// The per-session checks both front ends run once a second: invites
    /// not answered in time move their rooms; a session whose token expired
    /// must close, and this returns why.
    pub fn tick(&self, now: tokio::time::Instant) -> Option<&'static str> {
        for room_id in self.invites.expire(now) {
            self.invite_outcome(&room_id, Err("not answered in time".into()));
        }
        if self.grant.is_expired(SystemTime::now()) {
            tracing::info!("token expired: closing");
            return Some("token expired");
        }
        None
    }

    /// Closes the session now, with a reason for the event feed.
    pub fn close(mut self, reason: impl Into<String>) {
        self.close_reason = Some(reason.into());
    }
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        let reason = self.close_reason.take().unwrap_or_else(|| "closed".into());
        // Nothing reaches it from now on, whenever its closing is applied.
        if self.seq.shared() {
            self.seq.lock().registry.close(self.id);
        }
        self.seq.close_recorded(self.id, reason);
    }
}

fn reply(kind: proto::reply::Kind) -> Reply {
    Reply { kind: Some(kind) }
}
