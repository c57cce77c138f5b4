//! Recordings of rooms (the design document's §8.3): the room's MSU writes
//! every publisher of the room into one file per user.
//!
//! A recording rides on the relays (see `relays`): recording a publisher
//! means a relay through the room's MSU with the recording's id on it, so
//! the publisher's SFU sends to the MSU (a pull naming the MSU's address,
//! once per track not asked yet) and the MSU writes what it relays; the
//! subscribers on other SFUs are not disturbed. Publishers of a recorded
//! room are recorded as they push, for as long as the recording runs. It
//! stops when an operator says so or when its room closes; a stopped
//! recording is listed (with its files, as its MSU reported them) until it
//! is deleted.

use super::*;
use crate::ids::valid_recording_id;

/// How many files one recording lists (an MSU restarting without end
/// must not grow the state without bound); later ones are counted only.
pub const FILES_LISTED: usize = 10_000;

impl Rules {
    /// Starts recording `r.room_id` as `r.recording_id`; returns
    /// how many of its users publish (and are recorded from now).
    pub fn start_recording(
        &mut self,
        r: &proto::StartRecordingRequest,
        fx: &mut Effects,
    ) -> Result<u32, CenterError> {
        required(&r.room_id, "room_id", "room_id is required")?;
        if !valid_recording_id(&r.recording_id) {
            return Err(CenterError::invalid(
                "recording_id",
                "a recording id is 1 to 128 letters, digits, '-' or '_'",
            ));
        }
        if self.recordings.contains_key(&r.recording_id) {
            return Err(CenterError::Conflict(format!(
                "recording {} exists",
                r.recording_id
            )));
        }
        let room = self.room(&r.room_id)?;
        if let Some(id) = &room.recording {
            return Err(CenterError::Conflict(format!(
                "room {} is being recorded as {id}",
                r.room_id
            )));
        }
        let Some(msu_id) = room.msu.clone().filter(|m| self.msus.media_of(m).is_some()) else {
            return Err(CenterError::FailedPrecondition(format!(
                "room {} has no MSU with a media address: start pilot-msu (README, \"Media hub\")",
                r.room_id
            )));
        };
        let recording = proto::Recording {
            recording_id: r.recording_id.clone(),
            room_id: r.room_id.clone(),
            msu_id,
            state: proto::RecordingState::Recording.into(),
            started_at: Some(self.now.into()),
            ..Default::default()
        };
        self.recordings
            .insert(r.recording_id.clone(), recording.clone());
        if let Some(room) = self.rooms.get_mut(&r.room_id).map(Arc::make_mut) {
            room.recording = Some(r.recording_id.clone());
        }
        happened!(self, room.id = %r.room_id, recording.id = %r.recording_id, "recording started");
        fx.event(
            &r.room_id,
            EventKind::RecordingStarted,
            Event::RecordingStarted(recording),
        );
        let mut publishers: Vec<String> = self.rooms[&r.room_id]
            .users
            .iter()
            .filter(|(_, u)| !u.pushers.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        publishers.sort();
        for user_id in &publishers {
            self.record_user(&r.room_id, user_id, fx);
        }
        Ok(count(publishers.len()))
    }

    /// Stops the recording of `room_id` (`reason`: "stopped", "room
    /// closed"); returns how many publishers were being recorded.
    pub fn stop_recording(
        &mut self,
        room_id: &str,
        reason: &str,
        fx: &mut Effects,
    ) -> Result<u32, CenterError> {
        required(room_id, "room_id", "room_id is required")?;
        let id = match self.rooms.get_mut(room_id).map(Arc::make_mut) {
            Some(room) => room.recording.take(),
            None => None,
        };
        let Some(id) = id else {
            return Err(CenterError::FailedPrecondition(format!(
                "room {room_id} is not being recorded"
            )));
        };
        let mut stopped = 0;
        let relays: Vec<proto::Relay> = match self.rooms.get_mut(room_id).map(Arc::make_mut) {
            Some(room) => room
                .relays
                .values_mut()
                .filter(|r| r.recording_id == id)
                .map(|r| {
                    r.recording_id.clear();
                    r.clone()
                })
                .collect(),
            None => Vec::new(),
        };
        for relay in &relays {
            stopped += 1;
            self.relay_changed(relay, fx);
        }
        let Some(recording) = self.recordings.get_mut(&id) else {
            return Err(CenterError::Internal(format!("recording {id} vanished")));
        };
        recording.state = proto::RecordingState::Stopped.into();
        recording.stopped_at = Some(self.now.into());
        reason.clone_into(&mut recording.stop_reason);
        let recording = recording.clone();
        happened!(self, room.id = room_id, recording.id = %id, reason, "recording stopped");
        fx.event(
            room_id,
            EventKind::RecordingStopped,
            Event::RecordingStopped(recording),
        );
        Ok(stopped)
    }

    /// Deletes stopped recording `id`; returns 1 when its MSU was told to
    /// remove the files (0: it is not connected, and they stay).
    pub fn delete_recording(&mut self, id: &str, fx: &mut Effects) -> Result<u32, CenterError> {
        required(id, "recording_id", "recording_id is required")?;
        let Some(recording) = self.recordings.get(id) else {
            return Err(CenterError::NotFound(format!("recording not found: {id}")));
        };
        if recording.state() == proto::RecordingState::Recording {
            return Err(CenterError::FailedPrecondition(format!(
                "recording {id} is running: stop it first"
            )));
        }
        let msu_id = recording.msu_id.clone();
        let room_id = recording.room_id.clone();
        self.recordings.remove(id);
        let told = match self.msus.session_of(&msu_id) {
            Some(session) => fx.send(
                vec![session],
                peer_event::Kind::RecordingDelete(proto::RecordingDeleted {
                    recording_id: id.to_owned(),
                }),
            ),
            None => 0,
        };
        happened!(self, room.id = %room_id, recording.id = id, msu.told = told, "recording deleted");
        fx.event(
            &room_id,
            EventKind::RecordingDeleted,
            Event::RecordingDeleted(proto::RecordingDeleted {
                recording_id: id.to_owned(),
            }),
        );
        Ok(told)
    }

    /// The recordings of `room_id` (empty: all), sorted by id.
    pub fn recordings(&self, room_id: &str) -> Vec<proto::Recording> {
        self.recordings
            .values()
            .filter(|r| room_id.is_empty() || r.room_id == room_id)
            .cloned()
            .collect()
    }

    /// `recordingStatus` from the MSU of session `sid`: a file started or
    /// ended, or something was not recorded. Only the recording's own MSU
    /// is heard.
    pub fn recording_status(
        &mut self,
        sid: SessionId,
        r: proto::RecordingStatusRequest,
        fx: &mut Effects,
    ) -> Result<(), CenterError> {
        let msus = self
            .sessions
            .get(&sid)
            .map(|h| h.msus.clone())
            .unwrap_or_default();
        let Some(recording) = self.recordings.get_mut(&r.recording_id) else {
            return Err(CenterError::NotFound(format!(
                "recording not found: {}",
                r.recording_id
            )));
        };
        if !msus.contains(&recording.msu_id) {
            return Err(CenterError::Forbidden(format!(
                "recording {} is another MSU's",
                r.recording_id
            )));
        }
        match r.state() {
            proto::RecordingFileState::Started => {
                if recording.files.len() < FILES_LISTED {
                    recording.files.push(proto::RecordingFile {
                        user_id: r.user_id.clone(),
                        file: r.file.clone(),
                        closed: false,
                        bytes: 0,
                    });
                }
            }
            proto::RecordingFileState::Ended => {
                if let Some(f) = recording.files.iter_mut().rev().find(|f| f.file == r.file) {
                    f.closed = true;
                    f.bytes = r.bytes;
                }
            }
            proto::RecordingFileState::Failed => {
                r.reason.clone_into(&mut recording.last_error);
                happened!(self, room.id = %r.room_id, recording.id = %r.recording_id, user.id = %r.user_id, reason = %r.reason, "recording failed");
            }
            proto::RecordingFileState::Unspecified => {
                return Err(CenterError::invalid(
                    "state",
                    "Invalid recordingStatus state",
                ));
            }
        }
        let room_id = recording.room_id.clone();
        fx.event(
            &room_id,
            EventKind::RecordingFile,
            Event::RecordingFile(proto::RecordingFileEvent {
                recording_id: r.recording_id,
                user_id: r.user_id,
                state: r.state,
                file: r.file,
                bytes: r.bytes,
                reason: r.reason,
            }),
        );
        Ok(())
    }

    /// `user_id` of `room_id`, recorded: its relay goes through the room's
    /// MSU with the recording's id, and each track its SFU was not asked
    /// for yet is pulled to the MSU.
    pub(super) fn record_user(&mut self, room_id: &str, user_id: &str, fx: &mut Effects) {
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let Some(recording_id) = room.recording.clone() else {
            return;
        };
        let Some(user) = room.users.get(user_id) else {
            return;
        };
        let (pushers, speaker) = (user.pushers.clone(), user.speaker());
        let Some((msu_id, (udp_ip, udp_port))) = room
            .msu
            .as_ref()
            .and_then(|m| Some((m.clone(), self.msus.media_of(m)?.clone())))
        else {
            return self.recording_failed(
                room_id,
                &recording_id,
                user_id,
                "the room has no MSU with a media address",
                fx,
            );
        };
        let Some(room) = self.rooms.get_mut(room_id).map(Arc::make_mut) else {
            return;
        };
        let relay = room
            .relays
            .entry(user_id.to_owned())
            .or_insert_with(|| proto::Relay {
                room_id: room_id.to_owned(),
                pusher_user_id: user_id.to_owned(),
                msu_id: msu_id.clone(),
                udp_ip: udp_ip.clone(),
                udp_port,
                ..Default::default()
            });
        if relay.msu_id.is_empty() {
            // Pulled before the room had an MSU: its SFU sends it to that
            // puller only, and would ignore a pull naming the MSU.
            return self.recording_failed(
                room_id,
                &recording_id,
                user_id,
                "its SFU sends it straight to another SFU (pulled before the room had an MSU)",
                fx,
            );
        }
        let mut pulls = Vec::new();
        for p in &pushers {
            if relay.pushers.iter().any(|q| q.pusher_id == p.pusher_id) {
                continue;
            }
            relay.pushers.push(p.clone());
            pulls.push(proto::PullRemoteStreamRequest {
                room_id: room_id.to_owned(),
                pusher_user_id: user_id.to_owned(),
                udp_ip: relay.udp_ip.clone(),
                udp_port: relay.udp_port,
                media_type: media_type(p),
                push_info: Some(p.clone()),
                payload_json: String::new(),
            });
        }
        let changed = !pulls.is_empty() || relay.recording_id != recording_id;
        recording_id.clone_into(&mut relay.recording_id);
        let relay = relay.clone();
        if let Some(target) = speaker {
            for pull in pulls {
                fx.send(vec![target], peer_event::Kind::PullRemoteStream(pull));
            }
        }
        if changed {
            happened!(self, room.id = room_id, recording.id = %recording_id, user.id = user_id, tracks = relay.pushers.len(), "recording a publisher");
            self.relay_changed(&relay, fx);
        }
    }

    fn recording_failed(
        &mut self,
        room_id: &str,
        recording_id: &str,
        user_id: &str,
        reason: &str,
        fx: &mut Effects,
    ) {
        if let Some(r) = self.recordings.get_mut(recording_id) {
            reason.clone_into(&mut r.last_error);
        }
        happened!(
            self,
            room.id = room_id,
            recording.id = recording_id,
            user.id = user_id,
            reason,
            "publisher not recorded"
        );
        fx.event(
            room_id,
            EventKind::RecordingFile,
            Event::RecordingFile(proto::RecordingFileEvent {
                recording_id: recording_id.to_owned(),
                user_id: user_id.to_owned(),
                state: proto::RecordingFileState::Failed.into(),
                reason: reason.to_owned(),
                ..Default::default()
            }),
        );
    }
}

/// "audio" or "video", from the pusher's `rtpParam.av_type` (1: audio,
/// 2: video) or its codec; "" when it says neither.
fn media_type(p: &proto::Publisher) -> String {
    let param: serde_json::Value =
        serde_json::from_str(&p.rtp_param_json).unwrap_or(serde_json::Value::Null);
    let codec = param["codec"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    match (param["av_type"].as_i64(), codec.as_str()) {
        (Some(1), _) | (_, "opus") => "audio",
        (Some(2), _) | (_, "h264" | "vp8" | "vp9" | "av1") => "video",
        _ => "",
    }
    .to_owned()
}
