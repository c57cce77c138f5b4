//! The room service's state: the rules' state and the registry, changed
//! together in one step under one lock (see [`super::sequencer`]).

use super::registry::{FrozenRegistry, Registry};
use super::rules::Rules;
use super::snapshot::FrozenRules;
use crate::cluster_proto as cp;
use crate::store::Frozen;

/// The rules' state and the registry of live sessions.
pub(super) struct State {
    /// Rooms, users, pushers, MSUs, relays, recordings: the rules' state.
    pub(super) rules: Rules,
    /// Live sessions' outlets and the event feed.
    pub(super) registry: Registry,
}

impl State {
    /// The state at this moment, for a snapshot taken after log entry
    /// `after` ("" for a local store): the rooms are shared, not copied.
    pub(super) fn freeze(&self, after: &str) -> FrozenState {
        FrozenState {
            after: after.to_owned(),
            rules: self.rules.freeze(),
            registry: self.registry.freeze(),
        }
    }
}

/// The state at one moment (frozen under the lock), not yet a snapshot.
pub struct FrozenState {
    after: String,
    rules: FrozenRules,
    registry: FrozenRegistry,
}

impl FrozenState {
    /// The snapshot message (the costly part: every user copied out).
    pub fn into_snapshot(self) -> cp::Snapshot {
        let mut snap = cp::Snapshot {
            after: self.after,
            ..Default::default()
        };
        self.rules.write(&mut snap);
        self.registry.write(&mut snap);
        snap
    }
}

impl Frozen for FrozenState {
    fn into_snapshot(self: Box<Self>) -> cp::Snapshot {
        FrozenState::into_snapshot(*self)
    }
}
