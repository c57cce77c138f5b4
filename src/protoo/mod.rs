//! The protoo wire format: parsing and writing JSON frames. No I/O.
//!
//! A frame is one JSON object; its kind is chosen by which of `request`,
//! `response` or `notification` is literally `true`. Everything a peer sent
//! that the center passes on (`data`, ids) is kept as slices of the frame
//! text, so values keep their exact bytes and JSON types. One pass
//! (the `scan` module) checks a frame and splits it and its `data`.

use memchr::memchr2;

mod scan;
use serde::Deserialize;
use serde::de::Visitor;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// A parsed protoo frame, borrowing from the frame text.
#[derive(Debug)]
pub enum Message<'a> {
    /// A request: the peer expects a response with the same `id`.
    Request {
        /// The request id, an integer or a string, echoed verbatim.
        id: &'a RawValue,
        /// Method name.
        method: Cow<'a, str>,
        /// Request data (`{}` when absent).
        data: Data<'a>,
    },
    /// A response to a request the center sent (e.g. `invite`).
    Response {
        /// The id of the request it answers.
        id: &'a RawValue,
        /// Whether the request succeeded.
        ok: bool,
        /// `errorCode` when not ok.
        error_code: Option<i64>,
        /// `errorReason` when not ok.
        error_reason: Option<String>,
    },
    /// A one-way notification.
    Notification {
        /// Method name.
        method: Cow<'a, str>,
        /// Notification data (`{}` when absent).
        data: Data<'a>,
    },
}

/// Why a frame could not be used. Only [`FrameError::BadRequest`] is answered
/// (it has a request id to answer to); the others are counted and logged.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Not valid JSON (or nested deeper than the parser allows).
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// Valid JSON, but not an object, or an object of no protoo kind.
    #[error("not a protoo message")]
    NotProtoo,
    /// A request that cannot be served; answer with 400 and this reason,
    /// echoing the id as received (`null` when absent).
    #[error("{reason}")]
    BadRequest {
        /// The id as received, if any.
        id: Option<Box<RawValue>>,
        /// The `errorReason` to send.
        reason: &'static str,
    },
}

const EMPTY_OBJECT: &str = "{}";

/// The members of a frame the center reads, each the JSON text sent
/// (`null` counts as absent); a member named twice makes the frame no
/// protoo frame.
#[derive(Default)]
struct Envelope<'a> {
    request: Option<&'a str>,
    response: Option<&'a str>,
    notification: Option<&'a str>,
    id: Option<&'a str>,
    method: Option<&'a str>,
    data: Option<&'a str>,
    ok: Option<&'a str>,
    error_code: Option<&'a str>,
    error_reason: Option<&'a str>,
}

impl<'a> Envelope<'a> {
    fn read(members: Vec<scan::Member<'a>>) -> Result<Self, FrameError> {
        let mut env = Self::default();
        let mut seen = 0u16;
        for (key, value) in members {
            let (bit, slot) = match key.as_ref() {
                "request" => (0, &mut env.request),
                "response" => (1, &mut env.response),
                "notification" => (2, &mut env.notification),
                "id" => (3, &mut env.id),
                "method" => (4, &mut env.method),
                "data" => (5, &mut env.data),
                "ok" => (6, &mut env.ok),
                "errorCode" => (7, &mut env.error_code),
                "errorReason" => (8, &mut env.error_reason),
                _ => continue,
            };
            if seen & (1 << bit) != 0 {
                return Err(FrameError::NotProtoo);
            }
            seen |= 1 << bit;
            *slot = (value != "null").then_some(value);
        }
        Ok(env)
    }
}

fn is_true(v: Option<&str>) -> bool {
    v == Some("true")
}

/// JSON text the scanner checked, as serde_json's borrowed raw value.
fn raw_value(text: &str) -> Result<&RawValue, FrameError> {
    serde_json::from_str(text).map_err(|_| FrameError::NotProtoo)
}

