//! The agent pool of the whole fleet: sandboxes with an agent set up in them,
//! registered in Redis ([`registry`]), leased to one job at a time by any worker.
//!
//! `lease` gives a job a warm idle agent of its profile if any worker left one, else
//! resumes a paused one, else starts a launch (within the profile's fleet-wide
//! `max_agents`) and takes **whichever agent becomes free first** — its own launch or
//! one another job gives back — instead of waiting behind the provider's create
//! limit. A job that names an agent (`agent_id`: a persistent agent) waits for it in
//! submission order. `give_back` returns it: kept warm, paused or killed per
//! `pool.idle_policy`, recycled after `pool.recycle_after_jobs` or near the sandbox's
//! lifetime limit, killed if ephemeral or if its sandbox was lost.
//!
//! Every operation on an agent holds it in the registry under a fencing token and
//! renews the hold like a job lease; a worker killed with `kill -9` stops renewing and
//! any other worker adopts what it held (`maintain`): a job's persistent agent goes
//! back to the pool, anything half done (a launch, a pooled agent whose job died, a
//! pause, a kill) is finished by the adopter. Kills are retried until confirmed: the
//! record stays (terminating) until the provider says the sandbox is gone.
//!
//! The policy (idle pause, paused kill, lifetime, warm minimum) lives in [`policy`].
//! Every sandbox the pool creates is tagged (`META_OWNER`, `META_POOL`,
//! `META_AGENT_ID`, `META_WORKER`), and `reconcile` kills tagged sandboxes that no
//! registry record claims: no sandbox leaks.
//!
//! Deployment patterns: a **persistent agent** (launched with `persistent`, addressed
//! by `agent_id`, paused rather than killed when the fleet stops), an **agent pool**
//! (several agents of a profile serving jobs in parallel), **ephemeral agents** (a
//! fresh sandbox per job, killed after).

pub mod policy;
pub mod registry;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::JobError;
use crate::runtime::AgentRuntime;
use crate::sandbox::{
    ExecControl, ExecRequest, ListFilter, META_AGENT_ID, META_OWNER, META_POOL, SandboxError,
    SandboxInfo, SandboxProvider, SandboxSpec,
};
use crate::settings::{IdlePolicy, PoolSettings, RedisSettings};
use registry::{Adopted, ByIdAnswer, Finish, GiveBack, Leased, RegistryError, Start, TerminateBy};
pub use registry::{AgentRecord, AgentState, Registry};

/// Metadata key naming the worker process that created a sandbox.
pub const META_WORKER: &str = "dexter-fleet-worker";
/// Metadata key marking a persistent agent.
pub const META_PERSISTENT: &str = "dexter-fleet-persistent";
/// The value of `META_OWNER` on every sandbox this system creates.
pub const OWNER: &str = "dexter-fleet";
/// Written into every agent's sandbox at launch (its agent ID): after a resume, the
/// pool reads it back to check that the sandbox's files came back intact.
pub const AGENT_MARKER: &str = ".dexter-fleet-agent";

/// One agent profile as the pool needs it.
pub struct PoolProfile {
    pub runtime: Arc<dyn AgentRuntime>,
    /// Template and environment for new sandboxes of this profile.
    pub template: String,
    pub env: BTreeMap<String, String>,
    /// Most agents of this profile at once, fleet-wide (0 = no cap).
    pub max_agents: usize,
    /// Idle agents of this profile kept warm, fleet-wide.
    pub min_idle: usize,
    /// The repository the agent runs (recorded on each agent).
    pub repo: String,
    /// Egress rules for this profile's sandboxes (`None`: unrestricted).
    pub network: Option<crate::sandbox::egress::Egress>,
    /// How its agents reach model providers (recorded on each agent).
    pub model_access: ModelAccess,
}

/// How a profile's agents reach model providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelAccess {
    /// Through the fleet's model gateway: a per-attempt token in the sandbox, the
    /// provider keys only in the worker.
    Gateway,
    /// Directly, with the keys the profile's `secret_env` names in the sandbox (no
    /// gateway, or an agent that cannot be given a base URL).
    #[default]
    Direct,
}

impl ModelAccess {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelAccess::Gateway => "gateway",
            ModelAccess::Direct => "direct",
        }
    }
}

/// The job a lease is for.
#[derive(Debug, Clone)]
pub struct JobRef {
    pub id: String,
    /// Submission order (ms): jobs for one agent run in this order.
    pub order: u64,
}

/// An agent leased to one job. Give it back with [`AgentPool::give_back`].
///
/// The lease is also a guard: dropped without `give_back` (the attempt was cut off
/// by the outer timeout, or panicked), it still gives the agent back — a persistent
/// agent is kept (the provider killed the command with its dropped `exec`), any
/// other agent is killed — so no agent stays busy forever.
pub struct AgentLease {
    pub agent_id: String,
    pub sandbox_id: String,
    pub profile: String,
    pub persistent: bool,
    ephemeral: bool,
    job_id: String,
    fence: u64,
    jobs_served: u64,
    age: Duration,
    /// `Some` while the lease is out; taken by `give_back`.
    core: Option<Arc<PoolCore>>,
}

impl std::fmt::Debug for AgentLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentLease")
            .field("agent_id", &self.agent_id)
            .field("sandbox_id", &self.sandbox_id)
            .field("profile", &self.profile)
            .field("ephemeral", &self.ephemeral)
            .field("fence", &self.fence)
            .field("armed", &self.core.is_some())
            .finish()
    }
}

impl Drop for AgentLease {
    fn drop(&mut self) {
        let Some(core) = self.core.take() else {
            return;
        };
        tracing::warn!(agent_id = %self.agent_id, sandbox_id = %self.sandbox_id, "an attempt ended without giving its agent back (timeout or panic); giving it back");
        let lease = AgentLease {
            agent_id: std::mem::take(&mut self.agent_id),
            sandbox_id: std::mem::take(&mut self.sandbox_id),
            profile: std::mem::take(&mut self.profile),
            persistent: self.persistent,
            ephemeral: self.ephemeral,
            job_id: std::mem::take(&mut self.job_id),
            fence: self.fence,
            jobs_served: self.jobs_served,
            age: self.age,
            core: None,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // What the cut-off command left in a pooled agent is unknown: kill it.
                // A persistent agent's command died with its dropped `exec`; keep it.
                let healthy = lease.persistent;
                let tasks = core.tasks.clone();
                tasks.spawn_on(
                    async move { core.give_back(lease, healthy, false).await },
                    &runtime,
                );
            }
            Err(_) => {
                // No runtime: the hold expires and another worker adopts the agent.
                core.holds.lock().unwrap().remove(&lease.agent_id);
            }
        }
    }
}

/// An operation in progress on an agent this process holds (a launch, a resume, a
/// pause). Should its future be dropped midway (the attempt was cut off), the guard
/// makes sure the hold does not live on, renewed by this process for ever: a launch is
/// ended (its agent terminated and killed); anything else stops being renewed, so its
/// hold expires and another worker (or this one) adopts the agent.
struct HoldGuard {
    core: Option<Arc<PoolCore>>,
    agent_id: String,
    profile: String,
    sandbox_id: String,
    fence: u64,
    end_on_drop: bool,
}

