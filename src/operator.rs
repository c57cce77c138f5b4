//! The operator's command line (`pilot-center rooms`, `room ID`, `sessions`,
//! `msus`, `kick`, `close`, `say`, `watch`): a gRPC client of a running
//! center that prints tables for people and JSON for scripts.

use crate::proto::room_service_client::RoomServiceClient;
use crate::proto::{self, EventKind};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// What an operator command can fail with, in words an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The address is not a URL tonic can use.
    #[error("bad address {addr}: {reason}")]
    BadAddress {
        /// The address given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Nothing answers there.
    #[error(
        "cannot reach the center at {addr} ({reason}); is it running, and is --addr its gRPC listener?"
    )]
    Unreachable {
        /// The address given.
        addr: String,
        /// The transport's reason.
        reason: String,
    },
    /// The center refused the call.
    #[error("{0}")]
    Refused(String),
    /// The token is not valid metadata.
    #[error("the token is not a valid header value")]
    BadToken,
}

impl From<tonic::Status> for OperatorError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        Self::Refused(match s.code() {
            Code::NotFound => format!("not found: {}", s.message()),
            Code::PermissionDenied => format!(
                "permission denied: {} (an admin token is needed: --token or PILOT_TOKEN)",
                s.message()
            ),
            Code::Unauthenticated => format!(
                "not authenticated: {} (pass an admin token: --token or PILOT_TOKEN)",
                s.message()
            ),
            Code::InvalidArgument => format!("invalid argument: {}", s.message()),
            Code::Unavailable => format!("the center is unavailable: {}", s.message()),
            Code::OutOfRange => format!("out of range: {}", s.message()),
            code => format!("{code:?}: {}", s.message()),
        })
    }
}

