//! protoo JSON -> protobuf -> room service -> protoo JSON. The first byte
//! picks a method, the rest is its `data`. Nothing panics, and every
//! notification and response the center writes is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pilot_center::auth::Grant;
use pilot_center::center::{Center, CenterConfig, Outbound, PeerInfo};
use pilot_center::proto::Transport;
use pilot_center::translate;

const METHODS: &[&str] = &[
    "echo", "register", "join", "push", "pullRemoteStream", "userDisconnect", "userLeave", "textMessage", "userReConnect",
];

/// JSON by grammar, and nothing a strict parser rejects (lone surrogates,
/// numbers beyond a double, deep nesting). Not `serde_json::Value`: with the
/// `raw_value` feature it rejects an object keyed by its private RawValue
/// token, which is valid JSON (found by this fuzzer).
fn strict_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() && pilot_center::protoo::check_strict(text).is_ok()
}

/// The result of a command on a center in memory, which answers in the
/// same step: the future is ready when returned.
fn now<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    // The WebSocket edge refuses what strict parsers reject before translating.
    let Ok(data) = pilot_center::protoo::Data::parse(text) else { return };
    let method = METHODS[usize::from(pick) % METHODS.len()];
    // No reconnect grace: when both sessions end, nothing may be left.
    let center = Center::new(CenterConfig {
        reconnect_grace: std::time::Duration::ZERO,
        ..CenterConfig::default()
    });
    let (tx_a, mut rx_a) = tokio::sync::mpsc::channel::<Outbound>(1024);
    let (tx_b, mut rx_b) = tokio::sync::mpsc::channel::<Outbound>(1024);
    let peer = |name: &str| PeerInfo {
        addr: "fuzz".into(),
        transport: Transport::Ws,
        identity: name.into(),
        incarnation: String::new(),
    };
    let a = center.open_session(peer("a"), Grant::unrestricted(), tx_a);
    let b = center.open_session(peer("b"), Grant::unrestricted(), tx_b);
    // Session b hosts a user in every room the input may name.
    for room in ["r", "", "room"] {
        let join = format!(r#"{{"roomId":"{room}","userId":"b","userName":"B"}}"#);
        if let Ok(cmd) = translate::request_command("join", pilot_center::protoo::Data::parse(&join).unwrap_or(data.clone())) {
            let _ = now(b.execute(cmd));
        }
    }
    let command = if matches!(method, "echo" | "register" | "join") {
        translate::request_command(method, data)
    } else {
        translate::notification_command(method, data)
    };
    if let Ok(cmd) = command
        && let Some(Ok(reply)) = now(a.execute(cmd))
    {
        let body = translate::reply_data(&reply);
        assert!(strict_json(std::str::from_utf8(&body).unwrap_or("")), "invalid JSON written");
    }
    for rx in [&mut rx_a, &mut rx_b] {
        while let Ok(item) = rx.try_recv() {
            let text = match item {
                Outbound::Event(d) => translate::delivery_text(&d).to_string(),
                Outbound::Invite { room_id } => translate::invite_request(1, &room_id),
            };
            assert!(strict_json(&text), "invalid JSON written: {text}");
        }
    }
    drop((a, b));
    assert_eq!(center.counts(), (0, 0, 0, 0));
});
