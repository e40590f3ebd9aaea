//! Settings: `config/default.toml` (compiled in), an optional file, then
//! `FLEET_<SECTION>__<KEY>` environment variables (a `.env` file is read first).
//!
//! Unknown keys are errors, and every error names the key it is about, so a typo
//! in a config file is caught at start rather than silently ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::job::{Limits, QueueKind};
use crate::secret::Secret;

/// The defaults, exactly as shipped in `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub default_agent: String,
    pub redis: RedisSettings,
    pub queue: QueueSettings,
    pub worker: WorkerSettings,
    pub pool: PoolSettings,
    pub sandbox: SandboxSettings,
    pub api: ApiSettings,
    /// Live events of attempts (`crate::events`).
    pub events: crate::events::EventsSettings,
    pub agents: BTreeMap<String, AgentProfile>,
    /// The model gateway (`[gateway]`, see `gateway::config`).
    #[serde(default)]
    pub gateway: crate::gateway::config::GatewaySettings,
    /// Large results and the result cache (`[results]`).
    pub results: ResultsSettings,
    /// GitHub: client, webhooks, research from issues, published reports (`[github]`).
    pub github: GithubSettings,
}

/// `[results]`: where large answers go, and the result cache (`results/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsSettings {
    /// Most bytes of an agent's output kept per job; the rest is cut while it is read.
    pub max_bytes: usize,
    /// Answers longer than this are stored outside the job's hash, in chunks.
    pub inline_bytes: usize,
    /// Size of one stored chunk.
    pub chunk_bytes: usize,
    /// How long a cached result is served to identical queries (seconds).
    pub cache_ttl_secs: u64,
}

/// `[github]`: the GitHub client, webhooks, research from issues, published reports.
/// Secrets (token, webhook secret) come from the environment variables named here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubSettings {
    /// REST API root (`https://api.github.com`; GHES: `https://HOST/api/v3`).
    pub api_url: String,
    /// `User-Agent` of every request (GitHub refuses requests without one).
    pub user_agent: String,
    /// Environment variable holding a personal access token ("" = none).
    pub token_env: String,
    /// GitHub App authentication (instead of a token) when `app_id` is not 0.
    pub app_id: u64,
    pub app_installation_id: u64,
    /// PEM file of the App's private key.
    pub app_private_key_file: String,
    /// Environment variable holding the webhook secret.
    pub webhook_secret_env: String,
    /// Public URL of `POST /webhooks/github`, for `fleet github hook create`.
    pub webhook_url: String,
    /// Tracked repositories (`owner/name`); empty = every repo an agent profile's
    /// `repo` URL names.
    pub repos: Vec<String>,
    /// Branches whose pushes refresh agents; empty = each repo's default branch.
    pub branches: Vec<String>,
    /// Issues with this label become research jobs ("" = off).
    pub research_label: String,
    /// A label `<prefix><profile>` on an issue picks the agent profile.
    pub agent_label_prefix: String,
    /// Agent profile for research from issues ("" = the top-level `default_agent`).
    pub default_agent: String,
    /// How long a delivery ID is remembered, to ignore replays (seconds).
    pub delivery_ttl_secs: u64,
    /// Directory of published reports in the target repository.
    pub report_dir: String,
}

impl GithubSettings {
    /// The tracked repositories, parsed (validated at load).
    pub fn tracked_repos(&self) -> Vec<crate::github::RepoName> {
        self.repos
            .iter()
            .filter_map(|r| crate::github::RepoName::parse(r).ok())
            .collect()
    }
}

/// `[redis]`: where Redis is and how to reach it (`crate::connection`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://`, `rediss://` (TLS), `unix://`, `redis+cluster://h:p,h:p`,
    /// `redis+sentinel://h:p,h:p/<master>` (and their `rediss+` forms).
    pub url: String,
    /// Seed nodes of a Redis Cluster; non-empty selects the Cluster topology.
    pub cluster_urls: Vec<String>,
    /// Sentinels (`redis://host:port` each) watching `sentinel_master`; non-empty
    /// selects the Sentinel topology.
    pub sentinel_urls: Vec<String>,
    /// The master name the sentinels know the primary by.
    pub sentinel_master: String,
    /// ACL user for the data nodes ("" = the URL's, else `default`).
    pub username: String,
    /// The environment variable holding the ACL password ("" = the URL's, if any).
    pub password_env: String,
    /// The password read from `password_env` at load; never printed.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// PEM file of the CA that signed the servers' certificates ("" = the system's roots).
    pub tls_ca_file: String,
    /// PEM client certificate and key for mutual TLS ("" = none; both or neither).
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub key_prefix: String,
    pub response_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