impl HoldGuard {
    fn new(
        core: &Arc<PoolCore>,
        agent_id: &str,
        profile: &str,
        fence: u64,
        end_on_drop: bool,
    ) -> HoldGuard {
        HoldGuard {
            core: Some(core.clone()),
            agent_id: agent_id.to_string(),
            profile: profile.to_string(),
            sandbox_id: String::new(),
            fence,
            end_on_drop,
        }
    }

    /// The operation finished (or handed the agent on): nothing to undo.
    fn disarm(&mut self) {
        self.core = None;
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        let Some(core) = self.core.take() else {
            return;
        };
        tracing::warn!(agent_id = %self.agent_id, "an operation on an agent was cut off midway; its hold is given up");
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if self.end_on_drop => {
                let (agent_id, profile, sandbox_id, fence) = (
                    std::mem::take(&mut self.agent_id),
                    std::mem::take(&mut self.profile),
                    std::mem::take(&mut self.sandbox_id),
                    self.fence,
                );
                let tasks = core.tasks.clone();
                tasks.spawn_on(
                    async move {
                        core.abort_held(&agent_id, &profile, &sandbox_id, fence)
                            .await
                    },
                    &runtime,
                );
            }
            _ => core.released(&self.agent_id),
        }
    }
}

/// Pool counters of this process, for /metrics and the benchmarks.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PoolStats {
    pub created: u64,
    pub killed: u64,
    pub paused: u64,
    pub resumed: u64,
    pub leases: u64,
    /// `set_timeout` calls made to keep a leased sandbox alive past its attempt.
    pub extended: u64,
    /// Agents adopted from workers whose holds expired.
    pub adopted: u64,
    /// Agents replaced after failing a health check.
    pub unhealthy: u64,
}

/// This process's view of agent profiles, the provider and the registry.
pub struct AgentPool {
    core: Arc<PoolCore>,
}

struct PoolCore {
    provider: Arc<dyn SandboxProvider>,
    registry: Registry,
    profiles: BTreeMap<String, PoolProfile>,
    settings: PoolSettings,
    worker: String,
    /// The machine, for local-provider agents (only workers here can reach them); ""
    /// for a provider whose sandboxes any machine reaches.
    host: String,
    /// How long a hold lasts unless renewed (the queue's lease TTL).
    hold: Duration,
    /// The agents this process holds, with their fences: renewed by `renew_holds`.
    holds: Mutex<HashMap<String, u64>>,
    /// Launches this process runs for the pool (not for one job), per profile.
    launching: Mutex<HashMap<String, usize>>,
    /// Kills that failed: (agent, profile, sandbox, fence), retried by `maintain`.
    pending_kills: Mutex<Vec<(String, String, String, u64)>>,
    stats: Mutex<PoolStats>,
    /// Work this process started in the background on agents (launches for the pool,
    /// give-backs and kills of cut-off attempts): shutdown waits for it, so the
    /// process never exits halfway through a kill.
    tasks: tokio_util::task::TaskTracker,
    /// Fired when shutdown begins: the pool's own launches give up a create not yet
    /// sent, and end one that completes anyway instead of setting it up.
    stopping: CancellationToken,
    /// Woken when an agent may have become free (here or, through the registry's
    /// channel, anywhere in the fleet).
    changed: Notify,
}

/// Sandboxes live this much longer than the attempt that leases them.
const SANDBOX_MARGIN: Duration = Duration::from_secs(60);
/// An ephemeral job's launch still waiting after this long evicts an idle agent (it
/// may be waiting for a plan slot that idle agents hold).
const EVICT_AFTER: Duration = Duration::from_secs(1);
/// At shutdown, how much longer than the drain timeout background work on agents
/// (a create already sent, a kill) may take before the process stops anyway.
const BACKGROUND_GRACE: Duration = Duration::from_secs(15);
/// A waiting lease looks again at least this often, even if no change was announced.
const WAIT_POLL: Duration = Duration::from_millis(250);

fn registry_error(e: RegistryError) -> JobError {
    JobError::transient(format!("agent registry (Redis): {e}"))
}

impl PoolCore {
    fn sandbox_timeout(&self, attempt_timeout: Duration) -> Duration {
        Duration::from_secs(self.settings.sandbox_timeout_secs)
            .max(attempt_timeout.saturating_add(SANDBOX_MARGIN))
    }

    fn held(&self, agent_id: &str, fence: u64) {
        self.holds
            .lock()
            .unwrap()
            .insert(agent_id.to_string(), fence);
    }

    fn released(&self, agent_id: &str) {
        self.holds.lock().unwrap().remove(agent_id);
    }

