//! The job handlers: what a research job and a lifecycle job do. Leases, retries,
//! timeouts and result writing are middleware (`AttemptLayer`); these read as the
//! job's own logic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use apalis::prelude::Data;
use fleet_shared::error::{ErrorClass, JobError};
use fleet_shared::events::EventKind;
use fleet_shared::events::writer::{AttemptEvents, EventSink};
use fleet_shared::gateway::Gateway;
use fleet_shared::job::{Job, JobPayload, LifecycleJob};
use fleet_shared::pool::{AgentPool, JobRef, ModelAccess};
use fleet_shared::queue::RedisQueue;
use fleet_shared::queue::apalis_backend::JobOutput;
use fleet_shared::queue::attempt::{AbortReason, AttemptContext};
use fleet_shared::runtime::{RunOptions, checkout};
use serde_json::json;

use crate::github::GithubWork;

/// What the handlers share.
pub struct Executor {
    pub pool: Arc<AgentPool>,
    pub research_queue: RedisQueue,
    /// GitHub client and settings, for `publish` jobs (`github.rs`).
    pub github: Option<Arc<GithubWork>>,
    pub attempts_started: AtomicU64,
    pub attempts_succeeded: AtomicU64,
    pub attempts_failed: AtomicU64,
    /// The model gateway, when `[gateway] enabled`: research runs go through it.
    pub gateway: Option<Arc<Gateway>>,
    /// Where attempts' live events go (`events.enabled`).
    pub events: Option<EventSink>,
}

impl Executor {
    pub fn new(pool: Arc<AgentPool>, research_queue: RedisQueue) -> Executor {
        Executor {
            pool,
            research_queue,
            github: None,
            attempts_started: AtomicU64::new(0),
            attempts_succeeded: AtomicU64::new(0),
            attempts_failed: AtomicU64::new(0),
            gateway: None,
            events: None,
        }
    }

    /// Run research jobs through the model gateway.
    pub fn with_gateway(mut self, gateway: Arc<Gateway>) -> Executor {
        self.gateway = Some(gateway);
        self
    }

    /// Write attempts' live events to `sink`.
    pub fn with_events(mut self, sink: EventSink) -> Executor {
        self.events = Some(sink);
        self
    }

    /// The live events of a research attempt, with its `attempt_started` written.
    fn attempt_events(&self, job: &Job, attempt: &AttemptContext) -> Option<AttemptEvents> {
        let sink = self.events.as_ref()?;
        let JobPayload::Research(research) = &job.spec.payload else {
            return None;
        };
        let runtime = self.pool.runtime(&research.agent);
        let pipe = runtime.as_ref().and_then(|r| r.event_pipe());
        let redact: fleet_shared::events::writer::Redactor = match runtime {
            Some(runtime) => Arc::new(move |text: &str| runtime.redact_output(text)),
            None => Arc::new(str::to_string),
        };
        let key = self.research_queue.keys().events(&job.id.to_string());
        let events = sink.attempt(key, attempt.lease.attempt, pipe, redact);
        events.push(
            EventKind::AttemptStarted,
            &json!({"worker": &*attempt.worker, "agent": research.agent}),
        );
        Some(events)
    }

    pub fn with_github(mut self, github: GithubWork) -> Executor {
        self.github = Some(Arc::new(github));
        self
    }

