//! Authentication and authorization: JWT bearer tokens and what each role
//! may do. Off by default (every peer gets [`Grant::unrestricted`]).
//!
//! A token carries a subject, a role (`sfu`, `msu`, `client`, `admin`), the
//! rooms its holder may touch (exact ids or `*`) and an expiry. WebSocket
//! peers present it at the upgrade (`Authorization: Bearer` or `?token=`);
//! gRPC callers in the `authorization` metadata. The room service checks the
//! grant on every command, so both front ends enforce the same rules.

use crate::proto::{Command, command};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a token holder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A media server carrying users: every room command, no `register`.
    Sfu,
    /// A media server unit: `register`, `echo`, answers to `invite`.
    Msu,
    /// A single user's client: `join`, `push`, `textMessage`, `userLeave`, `echo`.
    Client,
    /// An operator: everything, including the gRPC operator RPCs.
    Admin,
}

/// The claims of a Pilot Center token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who holds the token.
    pub sub: String,
    /// What it may do.
    pub role: Role,
    /// Rooms it may touch: exact ids, or `*` for all.
    #[serde(default)]
    pub rooms: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Which process of the peer holds it (optional; see
    /// [`peer_incarnation`]): a token minted per boot says it here.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub incarnation: String,
}

/// What one authenticated peer may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Token subject (empty when auth is off).
    pub subject: String,
    /// Role.
    pub role: Role,
    /// Rooms; `None` means all.
    rooms: Option<Vec<String>>,
    /// When the token expires (Unix seconds); `None` without a token.
    expires_at: Option<u64>,
    /// The token's `incarnation` claim ("" when none).
    pub incarnation: String,
}

impl Grant {
    /// Everything allowed (authentication off).
    pub fn unrestricted() -> Self {
        Self {
            subject: String::new(),
            role: Role::Admin,
            rooms: None,
            expires_at: None,
            incarnation: String::new(),
        }
    }

    fn from_claims(c: Claims) -> Self {
        let all = c.rooms.iter().any(|r| r == "*");
        Self {
            subject: c.sub,
            role: c.role,
            rooms: (!all).then_some(c.rooms),
            expires_at: Some(c.exp),
            incarnation: c.incarnation,
        }
    }

    /// Whether the token behind this grant has expired at `now`: a session
    /// must not outlive its token (it is closed with 1008 "token expired").
    pub fn is_expired(&self, now: std::time::SystemTime) -> bool {
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.expires_at.is_some_and(|exp| now >= exp)
    }

    /// May this grant touch `room_id`?
    pub fn allows_room(&self, room_id: &str) -> bool {
        self.rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room_id))
    }

    /// Checks one command against the role and the rooms; the error is the
    /// reason given with protoo 403.
    pub fn permits(&self, cmd: &Command) -> Result<(), String> {
        use command::Kind as K;
        let Some(kind) = &cmd.kind else { return Ok(()) };
        let (name, room) = match kind {
            K::Echo(_) => return Ok(()),
            K::RegisterMsu(_) => ("register", None),
            K::Join(r) => ("join", Some(&r.room_id)),
            K::Push(r) => ("push", Some(&r.room_id)),
            K::PullRemoteStream(r) => ("pullRemoteStream", Some(&r.room_id)),
            K::UserDisconnect(r) => ("userDisconnect", Some(&r.room_id)),
            K::UserLeave(r) => ("userLeave", Some(&r.room_id)),
            K::TextMessage(r) => ("textMessage", Some(&r.room_id)),
            K::UserReconnect(r) => ("userReConnect", Some(&r.room_id)),
        };
        let allowed = match self.role {
            Role::Admin => true,
            Role::Sfu => name != "register",
            Role::Msu => name == "register",
            Role::Client => matches!(name, "join" | "push" | "textMessage" | "userLeave"),
        };
        if !allowed {
            return Err(format!("role {:?} may not {name}", self.role).to_lowercase());
        }
        match room {
            Some(room) if !self.allows_room(room) => {
                Err(format!("room {room} is outside this token's grant"))
            }
            _ => Ok(()),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("missing token")]
    Missing,
    /// The token is malformed, badly signed or expired.
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    /// The configured key could not be used.
    #[error("auth configuration: {0}")]
    Config(String),
}

/// `auth:` settings, as the verifier needs them.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// HS256 shared secret (may be empty when a public key is set).
    pub hs256_secret: String,
    /// PEM public key (RSA or EC) for RS256 / ES256 tokens.
    pub public_key_pem: Option<Vec<u8>>,
}

/// Verifies tokens with the configured keys.
pub struct Authenticator {
    keys: Vec<(DecodingKey, Validation)>,
}

fn validation(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = 5;
    v.set_required_spec_claims(&["exp", "sub"]);
    v
}

