//! The gRPC front end: the room service served over tonic, plus reflection
//! and health. Every RPC converts types and calls [`Center`]; no room rules
//! live here.

use crate::auth::{Authenticator, Grant, Role, bearer};
use crate::center::{
    Center, EventFilter, Outbound, PeerInfo, Resumed, SLOW_CONSUMER, SessionHandle, lagged,
};
use crate::clock::Clock;
use crate::error::CenterError;
use crate::limits::{Inbox, Next, RateSettings};
use crate::outbox::{Outbox, OutboxReceiver, WireSize, outbox};
use crate::proto::room_service_server::{RoomService, RoomServiceServer};
use crate::proto::{
    self, PeerSessionRequest, PeerSessionResponse, Transport, command_result, peer_session_request,
    peer_session_response,
};
use crate::{telemetry, translate};
use futures_util::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

/// Settings of the gRPC front end.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// Messages buffered per `PeerSession` stream on their way to HTTP/2,
    /// and per event watcher before it counts as lagging.
    pub queue: usize,
    /// Bytes queued to one `PeerSession` before it is a slow consumer.
    pub max_bytes: usize,
    /// How long a `PeerSession` waits for its peer to take a message before
    /// it is a slow consumer.
    pub max_delay: Duration,
    /// The time `max_delay` is counted in (manual in tests).
    pub clock: Clock,
    /// Time an MSU has to answer `invite`.
    pub invite_timeout: Duration,
    /// Per-stream rate limit for `PeerSession`.
    pub rate: RateSettings,
    /// Most `PeerSession`s at once (0: no limit).
    pub max_peer_sessions: usize,
    /// Most `WatchEvents` streams at once (0: no limit).
    pub max_watchers: usize,
}

/// Places for streams of one kind; `None`: no bound.
struct StreamCap(Option<Arc<tokio::sync::Semaphore>>);

impl StreamCap {
    fn new(max: usize) -> Self {
        Self((max > 0).then(|| Arc::new(tokio::sync::Semaphore::new(max))))
    }

    /// A place, held by the stream's task, or RESOURCE_EXHAUSTED.
    fn take(&self, what: &str) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, Status> {
        match &self.0 {
            None => Ok(None),
            Some(s) => {
                s.clone().try_acquire_owned().map(Some).map_err(|_| {
                    Status::resource_exhausted(format!("too many {what} streams open"))
                })
            }
        }
    }
}

/// Checks the bearer token of every call (when auth is on) and attaches the
/// caller's [`Grant`] to the request; with `admin_only`, non-admins are refused.
#[derive(Clone)]
pub struct AuthInterceptor {
    auth: Option<Arc<Authenticator>>,
    admin_only: bool,
}

impl AuthInterceptor {
    /// An interceptor for `auth` (`None`: authentication off).
    pub fn new(auth: Option<Arc<Authenticator>>, admin_only: bool) -> Self {
        Self { auth, admin_only }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let grant = match &self.auth {
            None => Grant::unrestricted(),
            Some(auth) => {
                let token = request
                    .metadata()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(bearer)
                    .ok_or_else(|| {
                        Status::unauthenticated("missing bearer token (authorization metadata)")
                    })?;
                auth.verify(token)
                    .map_err(|e| Status::unauthenticated(e.to_string()))?
            }
        };
        if self.admin_only && grant.role != Role::Admin {
            return Err(Status::permission_denied("an admin token is required"));
        }
        request.extensions_mut().insert(grant);
        Ok(request)
    }
}

/// The caller's grant, attached by [`AuthInterceptor`].
fn grant_of<T>(request: &Request<T>) -> Result<Grant, Status> {
    request
        .extensions()
        .get::<Grant>()
        .cloned()
        .ok_or_else(|| Status::permission_denied("no credentials"))
}

fn require_admin<T>(request: &Request<T>) -> Result<(), Status> {
    match grant_of(request)?.role {
        Role::Admin => Ok(()),
        role => Err(Status::permission_denied(
            format!("{role:?} tokens may not call operator RPCs").to_lowercase(),
        )),
    }
}

