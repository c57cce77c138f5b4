//! Translation between protoo JSON and the room service's protobuf messages.
//!
//! Inbound, known fields of the expected JSON type become typed proto fields;
//! everything else is kept as raw JSON text in `extra` maps and `*_json`
//! fields. Outbound, the same pieces are written back verbatim. So a payload
//! keeps every field and every JSON type (an `av_type` of `2` stays `2`) on
//! its way through the center, while the fields the real SFU parses strictly
//! (`roomId`, `userId`, `userName`, `pusherId`) always leave as strings.

use crate::center::{Delivery, Outbound};
use crate::error::CenterError;
use crate::proto::{self, Command, command, peer_event, reply};
use crate::protoo::{self, Data, ObjectWriter, RawObject};
use serde_json::value::RawValue;
use std::collections::HashMap;
use tokio_tungstenite::tungstenite::Utf8Bytes;

/// Fields whose type the real SFU checks: always written from the typed
/// proto field, never overridden by an unknown field of the same name.
const STRICT: &[&str] = &[
    "roomId", "userId", "userName", "pusherId", "pushers", "users",
];

/// The command for a protoo request (`echo`, `register`, `join`).
pub fn request_command(method: &str, data: Data<'_>) -> Result<Command, CenterError> {
    let kind = match method {
        "echo" => command::Kind::Echo(proto::EchoRequest {
            data_json: data.get().to_owned(),
        }),
        "register" => {
            let mut o = object(data, "id", "Invalid id")?;
            let msu_id = o
                .take_str("id")
                .ok_or_else(|| CenterError::invalid("msu_id", "Invalid id"))?;
            // An MSU that relays media says where SFUs send it.
            let udp_ip = o.take_str("udp_ip").unwrap_or_default();
            let udp_port = o.take_i64("udp_port").unwrap_or_default();
            command::Kind::RegisterMsu(proto::RegisterMsuRequest {
                msu_id,
                udp_ip,
                udp_port,
            })
        }
        "join" => {
            const REASON: &str = "Invalid roomId or userId";
            let mut o = object(data, "room_id", REASON)?;
            let room_id = o
                .take_str("roomId")
                .ok_or_else(|| CenterError::invalid("room_id", REASON))?;
            let user_id = o
                .take_str("userId")
                .ok_or_else(|| CenterError::invalid("user_id", REASON))?;
            let user_name = user_name(&mut o);
            // `audience` defaults to false when it is not a boolean.
            let audience = o.take("audience") == Some("true");
            command::Kind::Join(proto::JoinRequest {
                room_id,
                user_id,
                user_name,
                audience,
                extra: o.into_extra(),
            })
        }
        other => return Err(CenterError::UnknownMethod(other.to_owned())),
    };
    Ok(Command { kind: Some(kind) })
}

