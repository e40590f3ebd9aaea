//! `GithubClient`: GitHub's REST API over reqwest, within its rate limits.
//!
//! Every request carries `Authorization: Bearer <token>` (a personal access token,
//! or a GitHub App installation token minted and refreshed by [`super::app`]),
//! `Accept: application/vnd.github+json`, `X-GitHub-Api-Version: 2022-11-28` and a
//! `User-Agent` (GitHub refuses requests without one).
//!
//! Rate limits, as GitHub documents them: a 403 or 429 with `retry-after` waits that
//! many seconds; else with `x-ratelimit-remaining: 0` it waits until
//! `x-ratelimit-reset` (epoch seconds); else, when GitHub says it is a (secondary)
//! rate limit, it waits at least a minute, doubling on each further hit. A wait
//! longer than `max_wait` is not slept through: the request fails as transient with
//! that `retry_after`, so the job queue retries the job at the right time instead of
//! holding a worker slot for an hour. Server errors and network errors of idempotent
//! requests are retried a few times with backoff; a POST is not (it may have landed).
//!
//! Pagination follows `Link: <…>; rel="next"`, and only to the API's own origin, so
//! the token never goes anywhere else. Tokens are [`Secret`]s and no header is ever
//! logged.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue, USER_AGENT};
use serde_json::Value;

use super::app::AppAuth;
use crate::error::JobError;
use crate::secret::Secret;

pub const API_VERSION: &str = "2022-11-28";
/// Attempts of one request that keeps hitting rate limits.
const RATE_LIMIT_ATTEMPTS: u32 = 6;
/// Attempts of an idempotent request that meets server or network errors.
const SERVER_ERROR_ATTEMPTS: u32 = 3;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Pages followed at most by one listing (100 items each).
const MAX_PAGES: usize = 100;

/// A failed GitHub call: the HTTP status when there was an answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct GithubError {
    pub status: Option<u16>,
    pub message: String,
    /// When to try again (rate limits).
    pub retry_after: Option<Duration>,
}

impl GithubError {
    fn new(status: Option<u16>, message: impl Into<String>) -> Self {
        GithubError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }
}

/// Rate limits, server errors and network errors are worth another attempt later;
/// other 4xx (bad credentials, no permission, validation) are not.
impl From<GithubError> for JobError {
    fn from(e: GithubError) -> JobError {
        let transient = match e.status {
            None => true,
            Some(s) => s >= 500 || s == 429 || e.retry_after.is_some(),
        };
        let err = if transient {
            JobError::transient(format!("GitHub: {}", e.message))
        } else {
            JobError::permanent(format!("GitHub: {}", e.message))
        };
        err.with_retry_after(e.retry_after)
    }
}

/// How the client authenticates.
#[derive(Clone)]
pub enum Auth {
    /// Unauthenticated (60 requests an hour; public data only).
    None,
    /// A personal access token (or any bearer token).
    Token(Secret),
    /// A GitHub App installation.
    App(Arc<AppAuth>),
}

/// The rate-limit policy (GitHub's numbers by default; tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct RateLimitPolicy {
    /// The first wait after a secondary rate limit; doubled on each further one.
    /// GitHub asks for at least a minute.
    pub secondary_wait: Duration,
    /// Longest wait slept through inside one request; longer ones fail the request
    /// (transient, with `retry_after`).
    pub max_wait: Duration,
}

impl Default for RateLimitPolicy {
    fn default() -> Self {
        RateLimitPolicy {
            secondary_wait: Duration::from_secs(60),
            max_wait: Duration::from_secs(15 * 60),
        }
    }
}

/// An answer: status, headers and the JSON body (`Null` when empty).
#[derive(Debug, Clone)]
pub struct GithubResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Clone)]
pub struct GithubClient {
    http: reqwest::Client,
    api_url: String,
    auth: Auth,
    user_agent: String,
    policy: RateLimitPolicy,
}

impl std::fmt::Debug for GithubClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubClient")
            .field("api_url", &self.api_url)
            .finish_non_exhaustive()
    }
}

/// What a 403/429 asks of the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limited {
    /// Wait this long, then try again.
    For(Duration),
    /// A secondary rate limit without a time: back off exponentially from a minute.
    Secondary,
}

/// GitHub's documented order: `retry-after`, then `x-ratelimit-remaining: 0` with
/// `x-ratelimit-reset`, then a secondary limit (a 429, or a 403 that says "rate
/// limit"). `None`: not a rate limit (a 403 for missing permissions).
pub(crate) fn rate_limited(
    status: u16,
    headers: &HeaderMap,
    body: &str,
    now_epoch_secs: u64,
) -> Option<Limited> {
    if status != 403 && status != 429 {
        return None;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Limited::For(Duration::from_secs(secs)));
    }
    if header("x-ratelimit-remaining") == Some("0")
        && let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())
    {
        // A reset already passed (clocks differ a little) still gets a second.
        return Some(Limited::For(Duration::from_secs(
            reset.saturating_sub(now_epoch_secs).max(1),
        )));
    }
    if status == 429 || body.to_ascii_lowercase().contains("rate limit") {
        return Some(Limited::Secondary);
    }
    None
}

