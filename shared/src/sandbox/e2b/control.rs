//! E2B's control-plane REST API (`https://api.<domain>`, header `X-API-Key`):
//! the wire types, spelled as in E2B's `openapi.yml`, and one method per call.
//!
//! Each method makes exactly one request; retrying is the caller's business
//! (see `mod.rs`), because create and resume must take a rate-limit turn per
//! attempt. Request bodies may hold secrets (`envVars`), so none of the request
//! types implement `Debug`, and nothing here logs a body or a header.

use std::collections::BTreeMap;
use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::http::{Surface, status_error, transport_error};
use crate::sandbox::SandboxError;
use crate::secret::Secret;

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
pub(crate) const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `NewSandbox`: the body of `POST /sandboxes`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NewSandbox<'a> {
    #[serde(rename = "templateID")]
    pub template_id: &'a str,
    /// Seconds. Always sent: the API's default is 15 s.
    pub timeout: u32,
    pub auto_pause: bool,
    /// Ask for an `envdAccessToken`, so envd refuses requests without it.
    pub secure: bool,
    pub metadata: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub env_vars: &'a BTreeMap<String, String>,
    /// Sent only for a profile whose egress is restricted.
    #[serde(
        rename = "allow_internet_access",
        skip_serializing_if = "Option::is_none"
    )]
    pub allow_internet_access: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkConfig<'a>>,
}

/// `SandboxNetworkConfig`: the egress lists (empty lists are left out).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NetworkConfig<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub allow_out: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub deny_out: &'a [String],
}

/// `ConnectSandbox` and `SandboxTimeoutRequest`: `{"timeout": seconds}`.
#[derive(Serialize)]
struct TimeoutBody {
    timeout: u32,
}

/// `Sandbox`: what create and connect return.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(default)]
    pub alias: Option<String>,
    /// Deprecated in the spec; accepted when absent.
    #[serde(rename = "clientID", default)]
    pub client_id: Option<String>,
    pub envd_version: String,
    /// Present when the sandbox was created with `secure: true`.
    #[serde(default)]
    pub envd_access_token: Option<Secret>,
    #[serde(default)]
    pub traffic_access_token: Option<Secret>,
    /// `null`: use the configured domain.
    #[serde(default)]
    pub domain: Option<String>,
}

/// `SandboxState`, open to values added later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiSandboxState {
    Running,
    Paused,
    #[serde(other)]
    Other,
}

/// `SandboxLifecycle`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub auto_resume: bool,
    pub on_timeout: String,
}

/// `SandboxDetail`: what `GET /sandboxes/{id}` returns.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(default)]
    pub alias: Option<String>,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID", default)]
    pub client_id: Option<String>,
    pub started_at: String,
    pub end_at: String,
    pub envd_version: String,
    #[serde(default)]
    pub envd_access_token: Option<Secret>,
    #[serde(default)]
    pub allow_internet_access: Option<bool>,
    #[serde(default)]
    pub domain: Option<String>,
    pub cpu_count: i64,
    #[serde(rename = "memoryMB")]
    pub memory_mb: i64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: i64,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    pub state: ApiSandboxState,
    #[serde(default)]
    pub lifecycle: Option<Lifecycle>,
}

/// `ListedSandbox`: one item of `GET /v2/sandboxes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListedSandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(default)]
    pub alias: Option<String>,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID", default)]
    pub client_id: Option<String>,
    pub started_at: String,
    pub end_at: String,
    pub cpu_count: i64,
    #[serde(rename = "memoryMB")]
    pub memory_mb: i64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: i64,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    pub state: ApiSandboxState,
    pub envd_version: String,
}

/// `SandboxMetric`: one sample of `GET /sandboxes/{id}/metrics`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    /// Deprecated in the spec (`timestampUnix` replaces it); accepted when absent.
    #[serde(default)]
    pub timestamp: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp_unix: i64,
    pub cpu_count: i64,
    pub cpu_used_pct: f64,
    pub mem_used: i64,
    pub mem_total: i64,
    #[serde(default)]
    pub mem_cache: Option<i64>,
    #[serde(default)]
    pub disk_used: Option<i64>,
    #[serde(default)]
    pub disk_total: Option<i64>,
}

/// `Error`: the body of every control-plane error response.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiError {
    pub code: i64,
    pub message: String,
    #[serde(default)]
    pub error_code: Option<String>,
}

