//! The MSU's link to the center: a protoo session over WebSocket (wss or
//! ws), like an SFU's. It registers with its media address, answers
//! `invite`, hands `relay` and `relayEnd` to the hub, heartbeats with
//! `echo`, and reconnects (every second at first, then up to every 10 s);
//! after a reconnect it registers again and the center tells it every relay
//! it has, so nothing needs replaying here.

use crate::config::Config;
use crate::hub::{Destination, Hub, Key, RelaySpec, Track};
use crate::playback::{PlaybackSpec, Players, ToCenter};
use crate::record::{EventKind, RecordingEvent, Store};
use futures_util::{SinkExt, StreamExt};
use pilot_center::protoo::{self, Message};
use serde::Deserialize;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// The link's state for the operator and the tests.
#[derive(Debug, Default)]
pub struct LinkState {
    /// Registrations the center accepted.
    pub registered: std::sync::atomic::AtomicU64,
}

/// Why one session with the center ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Connect(String),
    #[error("{0}")]
    WebSocket(#[from] tungstenite::Error),
    #[error("the center refused the registration: {0}")]
    Refused(String),
    #[error("the center closed the link")]
    Closed,
}

/// What the link works with.
pub struct Parts {
    /// The configuration.
    pub config: Config,
    /// The hub relays are handed to.
    pub hub: Arc<Hub>,
    /// Where recordings are.
    pub store: Arc<Store>,
    /// The playbacks.
    pub players: Arc<Players>,
    /// The media address registered.
    pub media: SocketAddr,
    /// This process's incarnation.
    pub incarnation: String,
    /// The link's state.
    pub state: Arc<LinkState>,
}