/// The command for a protoo notification. Errors mean "ignore it" (PROTOCOL.md
/// §4: a notification without a string `roomId` is ignored).
pub fn notification_command(method: &str, data: Data<'_>) -> Result<Command, CenterError> {
    // The text as sent, for what is forwarded verbatim.
    let text = data.get();
    let kind = match method {
        "push" => {
            let (room_id, user_id, mut o) = room_and_user(data, "userId")?;
            let publishers = match o.take("publishers") {
                Some(raw) => publishers(raw)?,
                None => Vec::new(),
            };
            command::Kind::Push(proto::PushRequest {
                room_id,
                user_id,
                user_name: user_name(&mut o),
                publishers,
                extra: o.into_extra(),
            })
        }
        "pullRemoteStream" => {
            let (room_id, pusher_user_id, mut o) = room_and_user(data, "pusher_user_id")?;
            let push_info = o
                .take("pushInfo")
                .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
                .and_then(|raw| publisher(raw).ok());
            command::Kind::PullRemoteStream(proto::PullRemoteStreamRequest {
                room_id,
                pusher_user_id,
                udp_ip: o.take_str("udp_ip").unwrap_or_default(),
                udp_port: o.take_i64("udp_port").unwrap_or_default(),
                media_type: o.take_str("mediaType").unwrap_or_default(),
                push_info,
                // Forwarded verbatim: the pusher's SFU gets exactly what was sent.
                payload_json: text.to_owned(),
            })
        }
        "userDisconnect" => {
            let (room_id, user_id, o) = room_and_user(data, "userId")?;
            command::Kind::UserDisconnect(proto::UserDisconnectRequest {
                room_id,
                user_id,
                extra: o.into_extra(),
            })
        }
        "userLeave" => {
            let (room_id, user_id, o) = room_and_user(data, "userId")?;
            command::Kind::UserLeave(proto::UserLeaveRequest {
                room_id,
                user_id,
                extra: o.into_extra(),
            })
        }
        "textMessage" => {
            let (room_id, mut o) = room(data)?;
            let user_id = o.take_str("userId");
            let name = o.take_str("userName");
            // A non-string message stays in `extra` and travels as sent.
            let message = o.take_str("message");
            // What the others get is what was sent, unless re-encoding
            // would change it: a field missing or not a string (written
            // as "" or left out), or any field sent twice (which one a
            // reader keeps is then up to the reader).
            let verbatim = user_id.is_some()
                && name.is_some()
                && message.is_some()
                && o.0.iter().enumerate().all(|(i, (k, _))| {
                    k != "message"
                        && !STRICT.contains(&k.as_ref())
                        && !o.0[..i].iter().any(|(seen, _)| seen == k)
                });
            if name.is_none() {
                o.take("userName");
            }
            command::Kind::TextMessage(proto::TextMessageRequest {
                room_id,
                user_id: user_id.unwrap_or_default(),
                user_name: name.unwrap_or_default(),
                message: message.unwrap_or_default(),
                extra: o.into_extra(),
                payload_json: if verbatim {
                    text.to_owned()
                } else {
                    String::new()
                },
            })
        }
        "userReConnect" => {
            let (room_id, user_id, mut o) = room_and_user(data, "userId")?;
            command::Kind::UserReconnect(proto::UserReConnectRequest {
                room_id,
                user_id,
                user_name: user_name(&mut o),
                extra: o.into_extra(),
            })
        }
        "relayStats" => command::Kind::RelayStats(relay_stats(text)?),
        "recordingStatus" => command::Kind::RecordingStatus(recording_status(text)?),
        "playbackEnded" => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "camelCase")]
            struct Wire {
                playback_id: String,
                #[serde(default)]
                reason: String,
            }
            let w: Wire = serde_json::from_str(text).map_err(|e| {
                CenterError::invalid("playback_id", format!("Invalid playbackEnded: {e}"))
            })?;
            command::Kind::PlaybackEnded(proto::PlaybackEndedRequest {
                playback_id: w.playback_id,
                reason: w.reason,
            })
        }
        other => return Err(CenterError::UnknownMethod(other.to_owned())),
    };
    Ok(Command { kind: Some(kind) })
}

fn object<'a>(
    data: Data<'a>,
    field: &'static str,
    reason: &str,
) -> Result<RawObject<'a>, CenterError> {
    data.into_object()
        .ok_or_else(|| CenterError::invalid(field, reason))
}

fn room(data: Data<'_>) -> Result<(String, RawObject<'_>), CenterError> {
    let mut o = object(data, "room_id", "Invalid roomId")?;
    let room_id = o
        .take_str("roomId")
        .ok_or_else(|| CenterError::invalid("room_id", "Invalid roomId"))?;
    Ok((room_id, o))
}

fn room_and_user<'a>(
    data: Data<'a>,
    user_key: &'static str,
) -> Result<(String, String, RawObject<'a>), CenterError> {
    let (room_id, mut o) = room(data)?;
    let user_id = o
        .take_str(user_key)
        .ok_or_else(|| CenterError::invalid("user_id", format!("Invalid {user_key}")))?;
    Ok((room_id, user_id, o))
}

/// `userName` when it is a string; any other value is dropped (the SFU
/// rejects a message whose `userName` is not a string).
fn user_name(o: &mut RawObject<'_>) -> String {
    let name = o.take_str("userName");
    if name.is_none() {
        o.take("userName");
    }
    name.unwrap_or_default()
}

fn publishers(text: &str) -> Result<Vec<proto::Publisher>, CenterError> {
    let entries: Vec<&RawValue> = serde_json::from_str(text)
        .map_err(|_| CenterError::invalid("publishers", "publishers must be an array"))?;
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        match publisher(entry) {
            Ok(p) => out.push(p),
            Err(e) => tracing::debug!(error = %e, "publisher entry skipped"),
        }
    }
    Ok(out)
}

fn publisher(raw: &RawValue) -> Result<proto::Publisher, CenterError> {
    const REASON: &str = "publisher needs a string pusherId";
    let mut o = RawObject::parse(raw).ok_or_else(|| CenterError::invalid("pusher_id", REASON))?;
    let pusher_id = o
        .take_str("pusherId")
        .ok_or_else(|| CenterError::invalid("pusher_id", REASON))?;
    let rtp_param_json = o.take("rtpParam").map(str::to_owned).unwrap_or_default();
    Ok(proto::Publisher {
        pusher_id,
        rtp_param_json,
        extra: o.into_extra(),
    })
}

// ----- outbound ------------------------------------------------------------

fn write_extra(w: &mut ObjectWriter, extra: &HashMap<String, String>) {
    w.extra(extra.iter().filter(|(k, _)| !STRICT.contains(&k.as_str())));
}

