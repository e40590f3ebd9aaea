//! The E2B sandbox provider: sandboxes in E2B's cloud, driven through E2B's
//! control-plane REST API ([`control`]) and the envd daemon inside each sandbox
//! ([`envd`], over the Connect protocol: [`connect`]).
//!
//! Built to E2B's published specs (`tests/specs/e2b/`) and tested against a fake
//! server that follows them (`fleet_tests::fake_e2b`). What it guarantees:
//!
//! - Passing failures (5xx, 409, 429, network errors and timeouts) of idempotent
//!   control-plane calls and of create are retried with exponential backoff and
//!   jitter, `request_attempts` tries in all, waiting at least `Retry-After`.
//!   A create that failed ambiguously (timeout, 5xx) may have created a sandbox
//!   anyway; each create is tagged with a one-off ID ([`META_CREATE_ID`]) and any
//!   such orphan is killed.
//! - The plan limits are kept on our side (see `limits.rs`), fleet-wide in Redis when
//!   the provider is given a [`FleetAdmission`] (workers do): at the concurrency cap
//!   or the create rate, `create` and a resuming `connect` wait up to the limit wait
//!   (`request_timeout_secs` unless set; the worker sets its longest attempt timeout)
//!   and then fail with `LimitReached`.
//! - A 429 on a create or resume is a wait, never a failed try: it does not count
//!   against `request_attempts`; the start is sent again after `Retry-After` (at least
//!   the backoff), with every worker's starts held back as long, until the limit wait
//!   runs out (then `LimitReached`, or `RateLimited` carrying a `Retry-After` longer
//!   than the wait, for the queue to honour).
//! - The API key and the sandboxes' envd access tokens never reach logs, error
//!   messages or `Debug` output: they are [`Secret`]s, sent as sensitive header
//!   values, and kept in memory only (re-fetched with `GET /sandboxes/{id}` when
//!   unknown, e.g. after a worker restart).
//!
//! - A kill that failed (control plane down past the retries) is not forgotten:
//!   the sandbox keeps its slot (it may well be running) and the kill is retried
//!   before every create or resume, at every `list`, and by
//!   [`SandboxProvider::retry_failed_kills`] (the pool's maintenance tick and its
//!   shutdown), until E2B confirms it; then the slot is freed.
//!
//! - `metrics` reads `GET /sandboxes/{id}/metrics` for the last two minutes and
//!   keeps the newest sample; none in that window (paused) is `Ok(None)`.
//!
//! Error mapping: 404 → `NotFound`; 409 → `Conflict`; 429 → `RateLimited` (with
//! `Retry-After`); envd's 502 "sandbox not found" → `NotFound` (the sandbox is
//! lost); other 5xx and transport failures → `Unavailable`; other 4xx → `Invalid`.
//! A missing file is `Invalid`, not `NotFound`: the sandbox is fine.

pub mod connect;
pub mod control;
pub mod envd;
mod exec;
mod http;
mod limits;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use self::control::{
    ApiSandboxState, ControlPlane, ListQuery, NetworkConfig, NewSandbox, Sandbox, api_seconds,
};
use self::envd::{EnvdClient, Target};
use self::http::RetryPolicy;
use self::limits::PlanLimits;
use crate::admission::FleetAdmission;
use crate::sandbox::{
    ExecControl, ExecOutput, ExecRequest, ListFilter, SandboxError, SandboxInfo, SandboxMetrics,
    SandboxProvider, SandboxSpec, SandboxState,
};
use crate::secret::Secret;
use crate::settings::E2bSettings;

/// Metadata key holding a one-off ID per `create` call, so that a sandbox created
/// by an attempt whose answer was lost can be found and killed. It is not shown
/// in the [`SandboxInfo`] this provider returns.
pub const META_CREATE_ID: &str = "dexter-fleet-create-id";

/// At most this many list pages are read, so a server that never stops handing
/// out `X-Next-Token` cannot loop us forever (100 per page: 100,000 sandboxes).
const MAX_LIST_PAGES: usize = 1000;

/// How far back `metrics` asks for samples: E2B samples every few seconds, so the
/// window holds the latest one with room for clock skew between us and E2B.
const METRICS_WINDOW: Duration = Duration::from_secs(120);