/// The `rel="next"` URL of a `Link` header.
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| {
                url.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

fn now_epoch_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl GithubClient {
    /// A client for `api_url` (`https://api.github.com`, or a GitHub Enterprise
    /// Server's `https://host/api/v3`).
    pub fn new(api_url: &str, auth: Auth, user_agent: &str) -> Result<GithubClient, GithubError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            // A redirect to another host would carry the token there.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| GithubError::new(None, format!("building the HTTP client: {e}")))?;
        if user_agent.trim().is_empty() {
            return Err(GithubError::new(
                None,
                "github.user_agent must not be empty: GitHub refuses requests without one",
            ));
        }
        Ok(GithubClient {
            http,
            api_url: api_url.trim_end_matches('/').to_string(),
            auth,
            user_agent: user_agent.to_string(),
            policy: RateLimitPolicy::default(),
        })
    }

    pub fn with_policy(mut self, policy: RateLimitPolicy) -> GithubClient {
        self.policy = policy;
        self
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// The bearer token of the next request (an App's installation token is minted
    /// or refreshed here when needed).
    async fn bearer(&self) -> Result<Option<Secret>, GithubError> {
        match &self.auth {
            Auth::None => Ok(None),
            Auth::Token(t) => Ok(Some(t.clone())),
            Auth::App(app) => app.installation_token(self).await.map(Some),
        }
    }

    /// One API call: `path` is relative to the API URL (`/repos/o/r`).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<GithubResponse, GithubError> {
        let bearer = self.bearer().await?;
        let url = format!("{}{path}", self.api_url);
        self.execute(method, &url, body, bearer.as_ref()).await
    }

    pub async fn get(&self, path: &str) -> Result<Value, GithubError> {
        Ok(self.request(Method::GET, path, None).await?.body)
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, GithubError> {
        Ok(self.request(Method::POST, path, Some(body)).await?.body)
    }

    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, GithubError> {
        Ok(self.request(Method::PUT, path, Some(body)).await?.body)
    }

    pub async fn patch(&self, path: &str, body: &Value) -> Result<Value, GithubError> {
        Ok(self.request(Method::PATCH, path, Some(body)).await?.body)
    }

    /// Every item of a listing, page after page (`per_page=100`, `Link` rel="next").
    pub async fn get_all(&self, path: &str) -> Result<Vec<Value>, GithubError> {
        let bearer = self.bearer().await?;
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut url = format!("{}{path}{sep}per_page=100", self.api_url);
        let mut items = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .execute(Method::GET, &url, None, bearer.as_ref())
                .await?;
            match page.body {
                Value::Array(list) => items.extend(list),
                other => {
                    return Err(GithubError::new(
                        Some(page.status),
                        format!("expected a list from {path}, got {}", kind_of(&other)),
                    ));
                }
            }
            match next_link(&page.headers) {
                // The token goes to the API's own origin only.
                Some(next) if next.starts_with(&format!("{}/", self.api_url)) => url = next,
                Some(next) => {
                    tracing::warn!(%next, "GitHub pagination pointed away from the API URL; stopping there");
                    break;
                }
                None => break,
            }
        }
        Ok(items)
    }

    /// Send with rate limits waited out and idempotent requests retried on server
    /// and network errors. `bearer` is `None` for unauthenticated calls.
    pub(crate) async fn execute(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
        bearer: Option<&Secret>,
    ) -> Result<GithubResponse, GithubError> {
        let idempotent = method != Method::POST;
        let mut secondary_hits = 0u32;
        let mut limited_attempts = 0u32;
        let mut server_attempts = 0u32;
        // Only the path is logged: query strings and headers are not.
        let path = url
            .strip_prefix(&self.api_url)
            .unwrap_or(url)
            .split('?')
            .next()
            .unwrap_or("")
            .to_string();
        loop {
            let mut request = self
                .http
                .request(method.clone(), url)
                .header(ACCEPT, "application/vnd.github+json")
                .header("X-GitHub-Api-Version", API_VERSION)
                .header(USER_AGENT, &self.user_agent);
            if let Some(token) = bearer {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| {
                        GithubError::new(None, "the GitHub token holds characters a header cannot")
                    })?;
                value.set_sensitive(true);
                request = request.header(AUTHORIZATION, value);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => {
                    server_attempts += 1;
                    let message = format!("{method} {path}: {}", without_url(&e));
                    if idempotent && server_attempts < SERVER_ERROR_ATTEMPTS {
                        tracing::debug!(%message, "GitHub request failed; retrying");
                        tokio::time::sleep(backoff(server_attempts)).await;
                        continue;
                    }
                    return Err(GithubError::new(None, message));
                }
            };
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let text = response.text().await.unwrap_or_default();
            tracing::debug!(%method, %path, status, "GitHub call");
            if (200..300).contains(&status) {
                let body = if text.trim().is_empty() {
                    Value::Null
                } else {
                    serde_json::from_str(&text).map_err(|e| {
                        GithubError::new(
                            Some(status),
                            format!("{method} {path}: the answer is not JSON: {e}"),
                        )
                    })?
                };
                return Ok(GithubResponse {
                    status,
                    headers,
                    body,
                });
            }
            if let Some(limit) = rate_limited(status, &headers, &text, now_epoch_secs()) {
                limited_attempts += 1;
                let wait = match limit {
                    Limited::For(wait) => wait,
                    Limited::Secondary => {
                        secondary_hits += 1;
                        self.policy
                            .secondary_wait
                            .saturating_mul(1 << (secondary_hits - 1).min(10))
                    }
                };
                if wait > self.policy.max_wait || limited_attempts >= RATE_LIMIT_ATTEMPTS {
                    let mut err = GithubError::new(
                        Some(status),
                        format!(
                            "{method} {path}: rate limited (try again in {}s)",
                            wait.as_secs()
                        ),
                    );
                    err.retry_after = Some(wait);
                    return Err(err);
                }
                tracing::warn!(%method, %path, status, wait_ms = wait.as_millis() as u64, "GitHub rate limit; waiting");
                tokio::time::sleep(wait).await;
                continue;
            }
            if status >= 500 && idempotent && server_attempts + 1 < SERVER_ERROR_ATTEMPTS {
                server_attempts += 1;
                tokio::time::sleep(backoff(server_attempts)).await;
                continue;
            }
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_else(|| text.chars().take(200).collect());
            return Err(GithubError::new(
                Some(status),
                format!("{method} {path}: {status} {detail}"),
            ));
        }
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1 << attempt.min(6)))
}

