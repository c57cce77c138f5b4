//! What operators see: listings and events as tables for people and as
//! JSON for scripts and the admin page. The operator CLI and the admin
//! page's API both use these, so a field is named the same in both.

use crate::proto::{self, EventKind};
use serde_json::{Value, json};

/// A room of `rooms`, as JSON.
pub fn room_summary_json(r: &proto::RoomSummary) -> Value {
    json!({"roomId": r.room_id, "users": r.user_count, "sessions": r.session_count, "msuId": r.msu_id})
}

/// A room in detail, as JSON: its users with their session (0: unbound,
/// waiting out the reconnect grace) and pushers.
pub fn room_json(room: &proto::RoomDetail) -> Value {
    let users: Vec<Value> = room
        .users
        .iter()
        .map(|u| {
            let pushers: Vec<&str> = u.pushers.iter().map(|p| p.pusher_id.as_str()).collect();
            json!({"userId": u.user_id, "userName": u.user_name, "audience": u.audience, "sessionId": u.session_id, "pushers": pushers})
        })
        .collect();
    json!({"roomId": room.room_id, "msuId": room.msu_id, "sessionIds": room.session_ids, "users": users, "recordingId": room.recording_id})
}

/// A session, as JSON.
pub fn session_json(s: &proto::SessionInfo) -> Value {
    json!({"sessionId": s.session_id, "peerId": s.peer_id, "transport": transport(s.transport), "peerAddr": s.peer_addr, "users": s.user_count, "queueDepth": s.queue_depth, "messagesIn": s.messages_in, "messagesOut": s.messages_out, "msuIds": s.msu_ids, "connectedAt": time(s.connected_at.as_ref()), "nodeId": s.node_id, "incarnation": s.incarnation})
}

/// An MSU, as JSON.
pub fn msu_json(m: &proto::MsuInfo) -> Value {
    json!({"msuId": m.msu_id, "sessionId": m.session_id, "roomIds": m.room_ids, "lastSeen": time(m.last_seen.as_ref())})
}

/// An event of the feed, as JSON.
pub fn event_json(e: &proto::WatchEventsResponse) -> Value {
    json!({"seq": e.seq, "time": time(e.time.as_ref()), "roomId": e.room_id, "kind": kind_name(e.kind), "detail": event_detail(e)})
}

/// The short name of an event kind (`user_joined`).
pub fn kind_name(kind: i32) -> String {
    EventKind::try_from(kind)
        .map(|k| k.as_str_name())
        .unwrap_or("EVENT_KIND_UNSPECIFIED")
        .trim_start_matches("EVENT_KIND_")
        .to_ascii_lowercase()
}

/// Left-aligned columns under a header, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn time(t: Option<&prost_types::Timestamp>) -> String {
    t.map(|t| {
        let at = std::time::UNIX_EPOCH
            + std::time::Duration::new(
                u64::try_from(t.seconds).unwrap_or(0),
                u32::try_from(t.nanos).unwrap_or(0),
            );
        humantime::format_rfc3339_seconds(at).to_string()
    })
    .unwrap_or_default()
}

fn transport(t: i32) -> &'static str {
    proto::Transport::try_from(t).map_or("other", proto::Transport::short_name)
}

/// `rooms`, as a table or JSON.
pub fn show_rooms(rooms: &[proto::RoomSummary], as_json: bool) -> String {
    if as_json {
        let v: Vec<Value> = rooms.iter().map(room_summary_json).collect();
        return format!("{}\n", Value::from(v));
    }
    let rows: Vec<Vec<String>> = rooms
        .iter()
        .map(|r| {
            vec![
                r.room_id.clone(),
                r.user_count.to_string(),
                r.session_count.to_string(),
                r.msu_id.clone(),
            ]
        })
        .collect();
    table(&["ROOM", "USERS", "SESSIONS", "MSU"], &rows)
}