/// What envd needs for one sandbox, learnt from create, connect or get.
#[derive(Clone)]
struct Access {
    token: Option<Secret>,
    domain: Option<String>,
}

/// The E2B provider. One per worker process. Its plan limits are the fleet's when it
/// is given a [`FleetAdmission`] ([`E2bProvider::with_fleet_admission`]), else they
/// count the sandboxes this instance created or resumed.
pub struct E2bProvider {
    settings: E2bSettings,
    control: ControlPlane,
    envd: EnvdClient,
    limits: Arc<PlanLimits>,
    retry: RetryPolicy,
    access: Mutex<HashMap<String, Access>>,
    /// Sandboxes whose kill failed: retried until E2B confirms them gone.
    failed_kills: Mutex<HashSet<String>>,
}

impl fmt::Debug for E2bProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("E2bProvider")
            .field("api", &self.settings.api_base())
            .field("template", &self.settings.template)
            .field("running", &self.limits.running())
            .field("fleet_wide_limits", &self.limits.is_fleet_wide())
            .field(
                "max_concurrent_sandboxes",
                &self.settings.max_concurrent_sandboxes,
            )
            .field("creates_per_second", &self.settings.creates_per_second)
            .finish_non_exhaustive()
    }
}

impl E2bProvider {
    /// A provider for the account whose key is `settings.api_key`.
    pub fn new(settings: &E2bSettings) -> Result<Self, SandboxError> {
        let api_key = settings
            .api_key
            .as_ref()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| SandboxError::Invalid("E2B_API_KEY is not set".into()))?;
        let timeout = Duration::from_secs(settings.request_timeout_secs.max(1));
        Ok(Self {
            control: ControlPlane::new(settings.api_base(), api_key, timeout)?,
            envd: EnvdClient::new(timeout)?,
            limits: PlanLimits::new(
                settings.max_concurrent_sandboxes,
                settings.creates_per_second,
                timeout,
            ),
            retry: RetryPolicy::new(settings.request_attempts),
            access: Mutex::new(HashMap::new()),
            failed_kills: Mutex::new(HashSet::new()),
            settings: settings.clone(),
        })
    }

    /// Change the retry backoff (default 250 ms doubling to 10 s, with jitter).
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.retry.min_delay = min;
        self.retry.max_delay = max.max(min);
        self
    }

    /// Change how long `create`/`connect` wait at a plan limit before
    /// `LimitReached` (default: `request_timeout_secs`).
    pub fn with_limit_wait(self, wait: Duration) -> Self {
        self.limits.set_wait(wait);
        self
    }

    /// Share the plan limits with every worker through Redis (`admission`'s plan
    /// replaces the in-process one). Call within a Tokio runtime: it starts the task
    /// that renews this process's holds.
    pub fn with_fleet_admission(mut self, admission: FleetAdmission) -> Self {
        self.limits = PlanLimits::fleet(admission, self.limits.wait());
        self
    }

    /// Sandboxes this provider holds as running (counted against the cap).
    pub fn running_sandboxes(&self) -> usize {
        self.limits.running()
    }

    fn remember(&self, s: &Sandbox) {
        self.access.lock().unwrap().insert(
            s.sandbox_id.clone(),
            Access {
                token: s.envd_access_token.clone(),
                domain: s.domain.clone(),
            },
        );
    }

    /// The sandbox is gone or paused: free its slot and forget its token (a
    /// later call learns its state from `GET /sandboxes/{id}`).
    async fn forget(&self, id: &str) {
        self.limits.release(id).await;
        self.access.lock().unwrap().remove(id);
    }

    /// Release the slot and forget the sandbox when `r` says it is gone.
    async fn note<T>(&self, id: &str, r: Result<T, SandboxError>) -> Result<T, SandboxError> {
        if let Err(SandboxError::NotFound(_)) = &r {
            self.forget(id).await;
        }
        r
    }

    /// Send one start (a create or a resume) in its turn. A 429 is a wait, not a try:
    /// every worker's starts are held back for `Retry-After` (at least the backoff,
    /// which doubles with each refusal), and the start is sent again in a later turn,
    /// until the limit wait runs out.
    async fn start_in_turn<T, F, Fut>(
        &self,
        call: &str,
        sandbox: &str,
        stop: Option<&CancellationToken>,
        mut send: F,
    ) -> Result<T, SandboxError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, SandboxError>>,
    {
        let deadline = tokio::time::Instant::now() + self.limits.wait();
        let mut refusals = 0u32;
        loop {
            unless_stopped(stop, self.limits.start_turn()).await??;
            let retry_after = match send().await {
                Err(SandboxError::RateLimited { retry_after }) => retry_after,
                other => return other,
            };
            refusals += 1;
            let backoff = self
                .retry
                .min_delay
                .saturating_mul(1 << (refusals - 1).min(16))
                .min(self.retry.max_delay)
                .mul_f64(rand::random_range(0.5..=1.0));
            let delay = retry_after.map_or(backoff, |after| after.max(backoff));
            if tokio::time::Instant::now() + delay > deadline {
                return Err(match retry_after {
                    Some(after) if after > self.limits.wait() => {
                        SandboxError::RateLimited { retry_after }
                    }
                    _ => SandboxError::LimitReached(format!(
                        "{call}: E2B still answered 429 after {refusals} tries within {:?}",
                        self.limits.wait()
                    )),
                });
            }
            tracing::info!(
                call,
                sandbox,
                refusals,
                delay_ms = delay.as_millis() as u64,
                "E2B answered 429; holding starts back and trying again"
            );
            self.limits.defer_starts(delay).await;
        }
    }

    /// Where the sandbox's envd is, fetching its access token when unknown.
    async fn target(&self, id: &str) -> Result<Target, SandboxError> {
        let known = self.access.lock().unwrap().get(id).cloned();
        let access = match known {
            Some(a) => a,
            None => {
                let detail = self
                    .note(id, self.retry.run("get", id, || self.control.get(id)).await)
                    .await?;
                if detail.state == ApiSandboxState::Paused {
                    self.limits.release(id).await;
                    return Err(SandboxError::Conflict(format!(
                        "sandbox {id} is paused; connect to resume it"
                    )));
                }
                let a = Access {
                    token: detail.envd_access_token,
                    domain: detail.domain,
                };
                self.access
                    .lock()
                    .unwrap()
                    .insert(id.to_string(), a.clone());
                a
            }
        };
        Target::new(
            id,
            self.settings.envd_base(id, access.domain.as_deref()),
            access.token.as_ref(),
        )
    }

    /// Try each failed kill once more; a confirmed one frees its slot. Returns the
    /// sandboxes still not confirmed killed.
    async fn retry_kills_once(&self) -> Vec<String> {
        let pending: Vec<String> = self.failed_kills.lock().unwrap().iter().cloned().collect();
        for id in pending {
            match self.control.kill(&id).await {
                Ok(existed) => {
                    self.failed_kills.lock().unwrap().remove(&id);
                    self.forget(&id).await;
                    tracing::info!(sandbox = %id, call = "kill", already_gone = !existed, "sandbox killed on retry");
                }
                Err(e) => {
                    tracing::debug!(sandbox = %id, call = "kill", error = %e, "kill retry failed; will try again")
                }
            }
        }
        self.failed_kills.lock().unwrap().iter().cloned().collect()
    }

    /// Kill every sandbox tagged with `create_id` except `keep`: the leftovers of
    /// create attempts whose answers were lost. Best effort.
    async fn remove_orphans(&self, create_id: &str, keep: Option<&str>) {
        let query = ListQuery {
            states: vec![],
            metadata: BTreeMap::from([(META_CREATE_ID.to_string(), create_id.to_string())]),
        };
        let found = match self.list_all(&query).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(call = "create", error = %e, "could not look for sandboxes left by failed create attempts");
                return;
            }
        };
        for s in found {
            if Some(s.sandbox_id.as_str()) == keep
                || s.metadata
                    .as_ref()
                    .and_then(|m| m.get(META_CREATE_ID))
                    .map(String::as_str)
                    != Some(create_id)
            {
                continue;
            }
            tracing::warn!(sandbox = %s.sandbox_id, call = "create", "killing sandbox left by a failed create attempt");
            if let Err(e) = self
                .retry
                .run("kill", &s.sandbox_id, || self.control.kill(&s.sandbox_id))
                .await
            {
                tracing::warn!(sandbox = %s.sandbox_id, call = "kill", error = %e, "could not kill orphan sandbox");
            }
        }
    }

    async fn list_all(
        &self,
        query: &ListQuery,
    ) -> Result<Vec<control::ListedSandbox>, SandboxError> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let (page, next) = self
                .retry
                .run("list", "-", || {
                    self.control.list_page(query, token.as_deref())
                })
                .await?;
            all.extend(page);
            match next {
                None => return Ok(all),
                Some(n) if token.as_deref() == Some(n.as_str()) => {
                    return Err(SandboxError::Unavailable(
                        "list: the server repeated the same X-Next-Token".into(),
                    ));
                }
                Some(n) => token = Some(n),
            }
        }
        Err(SandboxError::Unavailable(format!(
            "list: more than {MAX_LIST_PAGES} pages"
        )))
    }
}