/// A JSON array of `items`, each written by `one`.
fn write_array<T>(buf: &mut Vec<u8>, items: &[T], mut one: impl FnMut(&mut Vec<u8>, &T)) {
    buf.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        one(buf, item);
    }
    buf.push(b']');
}

fn write_publishers(buf: &mut Vec<u8>, pushers: &[proto::Publisher]) {
    write_array(buf, pushers, |b, p| b.extend_from_slice(&publisher_json(p)));
}

fn write_destinations(buf: &mut Vec<u8>, destinations: &[proto::RelayDestination]) {
    write_array(buf, destinations, |buf, d| {
        let mut w = ObjectWriter::with_capacity(96);
        w.str("udp_ip", &d.udp_ip)
            .int("udp_port", d.udp_port)
            .str("peerId", &d.peer_id)
            .with("pusherIds", |b| {
                write_array(b, &d.pusher_ids, |b, p| crate::protoo::write_json_str(b, p));
            });
        buf.extend_from_slice(&w.finish());
    });
}

fn publisher_json(p: &proto::Publisher) -> Vec<u8> {
    let mut w = ObjectWriter::with_capacity(64 + p.rtp_param_json.len());
    w.str("pusherId", &p.pusher_id);
    if !p.rtp_param_json.is_empty() {
        w.raw("rtpParam", &p.rtp_param_json);
    }
    write_extra(&mut w, &p.extra);
    w.finish()
}

/// The `data` of the response to a request, raw JSON.
pub fn reply_data(reply: &proto::Reply) -> Vec<u8> {
    match &reply.kind {
        Some(reply::Kind::Echo(e)) => {
            let mut w = ObjectWriter::with_capacity(16 + e.data_json.len());
            w.raw("echo", &e.data_json);
            w.finish()
        }
        Some(reply::Kind::RegisterMsu(r)) => {
            let mut w = ObjectWriter::with_capacity(48 + r.msu_id.len());
            w.bool("registered", r.registered).str("msuId", &r.msu_id);
            w.finish()
        }
        Some(reply::Kind::Join(j)) => {
            let mut w = ObjectWriter::with_capacity(128 + 256 * j.users.len());
            w.int("code", 0)
                .str("message", "join success")
                .str("roomId", &j.room_id)
                .with("users", |buf| {
                    write_array(buf, &j.users, |buf, u| {
                        let mut uw = ObjectWriter::with_capacity(64);
                        uw.str("userId", &u.user_id)
                            .str("userName", &u.user_name)
                            .with("pushers", |b| write_publishers(b, &u.pushers));
                        buf.extend_from_slice(&uw.finish());
                    });
                });
            w.finish()
        }
        Some(reply::Kind::Ack(_)) | None => b"{}".to_vec(),
    }
}

/// `relayStats` data: `{"relays": [{"roomId", "pusher_user_id",
/// "packetsIn", "packetsOut", "worstFractionLost"}]}`.
fn relay_stats(data: &str) -> Result<proto::RelayStatsRequest, CenterError> {
    #[derive(serde::Deserialize)]
    struct Wire {
        relays: Vec<Counters>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Counters {
        room_id: String,
        #[serde(rename = "pusher_user_id")]
        pusher_user_id: String,
        #[serde(default)]
        packets_in: u64,
        #[serde(default)]
        packets_out: u64,
        #[serde(default)]
        worst_fraction_lost: u32,
    }
    let w: Wire = serde_json::from_str(data)
        .map_err(|e| CenterError::invalid("relays", format!("Invalid relayStats: {e}")))?;
    Ok(proto::RelayStatsRequest {
        relays: w
            .relays
            .into_iter()
            .map(|c| proto::RelayCounters {
                room_id: c.room_id,
                pusher_user_id: c.pusher_user_id,
                packets_in: c.packets_in,
                packets_out: c.packets_out,
                worst_fraction_lost: c.worst_fraction_lost,
            })
            .collect(),
    })
}

/// `recordingStatus` data: `{"recordingId", "roomId", "userId", "state":
/// "fileStarted" | "fileEnded" | "failed", "file", "bytes", "reason"}`.
fn recording_status(data: &str) -> Result<proto::RecordingStatusRequest, CenterError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Wire {
        recording_id: String,
        #[serde(default)]
        room_id: String,
        #[serde(default)]
        user_id: String,
        state: String,
        #[serde(default)]
        file: String,
        #[serde(default)]
        bytes: u64,
        #[serde(default)]
        reason: String,
    }
    let w: Wire = serde_json::from_str(data).map_err(|e| {
        CenterError::invalid("recording_id", format!("Invalid recordingStatus: {e}"))
    })?;
    let state = match w.state.as_str() {
        "fileStarted" => proto::RecordingFileState::Started,
        "fileEnded" => proto::RecordingFileState::Ended,
        "failed" => proto::RecordingFileState::Failed,
        other => {
            return Err(CenterError::invalid(
                "state",
                format!("Invalid recordingStatus state: {other:?}"),
            ));
        }
    };
    Ok(proto::RecordingStatusRequest {
        recording_id: w.recording_id,
        room_id: w.room_id,
        user_id: w.user_id,
        state: state.into(),
        file: w.file,
        bytes: w.bytes,
        reason: w.reason,
    })
}

