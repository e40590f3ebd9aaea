//! `fleet agents launch|pause|resume|terminate|list` and `fleet pool scale`: each
//! enqueues one `LifecycleJob` on the lifecycle queue, where `fleet-worker` runs it,
//! and prints its job ID (`--wait`: waits and prints how it ended).
//!
//! `agents list` reads the fleet's agent registry in Redis directly: every worker's
//! agents, as they are now.

use anyhow::Context as _;
use fleet_shared::job::{JobSpec, LifecycleJob, QueueKind};
use fleet_shared::pool::{AgentRecord, Registry};
use serde_json::json;

use crate::cli::{AgentIdArgs, AgentsCommand, PoolCommand};
use crate::commands::inspect::announce_or_wait;
use crate::context::Ctx;
use crate::exit::{Fail, SUCCESS};
use crate::output::{describe_lifecycle, emit_json, emit_text};

/// The lifecycle job a command asks for (`default_agent` where no profile is named).
pub fn lifecycle_job(command: &AgentsCommand, default_agent: &str) -> Option<LifecycleJob> {
    let agent_id = |a: &AgentIdArgs| a.agent_id.trim().to_string();
    Some(match command {
        AgentsCommand::Launch {
            agent, persistent, ..
        } => LifecycleJob::Launch {
            agent: agent.clone().unwrap_or_else(|| default_agent.to_string()),
            persistent: *persistent,
        },
        AgentsCommand::Pause(a) => LifecycleJob::Pause {
            agent_id: agent_id(a),
        },
        AgentsCommand::Resume(a) => LifecycleJob::Resume {
            agent_id: agent_id(a),
        },
        AgentsCommand::Terminate(a) => LifecycleJob::Terminate {
            agent_id: agent_id(a),
        },
        AgentsCommand::List => return None,
    })
}

/// `fleet agents list`: the registry's records, oldest first.
async fn list(ctx: &Ctx) -> anyhow::Result<u8> {
    let registry = Registry::open(&ctx.settings.redis)
        .await
        .context("connecting to Redis for the agent registry")?;
    let agents = registry
        .list(None)
        .await
        .context("reading the agent registry")?;
    if ctx.json {
        emit_json(&json!({ "agents": agents }))?;
    } else {
        emit_text(&agents_table(&agents))?;
    }
    Ok(SUCCESS)
}

/// One line per agent, aligned; "no agents" when there are none.
pub fn agents_table(agents: &[AgentRecord]) -> String {
    if agents.is_empty() {
        return "no agents".to_string();
    }
    let rows: Vec<[String; 8]> = agents
        .iter()
        .map(|a| {
            let state = serde_json::to_value(a.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let kind = if a.persistent {
                "persistent"
            } else if a.ephemeral {
                "ephemeral"
            } else {
                "pooled"
            };
            [
                a.agent_id.clone(),
                a.profile.clone(),
                state,
                kind.to_string(),
                a.jobs_served.to_string(),
                a.sandbox_id.clone(),
                match a.model_access.as_str() {
                    "" => "-".to_string(),
                    "direct" => "direct (keys in sandbox)".to_string(),
                    other => other.to_string(),
                },
                if a.holder.is_empty() {
                    "-".to_string()
                } else {
                    format!("{} ({})", a.holder, a.worker)
                },
            ]
        })
        .collect();
    let header = [
        "AGENT", "PROFILE", "STATE", "KIND", "JOBS", "SANDBOX", "MODELS", "HELD BY",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = vec![line(header.to_vec())];
    for r in &rows {
        out.push(line(r.iter().map(String::as_str).collect()));
    }
    out.join("\n")
}

pub async fn agents(ctx: &Ctx, command: AgentsCommand) -> anyhow::Result<u8> {
    let wait = match &command {
        AgentsCommand::Launch { wait, .. } => wait.wait,
        AgentsCommand::Pause(a) | AgentsCommand::Resume(a) | AgentsCommand::Terminate(a) => {
            a.wait.wait
        }
        AgentsCommand::List => false,
    };
    match lifecycle_job(&command, &ctx.settings.default_agent) {
        Some(job) => enqueue(ctx, job, wait).await,
        None => list(ctx).await,
    }
}

pub async fn pool(ctx: &Ctx, command: PoolCommand) -> anyhow::Result<u8> {
    let PoolCommand::Scale { size, agent, wait } = command;
    let job = LifecycleJob::Scale {
        agent: ctx.agent(agent.as_deref()),
        size,
    };
    enqueue(ctx, job, wait.wait).await
}

async fn enqueue(ctx: &Ctx, job: LifecycleJob, wait: bool) -> anyhow::Result<u8> {
    let (id, operation) = enqueue_lifecycle(ctx, job).await?;
    let queue = &ctx.queues().await?.lifecycle;
    let fields = json!({"queue": "lifecycle", "operation": operation});
    announce_or_wait(ctx, queue, QueueKind::Lifecycle, id, wait, fields).await
}

/// Check a lifecycle job as a submitted job is checked (an empty agent ID, an
/// unknown profile, a size past its bound: usage errors, nothing written) and put it
/// on the lifecycle queue; its ID and the operation in words. Shared by the
/// `agents` and `pool` commands and the HTTP API.
pub async fn enqueue_lifecycle(
    ctx: &Ctx,
    job: LifecycleJob,
) -> anyhow::Result<(fleet_shared::job::JobId, String)> {
    let (operation, spec) = lifecycle_spec(ctx, job)?;
    let queue = &ctx.queues().await?.lifecycle;
    let (id, _) = queue
        .enqueue(spec)
        .await
        .with_context(|| format!("submitting `{operation}`"))?;
    Ok((id, operation))
}

/// The checked job spec of a lifecycle job, and the operation in words.
pub fn lifecycle_spec(ctx: &Ctx, job: LifecycleJob) -> Result<(String, JobSpec), Fail> {
    if let LifecycleJob::Pause { agent_id }
    | LifecycleJob::Resume { agent_id }
    | LifecycleJob::Terminate { agent_id } = &job
        && agent_id.trim().is_empty()
    {
        return Err(Fail::usage("the agent ID is empty"));
    }
    let operation = describe_lifecycle(&job);
    let spec = JobSpec::lifecycle(job);
    spec.validate(&ctx.settings.limits())
        .map_err(|e| Fail::usage(format!("invalid job: {e}")))?;
    Ok((operation, spec))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    fn agents_command(args: &[&str]) -> AgentsCommand {
        let cli = Cli::try_parse_from(["fleet", "agents"].iter().chain(args)).unwrap();
        let Command::Agents { command } = cli.command else {
            panic!()
        };
        command
    }

    #[test]
    fn commands_map_to_lifecycle_jobs() {
        assert_eq!(
            lifecycle_job(&agents_command(&["launch"]), "demo"),
            Some(LifecycleJob::Launch {
                agent: "demo".into(),
                persistent: false
            })
        );
        assert_eq!(
            lifecycle_job(&agents_command(&["terminate", " a-1 "]), "demo"),
            Some(LifecycleJob::Terminate {
                agent_id: "a-1".into()
            })
        );
        assert_eq!(lifecycle_job(&agents_command(&["list"]), "demo"), None);
    }

    #[test]
    fn an_empty_fleet_says_so() {
        assert_eq!(agents_table(&[]), "no agents");
    }
}
