//! Any bytes as a protoo text frame: parsing never panics, and every
//! response the center would write for it is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pilot_center::protoo::{self, FrameError, Message};
use pilot_center::translate;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let out = match protoo::parse(text) {
        Ok(Message::Request { id, method, data }) => match translate::request_command(&method, data) {
            Ok(cmd) => {
                // Echo is answered without state; the others are checked by `translate`.
                if let Some(pilot_center::proto::command::Kind::Echo(e)) = cmd.kind {
                    let reply = pilot_center::proto::Reply {
                        kind: Some(pilot_center::proto::reply::Kind::Echo(pilot_center::proto::EchoResponse { data_json: e.data_json })),
                    };
                    protoo::ok_response(id, &translate::reply_data(&reply))
                } else {
                    return;
                }
            }
            Err(e) => protoo::error_response(Some(id), e.protoo_code(), &e.to_string()),
        },
        Err(FrameError::BadRequest { id, reason }) => protoo::error_response(id.as_deref(), 400, reason),
        _ => return,
    };
    assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "invalid JSON written: {out}");
});