/// Serves the center until `stop` resolves: one session after another.
/// What `events` (recordings) and `to_center` (playbacks) bring is sent in
/// order, kept across sessions until a session took it.
pub async fn run(
    parts: Parts,
    mut events: UnboundedReceiver<RecordingEvent>,
    mut to_center: UnboundedReceiver<ToCenter>,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut backoff = Duration::from_secs(1);
    let mut unsent = VecDeque::new();
    loop {
        let session = session(&parts, (&mut events, &mut to_center, &mut unsent));
        tokio::select! {
            () = &mut stop => return,
            ended = session => match ended {
                Ok(()) => backoff = Duration::from_secs(1),
                Err(e) => tracing::warn!(error = %e, retry_in = ?backoff, "link to the center lost"),
            },
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

fn url(config: &Config, incarnation: &str) -> String {
    let sep = if config.center.url.contains('?') {
        '&'
    } else {
        '?'
    };
    format!(
        "{}{sep}peer={}&incarnation={incarnation}",
        config.center.url, config.msu.id
    )
}

/// A stream to the center, TLS or not.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

type Ws = tokio_tungstenite::WebSocketStream<Box<dyn Io>>;

async fn connect(config: &Config, incarnation: &str) -> Result<Ws, SessionError> {
    let fail = |e: &dyn std::fmt::Display| SessionError::Connect(e.to_string());
    let mut request = url(config, incarnation)
        .into_client_request()
        .map_err(|e| fail(&e))?;
    if !config.center.token.is_empty() {
        let value = format!("Bearer {}", config.center.token)
            .parse()
            .map_err(|_| fail(&"the token is not a valid header"))?;
        request.headers_mut().insert("authorization", value);
    }
    let uri = request.uri().clone();
    let host = uri.host().unwrap_or_default().to_owned();
    let tls = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let open = async {
        let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
            .await
            .map_err(|e| fail(&e))?;
        tcp.set_nodelay(true).ok();
        let io: Box<dyn Io> = if tls {
            let client = match (&config.center.ca_file, config.center.insecure_tls) {
                (_, true) => pilot_center::tls::insecure_client_config(),
                (Some(ca), false) => pilot_center::tls::client_config(ca),
                (None, false) => {
                    return Err(fail(&"wss needs center.ca_file (or insecure_tls: true)"));
                }
            }
            .map_err(|e| fail(&e))?;
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| fail(&e))?;
            let stream = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .map_err(|e| fail(&e))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let (ws, _) = tokio_tungstenite::client_async(request, io).await?;
        Ok(ws)
    };
    tokio::time::timeout(Duration::from_secs(10), open)
        .await
        .map_err(|_| fail(&"no answer within 10 s"))?
}

/// One session: connect, register, serve until the link ends.
async fn session(
    parts: &Parts,
    (events, to_center, unsent): (
        &mut UnboundedReceiver<RecordingEvent>,
        &mut UnboundedReceiver<ToCenter>,
        &mut VecDeque<ToCenter>,
    ),
) -> Result<(), SessionError> {
    let Parts {
        config,
        hub,
        store,
        players,
        media,
        incarnation,
        state,
    } = parts;
    let media = *media;
    let mut ws = connect(config, incarnation).await?;
    // Requests the players made: an error answer is logged.
    let mut asked: std::collections::HashMap<String, &'static str> = Default::default();
    let mut next_id: u64 = 1;
    let register_id = next_id;
    let data = serde_json::json!({"id": config.msu.id, "udp_ip": media.ip().to_string(), "udp_port": media.port()});
    ws.send(protoo::request(register_id, "register", data.to_string().as_bytes()).into())
        .await?;
    let mut heartbeat =
        tokio::time::interval(Duration::from_secs(config.center.heartbeat_secs.max(1)));
    heartbeat.tick().await;
    let mut report = tokio::time::interval(Duration::from_secs(config.center.stats_secs.max(1)));
    report.tick().await;
    loop {
        // Told in order; one is dropped only once the link took it.
        while let Some(message) = unsent.front() {
            let frame = match message {
                ToCenter::Notify(method, data) => {
                    protoo::notification(method, data.to_string().as_bytes())
                }
                ToCenter::Request(method, data) => {
                    next_id += 1;
                    asked.insert(next_id.to_string(), method);
                    protoo::request(next_id, method, data.to_string().as_bytes())
                }
            };
            ws.send(frame.into()).await?;
            unsent.pop_front();
        }
        let frame = tokio::select! {
            f = ws.next() => f,
            Some(event) = events.recv() => {
                unsent.push_back(ToCenter::Notify("recordingStatus", recording_status(&event)));
                continue;
            }
            Some(message) = to_center.recv() => {
                unsent.push_back(message);
                continue;
            }
            _ = heartbeat.tick() => {
                next_id += 1;
                ws.send(protoo::request(next_id, "echo", b"{}").into()).await?;
                continue;
            }
            _ = report.tick() => {
                let counters = hub.counters();
                if !counters.is_empty() {
                    ws.send(protoo::notification("relayStats", &relay_stats(&counters)).into()).await?;
                }
                continue;
            }
        };
        let text = match frame {
            None => return Err(SessionError::Closed),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(tungstenite::Message::Text(t))) => t,
            Some(Ok(tungstenite::Message::Close(_))) => return Err(SessionError::Closed),
            Some(Ok(_)) => continue,
        };
        let Ok(message) = protoo::parse(&text) else {
            tracing::warn!(frame = %text, "unreadable frame from the center");
            continue;
        };
        match message {
            Message::Request { id, method, .. } if method == "invite" => {
                // The hub serves any room: relays arrive as the center
                // routes pulls through it.
                ws.send(protoo::ok_response(id, b"{}").into()).await?;
            }
            Message::Request { id, method, .. } => {
                let reason = format!("Unknown method: {method}");
                ws.send(protoo::error_response(Some(id), 404, &reason).into())
                    .await?;
            }
            Message::Response {
                id,
                ok,
                error_reason,
                ..
            } if id.get() == register_id.to_string() => {
                if !ok {
                    return Err(SessionError::Refused(error_reason.unwrap_or_default()));
                }
                state
                    .registered
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(msu.id = %config.msu.id, media = %media, "registered with the center");
            }
            Message::Response {
                id,
                ok,
                error_reason,
                ..
            } => {
                if let Some(method) = asked.remove(id.get())
                    && !ok
                {
                    tracing::warn!(method, reason = %error_reason.unwrap_or_default(), "the center refused a playback's request");
                }
            }
            Message::Notification { method, data } => match &*method {
                "relay" => match relay_spec(data.get()) {
                    Ok(spec) => {
                        tracing::info!(room.id = %spec.key.0, pusher.user = %spec.key.1, destinations = spec.destinations.len(), tracks = spec.tracks.len(), "relay");
                        hub.apply(spec);
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable relay from the center"),
                },
                "relayEnd" => match serde_json::from_str::<RelayEndWire>(data.get()) {
                    Ok(end) => {
                        tracing::info!(room.id = %end.room_id, pusher.user = %end.pusher_user_id, reason = %end.reason, "relay ended");
                        hub.end(&(end.room_id, end.pusher_user_id));
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable relayEnd from the center"),
                },
                "playback" => match serde_json::from_str::<PlaybackSpec>(data.get()) {
                    Ok(spec) => {
                        tracing::info!(playback.id = %spec.playback_id, recording.id = %spec.recording_id, room.id = %spec.room_id, user.id = %spec.user_id, "playback");
                        players.start(spec);
                    }
                    Err(e) => tracing::warn!(error = %e, "unreadable playback from the center"),
                },
                "playbackStop" => match serde_json::from_str::<PlaybackStopWire>(data.get()) {
                    Ok(stop) => players.stop(&stop.playback_id),
                    Err(e) => tracing::warn!(error = %e, "unreadable playbackStop from the center"),
                },
                "pullRemoteStream" => match serde_json::from_str::<PullWire>(data.get()) {
                    Ok(pull) => {
                        let addr = pull
                            .udp_ip
                            .parse()
                            .map(|ip| SocketAddr::new(ip, pull.udp_port));
                        let played = addr.is_ok_and(|addr| {
                            players.pulled(
                                &pull.room_id,
                                &pull.pusher_user_id,
                                addr,
                                &pull.push_info.pusher_id,
                            )
                        });
                        if !played {
                            tracing::warn!(room.id = %pull.room_id, user.id = %pull.pusher_user_id, "a pull for a user this MSU does not play");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable pullRemoteStream from the center")
                    }
                },
                "recordingDelete" => {
                    match serde_json::from_str::<RecordingDeleteWire>(data.get()) {
                        Ok(d) if crate::record::valid_id(&d.recording_id) => {
                            // Files of a recording still written stay (the center
                            // deletes stopped recordings only).
                            let dir = store.dir_of(&d.recording_id);
                            match std::fs::remove_dir_all(&dir) {
                                Ok(()) => {
                                    tracing::info!(recording.id = %d.recording_id, "recording deleted")
                                }
                                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                                Err(e) => {
                                    tracing::warn!(recording.id = %d.recording_id, error = %e, "recording not deleted")
                                }
                            }
                            store.forget(&d.recording_id);
                        }
                        Ok(d) => {
                            tracing::warn!(recording.id = %d.recording_id, "not a recording id")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "unreadable recordingDelete from the center")
                        }
                    }
                }
                _ => {}
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PlaybackStopWire {
    playback_id: String,
}

#[derive(Deserialize)]
struct PullWire {
    #[serde(rename = "roomId")]
    room_id: String,
    pusher_user_id: String,
    udp_ip: String,
    udp_port: u16,
    #[serde(rename = "pushInfo")]
    push_info: PusherWire,
}

/// The `recordingStatus` data for `event`.
fn recording_status(event: &RecordingEvent) -> serde_json::Value {
    let mut data = serde_json::json!({"recordingId": event.recording_id,
        "roomId": event.room_id, "userId": event.user_id});
    match &event.kind {
        EventKind::FileStarted { file } => {
            data["state"] = "fileStarted".into();
            data["file"] = file.clone().into();
        }
        EventKind::FileEnded { file, bytes } => {
            data["state"] = "fileEnded".into();
            data["file"] = file.clone().into();
            data["bytes"] = (*bytes).into();
        }
        EventKind::Failed { reason } => {
            data["state"] = "failed".into();
            data["reason"] = reason.clone().into();
        }
    }
    data
}

#[derive(Deserialize)]
struct RecordingDeleteWire {
    #[serde(rename = "recordingId")]
    recording_id: String,
}

/// The `relayStats` data for `counters`.
fn relay_stats(counters: &[crate::hub::Counters]) -> Vec<u8> {
    let relays: Vec<serde_json::Value> = counters
        .iter()
        .map(|c| {
            serde_json::json!({"roomId": c.key.0, "pusher_user_id": c.key.1,
                "packetsIn": c.packets_in, "packetsOut": c.packets_out,
                "worstFractionLost": c.worst_fraction_lost})
        })
        .collect();
    serde_json::json!({ "relays": relays })
        .to_string()
        .into_bytes()
}

#[derive(Deserialize)]
struct RelayWire {
    #[serde(rename = "roomId")]
    room_id: String,
    pusher_user_id: String,
    #[serde(default)]
    pushers: Vec<PusherWire>,
    #[serde(default)]
    destinations: Vec<DestinationWire>,
    /// The recording this publisher is written into (absent: none).
    #[serde(rename = "recordingId", default)]
    recording_id: String,
}

#[derive(Deserialize)]
struct PusherWire {
    #[serde(rename = "pusherId")]
    pusher_id: String,
    #[serde(rename = "rtpParam", default)]
    rtp_param: serde_json::Value,
}

#[derive(Deserialize)]
struct DestinationWire {
    udp_ip: String,
    udp_port: u16,
    #[serde(rename = "pusherIds", default)]
    pusher_ids: Vec<String>,
}

#[derive(Deserialize)]
struct RelayEndWire {
    #[serde(rename = "roomId")]
    room_id: String,
    pusher_user_id: String,
    #[serde(default)]
    reason: String,
}

/// An SSRC as `rtpParam` carries it: a number (or a numeric string).
fn ssrc(v: &serde_json::Value) -> u32 {
    match v {
        serde_json::Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .unwrap_or(0)
}

/// The hub's view of a `relay` notification's data.
pub fn relay_spec(data: &str) -> Result<RelaySpec, String> {
    let w: RelayWire = serde_json::from_str(data).map_err(|e| e.to_string())?;
    let key: Key = (w.room_id, w.pusher_user_id);
    let tracks = w
        .pushers
        .iter()
        .map(|p| Track {
            pusher_id: p.pusher_id.clone(),
            ssrc: ssrc(&p.rtp_param["ssrc"]),
            rtx_ssrc: ssrc(&p.rtp_param["rtx_ssrc"]),
            codec: p.rtp_param["codec"].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    let destinations = w
        .destinations
        .into_iter()
        .filter_map(|d| {
            let ip = d.udp_ip.parse().ok()?;
            Some(Destination {
                addr: SocketAddr::new(ip, d.udp_port),
                pusher_ids: d.pusher_ids,
            })
        })
        .collect();
    Ok(RelaySpec {
        key,
        tracks,
        destinations,
        recording_id: w.recording_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_notification_becomes_a_spec() {
        let data = r#"{"roomId":"r","pusher_user_id":"u","msuId":"m","udp_ip":"10.0.0.9","udp_port":40000,
            "pushers":[{"pusherId":"v","rtpParam":{"ssrc":1111,"rtx_ssrc":"2222","payload_type":108}}],
            "destinations":[{"udp_ip":"10.0.0.2","udp_port":5000,"peerId":"sfu-b","pusherIds":["v"]},
                            {"udp_ip":"not an ip","udp_port":5001,"pusherIds":["v"]}]}"#;
        let spec = relay_spec(data).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(spec.key, ("r".to_owned(), "u".to_owned()));
        assert_eq!((spec.tracks[0].ssrc, spec.tracks[0].rtx_ssrc), (1111, 2222));
        assert_eq!(
            spec.destinations.len(),
            1,
            "an unreadable address is left out"
        );
    }
}