/// The `data` of a request or notification: its JSON text as sent (checked
/// like the whole frame), and its members when it is an object, split in
/// the same pass that read the frame.
#[derive(Debug, Clone)]
pub struct Data<'a> {
    text: &'a str,
    members: Option<Vec<scan::Member<'a>>>,
}

impl<'a> Data<'a> {
    /// Checks `text` as a frame's `data` is checked (the JSON grammar, what
    /// strict peers reject) and splits it.
    pub fn parse(text: &'a str) -> Result<Self, FrameError> {
        let members = scan::members(text).map_err(|why| FrameError::InvalidJson(why.to_owned()))?;
        Ok(Self {
            text: text.trim_matches([' ', '\t', '\n', '\r']),
            members,
        })
    }

    /// `{}`, what a frame without `data` carries.
    fn empty() -> Self {
        Self {
            text: EMPTY_OBJECT,
            members: Some(Vec::new()),
        }
    }

    /// The JSON text, exactly as sent.
    pub fn get(&self) -> &'a str {
        self.text
    }

    /// Whether `data` is an object.
    pub fn is_object(&self) -> bool {
        self.members.is_some()
    }

    /// The members, when `data` is an object.
    pub fn into_object(self) -> Option<RawObject<'a>> {
        self.members.map(RawObject)
    }
}

/// True when `raw` is a JSON string or an integer (no fraction, no exponent).
pub fn is_valid_id(raw: &RawValue) -> bool {
    let s = raw.get();
    match s.as_bytes().first() {
        Some(b'"') => true,
        Some(b'-' | b'0'..=b'9') => !s.contains(['.', 'e', 'E']),
        _ => false,
    }
}

/// The string JSON text `text` holds, `None` when it is no JSON string.
/// One without a backslash is its text between the quotes, borrowed (the
/// scanner that found `text` checked its grammar): no second parse for the
/// usual plain value.
fn str_text(text: &str) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<Key<'_>>(text).ok().map(|Key(k)| k)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// Deepest nesting of arrays and objects accepted in a frame. Raw values
/// are forwarded to peers whose parsers recurse (the SFU's among them), so
/// the center refuses what could overflow their stacks.
pub const MAX_DEPTH: usize = 64;

