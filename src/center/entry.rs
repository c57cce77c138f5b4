//! Every change to the state as a value, an [`Entry`], applied by one
//! function, [`State::apply`]. A local store (memory, the state directory)
//! applies an entry the moment it is made; a cluster node appends it to the
//! shared log and every node applies it when the log hands it back, in the
//! log's order (docs/CLUSTER.md). Either way the same rules run on the same
//! values, and a replay of the entries gives the same state.

use super::rules::Effects;
use super::state::State;
use crate::cluster_proto::{self as cp, entry::Kind};
use crate::error::CenterError;
use crate::ids::{SessionId, node_of};
use crate::metrics::Metrics;
use crate::proto::{self, EventKind, Reply, command, watch_events_response::Event};
use crate::store::At;

/// What applying an entry produced for whoever made it.
#[derive(Debug)]
pub enum Outcome {
    /// A peer command's reply.
    Reply(Result<Reply, CenterError>),
    /// An operator action's count (users told, users removed).
    Count(Result<u32, CenterError>),
    /// Nothing to answer.
    Done,
}

/// Whether applying `kind` can change the state. A local store keeps only
/// the entries that can: a text message (a peer's or an operator's) is
/// delivered and shown on the feed, and a replay would do neither (so the
/// feed reserves the numbers its events take: see
/// [`super::registry::Registry::reservation_due`]). The shared log keeps
/// every entry: that is how a text reaches the other nodes.
pub(super) fn changes_state(kind: &Kind) -> bool {
    match kind {
        Kind::SendText(_) => false,
        Kind::PeerCommand(c) => !matches!(
            c.command.as_ref().and_then(|c| c.kind.as_ref()),
            Some(command::Kind::TextMessage(_) | command::Kind::Echo(_))
        ),
        _ => true,
    }
}

/// Whether an entry is applied as it happens or replayed from the log.
#[derive(Clone, Copy)]
pub(super) enum Tense<'a> {
    /// It happens now: its lines are logged at INFO, it is counted in the
    /// metrics, and its feed events carry its time.
    Now(&'a Metrics),
    /// It happened before (a replay at start, a node catching up from a
    /// snapshot): it rebuilds the state quietly, its lines at DEBUG
    /// (they were logged when it happened) and counted nowhere.
    Past,
}

impl State {
    /// Applies one entry to the rules and carries its effects to the
    /// sessions this process holds and to the event feed.
    /// `origin`: the node that made it ("" when not a cluster).
    pub(super) fn apply(&mut self, origin: &str, kind: Kind, at: At, tense: Tense<'_>) -> Outcome {
        let mut fx = Effects::default();
        self.rules.replaying = matches!(tense, Tense::Past);
        self.rules.now = at.wall;
        let outcome = match kind {
            Kind::SessionOpen(o) => {
                self.registry.note_open(origin, &o, at.wall);
                let opened =
                    self.rules
                        .open_session(o.session_id, &o.peer_id, &o.incarnation, &mut fx);
                if let Tense::Now(metrics) = tense
                    && opened.reclaimed > 0
                    && self.registry.is_local(o.session_id)
                {
                    metrics.users_reclaimed.inc_by(u64::from(opened.reclaimed));
                }
                // The opening comes first on the feed, then what it took back.
                fx.events.insert(
                    0,
                    (
                        String::new(),
                        EventKind::SessionOpened,
                        Event::SessionOpened(proto::SessionOpened {
                            session_id: o.session_id,
                            peer_addr: o.peer_addr,
                            transport: o.transport,
                            peer_id: o.peer_id,
                            users_reclaimed: opened.reclaimed,
                            incarnation: o.incarnation,
                            users_gone: opened.gone,
                        }),
                    ),
                );
                Outcome::Done
            }
            Kind::SessionClose(c) => {
                self.close_session(c.session_id, c.reason, at, &mut fx);
                Outcome::Done
            }
            Kind::NodeLost(n) => {
                let mut lost: Vec<SessionId> = self
                    .rules
                    .session_ids()
                    .into_iter()
                    .chain(self.registry.ids())
                    .filter(|sid| node_of(*sid) == n.node_number)
                    .collect();
                lost.sort_unstable();
                lost.dedup();
                if matches!(tense, Tense::Now(_)) {
                    tracing::warn!(node.id = %n.node_id, node.number = n.node_number, sessions = lost.len(), "node lost: its sessions end");
                }
                for sid in lost {
                    self.registry.lose(sid);
                    self.close_session(sid, "node lost".into(), at, &mut fx);
                }
                Outcome::Done
            }
            Kind::PeerCommand(c) => Outcome::Reply(self.command(c, at, &mut fx)),
            Kind::Barrier(_) => Outcome::Done,
            Kind::FeedReserved(r) => {
                self.registry.reserved(r.through);
                Outcome::Done
            }
            Kind::ExpireGrace(_) => {
                self.rules.expire(at.grace, &mut fx);
                Outcome::Done
            }
            Kind::InviteFailed(f) => {
                self.rules.invite_failed(&f.room_id, f.session_id, &mut fx);
                Outcome::Done
            }
            Kind::RemoveUser(r) => {
                Outcome::Count(self.rules.remove_user(&r.room_id, &r.user_id, &mut fx))
            }
            Kind::CloseRoom(r) => Outcome::Count(self.rules.close_room(&r.room_id, &mut fx)),
            Kind::StartRecording(r) => Outcome::Count(self.rules.start_recording(&r, &mut fx)),
            Kind::StopRecording(r) => {
                Outcome::Count(self.rules.stop_recording(&r.room_id, "stopped", &mut fx))
            }
            Kind::DeleteRecording(r) => {
                Outcome::Count(self.rules.delete_recording(&r.recording_id, &mut fx))
            }
            Kind::StartPlayback(r) => Outcome::Count(self.rules.start_playback(&r, &mut fx)),
            Kind::StopPlayback(r) => {
                Outcome::Count(self.rules.stop_playback(&r.playback_id, &mut fx))
            }
            Kind::SendText(r) => Outcome::Count(self.rules.send_text(
                &r.room_id,
                &r.user_id,
                &r.user_name,
                &r.message,
                &mut fx,
            )),
        };
        self.registry.apply(fx, at.wall, tense);
        outcome
    }

