//! The agent pool: sandboxes with an agent set up in them, leased to jobs one at a time.
//!
//! `lease` gives a job a warm idle agent if there is one, else resumes a paused one,
//! else launches a new one within the profile's limit (`worker.concurrency`), else
//! waits for one to come back. While a job holds an agent, its sandbox's own timeout is
//! extended past the attempt's, so it never expires under a running job. `give_back`
//! returns it: kept warm, paused or killed per `pool.idle_policy`, killed if it was
//! ephemeral, recycled after `pool.recycle_after_jobs`, dropped if the sandbox was lost.
//!
//! Every sandbox the pool creates is tagged (`META_OWNER`, `META_POOL`,
//! `META_AGENT_ID`, `META_WORKER`), so `shutdown` and `reconcile` know which are theirs:
//! no sandbox leaks.
//!
//! Deployment patterns: a **persistent agent** (launched with `persistent`, addressed
//! by `agent_id`, paused rather than killed at shutdown), an **agent pool** (several
//! agents of a profile serving jobs in parallel), **ephemeral agents** (a fresh sandbox
//! per job, killed after).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::JobError;
use crate::runtime::AgentRuntime;
use crate::sandbox::{
    ListFilter, META_AGENT_ID, META_OWNER, META_POOL, SandboxError, SandboxInfo, SandboxProvider,
    SandboxSpec, SandboxState,
};
use crate::settings::{IdlePolicy, PoolSettings};

/// Metadata key naming the worker process that created a sandbox.
pub const META_WORKER: &str = "dexter-fleet-worker";
/// Metadata key marking a persistent agent.
pub const META_PERSISTENT: &str = "dexter-fleet-persistent";
/// The value of `META_OWNER` on every sandbox this system creates.
pub const OWNER: &str = "dexter-fleet";

/// One agent profile as the pool needs it.
pub struct PoolProfile {
    pub runtime: Arc<dyn AgentRuntime>,
    /// Template and environment for new sandboxes of this profile.
    pub template: String,
    pub env: BTreeMap<String, String>,
    /// Most agents of this profile at once.
    pub max_agents: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentState {
    Launching,
    Idle,
    Busy,
    Paused,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub agent_id: String,
    pub profile: String,
    pub sandbox_id: String,
    pub state: AgentState,
    pub persistent: bool,
    pub jobs_served: u64,
}

struct Agent {
    info: AgentInfo,
    idle_since: Instant,
}

/// An agent leased to one job. Give it back with [`AgentPool::give_back`].
///
/// The lease is also a guard: dropped without `give_back` (the attempt was cut off
/// by the outer timeout, or panicked), it still gives the agent back — a persistent
/// agent is kept (the provider killed the command with its dropped `exec`), any
/// other agent is removed and its sandbox killed — so no agent stays busy forever.
pub struct AgentLease {
    pub agent_id: String,
    pub sandbox_id: String,
    pub profile: String,
    ephemeral: bool,
    phase: LeasePhase,
    /// `Some` while the lease is out; taken by `give_back` and by the error paths
    /// of `lease`, which settle the agent themselves.
    core: Option<Arc<PoolCore>>,
}

/// How far a lease got: what a dropped lease must undo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeasePhase {
    /// The sandbox is being created and set up (its ID may not be known yet).
    Launching,
    /// A paused agent is being resumed.
    Resuming,
    /// The agent is the job's.
    Held,
}

impl AgentLease {
    fn new(
        core: &Arc<PoolCore>,
        agent_id: &str,
        sandbox_id: &str,
        profile: &str,
        ephemeral: bool,
        phase: LeasePhase,
    ) -> AgentLease {
        AgentLease {
            agent_id: agent_id.to_string(),
            sandbox_id: sandbox_id.to_string(),
            profile: profile.to_string(),
            ephemeral,
            phase,
            core: Some(core.clone()),
        }
    }

    /// The caller settles the agent itself from here on: dropping does nothing.
    fn disarm(&mut self) {
        self.core = None;
    }
}

