//! The MSUs registered with the center, and which rooms each serves.
//!
//! Invariants: an MSU id belongs to one session; a room is served by at
//! most one MSU; a new room goes to the MSU serving the fewest rooms (ties
//! by id, so every node of a cluster chooses alike).

use crate::error::CenterError;
use crate::ids::SessionId;
use std::collections::{HashMap, HashSet};
use std::time::SystemTime;

/// A registered media server unit.
pub(crate) struct Msu {
    /// The session it registered through.
    pub(crate) session: SessionId,
    /// The rooms it serves.
    pub(crate) rooms: HashSet<String>,
    /// When it last registered.
    pub(crate) registered_at: SystemTime,
    /// Its media address (ip, port), where SFUs send what it relays.
    pub(crate) media: Option<(String, i64)>,
}

/// See the module docs.
#[derive(Default)]
pub(crate) struct MsuPool {
    msus: HashMap<String, Msu>,
}

impl MsuPool {
    /// Registers `id` through `session` at `now` with its media address,
    /// or refreshes it; an id another session holds is refused with 409.
    pub(crate) fn register(
        &mut self,
        id: &str,
        session: SessionId,
        now: SystemTime,
        media: Option<(String, i64)>,
    ) -> Result<(), CenterError> {
        match self.msus.get_mut(id) {
            Some(msu) if msu.session != session => Err(CenterError::Conflict(format!(
                "msu {id} is registered by another session"
            ))),
            Some(msu) => {
                msu.registered_at = now;
                msu.media = media;
                Ok(())
            }
            None => {
                self.msus.insert(
                    id.to_owned(),
                    Msu {
                        session,
                        rooms: HashSet::new(),
                        registered_at: now,
                        media,
                    },
                );
                Ok(())
            }
        }
    }

    /// An MSU as a snapshot recorded it.
    pub(crate) fn restore(&mut self, id: String, msu: Msu) {
        self.msus.insert(id, msu);
    }

    /// Whether `id` is registered.
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.msus.contains_key(id)
    }

    /// The media address MSU `id` registered with.
    pub(crate) fn media_of(&self, id: &str) -> Option<&(String, i64)> {
        self.msus.get(id)?.media.as_ref()
    }

    /// The session MSU `id` registered through.
    pub(crate) fn session_of(&self, id: &str) -> Option<SessionId> {
        self.msus.get(id).map(|m| m.session)
    }

    /// Chooses an MSU for `room_id`, which has none: the one serving the
    /// fewest rooms (ties by id), not `avoid`; it serves the room from now.
    pub(crate) fn assign(&mut self, room_id: &str, avoid: Option<&str>) -> Option<String> {
        let (id, msu) = self
            .msus
            .iter_mut()
            .filter(|(id, _)| Some(id.as_str()) != avoid)
            .min_by(|a, b| a.1.rooms.len().cmp(&b.1.rooms.len()).then(a.0.cmp(b.0)))?;
        msu.rooms.insert(room_id.to_owned());
        Some(id.clone())
    }

    /// MSU `id` serves `room_id` again (it came back to the relays it had
    /// there).
    pub(crate) fn adopt(&mut self, id: &str, room_id: &str) {
        if let Some(msu) = self.msus.get_mut(id) {
            msu.rooms.insert(room_id.to_owned());
        }
    }

    /// MSU `id` no longer serves `room_id`.
    pub(crate) fn release(&mut self, id: &str, room_id: &str) {
        if let Some(msu) = self.msus.get_mut(id) {
            msu.rooms.remove(room_id);
        }
    }

    /// Removes MSU `id`; returns the rooms it served, sorted.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Vec<String>> {
        let msu = self.msus.remove(id)?;
        let mut rooms: Vec<String> = msu.rooms.into_iter().collect();
        rooms.sort();
        Some(rooms)
    }

    /// How many MSUs are registered.
    pub(crate) fn len(&self) -> usize {
        self.msus.len()
    }

    /// Every MSU, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Msu)> {
        self.msus.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Register { msu: u8, session: u8 },
        Open { room: u8 },
        Close { room: u8 },
        Lose { msu: u8 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u8, 0..3u8).prop_map(|(msu, session)| Op::Register { msu, session }),
            (0..16u8).prop_map(|room| Op::Open { room }),
            (0..16u8).prop_map(|room| Op::Close { room }),
            (0..4u8).prop_map(|msu| Op::Lose { msu }),
        ]
    }

    proptest! {
        /// Rooms opening and closing, MSUs coming and going, as the rules
        /// drive the pool: every room is served by at most one MSU, the
        /// one the room records; an id stays with its first session; a new
        /// room goes to a least-loaded MSU.
        #[test]
        fn every_room_has_at_most_one_msu_and_new_rooms_go_to_the_least_loaded(ops in proptest::collection::vec(op(), 1..80)) {
            let mut pool = MsuPool::default();
            // The rooms' side: room -> its MSU.
            let mut served: HashMap<String, Option<String>> = HashMap::new();
            let mut owner: HashMap<String, SessionId> = HashMap::new();
            for op in ops {
                match op {
                    Op::Register { msu, session } => {
                        let id = format!("msu{msu}");
                        let session = SessionId::from(session);
                        let result = pool.register(&id, session, SystemTime::UNIX_EPOCH, None);
                        let first = *owner.entry(id.clone()).or_insert(session);
                        prop_assert_eq!(result.is_ok(), first == session);
                    }
                    Op::Open { room } => {
                        let room = format!("room{room}");
                        if served.get(&room).is_some_and(Option::is_some) {
                            continue;
                        }
                        let least = pool.iter().map(|(_, m)| m.rooms.len()).min();
                        let chosen = pool.assign(&room, None);
                        prop_assert_eq!(chosen.is_some(), least.is_some());
                        if let Some(id) = &chosen {
                            let load = pool.iter().find(|(i, _)| *i == id).map(|(_, m)| m.rooms.len() - 1);
                            prop_assert_eq!(load, least);
                        }
                        served.insert(room, chosen);
                    }
                    Op::Close { room } => {
                        let room = format!("room{room}");
                        if let Some(Some(id)) = served.remove(&room) {
                            pool.release(&id, &room);
                        }
                    }
                    Op::Lose { msu } => {
                        let id = format!("msu{msu}");
                        if let Some(rooms) = pool.remove(&id) {
                            owner.remove(&id);
                            prop_assert!(rooms.is_sorted());
                            for room in rooms {
                                prop_assert_eq!(served.get(&room), Some(&Some(id.clone())));
                                served.insert(room, None);
                            }
                        }
                    }
                }
                // The pool's view and the rooms' view agree.
                for (id, msu) in pool.iter() {
                    for room in &msu.rooms {
                        prop_assert_eq!(served.get(room), Some(&Some(id.clone())));
                    }
                }
                for (room, msu) in &served {
                    if let Some(id) = msu {
                        prop_assert!(pool.iter().any(|(i, m)| i == id && m.rooms.contains(room)));
                    }
                }
            }
        }
    }
}
