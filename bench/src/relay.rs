//! The bare relay: the practical ceiling for this machine. It does the
//! upgrade (with the center's own handshake code), then fans every text
//! frame out, unchanged and unparsed, to the other connections of its room;
//! a frame that is a protoo request goes back to its sender, so `rtt` can
//! run against it. A connection's room is the `roomId` of the first request
//! that names one (the `join`), found by a substring search. No JSON
//! parsing, no state beyond the rooms' connection lists.

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use pilot_center::transport::handshake::{self, Parsed};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Room → its connections.
type Peers = Arc<Mutex<HashMap<String, HashMap<u64, mpsc::UnboundedSender<Utf8Bytes>>>>>;

/// The value of the first `"roomId":"…"` in `text`.
fn room_named(text: &str) -> Option<&str> {
    const KEY: &str = r#""roomId":""#;
    let start = text.find(KEY)? + KEY.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

/// Serves the relay on `listener` forever.
pub async fn run(listener: TcpListener) {
    let peers: Peers = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    while let Ok((tcp, _)) = listener.accept().await {
        let peers = peers.clone();
        let id = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = serve(tcp, id, peers).await;
        });
    }
}

async fn serve(mut tcp: TcpStream, id: u64, peers: Peers) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let (head_len, request) = loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match handshake::parse_request(&buf, "/pilot/center") {
            Ok(Parsed::Partial) => continue,
            Ok(Parsed::Upgrade { head_len, request }) => break (head_len, request),
            Err(_) => return Ok(()),
        }
    };
    tcp.write_all(&handshake::switching_protocols(&request))
        .await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024);
    let ws = WebSocketStream::from_partially_read(
        tcp,
        buf[head_len..].to_vec(),
        Role::Server,
        Some(config),
    )
    .await;
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
    let mut room: Option<String> = None;
    let writer = tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            if sink.feed(Message::Text(first)).await.is_err() {
                return;
            }
            while let Ok(next) = rx.try_recv() {
                if sink.feed(Message::Text(next)).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(msg)) = stream.next().await {
        let Message::Text(text) = msg else { continue };
        if text.as_str().contains("\"request\":true") {
            if room.is_none()
                && let Some(name) = room_named(text.as_str())
            {
                let name = name.to_owned();
                peers
                    .lock()
                    .entry(name.clone())
                    .or_default()
                    .insert(id, tx.clone());
                room = Some(name);
            }
            let _ = tx.send(text);
        } else if let Some(name) = &room
            && let Some(members) = peers.lock().get(name)
        {
            for (other, peer) in members {
                if *other != id {
                    let _ = peer.send(text.clone());
                }
            }
        }
    }
    if let Some(name) = room {
        let mut peers = peers.lock();
        if let Some(members) = peers.get_mut(&name) {
            members.remove(&id);
            if members.is_empty() {
                peers.remove(&name);
            }
        }
    }
    writer.abort();
    Ok(())
}
