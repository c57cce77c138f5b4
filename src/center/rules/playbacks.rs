//! Playbacks: a recorded user played into a room by the MSU that holds the
//! recording (see `pilot-msu`'s `playback`). The center checks and keeps
//! the playback and tells the MSU; the MSU joins the user and pushes its
//! tracks through its own session like any peer, so the room's rules apply
//! to it unchanged, and says when it is over (`playbackEnded`).

use super::*;

impl Rules {
    /// Starts playback `r` (its id set); 1 when the MSU was told.
    pub fn start_playback(
        &mut self,
        r: &proto::StartPlaybackRequest,
        fx: &mut Effects,
    ) -> Result<u32, CenterError> {
        required(&r.recording_id, "recording_id", "recording_id is required")?;
        required(&r.room_id, "room_id", "room_id is required")?;
        required(&r.user_id, "user_id", "user_id is required")?;
        if !crate::ids::valid_recording_id(&r.playback_id) {
            return Err(CenterError::invalid(
                "playback_id",
                "a playback id is 1 to 128 letters, digits, '-' or '_'",
            ));
        }
        if self.playbacks.contains_key(&r.playback_id) {
            return Err(CenterError::Conflict(format!(
                "playback {} exists",
                r.playback_id
            )));
        }
        let recording = self.recordings.get(&r.recording_id).ok_or_else(|| {
            CenterError::NotFound(format!("recording not found: {}", r.recording_id))
        })?;
        let mut users: Vec<&str> = recording.files.iter().map(|f| f.user_id.as_str()).collect();
        users.sort_unstable();
        users.dedup();
        let source = match (r.source_user_id.as_str(), users.as_slice()) {
            ("", [only]) => (*only).to_owned(),
            ("", _) => {
                return Err(CenterError::invalid(
                    "source_user_id",
                    format!("name the user to play: one of {}", users.join(", ")),
                ));
            }
            (user, _) if users.contains(&user) => user.to_owned(),
            (user, _) => {
                return Err(CenterError::NotFound(format!(
                    "user {user} has no file in recording {}",
                    r.recording_id
                )));
            }
        };
        let msu_id = recording.msu_id.clone();
        let Some(session) = self.msus.session_of(&msu_id) else {
            return Err(CenterError::FailedPrecondition(format!(
                "the MSU holding recording {} ({msu_id}) is not connected",
                r.recording_id
            )));
        };
        let taken = self
            .rooms
            .get(&r.room_id)
            .is_some_and(|room| room.users.contains_key(&r.user_id))
            || self
                .playbacks
                .values()
                .any(|p| p.room_id == r.room_id && p.user_id == r.user_id);
        if taken {
            return Err(CenterError::Conflict(format!(
                "user {} is in room {} already",
                r.user_id, r.room_id
            )));
        }
        let playback = proto::Playback {
            playback_id: r.playback_id.clone(),
            recording_id: r.recording_id.clone(),
            source_user_id: source,
            room_id: r.room_id.clone(),
            user_id: r.user_id.clone(),
            msu_id,
            r#loop: r.r#loop,
            started_at: Some(self.now.into()),
        };
        self.playbacks
            .insert(r.playback_id.clone(), playback.clone());
        happened!(self, room.id = %r.room_id, user.id = %r.user_id, playback.id = %r.playback_id, recording.id = %r.recording_id, "playback started");
        let told = fx.send(vec![session], peer_event::Kind::Playback(playback.clone()));
        fx.event(
            &r.room_id,
            EventKind::PlaybackStarted,
            Event::PlaybackStarted(playback),
        );
        Ok(told)
    }

    /// Stops playback `id`: its MSU is told (its user leaves).
    pub fn stop_playback(&mut self, id: &str, fx: &mut Effects) -> Result<u32, CenterError> {
        required(id, "playback_id", "playback_id is required")?;
        let Some(playback) = self.playbacks.get(id) else {
            return Err(CenterError::NotFound(format!("playback not found: {id}")));
        };
        let told = match self.msus.session_of(&playback.msu_id) {
            Some(session) => fx.send(
                vec![session],
                peer_event::Kind::PlaybackStop(proto::StopPlaybackRequest {
                    playback_id: id.to_owned(),
                }),
            ),
            None => 0,
        };
        self.end_playback(id, "stopped", fx);
        Ok(told)
    }

    /// `playbackEnded` from session `sid`: heard from the playback's MSU
    /// only; one already gone (stopped meanwhile) is no error.
    pub fn playback_ended(
        &mut self,
        sid: SessionId,
        r: proto::PlaybackEndedRequest,
        fx: &mut Effects,
    ) -> Result<(), CenterError> {
        let Some(playback) = self.playbacks.get(&r.playback_id) else {
            return Ok(());
        };
        if self.msus.session_of(&playback.msu_id) != Some(sid) {
            return Err(CenterError::Forbidden(format!(
                "playback {} is another MSU's",
                r.playback_id
            )));
        }
        let reason = if r.reason.is_empty() {
            "ended"
        } else {
            &r.reason
        };
        self.end_playback(&r.playback_id, reason, fx);
        Ok(())
    }

    /// The running playbacks, sorted by id.
    pub fn playbacks(&self) -> Vec<proto::Playback> {
        self.playbacks.values().cloned().collect()
    }

    /// The playbacks of MSU `msu_id` end (it is gone).
    pub(super) fn end_playbacks_of(&mut self, msu_id: &str, fx: &mut Effects) {
        let ids: Vec<String> = self
            .playbacks
            .values()
            .filter(|p| p.msu_id == msu_id)
            .map(|p| p.playback_id.clone())
            .collect();
        for id in ids {
            self.end_playback(&id, "msu lost", fx);
        }
    }

    fn end_playback(&mut self, id: &str, reason: &str, fx: &mut Effects) {
        let Some(playback) = self.playbacks.remove(id) else {
            return;
        };
        happened!(self, room.id = %playback.room_id, user.id = %playback.user_id, playback.id = id, reason, "playback over");
        fx.event(
            &playback.room_id,
            EventKind::PlaybackEnded,
            Event::PlaybackEnded(proto::PlaybackEnded {
                playback_id: id.to_owned(),
                user_id: playback.user_id,
                reason: reason.to_owned(),
            }),
        );
    }
}
