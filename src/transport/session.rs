//! One WebSocket session: a reader and a writer over the split stream,
//! driven from one task, and the session's bounded outbound queue.
//!
//! The reader never waits on anything but the socket: it runs commands on
//! the center (which never blocks) and queues responses with `try_send`, so
//! pings are answered (tungstenite flushes the pong on its next read) however
//! busy the room or full the queue. The writer owns the sink: it sends what
//! is queued, pings, and expires unanswered `invite`s.

use crate::auth::Grant;
use crate::center::{Center, Outbound, OutletError, PeerInfo, SLOW_CONSUMER, SessionHandle};
use crate::clock::Clock;
use crate::error::CenterError;
use crate::limits::{Inbox, Next, RateSettings};
use crate::metrics::{OutboundTally, method_label};
use crate::outbox::{Outbox, OutboxReceiver, WireSize, outbox};
use crate::proto::Transport;
use crate::protoo::{self, Message as Protoo};
use crate::{telemetry, translate};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;

/// What a session needs from its gateway.
pub struct Settings<'a> {
    /// The room service.
    pub center: &'a Center,
    /// Peer address.
    pub peer: SocketAddr,
    /// ws or wss.
    pub transport: Transport,
    /// Bytes queued and unsent before the peer is a slow consumer.
    pub outbound_max_bytes: usize,
    /// Longest a write to the peer may take before it is a slow consumer.
    pub outbound_max_delay: Duration,
    /// The time `outbound_max_delay` is counted in.
    pub clock: Clock,
    /// Time between pings.
    pub ping_interval: Duration,
    /// Silence after a ping before the peer is dropped.
    pub pong_timeout: Duration,
    /// Time an MSU has to answer `invite`.
    pub invite_timeout: Duration,
    /// What the peer may do (from its token).
    pub grant: Grant,
    /// Who the peer is, beyond this connection.
    pub identity: String,
    /// Which process of the peer it is ("" when none is given).
    pub incarnation: String,
    /// The peer's rate limit.
    pub rate: RateSettings,
}

/// An item of the session's outbound queue. Queued as values: the writer
/// task encodes them, so no JSON is made while the center's lock is held.
#[derive(Debug)]
pub enum WsOut {
    /// From the center: an event or an `invite`.
    Center(Outbound),
    /// The result of a request, to answer as a protoo response.
    Reply(Box<QueuedReply>),
    /// A response made by this session's reader.
    Text(Utf8Bytes),
}

/// A request's result waiting for the writer to encode it.
#[derive(Debug)]
pub struct QueuedReply {
    /// The request's id, raw JSON as the peer sent it.
    id: Box<serde_json::value::RawValue>,
    result: Result<crate::proto::Reply, CenterError>,
    /// The method, for the latency histogram.
    label: crate::metrics::MethodLabel,
    /// How long the center took to handle it (read to queued), for the
    /// latency histogram, which the writer records.
    took: Duration,
}

impl WireSize for WsOut {
    fn wire_size(&self) -> usize {
        match self {
            Self::Text(t) => t.len(),
            Self::Center(o) => o.wire_size(),
            Self::Reply(p) => {
                let body = match &p.result {
                    Ok(reply) => prost::Message::encoded_len(reply),
                    Err(e) => 16 + e.to_string().len(),
                };
                48 + p.id.get().len() + body
            }
        }
    }
}

impl From<Outbound> for WsOut {
    fn from(o: Outbound) -> Self {
        Self::Center(o)
    }
}

const RATE_LIMITED: &str = "rate limit exceeded";

