//! The job handlers: what a research job and a lifecycle job do. Leases, retries,
//! timeouts and result writing are middleware (`AttemptLayer`); these read as the
//! job's own logic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use apalis::prelude::Data;
use fleet_shared::error::{ErrorClass, JobError};
use fleet_shared::gateway::Gateway;
use fleet_shared::job::{Job, JobPayload, LifecycleJob};
use fleet_shared::pool::AgentPool;
use fleet_shared::queue::RedisQueue;
use fleet_shared::queue::apalis_backend::JobOutput;
use fleet_shared::queue::attempt::{AbortReason, AttemptContext};
use fleet_shared::runtime::RunOptions;
use serde_json::json;

/// What the handlers share.
pub struct Executor {
    pub pool: Arc<AgentPool>,
    pub research_queue: RedisQueue,
    pub attempts_started: AtomicU64,
    pub attempts_succeeded: AtomicU64,
    pub attempts_failed: AtomicU64,
    /// The model gateway, when `[gateway] enabled`: research runs go through it.
    pub gateway: Option<Arc<Gateway>>,
}

impl Executor {
    pub fn new(pool: Arc<AgentPool>, research_queue: RedisQueue) -> Executor {
        Executor {
            pool,
            research_queue,
            attempts_started: AtomicU64::new(0),
            attempts_succeeded: AtomicU64::new(0),
            attempts_failed: AtomicU64::new(0),
            gateway: None,
        }
    }

    /// Run research jobs through the model gateway.
    pub fn with_gateway(mut self, gateway: Arc<Gateway>) -> Executor {
        self.gateway = Some(gateway);
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
    let result = research(&job, &attempt, &exec).await;
    exec.count(&result);
    result
}

async fn research(
    job: &Job,
    attempt: &AttemptContext,
    exec: &Executor,
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
    // Through the gateway: a token for this attempt in place of the provider keys.
    let pass = match &exec.gateway {
        Some(gateway) => {
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
        None => None,
    };
    let (run_cancel, gateway_env) = match &pass {
        Some(p) => (p.cancel.clone(), p.env.clone()),
        None => (cancel.clone(), Default::default()),
    };
    tracing::info!(job_id = %job.id, attempt = attempt.lease.attempt, %agent_id, %sandbox_id, "running query");
    let output = runtime
        .run(
            exec.pool.provider().as_ref(),
            &sandbox_id,
            &research.query,
            RunOptions {
                timeout: Some(remaining),
                cancel: run_cancel,
                output: None,
                keep_session: research.agent_id.is_some(),
                max_turns: job.spec.options.max_turns,
                max_budget_usd: job.spec.options.max_budget_usd.map(|usd| usd.0),
                gateway_env,
            },
        )
        .await;
    let sandbox_healthy = !matches!(&output, Err(e) if e.class == ErrorClass::SandboxLost);
    exec.pool.give_back(lease, sandbox_healthy).await;
    let spend = match (&exec.gateway, pass) {
        (Some(gateway), Some(pass)) => Some(gateway.end_attempt(pass).await),
        _ => None,
    };
    if let Some(spend) = &spend
        && let Some(err) = spend.error(output.as_ref().err().cloned())
    {
        return Err(err);
    }
    let output = output?;
    let mut result = json!({
        "answer": output.answer,
        "agent": research.agent,
        "agent_id": agent_id,
        "sandbox_id": sandbox_id,
        "exit_code": output.exit_code,
        "metadata": output.metadata,
        "truncated": output.truncated,
    });
    if let Some(spend) = &spend {
        spend.add_to(&mut result, &output.metadata);
    }
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
        result = lifecycle(op, &exec) => {
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

async fn lifecycle(op: &LifecycleJob, exec: &Executor) -> Result<JobOutput, JobError> {
    let pool = &exec.pool;
    let result = match op {
        LifecycleJob::Launch { agent, persistent } => {
            let info = pool.launch(agent, *persistent).await?;
            json!({"agent": info})
        }
        LifecycleJob::Pause { agent_id } => json!({"agent": pool.pause(agent_id).await?}),
        LifecycleJob::Resume { agent_id } => json!({"agent": pool.resume(agent_id).await?}),
        LifecycleJob::Terminate { agent_id } => {
            pool.terminate(agent_id).await?;
            json!({"terminated": agent_id})
        }
        LifecycleJob::Scale { agent, size } => {
            json!({"agent": agent, "size": pool.scale(agent, *size as usize).await?})
        }
        LifecycleJob::Refresh { agent } => {
            // Fresh agents get the new code: drop the idle ones; busy ones are
            // replaced as they come back.
            let before = pool
                .agents()
                .into_iter()
                .filter(|a| &a.profile == agent)
                .count();
            pool.scale(agent, 0).await?;
            json!({"agent": agent, "replaced": before})
        }
        LifecycleJob::HealthCheck => json!({"agents": pool.agents(), "stats": pool.stats()}),
    };
    Ok(result)
}
