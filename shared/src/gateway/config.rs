//! The `[gateway]` settings: where the gateway listens and what sandboxes are told,
//! the model providers and data APIs behind it (base URL, where their keys come from,
//! their rate limits), the price table and the budgets. Checked at start with errors
//! that name the key, like every other section.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::settings::SettingsError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewaySettings {
    /// Start the gateway in the worker, and point agents at it.
    pub enabled: bool,
    /// Address to listen on (`host:port`, an IP address).
    pub listen: String,
    /// The URL sandboxes are given (empty: `http://<listen>`).
    pub public_url: String,
    /// Requests that may wait for a rate limit at once; more get 429 at once.
    pub max_waiting: usize,
    /// Longest a request waits for a rate limit before it gets 429 (seconds).
    pub max_wait_secs: u64,
    /// Time limit of one upstream request, to the end of its body (seconds).
    pub request_timeout_secs: u64,
    /// Add `stream_options.include_usage` to streamed Chat Completions requests that do
    /// not ask for it, so their usage can be counted.
    pub openai_stream_usage: bool,
    pub anthropic: ProviderSettings,
    pub openai: ProviderSettings,
    /// Named data APIs (`[gateway.upstreams.<name>]`).
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSettings>,
    /// Price per million tokens, by model (`[gateway.prices."<model>"]`). A model is
    /// priced by the longest entry its name starts with.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
    pub budgets: BudgetSettings,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            enabled: false,
            listen: "127.0.0.1:9480".into(),
            public_url: String::new(),
            max_waiting: 1024,
            max_wait_secs: 120,
            request_timeout_secs: 600,
            openai_stream_usage: true,
            anthropic: ProviderSettings::default(),
            openai: ProviderSettings::default(),
            upstreams: BTreeMap::new(),
            prices: BTreeMap::new(),
            budgets: BudgetSettings::default(),
        }
    }
}

/// A model provider behind the gateway (`[gateway.anthropic]`, `[gateway.openai]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    pub base_url: String,
    /// Environment variables holding keys (each one key); read at start.
    #[serde(default)]
    pub key_env: Vec<String>,
    /// Files holding one key each; re-read when they change (rotation).
    #[serde(default)]
    pub key_files: Vec<PathBuf>,
    /// Requests per minute per key and model family, fleet-wide (0 = no limit).
    #[serde(default)]
    pub requests_per_minute: u64,
    /// Input plus output tokens per minute per key and model family (0 = no limit).
    #[serde(default)]
    pub tokens_per_minute: u64,
}

/// A named data API (`[gateway.upstreams.<name>]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub base_url: String,
    /// The header carrying the key (`x-api-key`, or `authorization` for a bearer token).
    pub auth_header: String,
    /// The environment variable agents read the key from: the gateway reads the real
    /// key from it, and agents get their attempt token under the same name.
    pub key_env: String,
    #[serde(default)]
    pub key_files: Vec<PathBuf>,
    #[serde(default)]
    pub requests_per_minute: u64,
}

/// US dollars per million tokens.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cache_read: f64,
    #[serde(default)]
    pub cache_write: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSettings {
    /// Spend cap of one batch, all its jobs together (US dollars; 0 = none).
    pub batch_usd: f64,
    /// The job metadata key naming the tenant.
    pub tenant_key: String,
    /// Spend cap of one tenant per UTC day (US dollars; 0 = none).
    pub tenant_daily_usd: f64,
    /// Per-tenant caps overriding `tenant_daily_usd`.
    #[serde(default)]
    pub tenants: BTreeMap<String, f64>,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            batch_usd: 0.0,
            tenant_key: "tenant".into(),
            tenant_daily_usd: 0.0,
            tenants: BTreeMap::new(),
        }
    }
}

impl BudgetSettings {
    /// A tenant's daily cap (0 = none).
    pub fn tenant_cap(&self, tenant: &str) -> f64 {
        self.tenants
            .get(tenant)
            .copied()
            .unwrap_or(self.tenant_daily_usd)
    }
}

