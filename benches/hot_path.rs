//! Microbenchmarks of the hot path with realistic `push` and
//! `pullRemoteStream` payloads and the load tool's `textMessage`: protoo parsing, JSON -> protobuf
//! translation, event serialization, and a whole push through the room
//! service to three other sessions.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt as _;
use pilot_center::auth::Grant;
use pilot_center::center::{Center, Delivery, Outbound, PeerInfo};
use pilot_center::proto::{self, Transport};
use pilot_center::{protoo, translate};
use std::hint::black_box;

const RTP: &str = r#"{"av_type":"video","codec":"H264","fmtp_param":"profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1;","rtcp_features":["nack","pli","transport-cc"],"channel":0,"ssrc":11111,"payload_type":96,"clock_rate":90000,"rtx_ssrc":11112,"rtx_payload_type":97,"use_nack":true,"key_request":true,"mid_ext_id":1,"tcc_ext_id":3}"#;

fn push_frame() -> String {
    format!(
        r#"{{"notification":true,"method":"push","data":{{"roomId":"room-42","userId":"user-7","userName":"Alice","publishers":[{{"pusherId":"user-7-video","rtpParam":{RTP}}},{{"pusherId":"user-7-audio","rtpParam":{{"av_type":"audio","codec":"opus","ssrc":22222,"payload_type":111,"clock_rate":48000,"channel":2}}}}]}}}}"#
    )
}

fn pull_frame() -> String {
    format!(
        r#"{{"notification":true,"method":"pullRemoteStream","data":{{"roomId":"room-42","pusher_user_id":"user-7","udp_ip":"192.168.1.4","udp_port":10001,"mediaType":"video","pushInfo":{{"pusherId":"user-7-video","rtpParam":{RTP}}}}}}}"#
    )
}

/// What the load tool's room of 8 sends, as the real SFU relays chat.
fn text_frame() -> String {
    r#"{"notification":true,"method":"textMessage","data":{"roomId":"fanout-0-0","userId":"f0","userName":"f0","message":"123456 987654321"}}"#.to_owned()
}

fn data_of(frame: &str) -> (String, protoo::Data<'_>) {
    match protoo::parse(frame).unwrap() {
        protoo::Message::Notification { method, data } => (method.into_owned(), data),
        _ => unreachable!(),
    }
}

fn bench(c: &mut Criterion) {
    let (push, pull, text) = (push_frame(), pull_frame(), text_frame());
    c.bench_function("protoo::parse push", |b| {
        b.iter(|| protoo::parse(black_box(&push)).is_ok())
    });
    c.bench_function("protoo::parse textMessage", |b| {
        b.iter(|| protoo::parse(black_box(&text)).is_ok())
    });
    // The real SFU's heartbeat, every 5 s per SFU; the load tool's echo.
    let echo =
        r#"{"request":true,"id":123456,"method":"echo","data":{"ts":1733616000000,"index":42}}"#;
    c.bench_function("protoo::parse echo", |b| {
        b.iter(|| protoo::parse(black_box(echo)).is_ok())
    });
    c.bench_function("parse and translate textMessage", |b| {
        b.iter(|| match protoo::parse(black_box(&text)).unwrap() {
            protoo::Message::Notification { method, data } => {
                translate::notification_command(&method, data).unwrap()
            }
            _ => unreachable!(),
        })
    });
    c.bench_function("protoo::parse pullRemoteStream", |b| {
        b.iter(|| protoo::parse(black_box(&pull)).is_ok())
    });

    let (method, data) = data_of(&push);
    // The data is split with the frame; each round takes a copy of the split.
    c.bench_function("translate push -> protobuf", |b| {
        b.iter(|| {
            translate::notification_command(black_box(&method), black_box(data.clone())).unwrap()
        })
    });
    let (pmethod, pdata) = data_of(&pull);
    c.bench_function("translate pullRemoteStream -> protobuf", |b| {
        b.iter(|| {
            translate::notification_command(black_box(&pmethod), black_box(pdata.clone())).unwrap()
        })
    });

    let Some(proto::command::Kind::Push(p)) =
        translate::notification_command(&method, data).unwrap().kind
    else {
        unreachable!()
    };
    let event = proto::PeerEvent {
        kind: Some(proto::peer_event::Kind::NewPusher(proto::NewPusher {
            room_id: p.room_id.clone(),
            user_id: p.user_id.clone(),
            user_name: p.user_name.clone(),
            pushers: p.publishers.clone(),
            extra: Default::default(),
        })),
    };
    c.bench_function("serialize newPusher (protobuf -> protoo text)", |b| {
        b.iter(|| {
            let d = Delivery::new(black_box(event.clone()));
            translate::delivery_text(&d)
        })
    });

    // A push through the room service: parse, translate, execute, and the
    // text each of three other sessions would be sent (made once, shared).
    let center = Center::default();
    let peer = || PeerInfo {
        addr: "bench".into(),
        transport: Transport::Ws,
        identity: "bench".into(),
        incarnation: String::new(),
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Outbound>(1 << 20);
    let sender = center.open_session(peer(), Grant::unrestricted(), tx.clone());
    let others: Vec<_> = (0..3)
        .map(|_| center.open_session(peer(), Grant::unrestricted(), tx.clone()))
        .collect();
    for (i, s) in others.iter().enumerate() {
        let join = format!(r#"{{"roomId":"room-42","userId":"other-{i}","userName":"O"}}"#);
        let data = protoo::Data::parse(&join).unwrap();
        s.execute(translate::request_command("join", data).unwrap())
            .now_or_never()
            .unwrap()
            .unwrap();
    }
    while rx.try_recv().is_ok() {}
    c.bench_function(
        "push end to end (parse, translate, room service, 3 deliveries)",
        |b| {
            b.iter(|| {
                let protoo::Message::Notification { method, data } =
                    protoo::parse(black_box(&push)).unwrap()
                else {
                    unreachable!()
                };
                sender
                    .execute(translate::notification_command(&method, data).unwrap())
                    .now_or_never()
                    .unwrap()
                    .unwrap();
                while let Ok(Outbound::Event(d)) = rx.try_recv() {
                    black_box(translate::delivery_text(&d));
                }
            })
        },
    );
    drop((sender, others));
}

criterion_group!(benches, bench);
criterion_main!(benches);