    fn close_session(&mut self, sid: SessionId, reason: String, at: At, fx: &mut Effects) {
        self.registry.close(sid);
        self.rules.close_session(sid, at.grace, fx);
        fx.events.push((
            String::new(),
            EventKind::SessionClosed,
            Event::SessionClosed(proto::SessionClosed {
                session_id: sid,
                reason,
            }),
        ));
    }

    fn command(
        &mut self,
        c: cp::PeerCommand,
        at: At,
        fx: &mut Effects,
    ) -> Result<Reply, CenterError> {
        let sid = c.session_id;
        let rooms = &mut self.rules;
        let kind = c
            .command
            .and_then(|c| c.kind)
            .ok_or_else(|| CenterError::invalid("command", "empty command"))?;
        let kind = match kind {
            command::Kind::Echo(r) => proto::reply::Kind::Echo(proto::EchoResponse {
                data_json: r.data_json,
            }),
            command::Kind::RegisterMsu(r) => {
                proto::reply::Kind::RegisterMsu(rooms.register_msu(sid, r, at.wall, fx)?)
            }
            command::Kind::Join(r) => proto::reply::Kind::Join(rooms.join(sid, r, fx)?),
            command::Kind::Push(r) => ack(rooms.push(sid, r, fx)?),
            command::Kind::PullRemoteStream(r) => ack(rooms.pull_remote_stream(sid, r, fx)?),
            command::Kind::UserDisconnect(r) => ack(rooms.user_disconnect(sid, r, fx)?),
            command::Kind::UserLeave(r) => ack(rooms.user_leave(sid, r, fx)?),
            command::Kind::TextMessage(r) => ack(rooms.text_message(sid, r, fx)?),
            command::Kind::UserReconnect(r) => ack(rooms.user_reconnect(sid, r, fx)?),
            command::Kind::RelayStats(r) => {
                rooms.relay_stats(sid, r);
                proto::reply::Kind::Ack(proto::Ack {})
            }
            command::Kind::RecordingStatus(r) => ack(rooms.recording_status(sid, r, fx)?),
            command::Kind::PlaybackEnded(r) => ack(rooms.playback_ended(sid, r, fx)?),
        };
        Ok(Reply { kind: Some(kind) })
    }
}

fn ack((): ()) -> proto::reply::Kind {
    proto::reply::Kind::Ack(proto::Ack {})
}