/// How a session ended.
#[derive(Debug)]
enum End {
    /// The peer sent a close frame or ended the stream.
    PeerClosed,
    /// We close with this code and reason.
    Close(CloseCode, &'static str),
    /// The center is shutting down: flush, then close with 1001.
    Shutdown,
    /// The connection is unusable (I/O error, keepalive timeout): just drop it.
    Gone(&'static str),
}

/// State shared by the reader and the writer of one session.
struct Ctx {
    handle: SessionHandle,
    tx: Outbox<WsOut>,
    /// Frames of any kind read from the peer: the writer's keepalive asks
    /// whether it moved since a ping (a counter, not a clock read per frame).
    frames_in: AtomicU64,
}

impl Ctx {
    fn touch(&self) {
        self.frames_in.fetch_add(1, Ordering::Relaxed);
    }

    fn frames_in(&self) -> u64 {
        self.frames_in.load(Ordering::Relaxed)
    }

    /// Queues a response; a full queue makes this a slow consumer.
    fn send_text(&self, text: String) {
        match self.tx.push(WsOut::Text(Utf8Bytes::from(text))) {
            Ok(()) => self.handle.note_outbound(),
            Err(OutletError::Full) => self.handle.fell_behind(),
            Err(OutletError::Closed) => {}
        }
    }
}

/// Runs a session until the peer leaves, the connection fails, it falls
/// behind, or `shutdown` is cancelled; then closes it and cleans up.
pub async fn run<S>(ws: WebSocketStream<S>, settings: Settings<'_>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (tx, mut rx) = outbox(settings.outbound_max_bytes);
    let peer = PeerInfo {
        addr: settings.peer.to_string(),
        transport: settings.transport,
        identity: settings.identity.clone(),
        incarnation: settings.incarnation.clone(),
    };
    let handle = settings
        .center
        .open_session(peer, settings.grant.clone(), tx.clone());
    let session_id = handle.id();
    tracing::info!(session.id = session_id, peer.addr = %settings.peer, peer.id = %settings.identity, peer.incarnation = %settings.incarnation, transport = settings.transport.short_name(), "session opened");
    let ctx = Ctx {
        handle,
        tx,
        frames_in: AtomicU64::new(0),
    };
    let (mut sink, mut stream) = ws.split();

    let end = {
        let reader = read_loop(&mut stream, &ctx, Inbox::new(&settings.rate));
        let writer = write_loop(&mut sink, &mut rx, &ctx, &settings);
        tokio::pin!(reader, writer);
        tokio::select! {
            end = &mut reader => end,
            end = &mut writer => end,
            reason = ctx.handle.evicted() => match reason {
                SLOW_CONSUMER => End::Close(CloseCode::Policy, SLOW_CONSUMER),
                // 1013 "try again later": the peer reconnects (to another node).
                reason => End::Close(CloseCode::Again, reason),
            },
            () = shutdown.cancelled() => End::Shutdown,
        }
    };
    let metrics = ctx.handle.metrics();
    match &end {
        End::Close(_, SLOW_CONSUMER) => metrics.slow_consumers.inc(),
        End::Close(_, RATE_LIMITED) => metrics.rate_limit_closes.inc(),
        _ => 0,
    };
    let reason = finish(end, &mut sink, &mut stream, &mut rx, metrics).await;
    tracing::info!(session.id = session_id, peer.id = %settings.identity, reason, "session closed");
    ctx.handle.close(reason);
}

/// Sends the close frame (or flushes the peer's close reply) with bounded waits.
async fn finish<S>(
    end: End,
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    stream: &mut SplitStream<WebSocketStream<S>>,
    rx: &mut OutboxReceiver<WsOut>,
    metrics: &crate::metrics::Metrics,
) -> &'static str
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    const WAIT: Duration = Duration::from_secs(2);
    let (code, reason) = match end {
        End::PeerClosed => {
            // tungstenite queued the close reply; push it out.
            let _ = tokio::time::timeout(WAIT, sink.flush()).await;
            return "peer closed";
        }
        End::Gone(why) => return why,
        End::Close(code, reason) => (code, reason),
        End::Shutdown => {
            // Deliver what is already queued (responses in flight) first.
            let _ = tokio::time::timeout(WAIT, async {
                while let Some(item) = rx.try_recv() {
                    if let Some(msg) = encode_simple(item, metrics) {
                        sink.feed(msg).await?;
                    }
                }
                sink.flush().await
            })
            .await;
            (CloseCode::Away, "going away")
        }
    };
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if matches!(
        tokio::time::timeout(WAIT, sink.send(Message::Close(Some(frame)))).await,
        Ok(Ok(()))
    ) {
        // Give the peer a moment to answer the close handshake.
        let _ = tokio::time::timeout(WAIT, async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await;
    }
    reason
}

/// Encodes a queued item that needs no session state (not an `invite`).
fn encode_simple(item: WsOut, metrics: &crate::metrics::Metrics) -> Option<Message> {
    match item {
        WsOut::Text(t) => Some(Message::Text(t)),
        WsOut::Reply(p) => {
            let text = match &p.result {
                Ok(reply) => protoo::ok_response(&p.id, &translate::reply_data(reply)),
                Err(e) => {
                    tracing::debug!(code = e.protoo_code(), error = %e, "request failed");
                    metrics.error(e.protoo_code());
                    protoo::error_response(Some(&p.id), e.protoo_code(), &e.to_string())
                }
            };
            metrics.request_took(&p.label, p.took);
            Some(Message::Text(Utf8Bytes::from(text)))
        }
        WsOut::Center(Outbound::Event(d)) => Some(Message::Text(translate::delivery_text(&d))),
        WsOut::Center(Outbound::Invite { .. }) => None,
    }
}

async fn read_loop<S>(
    stream: &mut SplitStream<WebSocketStream<S>>,
    ctx: &Ctx,
    mut inbox: Inbox<Utf8Bytes>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            // A full inbox stops reading: TCP slows the peer down, nothing is dropped.
            frame = stream.next(), if !inbox.is_full() => {
                let Some(frame) = frame else { return End::PeerClosed };
                ctx.touch();
                match frame {
                    Ok(Message::Text(text)) => {
                        ctx.handle.note_inbound();
                        let len = text.len();
                        inbox.push(text, len);
                    }
                    Ok(Message::Binary(b)) => {
                        ctx.handle.metrics().bad_frames.inc();
                        tracing::debug!(len = b.len(), "binary frame ignored");
                    }
                    Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                    Ok(Message::Close(_)) => return End::PeerClosed,
                    Err(e) => return read_error(e),
                }
            }
            () = inbox.ready(), if inbox.is_waiting() => {}
        }
        // Apply, in order, what the rate allows now.
        loop {
            match inbox.take() {
                Next::Ready(text, delayed) => on_text(ctx, &text, delayed),
                Next::Wait | Next::Empty => break,
                Next::Close => {
                    tracing::info!(
                        waiting = inbox.len(),
                        "behind its rate limit for too long: closing"
                    );
                    return End::Close(CloseCode::Policy, RATE_LIMITED);
                }
            }
        }
    }
}

