//! Dashboard sessions. Logging in with a token opens one: a random 256-bit ID in an
//! `HttpOnly`, `SameSite=Strict` cookie, and in Redis (under the SHA-256 of that ID,
//! so a copy of Redis holds no usable cookie) the token's name and a CSRF token, for
//! `api.session_ttl_secs`. The token itself is kept nowhere. The session's role is
//! the named token's role in the settings of the moment: a token removed from them
//! ends its sessions.

use axum::http::header::COOKIE;
use axum::http::{HeaderMap, HeaderValue};
use fleet_shared::settings::{ApiCredential, ApiSettings};
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::api::ApiError;
use crate::api::ApiState;

/// The session cookie's name.
pub const COOKIE_NAME: &str = "fleet_session";
/// The header a state-changing request with the session cookie must carry: the
/// session's CSRF token (`GET /ui/session` gives it to the dashboard's script).
pub const CSRF_HEADER: &str = "x-csrf-token";

/// What Redis holds for a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The name of the token that logged in (`api.tokens`, or "default").
    pub name: String,
    /// Sent back in `X-CSRF-Token` on every action.
    pub csrf: String,
}

impl Session {
    /// Whether a request's `X-CSRF-Token` is this session's, compared in constant time.
    pub fn csrf_matches(&self, headers: &HeaderMap) -> bool {
        let mut given = headers.get_all(CSRF_HEADER).iter();
        match (given.next(), given.next()) {
            (Some(v), None) => bool::from(v.as_bytes().ct_eq(self.csrf.as_bytes())),
            _ => false,
        }
    }

    /// The credential this session stands for, if the settings still have it.
    pub fn credential<'a>(&self, api: &'a ApiSettings) -> Option<&'a ApiCredential> {
        api.credentials.iter().find(|c| c.name == self.name)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 256 random bits, in hex.
fn random_token() -> String {
    hex(&rand::random::<[u8; 32]>())
}

/// The session ID the request's cookie names (the first `fleet_session`), if it looks
/// like one.
pub fn cookie_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn key(state: &ApiState, id: &str) -> String {
    format!(
        "{}:ui:session:{}",
        state.ctx.settings.redis.key_prefix,
        hex(&Sha256::digest(id.as_bytes()))
    )
}

/// Open a session for `credential`: its ID (for the cookie).
pub async fn open(state: &ApiState, credential: &ApiCredential) -> Result<String, ApiError> {
    let id = random_token();
    let session = Session {
        name: credential.name.clone(),
        csrf: random_token(),
    };
    let value = serde_json::to_string(&session).map_err(anyhow::Error::from)?;
    let ttl = state.ctx.settings.api.session_ttl_secs;
    let mut conn = state.queues().await?.research.connection();
    let key = key(state, &id);
    state
        .redis(async move {
            let () = conn.set_ex(key, value, ttl).await?;
            Ok(())
        })
        .await?;
    Ok(id)
}

/// The session a cookie names, if it is open.
pub async fn load(state: &ApiState, id: &str) -> Result<Option<Session>, ApiError> {
    let mut conn = state.queues().await?.research.connection();
    let key = key(state, id);
    let value: Option<String> = state.redis(async move { Ok(conn.get(key).await?) }).await?;
    Ok(value.and_then(|v| serde_json::from_str(&v).ok()))
}

/// End a session.
pub async fn close(state: &ApiState, id: &str) -> Result<(), ApiError> {
    let mut conn = state.queues().await?.research.connection();
    let key = key(state, id);
    state
        .redis(async move {
            let _: u64 = conn.del(key).await?;
            Ok(())
        })
        .await
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(api: &ApiSettings, id: &str) -> HeaderValue {
    let secure = if api.session_cookie_secure {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{COOKIE_NAME}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        api.session_ttl_secs
    ))
    .expect("a cookie of hex digits and plain words")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("fleet_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_must_look_like_an_id() {
        let id = "ab".repeat(32);
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_str(&format!("theme=dark; {COOKIE_NAME}={id}; x=1")).unwrap(),
        );
        assert_eq!(cookie_id(&h).as_deref(), Some(id.as_str()));
        h.insert(
            COOKIE,
            HeaderValue::from_static("fleet_session=not-an-id; other=1"),
        );
        assert_eq!(cookie_id(&h), None);
        assert_eq!(cookie_id(&HeaderMap::new()), None);
    }

    #[test]
    fn csrf_needs_exactly_one_matching_header() {
        let s = Session {
            name: "default".into(),
            csrf: "c".repeat(64),
        };
        let mut h = HeaderMap::new();
        assert!(!s.csrf_matches(&h));
        h.insert(CSRF_HEADER, HeaderValue::from_str(&"c".repeat(64)).unwrap());
        assert!(s.csrf_matches(&h));
        h.append(CSRF_HEADER, HeaderValue::from_static("other"));
        assert!(!s.csrf_matches(&h), "two headers");
        h.insert(CSRF_HEADER, HeaderValue::from_static("wrong"));
        assert!(!s.csrf_matches(&h));
    }
}