/// IDs go into URL paths: refuse anything but E2B's alphabet (lowercase
/// alphanumerics, and `-` in legacy composite IDs) so no ID can alter a path.
/// `wait`, unless `stop` fires first (then `Cancelled`): for the waits before a
/// request is sent, which can be given up without leaving anything behind.
async fn unless_stopped<T>(
    stop: Option<&CancellationToken>,
    wait: impl std::future::Future<Output = T>,
) -> Result<T, SandboxError> {
    match stop {
        None => Ok(wait.await),
        Some(stop) => tokio::select! {
            biased;
            _ = stop.cancelled() => Err(SandboxError::Cancelled),
            r = wait => Ok(r),
        },
    }
}

fn check_id(id: &str) -> Result<(), SandboxError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !id.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(SandboxError::Invalid(format!(
            "not an E2B sandbox ID: {id:?}"
        )))
    }
}

/// The newest of E2B's samples, in our units (negative values read as 0).
fn latest_metrics(samples: &[control::SandboxMetric]) -> Option<SandboxMetrics> {
    let m = samples.iter().max_by_key(|m| m.timestamp_unix)?;
    let bytes = |v: i64| u64::try_from(v).unwrap_or(0);
    Some(SandboxMetrics {
        cpu_count: u32::try_from(m.cpu_count).unwrap_or(0),
        cpu_used_pct: if m.cpu_used_pct.is_finite() {
            m.cpu_used_pct.max(0.0)
        } else {
            0.0
        },
        mem_used_bytes: bytes(m.mem_used),
        mem_total_bytes: bytes(m.mem_total),
        disk_used_bytes: m.disk_used.map(bytes),
        at_ms: bytes(m.timestamp_unix).saturating_mul(1000),
    })
}