impl Authenticator {
    /// An authenticator for `settings`; at least one key is required.
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthError> {
        let mut keys = Vec::new();
        if !settings.hs256_secret.is_empty() {
            keys.push((
                DecodingKey::from_secret(settings.hs256_secret.as_bytes()),
                validation(Algorithm::HS256),
            ));
        }
        if let Some(pem) = &settings.public_key_pem {
            if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                keys.push((k, validation(Algorithm::RS256)));
            } else {
                let k = DecodingKey::from_ec_pem(pem).map_err(|e| {
                    AuthError::Config(format!("public key is neither RSA nor EC PEM: {e}"))
                })?;
                keys.push((k, validation(Algorithm::ES256)));
            }
        }
        if keys.is_empty() {
            return Err(AuthError::Config(
                "auth is enabled but neither hs256_secret nor public_key_path is set".into(),
            ));
        }
        Ok(Self { keys })
    }

    /// Checks a token (signature, expiry) and returns its grant.
    pub fn verify(&self, token: &str) -> Result<Grant, AuthError> {
        let alg = jsonwebtoken::decode_header(token)?.alg;
        let mut last = None;
        for (key, validation) in self
            .keys
            .iter()
            .filter(|(_, v)| v.algorithms.contains(&alg))
        {
            match jsonwebtoken::decode::<Claims>(token, key, validation) {
                Ok(data) => return Ok(Grant::from_claims(data.claims)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || AuthError::Invalid(jsonwebtoken::errors::ErrorKind::InvalidAlgorithm.into()),
            AuthError::Invalid,
        ))
    }

    /// The token of an HTTP upgrade: `Authorization: Bearer T` or `?token=T`.
    pub fn token_of<'a>(authorization: Option<&'a str>, query: Option<&'a str>) -> Option<&'a str> {
        if let Some(t) = authorization.and_then(bearer) {
            return Some(t);
        }
        query?
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="))
            .filter(|t| !t.is_empty())
    }
}

/// The longest peer name taken from `?peer=` or `x-peer-id`.
const MAX_PEER_NAME: usize = 128;

/// A peer's identity, which outlives its connection (PROTOCOL.md §6): the
/// token's subject when auth is on, else the name the peer gives itself
/// (`?peer=NAME` on the upgrade URL, `x-peer-id` on gRPC), else its IP
/// address. Users of an ended session wait for a session with the same one.
pub fn peer_identity(grant: &Grant, named: Option<&str>, ip: std::net::IpAddr) -> String {
    if !grant.subject.is_empty() {
        return grant.subject.clone();
    }
    match named.map(str::trim) {
        Some(name) if !name.is_empty() && name.len() <= MAX_PEER_NAME => name.to_owned(),
        _ => ip.to_string(),
    }
}

/// Which process of the peer a session is (issue 20): the token's
/// `incarnation` claim, else what the peer says (`?incarnation=ID` on the
/// upgrade URL, `x-peer-incarnation` on gRPC), else "" (none). A boot id
/// works: a restarted SFU gets a new one, and the center then knows its
/// former process, and that process's users, are gone.
pub fn peer_incarnation(grant: &Grant, said: Option<&str>) -> String {
    if !grant.incarnation.is_empty() {
        return grant.incarnation.clone();
    }
    match said.map(str::trim) {
        Some(id) if id.len() <= MAX_PEER_NAME => id.to_owned(),
        _ => String::new(),
    }
}

/// The value of `key` in a query string (`a=1&peer=sfu-1`), if present.
pub fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// The token in an `Authorization: Bearer T` value.
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Mints an HS256 token (the `token` subcommand).
pub fn mint(secret: &str, claims: &Claims) -> Result<String, AuthError> {
    if secret.is_empty() {
        return Err(AuthError::Config("minting needs auth.hs256_secret".into()));
    }
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Reads a PEM public key file.
pub fn read_key(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path)
        .map_err(|e| AuthError::Config(format!("cannot read {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn claims(role: Role, rooms: &[&str], exp: u64) -> Claims {
        Claims {
            sub: "t".into(),
            role,
            rooms: rooms.iter().map(|s| (*s).to_owned()).collect(),
            exp,
            incarnation: String::new(),
        }
    }

    fn far() -> u64 {
        crate::center::unix_ms(std::time::SystemTime::now()) / 1000 + 3600
    }

    #[test]
    fn hs256_round_trip_and_refusals() {
        let auth = Authenticator::new(&AuthSettings {
            hs256_secret: "s3cret".into(),
            public_key_pem: None,
        })
        .unwrap();
        let token = mint("s3cret", &claims(Role::Sfu, &["*"], far())).unwrap();
        assert_eq!(auth.verify(&token).unwrap().role, Role::Sfu);
        let forged = mint("other", &claims(Role::Admin, &["*"], far())).unwrap();
        assert!(auth.verify(&forged).is_err());
        let expired = mint("s3cret", &claims(Role::Sfu, &["*"], 1_000)).unwrap();
        assert!(auth.verify(&expired).is_err());
        assert!(auth.verify("garbage").is_err());
    }

    #[test]
    fn roles_and_rooms() {
        let join = |room: &str| proto::Command {
            kind: Some(command::Kind::Join(proto::JoinRequest {
                room_id: room.into(),
                user_id: "u".into(),
                ..Default::default()
            })),
        };
        let register = proto::Command {
            kind: Some(command::Kind::RegisterMsu(proto::RegisterMsuRequest {
                msu_id: "m".into(),
            })),
        };
        let client = Grant::from_claims(claims(Role::Client, &["a"], 0));
        assert!(client.permits(&join("a")).is_ok());
        assert!(client.permits(&join("b")).unwrap_err().contains("outside"));
        assert!(client.permits(&register).is_err());
        let msu = Grant::from_claims(claims(Role::Msu, &[], 0));
        assert!(msu.permits(&register).is_ok());
        assert!(msu.permits(&join("a")).is_err());
        assert!(
            Grant::from_claims(claims(Role::Sfu, &["*"], 0))
                .permits(&join("any"))
                .is_ok()
        );
    }

    #[test]
    fn token_sources() {
        assert_eq!(
            Authenticator::token_of(Some("Bearer abc"), None),
            Some("abc")
        );
        assert_eq!(
            Authenticator::token_of(None, Some("x=1&token=t2")),
            Some("t2")
        );
        assert_eq!(
            Authenticator::token_of(Some("Basic zzz"), Some("token=")),
            None
        );
    }
}
