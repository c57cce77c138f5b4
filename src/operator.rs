//! The operator's command line (`pilot-center rooms`, `room ID`, `sessions`,
//! `msus`, `kick`, `close`, `say`, `watch`): a gRPC client of a running
//! center that prints tables for people and JSON for scripts.

use crate::proto::room_service_client::RoomServiceClient;
use crate::proto::{self, EventKind};
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

    /// Every media relay.
    pub async fn relays(&mut self) -> Result<Vec<proto::Relay>, OperatorError> {
        let r = self.request(proto::ListRelaysRequest::default());
        Ok(self.client.list_relays(r).await?.into_inner().relays)
    }

    /// Starts recording a room (`recording_id` empty: the center names it).
    pub async fn record(
        &mut self,
        room_id: &str,
        recording_id: &str,
    ) -> Result<proto::Recording, OperatorError> {
        let r = self.request(proto::StartRecordingRequest {
            room_id: room_id.to_owned(),
            recording_id: recording_id.to_owned(),
        });
        let reply = self.client.start_recording(r).await?.into_inner();
        Ok(reply.recording.unwrap_or_default())
    }

    /// Stops a room's recording.
    pub async fn stop_recording(
        &mut self,
        room_id: &str,
    ) -> Result<proto::Recording, OperatorError> {
        let r = self.request(proto::StopRecordingRequest {
            room_id: room_id.to_owned(),
        });
        let reply = self.client.stop_recording(r).await?.into_inner();
        Ok(reply.recording.unwrap_or_default())
    }

    /// The recordings of `room_id` (empty: all).
    pub async fn recordings(
        &mut self,
        room_id: &str,
    ) -> Result<Vec<proto::Recording>, OperatorError> {
        let r = self.request(proto::ListRecordingsRequest {
            room_id: room_id.to_owned(),
        });
        Ok(self
            .client
            .list_recordings(r)
            .await?
            .into_inner()
            .recordings)
    }

    /// Deletes a stopped recording; whether its MSU was told.
    pub async fn delete_recording(&mut self, recording_id: &str) -> Result<bool, OperatorError> {
        let r = self.request(proto::DeleteRecordingRequest {
            recording_id: recording_id.to_owned(),
        });
        Ok(self.client.delete_recording(r).await?.into_inner().msu_told)
    }

    /// Starts a playback.
    pub async fn play(
        &mut self,
        r: proto::StartPlaybackRequest,
    ) -> Result<proto::Playback, OperatorError> {
        let r = self.request(r);
        let reply = self.client.start_playback(r).await?.into_inner();
        Ok(reply.playback.unwrap_or_default())
    }

    /// Stops a playback.
    pub async fn stop_playback(&mut self, playback_id: &str) -> Result<(), OperatorError> {
        let r = self.request(proto::StopPlaybackRequest {
            playback_id: playback_id.to_owned(),
        });
        self.client.stop_playback(r).await?;
        Ok(())
    }

    /// The running playbacks.
    pub async fn playbacks(&mut self) -> Result<Vec<proto::Playback>, OperatorError> {
        let r = self.request(proto::ListPlaybacksRequest {});
        Ok(self.client.list_playbacks(r).await?.into_inner().playbacks)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_in_any_spelling() {
        for name in ["user_joined", "USER-JOINED", "EVENT_KIND_USER_JOINED"] {
            assert_eq!(parse_kind(name), Ok(EventKind::UserJoined));
        }
        assert!(parse_kind("nope").is_err());
    }
}
