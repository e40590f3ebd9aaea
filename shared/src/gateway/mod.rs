//! The model gateway: a pass-through reverse proxy, run by the worker, between agents
//! and the model providers (Anthropic Messages, OpenAI Chat Completions and Responses)
//! and named data APIs. It exists so that:
//!
//! - **provider keys never enter a sandbox**: an agent gets a per-attempt token as its
//!   API key and the gateway's URL as its base URL (`ANTHROPIC_BASE_URL`,
//!   `OPENAI_BASE_URL`); the gateway swaps the token for a real key ([`keys`]). Tokens are
//!   random, kept in Redis only as hashes, bound to job, attempt and fencing token, and
//!   refused once the attempt ends or loses its lease ([`tokens`], [`budget`]);
//! - **every token is counted and priced**: usage is read from the responses as they
//!   stream by ([`metering`]), priced from the settings' table ([`pricing`]), summed per
//!   attempt and job in Redis, stored in the job's result and exported to Prometheus;
//! - **budgets hold** per job, batch and tenant per day: reserve-then-settle in Lua, so
//!   a cap is overshot by at most the requests in flight ([`budget`]);
//! - **rate limits are fleet-wide**: one limiter per (provider, key, model family) in
//!   Redis; a 429 pauses the whole group until its reset and the request waits in the
//!   gateway instead of failing ([`ratelimit`]).
//!
//! [`proxy`] is the HTTP side; this file holds the [`Gateway`] (its state, the attempt
//! API the worker calls around each run, and its metrics). The gateway knows jobs only
//! as the IDs and caps the worker binds a token to.

pub mod budget;
pub mod config;
pub mod keys;
pub mod metering;
pub mod pricing;
pub mod proxy;
pub mod ratelimit;
pub mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorClass, JobError};
use crate::queue::QueueError;
use crate::secret::Secret;
use crate::settings::Settings;
use budget::{Binding, BudgetKeys, BudgetStore, Settlement, Spend, round_usd};
use config::{GatewaySettings, UpstreamSettings};
use keys::KeyPool;
use metering::Usage;
use pricing::PriceTable;
use ratelimit::{Limits, RateLimiter};

/// How long an agent may go on after a budget refusal before its run is stopped: long
/// enough to report what it has, short enough not to hold the attempt.
const BUDGET_GRACE: Duration = Duration::from_secs(5);
/// How long the end of an attempt waits for its last requests' spend to be settled.
const SETTLE_WAIT: Duration = Duration::from_secs(3);

/// A data API behind the gateway.
pub(crate) struct Upstream {
    pub settings: UpstreamSettings,
    pub keys: KeyPool,
}

/// The gateway of one worker process.
pub struct Gateway {
    pub(crate) settings: GatewaySettings,
    pub(crate) store: BudgetStore,
    pub(crate) limiter: RateLimiter,
    pub(crate) prices: PriceTable,
    pub(crate) anthropic: KeyPool,
    pub(crate) openai: KeyPool,
    pub(crate) upstreams: BTreeMap<String, Upstream>,
    pub(crate) http: reqwest::Client,
    pub(crate) settle_tx: mpsc::UnboundedSender<SettleJob>,
    pub metrics: Metrics,
    pub(crate) waiting: AtomicUsize,
    pub(crate) next_key: AtomicUsize,
    /// Bindings by token hash (they never change), to save a Redis read per request.
    pub(crate) bindings: Mutex<HashMap<String, budget::BindingKeys>>,
    /// Attempts this process issued: stopped a little after a budget refusal.
    cancels: Mutex<HashMap<String, CancellationToken>>,
    bound: OnceLock<std::net::SocketAddr>,
    attempt_ttl_secs: u64,
    spend_ttl_secs: u64,
}

/// What the settle task does for one finished request.
pub(crate) struct SettleJob {
    pub settlement: Settlement,
    /// The limiter to charge the tokens beyond the estimate to.
    pub limiter: Option<(String, Limits, i64)>,
}

/// What an agent is given for one attempt.
pub struct AttemptPass {
    token_hash: String,
    job_id: String,
    /// Base URLs and the attempt token, under the names agents read.
    pub env: BTreeMap<String, String>,
    /// Cancelled a few seconds after a budget refusal (a child of the attempt's own
    /// stop signal): give it to the run.
    pub cancel: CancellationToken,
}