/// Printed without any URL's credentials and without the password.
impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |urls: &[String]| -> Vec<String> {
            urls.iter()
                .map(|u| crate::connection::redacted_url(u))
                .collect()
        };
        f.debug_struct("RedisSettings")
            .field("url", &crate::connection::redacted_url(&self.url))
            .field("cluster_urls", &redact(&self.cluster_urls))
            .field("sentinel_urls", &redact(&self.sentinel_urls))
            .field("sentinel_master", &self.sentinel_master)
            .field("username", &self.username)
            .field("password_env", &self.password_env)
            .field("password", &self.password)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("key_prefix", &self.key_prefix)
            .field("response_timeout_ms", &self.response_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

/// `queue.durability`: what an acknowledged write has survived before it is
/// acknowledged (README "Scaling out").
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledged once the primary applied it (its own persistence settings apply).
    #[default]
    None,
    /// `WAITAOF 1 0`: fsynced to the primary's append-only file (Redis >= 7.2).
    Aof,
    /// `WAIT 1`: received by at least one replica.
    Replica,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSettings {
    pub max_query_bytes: usize,
    pub lease_ttl_secs: u64,
    pub reclaim_interval_ms: u64,
    pub promote_chunk: u32,
    pub result_ttl_secs: u64,
    pub idempotency_ttl_secs: u64,
    /// What an enqueue and a settle wait for before they count as done.
    pub durability: Durability,
    /// How long that wait may take (milliseconds).
    pub durability_timeout_ms: u64,
    /// How many shards (each its own hash tag, so its own cluster slot) the research
    /// queue is spread over (`queue/shards.rs`). 1: one slot, as before sharding.
    pub shards: u16,
    /// Whether the queue scripts keep the listing indexes (`GET /v1/jobs`, batch
    /// results, the dashboard's job lists): `queue/index.rs`.
    pub listing_indexes: bool,
    pub research: RetryPolicy,
    pub lifecycle: RetryPolicy,
}

impl ResultsSettings {
    fn validate(&self) -> Result<(), SettingsError> {
        let err = |k: &str, m: &str| Err(SettingsError::new(k, m));
        if self.max_bytes == 0 {
            return err("results.max_bytes", "must be at least 1");
        }
        if self.chunk_bytes < 1024 {
            return err("results.chunk_bytes", "must be at least 1024");
        }
        if self.inline_bytes > 3072 {
            // The job's hash must stay under 4 KiB whatever the agent printed.
            return err("results.inline_bytes", "must be at most 3072");
        }
        if self.cache_ttl_secs == 0 {
            return err("results.cache_ttl_secs", "must be at least 1");
        }
        Ok(())
    }
}

impl QueueSettings {
    pub fn policy(&self, kind: QueueKind) -> &RetryPolicy {
        match kind {
            QueueKind::Research => &self.research,
            QueueKind::Lifecycle => &self.lifecycle,
        }
    }
}

/// Retries of one job kind.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub attempt_timeout_secs: u64,
    pub deadline_secs: u64,
}

impl RetryPolicy {
    /// This policy with a job's own overrides (max attempts, timeouts, backoff).
    pub fn for_job(&self, options: &crate::job::JobOptions) -> RetryPolicy {
        let backoff_base_ms = options.backoff_base_ms.unwrap_or(self.backoff_base_ms);
        RetryPolicy {
            max_attempts: options.max_attempts.unwrap_or(self.max_attempts),
            backoff_base_ms,
            backoff_cap_ms: options
                .backoff_cap_ms
                .unwrap_or(self.backoff_cap_ms)
                .max(backoff_base_ms),
            attempt_timeout_secs: options
                .attempt_timeout_secs
                .unwrap_or(self.attempt_timeout_secs),
            deadline_secs: options.deadline_secs.unwrap_or(self.deadline_secs),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub lifecycle_concurrency: usize,
    pub drain_timeout_secs: u64,
    pub http_addr: String,
    pub log_format: LogFormat,
}

/// `fleet serve`: the producer's HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Address to listen on (`host:port`, an IP address).
    pub listen: String,
    /// Bearer token every `/v1` route requires; empty: no authentication.
    #[serde(default)]
    pub token: Secret,
    /// Largest request body accepted, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// Longest `?wait=` a result request may ask for (seconds); longer ones are cut to it.
    pub result_wait_max_secs: u64,
    /// Result waits in flight at once; more get 503 and `Retry-After`.
    pub max_waits: usize,
    /// Jobs one batch request may hold (413 above it, before they are parsed whole).
    pub max_batch_jobs: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Seconds a connection may take to send a request head, from its opening or from
    /// the end of the previous answer (so also how long an idle connection is kept).
    pub header_timeout_secs: u64,
    /// Seconds a request body may take to arrive (408 after).
    pub body_timeout_secs: u64,
    /// Milliseconds a request waits for Redis before it gets 503 and `Retry-After`.
    pub redis_timeout_ms: u64,
    /// Serve on a non-loopback address without a token (refused unless true).
    pub allow_remote_without_token: bool,
    /// Failed token attempts one client address may make per minute; then 429.
    pub auth_failures_per_minute: u32,
    /// Named tokens with a role each (`[[api.tokens]]`), besides `token` (an admin).
    #[serde(default)]
    pub tokens: Vec<ApiTokenSettings>,
    /// Requests one token may make per minute (0 = no limit); then 429 and `Retry-After`.
    /// Without authentication the whole API shares one such allowance.
    pub requests_per_minute: u32,
    /// Most index entries one listing page looks at per queue when a condition is
    /// checked on the records (`GET /v1/jobs` with two of status/batch/agent or `meta`,
    /// dead letters by error class); the answer says when the bound cut it short.
    pub list_scan_max: usize,
    /// Seconds a dashboard session (`/ui`, cookie) lasts after login.
    pub session_ttl_secs: u64,
    /// Mark the dashboard's session cookie `Secure` (sent over HTTPS only).
    pub session_cookie_secure: bool,
    /// The tokens of `token` and `tokens`, read at load (from the environment or files).
    #[serde(skip)]
    pub credentials: Vec<ApiCredential>,
}

/// One entry of `[[api.tokens]]`: a named token, from an environment variable or a
/// file (never written in the settings themselves), and what it may do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiTokenSettings {
    /// A name for logs and messages (the token itself never appears in either).
    pub name: String,
    /// Environment variable holding the token.
    #[serde(default)]
    pub token_env: String,
    /// File holding the token (surrounding whitespace is ignored).
    #[serde(default)]
    pub token_file: String,
    /// `read`: GET routes only; `admin`: everything.
    pub role: ApiRole,
    /// This token's own requests per minute (absent: `api.requests_per_minute`).
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApiRole {
    /// Reads only: `GET` routes (records, results, events, lists).
    Read,
    /// Everything: submit, cancel, agents, dead letters.
    Admin,
}

/// A token as the API checks it.
#[derive(Debug, Clone)]
pub struct ApiCredential {
    pub name: String,
    pub secret: Secret,
    pub role: ApiRole,
    /// 0 = no limit.
    pub requests_per_minute: u32,
}

/// The shortest `api.token` accepted.
pub const MIN_TOKEN_LEN: usize = 16;

impl ApiSettings {
    /// The token, when authentication is on.
    pub fn token(&self) -> Option<&Secret> {
        (!self.token.is_empty()).then_some(&self.token)
    }