/// Query of `GET /v2/sandboxes`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ListQuery {
    /// `running`, `paused`; empty = both.
    pub states: Vec<&'static str>,
    pub metadata: BTreeMap<String, String>,
}

impl ListQuery {
    /// The query string, encoded as the spec says: `state` comma-separated
    /// (`style: form, explode: false`), `metadata` a URL-encoded `k=v&k2=v2`
    /// whose keys and values are URL-encoded themselves (so encoded twice).
    pub fn to_query(&self, next_token: Option<&str>) -> String {
        let mut parts = vec!["limit=100".to_string()];
        let states = if self.states.is_empty() {
            vec!["running", "paused"]
        } else {
            self.states.clone()
        };
        parts.push(format!("state={}", states.join(",")));
        if !self.metadata.is_empty() {
            let inner = self
                .metadata
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{}={}",
                        utf8_percent_encode(k, COMPONENT),
                        utf8_percent_encode(v, COMPONENT)
                    )
                })
                .collect::<Vec<_>>()
                .join("&");
            parts.push(format!(
                "metadata={}",
                utf8_percent_encode(&inner, COMPONENT)
            ));
        }
        if let Some(t) = next_token {
            parts.push(format!("nextToken={}", utf8_percent_encode(t, COMPONENT)));
        }
        parts.join("&")
    }
}

/// A client for one E2B account (one API key).
pub(crate) struct ControlPlane {
    http: reqwest::Client,
    base: String,
    api_key: HeaderValue,
}