impl Gateway {
    /// Connect to Redis and read the keys; the proxy starts with [`Gateway::serve`].
    pub async fn open(settings: &Settings) -> Result<Arc<Gateway>, QueueError> {
        let conn = crate::queue::connect(&settings.redis).await?;
        let g = &settings.gateway;
        let env = |name: &str| std::env::var(name).ok();
        let upstreams = g
            .upstreams
            .iter()
            .map(|(name, u)| {
                let keys = KeyPool::new(std::slice::from_ref(&u.key_env), &u.key_files, env);
                (
                    name.clone(),
                    Upstream {
                        settings: u.clone(),
                        keys,
                    },
                )
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(g.request_timeout_secs))
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| QueueError::Corrupt(format!("gateway HTTP client: {e}")))?;
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        let store = BudgetStore::new(conn.clone(), BudgetKeys::new(&settings.redis.key_prefix));
        let limiter = RateLimiter::new(conn, &settings.redis.key_prefix);
        let attempt_ttl_secs = settings
            .queue
            .research
            .attempt_timeout_secs
            .saturating_add(3600);
        let gateway = Arc::new(Gateway {
            settings: g.clone(),
            store: store.clone(),
            limiter: limiter.clone(),
            prices: PriceTable::new(g.prices.clone()),
            anthropic: KeyPool::new(&g.anthropic.key_env, &g.anthropic.key_files, env),
            openai: KeyPool::new(&g.openai.key_env, &g.openai.key_files, env),
            upstreams,
            http,
            settle_tx,
            metrics: Metrics::default(),
            waiting: AtomicUsize::new(0),
            next_key: AtomicUsize::new(0),
            bindings: Mutex::default(),
            cancels: Mutex::default(),
            bound: OnceLock::new(),
            attempt_ttl_secs,
            spend_ttl_secs: settings.queue.result_ttl_secs.max(attempt_ttl_secs),
        });
        tokio::spawn(settle_loop(settle_rx, store, limiter));
        for (name, pool) in [
            ("anthropic", &gateway.anthropic),
            ("openai", &gateway.openai),
        ]
        .into_iter()
        .chain(gateway.upstreams.iter().map(|(n, u)| (n.as_str(), &u.keys)))
        {
            if pool.keys().is_empty() {
                tracing::warn!(
                    provider = name,
                    "gateway: no key for this provider (none of its key_env variables is set, no key file readable); its requests will be refused"
                );
            }
        }
        Ok(gateway)
    }