    /// Whether requests must carry a token (`token` or any of `tokens` is set).
    pub fn auth_enabled(&self) -> bool {
        !self.credentials.is_empty()
    }

    /// Read the tokens of `token` (named `default`, admin) and `tokens` from `env` or
    /// their files, checked as `token` is; errors name the entry.
    fn resolve_credentials(&mut self, env: &[(String, String)]) -> Result<(), SettingsError> {
        let mut out = Vec::new();
        if let Some(token) = self.token() {
            out.push(ApiCredential {
                name: "default".into(),
                secret: token.clone(),
                role: ApiRole::Admin,
                requests_per_minute: self.requests_per_minute,
            });
        }
        for (i, t) in self.tokens.iter().enumerate() {
            let key = |field: &str| format!("api.tokens[{i}].{field}");
            let name = t.name.trim();
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(SettingsError::new(
                    key("name"),
                    "must be 1 to 64 characters, no control characters",
                ));
            }
            if out.iter().any(|c: &ApiCredential| c.name == name) {
                return Err(SettingsError::new(
                    key("name"),
                    format!("{name:?} is used twice (`default` is api.token's)"),
                ));
            }
            let secret = match (t.token_env.is_empty(), t.token_file.is_empty()) {
                (false, true) => env
                    .iter()
                    .find(|(k, _)| *k == t.token_env)
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| {
                        SettingsError::new(
                            key("token_env"),
                            format!("the environment variable {} is not set", t.token_env),
                        )
                    })?,
                (true, false) => std::fs::read_to_string(&t.token_file)
                    .map(|v| v.trim().to_string())
                    .map_err(|e| {
                        SettingsError::new(
                            key("token_file"),
                            format!("cannot read {}: {e}", t.token_file),
                        )
                    })?,
                _ => {
                    return Err(SettingsError::new(
                        key("token_env"),
                        "set exactly one of token_env and token_file",
                    ));
                }
            };
            let source = if t.token_env.is_empty() {
                key("token_file")
            } else {
                key("token_env")
            };
            check_token(&source, &secret)?;
            let secret = Secret::new(secret);
            if out.iter().any(|c| c.secret == secret) {
                return Err(SettingsError::new(
                    source,
                    "the same token is configured twice; each must be different",
                ));
            }
            out.push(ApiCredential {
                name: name.to_string(),
                secret,
                role: t.role,
                requests_per_minute: t.requests_per_minute.unwrap_or(self.requests_per_minute),
            });
        }
        self.credentials = out;
        Ok(())
    }
}