impl GatewaySettings {
    /// The URL sandboxes reach the gateway at, without a trailing slash.
    pub fn public_url(&self) -> String {
        if self.public_url.is_empty() {
            format!("http://{}", self.listen)
        } else {
            self.public_url.trim_end_matches('/').to_string()
        }
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        let err = |k: &str, m: &str| Err(SettingsError::new(format!("gateway.{k}"), m));
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return err("listen", "must be host:port (an IP address)");
        }
        if !self.public_url.is_empty()
            && !self.public_url.starts_with("http://")
            && !self.public_url.starts_with("https://")
        {
            return err(
                "public_url",
                "must start with http:// or https:// (or be empty)",
            );
        }
        for (key, value) in [
            ("max_waiting", self.max_waiting as u64),
            ("max_wait_secs", self.max_wait_secs),
            ("request_timeout_secs", self.request_timeout_secs),
        ] {
            if value == 0 {
                return err(key, "must be at least 1");
            }
            if key != "max_waiting" && value > 86_400 {
                return err(key, "must be at most a day");
            }
        }
        for (name, p) in [("anthropic", &self.anthropic), ("openai", &self.openai)] {
            check_url(&format!("gateway.{name}.base_url"), &p.base_url)?;
            if self.enabled && p.key_env.is_empty() && p.key_files.is_empty() {
                return err(
                    &format!("{name}.key_env"),
                    "names no key source: list an environment variable in key_env or a file in key_files",
                );
            }
        }
        for (name, u) in &self.upstreams {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return err(
                    &format!("upstreams.{name}"),
                    "a name is letters, digits, - and _",
                );
            }
            check_url(&format!("gateway.upstreams.{name}.base_url"), &u.base_url)?;
            if u.auth_header.is_empty()
                || axum::http::HeaderName::from_bytes(u.auth_header.as_bytes()).is_err()
            {
                return err(
                    &format!("upstreams.{name}.auth_header"),
                    "must be an HTTP header name",
                );
            }
            if u.key_env.is_empty() {
                return err(
                    &format!("upstreams.{name}.key_env"),
                    "must name the environment variable the agent reads the key from",
                );
            }
        }
        for (model, price) in &self.prices {
            for (what, v) in [
                ("input", price.input),
                ("output", price.output),
                ("cache_read", price.cache_read),
                ("cache_write", price.cache_write),
            ] {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(SettingsError::new(
                        format!("gateway.prices.\"{model}\".{what}"),
                        "must be a price in dollars per million tokens, 0 or more",
                    ));
                }
            }
        }
        let b = &self.budgets;
        for (key, v) in [
            ("budgets.batch_usd", b.batch_usd),
            ("budgets.tenant_daily_usd", b.tenant_daily_usd),
        ]
        .into_iter()
        .chain(b.tenants.values().map(|v| ("budgets.tenants", *v)))
        {
            if !(v.is_finite() && v >= 0.0) {
                return err(key, "must be a number of dollars, 0 or more");
            }
        }
        if b.tenant_key.is_empty() {
            return err("budgets.tenant_key", "must name a job metadata key");
        }
        Ok(())
    }
}

fn check_url(key: &str, url: &str) -> Result<(), SettingsError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(SettingsError::new(
            key,
            "must be an http:// or https:// URL",
        ))
    }
}

#[cfg(test)]
mod tests {
    use crate::settings::Settings;

    fn load(extra: &str) -> Result<Settings, crate::settings::SettingsError> {
        Settings::from_layers(Some(extra), &[])
    }

    #[test]
    fn the_defaults_are_off_and_valid() {
        let s = load("").unwrap();
        assert!(!s.gateway.enabled);
        assert_eq!(s.gateway.public_url(), "http://127.0.0.1:9480");
        assert_eq!(s.gateway.budgets.tenant_key, "tenant");
        assert!(s.gateway.prices.contains_key("claude-sonnet-4-5"));
    }

    #[test]
    fn bad_gateway_settings_name_their_key() {
        for (text, key) in [
            ("[gateway]\nlisten = \"nowhere\"", "gateway.listen"),
            (
                "[gateway]\npublic_url = \"gateway:80\"",
                "gateway.public_url",
            ),
            ("[gateway]\nmax_wait_secs = 0", "gateway.max_wait_secs"),
            (
                "[gateway.anthropic]\nbase_url = \"api.anthropic.com\"",
                "gateway.anthropic.base_url",
            ),
            (
                "[gateway]\nenabled = true\n[gateway.openai]\nkey_env = []",
                "gateway.openai.key_env",
            ),
            (
                "[gateway.prices.\"m\"]\ninput = -1.0\noutput = 1.0",
                "gateway.prices.\"m\".input",
            ),
            (
                "[gateway.budgets]\nbatch_usd = -2.0",
                "gateway.budgets.batch_usd",
            ),
            (
                "[gateway.upstreams.fd]\nbase_url = \"https://x\"\nauth_header = \"bad header\"\nkey_env = \"K\"",
                "gateway.upstreams.fd.auth_header",
            ),
        ] {
            let err = load(text).expect_err(text);
            assert_eq!(err.key, key, "{text}: {err}");
        }
    }

    #[test]
    fn per_tenant_caps_override_the_default() {
        let s =
            load("[gateway.budgets]\ntenant_daily_usd = 5.0\ntenants = { acme = 25.0 }").unwrap();
        assert_eq!(s.gateway.budgets.tenant_cap("acme"), 25.0);
        assert_eq!(s.gateway.budgets.tenant_cap("globex"), 5.0);
    }
}
