//! The path from an upgrade request to a peer's identity, before anything
//! is trusted: any `Authorization` value and query string. Nothing panics;
//! a token the verifier accepts names somebody, and then the identity is
//! that name whatever the query says; an identity or incarnation taken from
//! the query is bounded; a client grant speaks for its own user only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pilot_center::auth::{self, AuthSettings, Authenticator, Grant, Role};
use std::sync::OnceLock;

const SECRET: &str = "fuzz-secret-0123456789-0123456789-0123456789";

fn verifier() -> &'static Authenticator {
    static V: OnceLock<Authenticator> = OnceLock::new();
    V.get_or_init(|| {
        Authenticator::new(&AuthSettings {
            hs256_secret: SECRET.into(),
            ..AuthSettings::default()
        })
        .expect("a verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // First line: the Authorization header; the rest: the query string.
    let (authorization, query) = text.split_once('\n').unwrap_or((text, ""));
    let query = Some(query);
    let ip = std::net::IpAddr::from([192, 0, 2, 1]);
    let named = auth::query_param(query, "peer");
    let said = auth::query_param(query, "incarnation");
    let Some(token) = Authenticator::token_of(Some(authorization), query) else {
        // No token: auth off, the peer names itself (bounded) or is its address.
        let open = Grant::unrestricted();
        let identity = auth::peer_identity(&open, named, ip);
        assert!(identity.len() <= 128 || identity == ip.to_string());
        assert!(auth::peer_incarnation(&open, said).len() <= 128);
        return;
    };
    let Ok(grant) = verifier().verify(token) else { return };
    assert!(!grant.subject.trim().is_empty(), "a verified token names somebody");
    assert_eq!(auth::peer_identity(&grant, named, ip), grant.subject);
    if grant.role == Role::Client {
        assert!(grant.allows_user(&grant.subject));
    }
});