/// A token's shape; the value is never part of a message: it is a secret.
fn check_token(key: &str, token: &str) -> Result<(), SettingsError> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(SettingsError::new(
            key,
            "must be printable ASCII without spaces (it is sent in an HTTP header)",
        ));
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(SettingsError::new(
            key,
            format!("must be at least {MIN_TOKEN_LEN} characters"),
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdlePolicy {
    Keep,
    Pause,
    Kill,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSettings {
    pub idle_policy: IdlePolicy,
    pub idle_pause_after_secs: u64,
    pub sandbox_timeout_secs: u64,
    pub recycle_after_jobs: u64,
    /// Most agents of one profile at once, fleet-wide (0 = no cap beyond the jobs
    /// running: each holds one agent).
    pub max_agents: usize,
    /// Idle agents of each profile kept warm, fleet-wide.
    pub min_idle: usize,
    /// Pooled agents paused this long are terminated (0 = never).
    pub kill_paused_after_secs: u64,
    /// The provider's sandbox lifetime limit (0 = none; E2B: 3600 Hobby, 86400 Pro).
    pub max_lifetime_secs: u64,
    /// Agents this close to `max_lifetime_secs` are recycled instead of leased.
    pub lifetime_margin_secs: u64,
    /// An agent idle longer than this is pinged before a job gets it (0 = never).
    pub health_check_idle_secs: u64,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    Local,
    E2b,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSettings {
    pub provider: ProviderKind,
    pub local: LocalSandboxSettings,
    pub e2b: E2bSettings,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSandboxSettings {
    pub root: PathBuf,
    pub env_allowlist: Vec<String>,
    pub max_output_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct E2bSettings {
    pub domain: String,
    pub api_url: String,
    pub envd_url: String,
    pub template: String,
    pub max_concurrent_sandboxes: u32,
    pub creates_per_second: f64,
    pub request_timeout_secs: u64,
    pub request_attempts: u32,
    /// From `E2B_API_KEY` only; never from a file.
    #[serde(skip)]
    pub api_key: Option<Secret>,
}

impl E2bSettings {
    pub fn api_base(&self) -> String {
        if self.api_url.is_empty() {
            format!("https://api.{}", self.domain)
        } else {
            self.api_url.trim_end_matches('/').to_string()
        }
    }

    /// The envd base URL of one sandbox.
    pub fn envd_base(&self, sandbox_id: &str, domain: Option<&str>) -> String {
        if self.envd_url.is_empty() {
            format!(
                "https://49983-{sandbox_id}.{}",
                domain.unwrap_or(&self.domain)
            )
        } else {
            self.envd_url
                .replace("{id}", sandbox_id)
                .trim_end_matches('/')
                .to_string()
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    #[default]
    Command,
    /// The Claude Code CLI (`runtime = "claude_code"`, also spelled `"claude-code"`).
    #[serde(alias = "claude-code")]
    ClaudeCode,
    /// Dexter (virattt/dexter) through the project's run-once wrapper.
    Dexter,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum QueryVia {
    #[default]
    Stdin,
    Env,
    File,
}

/// One agent profile (`[agents.<name>]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentProfile {
    pub runtime: RuntimeKind,
    pub repo: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default = "default_query_via")]
    pub query_via: QueryVia,
    #[serde(default)]
    pub setup: Vec<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub secret_env: Vec<String>,
    /// A git `repo`: the branch, tag or commit checked out ("" = the remote's default
    /// branch). A push webhook refreshes agents of a branch profile to the new commit.
    #[serde(default)]
    pub git_ref: String,
    /// A git `repo`: the worker environment variable holding the token for it ("" =
    /// none). Given to git only through its environment (`runtime/checkout.rs`).
    #[serde(default)]
    pub git_token_env: String,
    #[serde(default)]
    pub template: String,
    /// `claude_code`, `dexter`: the model ("" = the agent's default).
    #[serde(default)]
    pub model: String,
    /// `claude_code`: `--max-turns` (0 = the CLI's default).
    #[serde(default)]
    pub max_turns: u32,
    /// `claude_code`: `--allowedTools` (empty = not passed).
    #[serde(default)]
    pub allowed_tools: Vec<String>,
    /// `claude_code`: `--permission-mode` ("" = not passed).
    #[serde(default)]
    pub permission_mode: String,
    /// `claude_code`: `--max-budget-usd` per job (0 = no cap).
    #[serde(default)]
    pub max_budget_usd: f64,
    /// `claude_code`: jobs on a persistent agent `--resume` the agent's session.
    #[serde(default)]
    pub resume_session: bool,
    /// `claude_code`: the `@anthropic-ai/claude-code` version installed when the
    /// sandbox has no `claude` on its PATH ("" = the pinned default).
    #[serde(default)]
    pub cli_version: String,
    /// `dexter`: the agent's `maxIterations` (0 = 10).
    #[serde(default)]
    pub max_iterations: u32,
    /// `dexter`: keep `.dexter/cache` between jobs (default: cleared before each job).
    #[serde(default)]
    pub share_cache: bool,
    /// Identical queries to this profile within `results.cache_ttl_secs` get the
    /// cached result instead of a run (a job's own `cache` option overrides it).
    #[serde(default)]
    pub cache: bool,
    /// `[agents.<name>.network]`: egress rules for this profile's sandboxes (absent =
    /// unrestricted). Enforced by E2B only; the gateway's host is allowed automatically.
    #[serde(default)]
    pub network: Option<crate::sandbox::egress::Egress>,
    /// With `[gateway] enabled`: whether this profile's agents reach model providers
    /// through it (true) or keep the old path, their keys from `secret_env` in the
    /// sandbox (false: for agents that cannot be given a base URL).
    #[serde(default = "default_true")]
    pub gateway: bool,
}

fn default_query_via() -> QueryVia {
    QueryVia::Stdin
}

fn default_true() -> bool {
    true
}

/// A settings error that names the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct SettingsError {
    pub key: String,
    pub message: String,
}

impl SettingsError {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl Settings {
    /// Load with the standard layering: defaults, `file` (or `FLEET_CONFIG`), environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        let _ = dotenvy::dotenv();
        let env: Vec<(String, String)> = std::env::vars().collect();
        let file = file
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("FLEET_CONFIG").map(PathBuf::from));
        let file_text = match &file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                SettingsError::new(
                    "config file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?),
            None => None,
        };
        Self::from_layers(file_text.as_deref(), &env)
    }

    /// Build from an optional file's text and an environment (for tests: no globals).
    pub fn from_layers(
        file_text: Option<&str>,
        env: &[(String, String)],
    ) -> Result<Settings, SettingsError> {
        let mut root: toml::Table = DEFAULT_TOML
            .parse()
            .map_err(|e| SettingsError::new("config/default.toml", format!("{e}")))?;
        if let Some(text) = file_text {
            let overlay: toml::Table = text
                .parse()
                .map_err(|e| SettingsError::new("config file", format!("{e}")))?;
            merge(&mut root, overlay);
        }
        // Top-level keys that are values, not sections (`default_agent`): the only
        // settings named without a double underscore.
        let top_level: Vec<String> = root
            .iter()
            .filter(|(_, v)| !v.is_table())
            .map(|(k, _)| k.clone())
            .collect();
        for (name, value) in env {
            let Some(keys) = setting_path(name, &top_level) else {
                continue;
            };
            // A secret is taken as it is: read as TOML, a token of digits would become
            // a number (and a type error).
            let value = if keys == ["api", "token"] {
                toml::Value::String(value.clone())
            } else {
                parse_env_value(value)
            };
            set_path(&mut root, &keys, value);
        }
        let deserializer = toml::Value::Table(root);
        let mut settings: Settings =
            serde_path_to_error::deserialize(deserializer).map_err(|e| {
                let key = e.path().to_string();
                let message = e.inner().to_string();
                SettingsError::new(if key == "." { "config".into() } else { key }, message)
            })?;
        if !settings.redis.password_env.is_empty() {
            let name = &settings.redis.password_env;
            settings.redis.password = env
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| Secret::new(v.clone()))
                .filter(|s| !s.is_empty());
            if settings.redis.password.is_none() {
                return Err(SettingsError::new(
                    "redis.password_env",
                    format!("names {name}, which is not set in the environment"),
                ));
            }
        }
        settings.sandbox.e2b.api_key = env
            .iter()
            .find(|(k, _)| k == "E2B_API_KEY")
            .map(|(_, v)| Secret::new(v.clone()))
            .filter(|s| !s.is_empty());
        settings.validate()?;
        settings.api.resolve_credentials(env)?;
        Ok(settings)
    }

    /// `[github]` and the agents' git settings.
    fn validate_github(&self) -> Result<(), SettingsError> {
        let g = &self.github;
        for (i, repo) in g.repos.iter().enumerate() {
            crate::github::RepoName::parse(repo)
                .map_err(|m| SettingsError::new(format!("github.repos[{i}]"), m))?;
        }
        if g.user_agent.trim().is_empty() {
            return Err(SettingsError::new(
                "github.user_agent",
                "must not be empty (GitHub refuses requests without a User-Agent)",
            ));
        }
        if !g.api_url.starts_with("https://") && !g.api_url.starts_with("http://") {
            return Err(SettingsError::new(
                "github.api_url",
                "must start with https:// (or http:// for a local server)",
            ));
        }
        if g.delivery_ttl_secs == 0 {
            return Err(SettingsError::new(
                "github.delivery_ttl_secs",
                "must be at least 1",
            ));
        }
        if g.app_id != 0 && (g.app_installation_id == 0 || g.app_private_key_file.is_empty()) {
            return Err(SettingsError::new(
                "github.app_id",
                "a GitHub App also needs github.app_installation_id and github.app_private_key_file",
            ));
        }
        if !g.default_agent.is_empty() && !self.agents.contains_key(&g.default_agent) {
            return Err(SettingsError::new(
                "github.default_agent",
                format!("no agent profile named {:?}", g.default_agent),
            ));
        }
        for (name, profile) in &self.agents {
            let repo = profile.repo.trim();
            if crate::runtime::checkout::is_git_url(repo)
                && let Err(m) = crate::runtime::checkout::RepoCheckout::new(
                    repo,
                    &profile.git_ref,
                    // A placeholder: whether a token would be sent is what is checked.
                    (!profile.git_token_env.is_empty()).then(|| Secret::new("x")),
                )
            {
                return Err(SettingsError::new(format!("agents.{name}.repo"), m));
            }
        }
        Ok(())
    }

    /// Check values against each other and their ranges.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |k: &str, m: &str| Err(SettingsError::new(k, m));
        crate::connection::Topology::from_settings(&self.redis)?;
        if self.queue.durability_timeout_ms == 0 {
            return err("queue.durability_timeout_ms", "must be at least 1");
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.contains(['{', '}']) {
            return err("redis.key_prefix", "must be non-empty and hold no braces");
        }
        if self.queue.lease_ttl_secs < 3 {
            return err("queue.lease_ttl_secs", "must be at least 3");
        }
        if self.queue.reclaim_interval_ms == 0 {
            return err("queue.reclaim_interval_ms", "must be at least 1");
        }
        if self.queue.promote_chunk == 0 {
            return err("queue.promote_chunk", "must be at least 1");
        }
        if !(1..=crate::queue::shards::MAX_SHARDS).contains(&self.queue.shards) {
            return err(
                "queue.shards",
                &format!(
                    "must be between 1 and {} (one shard per hash tag; more than the cluster has primaries only adds calls)",
                    crate::queue::shards::MAX_SHARDS
                ),
            );
        }
        if self.queue.idempotency_ttl_secs == 0 {
            return err("queue.idempotency_ttl_secs", "must be at least 1");
        }
        if self.queue.max_query_bytes == 0 {
            return err("queue.max_query_bytes", "must be at least 1");
        }
        self.check_upper_bounds()?;
        for (name, p) in [
            ("queue.research", &self.queue.research),
            ("queue.lifecycle", &self.queue.lifecycle),
        ] {
            if p.max_attempts == 0 {
                return err(&format!("{name}.max_attempts"), "must be at least 1");
            }
            if p.backoff_cap_ms < p.backoff_base_ms {
                return err(
                    &format!("{name}.backoff_cap_ms"),
                    "must be at least backoff_base_ms",
                );
            }
            if p.attempt_timeout_secs == 0 {
                return err(
                    &format!("{name}.attempt_timeout_secs"),
                    "must be at least 1",
                );
            }
        }
        if self.worker.concurrency == 0 {
            return err("worker.concurrency", "must be at least 1");
        }
        if self.worker.lifecycle_concurrency == 0 {
            return err("worker.lifecycle_concurrency", "must be at least 1");
        }
        if !self.worker.http_addr.is_empty()
            && self
                .worker
                .http_addr
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return err(
                "worker.http_addr",
                "must be host:port (an IP address) or empty",
            );
        }
        if self.pool.sandbox_timeout_secs < self.queue.lease_ttl_secs {
            return err(
                "pool.sandbox_timeout_secs",
                "must be at least queue.lease_ttl_secs",
            );
        }
        if self.sandbox.local.max_output_bytes == 0 {
            return err("sandbox.local.max_output_bytes", "must be at least 1");
        }
        self.results.validate()?;
        let e2b = &self.sandbox.e2b;
        if e2b.max_concurrent_sandboxes == 0 {
            return err("sandbox.e2b.max_concurrent_sandboxes", "must be at least 1");
        }
        if e2b.creates_per_second.is_nan() || e2b.creates_per_second <= 0.0 {
            return err("sandbox.e2b.creates_per_second", "must be above 0");
        }
        if e2b.request_attempts == 0 {
            return err("sandbox.e2b.request_attempts", "must be at least 1");
        }
        self.validate_github()?;
        if self.api.listen.parse::<std::net::SocketAddr>().is_err() {
            return err("api.listen", "must be host:port (an IP address)");
        }
        if self.api.max_body_bytes == 0 {
            return err("api.max_body_bytes", "must be at least 1");
        }
        for (key, value) in [
            ("api.max_waits", self.api.max_waits as u64),
            ("api.max_batch_jobs", self.api.max_batch_jobs as u64),
            ("api.max_connections", self.api.max_connections as u64),
            ("api.header_timeout_secs", self.api.header_timeout_secs),
            ("api.body_timeout_secs", self.api.body_timeout_secs),
            ("api.redis_timeout_ms", self.api.redis_timeout_ms),
            (
                "api.auth_failures_per_minute",
                u64::from(self.api.auth_failures_per_minute),
            ),
            ("api.list_scan_max", self.api.list_scan_max as u64),
            ("api.session_ttl_secs", self.api.session_ttl_secs),
        ] {
            if value == 0 {
                return err(key, "must be at least 1");
            }
        }
        // An hour is already far more than any client needs.
        for (key, secs) in [
            ("api.header_timeout_secs", self.api.header_timeout_secs),
            ("api.body_timeout_secs", self.api.body_timeout_secs),
            ("api.redis_timeout_ms", self.api.redis_timeout_ms / 1000),
        ] {
            if secs > 3600 {
                return err(key, "must be at most an hour");
            }
        }
        // The value is never part of a message: it is a secret.
        if !self
            .api
            .token
            .expose()
            .bytes()
            .all(|b| b.is_ascii_graphic())
        {
            return err(
                "api.token",
                "must be printable ASCII without spaces (it is sent in an HTTP header)",
            );
        }
        if let Some(token) = self.api.token()
            && token.expose().len() < MIN_TOKEN_LEN
        {
            return err(
                "api.token",
                &format!(
                    "must be at least {MIN_TOKEN_LEN} characters (or empty for no authentication)"
                ),
            );
        }
        self.gateway.validate()?;
        if let Some((key, message)) = self.events.problem() {
            return err(key, message);
        }
        if self.agents.is_empty() {
            return err("agents", "at least one agent profile is needed");
        }
        if !self.agents.contains_key(&self.default_agent) {
            return err(
                "default_agent",
                &format!(
                    "{:?} is not a profile under [agents] (have: {})",
                    self.default_agent,
                    self.agent_names().join(", ")
                ),
            );
        }
        for (name, profile) in &self.agents {
            if profile.runtime == RuntimeKind::Command && profile.command.is_empty() {
                return err(
                    &format!("agents.{name}.command"),
                    "a \"command\" runtime needs a command line",
                );
            }
            if !(profile.max_budget_usd.is_finite() && profile.max_budget_usd >= 0.0) {
                return err(
                    &format!("agents.{name}.max_budget_usd"),
                    "must be a number of dollars, 0 or more",
                );
            }
            if !matches!(
                profile.permission_mode.as_str(),
                "" | "default" | "acceptEdits" | "plan" | "bypassPermissions" | "dontAsk"
            ) {
                return err(
                    &format!("agents.{name}.permission_mode"),
                    "must be \"\", \"default\", \"acceptEdits\", \"plan\", \"bypassPermissions\" or \"dontAsk\"",
                );
            }
            if profile.setup.iter().any(Vec::is_empty) {
                return err(&format!("agents.{name}.setup"), "holds an empty command");
            }
            if let Some((key, message)) = profile.network.as_ref().and_then(|n| n.problem()) {
                return err(&format!("agents.{name}.network.{key}"), &message);
            }
        }
        Ok(())
    }

    /// What the sandbox provider needs from the environment: E2B_API_KEY for "e2b".
    /// Checked by the worker (the one process that calls the provider), not at load:
    /// the CLI and `fleet serve` share the config but never call E2B.
    pub fn check_provider_credentials(&self) -> Result<(), SettingsError> {
        if self.sandbox.provider == ProviderKind::E2b && self.sandbox.e2b.api_key.is_none() {
            return Err(SettingsError::new(
                "sandbox.provider",
                "is \"e2b\" but E2B_API_KEY is not set in the environment",
            ));
        }
        Ok(())
    }

    /// Upper bounds: the queue policies are held to the bounds of a job's own options
    /// (`job::bounds`), and every duration in seconds to a year, so no arithmetic on
    /// them (a lease TTL times three, a drain timeout plus a margin, a TTL in
    /// milliseconds) can overflow.
    fn check_upper_bounds(&self) -> Result<(), SettingsError> {
        use crate::job::bounds::{
            MAX_ATTEMPT_TIMEOUT_SECS, MAX_ATTEMPTS, MAX_BACKOFF_MS, MAX_DEADLINE_SECS,
        };
        let at_most = |key: String, value: u64, max: u64| {
            if value > max {
                Err(SettingsError::new(key, format!("must be at most {max}")))
            } else {
                Ok(())
            }
        };
        for (name, p) in [
            ("queue.research", &self.queue.research),
            ("queue.lifecycle", &self.queue.lifecycle),
        ] {
            let key = |k: &str| format!("{name}.{k}");
            at_most(
                key("max_attempts"),
                p.max_attempts.into(),
                MAX_ATTEMPTS.into(),
            )?;
            at_most(
                key("attempt_timeout_secs"),
                p.attempt_timeout_secs,
                MAX_ATTEMPT_TIMEOUT_SECS,
            )?;
            at_most(key("deadline_secs"), p.deadline_secs, MAX_DEADLINE_SECS)?;
            at_most(key("backoff_base_ms"), p.backoff_base_ms, MAX_BACKOFF_MS)?;
            at_most(key("backoff_cap_ms"), p.backoff_cap_ms, MAX_BACKOFF_MS)?;
        }
        for (key, secs) in [
            ("queue.lease_ttl_secs", self.queue.lease_ttl_secs),
            ("queue.result_ttl_secs", self.queue.result_ttl_secs),
            (
                "queue.idempotency_ttl_secs",
                self.queue.idempotency_ttl_secs,
            ),
            ("worker.drain_timeout_secs", self.worker.drain_timeout_secs),
            (
                "pool.idle_pause_after_secs",
                self.pool.idle_pause_after_secs,
            ),
            ("pool.sandbox_timeout_secs", self.pool.sandbox_timeout_secs),
            (
                "sandbox.e2b.request_timeout_secs",
                self.sandbox.e2b.request_timeout_secs,
            ),
            ("api.result_wait_max_secs", self.api.result_wait_max_secs),
        ] {
            at_most(key.to_string(), secs, MAX_SETTING_SECS)?;
        }
        Ok(())
    }

    pub fn agent_names(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }

    /// What the edge validates jobs against.
    pub fn limits(&self) -> Limits {
        Limits {
            max_query_bytes: self.queue.max_query_bytes,
            agents: self.agent_names(),
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.queue.lease_ttl_secs)
    }
}

/// The longest duration in seconds any setting may hold: a year.
pub const MAX_SETTING_SECS: u64 = 365 * 86_400;

/// The key path an environment variable sets, if it is a setting at all: only
/// `FLEET_<SECTION>__<KEY>` (any depth, no empty part) and `FLEET_<KEY>` for a top-level
/// value such as `FLEET_DEFAULT_AGENT`. Anything else that starts with `FLEET_`
/// (`FLEET_CONFIG`, a script's `FLEET_BIN_DIR`, a misremembered `FLEET_REDIS_URL`)
/// is not a setting and is left alone.
fn setting_path(name: &str, top_level: &[String]) -> Option<Vec<String>> {
    let path = name.strip_prefix("FLEET_")?;
    let keys: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
    let is_setting = match keys.as_slice() {
        [key] => top_level.contains(key),
        parts => parts.iter().all(|k| !k.is_empty()),
    };
    is_setting.then_some(keys)
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) {
    match keys {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if !entry.is_table() {
                *entry = toml::Value::Table(toml::Table::new());
            }
            if let toml::Value::Table(t) = entry {
                set_path(t, rest, value);
            }
        }
    }
}

/// An environment value is read as a TOML value when it parses as one (numbers,
/// booleans, arrays), else as a plain string.
fn parse_env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_example_profiles_load_and_validate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/examples");
        let load = |name: &str| {
            let text = std::fs::read_to_string(dir.join(name)).unwrap();
            Settings::from_layers(Some(&text), &[]).unwrap_or_else(|e| panic!("{name}: {e}"))
        };
        let s = load("claude-code.toml");
        let p = &s.agents["claude"];
        assert_eq!(p.runtime, RuntimeKind::ClaudeCode);
        assert!(p.resume_session && p.max_turns == 20 && p.max_budget_usd == 1.0);
        assert_eq!(p.permission_mode, "dontAsk");
        let s = load("dexter.toml");
        let p = &s.agents["dexter"];
        assert_eq!(p.runtime, RuntimeKind::Dexter);
        assert_eq!(p.max_iterations, 10);
        assert!(!p.share_cache);
        assert_eq!(
            load("command.toml").agents["csv"].runtime,
            RuntimeKind::Command
        );
    }

    #[test]
    fn agent_profile_keys_are_checked() {
        let bad = |extra: &str| {
            let text = format!("[agents.x]\nruntime = \"claude-code\"\nrepo = \"\"\n{extra}");
            Settings::from_layers(Some(&text), &[]).unwrap_err().key
        };
        assert_eq!(bad("max_budget_usd = -1.0"), "agents.x.max_budget_usd");
        assert_eq!(
            bad("permission_mode = \"yolo\""),
            "agents.x.permission_mode"
        );
        assert_eq!(
            bad("[agents.x.network]\ninternet = false\nallow = [\"not a host\"]"),
            "agents.x.network.allow"
        );
        assert_eq!(
            bad("[agents.x.network]\ndeny = [\"example.com\"]"),
            "agents.x.network.deny"
        );
        let ok = "[agents.x]\nruntime = \"claude-code\"\nrepo = \"\"\n";
        let s = Settings::from_layers(Some(ok), &[]).unwrap();
        assert_eq!(s.agents["x"].runtime, RuntimeKind::ClaudeCode);
        assert_eq!(s.agents["x"].network, None);
        let text = format!("{ok}[agents.x.network]\ninternet = false\nallow = [\"pypi.org\"]\n");
        let n = Settings::from_layers(Some(&text), &[]).unwrap().agents["x"]
            .network
            .clone()
            .unwrap();
        assert!(!n.internet && n.restricts());
        assert_eq!(n.allow, ["pypi.org"]);
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::from_layers(None, &[]).unwrap();
        assert_eq!(s.queue.lease_ttl_secs, 30);
        assert_eq!(s.queue.max_query_bytes, 65536);
        assert_eq!(s.default_agent, "demo");
        assert_eq!(s.sandbox.provider, ProviderKind::Local);
    }

    #[test]
    fn env_overrides_nested_keys_with_typed_values() {
        let s = Settings::from_layers(
            None,
            &env(&[
                ("FLEET_WORKER__CONCURRENCY", "9"),
                ("FLEET_REDIS__URL", "redis://10.0.0.1:7000"),
            ]),
        )
        .unwrap();
        assert_eq!(s.worker.concurrency, 9);
        assert_eq!(s.redis.url, "redis://10.0.0.1:7000");
    }

    #[test]
    fn file_overrides_defaults() {
        let s = Settings::from_layers(Some("[queue]\nlease_ttl_secs = 12\n"), &[]).unwrap();
        assert_eq!(s.queue.lease_ttl_secs, 12);
        assert_eq!(s.queue.research.max_attempts, 3);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Settings::from_layers(Some("[worker]\nconcurency = 3\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("concurency"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let e = Settings::from_layers(None, &env(&[("FLEET_WORKER__CONCURRENCY", "many")]))
            .unwrap_err();
        assert_eq!(e.key, "worker.concurrency", "{e}");
    }

    #[test]
    fn range_errors_name_the_key() {
        let e =
            Settings::from_layers(None, &env(&[("FLEET_WORKER__CONCURRENCY", "0")])).unwrap_err();
        assert_eq!(e.to_string(), "worker.concurrency: must be at least 1");
        let e =
            Settings::from_layers(None, &env(&[("FLEET_DEFAULT_AGENT", "nobody")])).unwrap_err();
        assert_eq!(e.key, "default_agent");
    }

    #[test]
    fn a_job_overrides_its_queue_policy() {
        let s = Settings::from_layers(None, &[]).unwrap();
        let queue = &s.queue.research;
        let options = crate::job::JobOptions {
            max_attempts: Some(7),
            backoff_base_ms: Some(90_000),
            ..Default::default()
        };
        let p = queue.for_job(&options);
        assert_eq!(p.max_attempts, 7);
        assert_eq!(p.backoff_base_ms, 90_000);
        assert_eq!(
            p.backoff_cap_ms, 90_000,
            "the cap never falls below the base"
        );
        assert_eq!(p.attempt_timeout_secs, queue.attempt_timeout_secs);
        assert_eq!(queue.for_job(&Default::default()), *queue);
    }

    #[test]
    fn api_section_defaults_overrides_and_errors() {
        let s = Settings::from_layers(None, &[]).unwrap();
        assert_eq!(s.api.listen, "127.0.0.1:8080");
        assert!(s.api.token().is_none(), "no token: no authentication");
        assert!(s.api.max_body_bytes > 0);
        assert_eq!(s.api.result_wait_max_secs, 60);

        // A token of digits stays a string, and is never shown.
        let digits = "0123456789012345";
        let s = Settings::from_layers(None, &env(&[("FLEET_API__TOKEN", digits)])).unwrap();
        assert_eq!(s.api.token().unwrap().expose(), digits);
        assert!(!format!("{s:?}").contains(digits));
        let e =
            Settings::from_layers(None, &env(&[("FLEET_API__TOKEN", "0123456789")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "api.token: must be at least 16 characters (or empty for no authentication)"
        );
        assert_eq!(s.api.max_batch_jobs, 100_000);
        assert!(!s.api.allow_remote_without_token);
        let e = Settings::from_layers(None, &env(&[("FLEET_API__MAX_WAITS", "0")])).unwrap_err();
        assert_eq!(e.to_string(), "api.max_waits: must be at least 1");
        let e = Settings::from_layers(None, &env(&[("FLEET_API__BODY_TIMEOUT_SECS", "86400")]))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "api.body_timeout_secs: must be at most an hour"
        );

        let e = Settings::from_layers(Some("[api]\ntoken = 424242\n"), &[]).unwrap_err();
        assert_eq!(e.key, "api.token");
        assert!(!e.to_string().contains("424242"), "{e}");
        let e =
            Settings::from_layers(None, &env(&[("FLEET_API__TOKEN", "has space")])).unwrap_err();
        assert_eq!(e.key, "api.token");
        assert!(!e.to_string().contains("has space"), "{e}");

        let e =
            Settings::from_layers(None, &env(&[("FLEET_API__LISTEN", "localhost")])).unwrap_err();
        assert_eq!(
            e.to_string(),
            "api.listen: must be host:port (an IP address)"
        );
        let e =
            Settings::from_layers(None, &env(&[("FLEET_API__MAX_BODY_BYTES", "0")])).unwrap_err();
        assert_eq!(e.to_string(), "api.max_body_bytes: must be at least 1");
        let e = Settings::from_layers(Some("[api]\nlisten_on = \"x\"\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("listen_on"), "{e}");
    }

    #[test]
    fn only_section_key_variables_are_settings() {
        // Variables that merely start with FLEET_ belong to someone else (scripts, CI):
        // they are not settings and stop nothing.
        let s = Settings::from_layers(
            None,
            &env(&[
                ("FLEET_BIN_DIR", "/opt/fleet/bin"),
                ("FLEET_REDIS_URL", "redis://elsewhere:1"),
                ("FLEET_CONFIG", "/etc/fleet.toml"),
                ("FLEET_", "x"),
                ("FLEET_DEFAULT_AGENT", "demo"),
            ]),
        )
        .unwrap();
        assert_eq!(s.redis.url, "redis://127.0.0.1:6379");
        // FLEET_<SECTION>__<KEY> still is one, and a misspelt key still an error.
        let e =
            Settings::from_layers(None, &env(&[("FLEET_WORKER__CONCURENCY", "3")])).unwrap_err();
        assert!(e.to_string().contains("concurency"), "{e}");
        let e =
            Settings::from_layers(None, &env(&[("FLEET_DEFAULT_AGENT", "nobody")])).unwrap_err();
        assert_eq!(e.key, "default_agent");
    }

    #[test]
    fn queue_policies_are_bounded_like_job_options() {
        for (key, value, bound) in [
            (
                "QUEUE__RESEARCH__ATTEMPT_TIMEOUT_SECS",
                "9223372036854775807",
                "86400",
            ),
            (
                "QUEUE__LIFECYCLE__DEADLINE_SECS",
                "9223372036854775807",
                "2592000",
            ),
            ("QUEUE__RESEARCH__MAX_ATTEMPTS", "4294967295", "100"),
            (
                "QUEUE__RESEARCH__BACKOFF_CAP_MS",
                "9223372036854775807",
                "86400000",
            ),
        ] {
            let e = Settings::from_layers(None, &env(&[(&format!("FLEET_{key}"), value)]))
                .expect_err(key);
            assert_eq!(e.key, key.to_ascii_lowercase().replace("__", "."), "{e}");
            assert!(e.message.contains(bound), "{e}");
        }
    }

    #[test]
    fn e2b_provider_needs_the_key_from_the_environment_where_it_is_used() {
        // Loading never needs it (the CLI never calls E2B); the worker checks it.
        let s = Settings::from_layers(None, &env(&[("FLEET_SANDBOX__PROVIDER", "e2b")])).unwrap();
        let e = s.check_provider_credentials().unwrap_err();
        assert_eq!(e.key, "sandbox.provider");
        let s = Settings::from_layers(
            None,
            &env(&[
                ("FLEET_SANDBOX__PROVIDER", "e2b"),
                ("E2B_API_KEY", "e2b_00"),
            ]),
        )
        .unwrap();
        s.check_provider_credentials().unwrap();
        assert_eq!(s.sandbox.e2b.api_key.unwrap().expose(), "e2b_00");
    }
}
