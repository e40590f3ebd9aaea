//! GitHub App authentication: a JWT signed with the app's private key (RS256) buys
//! an installation token (`POST /app/installations/{id}/access_tokens`), which lasts
//! an hour. The token is kept and minted again five minutes before it expires, so
//! no request goes out with a token about to lapse.
//!
//! The key is read from a file (PEM, PKCS#1 `RSA PRIVATE KEY` as GitHub hands it
//! out, or PKCS#8 `PRIVATE KEY`); neither key nor tokens are ever logged.

use std::time::Duration;

use base64::Engine as _;
use reqwest::Method;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use serde_json::json;
use tokio::sync::Mutex;

use super::client::{GithubClient, GithubError};
use crate::secret::Secret;

/// A token is minted again when it has less than this left.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// The JWT is backdated a minute against clock drift and lives nine (GitHub's cap is ten).
const JWT_BACKDATE_SECS: u64 = 60;
const JWT_LIFETIME_SECS: u64 = 9 * 60;

pub struct AppAuth {
    app_id: u64,
    installation_id: u64,
    key: RsaKeyPair,
    /// The current installation token and when it expires (epoch seconds).
    token: Mutex<Option<(Secret, u64)>>,
}

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuth")
            .field("app_id", &self.app_id)
            .field("installation_id", &self.installation_id)
            .finish_non_exhaustive()
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn now_epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl AppAuth {
    /// From the PEM text of the app's private key.
    pub fn from_pem(app_id: u64, installation_id: u64, pem: &str) -> Result<AppAuth, String> {
        let pkcs8 = pem.contains("BEGIN PRIVATE KEY");
        let body: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| "the GitHub App private key is not PEM".to_string())?;
        let key = if pkcs8 {
            RsaKeyPair::from_pkcs8(&der)
        } else {
            RsaKeyPair::from_der(&der)
        }
        .map_err(|e| format!("the GitHub App private key is not an RSA key: {e}"))?;
        Ok(AppAuth {
            app_id,
            installation_id,
            key,
            token: Mutex::new(None),
        })
    }

    /// The app's JWT at `now` (epoch seconds): `{iat, exp, iss}` signed RS256.
    pub fn jwt(&self, now: u64) -> Result<String, String> {
        let header = b64url(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = b64url(
            json!({
                "iat": now.saturating_sub(JWT_BACKDATE_SECS),
                "exp": now + JWT_LIFETIME_SECS,
                "iss": self.app_id.to_string(),
            })
            .to_string()
            .as_bytes(),
        );
        let signing_input = format!("{header}.{claims}");
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                signing_input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| "signing the GitHub App JWT failed".to_string())?;
        Ok(format!("{signing_input}.{}", b64url(&signature)))
    }

    /// The public key (PKCS#1 DER), for tests that check the signature.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.public().as_ref().to_vec()
    }

    /// A valid installation token, minted when there is none or it expires soon.
    pub async fn installation_token(&self, client: &GithubClient) -> Result<Secret, GithubError> {
        let mut cached = self.token.lock().await;
        let now = now_epoch_secs();
        if let Some((token, expires_at)) = cached.as_ref()
            && now + REFRESH_BEFORE_EXPIRY.as_secs() < *expires_at
        {
            return Ok(token.clone());
        }
        let jwt = Secret::new(self.jwt(now).map_err(|m| GithubError {
            status: None,
            message: m,
            retry_after: None,
        })?);
        let url = format!(
            "{}/app/installations/{}/access_tokens",
            client.api_url(),
            self.installation_id
        );
        let answer = client.execute(Method::POST, &url, None, Some(&jwt)).await?;
        let token = answer.body["token"].as_str().unwrap_or_default();
        let expires_at = answer.body["expires_at"]
            .as_str()
            .and_then(parse_utc)
            .unwrap_or(now + 3600);
        if token.is_empty() {
            return Err(GithubError {
                status: Some(answer.status),
                message: "GitHub minted no installation token".into(),
                retry_after: None,
            });
        }
        tracing::info!(
            installation_id = self.installation_id,
            expires_in_secs = expires_at.saturating_sub(now),
            "GitHub App installation token minted"
        );
        let token = Secret::new(token);
        *cached = Some((token.clone(), expires_at));
        Ok(token)
    }
}

/// `2016-07-11T22:14:10Z` → epoch seconds (UTC only, as GitHub writes them).
pub fn parse_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time
        .split(':')
        .map(|p| p.split('.').next()?.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    u64::try_from(days * 86400 + hh * 3600 + mm * 60 + ss).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_as_github_writes_them() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_utc("2016-07-11T22:14:10Z"), Some(1468275250));
        assert_eq!(parse_utc("2026-12-01T18:30:00Z"), Some(1796149800));
        assert_eq!(parse_utc("not a time"), None);
    }
}