    /// Kill an agent's sandbox, then remove its record; a failed kill is kept for
    /// `maintain` to retry (and, should this process die, for whoever adopts it).
    async fn kill_and_forget(&self, agent_id: &str, profile: &str, sandbox_id: &str, fence: u64) {
        self.held(agent_id, fence);
        let killed = if sandbox_id.is_empty() {
            Ok(())
        } else {
            match self.provider.kill(sandbox_id).await {
                Ok(()) | Err(SandboxError::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            }
        };
        match killed {
            Ok(()) => {
                if !sandbox_id.is_empty() {
                    self.stats.lock().unwrap().killed += 1;
                }
                match self.registry.forget(agent_id, profile, fence).await {
                    Ok(_) => self.released(agent_id),
                    Err(e) => {
                        tracing::warn!(%agent_id, error = %e, "could not remove a killed agent's record; will retry");
                        self.pending_kills.lock().unwrap().push((
                            agent_id.into(),
                            profile.into(),
                            sandbox_id.into(),
                            fence,
                        ));
                    }
                }
                self.changed.notify_waiters();
            }
            Err(e) => {
                tracing::warn!(%agent_id, %sandbox_id, error = %e, "could not kill sandbox; will retry");
                self.pending_kills.lock().unwrap().push((
                    agent_id.into(),
                    profile.into(),
                    sandbox_id.into(),
                    fence,
                ));
            }
        }
    }

    /// Pause an agent whose pause this process started; a failed pause kills it.
    async fn finish_pause(
        self: &Arc<Self>,
        agent_id: &str,
        profile: &str,
        sandbox_id: &str,
        fence: u64,
    ) {
        self.held(agent_id, fence);
        // Cut off midway: the hold lapses and an adopter pauses it again.
        let mut guard = HoldGuard::new(self, agent_id, profile, fence, false);
        if let Err(e) = self.provider.pause(sandbox_id).await {
            guard.disarm();
            tracing::warn!(%agent_id, %sandbox_id, error = %e, "pause failed; killing the sandbox instead");
            self.abort_held(agent_id, profile, sandbox_id, fence).await;
            return;
        }
        guard.disarm();
        self.stats.lock().unwrap().paused += 1;
        match self.registry.paused(agent_id, profile, fence).await {
            Ok(Finish::Done { .. }) => self.released(agent_id),
            Ok(Finish::Terminate { fence }) => {
                self.kill_and_forget(agent_id, profile, sandbox_id, fence)
                    .await
            }
            Ok(Finish::Refused { state }) => {
                self.released(agent_id);
                tracing::warn!(%agent_id, %state, "a pause lost its agent to another worker (its hold expired); left to it");
            }
            Err(e) => {
                // The hold lapses and an adopter pauses it again (harmless: it is paused).
                self.released(agent_id);
                tracing::warn!(%agent_id, error = %e, "could not record a pause");
            }
        }
        self.changed.notify_waiters();
    }

    /// End an agent this process holds (a failed launch or resume, a lost sandbox):
    /// terminating under the holder's fence, then killed.
    async fn abort_held(&self, agent_id: &str, profile: &str, sandbox_id: &str, fence: u64) {
        match self
            .registry
            .terminate(
                agent_id,
                profile,
                &self.worker,
                self.hold,
                TerminateBy::Holder,
                Some(fence),
            )
            .await
        {
            Ok(Start::Started {
                fence,
                sandbox_id: recorded,
            }) => {
                let sandbox = if recorded.is_empty() {
                    sandbox_id
                } else {
                    &recorded
                };
                self.kill_and_forget(agent_id, profile, sandbox, fence)
                    .await
            }
            Ok(other) => {
                self.released(agent_id);
                tracing::warn!(%agent_id, ?other, "could not end an agent: no longer this worker's");
            }
            Err(e) => {
                // The hold lapses; whoever adopts it kills it.
                self.released(agent_id);
                tracing::warn!(%agent_id, error = %e, "could not end an agent (Redis); left to adoption");
            }
        }
    }

    /// Give a job's agent back (see [`AgentPool::give_back`]).
    async fn give_back(
        self: &Arc<Self>,
        mut lease: AgentLease,
        sandbox_healthy: bool,
        served: bool,
    ) {
        lease.core = None;
        let recycle = self.settings.recycle_after_jobs > 0
            && lease.jobs_served + 1 >= self.settings.recycle_after_jobs
            && !lease.persistent;
        let old = policy::near_lifetime(&self.settings, lease.age) && !lease.persistent;
        let wanted = if !sandbox_healthy || lease.ephemeral || recycle || old {
            GiveBack::Kill
        } else if lease.persistent {
            GiveBack::Keep
        } else {
            match self.settings.idle_policy {
                IdlePolicy::Keep => GiveBack::Keep,
                IdlePolicy::Pause => GiveBack::Pause,
                IdlePolicy::Kill => GiveBack::Kill,
            }
        };
        let answer = self
            .registry
            .give_back(
                &lease.agent_id,
                &lease.profile,
                &lease.job_id,
                lease.fence,
                wanted,
                &self.worker,
                self.hold,
                served,
            )
            .await;
        match answer {
            Ok(Some((GiveBack::Keep, _))) => {
                self.released(&lease.agent_id);
                self.changed.notify_waiters();
            }
            Ok(Some((GiveBack::Pause, fence))) => {
                self.finish_pause(&lease.agent_id, &lease.profile, &lease.sandbox_id, fence)
                    .await
            }
            Ok(Some((GiveBack::Kill, fence))) => {
                self.kill_and_forget(&lease.agent_id, &lease.profile, &lease.sandbox_id, fence)
                    .await
            }
            Ok(None) => {
                self.released(&lease.agent_id);
                tracing::warn!(agent_id = %lease.agent_id, job_id = %lease.job_id, "give-back refused: the job's hold on its agent had expired and another worker adopted it");
            }
            Err(e) => {
                // The hold lapses and another worker adopts the agent (a pooled one
                // is killed, since nobody can say what state the job left it in).
                self.released(&lease.agent_id);
                tracing::warn!(agent_id = %lease.agent_id, error = %e, "could not give an agent back (Redis); left to adoption");
            }
        }
    }

    /// Create a sandbox for `profile`, set the agent up in it, and register it: for
    /// `job` (the agent is the job's when this returns) or for the pool (idle).
    async fn launch(
        self: &Arc<Self>,
        profile: &str,
        persistent: bool,
        job: Option<&JobRef>,
        ephemeral: bool,
        timeout: Duration,
    ) -> Result<(String, Option<AgentLease>), LaunchError> {
        let p = self
            .profiles
            .get(profile)
            .ok_or_else(|| JobError::permanent(format!("unknown agent profile {profile:?}")))?;
        let agent_id = format!("agent-{}", uuid::Uuid::now_v7().simple());
        let holder = job.map(|j| j.id.as_str()).unwrap_or("pool");
        let fence = self
            .registry
            .launch(
                &agent_id,
                profile,
                self.provider.name(),
                persistent,
                ephemeral,
                &self.host,
                holder,
                &self.worker,
                self.hold,
                p.max_agents,
                &p.repo,
                p.model_access.as_str(),
            )
            .await
            .map_err(registry_error)?
            .ok_or(LaunchError::AtCap)?;
        self.held(&agent_id, fence);
        let mut guard = HoldGuard::new(self, &agent_id, profile, fence, true);
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
            network: p.network.clone(),
            // A job's launch is the job's to finish; the pool's stops at shutdown.
            stop: job.is_none().then(|| self.stopping.clone()),
        };
        let created = match self.provider.create(&spec).await {
            Ok(info) => info,
            Err(e) => {
                guard.disarm();
                self.abort_held(&agent_id, profile, "", fence).await;
                return Err(JobError::from(e).into());
            }
        };
        guard.sandbox_id = created.id.clone();
        self.stats.lock().unwrap().created += 1;
        match self
            .registry
            .attach_sandbox(&agent_id, fence, &created.id, timeout)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                // Adopted meanwhile (this worker stalled past its hold): the adopter
                // kills what the record names, which is nothing yet — so kill it here.
                guard.disarm();
                let _ = self.provider.kill(&created.id).await;
                self.released(&agent_id);
                return Err(JobError::transient("the launch lost its agent record").into());
            }
            Err(e) => {
                guard.disarm();
                let _ = self.provider.kill(&created.id).await;
                self.released(&agent_id);
                return Err(registry_error(e).into());
            }
        }
        if job.is_none() && self.stopping.is_cancelled() {
            // Shutting down: nobody will lease it; end it now rather than set it up.
            guard.disarm();
            self.abort_held(&agent_id, profile, &created.id, fence)
                .await;
            return Err(JobError::cancelled("the pool is shutting down").into());
        }
        let set_up = async {
            p.runtime.setup(self.provider.as_ref(), &created.id).await?;
            self.provider
                .write_file(&created.id, AGENT_MARKER, agent_id.as_bytes())
                .await?;
            Ok::<(), JobError>(())
        };
        if let Err(e) = set_up.await {
            guard.disarm();
            tracing::warn!(%agent_id, sandbox_id = %created.id, error = %e, "agent setup failed; killing its sandbox");
            self.abort_held(&agent_id, profile, &created.id, fence)
                .await;
            return Err(e.into());
        }
        // The commit a git agent was checked out at, for its record.
        let commit = crate::runtime::checkout::read_record(self.provider.as_ref(), &created.id)
            .await
            .map(|r| r.commit)
            .unwrap_or_default();
        let answer = self
            .registry
            .ready(
                &agent_id,
                profile,
                fence,
                job.is_some(),
                None,
                &commit,
                self.hold,
            )
            .await
            .map_err(registry_error)?;
        guard.disarm();
        match answer {
            Finish::Done { fence } => {
                tracing::info!(%agent_id, sandbox_id = %created.id, profile, "agent launched");
                self.changed.notify_waiters();
                let Some(job) = job else {
                    self.released(&agent_id);
                    return Ok((agent_id, None));
                };
                self.held(&agent_id, fence);
                Ok((
                    agent_id.clone(),
                    Some(AgentLease {
                        agent_id,
                        sandbox_id: created.id,
                        profile: profile.to_string(),
                        persistent,
                        ephemeral,
                        job_id: job.id.clone(),
                        fence,
                        jobs_served: 0,
                        age: Duration::ZERO,
                        core: Some(self.clone()),
                    }),
                ))
            }
            Finish::Terminate { fence } => {
                self.kill_and_forget(&agent_id, profile, &created.id, fence)
                    .await;
                Err(JobError::transient("the agent was terminated while it launched").into())
            }
            Finish::Refused { state } => {
                self.released(&agent_id);
                Err(JobError::transient(format!("the launch lost its agent (now {state})")).into())
            }
        }
    }

    /// Resume a leased agent's sandbox for its holder and check it: the files the
    /// agent was set up with must have come back (`AGENT_MARKER`).
    async fn resume_and_check(
        &self,
        agent_id: &str,
        sandbox_id: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        self.provider
            .resume(sandbox_id, timeout)
            .await
            .map_err(|e| format!("resume failed: {e}"))?;
        self.stats.lock().unwrap().resumed += 1;
        let marker = self
            .provider
            .read_file(sandbox_id, AGENT_MARKER)
            .await
            .map_err(|e| format!("health check after resume: {e}"))?;
        if marker != agent_id.as_bytes() {
            return Err("health check after resume: the agent's files did not come back".into());
        }
        Ok(())
    }

    /// A cheap command in an agent that has sat idle for long: it must answer.
    async fn ping(&self, sandbox_id: &str) -> Result<(), String> {
        let request = ExecRequest {
            program: "true".to_string(),
            timeout: Some(Duration::from_secs(10)),
            ..Default::default()
        };
        match self
            .provider
            .exec(sandbox_id, &request, ExecControl::default())
            .await
        {
            Ok(out) if out.exit_code == 0 => Ok(()),
            Ok(out) => Err(format!("health check: ping exited with {}", out.exit_code)),
            Err(e) => Err(format!("health check: {e}")),
        }
    }
}