fn read_error(e: WsError) -> End {
    match e {
        WsError::Capacity(e) => {
            tracing::info!(error = %e, "message too big");
            End::Close(CloseCode::Size, "message too big")
        }
        WsError::Utf8(_) => End::Close(CloseCode::Invalid, "invalid UTF-8"),
        WsError::Protocol(e) => {
            tracing::debug!(error = %e, "protocol error");
            End::Close(CloseCode::Protocol, "protocol error")
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => End::PeerClosed,
        e => {
            tracing::debug!(error = %e, "read failed");
            End::Gone("connection lost")
        }
    }
}

/// Handles one text frame: a request gets exactly one response; a
/// notification gets none; junk is logged and counted, never fatal.
/// `delayed`: it waited for the rate limit (counted).
fn on_text(ctx: &Ctx, text: &str, delayed: bool) {
    let metrics = ctx.handle.metrics();
    let respond_error = |id: Option<&serde_json::value::RawValue>, code: u16, reason: &str| {
        metrics.error(code);
        ctx.send_text(protoo::error_response(id, code, reason));
    };
    match protoo::parse(text) {
        Ok(Protoo::Request { id, method, data }) => {
            metrics.inbound(&method);
            if delayed {
                metrics.limited("request");
            }
            let span = telemetry::command_span(&method);
            let _enter = span.enter();
            tracing::debug!(data = data.get(), "request");
            let started = std::time::Instant::now();
            // The reply is queued in the same step as what the command caused
            // (for a cluster node: when the shared log hands the command back),
            // as a value: the writer encodes it, outside the center's lock.
            let (tx, tally, id) = (ctx.tx.clone(), ctx.handle.tally(), id.to_owned());
            let label = method_label(&method);
            let respond = move |result: Result<_, CenterError>| {
                tally.queued(tx.push(WsOut::Reply(Box::new(QueuedReply {
                    id,
                    result,
                    label,
                    took: started.elapsed(),
                }))));
            };
            match translate::request_command(&method, data) {
                Ok(cmd) => {
                    telemetry::record_command_ids(&span, &cmd);
                    ctx.handle.execute_then(cmd, respond);
                }
                Err(e) => respond(Err(e)),
            }
        }
        Ok(Protoo::Notification { method, data }) => {
            metrics.inbound(&method);
            if delayed {
                metrics.limited("notification");
            }
            let span = telemetry::notification_span(&method);
            let _enter = span.enter();
            tracing::debug!(data = data.get(), "notification");
            let parsed = translate::notification_command(&method, data);
            // A refused notification has no answer in protoo: it is counted
            // (`pilot_errors{code}`), and one refused for trust is logged.
            let tally = ctx.handle.tally();
            // The log line may outlive the frame (a cluster node answers
            // later): a known method's static name, a copy of any other.
            let method: std::borrow::Cow<'static, str> = match method_label(&method).method {
                "other" => method.into_owned().into(),
                known => known.into(),
            };
            let log_refusal = move |e: CenterError| {
                tally.metrics().error(e.protoo_code());
                if matches!(e, crate::error::CenterError::Forbidden(_)) {
                    tracing::info!(method = %method, error = %e, "notification refused");
                } else {
                    tracing::debug!(method = %method, error = %e, "notification ignored");
                }
            };
            match parsed {
                Ok(cmd) => {
                    telemetry::record_command_ids(&span, &cmd);
                    ctx.handle
                        .execute_then(cmd, move |r| r.map_or_else(log_refusal, drop));
                }
                Err(e) => log_refusal(e),
            }
        }
        Ok(Protoo::Response {
            id,
            ok,
            error_code,
            error_reason,
        }) => {
            metrics.inbound("response");
            let outcome = if ok {
                Ok(())
            } else {
                Err(format!(
                    "{} {}",
                    error_code.unwrap_or(0),
                    error_reason.unwrap_or_default()
                ))
            };
            match serde_json::from_str::<u64>(id.get()) {
                Ok(id) => ctx.handle.invite_answered(id, outcome),
                Err(_) => tracing::debug!(id = id.get(), "response to no pending request"),
            }
        }
        Err(protoo::FrameError::BadRequest { id, reason }) => {
            respond_error(id.as_deref(), 400, reason);
        }
        Err(e) => {
            metrics.bad_frames.inc();
            tracing::debug!(error = %e, len = text.len(), "frame ignored");
        }
    }
}