/// The tonic service: one per server, over the shared [`Center`].
pub struct RoomServiceImpl {
    center: Center,
    settings: GrpcSettings,
    peer_sessions: StreamCap,
    watchers: StreamCap,
    shutdown: CancellationToken,
    /// Stream tasks, waited for at shutdown.
    tracker: TaskTracker,
}

impl RoomServiceImpl {
    /// A service over `center`; open streams end with `UNAVAILABLE` when
    /// `shutdown` is cancelled. Stream tasks are spawned on `tracker`, so
    /// shutdown waits for them as for WebSocket sessions.
    pub fn new(
        center: Center,
        settings: GrpcSettings,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) -> Self {
        Self {
            center,
            peer_sessions: StreamCap::new(settings.max_peer_sessions),
            watchers: StreamCap::new(settings.max_watchers),
            settings,
            shutdown,
            tracker,
        }
    }

    /// The tonic server wrapper, behind the auth interceptor.
    pub fn into_server(
        self,
        auth: Option<Arc<Authenticator>>,
    ) -> tonic::service::interceptor::InterceptedService<RoomServiceServer<Self>, AuthInterceptor>
    {
        RoomServiceServer::with_interceptor(self, AuthInterceptor::new(auth, false))
    }
}

/// How long a closing `PeerSession` may take to hand on what is queued
/// (as a WebSocket session's close).
const DRAIN: Duration = Duration::from_secs(2);

/// An item of a `PeerSession` stream's outbound queue.
#[derive(Debug)]
pub enum GrpcOut {
    /// From the center: an event or an `invite`.
    Center(Outbound),
    /// The result of one of the peer's commands.
    Result(proto::CommandResult),
}

impl WireSize for GrpcOut {
    fn wire_size(&self) -> usize {
        match self {
            Self::Center(o) => o.wire_size(),
            Self::Result(r) => prost::Message::encoded_len(r),
        }
    }
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
    type PeerSessionStream = BoxStream<PeerSessionResponse>;
    type WatchEventsStream = BoxStream<proto::WatchEventsResponse>;

