//! protoo JSON -> protobuf -> room service -> protoo JSON. The first byte
//! picks a method, the rest is its `data`. Nothing panics, and every
//! notification and response the center writes is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pilot_center::auth::Grant;
use pilot_center::center::{Center, Outbound, PeerInfo};
use pilot_center::proto::Transport;
use pilot_center::translate;
use serde_json::value::RawValue;

const METHODS: &[&str] = &[
    "echo", "register", "join", "push", "pullRemoteStream", "userDisconnect", "userLeave", "textMessage", "userReConnect",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    // The WebSocket edge refuses what strict parsers reject before translating.
    if pilot_center::protoo::check_strict(text).is_err() {
        return;
    }
    let Ok(raw) = serde_json::from_str::<&RawValue>(text) else { return };
    let method = METHODS[usize::from(pick) % METHODS.len()];
    let center = Center::default();
    let (tx_a, mut rx_a) = tokio::sync::mpsc::channel::<Outbound>(1024);
    let (tx_b, mut rx_b) = tokio::sync::mpsc::channel::<Outbound>(1024);
    let peer = || PeerInfo { addr: "fuzz".into(), transport: Transport::Ws };
    let a = center.open_session(peer(), Grant::unrestricted(), tx_a);
    let b = center.open_session(peer(), Grant::unrestricted(), tx_b);
    // Session b hosts a user in every room the input may name.
    for room in ["r", "", "room"] {
        let join = format!(r#"{{"roomId":"{room}","userId":"b","userName":"B"}}"#);
        if let Ok(cmd) = translate::request_command("join", &serde_json::from_str::<&RawValue>(&join).unwrap_or(raw)) {
            let _ = b.execute(cmd);
        }
    }
    let command = if matches!(method, "echo" | "register" | "join") {
        translate::request_command(method, raw)
    } else {
        translate::notification_command(method, raw)
    };
    if let Ok(cmd) = command
        && let Ok(reply) = a.execute(cmd)
    {
        let body = translate::reply_data(&reply);
        assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
    }
    for rx in [&mut rx_a, &mut rx_b] {
        while let Ok(item) = rx.try_recv() {
            let text = match item {
                Outbound::Event(d) => translate::delivery_text(&d).to_string(),
                Outbound::Invite { room_id } => translate::invite_request(1, &room_id),
            };
            assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok(), "invalid JSON written: {text}");
        }
    }
    drop((a, b));
    assert_eq!(center.counts(), (0, 0, 0, 0));
});