/// The protoo method of a command.
pub fn command_method(kind: &command::Kind) -> &'static str {
    match kind {
        command::Kind::Echo(_) => "echo",
        command::Kind::RegisterMsu(_) => "register",
        command::Kind::Join(_) => "join",
        command::Kind::Push(_) => "push",
        command::Kind::PullRemoteStream(_) => "pullRemoteStream",
        command::Kind::UserDisconnect(_) => "userDisconnect",
        command::Kind::UserLeave(_) => "userLeave",
        command::Kind::TextMessage(_) => "textMessage",
        command::Kind::UserReconnect(_) => "userReConnect",
        command::Kind::RelayStats(_) => "relayStats",
        command::Kind::RecordingStatus(_) => "recordingStatus",
        command::Kind::PlaybackEnded(_) => "playbackEnded",
    }
}

/// The room and user a command is about, for log spans.
pub fn command_ids(cmd: &Command) -> (&str, &str) {
    match &cmd.kind {
        Some(command::Kind::Join(r)) => (&r.room_id, &r.user_id),
        Some(command::Kind::Push(r)) => (&r.room_id, &r.user_id),
        Some(command::Kind::PullRemoteStream(r)) => (&r.room_id, &r.pusher_user_id),
        Some(command::Kind::UserDisconnect(r)) => (&r.room_id, &r.user_id),
        Some(command::Kind::UserLeave(r)) => (&r.room_id, &r.user_id),
        Some(command::Kind::TextMessage(r)) => (&r.room_id, &r.user_id),
        Some(command::Kind::UserReconnect(r)) => (&r.room_id, &r.user_id),
        Some(command::Kind::RecordingStatus(r)) => (&r.room_id, &r.user_id),
        Some(command::Kind::PlaybackEnded(_)) => ("", ""),
        Some(
            command::Kind::Echo(_) | command::Kind::RegisterMsu(_) | command::Kind::RelayStats(_),
        )
        | None => ("", ""),
    }
}

/// The protoo method of what the center queues for a session (the label
/// its outbound count goes under).
pub fn outbound_method(item: &Outbound) -> &'static str {
    match item {
        Outbound::Event(d) => event_method(&d.event),
        Outbound::Invite { .. } => "invite",
    }
}

/// The protoo method of a room event.
pub fn event_method(event: &proto::PeerEvent) -> &'static str {
    match &event.kind {
        Some(peer_event::Kind::NewUser(_)) => "newUser",
        Some(peer_event::Kind::NewPusher(_)) => "newPusher",
        Some(peer_event::Kind::PullRemoteStream(_)) => "pullRemoteStream",
        Some(peer_event::Kind::UserDisconnected(_)) => "userDisconnect",
        Some(peer_event::Kind::UserLeft(_)) => "userLeave",
        Some(peer_event::Kind::TextMessage(_)) => "textMessage",
        Some(peer_event::Kind::UserReconnected(_)) => "userReConnect",
        Some(peer_event::Kind::Relay(_)) => "relay",
        Some(peer_event::Kind::RelayEnded(_)) => "relayEnd",
        Some(peer_event::Kind::RecordingDelete(_)) => "recordingDelete",
        Some(peer_event::Kind::Playback(_)) => "playback",
        Some(peer_event::Kind::PlaybackStop(_)) => "playbackStop",
        None => "unknown",
    }
}