/// A connection to a center's gRPC listener.
pub struct Operator {
    client: RoomServiceClient<Channel>,
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Operator {
    /// Connects to `addr` (`http://host:port`, or `host:port`).
    pub async fn connect(addr: &str, token: Option<&str>) -> Result<Self, OperatorError> {
        let url = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Channel::from_shared(url).map_err(|e| OperatorError::BadAddress {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
        let channel = endpoint
            .connect_timeout(std::time::Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| OperatorError::Unreachable {
                addr: addr.to_owned(),
                reason: std::error::Error::source(&e)
                    .map_or_else(|| e.to_string(), ToString::to_string),
            })?;
        let token = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| OperatorError::BadToken)
            })
            .transpose()?;
        Ok(Self {
            client: RoomServiceClient::new(channel),
            token,
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(t) = &self.token {
            r.metadata_mut().insert("authorization", t.clone());
        }
        r
    }

    /// Every item of a paged listing: `request` makes the request for a
    /// page token, `call` sends it and returns the page and the next token.
    async fn every_page<Req, T, Fut>(
        &self,
        request: impl Fn(String) -> Req,
        call: impl Fn(RoomServiceClient<Channel>, tonic::Request<Req>) -> Fut,
    ) -> Result<Vec<T>, OperatorError>
    where
        Fut: std::future::Future<Output = Result<(Vec<T>, String), tonic::Status>>,
    {
        let (mut all, mut token) = (Vec::new(), String::new());
        loop {
            let r = self.request(request(token));
            let (items, next) = call(self.client.clone(), r).await?;
            all.extend(items);
            if next.is_empty() {
                return Ok(all);
            }
            token = next;
        }
    }

    /// Every room, page after page.
    pub async fn rooms(&mut self) -> Result<Vec<proto::RoomSummary>, OperatorError> {
        self.every_page(
            |page_token| proto::ListRoomsRequest {
                page_size: 0,
                page_token,
            },
            |mut client, r| async move {
                let page = client.list_rooms(r).await?.into_inner();
                Ok((page.rooms, page.next_page_token))
            },
        )
        .await
    }

    /// One room in detail.
    pub async fn room(&mut self, room_id: &str) -> Result<proto::RoomDetail, OperatorError> {
        let r = self.request(proto::GetRoomRequest {
            room_id: room_id.to_owned(),
        });
        self.client
            .get_room(r)
            .await?
            .into_inner()
            .room
            .ok_or_else(|| OperatorError::Refused("the center sent no room".into()))
    }

    /// Every session.
    pub async fn sessions(&mut self) -> Result<Vec<proto::SessionInfo>, OperatorError> {
        self.every_page(
            |page_token| proto::ListSessionsRequest {
                page_size: 0,
                page_token,
            },
            |mut client, r| async move {
                let page = client.list_sessions(r).await?.into_inner();
                Ok((page.sessions, page.next_page_token))
            },
        )
        .await
    }

    /// Every MSU.
    pub async fn msus(&mut self) -> Result<Vec<proto::MsuInfo>, OperatorError> {
        self.every_page(
            |page_token| proto::ListMsusRequest {
                page_size: 0,
                page_token,
            },
            |mut client, r| async move {
                let page = client.list_msus(r).await?.into_inner();
                Ok((page.msus, page.next_page_token))
            },
        )
        .await
    }

    /// Removes a user; returns the sessions told.
    pub async fn kick(&mut self, room_id: &str, user_id: &str) -> Result<u32, OperatorError> {
        let r = self.request(proto::RemoveUserRequest {
            room_id: room_id.to_owned(),
            user_id: user_id.to_owned(),
        });
        Ok(self
            .client
            .remove_user(r)
            .await?
            .into_inner()
            .sessions_notified)
    }

    /// Closes a room; returns the users removed.
    pub async fn close(&mut self, room_id: &str) -> Result<u32, OperatorError> {
        let r = self.request(proto::CloseRoomRequest {
            room_id: room_id.to_owned(),
        });
        Ok(self.client.close_room(r).await?.into_inner().users_removed)
    }

    /// Says `message` in a room as the system; returns the sessions reached.
    pub async fn say(&mut self, room_id: &str, message: &str) -> Result<u32, OperatorError> {
        let r = self.request(proto::SendTextMessageRequest {
            room_id: room_id.to_owned(),
            message: message.to_owned(),
            ..Default::default()
        });
        Ok(self
            .client
            .send_text_message(r)
            .await?
            .into_inner()
            .sessions_reached)
    }

    /// The event feed, filtered by rooms and kinds.
    pub async fn watch(
        &mut self,
        room_ids: Vec<String>,
        kinds: Vec<EventKind>,
        after: Option<u64>,
    ) -> Result<tonic::Streaming<proto::WatchEventsResponse>, OperatorError> {
        let r = self.request(proto::WatchEventsRequest {
            room_ids,
            kinds: kinds.into_iter().map(i32::from).collect(),
            after,
        });
        Ok(self.client.watch_events(r).await?.into_inner())
    }
}

/// An event kind from its short name (`user_joined`, `USER-JOINED`, or
/// `EVENT_KIND_USER_JOINED`).
pub fn parse_kind(name: &str) -> Result<EventKind, String> {
    let upper = name.trim().to_ascii_uppercase().replace('-', "_");
    let full = if upper.starts_with("EVENT_KIND_") {
        upper
    } else {
        format!("EVENT_KIND_{upper}")
    };
    EventKind::from_str_name(&full).ok_or_else(|| format!("unknown event kind: {name}"))
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

fn transport(t: i32) -> String {
    proto::Transport::try_from(t)
        .map(|t| t.as_str_name())
        .unwrap_or("TRANSPORT_UNSPECIFIED")
        .trim_start_matches("TRANSPORT_")
        .to_ascii_lowercase()
}

/// `rooms`, as a table or JSON.
pub fn show_rooms(rooms: &[proto::RoomSummary], as_json: bool) -> String {
    if as_json {
        let v: Vec<Value> = rooms
            .iter()
            .map(|r| json!({"roomId": r.room_id, "users": r.user_count, "sessions": r.session_count, "msuId": r.msu_id}))
            .collect();
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
        let users: Vec<Value> = room
            .users
            .iter()
            .map(|u| {
                let pushers: Vec<&str> = u.pushers.iter().map(|p| p.pusher_id.as_str()).collect();
                json!({"userId": u.user_id, "userName": u.user_name, "audience": u.audience, "sessionId": u.session_id, "pushers": pushers})
            })
            .collect();
        let v = json!({"roomId": room.room_id, "msuId": room.msu_id, "sessionIds": room.session_ids, "users": users});
        return format!("{v}\n");
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
        let v: Vec<Value> = sessions
            .iter()
            .map(|s| json!({"sessionId": s.session_id, "peerId": s.peer_id, "transport": transport(s.transport), "peerAddr": s.peer_addr, "users": s.user_count, "queueDepth": s.queue_depth, "messagesIn": s.messages_in, "messagesOut": s.messages_out, "msuIds": s.msu_ids, "connectedAt": time(s.connected_at.as_ref())}))
            .collect();
        return format!("{}\n", Value::from(v));
    }
    let rows: Vec<Vec<String>> = sessions
        .iter()
        .map(|s| {
            vec![
                s.session_id.to_string(),
                s.peer_id.clone(),
                transport(s.transport),
                s.peer_addr.clone(),
                s.user_count.to_string(),
                s.queue_depth.to_string(),
                format!("{}/{}", s.messages_in, s.messages_out),
                s.msu_ids.join(","),
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
        ],
        &rows,
    )
}

/// `msus`, as a table or JSON.
pub fn show_msus(msus: &[proto::MsuInfo], as_json: bool) -> String {
    if as_json {
        let v: Vec<Value> = msus
            .iter()
            .map(|m| json!({"msuId": m.msu_id, "sessionId": m.session_id, "roomIds": m.room_ids, "lastSeen": time(m.last_seen.as_ref())}))
            .collect();
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

/// One event of `watch`, as a line of text or JSON.
pub fn show_event(e: &proto::WatchEventsResponse, as_json: bool) -> String {
    use proto::watch_events_response::Event;
    let detail = match &e.event {
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
            "session={} peer={} addr={} reclaimed={}",
            x.session_id, x.peer_id, x.peer_addr, x.users_reclaimed
        ),
        Some(Event::SessionClosed(x)) => format!("session={} reason={}", x.session_id, x.reason),
        Some(Event::TextMessage(x)) => format!("user={} message={:?}", x.user_id, x.message),
        Some(Event::Lagged(x)) => format!("skipped={}", x.skipped),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    if as_json {
        let v = json!({"seq": e.seq, "time": time(e.time.as_ref()), "roomId": e.room_id, "kind": kind_name(e.kind), "detail": detail});
        return format!("{v}\n");
    }
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
    fn kinds_parse_in_any_spelling() {
        for name in ["user_joined", "USER-JOINED", "EVENT_KIND_USER_JOINED"] {
            assert_eq!(parse_kind(name), Ok(EventKind::UserJoined));
        }
        assert!(parse_kind("nope").is_err());
        assert_eq!(kind_name(EventKind::UserLeft.into()), "user_left");
    }

    #[test]
    fn tables_align_columns() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