    async fn peer_session(
        &self,
        request: Request<Streaming<PeerSessionRequest>>,
    ) -> Result<Response<Self::PeerSessionStream>, Status> {
        let grant = grant_of(&request)?;
        if grant.role == Role::Client {
            return Err(Status::permission_denied(
                "client tokens may not open a PeerSession (sfu or msu)",
            ));
        }
        if !self.center.store_ready() {
            return Err(Status::unavailable("state store unavailable"));
        }
        let place = self.peer_sessions.take("PeerSession")?;
        let remote = request.remote_addr();
        let addr = remote.map_or_else(|| "unknown".to_owned(), |a| a.to_string());
        let named = request
            .metadata()
            .get("x-peer-id")
            .and_then(|v| v.to_str().ok());
        let ip = remote.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip());
        let identity = crate::auth::peer_identity(&grant, named, ip);
        let said = request
            .metadata()
            .get("x-peer-incarnation")
            .and_then(|v| v.to_str().ok());
        let incarnation = crate::auth::peer_incarnation(&grant, said);
        let inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(self.settings.queue);
        let (center_tx, center_rx) = outbox::<GrpcOut>(self.settings.max_bytes);
        let handle = self.center.open_session(
            PeerInfo {
                addr: addr.clone(),
                transport: Transport::Grpc,
                identity: identity.clone(),
                incarnation,
            },
            grant,
            center_tx.clone(),
        );
        // DEBUG, as the WebSocket session's span (see transport): INFO lines
        // carry the session's ids themselves.
        let span = tracing::debug_span!("session", peer.addr = %addr, peer.id = %identity, transport = "grpc", session.id = handle.id());
        tracing::info!(session.id = handle.id(), peer.addr = %addr, peer.id = %identity, transport = "grpc", "session opened");
        let end: Arc<parking_lot::Mutex<StreamEnd>> = Arc::default();
        let run = PeerStream {
            handle,
            center_tx,
            end: end.clone(),
            settings: self.settings.clone(),
            inbox: Inbox::new(&self.settings.rate),
        };
        let shutdown = self.shutdown.clone();
        self.tracker.spawn(tracing::Instrument::instrument(
            async move {
                run.run(inbound, center_rx, out_tx, shutdown).await;
                drop(place);
            },
            span,
        ));
        Ok(Response::new(Box::pin(Outgoing {
            rx: out_rx,
            end,
            done: false,
        })))
    }

    async fn list_rooms(
        &self,
        request: Request<proto::ListRoomsRequest>,
    ) -> Result<Response<proto::ListRoomsResponse>, Status> {
        require_admin(&request)?;
        self.center.settle().await.map_err(status)?;
        let (rooms, cursor) = self.center.list_rooms_at();
        let r = request.get_ref();
        let (rooms, next_page_token) =
            page(rooms, |x| x.room_id.clone(), r.page_size, &r.page_token);
        Ok(Response::new(proto::ListRoomsResponse {
            rooms,
            cursor,
            next_page_token,
        }))
    }

    async fn get_room(
        &self,
        request: Request<proto::GetRoomRequest>,
    ) -> Result<Response<proto::GetRoomResponse>, Status> {
        require_admin(&request)?;
        self.center.settle().await.map_err(status)?;
        let (room, cursor) = self
            .center
            .get_room_at(&request.get_ref().room_id)
            .map_err(status)?;
        Ok(Response::new(proto::GetRoomResponse {
            room: Some(room),
            cursor,
        }))
    }

    async fn list_sessions(
        &self,
        request: Request<proto::ListSessionsRequest>,
    ) -> Result<Response<proto::ListSessionsResponse>, Status> {
        require_admin(&request)?;
        self.center.settle().await.map_err(status)?;
        let (sessions, cursor) = self.center.list_sessions_at();
        let r = request.get_ref();
        // Zero-padded, so that the text order is the numeric order.
        let (sessions, next_page_token) = page(
            sessions,
            |x| format!("{:020}", x.session_id),
            r.page_size,
            &r.page_token,
        );
        Ok(Response::new(proto::ListSessionsResponse {
            sessions,
            cursor,
            next_page_token,
        }))
    }

    async fn list_msus(
        &self,
        request: Request<proto::ListMsusRequest>,
    ) -> Result<Response<proto::ListMsusResponse>, Status> {
        require_admin(&request)?;
        self.center.settle().await.map_err(status)?;
        let r = request.get_ref();
        let (msus, next_page_token) = page(
            self.center.list_msus(),
            |x| x.msu_id.clone(),
            r.page_size,
            &r.page_token,
        );
        Ok(Response::new(proto::ListMsusResponse {
            msus,
            next_page_token,
        }))
    }

    async fn list_relays(
        &self,
        request: Request<proto::ListRelaysRequest>,
    ) -> Result<Response<proto::ListRelaysResponse>, Status> {
        require_admin(&request)?;
        self.center.settle().await.map_err(status)?;
        let relays = self.center.list_relays(&request.get_ref().room_id);
        Ok(Response::new(proto::ListRelaysResponse { relays }))
    }

    async fn start_recording(
        &self,
        request: Request<proto::StartRecordingRequest>,
    ) -> Result<Response<proto::StartRecordingResponse>, Status> {
        require_admin(&request)?;
        let r = request.get_ref();
        let recording = self
            .center
            .start_recording(&r.room_id, &r.recording_id)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::StartRecordingResponse {
            recording: Some(recording),
        }))
    }

    async fn stop_recording(
        &self,
        request: Request<proto::StopRecordingRequest>,
    ) -> Result<Response<proto::StopRecordingResponse>, Status> {
        require_admin(&request)?;
        let recording = self
            .center
            .stop_recording(&request.get_ref().room_id)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::StopRecordingResponse {
            recording: Some(recording),
        }))
    }

    async fn list_recordings(
        &self,
        request: Request<proto::ListRecordingsRequest>,
    ) -> Result<Response<proto::ListRecordingsResponse>, Status> {
        require_admin(&request)?;
        self.center.settle().await.map_err(status)?;
        let recordings = self.center.list_recordings(&request.get_ref().room_id);
        Ok(Response::new(proto::ListRecordingsResponse { recordings }))
    }

    async fn delete_recording(
        &self,
        request: Request<proto::DeleteRecordingRequest>,
    ) -> Result<Response<proto::DeleteRecordingResponse>, Status> {
        require_admin(&request)?;
        let msu_told = self
            .center
            .delete_recording(&request.get_ref().recording_id)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::DeleteRecordingResponse { msu_told }))
    }

    async fn start_playback(
        &self,
        request: Request<proto::StartPlaybackRequest>,
    ) -> Result<Response<proto::StartPlaybackResponse>, Status> {
        require_admin(&request)?;
        let playback = self
            .center
            .start_playback(request.into_inner())
            .await
            .map_err(status)?;
        Ok(Response::new(proto::StartPlaybackResponse {
            playback: Some(playback),
        }))
    }

    async fn stop_playback(
        &self,
        request: Request<proto::StopPlaybackRequest>,
    ) -> Result<Response<proto::StopPlaybackResponse>, Status> {
        require_admin(&request)?;
        self.center
            .stop_playback(&request.get_ref().playback_id)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::StopPlaybackResponse {}))
    }

    async fn list_playbacks(
        &self,
        request: Request<proto::ListPlaybacksRequest>,
    ) -> Result<Response<proto::ListPlaybacksResponse>, Status> {
        require_admin(&request)?;
        self.center.settle().await.map_err(status)?;
        let playbacks = self.center.list_playbacks();
        Ok(Response::new(proto::ListPlaybacksResponse { playbacks }))
    }

    async fn remove_user(
        &self,
        request: Request<proto::RemoveUserRequest>,
    ) -> Result<Response<proto::RemoveUserResponse>, Status> {
        require_admin(&request)?;
        let r = request.get_ref();
        let sessions_notified = self
            .center
            .remove_user(&r.room_id, &r.user_id)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::RemoveUserResponse {
            sessions_notified,
        }))
    }

    async fn close_room(
        &self,
        request: Request<proto::CloseRoomRequest>,
    ) -> Result<Response<proto::CloseRoomResponse>, Status> {
        require_admin(&request)?;
        let users_removed = self
            .center
            .close_room(&request.get_ref().room_id)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::CloseRoomResponse { users_removed }))
    }

    async fn send_text_message(
        &self,
        request: Request<proto::SendTextMessageRequest>,
    ) -> Result<Response<proto::SendTextMessageResponse>, Status> {
        require_admin(&request)?;
        let r = request.get_ref();
        let sessions_reached = self
            .center
            .send_text(&r.room_id, &r.user_id, &r.user_name, &r.message)
            .await
            .map_err(status)?;
        Ok(Response::new(proto::SendTextMessageResponse {
            sessions_reached,
        }))
    }

    async fn watch_events(
        &self,
        request: Request<proto::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        require_admin(&request)?;
        let place = self.watchers.take("WatchEvents")?;
        let filter = EventFilter::new(request.get_ref());
        let resumed = self
            .center
            .resume(request.get_ref().after)
            .map_err(status)?;
        let (tx, rx) = mpsc::channel(self.settings.queue);
        let end: Arc<parking_lot::Mutex<StreamEnd>> = Arc::default();
        let watcher = Watcher {
            tx,
            end: end.clone(),
            shutdown: self.shutdown.clone(),
        };
        let center = self.center.clone();
        self.tracker.spawn(async move {
            watch(resumed, filter, watcher, center).await;
            drop(place);
        });
        Ok(Response::new(Box::pin(Outgoing {
            rx,
            end,
            done: false,
        })))
    }
}