impl ControlPlane {
    pub fn new(base: String, api_key: &Secret, timeout: Duration) -> Result<Self, SandboxError> {
        let mut api_key = HeaderValue::from_str(api_key.expose()).map_err(|_| {
            SandboxError::Invalid("E2B_API_KEY holds characters not allowed in a header".into())
        })?;
        // Keeps the value out of `Debug` output of headers and requests.
        api_key.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("dexter-fleet/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SandboxError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            base,
            api_key,
        })
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut headers = HeaderMap::new();
        headers.insert("X-API-Key", self.api_key.clone());
        headers.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("application/json"),
        );
        self.http
            .request(method, format!("{}{}", self.base, path))
            .headers(headers)
    }

    /// Send and turn every non-2xx answer into a [`SandboxError`]. Logged at
    /// TRACE with the call, the sandbox and the status; never headers or bodies.
    async fn send(
        &self,
        call: &str,
        sandbox: &str,
        rb: RequestBuilder,
    ) -> Result<Response, SandboxError> {
        let started = std::time::Instant::now();
        let resp = rb.send().await.map_err(|e| {
            let e = transport_error(call, e);
            tracing::trace!(call, sandbox, error = %e, "control-plane request failed");
            e
        })?;
        let status = resp.status();
        tracing::trace!(
            call,
            sandbox,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "control-plane request"
        );
        if status.is_success() {
            return Ok(resp);
        }
        Err(read_error(Surface::Control, call, resp).await)
    }

    async fn json<T: serde::de::DeserializeOwned>(
        call: &str,
        resp: Response,
    ) -> Result<T, SandboxError> {
        let bytes = resp.bytes().await.map_err(|e| transport_error(call, e))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            SandboxError::Unavailable(format!("{call}: unexpected response body: {e}"))
        })
    }

    /// `POST /sandboxes` → `201 Sandbox`.
    pub async fn create(&self, body: &NewSandbox<'_>) -> Result<Sandbox, SandboxError> {
        let resp = self
            .send(
                "create",
                "-",
                self.request(Method::POST, "/sandboxes").json(body),
            )
            .await?;
        Self::json("create", resp).await
    }

    /// `GET /sandboxes/{id}` → `200 SandboxDetail` (running or paused).
    pub async fn get(&self, id: &str) -> Result<SandboxDetail, SandboxError> {
        let resp = self
            .send(
                "get",
                id,
                self.request(Method::GET, &format!("/sandboxes/{id}")),
            )
            .await?;
        Self::json("get", resp).await
    }

    /// One page of `GET /v2/sandboxes`; the second value is `X-Next-Token`.
    pub async fn list_page(
        &self,
        query: &ListQuery,
        next_token: Option<&str>,
    ) -> Result<(Vec<ListedSandbox>, Option<String>), SandboxError> {
        let path = format!("/v2/sandboxes?{}", query.to_query(next_token));
        let resp = self
            .send("list", "-", self.request(Method::GET, &path))
            .await?;
        let next = resp
            .headers()
            .get("X-Next-Token")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        Ok((Self::json("list", resp).await?, next))
    }

    /// `DELETE /sandboxes/{id}`. `false`: it was already gone (404).
    pub async fn kill(&self, id: &str) -> Result<bool, SandboxError> {
        match self
            .send(
                "kill",
                id,
                self.request(Method::DELETE, &format!("/sandboxes/{id}")),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(SandboxError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `POST /sandboxes/{id}/timeout {"timeout": s}` → 204.
    pub async fn set_timeout(&self, id: &str, secs: u32) -> Result<(), SandboxError> {
        self.send(
            "set_timeout",
            id,
            self.request(Method::POST, &format!("/sandboxes/{id}/timeout"))
                .json(&TimeoutBody { timeout: secs }),
        )
        .await?;
        Ok(())
    }

    /// `POST /sandboxes/{id}/connect {"timeout": s}`: 200 when it was running, 201
    /// when it was resumed. The second value is "resumed".
    pub async fn connect(&self, id: &str, secs: u32) -> Result<(Sandbox, bool), SandboxError> {
        let resp = self
            .send(
                "connect",
                id,
                self.request(Method::POST, &format!("/sandboxes/{id}/connect"))
                    .json(&TimeoutBody { timeout: secs }),
            )
            .await?;
        let resumed = resp.status() == StatusCode::CREATED;
        Ok((Self::json("connect", resp).await?, resumed))
    }

    /// `GET /sandboxes/{id}/metrics?start=<unix s>` → `200 [SandboxMetric]`, the
    /// samples taken since `start` (E2B samples a running sandbox every few seconds).
    pub async fn metrics(&self, id: &str, start: u64) -> Result<Vec<SandboxMetric>, SandboxError> {
        let resp = self
            .send(
                "metrics",
                id,
                self.request(
                    Method::GET,
                    &format!("/sandboxes/{id}/metrics?start={start}"),
                ),
            )
            .await?;
        Self::json("metrics", resp).await
    }

    /// `POST /sandboxes/{id}/pause` → 204. `false`: it was already paused (409).
    ///
    /// No body: `SandboxPauseRequest` is optional and its only field (`memory`)
    /// defaults to a full snapshot, which is what we want.
    pub async fn pause(&self, id: &str) -> Result<bool, SandboxError> {
        match self
            .send(
                "pause",
                id,
                self.request(Method::POST, &format!("/sandboxes/{id}/pause")),
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(SandboxError::Conflict(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Read an error response (bounded by the client's timeout) and map it.
pub(crate) async fn read_error(surface: Surface, call: &str, resp: Response) -> SandboxError {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_default();
    status_error(surface, call, status, &headers, &body)
}

/// Seconds for the API: rounded up, at least 1 (the API refuses 0), at most `i32::MAX`.
pub(crate) fn api_seconds(d: Duration) -> u32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    secs.clamp(1, i32::MAX as u64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_encodes_states_and_metadata_twice() {
        let q = ListQuery {
            states: vec![],
            metadata: BTreeMap::from([
                ("a b".to_string(), "x&y=z".to_string()),
                ("k".to_string(), "v".to_string()),
            ]),
        };
        assert_eq!(
            q.to_query(Some("tok/1")),
            "limit=100&state=running,paused&metadata=a%2520b%3Dx%2526y%253Dz%26k%3Dv&nextToken=tok%2F1"
        );
    }

    #[test]
    fn seconds_round_up_and_never_reach_zero() {
        assert_eq!(api_seconds(Duration::ZERO), 1);
        assert_eq!(api_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(api_seconds(Duration::from_secs(300)), 300);
        assert_eq!(api_seconds(Duration::from_secs(u64::MAX)), i32::MAX as u32);
    }

    #[test]
    fn tokens_in_responses_do_not_reach_debug_output() {
        let s: Sandbox = serde_json::from_str(
            r#"{"templateID":"t","sandboxID":"i1","clientID":"c","envdVersion":"0.6.13",
                "envdAccessToken":"tok-very-secret","trafficAccessToken":null,"domain":null}"#,
        )
        .unwrap();
        assert_eq!(
            s.envd_access_token.as_ref().unwrap().expose(),
            "tok-very-secret"
        );
        assert!(!format!("{s:?}").contains("tok-very-secret"));
    }
}