/// Appends the protoo `data` of a room event to `buf`.
fn write_event_data(event: &proto::PeerEvent, mut buf: Vec<u8>) -> Vec<u8> {
    // Forwarded verbatim: the pusher's SFU gets exactly what was sent, and
    // a text message is what its sender wrote (no second encoding).
    let verbatim = match &event.kind {
        Some(peer_event::Kind::PullRemoteStream(e)) => &e.payload_json,
        Some(peer_event::Kind::TextMessage(e)) => &e.payload_json,
        _ => "",
    };
    if !verbatim.is_empty() {
        buf.extend_from_slice(verbatim.as_bytes());
        return buf;
    }
    let mut w = ObjectWriter::continuing(buf);
    match &event.kind {
        Some(peer_event::Kind::NewUser(e)) => {
            w.str("roomId", &e.room_id)
                .str("userId", &e.user_id)
                .str("userName", &e.user_name);
            write_extra(&mut w, &e.extra);
        }
        Some(peer_event::Kind::NewPusher(e)) => {
            w.str("roomId", &e.room_id)
                .str("userId", &e.user_id)
                .str("userName", &e.user_name)
                .with("pushers", |b| write_publishers(b, &e.pushers));
            write_extra(&mut w, &e.extra);
        }
        Some(peer_event::Kind::PullRemoteStream(e)) => {
            w.str("roomId", &e.room_id)
                .str("pusher_user_id", &e.pusher_user_id)
                .str("udp_ip", &e.udp_ip)
                .int("udp_port", e.udp_port)
                .str("mediaType", &e.media_type);
            if let Some(p) = &e.push_info {
                w.with("pushInfo", |b| b.extend_from_slice(&publisher_json(p)));
            }
        }
        Some(peer_event::Kind::UserDisconnected(e)) => {
            w.str("roomId", &e.room_id).str("userId", &e.user_id);
            write_extra(&mut w, &e.extra);
        }
        Some(peer_event::Kind::UserLeft(e)) => {
            w.str("roomId", &e.room_id).str("userId", &e.user_id);
            write_extra(&mut w, &e.extra);
        }
        Some(peer_event::Kind::TextMessage(e)) => {
            w.str("roomId", &e.room_id)
                .str("userId", &e.user_id)
                .str("userName", &e.user_name);
            if !e.extra.contains_key("message") {
                w.str("message", &e.message);
            }
            write_extra(&mut w, &e.extra);
        }
        Some(peer_event::Kind::UserReconnected(e)) => {
            w.str("roomId", &e.room_id)
                .str("userId", &e.user_id)
                .str("userName", &e.user_name);
            write_extra(&mut w, &e.extra);
        }
        Some(peer_event::Kind::Relay(r)) => {
            w.str("roomId", &r.room_id)
                .str("pusher_user_id", &r.pusher_user_id)
                .str("msuId", &r.msu_id)
                .str("udp_ip", &r.udp_ip)
                .int("udp_port", r.udp_port)
                .with("pushers", |b| write_publishers(b, &r.pushers))
                .with("destinations", |b| write_destinations(b, &r.destinations));
            if !r.recording_id.is_empty() {
                w.str("recordingId", &r.recording_id);
            }
        }
        Some(peer_event::Kind::RecordingDelete(d)) => {
            w.str("recordingId", &d.recording_id);
        }
        Some(peer_event::Kind::Playback(p)) => {
            w.str("playbackId", &p.playback_id)
                .str("recordingId", &p.recording_id)
                .str("sourceUserId", &p.source_user_id)
                .str("roomId", &p.room_id)
                .str("userId", &p.user_id)
                .bool("loop", p.r#loop);
        }
        Some(peer_event::Kind::PlaybackStop(p)) => {
            w.str("playbackId", &p.playback_id);
        }
        Some(peer_event::Kind::RelayEnded(e)) => {
            w.str("roomId", &e.room_id)
                .str("pusher_user_id", &e.pusher_user_id)
                .str("msuId", &e.msu_id)
                .str("reason", &e.reason);
        }
        // Never built by the center; written as an empty notification.
        None => {}
    }
    w.finish()
}

/// The protoo notification text of a delivery, made once and shared by
/// every WebSocket session it goes to (a clone shares the bytes).
pub fn delivery_text(delivery: &Delivery) -> Utf8Bytes {
    let make = || {
        // The protobuf size is about the JSON's: the buffer is sized once.
        Utf8Bytes::from(protoo::notification_with(
            event_method(&delivery.event),
            delivery.size + 64,
            |buf| write_event_data(&delivery.event, buf),
        ))
    };
    let cached = delivery.encoded.get_or_init(|| Box::new(make()));
    // Only this function fills the slot, so the cached value is this type.
    cached
        .downcast_ref::<Utf8Bytes>()
        .map_or_else(make, Utf8Bytes::clone)
}

/// The `invite` request for an MSU.
pub fn invite_request(id: u64, room_id: &str) -> String {
    let mut w = ObjectWriter::with_capacity(32 + room_id.len());
    w.str("roomId", room_id);
    protoo::request(id, "invite", &w.finish())
}

// ----- gRPC edge checks ---------------------------------------------------

fn check_json(field: &'static str, text: &str, allow_empty: bool) -> Result<(), CenterError> {
    if text.is_empty() && allow_empty {
        return Ok(());
    }
    checked(field, text).map(drop)
}

/// `text` checked as a frame's `data` is (the JSON grammar and what strict
/// peers reject, in the scanner's one pass), split when it is an object.
fn checked<'a>(field: &'static str, text: &'a str) -> Result<Data<'a>, CenterError> {
    Data::parse(text).map_err(|e| CenterError::invalid(field, format!("{field}: {e}")))
}

fn check_extra(field: &'static str, extra: &HashMap<String, String>) -> Result<(), CenterError> {
    extra.values().try_for_each(|v| check_json(field, v, false))
}

fn check_publisher(p: &proto::Publisher) -> Result<(), CenterError> {
    check_json("rtp_param_json", &p.rtp_param_json, true)?;
    check_extra("publisher.extra", &p.extra)
}

/// Checks the raw JSON texts in a command from a gRPC peer, so that what the
/// center later writes to WebSocket peers is always valid JSON.
pub fn check_command(cmd: &Command) -> Result<(), CenterError> {
    match &cmd.kind {
        None => Err(CenterError::invalid("command", "empty command")),
        Some(command::Kind::Echo(e)) => check_json("data_json", &e.data_json, true),
        Some(
            command::Kind::RegisterMsu(_)
            | command::Kind::RelayStats(_)
            | command::Kind::RecordingStatus(_)
            | command::Kind::PlaybackEnded(_),
        ) => Ok(()),
        Some(command::Kind::Join(j)) => check_extra("extra", &j.extra),
        Some(command::Kind::Push(p)) => {
            p.publishers.iter().try_for_each(check_publisher)?;
            check_extra("extra", &p.extra)
        }
        Some(command::Kind::PullRemoteStream(p)) => {
            if let Some(info) = &p.push_info {
                check_publisher(info)?;
            }
            check_payload(&p.payload_json).map(drop)
        }
        Some(command::Kind::UserDisconnect(u)) => check_extra("extra", &u.extra),
        Some(command::Kind::UserLeave(u)) => check_extra("extra", &u.extra),
        Some(command::Kind::TextMessage(t)) => {
            check_extra("extra", &t.extra)?;
            match check_payload(&t.payload_json)? {
                Some(payload) => check_text_payload(t, payload),
                None => Ok(()),
            }
        }
        Some(command::Kind::UserReconnect(u)) => check_extra("extra", &u.extra),
    }
}

/// A text message's verbatim payload must say exactly what its typed fields
/// say: the trust rules read the typed `userId`, the room's WebSocket peers
/// the payload. So it is what a WebSocket peer's `data` would have made.
fn check_text_payload(t: &proto::TextMessageRequest, payload: Data<'_>) -> Result<(), CenterError> {
    match notification_command("textMessage", payload)
        .ok()
        .and_then(|c| c.kind)
    {
        Some(command::Kind::TextMessage(mut said)) if !said.payload_json.is_empty() => {
            said.payload_json.clone_from(&t.payload_json);
            if said == *t {
                return Ok(());
            }
        }
        _ => {}
    }
    Err(CenterError::invalid(
        "payload_json",
        "payload_json must be a textMessage's data saying what the typed fields say \
         (string roomId, userId, userName and message, no key twice, the same extra fields)",
    ))
}

/// A payload forwarded verbatim must be a JSON object a strict peer reads;
/// it comes back read, when there is one.
fn check_payload(payload_json: &str) -> Result<Option<Data<'_>>, CenterError> {
    if payload_json.is_empty() {
        return Ok(None);
    }
    let payload = checked("payload_json", payload_json)?;
    if !payload.is_object() {
        return Err(CenterError::invalid(
            "payload_json",
            "payload_json must be a JSON object",
        ));
    }
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn raw(v: &Value) -> Box<RawValue> {
        RawValue::from_string(v.to_string()).unwrap()
    }

    #[test]
    fn join_takes_typed_fields_and_keeps_the_rest() {
        let data = raw(
            &json!({"roomId": "r", "userId": "u", "userName": 7, "audience": "yes", "x": {"deep": [1, 2.5]}}),
        );
        let Some(command::Kind::Join(j)) =
            request_command("join", Data::parse(data.get()).unwrap())
                .unwrap()
                .kind
        else {
            panic!()
        };
        assert_eq!(
            (
                j.room_id.as_str(),
                j.user_id.as_str(),
                j.user_name.as_str(),
                j.audience
            ),
            ("r", "u", "", false)
        );
        // A non-string userName is dropped, not forwarded; `audience` is consumed.
        assert_eq!(j.extra.keys().collect::<Vec<_>>(), vec!["x"]);
        assert_eq!(j.extra["x"], r#"{"deep":[1,2.5]}"#);
        let bad = raw(&json!({"roomId": 1, "userId": "u"}));
        assert_eq!(
            request_command("join", Data::parse(bad.get()).unwrap())
                .unwrap_err()
                .to_string(),
            "Invalid roomId or userId"
        );
        assert_eq!(
            request_command("nope", Data::parse(bad.get()).unwrap())
                .unwrap_err()
                .protoo_code(),
            404
        );
    }

    #[test]
    fn push_round_trips_to_new_pusher_verbatim() {
        let rtp = r#"{"av_type":2,"ssrc":11111,"x":{"y":[null,"z"]}}"#;
        let text = format!(
            r#"{{"roomId":"r","userId":"u","publishers":[{{"pusherId":"p","rtpParam":{rtp},"layer":3}},{{"pusherId":5}}],"t":1}}"#
        );
        let data = RawValue::from_string(text).unwrap();
        let Some(command::Kind::Push(p)) =
            notification_command("push", Data::parse(data.get()).unwrap())
                .unwrap()
                .kind
        else {
            panic!()
        };
        assert_eq!(
            p.publishers.len(),
            1,
            "an entry without a string pusherId is skipped"
        );
        assert_eq!(p.publishers[0].rtp_param_json, rtp);
        let event = proto::PeerEvent {
            kind: Some(peer_event::Kind::NewPusher(proto::NewPusher {
                room_id: p.room_id,
                user_id: p.user_id,
                user_name: "Held".into(),
                pushers: p.publishers,
                extra: p.extra,
            })),
        };
        let out = String::from_utf8(event_data(&event)).unwrap();
        assert!(out.contains(rtp), "rtpParam verbatim: {out}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            json!({"roomId": "r", "userId": "u", "userName": "Held", "pushers": [{"pusherId": "p", "rtpParam": serde_json::from_str::<Value>(rtp).unwrap(), "layer": 3}], "t": 1})
        );
    }

    /// The protoo `data` of a room event, alone.
    fn event_data(event: &proto::PeerEvent) -> Vec<u8> {
        write_event_data(event, Vec::new())
    }

    /// A `textMessage` from user `u` named `n`.
    fn text_event(room_id: &str, message: String, extra: &[(&str, &str)]) -> proto::PeerEvent {
        proto::PeerEvent {
            kind: Some(peer_event::Kind::TextMessage(proto::TextMessage {
                room_id: room_id.into(),
                user_id: "u".into(),
                user_name: "n".into(),
                message,
                extra: extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                payload_json: String::new(),
            })),
        }
    }

    #[test]
    fn strict_fields_win_and_odd_messages_travel_as_sent() {
        let event = text_event(
            "r",
            String::new(),
            &[("message", "{\"rich\":true}"), ("userId", "42")],
        );
        let v: Value = serde_json::from_slice(&event_data(&event)).unwrap();
        assert_eq!(
            v,
            json!({"roomId": "r", "userId": "u", "userName": "n", "message": {"rich": true}})
        );
    }

    #[test]
    fn pull_is_forwarded_byte_for_byte() {
        let text = r#"{"roomId":"r","pusher_user_id":"a","udp_ip":"1.2.3.4","udp_port":10001,"mediaType":"video","odd":1.50}"#;
        let data = RawValue::from_string(text.to_owned()).unwrap();
        let Some(command::Kind::PullRemoteStream(p)) =
            notification_command("pullRemoteStream", Data::parse(data.get()).unwrap())
                .unwrap()
                .kind
        else {
            panic!()
        };
        assert_eq!((p.udp_port, p.media_type.as_str()), (10001, "video"));
        let event = proto::PeerEvent {
            kind: Some(peer_event::Kind::PullRemoteStream(p)),
        };
        assert_eq!(event_data(&event), text.as_bytes());
        let sent = delivery_text(&Delivery::new(event));
        assert_eq!(
            sent.as_str(),
            format!(r#"{{"notification":true,"method":"pullRemoteStream","data":{text}}}"#)
        );
    }

    #[test]
    fn a_delivery_is_the_notification_of_its_data() {
        let event = text_event("r\"1", "é \u{1}".repeat(100), &[("x", "[1,{}]")]);
        let expected = protoo::notification("textMessage", &event_data(&event));
        let delivery = Delivery::new(event);
        assert_eq!(delivery_text(&delivery).as_str(), expected);
        // The second session shares the first one's encoding.
        assert_eq!(delivery_text(&delivery).as_str(), expected);
    }

    #[test]
    fn grpc_edge_refuses_json_that_would_break_peers() {
        let push = |rtp: &str| proto::Command {
            kind: Some(command::Kind::Push(proto::PushRequest {
                room_id: "r".into(),
                user_id: "u".into(),
                publishers: vec![proto::Publisher {
                    pusher_id: "p".into(),
                    rtp_param_json: rtp.into(),
                    extra: Default::default(),
                }],
                ..Default::default()
            })),
        };
        assert!(check_command(&push(r#"{"ssrc":1}"#)).is_ok());
        assert!(check_command(&push("")).is_ok());
        for bad in ["{oops", r#"{"a":"\uDEEE"}"#, "[1e999]"] {
            let e = check_command(&push(bad)).unwrap_err();
            assert_eq!(e.protoo_code(), 400, "{bad}");
        }
    }
    #[test]
    fn a_grpc_text_payload_must_say_what_its_fields_say() {
        let payload = r#"{"roomId":"r","userId":"u","userName":"n","message":"hi","x":[1]}"#;
        let text = |payload: &str, user_id: &str| Command {
            kind: Some(command::Kind::TextMessage(proto::TextMessageRequest {
                room_id: "r".into(),
                user_id: user_id.into(),
                user_name: "n".into(),
                message: "hi".into(),
                extra: [("x".to_owned(), "[1]".to_owned())].into(),
                payload_json: payload.into(),
            })),
        };
        assert!(check_command(&text(payload, "u")).is_ok());
        assert!(check_command(&text("", "u")).is_ok());
        // Another speaker in the payload than the one the rules check.
        let e = check_command(&text(payload, "someone-else")).unwrap_err();
        assert_eq!(e.protoo_code(), 400, "{e}");
        // A field missing from the payload, or one the fields do not have.
        for bad in [
            r#"{"roomId":"r","userId":"u","userName":"n","message":"hi"}"#,
            r#"{"roomId":"r","userId":"u","userName":"n","message":"hi","x":[1],"y":2}"#,
            r#"{"roomId":"r","userId":"u","userName":5,"message":"hi","x":[1]}"#,
        ] {
            assert!(check_command(&text(bad, "u")).is_err(), "{bad}");
        }
    }

    /// A `textMessage` frame's `data` as its members, in order.
    fn text_data() -> impl proptest::strategy::Strategy<Value = Vec<(String, Value)>> {
        use proptest::strategy::Strategy;
        let key = proptest::prop_oneof![
            proptest::sample::select(vec![
                "roomId", "userId", "userName", "message", "pushers", "x", ""
            ])
            .prop_map(str::to_owned),
            r#"[a-z"\\]{0,3}"#,
        ];
        let value = proptest::prop_oneof![
            3 => r#"[a-z"\\\u{e9}]{0,6}"#.prop_map(Value::String),
            1 => crate::protoo::tests::any_json(),
        ];
        proptest::collection::vec((key, value), 0..7).prop_map(|mut members| {
            // Always a room: a text message without one is refused first.
            members.insert(0, ("roomId".to_owned(), Value::String("r".to_owned())));
            members
        })
    }

    proptest::proptest! {
        // Repeats of one key are what breaks verbatim forwarding: many
        // cases, so that every kind of repeat turns up in each run.
        #![proptest_config(proptest::test_runner::Config::with_cases(4096))]
        /// A text message goes out verbatim only when that is exactly what
        /// encoding its typed fields and `extra` would write: the two read
        /// back as the same JSON, whatever the members, their types and
        /// repeats, and the usual message (four strings) goes verbatim.
        #[test]
        fn a_verbatim_text_message_says_what_its_fields_say(members in text_data()) {
            let mut text = String::from("{");
            for (n, (k, v)) in members.iter().enumerate() {
                if n > 0 {
                    text.push(',');
                }
                text.push_str(&format!("{}:{v}", serde_json::to_string(k).unwrap()));
            }
            text.push('}');
            let data = RawValue::from_string(text.clone()).unwrap();
            let Ok(Command { kind: Some(command::Kind::TextMessage(mut r)) }) =
                notification_command("textMessage", Data::parse(data.get()).unwrap())
            else {
                // A repeated roomId may be refused; nothing goes out then.
                return Ok(());
            };
            let count = |key: &str| members.iter().filter(|(k, _)| k == key).count();
            let usual = ["userId", "userName", "message"].iter().all(|key| {
                count(key) == 1 && members.iter().any(|(k, v)| k == key && v.is_string())
            }) && count("pushers") == 0
                && members.iter().all(|(k, _)| count(k) == 1);
            proptest::prop_assert_eq!(!r.payload_json.is_empty(), usual, "{}", text);
            let event = |r: &proto::TextMessageRequest| proto::PeerEvent {
                kind: Some(peer_event::Kind::TextMessage(proto::TextMessage {
                    room_id: r.room_id.clone(),
                    user_id: r.user_id.clone(),
                    user_name: r.user_name.clone(),
                    message: r.message.clone(),
                    extra: r.extra.clone(),
                    payload_json: r.payload_json.clone(),
                })),
            };
            let sent: Value = serde_json::from_slice(&event_data(&event(&r))).unwrap();
            r.payload_json.clear();
            let encoded: Value = serde_json::from_slice(&event_data(&event(&r))).unwrap();
            proptest::prop_assert_eq!(sent, encoded, "{}", text);
        }
    }
}