async fn write_loop<S>(
    sink: &mut SplitSink<WebSocketStream<S>, Message>,
    rx: &mut OutboxReceiver<WsOut>,
    ctx: &Ctx,
    settings: &Settings<'_>,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Items written before one flush: batches fan-out bursts into few writes.
    const BATCH: usize = 64;
    let second = Duration::from_secs(1);
    let mut tick = tokio::time::interval_at(Instant::now() + second, second);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_ping = Instant::now() + settings.ping_interval;
    // The first unanswered ping: when it went, and the frames read by then.
    let mut awaiting: Option<(Instant, u64)> = None;
    let metrics = ctx.handle.metrics();
    let encode_item = |item: WsOut| match item {
        WsOut::Center(Outbound::Invite { room_id }) => {
            let id = ctx
                .handle
                .invite_sent(room_id.clone(), Instant::now() + settings.invite_timeout);
            tracing::debug!(room.id = %room_id, id, "invite sent");
            Message::Text(Utf8Bytes::from(translate::invite_request(id, &room_id)))
        }
        other => encode_simple(other, metrics)
            .unwrap_or_else(|| Message::Text(Utf8Bytes::from_static("{}"))),
    };
    let method_of = |item: &WsOut| match item {
        WsOut::Text(_) | WsOut::Reply(_) => "response",
        WsOut::Center(o) => translate::outbound_method(o),
    };
    let mut batch: Vec<WsOut> = Vec::with_capacity(BATCH);
    let mut tally = OutboundTally::default();
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { return End::Gone("queue closed") };
                batch.push(item);
                while batch.len() < BATCH {
                    let Some(item) = rx.try_recv() else { break };
                    batch.push(item);
                }
                // Counted before anything is written: whoever reads a
                // message can find it in the metrics.
                for item in &batch {
                    let method = method_of(item);
                    tally.count(method);
                    tracing::debug!(session.id = ctx.handle.id(), method, "out");
                }
                metrics.outbound_tally(&mut tally);
                let write = async {
                    for item in batch.drain(..) {
                        sink.feed(encode_item(item)).await?;
                    }
                    sink.flush().await
                };
                tokio::pin!(write);
                // Most writes finish at once; one that waits on the peer
                // gets a deadline: a write that cannot finish in time means
                // the peer does not read, and what waits behind it is too
                // old (the age bound). No clock read or timer otherwise.
                let result = match futures_util::poll!(&mut write) {
                    std::task::Poll::Ready(result) => result,
                    std::task::Poll::Pending => {
                        let deadline = settings.clock.elapsed() + settings.outbound_max_delay;
                        tokio::select! {
                            result = &mut write => result,
                            () = settings.clock.sleep_until(deadline) => {
                                tracing::warn!("a write waited too long for the peer to read: closing slow consumer");
                                return End::Close(CloseCode::Policy, SLOW_CONSUMER);
                            }
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "write failed");
                    return End::Gone("write failed");
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some((since, frames)) = awaiting {
                    if ctx.frames_in() != frames {
                        awaiting = None;
                    } else if now.duration_since(since) >= settings.pong_timeout {
                        tracing::info!("peer silent after ping: dropped");
                        return End::Gone("ping timeout");
                    }
                }
                if now >= next_ping {
                    next_ping = now + settings.ping_interval;
                    awaiting.get_or_insert((now, ctx.frames_in()));
                    if sink.send(Message::Ping(Default::default())).await.is_err() {
                        return End::Gone("write failed");
                    }
                }
                if let Some(reason) = ctx.handle.tick(now) {
                    return End::Close(CloseCode::Policy, reason);
                }
            }
        }
    }
}
