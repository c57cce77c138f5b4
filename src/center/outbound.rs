//! What the room service queues for the sessions it serves, and what it
//! knows of each: the types both front ends share with the core.

use crate::proto::{self, Transport};
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;
use tokio_util::sync::CancellationToken;

/// A room event on its way to one or more sessions.
///
/// Shared by every session it goes to. The center queues it as a value; a
/// front end encodes it in its own task, outside the center's lock, and the
/// first one to do so leaves its encoding here for the others (one encoding
/// per room broadcast).
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: proto::PeerEvent,
    /// The event as a front end puts it on the wire (the WebSocket front
    /// end's protoo text), filled by the first session that sends it. Typed
    /// by that front end, so the core names no transport's types.
    pub encoded: OnceLock<Box<dyn std::any::Any + Send + Sync>>,
    /// About its size on the wire, for byte-bounded queues that take it
    /// before its text is made: the payload forwarded verbatim when there
    /// is one, else its protobuf size (about its JSON's).
    pub size: usize,
}

impl Delivery {
    /// A delivery of `event`.
    pub fn new(event: proto::PeerEvent) -> Self {
        use proto::peer_event::Kind;
        // A verbatim payload travels beside the typed fields it repeats:
        // counting both would count its bytes twice.
        let size = match &event.kind {
            Some(Kind::TextMessage(proto::TextMessage { payload_json, .. }))
            | Some(Kind::PullRemoteStream(proto::PullRemoteStreamRequest {
                payload_json, ..
            })) if !payload_json.is_empty() => payload_json.len(),
            _ => prost::Message::encoded_len(&event),
        };
        Self {
            event,
            encoded: OnceLock::new(),
            size,
        }
    }
}

/// What the center queues for a session.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A room event.
    Event(Arc<Delivery>),
    /// Ask this session's MSU to serve `room_id` (an `invite` request).
    Invite {
        /// The room.
        room_id: String,
    },
}

impl Outbound {
    /// Roughly what this item costs on the wire (an event's serialized
    /// size; an invite is a small request), for byte-bounded queues.
    pub fn wire_size(&self) -> usize {
        match self {
            Self::Event(d) => d.size,
            Self::Invite { room_id } => 64 + room_id.len(),
        }
    }
}

/// Why an item could not be queued for a session.
#[derive(Debug, PartialEq, Eq)]
pub enum OutletError {
    /// The session's queue is full: it does not keep up.
    Full,
    /// The session's task is gone.
    Closed,
}

/// Where a session receives what the center sends it: the sending half of
/// the session's bounded outbound queue. Implemented for `mpsc::Sender<T>`
/// so each front end can mix center items with its own (responses).
pub trait Outlet: Send + Sync + 'static {
    /// Queues `item` without waiting.
    fn try_deliver(&self, item: Outbound) -> Result<(), OutletError>;
    /// Items queued and not yet taken by the session.
    fn depth(&self) -> usize;
}

impl<T: From<Outbound> + Send + 'static> Outlet for tokio::sync::mpsc::Sender<T> {
    fn try_deliver(&self, item: Outbound) -> Result<(), OutletError> {
        use tokio::sync::mpsc::error::TrySendError;
        self.try_send(T::from(item)).map_err(|e| match e {
            TrySendError::Full(_) => OutletError::Full,
            TrySendError::Closed(_) => OutletError::Closed,
        })
    }

    fn depth(&self) -> usize {
        self.max_capacity() - self.capacity()
    }
}

/// Why a session is closed when its queue is full: it does not keep up.
pub const SLOW_CONSUMER: &str = "slow consumer";

/// The center's order to a session's task to close, with why: it does not
/// keep up ([`SLOW_CONSUMER`]), its node lost its place in the cluster, its
/// state went stale. Told once; the first reason stays. One order for every
/// reason, so a session's task waits on one future for all of them.
#[derive(Debug, Default)]
pub struct Eviction {
    token: CancellationToken,
    reason: OnceLock<&'static str>,
}

impl Eviction {
    /// Orders the session closed for `reason`.
    pub fn evict(&self, reason: &'static str) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Whether the session was ordered closed.
    pub fn is_ordered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when the session must close, with why.
    pub async fn evicted(&self) -> &'static str {
        self.token.cancelled().await;
        self.reason.get().copied().unwrap_or("closed by the center")
    }
}

/// Counters of one session, shared by its task and the center.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Messages received from the peer.
    pub messages_in: AtomicU64,
    /// Messages queued to the peer.
    pub messages_out: AtomicU64,
    /// Unix time (ms) of the last message from the peer.
    pub last_seen_ms: AtomicU64,
}

/// Who a session is, for listings and the event feed.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Peer address (ip:port).
    pub addr: String,
    /// How it is connected.
    pub transport: Transport,
    /// The identity that outlives the connection (PROTOCOL.md §6): token
    /// `sub`, else `?peer=` / `x-peer-id`, else the peer's IP address.
    pub identity: String,
    /// Which process of the peer this is (`?incarnation=`,
    /// `x-peer-incarnation` or the token's claim; "" when none is given).
    /// Another incarnation under the same identity means the old process
    /// is gone, and its users with it.
    pub incarnation: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(payload_json: &str) -> proto::PeerEvent {
        proto::PeerEvent {
            kind: Some(proto::peer_event::Kind::TextMessage(proto::TextMessage {
                room_id: "room".into(),
                user_id: "user".into(),
                user_name: "name".into(),
                message: "a message of some length".into(),
                extra: Default::default(),
                payload_json: payload_json.into(),
            })),
        }
    }

    #[test]
    fn a_verbatim_payload_is_counted_once() {
        let payload = r#"{"roomId":"room","userId":"user","userName":"name","message":"a message of some length"}"#;
        assert_eq!(Delivery::new(text(payload)).size, payload.len());
        let typed = text("");
        assert_eq!(
            Delivery::new(typed.clone()).size,
            prost::Message::encoded_len(&typed)
        );
    }
}
