//! `fleet github hook create REPO` and the publishing step of
//! `fleet batch FILE --publish-pr REPO`.
//!
//! `hook create` calls GitHub from the CLI (`POST /repos/{owner}/{repo}/hooks`) with
//! the credentials of `[github]`; publishing is a `publish` lifecycle job that a
//! worker runs (it holds the GitHub credentials that comment and publish), waited for
//! here.

use anyhow::Context as _;
use fleet_shared::github::{RepoName, client_from_settings, segment};
use fleet_shared::job::{JobSpec, LifecycleJob, QueueKind};
use serde_json::json;

use crate::cli::{GithubCommand, HookCommand};
use crate::commands::batch::Submitted;
use crate::commands::inspect::announce_or_wait;
use crate::context::Ctx;
use crate::exit::{FAILED, Fail, SUCCESS};
use crate::output::{emit_json, emit_text};

/// The events the fleet acts on.
pub const HOOK_EVENTS: [&str; 3] = ["push", "issues", "issue_comment"];

pub async fn github(ctx: &Ctx, command: GithubCommand) -> anyhow::Result<u8> {
    let GithubCommand::Hook {
        command: HookCommand::Create { repo, url },
    } = command;
    let g = &ctx.settings.github;
    let repo = RepoName::parse(&repo).map_err(Fail::usage)?;
    let url = url.unwrap_or_else(|| g.webhook_url.clone());
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(Fail::usage(
            "the webhook URL is not set: pass --url https://HOST/webhooks/github or set github.webhook_url",
        )
        .into());
    }
    let secret = std::env::var(&g.webhook_secret_env).unwrap_or_default();
    if secret.len() < 16 {
        return Err(Fail::usage(format!(
            "set {} (github.webhook_secret_env) to a random secret of at least 16 characters; \
             `fleet serve` checks deliveries with it",
            g.webhook_secret_env
        ))
        .into());
    }
    let client = client_from_settings(g)
        .map_err(Fail::usage)?
        .ok_or_else(|| {
            Fail::usage(format!(
                "no GitHub credentials: set {} (github.token_env) or a GitHub App (github.app_id)",
                g.token_env
            ))
        })?;
    let body = json!({
        "name": "web",
        "active": true,
        "events": HOOK_EVENTS,
        "config": {"url": url, "content_type": "json", "secret": secret, "insecure_ssl": "0"},
    });
    let path = format!(
        "/repos/{}/{}/hooks",
        segment(&repo.owner),
        segment(&repo.name)
    );
    let hook = client
        .post(&path, &body)
        .await
        .map_err(|e| Fail::new(FAILED, format!("creating the webhook on {repo}: {e}")))?;
    let id = hook["id"].as_u64().unwrap_or(0);
    if ctx.json {
        emit_json(
            &json!({"repo": repo.to_string(), "hook_id": id, "url": url, "events": HOOK_EVENTS}),
        )?;
    } else {
        emit_text(&format!(
            "webhook {id} created on {repo}: {} → {url}",
            HOOK_EVENTS.join(", ")
        ))?;
    }
    Ok(SUCCESS)
}

/// Enqueue the `publish` job of a finished batch and wait for it; prints how it ended.
pub async fn publish_batch(ctx: &Ctx, repo: &str, batch: &Submitted) -> anyhow::Result<u8> {
    let spec = JobSpec::lifecycle(LifecycleJob::Publish {
        repo: repo.to_string(),
        batch_id: batch.batch_id.clone(),
        job_ids: batch.ids.clone(),
    });
    spec.validate(&ctx.settings.limits())
        .map_err(|e| Fail::usage(format!("--publish-pr: {e}")))?;
    let queue = &ctx.queues().await?.lifecycle;
    let (id, _) = queue
        .enqueue(spec)
        .await
        .context("submitting the publish job")?;
    if !ctx.json {
        eprintln!("publishing batch {} to {repo} (job {id})", batch.batch_id);
    }
    let fields = json!({"queue": "lifecycle", "operation": "publish", "batch_id": batch.batch_id});
    announce_or_wait(ctx, queue, QueueKind::Lifecycle, id, true, fields).await
}