    fn count<T>(&self, result: &Result<T, JobError>) {
        let counter = if result.is_ok() {
            &self.attempts_succeeded
        } else {
            &self.attempts_failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Run one research query: lease an agent, run the query in its sandbox, give it back.
pub async fn run_research(
    job: Job,
    attempt: Data<AttemptContext>,
    exec: Data<Arc<Executor>>,
) -> Result<JobOutput, JobError> {
    exec.attempts_started.fetch_add(1, Ordering::Relaxed);
    let events = exec.attempt_events(&job, &attempt);
    let output = events.as_ref().map(AttemptEvents::output);
    let result = research(&job, &attempt, &exec, output).await;
    exec.count(&result);
    if let Some(events) = events {
        // Written before the attempt is settled: whoever sees the job end has seen them.
        events
            .finish(attempt_ended(&result), EVENTS_FLUSH_WITHIN)
            .await;
    }
    result
}

/// How long the end of an attempt waits for its live events to reach Redis.
const EVENTS_FLUSH_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// The `attempt_ended` event of an attempt that ended so.
fn attempt_ended(result: &Result<JobOutput, JobError>) -> serde_json::Value {
    match result {
        Ok(_) => json!({"status": "succeeded"}),
        Err(e) => json!({"status": "failed", "class": e.class, "error": e.message}),
    }
}

async fn research(
    job: &Job,
    attempt: &AttemptContext,
    exec: &Executor,
    output: Option<tokio::sync::mpsc::UnboundedSender<fleet_shared::sandbox::OutputChunk>>,
) -> Result<JobOutput, JobError> {
    let JobPayload::Research(research) = &job.spec.payload else {
        return Err(JobError::permanent(
            "a lifecycle job reached the research queue",
        ));
    };
    // One budget for the whole attempt: waiting for an agent spends it, and the
    // runtime gets what is left (not a fresh full timeout), so the attempt ends at
    // its timeout and not past the layer's outer limit, which would drop it.
    let started = Instant::now();
    let cancel = attempt.abort.token();
    let runtime = exec.pool.runtime(&research.agent).ok_or_else(|| {
        JobError::permanent(format!("unknown agent profile {:?}", research.agent))
    })?;
    let lease = exec
        .pool
        .lease(
            &research.agent,
            research.agent_id.as_deref(),
            research.ephemeral,
            attempt.attempt_timeout,
            cancel,
            &JobRef {
                id: job.id.to_string(),
                order: job.id.submitted_ms(),
            },
        )
        .await?;
    let remaining = attempt.attempt_timeout.saturating_sub(started.elapsed());
    if remaining.is_zero() {
        exec.pool.give_back(lease, true).await;
        return Err(JobError::timeout(
            "the attempt timeout passed while leasing an agent",
        ));
    }
    let (agent_id, sandbox_id) = (lease.agent_id.clone(), lease.sandbox_id.clone());
    // Through the gateway: a token for this attempt in place of the provider keys
    // (unless the profile keeps the old path: its keys in the sandbox).
    let via_gateway = exec.pool.model_access(&research.agent) == ModelAccess::Gateway;
    let pass = match &exec.gateway {
        Some(gateway) if via_gateway => {
            let binding = gateway.binding(job, &attempt.lease, &research.agent);
            match gateway.begin_attempt(binding, cancel).await {
                Ok(pass) => Some(pass),
                Err(e) => {
                    exec.pool.give_back(lease, true).await;
                    return Err(JobError::transient(format!(
                        "the model gateway could not issue a token: {e}"
                    )));
                }
            }
        }
        _ => None,
    };
    let (run_cancel, gateway_env) = match &pass {
        Some(p) => (p.cancel.clone(), p.env.clone()),
        None => (cancel.clone(), Default::default()),
    };
    let held_since = Instant::now();
    tracing::info!(job_id = %job.id, attempt = attempt.lease.attempt, %agent_id, %sandbox_id, "running query");
    let output = runtime
        .run(
            exec.pool.provider().as_ref(),
            &sandbox_id,
            &research.query,
            RunOptions {
                timeout: Some(remaining),
                cancel: run_cancel,
                output,
                keep_session: research.agent_id.is_some(),
                max_turns: job.spec.options.max_turns,
                max_budget_usd: job.spec.options.max_budget_usd.map(|usd| usd.0),
                gateway_env,
                // The cap applies while the output is read (results/store.rs).
                max_output_bytes: exec.research_queue.config().results.max_bytes,
            },
        )
        .await;
    let sandbox_healthy = !matches!(&output, Err(e) if e.class == ErrorClass::SandboxLost);
    // What this job cost in sandbox time: from the lease to the agent's return.
    let sandbox_seconds = held_since.elapsed().as_secs_f64();
    exec.pool.give_back(lease, sandbox_healthy).await;
    let spend = match (&exec.gateway, pass) {
        (Some(gateway), Some(pass)) => Some(gateway.end_attempt(pass).await),
        _ => None,
    };
    // What this attempt spent, counted on the agent (the agents screen's cost): the
    // gateway's priced tokens, else the agent's own figure (Claude Code's total_cost_usd).
    let attempt_cost = match (&spend, &output) {
        (Some(spend), _) => spend.attempt.cost_usd,
        (None, Ok(out)) => out
            .metadata
            .get("total_cost_usd")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0),
        (None, Err(_)) => 0.0,
    };
    if let Err(e) = exec.pool.registry().add_cost(&agent_id, attempt_cost).await {
        tracing::debug!(%agent_id, error = %e, "could not count the attempt's cost on its agent");
    }
    if let Some(spend) = &spend
        && let Some(err) = spend.error(output.as_ref().err().cloned())
    {
        return Err(err);
    }
    let output = output?;
    let mut result = json!({
        "agent": research.agent,
        "agent_id": agent_id,
        "sandbox_id": sandbox_id,
        "sandbox_seconds": (sandbox_seconds * 1000.0).round() / 1000.0,
        "exit_code": output.exit_code,
        "metadata": output.metadata,
        "truncated": output.truncated,
    });
    if let Some(spend) = &spend {
        spend.add_to(&mut result, &output.metadata);
    }
    // Moved in, not through `json!`, which would copy it: an answer may be as large as
    // results.max_bytes, and the worker holds it once (results/store.rs).
    result["answer"] = serde_json::Value::String(output.answer);
    Ok(result)
}

/// Run one lifecycle operation on this worker's pool. It stops when its attempt is told
/// to (cancel, shutdown after the drain timeout, lease lost): the job then ends
/// cancelled, is released, or is left to the attempt that now owns it, so a `launch`
/// whose lease was reclaimed does not go on launching beside the new attempt.
pub async fn run_lifecycle(
    job: Job,
    attempt: Data<AttemptContext>,
    exec: Data<Arc<Executor>>,
) -> Result<JobOutput, JobError> {
    let JobPayload::Lifecycle(op) = &job.spec.payload else {
        return Err(JobError::permanent(
            "a research job reached the lifecycle queue",
        ));
    };
    tokio::select! {
        biased;
        _ = attempt.abort.token().cancelled() => Err(JobError::cancelled(
            match attempt.abort.reason() {
                Some(AbortReason::Shutdown) => "stopped: the worker is shutting down",
                Some(AbortReason::LeaseLost) => "stopped: its lease was lost",
                _ => "cancelled while it ran",
            },
        )),
        result = lifecycle(op, &attempt, &exec) => {
            if let (LifecycleJob::Launch { .. }, Ok(out)) = (op, &result)
                && let Some(agent_id) = out["agent"]["agent_id"].as_str()
            {
                // Only the result names the new agent: if the result is discarded (the
                // lease was lost, or it could not be written), the job is launched
                // again by its next attempt, and this agent must not be left running.
                let (pool, agent_id) = (exec.pool.clone(), agent_id.to_string());
                attempt.undo.set(move || {
                    Box::pin(async move {
                        if let Err(e) = pool.terminate(&agent_id).await {
                            tracing::warn!(%agent_id, error = %e.message, "could not terminate the agent of a discarded launch");
                        }
                    })
                });
            }
            result
        }
    }
}

async fn lifecycle(
    op: &LifecycleJob,
    attempt: &AttemptContext,
    exec: &Executor,
) -> Result<JobOutput, JobError> {
    let pool = &exec.pool;
    let result = match op {
        LifecycleJob::Launch { agent, persistent } => {
            let info = pool.launch(agent, *persistent).await?;
            // The commit a git agent was checked out at (`runtime/checkout.rs`).
            let commit = checkout::read_record(pool.provider().as_ref(), &info.sandbox_id)
                .await
                .map(|r| r.commit);
            json!({"agent": info, "commit": commit})
        }
        LifecycleJob::Pause { agent_id } => json!({"agent": pool.pause(agent_id).await?}),
        LifecycleJob::Resume { agent_id } => json!({"agent": pool.resume(agent_id).await?}),
        LifecycleJob::Terminate { agent_id } => {
            let now = pool.terminate(agent_id).await?;
            json!({"terminated": agent_id, "after_job": !now})
        }
        LifecycleJob::Scale { agent, size } => {
            json!({"agent": agent, "size": pool.scale(agent, *size as usize).await?})
        }
        LifecycleJob::Refresh { agent, commit } => {
            refresh_agents(pool, agent, commit.as_deref(), attempt).await?
        }
        LifecycleJob::Publish {
            repo,
            batch_id,
            job_ids,
        } => {
            let github = exec.github.as_ref().ok_or_else(|| {
                JobError::permanent("this worker was started without GitHub settings")
            })?;
            crate::github::publish(github, &exec.research_queue, repo, batch_id, job_ids).await?
        }
        LifecycleJob::HealthCheck => {
            json!({"agents": pool.agents().await?, "stats": pool.stats()})
        }
    };
    Ok(result)
}

// ---------------------------------------------------------------------------------
// Refresh (issue 13). The only pool-facing code of the GitHub work, kept in this one
// function for the pool rewrite: it uses the pool's public `agents`, `lease` (by
// agent ID) and `give_back`, and the runtime's `refresh`/`repo_checkout`.
// ---------------------------------------------------------------------------------

/// Move every agent of `profile` to `commit` (a git profile): each agent is leased by
/// its ID, so a busy one is refreshed after its job, and its checkout is moved in
/// place (`AgentRuntime::refresh`). Only when all succeeded are new agents pinned to
/// the commit; a refresh that fails leaves the old commit serving (the fetch changes
/// nothing until the checkout) and the job is retried. Agents launched while the
/// refresh ran are refreshed in a second pass. A profile whose repo is not git has
/// its idle agents replaced (busy ones as they come back), as before.
async fn refresh_agents(
    pool: &AgentPool,
    profile: &str,
    commit: Option<&str>,
    attempt: &AttemptContext,
) -> Result<JobOutput, JobError> {
    let runtime = pool
        .runtime(profile)
        .ok_or_else(|| JobError::permanent(format!("unknown agent profile {profile:?}")))?;
    let of_profile = || async {
        pool.agents().await.map(|agents| {
            agents
                .into_iter()
                .filter(|a| a.profile == profile)
                .map(|a| a.agent_id)
                .collect::<Vec<String>>()
        })
    };
    let Some(checkout) = runtime.repo_checkout() else {
        // Fresh agents get the new code: idle and paused ones are replaced now, busy
        // ones when their jobs end.
        return Ok(json!({"agent": profile, "replaced": pool.refresh(profile).await?}));
    };
    // The refresh takes each agent like a job addressed to it, ahead of every job
    // waiting for it (order 0), so a busy agent is refreshed right after its job.
    let me = JobRef {
        id: format!("refresh-{}", fleet_shared::job::JobId::new()),
        order: 0,
    };
    let cancel = attempt.abort.token();
    let mut refreshed: Vec<serde_json::Value> = Vec::new();
    let mut done: std::collections::BTreeSet<String> = Default::default();
    for pass in 0..2 {
        if pass == 1
            && let Some(commit) = commit
        {
            checkout.pin(commit);
        }
        for agent_id in of_profile().await? {
            if done.contains(&agent_id) {
                continue;
            }
            let lease = match pool
                .lease(
                    profile,
                    Some(&agent_id),
                    false,
                    attempt.attempt_timeout,
                    cancel,
                    &me,
                )
                .await
            {
                Ok(lease) => lease,
                // Gone meanwhile (terminated, recycled): nothing to refresh.
                Err(_) if !of_profile().await?.contains(&agent_id) => continue,
                Err(e) => return Err(e),
            };
            let result = runtime
                .refresh(pool.provider().as_ref(), &lease.sandbox_id, commit)
                .await;
            let healthy = !matches!(&result, Err(e) if e.class == ErrorClass::SandboxLost);
            pool.give_back(lease, healthy).await;
            let record = result?;
            tracing::info!(%agent_id, profile, commit = %record.commit, "agent refreshed");
            refreshed.push(json!({"agent_id": agent_id, "commit": record.commit}));
            done.insert(agent_id);
        }
    }
    Ok(json!({"agent": profile, "commit": commit, "refreshed": refreshed}))
}
