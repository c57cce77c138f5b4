//! The gRPC front end: the room service served over tonic, plus reflection
//! and health. Every RPC converts types and calls [`Center`]; no room rules
//! live here.

use crate::center::{Center, EventFilter, Outbound, PeerInfo, SessionHandle, lagged};
use crate::error::CenterError;
use crate::proto::room_service_server::{RoomService, RoomServiceServer};
use crate::proto::{
    self, CenterMessage, PeerMessage, Transport, center_message, command_result, peer_message,
};
use crate::translate;
use futures_util::StreamExt;
use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Settings of the gRPC front end.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// Items queued per `PeerSession` stream (and per watcher) before it
    /// counts as a slow consumer.
    pub queue: usize,
    /// Time an MSU has to answer `invite`.
    pub invite_timeout: Duration,
}

/// The tonic service: one per server, over the shared [`Center`].
pub struct RoomServiceImpl {
    center: Center,
    settings: GrpcSettings,
    shutdown: CancellationToken,
}

impl RoomServiceImpl {
    /// A service over `center`; open streams end with `UNAVAILABLE` when
    /// `shutdown` is cancelled.
    pub fn new(center: Center, settings: GrpcSettings, shutdown: CancellationToken) -> Self {
        Self {
            center,
            settings,
            shutdown,
        }
    }

    /// The tonic server wrapper.
    pub fn into_server(self) -> RoomServiceServer<Self> {
        RoomServiceServer::new(self)
    }
}

/// An item of a `PeerSession` stream's outbound queue.
#[derive(Debug)]
pub enum GrpcOut {
    /// From the center: an event or an `invite`.
    Center(Outbound),
    /// The result of one of the peer's commands.
    Result(proto::CommandResult),
}

impl From<Outbound> for GrpcOut {
    fn from(o: Outbound) -> Self {
        Self::Center(o)
    }
}

type BoxStream<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

fn status(e: CenterError) -> Status {
    e.into()
}

#[tonic::async_trait]
impl RoomService for RoomServiceImpl {
    type PeerSessionStream = BoxStream<CenterMessage>;
    type WatchEventsStream = BoxStream<proto::WatchEventsResponse>;