/// Checks what the JSON grammar allows but strict peers reject, so that the
/// center, which forwards raw values verbatim, never sends such text on:
/// nesting deeper than `max_depth`, `\u` escapes that are lone UTF-16
/// surrogates, and numbers that overflow a double. A linear scan; the
/// grammar itself is checked by the parser.
fn check_strictness(text: &str, max_depth: usize) -> Result<(), &'static str> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    let hex = |at: usize| -> Option<u16> {
        let h = bytes.get(at..at + 4)?;
        u16::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    };
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                // Only quotes and escapes matter inside a string: jump
                // between them (most of a message's bytes are its text).
                while let Some(at) = bytes.get(i..).and_then(|rest| memchr2(b'"', b'\\', rest)) {
                    i += at;
                    if bytes[i] == b'"' {
                        break;
                    }
                    if bytes.get(i + 1) == Some(&b'u') {
                        let unit = hex(i + 2).unwrap_or(0);
                        if (0xDC00..0xE000).contains(&unit) {
                            return Err("lone low surrogate in a \\u escape");
                        }
                        if (0xD800..0xDC00).contains(&unit) {
                            let low = (bytes.get(i + 6..i + 8) == Some(b"\\u"))
                                .then(|| hex(i + 8))
                                .flatten();
                            if !low.is_some_and(|l| (0xDC00..0xE000).contains(&l)) {
                                return Err("lone high surrogate in a \\u escape");
                            }
                            i += 6;
                        }
                        i += 6;
                    } else {
                        i += 2;
                    }
                }
                if i >= bytes.len() {
                    // An unterminated string: the parser says so.
                    return Ok(());
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err("nested too deeply");
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i + 1 < bytes.len()
                    && matches!(bytes[i + 1], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let token = &text[start..=i];
                // Doubles overflow past about 1.8e308: only exponents and very long numbers can.
                if (token.len() > 300 || token.contains(['e', 'E']))
                    && !token.parse::<f64>().is_ok_and(f64::is_finite)
                {
                    return Err("number out of range of a double");
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Refuses JSON text that strict peers reject (see [`MAX_DEPTH`]): lone
/// surrogate escapes, numbers that overflow a double, deep nesting. The
/// center itself applies these rules in the scanner's one pass ([`parse`],
/// [`Data::parse`]); this separate scan of the rules alone is what the
/// tests and the fuzz targets, beside serde_json's grammar, hold the
/// scanner to.
pub fn check_strict(text: &str) -> Result<(), &'static str> {
    check_strictness(text, MAX_DEPTH)
}

/// Parses one text frame: one pass checks it and splits the envelope and
/// its `data` (the `scan` module).
pub fn parse(text: &str) -> Result<Message<'_>, FrameError> {
    let scanned =
        scan::scan(text, "data").map_err(|why| FrameError::InvalidJson(why.to_owned()))?;
    // Valid JSON but not an object: not a protoo frame.
    let env = Envelope::read(scanned.top.ok_or(FrameError::NotProtoo)?)?;
    let data = match (env.data, scanned.inner) {
        (None, _) => Data::empty(),
        (Some(text), members) => Data { text, members },
    };
    if is_true(env.request) {
        let id = match env.id.map(raw_value).transpose()? {
            Some(id) if is_valid_id(id) => id,
            other => {
                return Err(FrameError::BadRequest {
                    id: other.map(ToOwned::to_owned),
                    reason: "Invalid id",
                });
            }
        };
        let Some(method) = env.method.and_then(str_text) else {
            return Err(FrameError::BadRequest {
                id: Some(id.to_owned()),
                reason: "Invalid method",
            });
        };
        Ok(Message::Request { id, method, data })
    } else if is_true(env.response) {
        let id = raw_value(env.id.ok_or(FrameError::NotProtoo)?)?;
        Ok(Message::Response {
            id,
            ok: is_true(env.ok),
            error_code: env
                .error_code
                .and_then(|r| serde_json::from_str::<i64>(r).ok()),
            error_reason: env.error_reason.and_then(str_text).map(Cow::into_owned),
        })
    } else if is_true(env.notification) {
        let method = env.method.and_then(str_text).ok_or(FrameError::NotProtoo)?;
        Ok(Message::Notification { method, data })
    } else {
        Err(FrameError::NotProtoo)
    }
}

/// A JSON object as its `(key, raw value)` pairs, in the order sent; each
/// value is the JSON text of that member, exactly as sent.
///
/// The translation layer takes the fields it knows and keeps the rest as raw
/// JSON text, which is how unknown fields survive the trip through protobuf.
#[derive(Debug, Default)]
pub struct RawObject<'a>(pub Vec<(Cow<'a, str>, &'a str)>);

/// A key of a JSON object: borrowed from the frame text unless it holds an
/// escape (a frame's fields are parsed on every message: no allocation for
/// the usual plain keys).
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Key<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Key<'a>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

impl<'a> RawObject<'a> {
    /// Splits `raw` into its members; `None` when it is not an object (or
    /// holds what strict peers reject: see [`MAX_DEPTH`]).
    pub fn parse(raw: &'a RawValue) -> Option<Self> {
        scan::members(raw.get()).ok().flatten().map(RawObject)
    }

    /// Removes and returns the field `key` (its JSON text).
    pub fn take(&mut self, key: &str) -> Option<&'a str> {
        let pos = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.swap_remove(pos).1)
    }

    /// Removes `key` when it is a JSON string and returns it. A field of
    /// another type is left in place (so it travels on as an unknown field).
    pub fn take_str(&mut self, key: &str) -> Option<String> {
        let pos = self.0.iter().position(|(k, _)| k == key)?;
        let s = str_text(self.0[pos].1)?.into_owned();
        self.0.swap_remove(pos);
        Some(s)
    }

    /// Removes `key` when it is a JSON integer and returns it.
    pub fn take_i64(&mut self, key: &str) -> Option<i64> {
        let pos = self.0.iter().position(|(k, _)| k == key)?;
        let n = serde_json::from_str::<i64>(self.0[pos].1).ok()?;
        self.0.swap_remove(pos);
        Some(n)
    }

    /// What is left: key -> raw JSON text.
    pub fn into_extra(self) -> std::collections::HashMap<String, String> {
        self.0
            .into_iter()
            .map(|(k, v)| (k.into_owned(), v.to_owned()))
            .collect()
    }
}

