//! Any bytes as a protoo text frame: parsing never panics, refuses as
//! invalid exactly what serde_json and the strictness check refuse, and
//! every response the center would write for it is valid JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pilot_center::protoo::{self, FrameError, Message};
use pilot_center::translate;

/// JSON by grammar, and nothing a strict parser rejects (lone surrogates,
/// numbers beyond a double, deep nesting). Not `serde_json::Value`: with the
/// `raw_value` feature it rejects an object keyed by its private RawValue
/// token, which is valid JSON (found by this fuzzer).
fn strict_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() && pilot_center::protoo::check_strict(text).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The one-pass scanner refuses exactly what serde_json's grammar and
    // the strictness check refuse together.
    let refused = matches!(protoo::parse(text), Err(FrameError::InvalidJson(_)));
    assert_eq!(refused, !strict_json(text), "scanner and serde_json disagree on {text:?}");
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
    assert!(strict_json(&out), "invalid JSON written: {out}");
});
