//! What one step of the rules caused: notices for sessions, events for
//! the feed, routing that reached nobody. Domain values only: the registry
//! turns notices into wire messages.

use crate::ids::SessionId;
use crate::proto::{self, EventKind, peer_event, watch_events_response::Event};

/// What sessions are told, as the rules decided it. The rules say what
/// and to whom; the registry encodes each notice once and queues it for
/// every receiver.
#[derive(Debug)]
// Made and consumed in one step, never stored: boxing the large variant
// would only add an allocation per event.
#[allow(clippy::large_enum_variant)]
pub enum Notice {
    /// A room event for every session in `to`.
    Event {
        /// Who hears it (never empty).
        to: Vec<SessionId>,
        /// What happened.
        event: peer_event::Kind,
    },
    /// Asks the MSU behind session `to` to serve `room_id` (an `invite`).
    Invite {
        /// The MSU's session.
        to: SessionId,
        /// The room.
        room_id: String,
    },
}

/// What one step of the rules caused, in order.
#[derive(Debug, Default)]
pub struct Effects {
    /// What sessions are told, in order.
    pub notices: Vec<Notice>,
    /// Events for the feed: (room id or "", kind, event).
    pub events: Vec<(String, EventKind, Event)>,
    /// Pulls and text messages that reached nobody, for the metrics and
    /// the log (the feed has them already).
    pub dropped: Vec<Dropped>,
    /// Joins that moved a user from another live session (`replace`).
    pub users_replaced: u64,
    /// Pulls the publisher's SFU will not serve (no MSU in the room; it
    /// sends to another puller).
    pub pulls_unserved: u64,
}

/// A pull or text message that reached nobody (PROTOCOL.md §4: no error
/// reaches the SFU for these, so the center makes them visible itself).
#[derive(Debug, Clone)]
pub struct Dropped {
    /// `pullRemoteStream` or `textMessage`.
    pub method: &'static str,
    /// The room it named.
    pub room_id: String,
    /// The user it named.
    pub user_id: String,
    /// Why, as a metric label: `room_not_found`, `user_not_found`,
    /// `user_disconnected`, `pusher_not_found`.
    pub reason: &'static str,
}

impl Dropped {
    /// The reason as people read it.
    pub fn reason_text(&self) -> &'static str {
        match self.reason {
            "room_not_found" => "room not found",
            "user_not_found" => "user not found",
            "user_disconnected" => "user disconnected",
            _ => "pusher not found",
        }
    }
}

impl Effects {
    /// Records a pull or text message that reached nobody, on the feed too.
    pub(super) fn drop_routing(
        &mut self,
        from: SessionId,
        method: &'static str,
        room_id: &str,
        user_id: &str,
        pusher_id: &str,
        reason: &'static str,
    ) {
        let dropped = Dropped {
            method,
            room_id: room_id.to_owned(),
            user_id: user_id.to_owned(),
            reason,
        };
        self.event(
            room_id,
            EventKind::RoutingDropped,
            Event::RoutingDropped(proto::RoutingDropped {
                method: method.to_owned(),
                user_id: user_id.to_owned(),
                reason: dropped.reason_text().to_owned(),
                from_session_id: from,
                pusher_id: pusher_id.to_owned(),
            }),
        );
        self.dropped.push(dropped);
    }

    pub(super) fn event(&mut self, room_id: &str, kind: EventKind, event: Event) {
        self.events.push((room_id.to_owned(), kind, event));
    }

    pub(super) fn send(&mut self, to: Vec<SessionId>, event: peer_event::Kind) -> u32 {
        if to.is_empty() {
            return 0;
        }
        let n = u32::try_from(to.len()).unwrap_or(u32::MAX);
        self.notices.push(Notice::Event { to, event });
        n
    }
}