impl std::fmt::Debug for AgentLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLease")
            .field("agent_id", &self.agent_id)
            .field("sandbox_id", &self.sandbox_id)
            .field("profile", &self.profile)
            .field("ephemeral", &self.ephemeral)
            .field("phase", &self.phase)
            .field("armed", &self.core.is_some())
            .finish()
    }
}

impl Drop for AgentLease {
    fn drop(&mut self) {
        if let Some(core) = self.core.take() {
            core.recover_dropped(
                std::mem::take(&mut self.agent_id),
                std::mem::take(&mut self.sandbox_id),
                self.phase,
            );
        }
    }
}

/// Pool counters, for /metrics and the benchmarks.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PoolStats {
    pub created: u64,
    pub killed: u64,
    pub paused: u64,
    pub resumed: u64,
    pub leases: u64,
}

pub struct AgentPool {
    core: Arc<PoolCore>,
    profiles: BTreeMap<String, PoolProfile>,
    settings: PoolSettings,
    worker: String,
}

/// The pool's state, shared with the leases it hands out (a dropped lease reaches
/// back here to give its agent back).
struct PoolCore {
    provider: Arc<dyn SandboxProvider>,
    agents: Mutex<HashMap<String, Agent>>,
    stats: Mutex<PoolStats>,
    changed: Notify,
}

impl PoolCore {
    /// Remove an agent and kill its sandbox (best effort).
    async fn forget(&self, agent_id: &str, sandbox_id: &str) {
        self.agents.lock().unwrap().remove(agent_id);
        self.changed.notify_waiters();
        if !sandbox_id.is_empty() {
            self.kill_sandbox(sandbox_id).await;
        }
    }

    async fn kill_sandbox(&self, sandbox_id: &str) {
        match self.provider.kill(sandbox_id).await {
            Ok(()) | Err(SandboxError::NotFound(_)) => self.stats.lock().unwrap().killed += 1,
            Err(e) => {
                tracing::warn!(%sandbox_id, error = %e, "could not kill sandbox; will retry")
            }
        }
    }

    /// A lease was dropped without `give_back`. A persistent agent that was the
    /// job's goes back idle (one being resumed goes back paused: a later lease
    /// resumes it again); any other agent, or one still launching, is removed and
    /// its sandbox killed, since what the cut-off attempt left in it is unknown.
    fn recover_dropped(self: Arc<Self>, agent_id: String, sandbox_id: String, phase: LeasePhase) {
        let kill = {
            let mut agents = self.agents.lock().unwrap();
            match agents.get_mut(&agent_id) {
                None => None,
                Some(a) if a.info.persistent && phase == LeasePhase::Held => {
                    a.info.state = AgentState::Idle;
                    a.idle_since = Instant::now();
                    None
                }
                Some(a) if a.info.persistent && phase == LeasePhase::Resuming => {
                    a.info.state = AgentState::Paused;
                    None
                }
                Some(_) => {
                    agents.remove(&agent_id);
                    Some(sandbox_id.clone())
                }
            }
        };
        self.changed.notify_waiters();
        tracing::warn!(%agent_id, %sandbox_id, ?phase, "an attempt ended without giving its agent back (timeout or panic); agent recovered");
        if let Some(id) = kill.filter(|id| !id.is_empty()) {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(async move { self.kill_sandbox(&id).await });
                }
                Err(_) => {
                    tracing::warn!(sandbox_id = %id, "no runtime left to kill the sandbox of a dropped lease")
                }
            }
        }
    }
}

impl AgentPool {
    pub fn new(
        provider: Arc<dyn SandboxProvider>,
        profiles: BTreeMap<String, PoolProfile>,
        settings: PoolSettings,
        worker: impl Into<String>,
    ) -> AgentPool {
        AgentPool {
            core: Arc::new(PoolCore {
                provider,
                agents: Mutex::default(),
                stats: Mutex::default(),
                changed: Notify::new(),
            }),
            profiles,
            settings,
            worker: worker.into(),
        }
    }