/// `room ID`, as a table or JSON.
pub fn show_room(room: &proto::RoomDetail, as_json: bool) -> String {
    if as_json {
        return format!("{}\n", room_json(room));
    }
    let rows: Vec<Vec<String>> = room
        .users
        .iter()
        .map(|u| {
            vec![
                u.user_id.clone(),
                u.user_name.clone(),
                if u.session_id == 0 {
                    "-".to_owned()
                } else {
                    u.session_id.to_string()
                },
                if u.audience { "yes" } else { "" }.to_owned(),
                u.pushers
                    .iter()
                    .map(|p| p.pusher_id.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    format!(
        "room {}  msu {}  sessions {:?}\n{}",
        room.room_id,
        if room.msu_id.is_empty() {
            "-"
        } else {
            &room.msu_id
        },
        room.session_ids,
        table(&["USER", "NAME", "SESSION", "AUDIENCE", "PUSHERS"], &rows)
    )
}

/// `sessions`, as a table or JSON.
pub fn show_sessions(sessions: &[proto::SessionInfo], as_json: bool) -> String {
    if as_json {
        let v: Vec<Value> = sessions.iter().map(session_json).collect();
        return format!("{}\n", Value::from(v));
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.session_id.to_string(),
                s.peer_id.clone(),
                transport(s.transport).to_owned(),
                s.peer_addr.clone(),
                s.user_count.to_string(),
                s.queue_depth.to_string(),
                format!("{}/{}", s.messages_in, s.messages_out),
                s.msu_ids.join(","),
                s.node_id.clone(),
            ]
        })
        .collect();
    table(
        &[
            "SESSION",
            "PEER",
            "TRANSPORT",
            "ADDRESS",
            "USERS",
            "QUEUE",
            "IN/OUT",
            "MSUS",
            "NODE",
        ],
        &rows,
    )
}

/// `msus`, as a table or JSON.
pub fn show_msus(msus: &[proto::MsuInfo], as_json: bool) -> String {
    if as_json {
        let v: Vec<Value> = msus.iter().map(msu_json).collect();
        return format!("{}\n", Value::from(v));
    }
    let rows: Vec<Vec<String>> = msus
        .iter()
        .map(|m| {
            vec![
                m.msu_id.clone(),
                m.session_id.to_string(),
                m.room_ids.len().to_string(),
                time(m.last_seen.as_ref()),
            ]
        })
        .collect();
    table(&["MSU", "SESSION", "ROOMS", "LAST SEEN"], &rows)
}

/// What an event says beyond its kind and room, as `key=value` words.
pub fn event_detail(e: &proto::WatchEventsResponse) -> String {
    use proto::watch_events_response::Event;
    match &e.event {
        Some(Event::UserJoined(x)) => format!(
            "user={} name={} session={}",
            x.user_id, x.user_name, x.session_id
        ),
        Some(Event::UserLeft(x)) => format!("user={} reason={}", x.user_id, x.reason),
        Some(Event::UserDisconnected(x)) => format!("user={} reason={}", x.user_id, x.reason),
        Some(Event::UserReconnected(x)) => format!(
            "user={} session={} reason={}",
            x.user_id, x.session_id, x.reason
        ),
        Some(Event::SessionOpened(x)) => format!(
            "session={} peer={} incarnation={} addr={} reclaimed={} gone={}",
            x.session_id, x.peer_id, x.incarnation, x.peer_addr, x.users_reclaimed, x.users_gone
        ),
        Some(Event::SessionClosed(x)) => format!("session={} reason={}", x.session_id, x.reason),
        Some(Event::TextMessage(x)) => format!("user={} message={:?}", x.user_id, x.message),
        Some(Event::Lagged(x)) => format!("skipped={}", x.skipped),
        Some(Event::RoomCreated(_) | Event::RoomClosed(_)) | None => String::new(),
        Some(Event::PusherAdded(x)) => format!(
            "user={} pushers={}",
            x.user_id,
            x.pushers
                .iter()
                .map(|p| p.pusher_id.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ),
        Some(Event::PullForwarded(x)) => format!(
            "pusher={} of user={} from session={} to session={}",
            x.pusher_id, x.pusher_user_id, x.from_session_id, x.to_session_id
        ),
        Some(Event::MsuRegistered(x)) => format!("msu={} session={}", x.msu_id, x.session_id),
        Some(Event::MsuInvited(x)) => format!("msu={}", x.msu_id),
        Some(Event::MsuLost(x)) => format!("msu={} rooms={}", x.msu_id, x.room_ids.join(",")),
        Some(Event::RoutingDropped(x)) => format!(
            "{} user={} pusher={} from={} reason={}",
            x.method, x.user_id, x.pusher_id, x.from_session_id, x.reason
        ),
        Some(Event::RelayChanged(x)) => relay_words(x),
        Some(Event::RelayEnded(x)) => format!(
            "user={} msu={} reason={}",
            x.pusher_user_id,
            or_none(&x.msu_id),
            x.reason
        ),
        Some(Event::RecordingStarted(x) | Event::RecordingStopped(x)) => format!(
            "recording={} msu={}{}",
            x.recording_id,
            x.msu_id,
            if x.stop_reason.is_empty() {
                String::new()
            } else {
                format!(" reason={}", x.stop_reason)
            }
        ),
        Some(Event::RecordingFile(x)) => {
            let state = proto::RecordingFileState::try_from(x.state)
                .map(|s| s.as_str_name())
                .unwrap_or("RECORDING_FILE_STATE_UNSPECIFIED")
                .trim_start_matches("RECORDING_FILE_STATE_")
                .to_ascii_lowercase();
            let mut words = format!("recording={} user={} {state}", x.recording_id, x.user_id);
            if !x.file.is_empty() {
                words.push_str(&format!(" file={}", x.file));
            }
            if x.bytes > 0 {
                words.push_str(&format!(" bytes={}", x.bytes));
            }
            if !x.reason.is_empty() {
                words.push_str(&format!(" reason={:?}", x.reason));
            }
            words
        }
        Some(Event::RecordingDeleted(x)) => format!("recording={}", x.recording_id),
        Some(Event::PlaybackStarted(x)) => format!(
            "playback={} user={} recording={} of={} msu={}{}",
            x.playback_id,
            x.user_id,
            x.recording_id,
            x.source_user_id,
            x.msu_id,
            if x.r#loop { " loop" } else { "" }
        ),
        Some(Event::PlaybackEnded(x)) => format!(
            "playback={} user={} reason={}",
            x.playback_id, x.user_id, x.reason
        ),
        Some(Event::PullUnserved(x)) => format!(
            "user={} from session={} asked={}:{} sfu sends to={}:{}",
            x.pusher_user_id,
            x.from_session_id,
            x.udp_ip,
            x.udp_port,
            x.serving_udp_ip,
            x.serving_udp_port
        ),
    }
}

fn or_none(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// A relay's destinations as `ip:port` words.
fn destinations(r: &proto::Relay) -> String {
    r.destinations
        .iter()
        .map(|d| format!("{}:{}", d.udp_ip, d.udp_port))
        .collect::<Vec<_>>()
        .join(",")
}

fn relay_words(r: &proto::Relay) -> String {
    format!(
        "user={} msu={} sfu sends to={}:{} destinations={}",
        r.pusher_user_id,
        or_none(&r.msu_id),
        r.udp_ip,
        r.udp_port,
        destinations(r)
    )
}

/// The relays, as a table or JSON.
pub fn show_relays(relays: &[proto::Relay], as_json: bool) -> String {
    if as_json {
        let v: Vec<Value> = relays
            .iter()
            .map(|r| {
                json!({"roomId": r.room_id, "userId": r.pusher_user_id, "msuId": r.msu_id,
                       "sendsTo": format!("{}:{}", r.udp_ip, r.udp_port),
                       "pushers": r.pushers.iter().map(|p| p.pusher_id.clone()).collect::<Vec<_>>(),
                       "packetsIn": r.packets_in, "packetsOut": r.packets_out,
                       "worstFractionLost": r.worst_fraction_lost,
                       "destinations": r.destinations.iter().map(|d| json!({
                           "addr": format!("{}:{}", d.udp_ip, d.udp_port), "peerId": d.peer_id,
                           "sessionId": d.session_id, "pusherIds": d.pusher_ids})).collect::<Vec<_>>()})
            })
            .collect();
        return format!("{}\n", Value::Array(v));
    }
    let rows: Vec<Vec<String>> = relays
        .iter()
        .map(|r| {
            vec![
                r.room_id.clone(),
                r.pusher_user_id.clone(),
                or_none(&r.msu_id).to_owned(),
                format!("{}:{}", r.udp_ip, r.udp_port),
                destinations(r),
                r.packets_in.to_string(),
                r.packets_out.to_string(),
                format!("{:.1}%", f64::from(r.worst_fraction_lost) * 100.0 / 256.0),
            ]
        })
        .collect();
    table(
        &[
            "ROOM",
            "PUBLISHER",
            "MSU",
            "SFU SENDS TO",
            "DESTINATIONS",
            "IN",
            "OUT",
            "WORST LOSS",
        ],
        &rows,
    )
}

/// The recordings, as a table or JSON.
pub fn show_recordings(recordings: &[proto::Recording], as_json: bool) -> String {
    let state = |r: &proto::Recording| {
        proto::RecordingState::try_from(r.state)
            .map(|s| s.as_str_name())
            .unwrap_or("RECORDING_STATE_UNSPECIFIED")
            .trim_start_matches("RECORDING_STATE_")
            .to_ascii_lowercase()
    };
    if as_json {
        let v: Vec<Value> = recordings
            .iter()
            .map(|r| {
                json!({"recordingId": r.recording_id, "roomId": r.room_id, "msuId": r.msu_id,
                       "state": state(r), "startedAt": time(r.started_at.as_ref()),
                       "stoppedAt": r.stopped_at.as_ref().map(|t| time(Some(t))),
                       "stopReason": r.stop_reason, "lastError": r.last_error,
                       "files": r.files.iter().map(|f| json!({"userId": f.user_id, "file": f.file,
                           "closed": f.closed, "bytes": f.bytes})).collect::<Vec<_>>()})
            })
            .collect();
        return format!("{}\n", Value::Array(v));
    }
    let rows: Vec<Vec<String>> = recordings
        .iter()
        .map(|r| {
            vec![
                r.recording_id.clone(),
                r.room_id.clone(),
                r.msu_id.clone(),
                state(r),
                time(r.started_at.as_ref()),
                r.files.len().to_string(),
                r.files.iter().map(|f| f.bytes).sum::<u64>().to_string(),
                or_none(&r.last_error).to_owned(),
            ]
        })
        .collect();
    table(
        &[
            "RECORDING",
            "ROOM",
            "MSU",
            "STATE",
            "STARTED",
            "FILES",
            "BYTES",
            "LAST ERROR",
        ],
        &rows,
    )
}

/// The playbacks, as a table or JSON.
pub fn show_playbacks(playbacks: &[proto::Playback], as_json: bool) -> String {
    if as_json {
        let v: Vec<Value> = playbacks
            .iter()
            .map(|p| {
                json!({"playbackId": p.playback_id, "recordingId": p.recording_id,
                       "sourceUserId": p.source_user_id, "roomId": p.room_id, "userId": p.user_id,
                       "msuId": p.msu_id, "loop": p.r#loop, "startedAt": time(p.started_at.as_ref())})
            })
            .collect();
        return format!("{}\n", Value::Array(v));
    }
    let rows: Vec<Vec<String>> = playbacks
        .iter()
        .map(|p| {
            vec![
                p.playback_id.clone(),
                p.room_id.clone(),
                p.user_id.clone(),
                format!("{}/{}", p.recording_id, p.source_user_id),
                p.msu_id.clone(),
                if p.r#loop { "loop" } else { "once" }.to_owned(),
                time(p.started_at.as_ref()),
            ]
        })
        .collect();
    table(
        &[
            "PLAYBACK",
            "ROOM",
            "AS USER",
            "RECORDING/USER",
            "MSU",
            "",
            "STARTED",
        ],
        &rows,
    )
}

/// One event of `watch`, as a line of text or JSON.
pub fn show_event(e: &proto::WatchEventsResponse, as_json: bool) -> String {
    if as_json {
        return format!("{}\n", event_json(e));
    }
    let detail = event_detail(e);
    format!(
        "{:>6}  {}  {:<12}  {:<18}  {}\n",
        e.seq,
        time(e.time.as_ref()),
        if e.room_id.is_empty() {
            "-"
        } else {
            &e.room_id
        },
        kind_name(e.kind),
        detail
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_names_are_short() {
        assert_eq!(kind_name(EventKind::UserLeft.into()), "user_left");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