fn without_create_id(mut m: BTreeMap<String, String>) -> BTreeMap<String, String> {
    m.remove(META_CREATE_ID);
    m
}

impl E2bProvider {
    /// Connect (resuming if paused) without describing the sandbox afterwards.
    /// `resuming`: the caller knows it is paused (another worker may have paused it,
    /// so this process's own view that it runs is no guide).
    async fn connect_only(
        &self,
        id: &str,
        timeout: Duration,
        resuming: bool,
    ) -> Result<control::Sandbox, SandboxError> {
        check_id(id)?;
        let secs = api_seconds(timeout);
        // A sandbox we hold as running only has its TTL extended; anything else may
        // be resumed, which takes a slot and a create turn.
        let slot = if !resuming && self.limits.is_running(id) {
            None
        } else {
            if !self.failed_kills.lock().unwrap().is_empty() {
                self.retry_kills_once().await;
            }
            Some(self.limits.reserve().await?)
        };
        let needs_turn = slot.is_some();
        let result = self
            .retry
            .run("connect", id, || async {
                if needs_turn {
                    self.start_in_turn("connect", id, None, || self.control.connect(id, secs))
                        .await
                } else {
                    self.control.connect(id, secs).await
                }
            })
            .await;
        let (sandbox, resumed) = self.note(id, result).await?;
        if let Some(slot) = slot {
            slot.commit(id).await;
        }
        self.remember(&sandbox);
        tracing::info!(sandbox = %id, call = "connect", resumed, "sandbox connected");
        Ok(sandbox)
    }
}