/// Items in a listing's page when the caller does not say.
const PAGE_DEFAULT: usize = 1000;
/// The largest page: a cluster of 100,000 rooms does not fit in one 4 MiB
/// message, pages of 10,000 do.
const PAGE_MAX: usize = 10_000;

/// One page of `items` (sorted by `key`): those after `token`, at most
/// `size` (0: the default), and the token of the next page (empty: last).
fn page<T>(items: Vec<T>, key: impl Fn(&T) -> String, size: u32, token: &str) -> (Vec<T>, String) {
    let size = match usize::try_from(size).unwrap_or(PAGE_MAX) {
        0 => PAGE_DEFAULT,
        n => n.min(PAGE_MAX),
    };
    let mut rest = items
        .into_iter()
        .filter(|i| token.is_empty() || key(i).as_str() > token)
        .peekable();
    let page: Vec<T> = rest.by_ref().take(size).collect();
    let next = match (rest.peek(), page.last()) {
        (Some(_), Some(last)) => key(last),
        _ => String::new(),
    };
    (page, next)
}

/// The sending side of one `WatchEvents` stream.
struct Watcher {
    tx: mpsc::Sender<Result<proto::WatchEventsResponse, Status>>,
    end: Arc<parking_lot::Mutex<StreamEnd>>,
    shutdown: CancellationToken,
}

