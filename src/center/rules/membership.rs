//! A room's members: its users, who holds each, and which sessions hear it.

use crate::ids::SessionId;
use crate::proto;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Who holds a user.
#[derive(Debug, Clone)]
pub(crate) enum Holder {
    /// A live session; it speaks for the user while `connected`.
    Session { sid: SessionId, connected: bool },
    /// Its session ended: kept until `deadline` for a session with
    /// `identity` and the same `incarnation`.
    Orphan {
        identity: Arc<str>,
        incarnation: Arc<str>,
        deadline: Duration,
    },
}

/// One user of a room.
#[derive(Clone)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) audience: bool,
    pub(crate) holder: Holder,
    pub(crate) pushers: Vec<proto::Publisher>,
}

impl User {
    /// The session that speaks for the user.
    pub(super) fn speaker(&self) -> Option<SessionId> {
        match self.holder {
            Holder::Session {
                sid,
                connected: true,
            } => Some(sid),
            _ => None,
        }
    }

    /// The live session that holds the user, connected or not.
    pub(super) fn holder_session(&self) -> Option<SessionId> {
        match self.holder {
            Holder::Session { sid, .. } => Some(sid),
            Holder::Orphan { .. } => None,
        }
    }
}

/// One room. Shared (`Arc`) so that a snapshot can hold every room while
/// the rules go on: a room changed meanwhile is copied first
/// (`Arc::make_mut`), the snapshot keeps the room as it was.
#[derive(Default, Clone)]
pub(crate) struct Room {
    pub(crate) users: HashMap<String, User>,
    /// Session -> users of this room it holds: the sessions that hear it.
    /// Ordered, so who hears a broadcast comes out in a stable order (tests,
    /// a shared store) without a sort per message.
    pub(crate) listeners: BTreeMap<SessionId, u32>,
    /// The MSU serving this room.
    pub(crate) msu: Option<String>,
    /// Publisher user id -> where its media goes between SFUs.
    pub(crate) relays: std::collections::BTreeMap<String, proto::Relay>,
    /// The recording running in this room.
    pub(crate) recording: Option<String>,
}

impl Room {
    /// Every session hearing the room but `exclude`.
    pub(super) fn audience_but(&self, exclude: &[Option<SessionId>]) -> Vec<SessionId> {
        // Sized once: a room broadcast makes one of these per message.
        let mut to = Vec::with_capacity(self.listeners.len());
        to.extend(
            self.listeners
                .keys()
                .filter(|s| !exclude.contains(&Some(**s)))
                .copied(),
        );
        to
    }

    pub(super) fn stop_hearing(&mut self, sid: SessionId) {
        if let Some(n) = self.listeners.get_mut(&sid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.listeners.remove(&sid);
            }
        }
    }
}