/// Why a launch did not happen.
#[derive(Debug)]
enum LaunchError {
    /// The profile is at its fleet-wide cap.
    AtCap,
    Failed(JobError),
}

impl From<JobError> for LaunchError {
    fn from(e: JobError) -> Self {
        LaunchError::Failed(e)
    }
}

impl AgentPool {
    pub fn new(
        provider: Arc<dyn SandboxProvider>,
        registry: Registry,
        profiles: BTreeMap<String, PoolProfile>,
        settings: PoolSettings,
        worker: impl Into<String>,
        hold: Duration,
    ) -> AgentPool {
        let host = if provider.name() == "local" {
            local_host()
        } else {
            String::new()
        };
        AgentPool {
            core: Arc::new(PoolCore {
                provider,
                registry,
                profiles,
                settings,
                worker: worker.into(),
                host,
                hold: hold.max(Duration::from_secs(1)),
                holds: Mutex::default(),
                launching: Mutex::default(),
                pending_kills: Mutex::default(),
                stats: Mutex::default(),
                tasks: tokio_util::task::TaskTracker::new(),
                stopping: CancellationToken::new(),
                changed: Notify::new(),
            }),
        }
    }

    pub fn provider(&self) -> &Arc<dyn SandboxProvider> {
        &self.core.provider
    }

    pub fn registry(&self) -> &Registry {
        &self.core.registry
    }

    pub fn runtime(&self, profile: &str) -> Option<Arc<dyn AgentRuntime>> {
        self.core.profiles.get(profile).map(|p| p.runtime.clone())
    }

    /// How the profile's agents reach model providers.
    pub fn model_access(&self, profile: &str) -> ModelAccess {
        self.core
            .profiles
            .get(profile)
            .map(|p| p.model_access)
            .unwrap_or_default()
    }

    pub fn profiles(&self) -> impl Iterator<Item = &str> {
        self.core.profiles.keys().map(String::as_str)
    }

    pub fn stats(&self) -> PoolStats {
        *self.core.stats.lock().unwrap()
    }

    /// The fleet's agents (every worker's), from the registry.
    pub async fn agents(&self) -> Result<Vec<AgentRecord>, JobError> {
        self.core.registry.list(None).await.map_err(registry_error)
    }

    /// Tell waiting leases to look again (the registry's change channel said an
    /// agent may be free).
    pub fn wake(&self) {
        self.core.changed.notify_waiters();
    }