impl Watcher {
    /// Hands `event` on, waiting for room in the stream unless the center
    /// shuts down first. False when the stream is over: the watcher went
    /// away, or the shutdown came (the stream then ends with `UNAVAILABLE`
    /// after what it holds, so a watcher that does not read never holds
    /// the shutdown up).
    async fn send(&self, event: proto::WatchEventsResponse) -> bool {
        tokio::select! {
            sent = self.tx.send(Ok(event)) => sent.is_ok(),
            () = self.shutdown.cancelled() => {
                self.going_away();
                false
            }
        }
    }

    fn going_away(&self) {
        self.end.lock().last = Some(shutting_down());
    }
}

/// Feeds one watcher. Tonic does not poll a stream whose client went away,
/// so the producer is this task and a failed send is the disconnect.
async fn watch(resumed: Resumed, filter: EventFilter, watcher: Watcher, center: Center) {
    // The kept events after the cursor first, then the live feed.
    for event in resumed.backlog() {
        if filter.matches(&event) && !watcher.send(event).await {
            return;
        }
    }
    let mut feed = resumed.live;
    loop {
        let item = tokio::select! {
            () = watcher.shutdown.cancelled() => {
                watcher.going_away();
                return;
            }
            () = watcher.tx.closed() => return,
            item = feed.recv() => item,
        };
        let event = match item {
            Ok(event) if filter.matches(&event) => (*event).clone(),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(skipped)) => {
                tracing::debug!(skipped, "event watcher lagged");
                center.metrics().feed_skipped.inc_by(skipped);
                lagged(skipped)
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if !watcher.send(event).await {
            return;
        }
    }
}

/// One `PeerSession` stream: the gRPC twin of a WebSocket session.
struct PeerStream {
    handle: SessionHandle,
    center_tx: Outbox<GrpcOut>,
    settings: GrpcSettings,
    /// Messages from the peer on their way in, at its rate.
    inbox: Inbox<PeerSessionRequest>,
    /// How the peer's stream ends, when the session ends it.
    end: Arc<parking_lot::Mutex<StreamEnd>>,
}

/// How a stream ends when the center shuts down.
fn shutting_down() -> Status {
    Status::unavailable("the center is shutting down")
}

/// The status a `PeerSession` or `WatchEvents` stream ends with, set by
/// the task feeding it.
#[derive(Debug, Default)]
struct StreamEnd {
    /// Goes ahead of anything still queued (slow consumer, rate limit,
    /// expired token): the backlog is of no use to a peer cut off, and the
    /// status could not reach it through a full queue.
    cut: Option<Status>,
    /// Goes after what is queued, once the session has let go of the queue
    /// (shutdown): the peer gets what was handed on, then learns that the
    /// stream did not simply end, also if it reads only later.
    last: Option<Status>,
}

/// The response stream of a `PeerSession` or `WatchEvents`: what its task
/// queued, then the status the task ended it with (see [`StreamEnd`]).
struct Outgoing<T> {
    rx: mpsc::Receiver<Result<T, Status>>,
    end: Arc<parking_lot::Mutex<StreamEnd>>,
    done: bool,
}

impl<T> futures_util::Stream for Outgoing<T> {
    type Item = Result<T, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.done {
            return std::task::Poll::Ready(None);
        }
        let cut = self.end.lock().cut.take();
        if let Some(status) = cut {
            self.done = true;
            return std::task::Poll::Ready(Some(Err(status)));
        }
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(None) => {
                self.done = true;
                let last = self.end.lock().last.take();
                std::task::Poll::Ready(last.map(Err))
            }
            other => other,
        }
    }
}