    /// Listen on `gateway.listen` and serve until `stop`.
    pub async fn serve(
        self: &Arc<Self>,
        stop: CancellationToken,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = tokio::net::TcpListener::bind(&self.settings.listen).await?;
        let _ = self.bound.set(listener.local_addr()?);
        let app = proxy::router(self.clone());
        tracing::info!(listen = %listener.local_addr()?, public_url = %self.public_url(), "model gateway listening");
        // No Nagle: the end of an answer (its last chunk, written after the spend is
        // settled) must not wait for the client's delayed ACK (~40 ms).
        use axum::serve::ListenerExt as _;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        Ok(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
        }))
    }

    /// The URL sandboxes are given: `gateway.public_url`, else the address listened on.
    pub fn public_url(&self) -> String {
        if self.settings.public_url.is_empty()
            && let Some(addr) = self.bound.get()
        {
            return format!("http://{addr}");
        }
        self.settings.public_url()
    }

    /// What an attempt of `job` (profile `profile`) is bound to: its lease, and the
    /// caps of the job (`max_budget_usd`, `max_tokens`), its batch and its tenant
    /// (the `gateway.budgets.tenant_key` label) that its requests answer to.
    pub fn binding(
        &self,
        job: &crate::job::Job,
        lease: &crate::queue::Lease,
        profile: &str,
    ) -> Binding {
        let o = &job.spec.options;
        let b = &self.settings.budgets;
        let tenant = o.metadata.get(&b.tenant_key).cloned();
        Binding {
            job_id: job.id.to_string(),
            attempt: lease.attempt,
            fence: lease.token.clone(),
            profile: profile.to_string(),
            batch_cap_usd: if o.batch_id.is_some() {
                b.batch_usd
            } else {
                0.0
            },
            tenant_cap_usd: tenant.as_deref().map_or(0.0, |t| b.tenant_cap(t)),
            batch: o.batch_id.clone(),
            tenant,
            max_cost_usd: o.max_budget_usd.map_or(0.0, |u| u.0),
            max_tokens: o.max_tokens.unwrap_or(0),
            attempt_timeout_secs: o.attempt_timeout_secs,
        }
    }

    /// Issue a token for one attempt, bound to its job, attempt and fencing token and to
    /// the caps it answers to, and the environment that points an agent at the gateway.
    pub async fn begin_attempt(
        &self,
        binding: Binding,
        stop: &CancellationToken,
    ) -> Result<AttemptPass, QueueError> {
        let token = tokens::new_token();
        let token_hash = tokens::token_hash(token.expose());
        // The record outlives the attempt by an hour, so its spend can still be read.
        let ttl = binding
            .attempt_timeout_secs
            .map_or(self.attempt_ttl_secs, |t| t.saturating_add(3600))
            .max(self.attempt_ttl_secs);
        self.store
            .issue(&token_hash, &binding, ttl, self.spend_ttl_secs.max(ttl))
            .await?;
        let cancel = stop.child_token();
        self.cancels
            .lock()
            .unwrap()
            .insert(token_hash.clone(), cancel.clone());
        Ok(AttemptPass {
            env: self.agent_env(&token),
            token_hash,
            job_id: binding.job_id,
            cancel,
        })
    }

    /// The variables an agent reads: base URLs and, as its keys, the attempt token.
    fn agent_env(&self, token: &Secret) -> BTreeMap<String, String> {
        let url = self.public_url();
        let mut env = BTreeMap::new();
        env.insert("FLEET_GATEWAY_URL".into(), url.clone());
        env.insert("ANTHROPIC_BASE_URL".into(), url.clone());
        env.insert("ANTHROPIC_API_KEY".into(), token.expose().into());
        env.insert("OPENAI_BASE_URL".into(), format!("{url}/v1"));
        env.insert("OPENAI_API_KEY".into(), token.expose().into());
        for (name, u) in &self.upstreams {
            env.insert(u.settings.key_env.clone(), token.expose().into());
            let var = format!(
                "FLEET_UPSTREAM_{}_URL",
                name.to_ascii_uppercase().replace('-', "_")
            );
            env.insert(var, format!("{url}/upstream/{name}"));
        }
        env
    }

    /// End the attempt: its token is refused from now on; what it and its job spent.
    pub async fn end_attempt(&self, pass: AttemptPass) -> AttemptSpend {
        self.cancels.lock().unwrap().remove(&pass.token_hash);
        let ended = self.store.end_attempt(&pass.token_hash).await;
        if let Err(e) = &ended {
            tracing::warn!(job_id = %pass.job_id, error = %e, "gateway: could not end the attempt's token; it is refused when its lease is gone");
        }
        // The agent has exited, so its connections are closed; their spend is on its way
        // to Redis through the settle task. Wait (briefly) until it landed.
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT;
        let mut attempt = loop {
            match self.store.attempt_spend(&pass.token_hash).await {
                Ok(a) if a.2 <= 0 || tokio::time::Instant::now() >= deadline => break Some(a),
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => {
                    tracing::warn!(job_id = %pass.job_id, error = %e, "gateway: could not read the attempt's spend");
                    break None;
                }
            }
        };
        let job = self.store.job_spend(&pass.job_id).await.ok();
        let (state, budget_reason, _, attempt_spend) = attempt.take().unwrap_or_default();
        AttemptSpend {
            budget_exceeded: (state == "budget").then(|| budget_reason.unwrap_or_default()),
            attempt: attempt_spend,
            job: job.unwrap_or_default(),
        }
    }

    /// A budget refusal for a token this process issued: stop the run after a grace.
    pub(crate) fn budget_refused(&self, token_hash: &str) {
        if let Some(cancel) = self.cancels.lock().unwrap().get(token_hash).cloned() {
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(BUDGET_GRACE) => cancel.cancel(),
                }
            });
        }
    }

    /// The Prometheus text of the gateway's counters.
    pub fn metrics_text(&self) -> String {
        self.metrics
            .render(self.waiting.load(Ordering::Relaxed) as u64)
    }
}

