//! MSU commands: `register`, invites to the room's MSU (chosen by the
//! pool), an MSU lost or refusing.

use super::*;

impl Rules {
    /// `register`: adds or refreshes an MSU bound to `sid`; an id another
    /// live session holds is refused with 409.
    pub fn register_msu(
        &mut self,
        sid: SessionId,
        r: proto::RegisterMsuRequest,
        now: SystemTime,
        fx: &mut Effects,
    ) -> Result<proto::RegisterMsuResponse, CenterError> {
        required(&r.msu_id, "msu_id", "Invalid id")?;
        let media = match (r.udp_ip.as_str(), r.udp_port) {
            ("", _) => None,
            (ip, port @ 1..=65535) => Some((ip.to_owned(), port)),
            _ => return Err(CenterError::invalid("udp_port", "Invalid udp_port")),
        };
        self.msus.register(&r.msu_id, sid, now, media)?;
        self.resend_relays(&r.msu_id, sid, fx);
        if let Some(h) = self.sessions.get_mut(&sid) {
            h.msus.insert(r.msu_id.clone());
        }
        happened!(self, msu.id = %r.msu_id, session.id = sid, "msu registered");
        fx.event(
            "",
            EventKind::MsuRegistered,
            Event::MsuRegistered(proto::MsuRegistered {
                msu_id: r.msu_id.clone(),
                session_id: sid,
            }),
        );
        Ok(proto::RegisterMsuResponse {
            registered: true,
            msu_id: r.msu_id,
        })
    }

    /// Sends `invite` to the room's MSU, first choosing the live MSU with the
    /// fewest rooms (not `avoid`) when the room has none. Never waits.
    pub(super) fn invite_msu(&mut self, room_id: &str, avoid: Option<&str>, fx: &mut Effects) {
        let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) else {
            return;
        };
        let current = room.msu.clone().filter(|m| self.msus.contains(m));
        let msu_id = match current {
            Some(m) => m,
            None => {
                room.msu = self.msus.assign(room_id, avoid);
                let Some(m) = room.msu.clone() else {
                    return;
                };
                m
            }
        };
        let Some(session) = self.msus.session_of(&msu_id) else {
            return;
        };
        fx.notices.push(Notice::Invite {
            to: session,
            room_id: room_id.to_owned(),
        });
        fx.event(
            room_id,
            EventKind::MsuInvited,
            Event::MsuInvited(proto::MsuInvited { msu_id }),
        );
    }

    /// An MSU is gone: its rooms are invited to the other live MSUs.
    pub(super) fn lose_msu(&mut self, msu_id: &str, fx: &mut Effects) {
        let Some(room_ids) = self.msus.remove(msu_id) else {
            return;
        };
        for room_id in &room_ids {
            if let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) {
                room.msu = None;
            }
        }
        happened!(self, msu.id = %msu_id, rooms = room_ids.len(), "msu lost");
        fx.event(
            "",
            EventKind::MsuLost,
            Event::MsuLost(proto::MsuLost {
                msu_id: msu_id.to_owned(),
                room_ids: room_ids.clone(),
            }),
        );
        for room_id in room_ids {
            self.invite_msu(&room_id, None, fx);
        }
        self.end_playbacks_of(msu_id, fx);
    }

    /// An MSU refused an `invite` or let it time out: the room moves to
    /// another live MSU (or stays without one when there is none).
    pub fn invite_failed(&mut self, room_id: &str, msu_session: SessionId, fx: &mut Effects) {
        let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) else {
            return;
        };
        let Some(msu_id) = room.msu.clone() else {
            return;
        };
        if self.msus.session_of(&msu_id) != Some(msu_session) {
            // The room moved meanwhile.
            return;
        }
        room.msu = None;
        self.msus.release(&msu_id, room_id);
        self.invite_msu(room_id, Some(&msu_id), fx);
    }
}
