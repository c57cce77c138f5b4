//! The HTTP/1.1 upgrade to WebSocket, done by hand. No I/O.
//!
//! We write the `101` ourselves because the real SFU's client (PROTOCOL.md
//! §7) looks header names up case-sensitively (`Upgrade`, `Connection`,
//! `Sec-WebSocket-Accept`) and reads each value from two characters after the
//! colon; tungstenite's own server handshake writes lower-case names. Input
//! is parsed leniently (header names and tokens are case-insensitive, as RFC
//! 7230 says); output is byte-exact.

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Largest request head we read; a larger one is dropped without answer.
pub const MAX_HEAD: usize = 16 * 1024;

/// A valid upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `Sec-WebSocket-Key` as sent.
    pub key: String,
    /// The client offered the `protoo` subprotocol.
    pub protoo: bool,
    /// The query string (after `?`), if any.
    pub query: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// An HTTP refusal written before any upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 400: malformed, or not a WebSocket upgrade.
    BadRequest(&'static str),
    /// 401: missing or invalid credentials.
    Unauthorized,
    /// 404: another path.
    NotFound,
    /// 426: a WebSocket version other than 13.
    UpgradeRequired,
    /// 429: a connection limit applies.
    TooManyRequests,
    /// 503: shutting down, or full.
    Unavailable(&'static str),
}

/// What the bytes read so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The head is not complete yet: read more.
    Partial,
    /// The head is complete; it was `head_len` bytes long.
    Upgrade {
        /// Length of the request head; bytes after it belong to WebSocket.
        head_len: usize,
        /// The request.
        request: UpgradeRequest,
    },
}

/// Why a request is not upgraded.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejection {
    /// Answer with this refusal, then close.
    Refuse(Refusal),
    /// The head exceeds [`MAX_HEAD`]: close without answering.
    HeadTooLarge,
}

fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn is_base64_key(key: &str) -> bool {
    // 16 random bytes in base64: 22 significant characters and "==".
    key.len() == 24
        && key.ends_with("==")
        && key[..22]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// Parses the request head in `buf` and checks it is an upgrade to `path`.
pub fn parse_request(buf: &[u8], path: &str) -> Result<Parsed, Rejection> {
    use Refusal::{BadRequest, NotFound, UpgradeRequired};
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Rejection::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Rejection::Refuse(BadRequest("too many headers")));
        }
        Err(_) => return Err(Rejection::Refuse(BadRequest("malformed request"))),
    };
    if head_len > MAX_HEAD {
        return Err(Rejection::HeadTooLarge);
    }
    let refuse = |r| Err(Rejection::Refuse(r));
    if req.method != Some("GET") || req.version != Some(1) {
        return refuse(BadRequest("a WebSocket upgrade is a GET over HTTP/1.1"));
    }
    let target = req.path.unwrap_or("");
    let (req_path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    if req_path != path {
        return refuse(NotFound);
    }
    // Repeated headers count as one comma-separated list (RFC 7230 §3.2.2).
    let header = |name: &str| -> Option<String> {
        let values: Vec<&str> = req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    if !header("Upgrade").is_some_and(|v| has_token(&v, "websocket")) {
        return refuse(BadRequest("not a WebSocket upgrade (Upgrade: websocket)"));
    }
    if !header("Connection").is_some_and(|v| has_token(&v, "upgrade")) {
        return refuse(BadRequest("not a WebSocket upgrade (Connection: Upgrade)"));
    }
    match header("Sec-WebSocket-Version") {
        Some(v) if v.trim() == "13" => {}
        Some(_) => return refuse(UpgradeRequired),
        None => return refuse(BadRequest("missing Sec-WebSocket-Version")),
    }
    let Some(key) = header("Sec-WebSocket-Key").map(|k| k.trim().to_owned()) else {
        return refuse(BadRequest("missing Sec-WebSocket-Key"));
    };
    if !is_base64_key(&key) {
        return refuse(BadRequest("invalid Sec-WebSocket-Key"));
    }
    let protoo = header("Sec-WebSocket-Protocol").is_some_and(|v| has_token(&v, "protoo"));
    Ok(Parsed::Upgrade {
        head_len,
        request: UpgradeRequest {
            key,
            protoo,
            query,
            authorization: header("Authorization"),
        },
    })
}

/// The exact `101` response: header names spelled as the SFU expects, one
/// space after each colon, nothing else. Written with one write.
pub fn switching_protocols(request: &UpgradeRequest) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(request.key.as_bytes())
    );
    if request.protoo {
        out.push_str("Sec-WebSocket-Protocol: protoo\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

impl Refusal {
    /// Status code and reason phrase.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Self::BadRequest(_) => (400, "Bad Request"),
            Self::Unauthorized => (401, "Unauthorized"),
            Self::NotFound => (404, "Not Found"),
            Self::UpgradeRequired => (426, "Upgrade Required"),
            Self::TooManyRequests => (429, "Too Many Requests"),
            Self::Unavailable(_) => (503, "Service Unavailable"),
        }
    }

    /// A complete, well-formed HTTP response with a short text body.
    pub fn response(&self) -> Vec<u8> {
        let (code, phrase) = self.status();
        let body = match self {
            Self::BadRequest(why) | Self::Unavailable(why) => format!("{phrase}: {why}\n"),
            Self::NotFound => "Not Found: the center listens on /pilot/center\n".to_owned(),
            _ => format!("{phrase}\n"),
        };
        let mut head = format!(
            "HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        match self {
            Self::UpgradeRequired => head.push_str("Sec-WebSocket-Version: 13\r\n"),
            Self::Unauthorized => head.push_str("WWW-Authenticate: Bearer\r\n"),
            _ => {}
        }
        head.push_str("\r\n");
        head.push_str(&body);
        head.into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/pilot/center";
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn sfu_request() -> String {
        format!(
            "GET /pilot/center HTTP/1.1\r\nAccept: */*\r\nHost: 10.0.0.5\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Protocol: protoo\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n\r\n"
        )
    }

    fn upgrade(buf: &[u8]) -> UpgradeRequest {
        match parse_request(buf, PATH) {
            Ok(Parsed::Upgrade { request, .. }) => request,
            other => panic!("{other:?}"),
        }
    }

    fn refusal(buf: &str) -> Refusal {
        match parse_request(buf.as_bytes(), PATH) {
            Err(Rejection::Refuse(r)) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exact_101_with_protoo() {
        let req = upgrade(sfu_request().as_bytes());
        assert!(req.protoo);
        // RFC 6455 §1.3 sample key and accept hash.
        assert_eq!(
            String::from_utf8(switching_protocols(&req)).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: protoo\r\n\r\n"
        );
    }

    #[test]
    fn exact_101_without_protoo() {
        let req = upgrade(
            sfu_request()
                .replace("Sec-WebSocket-Protocol: protoo\r\n", "")
                .as_bytes(),
        );
        assert!(!req.protoo);
        assert_eq!(
            String::from_utf8(switching_protocols(&req)).unwrap(),
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn lower_and_mixed_case_headers_and_token_lists_are_accepted() {
        let lower = format!(
            "GET /pilot/center?token=abc HTTP/1.1\r\nhost: x:1\r\nconnection: keep-alive, UPGRADE\r\nupgrade: WebSocket\r\nsec-websocket-key: {KEY}\r\nsec-websocket-version: 13\r\nsec-websocket-protocol: foo, protoo\r\nauthorization: Bearer t\r\n\r\n"
        );
        let req = upgrade(lower.as_bytes());
        assert!(req.protoo);
        assert_eq!(req.query.as_deref(), Some("token=abc"));
        assert_eq!(req.authorization.as_deref(), Some("Bearer t"));
    }

    #[test]
    fn split_across_many_reads() {
        let full = sfu_request().into_bytes();
        for cut in 0..full.len() {
            assert_eq!(
                parse_request(&full[..cut], PATH),
                Ok(Parsed::Partial),
                "cut at {cut}"
            );
        }
        let mut with_frame = full.clone();
        with_frame.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        match parse_request(&with_frame, PATH) {
            Ok(Parsed::Upgrade { head_len, .. }) => assert_eq!(head_len, full.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oversized_head_is_dropped() {
        let mut big = String::from("GET /pilot/center HTTP/1.1\r\nX-Pad: ");
        big.push_str(&"a".repeat(MAX_HEAD));
        assert_eq!(
            parse_request(big.as_bytes(), PATH),
            Err(Rejection::HeadTooLarge)
        );
    }

    #[test]
    fn refusals() {
        let base = sfu_request();
        assert_eq!(
            refusal(&base.replace("/pilot/center", "/other")),
            Refusal::NotFound
        );
        assert!(matches!(
            refusal(&base.replace("GET", "POST")),
            Refusal::BadRequest(_)
        ));
        assert!(matches!(
            refusal(&base.replace("Upgrade: websocket\r\n", "")),
            Refusal::BadRequest(_)
        ));
        assert!(matches!(
            refusal(&base.replace("Connection: Upgrade", "Connection: close")),
            Refusal::BadRequest(_)
        ));
        assert_eq!(
            refusal(&base.replace("Version: 13", "Version: 8")),
            Refusal::UpgradeRequired
        );
        assert!(matches!(
            refusal(&base.replace(KEY, "short")),
            Refusal::BadRequest(_)
        ));
        assert!(matches!(refusal("GARBAGE\r\n\r\n"), Refusal::BadRequest(_)));
        assert!(matches!(
            refusal("GET /pilot/center HTTP/1.0\r\n\r\n"),
            Refusal::BadRequest(_)
        ));
    }

    #[test]
    fn refusal_responses_are_well_formed() {
        for r in [
            Refusal::BadRequest("x"),
            Refusal::Unauthorized,
            Refusal::NotFound,
            Refusal::UpgradeRequired,
            Refusal::TooManyRequests,
            Refusal::Unavailable("shutting down"),
        ] {
            let bytes = r.response();
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(n) = resp.parse(&bytes).unwrap() else {
                panic!("incomplete")
            };
            assert_eq!(resp.code, Some(r.status().0));
            let get = |name: &str| {
                resp.headers
                    .iter()
                    .find(|h| h.name == name)
                    .map(|h| std::str::from_utf8(h.value).unwrap().to_owned())
            };
            assert_eq!(
                get("Content-Length").unwrap().parse::<usize>().unwrap(),
                bytes.len() - n
            );
            assert_eq!(get("Connection").as_deref(), Some("close"));
            if r == Refusal::UpgradeRequired {
                assert_eq!(get("Sec-WebSocket-Version").as_deref(), Some("13"));
            }
        }
    }
}
