//! `fleet submit`: validate one query at the edge, enqueue it on the research queue,
//! print its job ID; with `--wait`, then wait and print the answer like `fleet result`.

use anyhow::Context as _;
use fleet_shared::job::{JobOptions, JobSpec, QueueKind, Usd};
use serde_json::json;

use crate::cli::SubmitArgs;
use crate::commands::inspect::announce_or_wait;
use crate::context::{Ctx, read_input};
use crate::exit::Fail;

/// The job spec the arguments describe (`query` already read from stdin for `-`).
pub fn spec_from_args(args: &SubmitArgs, query: String, agent: String) -> JobSpec {
    let mut spec = JobSpec::research(query, agent);
    spec.options = JobOptions {
        max_attempts: args.max_attempts,
        attempt_timeout_secs: args.timeout,
        deadline_secs: args.deadline,
        backoff_base_ms: args.backoff_base_ms,
        backoff_cap_ms: args.backoff_cap_ms,
        idempotency_key: args.idempotency_key.clone(),
        batch_id: None,
        metadata: args.meta.iter().cloned().collect(),
        max_turns: args.max_turns,
        max_budget_usd: args.max_budget_usd.map(Usd),
        max_tokens: args.max_tokens,
        cache: args.cache,
    };
    spec
}

/// The query from stdin: UTF-8, without the trailing newline `echo` adds.
pub fn query_from_stdin(bytes: Vec<u8>) -> Result<String, Fail> {
    let mut text = String::from_utf8(bytes)
        .map_err(|_| Fail::usage("the query on stdin is not valid UTF-8"))?;
    while text.ends_with('\n') || text.ends_with('\r') {
        text.pop();
    }
    Ok(text)
}

pub async fn submit(ctx: &Ctx, args: SubmitArgs) -> anyhow::Result<u8> {
    let query = if args.query == "-" {
        query_from_stdin(read_input("-")?)?
    } else {
        args.query.clone()
    };
    let spec = spec_from_args(&args, query, ctx.agent(args.agent.as_deref()));
    spec.validate(&ctx.settings.limits())
        .map_err(|e| Fail::usage(format!("invalid job: {e}")))?;
    let queue = &ctx.queues().await?.research;
    let (id, existing) = queue
        .enqueue(spec.clone())
        .await
        .context("submitting the job")?;
    fleet_shared::pool::expect_submitted(&ctx.settings.redis, &[(id, &spec)])
        .await
        .context("queueing the job for its agent")?;
    if existing {
        eprintln!("note: the idempotency key was used before; this is that job");
    }
    if args.follow {
        if ctx.json {
            let announce = json!({"id": id, "existing": existing, "queue": "research"});
            crate::output::emit_text(&announce.to_string())?;
        } else {
            crate::output::emit_text(&id.to_string())?;
        }
        return crate::commands::watch::follow(ctx, id, None).await;
    }
    let fields = json!({"existing": existing, "queue": "research"});
    announce_or_wait(ctx, queue, QueueKind::Research, id, args.wait, fields).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn args_become_options() {
        let cli = Cli::try_parse_from([
            "fleet",
            "submit",
            "q",
            "--timeout",
            "30",
            "--meta",
            "a=1",
            "--max-attempts",
            "2",
        ])
        .unwrap();
        let Command::Submit(args) = cli.command else {
            panic!()
        };
        let spec = spec_from_args(&args, "q".into(), "demo".into());
        assert_eq!(spec.options.attempt_timeout_secs, Some(30));
        assert_eq!(spec.options.max_attempts, Some(2));
        assert_eq!(
            spec.options.metadata.get("a").map(String::as_str),
            Some("1")
        );
        assert_eq!(spec.options.deadline_secs, None);
        assert_eq!(spec.queue(), QueueKind::Research);
    }

    #[test]
    fn stdin_query_loses_its_newline_only() {
        assert_eq!(
            query_from_stdin(b"  what?\r\n".to_vec()).unwrap(),
            "  what?"
        );
        assert_eq!(query_from_stdin(b"a\nb\n".to_vec()).unwrap(), "a\nb");
        assert!(query_from_stdin(vec![0xff]).is_err());
    }
}