/// Writes one JSON object field by field, straight into a byte buffer.
///
/// Raw pieces (`raw`) must be valid JSON text: every such piece comes from a
/// parsed frame or was checked at the gRPC edge.
pub struct ObjectWriter {
    buf: Vec<u8>,
    first: bool,
}

impl ObjectWriter {
    /// Starts an object with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        Self::continuing(Vec::with_capacity(capacity))
    }

    /// Starts an object at the end of `buf` (a value inside an enclosing
    /// object written around it): one buffer for both.
    pub fn continuing(mut buf: Vec<u8>) -> Self {
        buf.push(b'{');
        Self { buf, first: true }
    }

    fn key(&mut self, key: &str) {
        if !self.first {
            self.buf.push(b',');
        }
        self.first = false;
        write_json_str(&mut self.buf, key);
        self.buf.push(b':');
    }

    /// A string field.
    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        write_json_str(&mut self.buf, value);
        self
    }

    /// A field whose value is raw JSON text; `{}` when `raw` is empty.
    pub fn raw(&mut self, key: &str, raw: &str) -> &mut Self {
        self.key(key);
        self.buf
            .extend_from_slice(if raw.is_empty() { EMPTY_OBJECT } else { raw }.as_bytes());
        self
    }

    /// A boolean field.
    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    /// An integer field.
    pub fn int(&mut self, key: &str, value: i64) -> &mut Self {
        self.key(key);
        self.buf.extend_from_slice(value.to_string().as_bytes());
        self
    }

    /// A field whose value is written by `f` (an array or nested object).
    pub fn with(&mut self, key: &str, f: impl FnOnce(&mut Vec<u8>)) -> &mut Self {
        self.key(key);
        f(&mut self.buf);
        self
    }

    /// Unknown fields carried as raw JSON text.
    pub fn extra<'e>(
        &mut self,
        extra: impl IntoIterator<Item = (&'e String, &'e String)>,
    ) -> &mut Self {
        for (k, v) in extra {
            self.raw(k, v);
        }
        self
    }

    /// Closes the object and returns its bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'}');
        self.buf
    }
}