#[async_trait]
impl SandboxProvider for E2bProvider {
    fn name(&self) -> &'static str {
        "e2b"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxInfo, SandboxError> {
        let template = if spec.template.is_empty() {
            self.settings.template.as_str()
        } else {
            spec.template.as_str()
        };
        let create_id = uuid::Uuid::now_v7().to_string();
        let egress = spec.network.as_ref().filter(|n| n.restricts());
        let mut metadata = spec.metadata.clone();
        metadata.insert(META_CREATE_ID.to_string(), create_id.clone());
        let body = NewSandbox {
            template_id: template,
            timeout: api_seconds(spec.timeout),
            auto_pause: spec.auto_pause,
            secure: true,
            metadata: &metadata,
            env_vars: &spec.env,
            allow_internet_access: egress.map(|n| n.internet),
            network: egress.map(|n| NetworkConfig {
                allow_out: &n.allow,
                deny_out: &n.deny,
            }),
        };
        if !self.failed_kills.lock().unwrap().is_empty() {
            self.retry_kills_once().await;
        }
        let stop = spec.stop.as_ref();
        let slot = unless_stopped(stop, self.limits.reserve()).await??;
        let ambiguous = AtomicBool::new(false);
        let result = self
            .retry
            .run("create", "-", || async {
                // Stopped between tries: no further request (Cancelled is final); an
                // earlier ambiguous one is cleared up below.
                if stop.is_some_and(|s| s.is_cancelled()) {
                    return Err(SandboxError::Cancelled);
                }
                let r = self
                    .start_in_turn("create", "-", stop, || self.control.create(&body))
                    .await;
                if let Err(SandboxError::Unavailable(_)) = &r {
                    // A timeout or a 5xx: the sandbox may exist even so.
                    ambiguous.store(true, Ordering::SeqCst);
                }
                r
            })
            .await;
        if ambiguous.load(Ordering::SeqCst) {
            let keep = result.as_ref().ok().map(|s| s.sandbox_id.as_str());
            self.remove_orphans(&create_id, keep).await;
        }
        let sandbox = result?;
        slot.commit(&sandbox.sandbox_id).await;
        self.remember(&sandbox);
        tracing::info!(sandbox = %sandbox.sandbox_id, call = "create", template, envd = %sandbox.envd_version, "sandbox created");
        Ok(SandboxInfo {
            id: sandbox.sandbox_id,
            state: SandboxState::Running,
            template: template.to_string(),
            metadata: spec.metadata.clone(),
        })
    }

    async fn connect(&self, id: &str, timeout: Duration) -> Result<SandboxInfo, SandboxError> {
        let sandbox = self.connect_only(id, timeout, false).await?;
        // `Sandbox` carries no metadata: fetch it. The sandbox is running either way,
        // so a failure here only costs the metadata.
        let metadata = match self.retry.run("get", id, || self.control.get(id)).await {
            Ok(d) => without_create_id(d.metadata.unwrap_or_default()),
            Err(e) => {
                tracing::warn!(sandbox = %id, call = "get", error = %e, "connected, but metadata unavailable");
                BTreeMap::new()
            }
        };
        Ok(SandboxInfo {
            id: id.to_string(),
            state: SandboxState::Running,
            template: sandbox.alias.unwrap_or(sandbox.template_id),
            metadata,
        })
    }

    async fn resume(&self, id: &str, timeout: Duration) -> Result<(), SandboxError> {
        self.connect_only(id, timeout, true).await.map(|_| ())
    }

    async fn pause(&self, id: &str) -> Result<(), SandboxError> {
        check_id(id)?;
        let newly = self
            .note(
                id,
                self.retry.run("pause", id, || self.control.pause(id)).await,
            )
            .await?;
        // envd of a paused sandbox answers 502 "not found", which would read as
        // "lost"; forgetting it makes `exec` ask the control plane and say "paused".
        self.forget(id).await;
        tracing::info!(sandbox = %id, call = "pause", already_paused = !newly, "sandbox paused");
        Ok(())
    }