    async fn peer_session(
        &self,
        request: Request<Streaming<PeerMessage>>,
    ) -> Result<Response<Self::PeerSessionStream>, Status> {
        let addr = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(self.settings.queue);
        let (center_tx, center_rx) = mpsc::channel::<GrpcOut>(self.settings.queue);
        let handle = self.center.open_session(
            PeerInfo {
                addr: addr.clone(),
                transport: Transport::Grpc,
            },
            center_tx.clone(),
        );
        let span = tracing::info_span!("session", peer.addr = %addr, transport = "grpc", session.id = handle.id());
        let run = PeerStream {
            handle,
            center_tx,
            settings: self.settings.clone(),
            invites: HashMap::new(),
            next_invite: 0,
        };
        let shutdown = self.shutdown.clone();
        tokio::spawn(tracing::Instrument::instrument(
            run.run(inbound, center_rx, out_tx, shutdown),
            span,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn list_rooms(
        &self,
        _: Request<proto::ListRoomsRequest>,
    ) -> Result<Response<proto::ListRoomsResponse>, Status> {
        Ok(Response::new(proto::ListRoomsResponse {
            rooms: self.center.list_rooms(),
        }))
    }

    async fn get_room(
        &self,
        request: Request<proto::GetRoomRequest>,
    ) -> Result<Response<proto::GetRoomResponse>, Status> {
        let room = self
            .center
            .get_room(&request.get_ref().room_id)
            .map_err(status)?;
        Ok(Response::new(proto::GetRoomResponse { room: Some(room) }))
    }

    async fn list_sessions(
        &self,
        _: Request<proto::ListSessionsRequest>,
    ) -> Result<Response<proto::ListSessionsResponse>, Status> {
        Ok(Response::new(proto::ListSessionsResponse {
            sessions: self.center.list_sessions(),
        }))
    }

    async fn list_msus(
        &self,
        _: Request<proto::ListMsusRequest>,
    ) -> Result<Response<proto::ListMsusResponse>, Status> {
        Ok(Response::new(proto::ListMsusResponse {
            msus: self.center.list_msus(),
        }))
    }

    async fn remove_user(
        &self,
        request: Request<proto::RemoveUserRequest>,
    ) -> Result<Response<proto::RemoveUserResponse>, Status> {
        let r = request.get_ref();
        let sessions_notified = self
            .center
            .remove_user(&r.room_id, &r.user_id)
            .map_err(status)?;
        Ok(Response::new(proto::RemoveUserResponse {
            sessions_notified,
        }))
    }

    async fn close_room(
        &self,
        request: Request<proto::CloseRoomRequest>,
    ) -> Result<Response<proto::CloseRoomResponse>, Status> {
        let users_removed = self
            .center
            .close_room(&request.get_ref().room_id)
            .map_err(status)?;
        Ok(Response::new(proto::CloseRoomResponse { users_removed }))
    }

    async fn send_text_message(
        &self,
        request: Request<proto::SendTextMessageRequest>,
    ) -> Result<Response<proto::SendTextMessageResponse>, Status> {
        let r = request.get_ref();
        let sessions_reached = self
            .center
            .send_text(&r.room_id, &r.user_id, &r.user_name, &r.message)
            .map_err(status)?;
        Ok(Response::new(proto::SendTextMessageResponse {
            sessions_reached,
        }))
    }

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let filter = EventFilter::new(request.get_ref());
        let feed = self.center.subscribe();
        let (tx, rx) = mpsc::channel(self.settings.queue);
        tokio::spawn(watch(feed, filter, tx, self.shutdown.clone()));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Feeds one watcher. Tonic does not poll a stream whose client went away,
/// so the producer is this task and a failed send is the disconnect.
async fn watch(
    mut feed: broadcast::Receiver<std::sync::Arc<proto::WatchEventsResponse>>,
    filter: EventFilter,
    tx: mpsc::Sender<Result<proto::WatchEventsResponse, Status>>,
    shutdown: CancellationToken,
) {
    loop {
        let item = tokio::select! {
            () = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("the center is shutting down"))).await;
                return;
            }
            () = tx.closed() => return,
            item = feed.recv() => item,
        };
        let event = match item {
            Ok(event) if filter.matches(&event) => (*event).clone(),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::debug!(skipped, "event watcher lagged");
                lagged(skipped)
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if tx.send(Ok(event)).await.is_err() {
            return;
        }
    }
}

/// One `PeerSession` stream: the gRPC twin of a WebSocket session.
struct PeerStream {
    handle: SessionHandle,
    center_tx: mpsc::Sender<GrpcOut>,
    settings: GrpcSettings,
    /// `invite` ids sent and not answered: id -> (room, deadline).
    invites: HashMap<u64, (String, Instant)>,
    next_invite: u64,
}

impl PeerStream {
    async fn run(
        mut self,
        mut inbound: Streaming<PeerMessage>,
        mut center_rx: mpsc::Receiver<GrpcOut>,
        out: mpsc::Sender<Result<CenterMessage, Status>>,
        shutdown: CancellationToken,
    ) {
        tracing::info!("session opened");
        let second = Duration::from_secs(1);
        let mut tick = tokio::time::interval_at(Instant::now() + second, second);
        let reason = loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(msg)) => {
                        self.handle.note_inbound();
                        self.on_message(msg);
                    }
                    Some(Err(status)) => {
                        tracing::debug!(%status, "peer stream failed");
                        break "stream failed";
                    }
                    None => break "peer closed",
                },
                item = center_rx.recv() => {
                    let Some(item) = item else { break "queue closed" };
                    let message = self.encode(item);
                    match out.try_send(Ok(message)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            let _ = out.try_send(Err(Status::resource_exhausted("slow consumer")));
                            break "slow consumer";
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break "peer gone",
                    }
                }
                () = self.handle.overflow().cancelled() => {
                    let _ = out.try_send(Err(Status::resource_exhausted("slow consumer")));
                    break "slow consumer";
                }
                () = shutdown.cancelled() => {
                    // Deliver queued results first, then end the stream.
                    while let Ok(item) = center_rx.try_recv() {
                        let message = self.encode(item);
                        if out.try_send(Ok(message)).is_err() {
                            break;
                        }
                    }
                    let _ = tokio::time::timeout(second, out.send(Err(Status::unavailable("the center is shutting down")))).await;
                    break "going away";
                }
                () = out.closed() => break "peer gone",
                _ = tick.tick() => self.expire_invites(),
            }
        };
        tracing::info!(reason, "session closed");
        self.handle.close(reason);
    }

    fn on_message(&mut self, msg: PeerMessage) {
        match msg.kind {
            Some(peer_message::Kind::Command(c)) => {
                let command = c.command.unwrap_or_default();
                let result =
                    translate::check_command(&command).and_then(|()| self.handle.execute(command));
                let outcome = match result {
                    Ok(reply) => command_result::Outcome::Reply(reply),
                    Err(e) => command_result::Outcome::Error((&e).into()),
                };
                let result = proto::CommandResult {
                    id: c.id,
                    outcome: Some(outcome),
                };
                match self.center_tx.try_send(GrpcOut::Result(result)) {
                    Ok(()) => self.handle.note_outbound(),
                    Err(mpsc::error::TrySendError::Full(_)) => self.handle.overflow().cancel(),
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
            Some(peer_message::Kind::InviteAnswer(a)) => match self.invites.remove(&a.id) {
                Some((room, _)) => self.handle.invite_answered(
                    &room,
                    if a.ok {
                        Ok(())
                    } else {
                        Err(a
                            .error
                            .map(|e| format!("{} {}", e.code, e.reason))
                            .unwrap_or_default())
                    },
                ),
                None => tracing::debug!(id = a.id, "answer to no pending invite"),
            },
            None => tracing::debug!("empty peer message ignored"),
        }
    }

    fn encode(&mut self, item: GrpcOut) -> CenterMessage {
        let kind = match item {
            GrpcOut::Result(r) => center_message::Kind::Result(r),
            GrpcOut::Center(Outbound::Event(d)) => center_message::Kind::Event(d.event.clone()),
            GrpcOut::Center(Outbound::Invite { room_id }) => {
                self.next_invite += 1;
                let id = self.next_invite;
                self.invites.insert(
                    id,
                    (
                        room_id.clone(),
                        Instant::now() + self.settings.invite_timeout,
                    ),
                );
                center_message::Kind::Invite(proto::InviteRequest { id, room_id })
            }
        };
        CenterMessage { kind: Some(kind) }
    }

    fn expire_invites(&mut self) {
        let now = Instant::now();
        self.invites.retain(|_, (room, deadline)| {
            let keep = *deadline > now;
            if !keep {
                tracing::warn!(room.id = %room, "invite not answered in time");
            }
            keep
        });
    }
}