    pub fn provider(&self) -> &Arc<dyn SandboxProvider> {
        &self.core.provider
    }

    pub fn runtime(&self, profile: &str) -> Option<Arc<dyn AgentRuntime>> {
        self.profiles.get(profile).map(|p| p.runtime.clone())
    }

    pub fn stats(&self) -> PoolStats {
        *self.core.stats.lock().unwrap()
    }

    pub fn agents(&self) -> Vec<AgentInfo> {
        let mut v: Vec<AgentInfo> = self
            .core
            .agents
            .lock()
            .unwrap()
            .values()
            .map(|a| a.info.clone())
            .collect();
        v.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        v
    }

    fn sandbox_timeout(&self, attempt_timeout: Duration) -> Duration {
        Duration::from_secs(self.settings.sandbox_timeout_secs)
            .max(attempt_timeout.saturating_add(Duration::from_secs(60)))
    }

    /// Lease an agent of `profile` (or the agent `agent_id`) for one job.
    /// `ephemeral`: a fresh agent, killed when given back. Waiting for a busy
    /// agent ends at `attempt_timeout` with a timeout error.
    pub async fn lease(
        &self,
        profile: &str,
        agent_id: Option<&str>,
        ephemeral: bool,
        attempt_timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<AgentLease, JobError> {
        let Some(max) = self.profiles.get(profile).map(|p| p.max_agents) else {
            return Err(JobError::permanent(format!(
                "unknown agent profile {profile:?}"
            )));
        };
        let timeout = self.sandbox_timeout(attempt_timeout);
        // Waiting for an agent spends the attempt's budget: past it, the attempt
        // ends as a timeout (a launch or resume under way is not cut short).
        let give_up_at = crate::time::instant_after(attempt_timeout);
        loop {
            // Register interest before looking, so a give_back between the look and
            // the wait is not missed.
            let notified = self.core.changed.notified();
            enum Next {
                Use(String, String),
                Resume(String, String),
                Launch,
                Wait,
            }
            let next = {
                let mut agents = self.core.agents.lock().unwrap();
                if let Some(wanted) = agent_id {
                    match agents.get_mut(wanted) {
                        None => {
                            return Err(JobError::permanent(format!(
                                "unknown agent ID {wanted:?} (not in this worker's pool)"
                            )));
                        }
                        Some(a) if a.info.state == AgentState::Idle => {
                            a.info.state = AgentState::Busy;
                            Next::Use(a.info.agent_id.clone(), a.info.sandbox_id.clone())
                        }
                        Some(a) if a.info.state == AgentState::Paused => {
                            a.info.state = AgentState::Busy;
                            Next::Resume(a.info.agent_id.clone(), a.info.sandbox_id.clone())
                        }
                        Some(_) => Next::Wait,
                    }
                } else {
                    let of_profile = || agents.values().filter(|a| a.info.profile == profile);
                    let count = of_profile().count();
                    let idle = (!ephemeral)
                        .then(|| {
                            of_profile()
                                .filter(|a| a.info.state == AgentState::Idle && !a.info.persistent)
                                .map(|a| a.info.agent_id.clone())
                                .next()
                        })
                        .flatten();
                    let paused = (!ephemeral)
                        .then(|| {
                            of_profile()
                                .filter(|a| {
                                    a.info.state == AgentState::Paused && !a.info.persistent
                                })
                                .map(|a| a.info.agent_id.clone())
                                .next()
                        })
                        .flatten();
                    if let Some(id) = idle {
                        let a = agents.get_mut(&id).unwrap();
                        a.info.state = AgentState::Busy;
                        Next::Use(id, a.info.sandbox_id.clone())
                    } else if count < max {
                        Next::Launch
                    } else if let Some(id) = paused {
                        let a = agents.get_mut(&id).unwrap();
                        a.info.state = AgentState::Busy;
                        Next::Resume(id, a.info.sandbox_id.clone())
                    } else {
                        Next::Wait
                    }
                }
            };
            // From here the lease guards the agent: should this future be dropped
            // (the attempt's outer timeout, a panic), the agent is given back.
            let (mut lease, result) = match next {
                Next::Use(agent_id, sandbox_id) => {
                    let lease = AgentLease::new(
                        &self.core,
                        &agent_id,
                        &sandbox_id,
                        profile,
                        ephemeral,
                        LeasePhase::Held,
                    );
                    let r = self.core.provider.set_timeout(&sandbox_id, timeout).await;
                    (lease, r)
                }
                Next::Resume(agent_id, sandbox_id) => {
                    let mut lease = AgentLease::new(
                        &self.core,
                        &agent_id,
                        &sandbox_id,
                        profile,
                        ephemeral,
                        LeasePhase::Resuming,
                    );
                    let r = self.core.provider.connect(&sandbox_id, timeout).await;
                    if r.is_ok() {
                        lease.phase = LeasePhase::Held;
                        self.core.stats.lock().unwrap().resumed += 1;
                    }
                    (lease, r.map(|_| ()))
                }
                Next::Launch => {
                    let mut lease = self.launch_agent(profile, false, timeout).await?;
                    lease.ephemeral = ephemeral;
                    (lease, Ok(()))
                }
                Next::Wait => {
                    tokio::select! {
                        _ = notified => continue,
                        _ = cancel.cancelled() => return Err(JobError::cancelled("stopped while waiting for an agent")),
                        _ = tokio::time::sleep_until(give_up_at) => return Err(JobError::timeout(format!(
                            "no agent became free within the attempt timeout ({}s)",
                            attempt_timeout.as_secs()
                        ))),
                    }
                }
            };
            match result {
                Ok(()) => {
                    self.core.stats.lock().unwrap().leases += 1;
                    return Ok(lease);
                }
                Err(err) => {
                    // The sandbox is gone or unreachable: drop the agent and try again
                    // (a lost sandbox must not fail the job).
                    lease.disarm();
                    let (agent_id, sandbox_id) = (&lease.agent_id, &lease.sandbox_id);
                    tracing::warn!(%agent_id, %sandbox_id, error = %err, "agent unusable; dropping it from the pool");
                    self.forget(agent_id, sandbox_id).await;
                    if !matches!(err, SandboxError::NotFound(_)) {
                        return Err(err.into());
                    }
                }
            }
        }
    }

    /// Create a sandbox for `profile`, set the agent up in it, and add it to the pool
    /// (busy, for the caller, who holds the returned lease). Counts against the
    /// profile's limit while launching; dropped midway, the lease removes the agent
    /// and kills whatever sandbox was created.
    async fn launch_agent(
        &self,
        profile: &str,
        persistent: bool,
        timeout: Duration,
    ) -> Result<AgentLease, JobError> {
        let p = self
            .profiles
            .get(profile)
            .ok_or_else(|| JobError::permanent(format!("unknown agent profile {profile:?}")))?;
        let agent_id = format!("agent-{}", uuid::Uuid::now_v7().simple());
        self.core.agents.lock().unwrap().insert(
            agent_id.clone(),
            Agent {
                info: AgentInfo {
                    agent_id: agent_id.clone(),
                    profile: profile.to_string(),
                    sandbox_id: String::new(),
                    state: AgentState::Launching,
                    persistent,
                    jobs_served: 0,
                },
                idle_since: Instant::now(),
            },
        );
        let mut lease = AgentLease::new(
            &self.core,
            &agent_id,
            "",
            profile,
            false,
            LeasePhase::Launching,
        );
        let mut metadata = BTreeMap::new();
        metadata.insert(META_OWNER.to_string(), OWNER.to_string());
        metadata.insert(META_POOL.to_string(), profile.to_string());
        metadata.insert(META_AGENT_ID.to_string(), agent_id.clone());
        metadata.insert(META_WORKER.to_string(), self.worker.clone());
        metadata.insert(META_PERSISTENT.to_string(), persistent.to_string());
        let spec = SandboxSpec {
            template: p.template.clone(),
            timeout,
            metadata,
            env: p.env.clone(),
            auto_pause: false,
        };
        let created = match self.core.provider.create(&spec).await {
            Ok(info) => info,
            Err(e) => {
                lease.disarm();
                self.core.agents.lock().unwrap().remove(&agent_id);
                self.core.changed.notify_waiters();
                return Err(e.into());
            }
        };
        self.core.stats.lock().unwrap().created += 1;
        lease.sandbox_id = created.id.clone();
        if let Some(a) = self.core.agents.lock().unwrap().get_mut(&agent_id) {
            a.info.sandbox_id = created.id.clone();
        }
        if let Err(e) = p
            .runtime
            .setup(self.core.provider.as_ref(), &created.id)
            .await
        {
            tracing::warn!(%agent_id, sandbox_id = %created.id, error = %e, "agent setup failed; killing its sandbox");
            lease.disarm();
            self.forget(&agent_id, &created.id).await;
            return Err(e);
        }
        if let Some(a) = self.core.agents.lock().unwrap().get_mut(&agent_id) {
            a.info.state = AgentState::Busy;
        }
        lease.phase = LeasePhase::Held;
        tracing::info!(%agent_id, sandbox_id = %created.id, profile, "agent launched");
        Ok(lease)
    }

    async fn forget(&self, agent_id: &str, sandbox_id: &str) {
        self.core.forget(agent_id, sandbox_id).await
    }

    async fn kill_sandbox(&self, sandbox_id: &str) {
        self.core.kill_sandbox(sandbox_id).await
    }

    /// Return a leased agent. `sandbox_healthy = false` (its sandbox was lost) drops it.
    pub async fn give_back(&self, mut lease: AgentLease, sandbox_healthy: bool) {
        lease.disarm();
        enum Then {
            Keep,
            Pause,
            Kill,
        }
        let then = {
            let mut agents = self.core.agents.lock().unwrap();
            let Some(a) = agents.get_mut(&lease.agent_id) else {
                return;
            };
            a.info.jobs_served += 1;
            let recycle = self.settings.recycle_after_jobs > 0
                && a.info.jobs_served >= self.settings.recycle_after_jobs
                && !a.info.persistent;
            if !sandbox_healthy || lease.ephemeral || recycle {
                Then::Kill
            } else if a.info.persistent {
                a.info.state = AgentState::Idle;
                a.idle_since = Instant::now();
                Then::Keep
            } else {
                match self.settings.idle_policy {
                    IdlePolicy::Keep => {
                        a.info.state = AgentState::Idle;
                        a.idle_since = Instant::now();
                        Then::Keep
                    }
                    IdlePolicy::Pause => Then::Pause,
                    IdlePolicy::Kill => Then::Kill,
                }
            }
        };
        match then {
            Then::Keep => self.core.changed.notify_waiters(),
            Then::Kill => self.forget(&lease.agent_id, &lease.sandbox_id).await,
            Then::Pause => {
                self.pause_agent_sandbox(&lease.agent_id, &lease.sandbox_id)
                    .await
            }
        }
    }

    async fn pause_agent_sandbox(&self, agent_id: &str, sandbox_id: &str) {
        match self.core.provider.pause(sandbox_id).await {
            Ok(()) => {
                self.core.stats.lock().unwrap().paused += 1;
                if let Some(a) = self.core.agents.lock().unwrap().get_mut(agent_id) {
                    a.info.state = AgentState::Paused;
                }
                self.core.changed.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(%agent_id, %sandbox_id, error = %e, "pause failed; killing the sandbox instead");
                self.forget(agent_id, sandbox_id).await;
            }
        }
    }

    /// Lifecycle: launch an agent now (idle afterwards); returns its agent ID.
    pub async fn launch(&self, profile: &str, persistent: bool) -> Result<AgentInfo, JobError> {
        let timeout = self.sandbox_timeout(Duration::ZERO);
        let mut lease = self.launch_agent(profile, persistent, timeout).await?;
        lease.disarm();
        let agent_id = std::mem::take(&mut lease.agent_id);
        let mut agents = self.core.agents.lock().unwrap();
        let a = agents.get_mut(&agent_id).expect("just launched");
        a.info.state = AgentState::Idle;
        a.idle_since = Instant::now();
        self.core.changed.notify_waiters();
        Ok(a.info.clone())
    }

    fn agent(&self, agent_id: &str) -> Result<AgentInfo, JobError> {
        self.core
            .agents
            .lock()
            .unwrap()
            .get(agent_id)
            .map(|a| a.info.clone())
            .ok_or_else(|| JobError::permanent(format!("unknown agent ID {agent_id:?}")))
    }

    /// Lifecycle: pause an idle agent (keeps its files, and memory where the provider can).
    pub async fn pause(&self, agent_id: &str) -> Result<AgentInfo, JobError> {
        let info = self.agent(agent_id)?;
        match info.state {
            AgentState::Paused => return Ok(info),
            AgentState::Idle => {}
            other => {
                return Err(JobError::transient(format!(
                    "agent {agent_id} is {other:?}; it can be paused when idle"
                )));
            }
        }
        self.core.provider.pause(&info.sandbox_id).await?;
        self.core.stats.lock().unwrap().paused += 1;
        let mut agents = self.core.agents.lock().unwrap();
        let a = agents
            .get_mut(agent_id)
            .ok_or_else(|| JobError::permanent("agent vanished"))?;
        a.info.state = AgentState::Paused;
        Ok(a.info.clone())
    }

    /// Lifecycle: resume a paused agent (reconnects by its stored sandbox ID).
    pub async fn resume(&self, agent_id: &str) -> Result<AgentInfo, JobError> {
        let info = self.agent(agent_id)?;
        if info.state != AgentState::Paused {
            return Ok(info);
        }
        self.core
            .provider
            .connect(&info.sandbox_id, self.sandbox_timeout(Duration::ZERO))
            .await?;
        self.core.stats.lock().unwrap().resumed += 1;
        let mut agents = self.core.agents.lock().unwrap();
        let a = agents
            .get_mut(agent_id)
            .ok_or_else(|| JobError::permanent("agent vanished"))?;
        a.info.state = AgentState::Idle;
        a.idle_since = Instant::now();
        self.core.changed.notify_waiters();
        Ok(a.info.clone())
    }

    /// Lifecycle: kill an agent's sandbox for good.
    pub async fn terminate(&self, agent_id: &str) -> Result<(), JobError> {
        let info = self.agent(agent_id)?;
        if info.state == AgentState::Busy || info.state == AgentState::Launching {
            return Err(JobError::transient(format!(
                "agent {agent_id} is busy; it can be terminated when idle"
            )));
        }
        self.forget(agent_id, &info.sandbox_id).await;
        Ok(())
    }

    /// Lifecycle: launch or terminate idle agents until `profile` has `size` agents
    /// (busy agents are never killed; the pool shrinks as they come back idle).
    pub async fn scale(&self, profile: &str, size: usize) -> Result<usize, JobError> {
        loop {
            let (count, idle) = {
                let agents = self.core.agents.lock().unwrap();
                let of: Vec<&Agent> = agents
                    .values()
                    .filter(|a| a.info.profile == profile)
                    .collect();
                let idle = of
                    .iter()
                    .find(|a| matches!(a.info.state, AgentState::Idle | AgentState::Paused))
                    .map(|a| (a.info.agent_id.clone(), a.info.sandbox_id.clone()));
                (of.len(), idle)
            };
            if count < size {
                self.launch(profile, false).await?;
            } else if count > size {
                match idle {
                    Some((agent_id, sandbox_id)) => self.forget(&agent_id, &sandbox_id).await,
                    None => return Ok(count),
                }
            } else {
                return Ok(count);
            }
        }
    }

    /// Pause agents idle for longer than `pool.idle_pause_after_secs`.
    pub async fn pause_idle(&self) {
        let after = self.settings.idle_pause_after_secs;
        if after == 0 {
            return;
        }
        let stale: Vec<(String, String)> = {
            let mut agents = self.core.agents.lock().unwrap();
            agents
                .values_mut()
                .filter(|a| {
                    a.info.state == AgentState::Idle
                        && a.idle_since.elapsed() >= Duration::from_secs(after)
                })
                .map(|a| {
                    a.info.state = AgentState::Launching; // held while pausing
                    (a.info.agent_id.clone(), a.info.sandbox_id.clone())
                })
                .collect()
        };
        for (agent_id, sandbox_id) in stale {
            self.pause_agent_sandbox(&agent_id, &sandbox_id).await;
        }
    }

    /// Adopt this system's sandboxes left by an earlier run of this worker, and kill
    /// strays: sandboxes tagged by a worker for which `is_live_worker` is false.
    /// Persistent agents that are paused are adopted (their state is on disk/at E2B).
    ///
    /// `found` is one listing of the system's sandboxes (see [`AgentPool::owned_sandboxes`]),
    /// and `is_live_worker` must have been computed from that same listing: a second
    /// listing could hold sandboxes created since by a live worker that the liveness
    /// check never looked at, and they would be killed as strays.
    pub async fn reconcile(
        &self,
        found: Vec<SandboxInfo>,
        is_live_worker: impl Fn(&str) -> bool,
    ) -> Result<usize, SandboxError> {
        let mut changed = 0;
        for sandbox in found {
            let worker = sandbox
                .metadata
                .get(META_WORKER)
                .cloned()
                .unwrap_or_default();
            let profile = sandbox.metadata.get(META_POOL).cloned().unwrap_or_default();
            let persistent = sandbox
                .metadata
                .get(META_PERSISTENT)
                .map(|v| v == "true")
                .unwrap_or(false);
            let agent_id = sandbox
                .metadata
                .get(META_AGENT_ID)
                .cloned()
                .unwrap_or_default();
            if worker == self.worker
                || is_live_worker(&worker)
                || self.core.agents.lock().unwrap().contains_key(&agent_id)
            {
                continue;
            }
            if persistent
                && sandbox.state == SandboxState::Paused
                && self.profiles.contains_key(&profile)
            {
                self.core.agents.lock().unwrap().insert(
                    agent_id.clone(),
                    Agent {
                        info: AgentInfo {
                            agent_id,
                            profile,
                            sandbox_id: sandbox.id.clone(),
                            state: AgentState::Paused,
                            persistent: true,
                            jobs_served: 0,
                        },
                        idle_since: Instant::now(),
                    },
                );
            } else {
                tracing::warn!(sandbox_id = %sandbox.id, %worker, "killing a stray sandbox left by a worker that is gone");
                self.kill_sandbox(&sandbox.id).await;
            }
            changed += 1;
        }
        Ok(changed)
    }

    /// Every sandbox this system created (tagged with its owner), any worker's.
    pub async fn owned_sandboxes(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        let mut filter = ListFilter::default();
        filter
            .metadata
            .insert(META_OWNER.to_string(), OWNER.to_string());
        self.core.provider.list(&filter).await
    }

    /// Retry the kills the provider could not confirm (maintenance tick); the
    /// sandboxes still not confirmed killed.
    pub async fn retry_failed_kills(&self) -> Vec<String> {
        self.core.provider.retry_failed_kills().await
    }

    /// At worker shutdown: pause persistent agents, kill the rest, retrying failed
    /// kills for up to 10 s. See [`AgentPool::shutdown_within`].
    pub async fn shutdown(&self) {
        self.shutdown_within(Duration::from_secs(10)).await;
    }

    /// At worker shutdown: pause persistent agents, kill the rest; kills that fail
    /// (the provider unreachable) are retried until `limit` has passed. Afterwards
    /// the pool owns no running sandbox, except those returned: sandboxes that could
    /// not be killed, each logged with its ID so an operator can kill it by hand.
    pub async fn shutdown_within(&self, limit: Duration) -> Vec<String> {
        let deadline = crate::time::instant_after(limit);
        let all: Vec<AgentInfo> = self.agents();
        for a in all {
            if a.sandbox_id.is_empty() {
                continue;
            }
            if a.persistent && a.state != AgentState::Paused {
                self.pause_agent_sandbox(&a.agent_id, &a.sandbox_id).await;
            } else if !a.persistent {
                self.forget(&a.agent_id, &a.sandbox_id).await;
            }
        }
        let mut pause = Duration::from_millis(200);
        loop {
            let left = match tokio::time::timeout_at(deadline, self.retry_failed_kills()).await {
                Ok(left) => left,
                // Out of time mid-retry: what is left is what the provider still holds.
                Err(_) => self.core.provider.failed_kills(),
            };
            if left.is_empty() {
                return left;
            }
            if tokio::time::Instant::now() + pause >= deadline {
                for sandbox_id in &left {
                    tracing::error!(%sandbox_id, "sandbox could not be killed before shutdown: kill it by hand (it is tagged dexter-fleet-owner)");
                }
                return left;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::local::{LocalConfig, LocalProvider};

    fn spec(worker: &str, persistent: bool) -> SandboxSpec {
        let mut metadata = BTreeMap::new();
        metadata.insert(META_OWNER.to_string(), OWNER.to_string());
        metadata.insert(META_POOL.to_string(), "demo".to_string());
        // Agent IDs are unique per launch; reconcile skips a sandbox whose agent ID
        // the pool already holds.
        metadata.insert(
            META_AGENT_ID.to_string(),
            format!("agent-{worker}-{persistent}"),
        );
        metadata.insert(META_WORKER.to_string(), worker.to_string());
        metadata.insert(META_PERSISTENT.to_string(), persistent.to_string());
        SandboxSpec {
            metadata,
            timeout: Duration::from_secs(60),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn reconcile_kills_strays_of_dead_workers_only_and_adopts_paused_persistent_agents() {
        let root = tempfile::tempdir().unwrap();
        let provider: Arc<dyn SandboxProvider> = Arc::new(LocalProvider::new(LocalConfig {
            root: root.path().to_path_buf(),
            env_allowlist: vec![],
            max_output_bytes: 1024,
            extra_path: vec![],
        }));
        let stray = provider.create(&spec("dead", false)).await.unwrap().id;
        let kept_paused = provider.create(&spec("dead", true)).await.unwrap().id;
        provider.pause(&kept_paused).await.unwrap();
        let live = provider.create(&spec("alive", false)).await.unwrap().id;

        let profile = PoolProfile {
            runtime: Arc::new(crate::runtime::command::CommandRuntime::new(
                toml::from_str("runtime = \"command\"\nrepo = \".\"\ncommand = [\"true\"]")
                    .unwrap(),
                BTreeMap::new(),
                root.path().to_path_buf(),
            )),
            template: String::new(),
            env: BTreeMap::new(),
            max_agents: 2,
        };
        let settings: crate::settings::Settings =
            crate::settings::Settings::from_layers(None, &[]).unwrap();
        let pool = AgentPool::new(
            provider.clone(),
            BTreeMap::from([("demo".to_string(), profile)]),
            settings.pool.clone(),
            "me",
        );
        let found = pool.owned_sandboxes().await.unwrap();
        assert_eq!(found.len(), 3);
        let changed = pool.reconcile(found, |w| w == "alive").await.unwrap();
        assert_eq!(changed, 2);

        let left: Vec<String> = provider
            .list(&ListFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert!(
            !left.contains(&stray),
            "the dead worker's sandbox was killed"
        );
        assert!(
            left.contains(&live),
            "a live worker's sandbox is left alone"
        );
        assert!(
            left.contains(&kept_paused),
            "a paused persistent agent is kept"
        );
        let adopted = pool.agents();
        assert_eq!(adopted.len(), 1);
        assert_eq!(adopted[0].sandbox_id, kept_paused);
        assert_eq!(adopted[0].state, AgentState::Paused);
    }
}