/// Appends `s` as a JSON string literal.
pub fn write_json_str(buf: &mut Vec<u8>, s: &str) {
    // Writing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

fn into_string(bytes: Vec<u8>) -> String {
    // Every writer here emits UTF-8 (serde_json output and valid raw JSON).
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// `{"response":true,"id":ID,"ok":true,"data":DATA}`; `data` is raw JSON.
pub fn ok_response(id: &RawValue, data: &[u8]) -> String {
    let mut w = ObjectWriter::with_capacity(48 + data.len());
    w.bool("response", true)
        .raw("id", id.get())
        .bool("ok", true);
    w.with("data", |b| {
        b.extend_from_slice(if data.is_empty() {
            EMPTY_OBJECT.as_bytes()
        } else {
            data
        })
    });
    into_string(w.finish())
}

/// `{"response":true,"id":ID,"ok":false,"errorCode":CODE,"errorReason":REASON}`;
/// `id` is `null` when the request had none.
pub fn error_response(id: Option<&RawValue>, code: u16, reason: &str) -> String {
    let mut w = ObjectWriter::with_capacity(80 + reason.len());
    w.bool("response", true)
        .raw("id", id.map_or("null", RawValue::get))
        .bool("ok", false)
        .int("errorCode", i64::from(code))
        .str("errorReason", reason);
    into_string(w.finish())
}

/// `{"notification":true,"method":METHOD,"data":DATA}`; `data` is raw JSON.
pub fn notification(method: &str, data: &[u8]) -> String {
    notification_with(method, data.len(), |mut b| {
        b.extend_from_slice(data);
        b
    })
}

/// A notification whose `data` `write_data` appends to the buffer it is
/// given (and returns): the data is written in place, not copied in.
/// `data_len` is about its length, to size the buffer once.
pub fn notification_with(
    method: &str,
    data_len: usize,
    write_data: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> String {
    let mut w = ObjectWriter::with_capacity(40 + method.len() + data_len);
    w.bool("notification", true).str("method", method);
    w.key("data");
    let mut buf = write_data(w.buf);
    buf.push(b'}');
    into_string(buf)
}

/// `{"request":true,"id":ID,"method":METHOD,"data":DATA}`; `data` is raw JSON.
pub fn request(id: u64, method: &str, data: &[u8]) -> String {
    let mut w = ObjectWriter::with_capacity(48 + data.len());
    w.bool("request", true)
        .with("id", |b| b.extend_from_slice(id.to_string().as_bytes()))
        .str("method", method);
    w.with("data", |b| b.extend_from_slice(data));
    into_string(w.finish())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::strategy::Strategy;
    use serde_json::Value;

    #[test]
    fn request_with_integer_and_string_ids() {
        let Message::Request { id, method, data } =
            parse(r#"{"request":true,"id":12,"method":"echo","data":{"a":1}}"#).unwrap()
        else {
            panic!("not a request")
        };
        assert_eq!(
            (id.get(), &*method, data.get()),
            ("12", "echo", r#"{"a":1}"#)
        );
        let Message::Request { id, .. } =
            parse(r#"{"request":true,"id":"x-1","method":"echo"}"#).unwrap()
        else {
            panic!("not a request")
        };
        assert_eq!(id.get(), r#""x-1""#);
    }

    #[test]
    fn data_defaults_to_empty_object() {
        let Message::Notification { data, .. } =
            parse(r#"{"notification":true,"method":"push"}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(data.get(), "{}");
    }

    #[test]
    fn bad_ids_are_bad_requests_echoing_the_id() {
        for (frame, echoed) in [
            (r#"{"request":true,"method":"echo"}"#, None),
            // null reads as "no id"; both are echoed as null.
            (r#"{"request":true,"id":null,"method":"echo"}"#, None),
            (r#"{"request":true,"id":1.5,"method":"echo"}"#, Some("1.5")),
            (
                r#"{"request":true,"id":{"a":1},"method":"echo"}"#,
                Some(r#"{"a":1}"#),
            ),
            (r#"{"request":true,"id":[1],"method":"echo"}"#, Some("[1]")),
        ] {
            match parse(frame) {
                Err(FrameError::BadRequest { id, reason }) => {
                    assert_eq!(reason, "Invalid id");
                    assert_eq!(id.as_deref().map(RawValue::get), echoed, "{frame}");
                }
                other => panic!("{frame}: {other:?}"),
            }
        }
    }

    #[test]
    fn huge_integer_ids_are_kept_verbatim() {
        let Message::Request { id, .. } =
            parse(r#"{"request":true,"id":123456789012345678901234567890,"method":"echo"}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(id.get(), "123456789012345678901234567890");
    }

    #[test]
    fn junk_is_rejected_without_panicking() {
        for junk in [
            "",
            "nul",
            "[]",
            "1",
            "\"s\"",
            "{}",
            r#"{"request":1,"id":1,"method":"x"}"#,
            r#"{"notification":true}"#,
            r#"{"notification":true,"method":5}"#,
            r#"{"response":true}"#,
            &"[".repeat(10_000),
        ] {
            assert!(parse(junk).is_err(), "{junk:.40}");
        }
        let deep = format!(
            "{{\"request\":true,\"id\":1,\"method\":\"echo\",\"data\":{}{}}}",
            "[".repeat(5000),
            "]".repeat(5000)
        );
        let r = parse(&deep);
        assert!(matches!(r, Err(FrameError::InvalidJson(_))), "{r:?}");
    }

    #[test]
    fn nesting_limit_ignores_brackets_in_strings() {
        let ok = format!(
            "{{\"a\":\"{}\",\"b\":{}{}}}",
            "[{".repeat(100),
            "[".repeat(60),
            "]".repeat(60)
        );
        assert!(check_strictness(&ok, MAX_DEPTH).is_ok());
        let escaped = r#"{"a":"\\\"[[[[","b":[]}"#;
        assert!(check_strictness(escaped, 2).is_ok());
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(check_strictness(&deep, MAX_DEPTH).is_err());
        assert!(scan::members(&deep).is_err());
        let deepest = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(scan::members(&deepest).is_ok());
    }

    #[test]
    fn what_strict_parsers_reject_is_refused() {
        // Found by fuzzing: both are JSON by grammar, but serde_json's Value
        // (and the SFU's parser) reject them, so they must not be forwarded.
        let long = format!("[{}]", "9".repeat(400));
        for bad in [
            r#"{"a":"\uDEEE"}"#,
            r#"{"a":"\uD800x"}"#,
            r#"{"a":"\uD800\u0041"}"#,
            "[1e1111]",
            "[-2E400]",
            long.as_str(),
        ] {
            assert!(check_strictness(bad, MAX_DEPTH).is_err(), "{bad}");
            assert!(scan::members(bad).is_err(), "the scanner agrees: {bad}");
            assert!(
                serde_json::from_str::<Value>(bad).is_err(),
                "serde_json agrees: {bad}"
            );
        }
        for good in [
            r#"{"a":"\uD83D\uDE00 \u00e9 \\uDEEE"}"#,
            "[1e308, -1.5E-400, 123456789012345678901234567890, 0.25]",
        ] {
            assert!(check_strictness(good, MAX_DEPTH).is_ok(), "{good}");
            assert!(scan::members(good).is_ok(), "{good}");
            assert!(serde_json::from_str::<Value>(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn responses_from_peers() {
        let Message::Response {
            id,
            ok,
            error_code,
            error_reason,
        } = parse(r#"{"response":true,"id":7,"ok":false,"errorCode":500,"errorReason":"no"}"#)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (id.get(), ok, error_code, error_reason.as_deref()),
            ("7", false, Some(500), Some("no"))
        );
    }

    #[test]
    fn writers_produce_exact_shapes() {
        let id = RawValue::from_string("\"abc\"".into()).unwrap();
        let ok: Value = serde_json::from_str(&ok_response(&id, br#"{"x":1}"#)).unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"response":true,"id":"abc","ok":true,"data":{"x":1}})
        );
        let err: Value =
            serde_json::from_str(&error_response(None, 404, "Unknown method: x")).unwrap();
        assert_eq!(
            err,
            serde_json::json!({"response":true,"id":null,"ok":false,"errorCode":404,"errorReason":"Unknown method: x"})
        );
        let n: Value =
            serde_json::from_str(&notification("newUser", br#"{"a":"\u00e9"}"#)).unwrap();
        assert_eq!(n["data"]["a"], "é");
        let r: Value = serde_json::from_str(&request(9, "invite", br#"{"roomId":"r"}"#)).unwrap();
        assert_eq!(
            r,
            serde_json::json!({"request":true,"id":9,"method":"invite","data":{"roomId":"r"}})
        );
    }

    #[test]
    fn raw_object_takes_typed_fields_and_keeps_the_rest() {
        let raw =
            RawValue::from_string(r#"{"roomId":"r","userName":5,"n":1,"x":{"y":[1,"2"]}}"#.into())
                .unwrap();
        let mut o = RawObject::parse(&raw).unwrap();
        assert_eq!(o.take_str("roomId").as_deref(), Some("r"));
        assert_eq!(o.take_str("userName"), None);
        assert_eq!(o.take_i64("n"), Some(1));
        let extra = o.into_extra();
        assert_eq!(extra["userName"], "5");
        assert_eq!(extra["x"], r#"{"y":[1,"2"]}"#);
    }

    /// Any JSON value, nested a few levels, with strings that need escapes.
    pub(crate) fn any_json() -> impl Strategy<Value = Value> {
        let leaf = proptest::prop_oneof![
            proptest::strategy::Just(Value::Null),
            proptest::bool::ANY.prop_map(Value::Bool),
            proptest::num::i64::ANY.prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            r#"[a-z"\\{}\[\],: \x01\u{e9}\u{1F600}]{0,8}"#.prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            proptest::prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((r#"[a-z"\\]{0,4}"#, inner), 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The one-pass split finds every member, key and value, as
        /// serde_json reads them, in order, whatever the spacing; a value
        /// that is not an object is not split.
        #[test]
        fn an_object_splits_into_the_members_serde_json_reads(
            members in proptest::collection::vec((r#"[a-z"\\\u{e9}]{0,5}"#, any_json()), 0..6),
            space in proptest::sample::select(vec!["", " ", "\n\t ", "\r\n"]),
            other in any_json(),
        ) {
            let mut text = format!("{space}{{{space}");
            for (n, (k, v)) in members.iter().enumerate() {
                if n > 0 {
                    text.push_str(&format!("{space},{space}"));
                }
                let k = serde_json::to_string(k).unwrap();
                let v = if n % 2 == 0 { v.to_string() } else { serde_json::to_string_pretty(v).unwrap() };
                text.push_str(&format!("{k}{space}:{space}{v}"));
            }
            text.push_str(&format!("{space}}}{space}"));
            let raw = RawValue::from_string(text.clone()).unwrap();
            let split = RawObject::parse(&raw).expect("an object");
            proptest::prop_assert_eq!(split.0.len(), members.len(), "{}", text);
            for ((k, v), (key, value)) in members.iter().zip(&split.0) {
                proptest::prop_assert_eq!(key.as_ref(), k.as_str());
                // Both sides read from text: a float reads back the same
                // from the same digits.
                let want: Value = serde_json::from_str(&v.to_string()).unwrap();
                proptest::prop_assert_eq!(serde_json::from_str::<Value>(value).unwrap(), want);
            }
            if !other.is_object() {
                let raw = RawValue::from_string(other.to_string()).unwrap();
                proptest::prop_assert!(RawObject::parse(&raw).is_none());
            }
        }
    }

    /// JSON by serde_json's grammar and the strictness check: what the
    /// one-pass scanner must take, and nothing else.
    fn serde_takes(text: &str) -> bool {
        serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() && check_strict(text).is_ok()
    }

    proptest::proptest! {
        // Near misses are rare among random edits: many cases, each cheap.
        #![proptest_config(proptest::test_runner::Config::with_cases(8192))]
        /// The scanner takes and refuses what serde_json and the
        /// strictness check do, for JSON and for JSON with one byte
        /// changed, dropped or added (the near misses a grammar gets
        /// wrong), and a frame's `data` splits into the members serde_json
        /// reads.
        #[test]
        fn the_scanner_agrees_with_serde_json(
            value in any_json(),
            pretty in proptest::bool::ANY,
            at in proptest::num::usize::ANY,
            edit in 0..4u8,
            byte in proptest::sample::select(br#"{}[]:,"\ -+.eE0123456789tfnu"#.to_vec()),
        ) {
            let json = if pretty { serde_json::to_string_pretty(&value).unwrap() } else { value.to_string() };
            let frame = format!(r#"{{"notification":true,"method":"m","data":{json}}}"#);
            for text in [json.clone(), frame] {
                let mut bytes = text.into_bytes();
                let at = at % (bytes.len() + 1);
                match edit {
                    0 => {}
                    1 if at < bytes.len() => { bytes.remove(at); }
                    2 => bytes.insert(at, byte),
                    _ if at < bytes.len() => bytes[at] = byte,
                    _ => {}
                }
                let Ok(text) = String::from_utf8(bytes) else { continue };
                proptest::prop_assert_eq!(scan::members(&text).is_ok(), serde_takes(&text), "{}", text);
                if let Ok(Message::Notification { data, .. }) = parse(&text) {
                    let want: Value = serde_json::from_str(data.get()).unwrap();
                    match (data.into_object(), want) {
                        (Some(o), Value::Object(m)) => {
                            // serde_json keeps the last of a repeated key.
                            for (k, v) in &o.0 {
                                if o.0.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v2)| v2) == Some(v) {
                                    proptest::prop_assert_eq!(serde_json::from_str::<Value>(v).unwrap(), m[k.as_ref()].clone());
                                }
                            }
                            proptest::prop_assert!(m.keys().all(|k| o.0.iter().any(|(k2, _)| k2 == k)));
                        }
                        (None, other) => proptest::prop_assert!(!other.is_object()),
                        (Some(_), other) => proptest::prop_assert!(false, "split a non-object {}", other),
                    }
                }
            }
        }
    }

    proptest::proptest! {
        /// The plain-text shortcut reads every string as the parser does.
        #[test]
        fn str_text_reads_what_serde_json_reads(s in "\\PC*|[\"\\\\/a\u{0}-\u{1f}\u{e9}\u{1F600}]{0,8}") {
            let raw = RawValue::from_string(serde_json::to_string(&s).unwrap()).unwrap();
            let plain = str_text(raw.get());
            proptest::prop_assert_eq!(plain.as_deref(), Some(s.as_str()));
            // Every character as a \u escape (surrogate pairs included).
            let units: String = s.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
            let escaped = RawValue::from_string(format!("\"{units}\"")).unwrap();
            let decoded = str_text(escaped.get());
            proptest::prop_assert_eq!(decoded.as_deref(), Some(s.as_str()));
        }
    }

    proptest::proptest! {
        /// Inside strings the check jumps from quote to escape: whatever
        /// the escapes, it refuses exactly what serde_json's `Value` does.
        #[test]
        fn strict_check_agrees_with_serde_json_on_escapes(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    "[a-z \u{e9}\u{1F600}\\[\\]{}]{0,6}",
                    proptest::strategy::Just("\\\"".to_owned()),
                    proptest::strategy::Just("\\\\".to_owned()),
                    proptest::strategy::Just("\\n".to_owned()),
                    (0u32..0x1_0000).prop_map(|u| format!("\\u{u:04X}")),
                    (0xD800u32..0xE000).prop_map(|u| format!("\\u{u:04x}")),
                ],
                0..12,
            )
        ) {
            let text = format!("{{\"a\":[\"{}\",1],\"b\":\"{}\"}}", pieces.concat(), pieces.concat());
            proptest::prop_assert_eq!(
                check_strict(&text).is_ok(),
                serde_json::from_str::<Value>(&text).is_ok(),
                "{}", text
            );
            proptest::prop_assert_eq!(scan::members(&text).is_ok(), check_strict(&text).is_ok(), "{}", text);
        }
    }

    #[test]
    fn str_text_refuses_what_is_no_string() {
        for text in ["1", "null", "{}", "[\"a\"]", "true"] {
            let raw = RawValue::from_string(text.to_owned()).unwrap();
            assert_eq!(str_text(raw.get()), None, "{text}");
        }
    }

    #[test]
    fn keys_and_methods_are_borrowed_unless_escaped() {
        let raw = RawValue::from_string(r#"{"roomId":"r","user\u0049d":"u"}"#.into()).unwrap();
        let mut o = RawObject::parse(&raw).unwrap();
        assert!(matches!(o.0[0].0, Cow::Borrowed("roomId")));
        assert!(matches!(&o.0[1].0, Cow::Owned(k) if k == "userId"));
        assert_eq!(o.take_str("userId").as_deref(), Some("u"));
        let Message::Notification { method, .. } =
            parse(r#"{"notification":true,"method":"text\u004dessage"}"#).unwrap()
        else {
            panic!("not a notification")
        };
        assert_eq!(method, "textMessage");
        let Message::Notification { method, .. } =
            parse(r#"{"notification":true,"method":"textMessage"}"#).unwrap()
        else {
            panic!("not a notification")
        };
        assert!(matches!(method, Cow::Borrowed("textMessage")));
    }
}