    async fn kill(&self, id: &str) -> Result<(), SandboxError> {
        check_id(id)?;
        let existed = match self.retry.run("kill", id, || self.control.kill(id)).await {
            Ok(existed) => existed,
            Err(e) => {
                // It may still be running: it keeps its slot, and the kill is retried.
                self.failed_kills.lock().unwrap().insert(id.to_string());
                return Err(e);
            }
        };
        self.failed_kills.lock().unwrap().remove(id);
        self.forget(id).await;
        tracing::info!(sandbox = %id, call = "kill", already_gone = !existed, "sandbox killed");
        Ok(())
    }

    async fn set_timeout(&self, id: &str, timeout: Duration) -> Result<(), SandboxError> {
        check_id(id)?;
        let secs = api_seconds(timeout);
        let r = self
            .retry
            .run("set_timeout", id, || self.control.set_timeout(id, secs))
            .await;
        self.note(id, r).await?;
        tracing::debug!(sandbox = %id, call = "set_timeout", secs, "sandbox timeout set");
        Ok(())
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>, SandboxError> {
        let mut states: Vec<&'static str> = filter
            .states
            .iter()
            .map(|s| match s {
                SandboxState::Running => "running",
                SandboxState::Paused => "paused",
            })
            .collect();
        states.sort_unstable();
        states.dedup();
        let query = ListQuery {
            states,
            metadata: filter.metadata.clone(),
        };
        // Held before the list was asked for: only these can be judged by it (a
        // sandbox created meanwhile may be missing from the answer).
        if !self.failed_kills.lock().unwrap().is_empty() {
            self.retry_kills_once().await;
        }
        let held_before = self.limits.held();
        let listed = self.list_all(&query).await?;

        // What E2B says corrects our slot count: paused sandboxes (auto-paused on
        // timeout) hold no slot, and an unfiltered list of running sandboxes is
        // the whole truth about which ones do.
        let running: HashSet<&str> = listed
            .iter()
            .filter(|s| s.state == ApiSandboxState::Running)
            .map(|s| s.sandbox_id.as_str())
            .collect();
        for s in listed.iter().filter(|s| s.state == ApiSandboxState::Paused) {
            self.limits.release(&s.sandbox_id).await;
        }
        if filter.metadata.is_empty()
            && (filter.states.is_empty() || filter.states.contains(&SandboxState::Running))
        {
            self.limits
                .retain(|id| !held_before.contains(id) || running.contains(id))
                .await;
            // A sandbox whose kill failed and that the whole list no longer shows is gone.
            self.failed_kills
                .lock()
                .unwrap()
                .retain(|id| !held_before.contains(id) || running.contains(id.as_str()));
        }

        let wanted =
            |state: SandboxState| filter.states.is_empty() || filter.states.contains(&state);
        let mut out = Vec::with_capacity(listed.len());
        for s in listed {
            let state = match s.state {
                ApiSandboxState::Running => SandboxState::Running,
                ApiSandboxState::Paused => SandboxState::Paused,
                ApiSandboxState::Other => continue,
            };
            let metadata = s.metadata.unwrap_or_default();
            // Checked again here: a server that ignored the filter must not hand the
            // pool sandboxes that are not its own.
            if !wanted(state)
                || !filter
                    .metadata
                    .iter()
                    .all(|(k, v)| metadata.get(k) == Some(v))
            {
                continue;
            }
            out.push(SandboxInfo {
                id: s.sandbox_id,
                state,
                template: s.alias.unwrap_or(s.template_id),
                metadata: without_create_id(metadata),
            });
        }
        tracing::debug!(call = "list", count = out.len(), "sandboxes listed");
        Ok(out)
    }

    async fn exec(
        &self,
        id: &str,
        request: &ExecRequest,
        control: ExecControl,
    ) -> Result<ExecOutput, SandboxError> {
        check_id(id)?;
        let target = self.target(id).await?;
        let r = exec::run(&self.envd, &target, self.retry, request, control).await;
        if let Err(SandboxError::NotFound(_)) = &r {
            // The edge says the sandbox is gone; forget its token (a later call
            // re-fetches it, or learns from the control plane that it is gone).
            self.access.lock().unwrap().remove(id);
        }
        r
    }

    fn failed_kills(&self) -> Vec<String> {
        self.failed_kills.lock().unwrap().iter().cloned().collect()
    }

    fn slot_wanted(&self) -> bool {
        self.limits.slot_wanted()
    }

    async fn retry_failed_kills(&self) -> Vec<String> {
        if self.failed_kills.lock().unwrap().is_empty() {
            return Vec::new();
        }
        self.retry_kills_once().await
    }

    /// `GET /sandboxes/{id}/metrics` for the last [`METRICS_WINDOW`], retried like
    /// the other idempotent calls; the newest sample wins. No sample in the window
    /// (paused, just started) is `Ok(None)`; an unknown sandbox (404) is `NotFound`.
    /// A 404 here frees no slot: only the calls that manage the sandbox judge that.
    async fn metrics(&self, id: &str) -> Result<Option<SandboxMetrics>, SandboxError> {
        check_id(id)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let start = now.saturating_sub(METRICS_WINDOW).as_secs();
        let samples = self
            .retry
            .run("metrics", id, || self.control.metrics(id, start))
            .await?;
        Ok(latest_metrics(&samples))
    }

    async fn write_file(&self, id: &str, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        check_id(id)?;
        let target = self.target(id).await?;
        self.retry
            .run("write_file", id, || {
                self.envd.write_file(&target, path, contents)
            })
            .await
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, SandboxError> {
        check_id(id)?;
        let target = self.target(id).await?;
        self.retry
            .run("read_file", id, || self.envd.read_file(&target, path))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> E2bSettings {
        E2bSettings {
            domain: "e2b.app".into(),
            api_url: String::new(),
            envd_url: String::new(),
            template: "base".into(),
            max_concurrent_sandboxes: 2,
            creates_per_second: 1.0,
            request_timeout_secs: 5,
            request_attempts: 3,
            api_key: Some(Secret::new("e2b_0123456789abcdef")),
        }
    }

    #[test]
    fn needs_an_api_key() {
        let mut s = settings();
        s.api_key = None;
        assert!(matches!(
            E2bProvider::new(&s),
            Err(SandboxError::Invalid(_))
        ));
        s.api_key = Some(Secret::new(""));
        assert!(matches!(
            E2bProvider::new(&s),
            Err(SandboxError::Invalid(_))
        ));
    }

    #[test]
    fn debug_output_holds_no_key() {
        let p = E2bProvider::new(&settings()).unwrap();
        let d = format!("{p:?}");
        assert!(d.contains("https://api.e2b.app"), "{d}");
        assert!(!d.contains("0123456789abcdef"), "{d}");
    }

    #[test]
    fn the_newest_metrics_sample_wins() {
        let sample = |t: i64, pct: f64, mem: i64| control::SandboxMetric {
            timestamp: None,
            timestamp_unix: t,
            cpu_count: 2,
            cpu_used_pct: pct,
            mem_used: mem,
            mem_total: 512 << 20,
            mem_cache: None,
            disk_used: Some(1 << 20),
            disk_total: None,
        };
        assert_eq!(latest_metrics(&[]), None);
        let m = latest_metrics(&[
            sample(20, 30.0, 7),
            sample(10, 5.0, 3),
            sample(15, f64::NAN, -1),
        ])
        .unwrap();
        assert_eq!(
            m,
            SandboxMetrics {
                cpu_count: 2,
                cpu_used_pct: 30.0,
                mem_used_bytes: 7,
                mem_total_bytes: 512 << 20,
                disk_used_bytes: Some(1 << 20),
                at_ms: 20_000,
            }
        );
        let m = latest_metrics(&[sample(15, f64::NAN, -1)]).unwrap();
        assert_eq!((m.cpu_used_pct, m.mem_used_bytes), (0.0, 0));
    }

    #[test]
    fn ids_that_could_change_a_path_are_refused() {
        assert!(check_id("i4k2abcdefghijklmnopq").is_ok());
        assert!(check_id("i4k2abc-6532622b").is_ok());
        for bad in ["", "../x", "a/b", "a?b", "a%2F", "-x", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