impl PeerStream {
    /// Ends the stream with `status` ahead of anything still queued.
    fn cut_off(&self, status: Status) {
        self.end.lock().cut = Some(status);
    }

    /// Ends a peer that does not keep up; returns the reason to close with.
    fn slow_consumer(&self) -> &'static str {
        self.handle.metrics().slow_consumers.inc();
        self.cut_off(Status::resource_exhausted(SLOW_CONSUMER));
        SLOW_CONSUMER
    }

    /// Ends a session the center ordered closed; returns the reason.
    fn evicted(&self, reason: &'static str) -> &'static str {
        if reason == SLOW_CONSUMER {
            return self.slow_consumer();
        }
        self.cut_off(Status::unavailable(reason));
        reason
    }

    /// At shutdown, as a WebSocket session: hands on `first` and what is
    /// already queued (responses in flight) within the drain bound, then
    /// ends the stream with `UNAVAILABLE` after what the stream holds.
    async fn drain(
        &mut self,
        first: Option<Result<PeerSessionResponse, Status>>,
        center_rx: &mut OutboxReceiver<GrpcOut>,
        out: &mpsc::Sender<Result<PeerSessionResponse, Status>>,
    ) {
        let _ = tokio::time::timeout(DRAIN, async {
            if let Some(message) = first
                && out.send(message).await.is_err()
            {
                return;
            }
            while let Some(item) = center_rx.try_recv() {
                if out.send(Ok(self.encode(item))).await.is_err() {
                    return;
                }
            }
        })
        .await;
        // Not sent through the stream's queue, which a peer that does not
        // read keeps full: the stream yields it once the queue is empty and
        // this session has dropped its sender.
        self.end.lock().last = Some(shutting_down());
    }

    async fn run(
        mut self,
        mut inbound: Streaming<PeerSessionRequest>,
        mut center_rx: OutboxReceiver<GrpcOut>,
        out: mpsc::Sender<Result<PeerSessionResponse, Status>>,
        shutdown: CancellationToken,
    ) {
        let second = Duration::from_secs(1);
        let mut tick = tokio::time::interval_at(Instant::now() + second, second);
        let reason = loop {
            tokio::select! {
                // A full inbox stops reading: HTTP/2 flow control slows the peer down.
                msg = inbound.next(), if !self.inbox.is_full() => match msg {
                    Some(Ok(msg)) => {
                        self.handle.note_inbound();
                        let len = prost::Message::encoded_len(&msg);
                        self.inbox.push(msg, len);
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
                        // The stream's buffer is full: wait for the peer to
                        // read, as long as the age bound allows (the byte
                        // bound meanwhile holds what the center queues).
                        Err(mpsc::error::TrySendError::Full(message)) => {
                            // Too old, or over the byte bound meanwhile: behind.
                            let permit = tokio::select! {
                                permit = out.reserve() => match permit {
                                    Ok(permit) => permit,
                                    Err(_) => break "peer gone",
                                },
                                () = self.settings.clock.sleep_until(self.settings.clock.elapsed() + self.settings.max_delay) => {
                                    break self.slow_consumer();
                                }
                                reason = self.handle.evicted() => break self.evicted(reason),
                                () = shutdown.cancelled() => {
                                    self.drain(Some(message), &mut center_rx, &out).await;
                                    break "going away";
                                }
                            };
                            permit.send(message);
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break "peer gone",
                    }
                }
                () = shutdown.cancelled() => {
                    self.drain(None, &mut center_rx, &out).await;
                    break "going away";
                }
                reason = self.handle.evicted() => break self.evicted(reason),
                () = out.closed() => break "peer gone",
                _ = tick.tick() => {
                    if let Some(reason) = self.handle.tick(Instant::now()) {
                        self.cut_off(Status::unauthenticated(reason));
                        break reason;
                    }
                }
                () = self.inbox.ready(), if self.inbox.is_waiting() => {}
            }
            // Apply, in order, what the rate allows now.
            let behind = loop {
                match self.inbox.take() {
                    Next::Ready(msg, delayed) => self.on_message(msg, delayed),
                    Next::Wait | Next::Empty => break false,
                    Next::Close => break true,
                }
            };
            if behind {
                self.handle.metrics().rate_limit_closes.inc();
                self.cut_off(Status::resource_exhausted("rate limit exceeded"));
                break "rate limit exceeded";
            }
        };
        tracing::info!(session.id = self.handle.id(), reason, "session closed");
        self.handle.close(reason);
    }

    /// Handles one message; `delayed`: it waited for the rate limit.
    fn on_message(&mut self, msg: PeerSessionRequest, delayed: bool) {
        match msg.kind {
            Some(peer_session_request::Kind::Command(c)) => {
                let metrics = self.handle.metrics();
                let command = c.command.unwrap_or_default();
                let method = command
                    .kind
                    .as_ref()
                    .map_or("other", translate::command_method);
                metrics.inbound(method);
                let span = telemetry::command_span(method);
                let _enter = span.enter();
                telemetry::record_command_ids(&span, &command);
                if delayed {
                    metrics.limited("request");
                }
                // The result is queued in the same step as what the command caused.
                let (tx, tally, id) = (self.center_tx.clone(), self.handle.tally(), c.id);
                let respond = move |result: Result<proto::Reply, CenterError>| {
                    let outcome = match result {
                        Ok(reply) => command_result::Outcome::Reply(reply),
                        Err(e) => {
                            tally.metrics().error(e.protoo_code());
                            command_result::Outcome::Error((&e).into())
                        }
                    };
                    let result = proto::CommandResult {
                        id,
                        outcome: Some(outcome),
                    };
                    tally.queued(tx.push(GrpcOut::Result(result)));
                };
                if let Err(e) = translate::check_command(&command) {
                    respond(Err(e));
                } else {
                    self.handle.execute_then(command, respond);
                }
            }
            Some(peer_session_request::Kind::InviteAnswer(a)) => self.handle.invite_answered(
                a.id,
                if a.ok {
                    Ok(())
                } else {
                    Err(a
                        .error
                        .map(|e| format!("{} {}", e.code, e.reason))
                        .unwrap_or_default())
                },
            ),
            None => tracing::debug!("empty peer message ignored"),
        }
    }

    fn encode(&mut self, item: GrpcOut) -> PeerSessionResponse {
        let method = match &item {
            GrpcOut::Result(_) => "response",
            GrpcOut::Center(o) => translate::outbound_method(o),
        };
        self.handle.metrics().outbound(method);
        tracing::debug!(session.id = self.handle.id(), method, "out");
        let kind = match item {
            GrpcOut::Result(r) => peer_session_response::Kind::Result(r),
            GrpcOut::Center(Outbound::Event(d)) => {
                peer_session_response::Kind::Event(d.event.clone())
            }
            GrpcOut::Center(Outbound::Invite { room_id }) => {
                let id = self.handle.invite_sent(
                    room_id.clone(),
                    Instant::now() + self.settings.invite_timeout,
                );
                peer_session_response::Kind::Invite(proto::InviteRequest { id, room_id })
            }
        };
        PeerSessionResponse { kind: Some(kind) }
    }
}