/// A reqwest error's text without its URL (which names the API host only, but
/// keeps messages short and stable).
fn without_url(e: &reqwest::Error) -> String {
    let mut e = e.to_string();
    if let Some(i) = e.find(" for url (") {
        e.truncate(i);
    }
    e
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Object(_) => "an object",
        Value::Array(_) => "a list",
        _ => "a value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn rate_limits_in_githubs_documented_order() {
        let now = 1_000_000;
        assert_eq!(
            rate_limited(429, &headers(&[("retry-after", "7")]), "", now),
            Some(Limited::For(Duration::from_secs(7)))
        );
        assert_eq!(
            rate_limited(
                403,
                &headers(&[
                    ("x-ratelimit-remaining", "0"),
                    ("x-ratelimit-reset", "1000042")
                ]),
                "",
                now
            ),
            Some(Limited::For(Duration::from_secs(42)))
        );
        assert_eq!(
            rate_limited(
                403,
                &headers(&[]),
                r#"{"message":"You have exceeded a secondary rate limit"}"#,
                now
            ),
            Some(Limited::Secondary)
        );
        assert_eq!(
            rate_limited(429, &headers(&[]), "", now),
            Some(Limited::Secondary)
        );
        assert_eq!(
            rate_limited(
                403,
                &headers(&[("x-ratelimit-remaining", "4999")]),
                r#"{"message":"Resource not accessible by integration"}"#,
                now
            ),
            None,
            "a permission 403 is not a rate limit"
        );
        assert_eq!(rate_limited(404, &headers(&[]), "", now), None);
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let h = headers(&[(
            "link",
            r#"<https://api.github.com/repositories/1/issues?page=2>; rel="next", <https://api.github.com/repositories/1/issues?page=5>; rel="last""#,
        )]);
        assert_eq!(
            next_link(&h).as_deref(),
            Some("https://api.github.com/repositories/1/issues?page=2")
        );
        let last = headers(&[(
            "link",
            r#"<https://api.github.com/x?page=1>; rel="first", <https://api.github.com/x?page=1>; rel="prev""#,
        )]);
        assert_eq!(next_link(&last), None);
    }

    #[test]
    fn rate_limits_and_server_errors_are_transient_other_4xx_permanent() {
        use crate::error::ErrorClass;
        let mut limited = GithubError::new(Some(403), "limited");
        limited.retry_after = Some(Duration::from_secs(30));
        let e: JobError = limited.into();
        assert_eq!(e.class, ErrorClass::Transient);
        assert_eq!(e.retry_after, Some(Duration::from_secs(30)));
        let e: JobError = GithubError::new(Some(401), "Bad credentials").into();
        assert_eq!(e.class, ErrorClass::Permanent);
        let e: JobError = GithubError::new(Some(502), "bad gateway").into();
        assert_eq!(e.class, ErrorClass::Transient);
    }
}
