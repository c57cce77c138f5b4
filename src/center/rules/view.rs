//! Listings of the rules' state, as the API's types: rooms, one room in
//! detail, sessions, MSUs, counts.

use super::{Rules, SessionId, count, required};
use crate::error::CenterError;
use crate::proto;
use std::collections::HashSet;
use std::time::SystemTime;

impl Rules {
    /// Every room with its counts, sorted by id.
    pub fn list_rooms(&self) -> Vec<proto::RoomSummary> {
        let mut rooms: Vec<_> = self
            .rooms
            .iter()
            .map(|(id, room)| proto::RoomSummary {
                room_id: id.clone(),
                user_count: count(room.users.len()),
                session_count: count(room.listeners.len()),
                msu_id: room.msu.clone().unwrap_or_default(),
            })
            .collect();
        rooms.sort_by(|a, b| a.room_id.cmp(&b.room_id));
        rooms
    }

    /// One room in detail (`session_id` 0: nobody speaks for the user).
    pub fn get_room(&self, room_id: &str) -> Result<proto::RoomDetail, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        let room = self.room(room_id)?;
        let mut users: Vec<_> = room
            .users
            .iter()
            .map(|(id, u)| proto::RoomMember {
                user_id: id.clone(),
                user_name: u.name.clone(),
                audience: u.audience,
                session_id: u.speaker().unwrap_or(0),
                pushers: u.pushers.clone(),
            })
            .collect();
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        let mut session_ids: Vec<_> = room.listeners.keys().copied().collect();
        session_ids.sort_unstable();
        Ok(proto::RoomDetail {
            room_id: room_id.to_owned(),
            msu_id: room.msu.clone().unwrap_or_default(),
            users,
            session_ids,
            recording_id: room.recording.clone().unwrap_or_default(),
        })
    }

    /// The sessions the rules know of (open, holding users or MSUs).
    pub fn session_ids(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    /// What the rules know of a session: (identity, users held, MSU ids).
    pub fn session_view(&self, sid: SessionId) -> Option<(String, u32, Vec<String>)> {
        let h = self.sessions.get(&sid)?;
        let mut msus: Vec<String> = h.msus.iter().cloned().collect();
        msus.sort();
        let users = h.rooms.values().map(HashSet::len).sum();
        Some((h.identity.to_string(), count(users), msus))
    }

    /// The media relays of `room_id` (every room's when empty), sorted by
    /// room and publisher.
    pub fn relays(&self, room_id: &str) -> Vec<proto::Relay> {
        let mut rooms: Vec<(&String, &std::sync::Arc<super::Room>)> = self
            .rooms
            .iter()
            .filter(|(id, room)| (room_id.is_empty() || *id == room_id) && !room.relays.is_empty())
            .collect();
        rooms.sort_by(|a, b| a.0.cmp(b.0));
        rooms
            .into_iter()
            .flat_map(|(_, room)| room.relays.values().cloned())
            .collect()
    }

    /// Every MSU: (id, session, rooms sorted, registered at), sorted by id.
    pub fn msus(&self) -> Vec<(String, SessionId, Vec<String>, SystemTime)> {
        let mut msus: Vec<_> = self
            .msus
            .iter()
            .map(|(id, m)| {
                let mut rooms: Vec<_> = m.rooms.iter().cloned().collect();
                rooms.sort();
                (id.clone(), m.session, rooms, m.registered_at)
            })
            .collect();
        msus.sort_by(|a, b| a.0.cmp(&b.0));
        msus
    }

    /// Counts: (rooms, users, msus).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.rooms.len(),
            self.rooms.values().map(|r| r.users.len()).sum(),
            self.msus.len(),
        )
    }
}