    /// Lease an agent of `profile` (or the agent `agent_id`) for `job`. `ephemeral`: a
    /// fresh agent, killed when given back. Waiting ends at `attempt_timeout` with a
    /// timeout error.
    pub async fn lease(
        &self,
        profile: &str,
        agent_id: Option<&str>,
        ephemeral: bool,
        attempt_timeout: Duration,
        cancel: &CancellationToken,
        job: &JobRef,
    ) -> Result<AgentLease, JobError> {
        let core = &self.core;
        if !core.profiles.contains_key(profile) {
            return Err(JobError::permanent(format!(
                "unknown agent profile {profile:?}"
            )));
        }
        let timeout = core.sandbox_timeout(attempt_timeout);
        let give_up_at = crate::time::instant_after(attempt_timeout);
        let max_age = policy::lease_max_age(&core.settings);
        // The launch this job started, if any: its failure is the job's failure.
        let mut my_launch: Option<oneshot::Receiver<Result<(), JobError>>> = None;
        let result = loop {
            // Register interest before looking, so a change between the look and the
            // wait is not missed.
            let notified = core.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let leased = if let Some(wanted) = agent_id {
                match core
                    .registry
                    .lease_agent(
                        wanted,
                        profile,
                        &job.id,
                        &core.worker,
                        core.hold,
                        &core.host,
                        job.order,
                        core.hold,
                    )
                    .await
                    .map_err(registry_error)?
                {
                    ByIdAnswer::Leased(l) => Some(l),
                    ByIdAnswer::Wait { .. } => None,
                    ByIdAnswer::Never(why) => {
                        break Err(JobError::permanent(format!("agent {wanted:?}: {why}")));
                    }
                }
            } else if ephemeral {
                // At a provider's plan limit the create waits for a slot; idle warm
                // agents must not starve it: after a moment, evict one to make room.
                let launch = core.launch(profile, false, Some(job), true, timeout);
                tokio::pin!(launch);
                let launched = tokio::select! {
                    r = &mut launch => r,
                    _ = tokio::time::sleep(EVICT_AFTER) => {
                        self.evict_one_idle_anywhere().await;
                        launch.await
                    }
                };
                match launched {
                    Ok((_, Some(lease))) => {
                        core.stats.lock().unwrap().leases += 1;
                        return Ok(lease);
                    }
                    Ok((_, None)) => unreachable!("a launch for a job returns its lease"),
                    Err(LaunchError::Failed(e)) => break Err(e),
                    Err(LaunchError::AtCap) => {
                        // Idle warm agents must not starve an ephemeral job: evict one.
                        self.evict_one_idle(profile).await;
                        core.changed.notify_waiters();
                        None
                    }
                }
            } else {
                let l = core
                    .registry
                    .lease(
                        profile,
                        &job.id,
                        &core.worker,
                        core.hold,
                        &core.host,
                        max_age,
                    )
                    .await
                    .map_err(registry_error)?;
                if l.is_none() && my_launch.is_none() {
                    // Start one launch for the pool and take whichever agent is free
                    // first: this launch's, or one another job gives back.
                    my_launch = self.launch_in_background(profile, timeout).await;
                }
                l
            };
            if let Some(l) = leased {
                match self.take(l, profile, job, ephemeral, timeout).await {
                    Ok(lease) => break Ok(lease),
                    Err(None) => continue,
                    Err(Some(e)) => break Err(e),
                }
            }
            let launch_done = async {
                match my_launch.as_mut() {
                    Some(rx) => rx.await.unwrap_or(Ok(())),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(WAIT_POLL) => {}
                launched = launch_done => {
                    my_launch = None;
                    if let Err(e) = launched {
                        // Nothing free came of it, and the launch failed: so does the
                        // job (unless an agent is free by now: look once more).
                        if let Ok(Some(l)) = core.registry.lease(profile, &job.id, &core.worker, core.hold, &core.host, max_age).await {
                            match self.take(l, profile, job, ephemeral, timeout).await {
                                Ok(lease) => break Ok(lease),
                                Err(Some(e)) => break Err(e),
                                Err(None) => {}
                            }
                        }
                        break Err(e);
                    }
                }
                _ = cancel.cancelled() => break Err(JobError::cancelled("stopped while waiting for an agent")),
                _ = tokio::time::sleep_until(give_up_at) => break Err(JobError::timeout(format!(
                    "no agent became free within the attempt timeout ({}s)",
                    attempt_timeout.as_secs()
                ))),
            }
        };
        if let (Some(wanted), Err(_)) = (agent_id, &result) {
            let _ = core.registry.leave_waiters(wanted, &job.id).await;
        }
        if result.is_ok() {
            core.stats.lock().unwrap().leases += 1;
        }
        result
    }

    /// Make a leased agent ready for its job: resume it if it was paused (and check
    /// it came back whole), ping it if it sat idle for long, extend its sandbox's
    /// lifetime only if what is left would not cover the attempt. `Err(None)`: the
    /// agent was unusable and is being replaced; lease again.
    async fn take(
        &self,
        l: Leased,
        profile: &str,
        job: &JobRef,
        ephemeral: bool,
        timeout: Duration,
    ) -> Result<AgentLease, Option<JobError>> {
        let core = &self.core;
        core.held(&l.agent_id, l.fence);
        let mut fence = l.fence;
        let mut lease = AgentLease {
            agent_id: l.agent_id.clone(),
            sandbox_id: l.sandbox_id.clone(),
            profile: profile.to_string(),
            persistent: l.persistent,
            ephemeral,
            job_id: job.id.clone(),
            fence,
            jobs_served: l.jobs_served,
            age: l.age,
            core: None,
        };
        // Cut off while resuming or checking: the hold is given up (a persistent agent is
        // then adopted back to paused; a pooled one killed), never renewed for ever.
        let mut guard = HoldGuard::new(core, &l.agent_id, profile, l.fence, false);
        let check = if l.state == AgentState::Resuming {
            core.resume_and_check(&l.agent_id, &l.sandbox_id, timeout)
                .await
                .map(|()| true)
        } else if core.settings.health_check_idle_secs > 0
            && l.rested > Duration::from_secs(core.settings.health_check_idle_secs)
        {
            core.ping(&l.sandbox_id).await.map(|()| false)
        } else {
            Ok(false)
        };
        match check {
            Ok(true) => {
                match core
                    .registry
                    .ready(
                        &l.agent_id,
                        profile,
                        fence,
                        true,
                        Some(timeout),
                        "",
                        core.hold,
                    )
                    .await
                {
                    Ok(Finish::Done { fence: f }) => fence = f,
                    Ok(Finish::Terminate { fence }) => {
                        guard.disarm();
                        core.kill_and_forget(&l.agent_id, profile, &l.sandbox_id, fence)
                            .await;
                        return Err(None);
                    }
                    Ok(Finish::Refused { .. }) => {
                        guard.disarm();
                        core.released(&l.agent_id);
                        return Err(None);
                    }
                    Err(e) => {
                        guard.disarm();
                        core.released(&l.agent_id);
                        return Err(Some(registry_error(e)));
                    }
                }
                core.held(&l.agent_id, fence);
            }
            Ok(false) => {
                if l.sandbox_remaining < timeout.saturating_sub(SANDBOX_MARGIN / 2) {
                    if let Err(e) = core.provider.set_timeout(&l.sandbox_id, timeout).await {
                        guard.disarm();
                        tracing::warn!(agent_id = %l.agent_id, sandbox_id = %l.sandbox_id, error = %e, "agent unusable; replacing it");
                        core.abort_held(&l.agent_id, profile, &l.sandbox_id, fence)
                            .await;
                        return if matches!(e, SandboxError::NotFound(_)) {
                            Err(None)
                        } else {
                            Err(Some(e.into()))
                        };
                    }
                    core.stats.lock().unwrap().extended += 1;
                    let _ = core.registry.extend(&l.agent_id, fence, timeout).await;
                }
            }
            Err(why) => {
                guard.disarm();
                tracing::warn!(agent_id = %l.agent_id, sandbox_id = %l.sandbox_id, %why, "agent unhealthy; replacing it");
                core.stats.lock().unwrap().unhealthy += 1;
                core.abort_held(&l.agent_id, profile, &l.sandbox_id, fence)
                    .await;
                if l.persistent {
                    // A named agent that cannot come back is not silently replaced.
                    return Err(Some(JobError::permanent(format!(
                        "agent {}: {why}; it was terminated",
                        l.agent_id
                    ))));
                }
                return Err(None);
            }
        }
        guard.disarm();
        lease.fence = fence;
        lease.core = Some(core.clone());
        Ok(lease)
    }

    /// Start a launch for the pool unless this process already runs enough of them
    /// for the profile; the receiver reports how it ended.
    async fn launch_in_background(
        &self,
        profile: &str,
        timeout: Duration,
    ) -> Option<oneshot::Receiver<Result<(), JobError>>> {
        let core = self.core.clone();
        let (tx, rx) = oneshot::channel();
        *core
            .launching
            .lock()
            .unwrap()
            .entry(profile.to_string())
            .or_default() += 1;
        let profile = profile.to_string();
        let tasks = core.tasks.clone();
        tasks.spawn(async move {
            let result = match core.launch(&profile, false, None, false, timeout).await {
                Ok(_) => Ok(()),
                // At the cap: nothing to launch; wait for an agent to come back.
                Err(LaunchError::AtCap) => Ok(()),
                Err(LaunchError::Failed(e)) => Err(e),
            };
            if let Some(n) = core.launching.lock().unwrap().get_mut(&profile) {
                *n = n.saturating_sub(1);
            }
            let _ = tx.send(result);
        });
        Some(rx)
    }

    /// Terminate the longest-idle pooled agent of any profile this worker serves (to
    /// make room at a provider's plan limit).
    async fn evict_one_idle_anywhere(&self) {
        let profiles: Vec<String> = self.core.profiles.keys().cloned().collect();
        for p in profiles {
            if self.evict_one_idle(&p).await {
                return;
            }
        }
    }

    /// Terminate the profile's longest-idle pooled agent (to make room for an
    /// ephemeral one at the cap); whether one was.
    async fn evict_one_idle(&self, profile: &str) -> bool {
        let core = &self.core;
        let Ok(idle) = core.registry.idle(profile).await else {
            return false;
        };
        for (agent_id, _) in idle {
            if let Ok(Start::Started { fence, sandbox_id }) = core
                .registry
                .terminate(
                    &agent_id,
                    profile,
                    &core.worker,
                    core.hold,
                    TerminateBy::Policy,
                    None,
                )
                .await
            {
                tracing::info!(%agent_id, "evicting an idle agent to make room for an ephemeral one");
                core.kill_and_forget(&agent_id, profile, &sandbox_id, fence)
                    .await;
                return true;
            }
        }
        false
    }

    /// Return a leased agent. `sandbox_healthy = false` (its sandbox was lost) kills it.
    pub async fn give_back(&self, lease: AgentLease, sandbox_healthy: bool) {
        self.core.give_back(lease, sandbox_healthy, true).await
    }

    /// Lifecycle: launch an agent now (idle afterwards); returns its record.
    pub async fn launch(&self, profile: &str, persistent: bool) -> Result<AgentRecord, JobError> {
        let core = &self.core;
        let timeout = core.sandbox_timeout(Duration::ZERO);
        // The launch has no job: the pool holds it, and it is idle when set up.
        let agent_id = match core.launch(profile, persistent, None, false, timeout).await {
            Ok((agent_id, _)) => agent_id,
            Err(LaunchError::AtCap) => {
                return Err(JobError::transient(format!(
                    "profile {profile:?} is at its max_agents"
                )));
            }
            Err(LaunchError::Failed(e)) => return Err(e),
        };
        self.record(&agent_id).await
    }

    async fn record(&self, agent_id: &str) -> Result<AgentRecord, JobError> {
        self.core
            .registry
            .get(agent_id)
            .await
            .map_err(registry_error)?
            .ok_or_else(|| JobError::permanent(format!("unknown agent ID {agent_id:?}")))
    }

    /// Lifecycle: pause an agent (keeps its files). A busy agent is paused when its
    /// job gives it back, never under it.
    pub async fn pause(&self, agent_id: &str) -> Result<AgentRecord, JobError> {
        let core = &self.core;
        let rec = self.record(agent_id).await?;
        match core
            .registry
            .pause(
                agent_id,
                &rec.profile,
                &core.worker,
                core.hold,
                Duration::ZERO,
                true,
            )
            .await
            .map_err(registry_error)?
        {
            Start::Started { fence, sandbox_id } => {
                core.finish_pause(agent_id, &rec.profile, &sandbox_id, fence)
                    .await
            }
            Start::AfterJob { .. } | Start::AlreadyDone { .. } => {}
            Start::Refused { state } => {
                return Err(JobError::transient(format!(
                    "agent {agent_id} is {state}; it cannot be paused now"
                )));
            }
        }
        self.record(agent_id).await
    }

    /// Lifecycle: resume a paused agent (idle afterwards).
    pub async fn resume(&self, agent_id: &str) -> Result<AgentRecord, JobError> {
        let core = &self.core;
        let rec = self.record(agent_id).await?;
        match core
            .registry
            .resume(agent_id, &rec.profile, &core.worker, core.hold)
            .await
            .map_err(registry_error)?
        {
            Start::Started { fence, sandbox_id } => {
                core.held(agent_id, fence);
                // Cut off midway: the hold lapses and the agent is adopted (back to paused).
                let mut guard = HoldGuard::new(core, agent_id, &rec.profile, fence, false);
                let timeout = core.sandbox_timeout(Duration::ZERO);
                let checked = core.resume_and_check(agent_id, &sandbox_id, timeout).await;
                guard.disarm();
                if let Err(why) = checked {
                    core.abort_held(agent_id, &rec.profile, &sandbox_id, fence)
                        .await;
                    return Err(JobError::transient(format!(
                        "agent {agent_id}: {why}; it was terminated"
                    )));
                }
                match core
                    .registry
                    .ready(
                        agent_id,
                        &rec.profile,
                        fence,
                        false,
                        Some(timeout),
                        "",
                        core.hold,
                    )
                    .await
                    .map_err(registry_error)?
                {
                    Finish::Done { .. } => core.released(agent_id),
                    Finish::Terminate { fence } => {
                        core.kill_and_forget(agent_id, &rec.profile, &sandbox_id, fence)
                            .await
                    }
                    Finish::Refused { .. } => core.released(agent_id),
                }
                core.changed.notify_waiters();
            }
            Start::AfterJob { .. } | Start::AlreadyDone { .. } => {}
            Start::Refused { state } => {
                return Err(JobError::transient(format!(
                    "agent {agent_id} is {state}; it cannot be resumed now"
                )));
            }
        }
        self.record(agent_id).await
    }

    /// Lifecycle: kill an agent's sandbox for good (a busy agent's when its job ends).
    /// Returns whether it is gone now (false: it goes after its job).
    pub async fn terminate(&self, agent_id: &str) -> Result<bool, JobError> {
        let core = &self.core;
        let rec = self.record(agent_id).await?;
        match core
            .registry
            .terminate(
                agent_id,
                &rec.profile,
                &core.worker,
                core.hold,
                TerminateBy::Command,
                None,
            )
            .await
            .map_err(registry_error)?
        {
            Start::Started { fence, sandbox_id } => {
                core.kill_and_forget(agent_id, &rec.profile, &sandbox_id, fence)
                    .await;
                Ok(true)
            }
            Start::AfterJob { .. } | Start::AlreadyDone { .. } => Ok(false),
            Start::Refused { state } => Err(JobError::transient(format!(
                "agent {agent_id} is {state}; it cannot be terminated now"
            ))),
        }
    }

    /// Lifecycle: launch or terminate pooled agents until `profile` has `size` of them
    /// fleet-wide. Idle and paused agents go first; busy ones go when their jobs end.
    pub async fn scale(&self, profile: &str, size: usize) -> Result<usize, JobError> {
        let core = &self.core;
        if !core.profiles.contains_key(profile) {
            return Err(JobError::permanent(format!(
                "unknown agent profile {profile:?}"
            )));
        }
        loop {
            let agents: Vec<AgentRecord> = core
                .registry
                .list(Some(profile))
                .await
                .map_err(registry_error)?
                .into_iter()
                .filter(|a| !a.persistent && a.after.is_empty())
                .filter(|a| a.state != AgentState::Terminating)
                .collect();
            let count = agents.len();
            if count < size {
                match core
                    .launch(
                        profile,
                        false,
                        None,
                        false,
                        core.sandbox_timeout(Duration::ZERO),
                    )
                    .await
                {
                    Ok(_) => continue,
                    Err(LaunchError::AtCap) => return Ok(count),
                    Err(LaunchError::Failed(e)) => return Err(e),
                }
            }
            if count == size {
                return Ok(count);
            }
            // Shrink: free agents first (idle, then paused), then busy ones after
            // their jobs.
            let mut order = agents;
            order.sort_by_key(|a| match a.state {
                AgentState::Idle => 0,
                AgentState::Paused => 1,
                _ => 2,
            });
            for a in order.into_iter().take(count - size) {
                if let Start::Started { fence, sandbox_id } = core
                    .registry
                    .terminate(
                        &a.agent_id,
                        profile,
                        &core.worker,
                        core.hold,
                        TerminateBy::Command,
                        None,
                    )
                    .await
                    .map_err(registry_error)?
                {
                    core.kill_and_forget(&a.agent_id, profile, &sandbox_id, fence)
                        .await;
                }
            }
        }
    }

    /// Lifecycle: replace every pooled agent of `profile` (e.g. after a push to its
    /// repository): idle and paused ones now, busy ones when their jobs end. Returns
    /// how many were marked.
    pub async fn refresh(&self, profile: &str) -> Result<usize, JobError> {
        let core = &self.core;
        let agents = core
            .registry
            .list(Some(profile))
            .await
            .map_err(registry_error)?;
        let mut n = 0;
        for a in agents.into_iter().filter(|a| !a.persistent) {
            match core
                .registry
                .terminate(
                    &a.agent_id,
                    profile,
                    &core.worker,
                    core.hold,
                    TerminateBy::Command,
                    None,
                )
                .await
                .map_err(registry_error)?
            {
                Start::Started { fence, sandbox_id } => {
                    n += 1;
                    core.kill_and_forget(&a.agent_id, profile, &sandbox_id, fence)
                        .await
                }
                Start::AfterJob { .. } => n += 1,
                _ => {}
            }
        }
        Ok(n)
    }

    /// The pool's background work until `stop`: renew this process's holds on agents
    /// (every third of a hold, like job leases), and listen to the registry's change
    /// channel so that leases waiting here look again as soon as an agent is freed
    /// anywhere in the fleet. Stop it after [`AgentPool::shutdown_within`].
    pub fn start_background(self: Arc<Self>, redis: RedisSettings, stop: CancellationToken) {
        {
            let (pool, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(pool.core.hold / 3);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {
                            if let Err(e) = pool.renew_holds().await {
                                tracing::warn!(error = %e.message, "could not renew holds on agents");
                            }
                        }
                    }
                }
            });
        }
        let channel = self.core.registry.keys().changed.clone();
        tokio::spawn(async move {
            use futures::StreamExt;
            loop {
                let listen = async {
                    let client = redis::Client::open(redis.url.as_str())?;
                    let mut pubsub = client.get_async_pubsub().await?;
                    pubsub.subscribe(&channel).await?;
                    // Subscribed: anything freed before this is found by the next look.
                    self.wake();
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        self.wake();
                    }
                    Ok::<(), redis::RedisError>(())
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    result = listen => {
                        if let Err(e) = result {
                            tracing::debug!(error = %e, "agent change listener lost its connection; reconnecting");
                        }
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        });
    }

    /// Renew this process's holds (every third of a hold). Holds found lost (adopted
    /// by another worker after this one stalled) are dropped from the list.
    pub async fn renew_holds(&self) -> Result<(), JobError> {
        let core = &self.core;
        let holds: Vec<(String, u64)> = core
            .holds
            .lock()
            .unwrap()
            .iter()
            .map(|(a, f)| (a.clone(), *f))
            .collect();
        let lost = core
            .registry
            .renew(&core.worker, core.hold, &holds)
            .await
            .map_err(registry_error)?;
        let mut mine = core.holds.lock().unwrap();
        for i in lost {
            if let Some((agent_id, fence)) = holds.get(i)
                && mine.get(agent_id) == Some(fence)
            {
                tracing::warn!(%agent_id, "hold on an agent lost (adopted by another worker)");
                mine.remove(agent_id);
            }
        }
        Ok(())
    }

    /// One maintenance round (every worker, about once a second): adopt what dead
    /// workers held, retry failed kills, and apply the policy.
    pub async fn maintain(&self) {
        let core = &self.core;
        match core.registry.expired_holds().await {
            Ok(ids) => {
                for agent_id in ids {
                    self.adopt(&agent_id).await;
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read expired holds"),
        }
        let pending: Vec<_> = std::mem::take(&mut *core.pending_kills.lock().unwrap());
        for (agent_id, profile, sandbox_id, fence) in pending {
            core.kill_and_forget(&agent_id, &profile, &sandbox_id, fence)
                .await;
        }
        policy::apply(self).await;
    }

    async fn adopt(&self, agent_id: &str) {
        let core = &self.core;
        let profile = match core.registry.get(agent_id).await {
            Ok(Some(rec)) if rec.host.is_empty() || rec.host == core.host => rec.profile,
            _ => return,
        };
        match core.registry.adopt(agent_id, &core.worker, core.hold).await {
            Ok(Adopted::Nothing) => {}
            Ok(Adopted::Freed) => {
                core.stats.lock().unwrap().adopted += 1;
                tracing::info!(%agent_id, "adopted an agent whose worker is gone; back in the pool");
                core.changed.notify_waiters();
            }
            Ok(Adopted::Finish {
                pause,
                fence,
                sandbox_id,
            }) => {
                core.stats.lock().unwrap().adopted += 1;
                tracing::info!(%agent_id, %sandbox_id, pause, "adopted an agent whose worker is gone; finishing its {}", if pause { "pause" } else { "kill" });
                if pause {
                    core.finish_pause(agent_id, &profile, &sandbox_id, fence)
                        .await
                } else {
                    core.kill_and_forget(agent_id, &profile, &sandbox_id, fence)
                        .await
                }
            }
            Err(e) => tracing::debug!(%agent_id, error = %e, "adopt failed"),
        }
    }

    /// Kill sandboxes of this system that no registry record claims (strays: left
    /// by an older version, or by a kill whose record went first). `found` is one
    /// listing of the system's sandboxes ([`AgentPool::owned_sandboxes`]).
    pub async fn reconcile(&self, found: Vec<SandboxInfo>) -> Result<usize, SandboxError> {
        let core = &self.core;
        let mut killed = 0;
        for sandbox in found {
            let agent_id = sandbox
                .metadata
                .get(META_AGENT_ID)
                .cloned()
                .unwrap_or_default();
            let claimed = if agent_id.is_empty() {
                false
            } else {
                match core.registry.exists(&agent_id).await {
                    Ok(yes) => yes,
                    Err(e) => {
                        return Err(SandboxError::Unavailable(format!(
                            "agent registry (Redis): {e}"
                        )));
                    }
                }
            };
            if claimed {
                continue;
            }
            tracing::warn!(sandbox_id = %sandbox.id, %agent_id, "killing a sandbox that no agent record claims");
            match core.provider.kill(&sandbox.id).await {
                Ok(()) | Err(SandboxError::NotFound(_)) => {
                    core.stats.lock().unwrap().killed += 1;
                    killed += 1;
                }
                Err(e) => {
                    tracing::warn!(sandbox_id = %sandbox.id, error = %e, "could not kill a stray sandbox; next reconcile retries")
                }
            }
        }
        Ok(killed)
    }

    /// Every sandbox this system created (tagged with its owner), any worker's.
    pub async fn owned_sandboxes(&self) -> Result<Vec<SandboxInfo>, SandboxError> {
        let mut filter = ListFilter::default();
        filter
            .metadata
            .insert(META_OWNER.to_string(), OWNER.to_string());
        self.core.provider.list(&filter).await
    }

    /// Retry the kills the provider could not confirm; the sandboxes still not
    /// confirmed killed.
    pub async fn retry_failed_kills(&self) -> Vec<String> {
        self.core.provider.retry_failed_kills().await
    }

    /// At worker shutdown, within `limit`: wait for this process's launches, then end
    /// the agents it launched that sit idle or paused (pooled ones killed, persistent
    /// ones paused) — and, when `last` (no other worker is alive), every free agent
    /// of the fleet on this host, so a stopped fleet leaves nothing running. Busy
    /// agents of other workers are killed when their jobs end. Returns the sandboxes
    /// that could not be killed, each logged so an operator can kill it by hand.
    pub async fn shutdown_within(&self, limit: Duration, last: bool) -> Vec<String> {
        let core = &self.core;
        let deadline = crate::time::instant_after(limit);
        // Launches under way finish, and give-backs and kills of cut-off attempts too
        // (their agents are then ended like the others).
        core.stopping.cancel();
        core.tasks.close();
        if tokio::time::timeout_at(deadline, core.tasks.wait())
            .await
            .is_err()
        {
            // A create already sent, or a kill under way: exiting now could leave a
            // sandbox running that no record names. Each is one request from done.
            tracing::warn!(
                grace_secs = BACKGROUND_GRACE.as_secs(),
                "background work on agents did not finish before the drain timeout; waiting for it"
            );
            if tokio::time::timeout(BACKGROUND_GRACE, core.tasks.wait())
                .await
                .is_err()
            {
                tracing::error!("background work on agents still unfinished; stopping anyway");
            }
        }
        let agents = match core.registry.list(None).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the agent registry at shutdown");
                Vec::new()
            }
        };
        let mut ends = Vec::new();
        for a in agents {
            let mine = a.launched_by == core.worker;
            let here = a.host.is_empty() || a.host == core.host;
            if !(here && (mine || last)) {
                continue;
            }
            ends.push(self.end_at_shutdown(a));
        }
        futures::future::join_all(ends).await;
        let mut pause = Duration::from_millis(200);
        loop {
            let pending: Vec<_> = std::mem::take(&mut *core.pending_kills.lock().unwrap());
            for (agent_id, profile, sandbox_id, fence) in pending {
                core.kill_and_forget(&agent_id, &profile, &sandbox_id, fence)
                    .await;
            }
            let left = match tokio::time::timeout_at(deadline, self.retry_failed_kills()).await {
                Ok(left) => left,
                Err(_) => core.provider.failed_kills(),
            };
            let mut left = left;
            left.extend(
                core.pending_kills
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(_, _, s, _)| s.clone()),
            );
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

    async fn end_at_shutdown(&self, a: AgentRecord) {
        let core = &self.core;
        if a.persistent {
            if a.state == AgentState::Idle
                && let Ok(Start::Started { fence, sandbox_id }) = core
                    .registry
                    .pause(
                        &a.agent_id,
                        &a.profile,
                        &core.worker,
                        core.hold,
                        Duration::ZERO,
                        false,
                    )
                    .await
            {
                core.finish_pause(&a.agent_id, &a.profile, &sandbox_id, fence)
                    .await;
            }
            return;
        }
        match core
            .registry
            .terminate(
                &a.agent_id,
                &a.profile,
                &core.worker,
                core.hold,
                TerminateBy::Command,
                None,
            )
            .await
        {
            Ok(Start::Started { fence, sandbox_id }) => {
                core.kill_and_forget(&a.agent_id, &a.profile, &sandbox_id, fence)
                    .await
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(agent_id = %a.agent_id, error = %e, "could not end an agent at shutdown")
            }
        }
    }

    /// At shutdown: `shutdown_within` 10 s, as the last worker.
    pub async fn shutdown(&self) {
        self.shutdown_within(Duration::from_secs(10), true).await;
    }
}

/// After jobs are enqueued: list those addressed to an agent (`agent_id`) among the
/// agent's waiters, so they run in submission order whichever worker takes them (a
/// no-op, with no connection, when none is). The producer calls it on every submit.
pub async fn expect_submitted(
    redis: &RedisSettings,
    jobs: &[(crate::job::JobId, &crate::job::JobSpec)],
) -> Result<(), RegistryError> {
    let addressed: Vec<(String, String, u64)> = jobs
        .iter()
        .filter_map(|(id, spec)| match &spec.payload {
            crate::job::JobPayload::Research(r) => r
                .agent_id
                .as_ref()
                .map(|agent| (agent.clone(), id.to_string(), id.submitted_ms())),
            _ => None,
        })
        .collect();
    if addressed.is_empty() {
        return Ok(());
    }
    Registry::open(redis).await?.expect_jobs(&addressed).await
}

/// This machine's name (local-provider agents are reachable only from it).
fn local_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}
