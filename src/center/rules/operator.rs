//! What operators do through the API: remove a user, close a room, speak
//! to a room.

use super::*;

impl Rules {
    /// Removes a user; every session of the room (its own too) gets
    /// `userLeave`. Returns how many sessions were told.
    pub fn remove_user(
        &mut self,
        room_id: &str,
        user_id: &str,
        fx: &mut Effects,
    ) -> Result<u32, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        required(user_id, "user_id", "user_id is required")?;
        let room = self.room(room_id)?;
        if !room.users.contains_key(user_id) {
            return Err(CenterError::UserNotFound(user_id.to_owned()));
        }
        let notified = fx.send(room.audience_but(&[]), user_left(room_id, user_id));
        self.remove(room_id, user_id, fx);
        happened!(
            self,
            room.id = room_id,
            user.id = user_id,
            "user removed by operator"
        );
        fx.event(
            room_id,
            EventKind::UserLeft,
            user_left_event(user_id, "kicked"),
        );
        self.drop_if_empty(room_id, fx);
        Ok(notified)
    }

    /// Closes a room; every session gets `userLeave` for each user.
    pub fn close_room(&mut self, room_id: &str, fx: &mut Effects) -> Result<u32, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        let room = self.room(room_id)?;
        let mut user_ids: Vec<String> = room.users.keys().cloned().collect();
        user_ids.sort();
        let to = room.audience_but(&[]);
        for user_id in &user_ids {
            fx.send(to.clone(), user_left(room_id, user_id));
        }
        for user_id in &user_ids {
            self.remove(room_id, user_id, fx);
            fx.event(
                room_id,
                EventKind::UserLeft,
                user_left_event(user_id, "room closed"),
            );
        }
        self.drop_if_empty(room_id, fx);
        Ok(count(user_ids.len()))
    }

    /// `textMessage` into a room as the system (`user_id` empty) or a user.
    pub fn send_text(
        &self,
        room_id: &str,
        user_id: &str,
        user_name: &str,
        message: &str,
        fx: &mut Effects,
    ) -> Result<u32, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        required(message, "message", "message is required")?;
        let room = self.room(room_id)?;
        let name = if !user_name.is_empty() {
            user_name.to_owned()
        } else if user_id.is_empty() {
            "system".to_owned()
        } else {
            room.users
                .get(user_id)
                .ok_or_else(|| CenterError::UserNotFound(user_id.to_owned()))?
                .name
                .clone()
        };
        let reached = fx.send(
            room.audience_but(&[]),
            peer_event::Kind::TextMessage(proto::TextMessage {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
                user_name: name,
                message: message.to_owned(),
                extra: HashMap::new(),
                payload_json: String::new(),
            }),
        );
        fx.event(
            room_id,
            EventKind::TextMessage,
            Event::TextMessage(proto::TextMessageEvent {
                user_id: user_id.to_owned(),
                message: message.to_owned(),
            }),
        );
        Ok(reached)
    }
}
