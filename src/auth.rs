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
    /// For a `client` token: further user ids it may speak for, besides
    /// `sub` (a client speaks for its own user only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
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
    /// For a `client` token: the user ids it speaks for (`sub` and the
    /// `users` claim); `None`: any (other roles, or auth off).
    users: Option<Vec<String>>,
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
            users: None,
        }
    }

    fn from_claims(c: Claims) -> Self {
        let all = c.rooms.iter().any(|r| r == "*");
        let users = (c.role == Role::Client).then(|| {
            let mut users = c.users.clone();
            users.push(c.sub.clone());
            users
        });
        Self {
            users,
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

    /// Whether this grant came from a token (auth on): then the token alone
    /// says who the peer is.
    pub fn is_token(&self) -> bool {
        self.expires_at.is_some()
    }

    /// May this grant speak for user `user_id`? A `client` token speaks for
    /// its `sub` (and its `users` claim) only; other roles for any user
    /// (the rules then check who holds it).
    pub fn allows_user(&self, user_id: &str) -> bool {
        self.users
            .as_ref()
            .is_none_or(|users| users.iter().any(|u| u == user_id))
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
        // The user each command speaks for (a pull names the user it asks
        // of, and speaks for nobody).
        let (name, room, user) = match kind {
            K::Echo(_) => return Ok(()),
            K::RegisterMsu(_) => ("register", None, None),
            K::RelayStats(_) => ("relayStats", None, None),
            K::RecordingStatus(_) => ("recordingStatus", None, None),
            K::PlaybackEnded(_) => ("playbackEnded", None, None),
            K::Join(r) => ("join", Some(&r.room_id), Some(&r.user_id)),
            K::Push(r) => ("push", Some(&r.room_id), Some(&r.user_id)),
            K::PullRemoteStream(r) => ("pullRemoteStream", Some(&r.room_id), None),
            K::UserDisconnect(r) => ("userDisconnect", Some(&r.room_id), Some(&r.user_id)),
            K::UserLeave(r) => ("userLeave", Some(&r.room_id), Some(&r.user_id)),
            K::TextMessage(r) => ("textMessage", Some(&r.room_id), Some(&r.user_id)),
            K::UserReconnect(r) => ("userReConnect", Some(&r.room_id), Some(&r.user_id)),
        };
        let allowed = match self.role {
            Role::Admin => true,
            Role::Sfu => !matches!(
                name,
                "register" | "relayStats" | "recordingStatus" | "playbackEnded"
            ),
            // An MSU joins and publishes the users it plays back.
            Role::Msu => matches!(
                name,
                "register"
                    | "relayStats"
                    | "recordingStatus"
                    | "playbackEnded"
                    | "join"
                    | "push"
                    | "userLeave"
            ),
            Role::Client => matches!(name, "join" | "push" | "textMessage" | "userLeave"),
        };
        if !allowed {
            return Err(format!("role {:?} may not {name}", self.role).to_lowercase());
        }
        if let Some(room) = room
            && !self.allows_room(room)
        {
            return Err(format!("room {room} is outside this token's grant"));
        }
        match user {
            Some(user) if !self.allows_user(user) => {
                Err(format!("user {user} is not this token's to speak for"))
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
    /// The token names nobody (`sub` empty): with auth on the token alone
    /// says who a peer is.
    #[error("invalid token: empty sub")]
    EmptySubject,
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
    /// A JWKS document (`{"keys": [...]}`) of RSA or EC public keys.
    pub jwks_json: Option<Vec<u8>>,
    /// A token must carry this `aud` ("": not checked).
    pub audience: String,
    /// A token must carry this `iss` ("": not checked).
    pub issuer: String,
}

/// Verifies tokens with the configured keys.
pub struct Authenticator {
    keys: Vec<(DecodingKey, Validation)>,
}

fn validation(alg: Algorithm, settings: &AuthSettings) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = 5;
    let mut required = vec!["exp", "sub"];
    if settings.audience.is_empty() {
        v.validate_aud = false;
    } else {
        v.set_audience(&[&settings.audience]);
        required.push("aud");
    }
    if !settings.issuer.is_empty() {
        v.set_issuer(&[&settings.issuer]);
        required.push("iss");
    }
    v.set_required_spec_claims(&required);
    v
}

/// The keys of a JWKS document, each with the algorithm it verifies.
fn jwks_keys(json: &[u8]) -> Result<Vec<(DecodingKey, Algorithm)>, AuthError> {
    use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
    let set: JwkSet = serde_json::from_slice(json)
        .map_err(|e| AuthError::Config(format!("jwks: not a JWKS document: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            // Shared secrets do not belong in a key file.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk)
            .map_err(|e| AuthError::Config(format!("jwks: unusable key: {e}")))?;
        keys.push((key, alg));
    }
    if keys.is_empty() {
        return Err(AuthError::Config("jwks: no RSA or EC key".into()));
    }
    Ok(keys)
}

impl Authenticator {
    /// An authenticator for `settings`; at least one key is required.
    pub fn new(settings: &AuthSettings) -> Result<Self, AuthError> {
        let mut keys = Vec::new();
        if !settings.hs256_secret.is_empty() {
            keys.push((
                DecodingKey::from_secret(settings.hs256_secret.as_bytes()),
                validation(Algorithm::HS256, settings),
            ));
        }
        if let Some(pem) = &settings.public_key_pem {
            if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                keys.push((k, validation(Algorithm::RS256, settings)));
            } else {
                let k = DecodingKey::from_ec_pem(pem).map_err(|e| {
                    AuthError::Config(format!("public key is neither RSA nor EC PEM: {e}"))
                })?;
                keys.push((k, validation(Algorithm::ES256, settings)));
            }
        }
        if let Some(json) = &settings.jwks_json {
            for (k, alg) in jwks_keys(json)? {
                keys.push((k, validation(alg, settings)));
            }
        }
        if keys.is_empty() {
            return Err(AuthError::Config(
                "auth is enabled but none of hs256_secret, public_key_path, jwks_path is set"
                    .into(),
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
                Ok(data) if data.claims.sub.trim().is_empty() => {
                    return Err(AuthError::EmptySubject);
                }
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
    // With auth on, a name the peer gives itself could claim another
    // peer's users: the token alone says who it is (its `sub` is never
    // empty, see `Authenticator::verify`).
    if grant.is_token() || !grant.subject.is_empty() {
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
            users: Vec::new(),
            exp,
            incarnation: String::new(),
        }
    }

    fn far() -> u64 {
        crate::clock::unix_ms(std::time::SystemTime::now()) / 1000 + 3600
    }

    #[test]
    fn hs256_round_trip_and_refusals() {
        let auth = Authenticator::new(&AuthSettings {
            hs256_secret: "s3cret".into(),
            ..AuthSettings::default()
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
                ..Default::default()
            })),
        };
        let client = Grant::from_claims(claims(Role::Client, &["a"], 0));
        assert!(
            client
                .permits(&join("a"))
                .unwrap_err()
                .contains("not this token's")
        );
        let own = proto::Command {
            kind: Some(command::Kind::Join(proto::JoinRequest {
                room_id: "a".into(),
                user_id: "t".into(),
                ..Default::default()
            })),
        };
        assert!(client.permits(&own).is_ok());
        let mut more = claims(Role::Client, &["*"], 0);
        more.users = vec!["u".into()];
        assert!(Grant::from_claims(more).permits(&join("b")).is_ok());
        assert!(client.permits(&join("b")).unwrap_err().contains("outside"));
        assert!(client.permits(&register).is_err());
        let msu = Grant::from_claims(claims(Role::Msu, &[], 0));
        assert!(msu.permits(&register).is_ok());
        assert!(msu.permits(&join("a")).is_err());
        // An MSU joins the users it plays back, in the rooms it is granted.
        let playing = Grant::from_claims(claims(Role::Msu, &["*"], 0));
        assert!(playing.permits(&join("a")).is_ok());
        let pull = Command {
            kind: Some(command::Kind::PullRemoteStream(Default::default())),
        };
        assert!(playing.permits(&pull).unwrap_err().contains("may not"));
        assert!(
            Grant::from_claims(claims(Role::Sfu, &["*"], 0))
                .permits(&join("any"))
                .is_ok()
        );
    }

    #[test]
    fn a_token_naming_nobody_is_refused() {
        let auth = Authenticator::new(&AuthSettings {
            hs256_secret: "s3cret".into(),
            ..AuthSettings::default()
        })
        .unwrap();
        let mut c = claims(Role::Sfu, &["*"], far());
        c.sub = " ".into();
        let token = mint("s3cret", &c).unwrap();
        assert!(matches!(auth.verify(&token), Err(AuthError::EmptySubject)));
        // And a token's subject is the identity, whatever the peer says.
        let grant = auth
            .verify(&mint("s3cret", &claims(Role::Sfu, &["*"], far())).unwrap())
            .unwrap();
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        assert_eq!(peer_identity(&grant, Some("sfu-victim"), ip), "t");
        assert_eq!(
            peer_identity(&Grant::unrestricted(), Some("sfu-1"), ip),
            "sfu-1"
        );
    }

    #[derive(Serialize)]
    struct Scoped<'a> {
        sub: &'a str,
        role: Role,
        exp: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        aud: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        iss: Option<&'a str>,
    }

    #[test]
    fn audience_and_issuer_are_checked_when_configured() {
        let auth = Authenticator::new(&AuthSettings {
            hs256_secret: "s3cret".into(),
            audience: "pilot".into(),
            issuer: "https://id.example".into(),
            ..AuthSettings::default()
        })
        .unwrap();
        let sign = |aud, iss| {
            let c = Scoped {
                sub: "sfu-1",
                role: Role::Sfu,
                exp: far(),
                aud,
                iss,
            };
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &c,
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        assert!(
            auth.verify(&sign(Some("pilot"), Some("https://id.example")))
                .is_ok()
        );
        for (aud, iss) in [
            (None, Some("https://id.example")),
            (Some("other"), Some("https://id.example")),
            (Some("pilot"), None),
            (Some("pilot"), Some("https://evil.example")),
        ] {
            assert!(auth.verify(&sign(aud, iss)).is_err(), "{aud:?} {iss:?}");
        }
    }

    /// Base64url without padding (JWK coordinates).
    fn b64url(bytes: &[u8]) -> String {
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(A[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    }

    #[test]
    fn es256_tokens_verify_against_a_jwks_file() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = key.public_key_raw();
        let (x, y) = point[1..].split_at(32);
        let jwks = format!(
            r#"{{"keys": [{{"kty": "EC", "crv": "P-256", "kid": "k1", "x": "{}", "y": "{}"}}]}}"#,
            b64url(x),
            b64url(y)
        );
        let auth = Authenticator::new(&AuthSettings {
            jwks_json: Some(jwks.into_bytes()),
            ..AuthSettings::default()
        })
        .unwrap();
        let signing = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims(Role::Sfu, &["*"], far()),
            &signing,
        )
        .unwrap();
        assert_eq!(auth.verify(&token).unwrap().subject, "t");
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims(Role::Admin, &["*"], far()),
            &EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(auth.verify(&forged).is_err());
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