/// Settles, in the background, requests that ended without their body being read to
/// the end (refused, failed, or the client went away); a body read to the end is settled
/// before its end is sent (see `proxy::MeteredBody`).
async fn settle_loop(
    mut rx: mpsc::UnboundedReceiver<SettleJob>,
    store: BudgetStore,
    limiter: RateLimiter,
) {
    while let Some(job) = rx.recv().await {
        settle(&store, &limiter, job).await;
    }
}

/// Record one finished request's spend (retrying Redis weather a few times) and charge
/// its tokens beyond the estimate to its limiter.
pub(crate) async fn settle(store: &BudgetStore, limiter: &RateLimiter, job: SettleJob) {
    let mut pause = Duration::from_millis(50);
    for tried in 1.. {
        match store.settle(&job.settlement).await {
            Ok(()) => break,
            // Only a connection fault is tried again: a settle is not idempotent, and
            // one that Redis ran and refused would fail the same way again.
            Err(QueueError::Redis(e))
                if tried < 8
                    && (e.is_io_error() || e.is_connection_dropped() || e.is_timeout()) =>
            {
                tracing::warn!(error = %e, "gateway: could not record a request's spend; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::error!(job_id = %job.settlement.job_id, error = %e, "gateway: a request's spend could not be recorded");
                break;
            }
        }
    }
    if let Some((key, limits, extra)) = job.limiter
        && extra != 0
        && let Err(e) = limiter.observe(&key, limits, extra, None).await
    {
        tracing::debug!(error = %e, "gateway: could not charge tokens to the rate limiter");
    }
}

/// What an attempt and its job spent, read when the attempt ends.
#[derive(Debug, Clone, Default)]
pub struct AttemptSpend {
    /// Why a request was refused for budget, if one was.
    pub budget_exceeded: Option<String>,
    pub attempt: Spend,
    pub job: Spend,
}

impl AttemptSpend {
    /// The spend as JSON fields: `usage` and `cost_usd` (the job's, all attempts),
    /// `attempt_usage` and `attempt_cost_usd`.
    pub fn fields(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("usage".into(), self.job.usage_json());
        m.insert("cost_usd".into(), json!(round_usd(self.job.cost_usd)));
        m.insert("attempt_usage".into(), self.attempt.usage_json());
        m.insert(
            "attempt_cost_usd".into(),
            json!(round_usd(self.attempt.cost_usd)),
        );
        m
    }

    /// Add the spend to a succeeded job's output; where the agent reported its own cost
    /// (Claude Code's `total_cost_usd`, for this attempt), it is kept as `cost_usd_agent`
    /// and a difference from the gateway's figure shows as `cost_usd_disagreement`.
    pub fn add_to(&self, output: &mut Value, agent_metadata: &Value) {
        let Some(obj) = output.as_object_mut() else {
            return;
        };
        obj.extend(self.fields());
        if let Some(agent) = agent_metadata.get("total_cost_usd").and_then(Value::as_f64) {
            obj.insert("cost_usd_agent".into(), json!(agent));
            let diff = agent - self.attempt.cost_usd;
            if diff.abs() > 1e-6_f64.max(self.attempt.cost_usd * 0.01) {
                obj.insert("cost_usd_disagreement".into(), json!(round_usd(diff)));
            }
        }
    }

    /// The attempt's error: `budget_exceeded` when a request was refused for budget
    /// (whatever the agent made of it), else the run's own error with the spend added to
    /// its details.
    pub fn error(&self, run_error: Option<JobError>) -> Option<JobError> {
        let details = |run: Option<&JobError>| {
            let mut d = serde_json::Map::new();
            if let Some(Value::Object(agent)) = run.and_then(|e| e.details.clone()) {
                d.extend(agent);
            }
            d.extend(self.fields());
            Value::Object(d)
        };
        if let Some(reason) = &self.budget_exceeded {
            let message = format!(
                "budget exceeded: {reason}; the job spent ${:.6} ({} requests)",
                self.job.cost_usd, self.job.requests
            );
            return Some(
                JobError::new(ErrorClass::BudgetExceeded, message)
                    .with_details(details(run_error.as_ref())),
            );
        }
        let err = run_error?;
        let d = details(Some(&err));
        Some(err.with_details(d))
    }
}

/// The gateway's Prometheus counters, by profile and model.
#[derive(Default)]
pub struct Metrics {
    by_model: Mutex<BTreeMap<(String, String), ModelCounters>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
    pub upstream_429: AtomicU64,
    pub rate_limit_waits: AtomicU64,
}

#[derive(Default, Clone, Copy)]
struct ModelCounters {
    requests: u64,
    usage: Usage,
    cost: f64,
}

impl Metrics {
    pub(crate) fn count(&self, profile: &str, model: &str, usage: &Usage, cost: f64) {
        let mut m = self.by_model.lock().unwrap();
        let c = m
            .entry((profile.to_string(), model.to_string()))
            .or_default();
        c.requests += 1;
        c.usage.input += usage.input;
        c.usage.output += usage.output;
        c.usage.cache_read += usage.cache_read;
        c.usage.cache_write += usage.cache_write;
        c.cost += cost;
    }

    pub(crate) fn refuse(&self, reason: &'static str) {
        *self.refused.lock().unwrap().entry(reason).or_default() += 1;
    }

    fn render(&self, waiting: u64) -> String {
        let mut out = String::new();
        let by_model = self.by_model.lock().unwrap().clone();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        head(
            &mut out,
            "fleet_gateway_requests_total",
            "counter",
            "Model requests through the gateway, by agent profile and model.",
        );
        for ((p, m), c) in &by_model {
            let _ = writeln!(
                out,
                "fleet_gateway_requests_total{{profile=\"{}\",model=\"{}\"}} {}",
                esc(p),
                esc(m),
                c.requests
            );
        }
        head(
            &mut out,
            "fleet_gateway_tokens_total",
            "counter",
            "Tokens used through the gateway, by agent profile, model and kind.",
        );
        for ((p, m), c) in &by_model {
            for (kind, n) in [
                ("input", c.usage.input),
                ("output", c.usage.output),
                ("cache_read", c.usage.cache_read),
                ("cache_write", c.usage.cache_write),
            ] {
                let _ = writeln!(
                    out,
                    "fleet_gateway_tokens_total{{profile=\"{}\",model=\"{}\",kind=\"{kind}\"}} {n}",
                    esc(p),
                    esc(m)
                );
            }
        }
        head(
            &mut out,
            "fleet_gateway_cost_usd_total",
            "counter",
            "Cost in US dollars of the tokens used through the gateway, by agent profile and model.",
        );
        for ((p, m), c) in &by_model {
            let _ = writeln!(
                out,
                "fleet_gateway_cost_usd_total{{profile=\"{}\",model=\"{}\"}} {}",
                esc(p),
                esc(m),
                round_usd(c.cost)
            );
        }
        head(
            &mut out,
            "fleet_gateway_refused_total",
            "counter",
            "Requests the gateway refused, by reason.",
        );
        for (reason, n) in self.refused.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "fleet_gateway_refused_total{{reason=\"{reason}\"}} {n}"
            );
        }
        head(
            &mut out,
            "fleet_gateway_upstream_429_total",
            "counter",
            "429 answers from providers (the group then waits; the request is sent again).",
        );
        let _ = writeln!(
            out,
            "fleet_gateway_upstream_429_total {}",
            self.upstream_429.load(Ordering::Relaxed)
        );
        head(
            &mut out,
            "fleet_gateway_rate_limit_waits_total",
            "counter",
            "Requests that waited for a rate limit.",
        );
        let _ = writeln!(
            out,
            "fleet_gateway_rate_limit_waits_total {}",
            self.rate_limit_waits.load(Ordering::Relaxed)
        );
        head(
            &mut out,
            "fleet_gateway_waiting",
            "gauge",
            "Requests waiting for a rate limit now.",
        );
        let _ = writeln!(out, "fleet_gateway_waiting {waiting}");
        out
    }
}

/// A Prometheus label value, escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
