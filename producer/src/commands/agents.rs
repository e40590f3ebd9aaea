//! `fleet agents launch|pause|resume|terminate|list` and `fleet pool scale`: each
//! enqueues one `LifecycleJob` on the lifecycle queue, where `fleet-worker` runs it,
//! and prints its job ID (`--wait`: waits and prints how it ended).
//!
//! `agents list` has nothing to read: agents live in each worker's pool, which keeps
//! no registry in Redis. It says so rather than show made-up data.

use anyhow::Context as _;
use fleet_shared::job::{JobSpec, LifecycleJob, QueueKind};
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

pub fn list_note(http_addr: &str) -> String {
    let metrics = if http_addr.is_empty() {
        "its /metrics (worker.http_addr is empty here, so set it to serve them)".to_string()
    } else {
        format!("http://{http_addr}/metrics")
    };
    format!(
        "listing agents is done by `fleet-worker`'s pool, which stores no agent list in Redis; see {metrics}"
    )
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
        None => {
            let note = list_note(&ctx.settings.worker.http_addr);
            if ctx.json {
                emit_json(&json!({"agents": null, "note": note}))?;
            } else {
                emit_text(&note)?;
            }
            Ok(SUCCESS)
        }
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
    if let LifecycleJob::Pause { agent_id }
    | LifecycleJob::Resume { agent_id }
    | LifecycleJob::Terminate { agent_id } = &job
        && agent_id.is_empty()
    {
        return Err(Fail::usage("the agent ID is empty").into());
    }
    let operation = describe_lifecycle(&job);
    let spec = JobSpec::lifecycle(job);
    spec.validate(&ctx.settings.limits())
        .map_err(|e| Fail::usage(format!("invalid job: {e}")))?;
    let queue = &ctx.queues().await?.lifecycle;
    let (id, _) = queue
        .enqueue(spec)
        .await
        .with_context(|| format!("submitting `{operation}`"))?;
    let fields = json!({"queue": "lifecycle", "operation": operation});
    announce_or_wait(ctx, queue, QueueKind::Lifecycle, id, wait, fields).await
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
    fn list_is_honest() {
        let note = list_note("127.0.0.1:9464");
        assert!(
            note.starts_with("listing agents is done by `fleet-worker`'s pool"),
            "{note}"
        );
        assert!(note.ends_with("http://127.0.0.1:9464/metrics"), "{note}");
    }
}
