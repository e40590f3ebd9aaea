//! The worker's GitHub work: the `publish` lifecycle job, and the notifier that
//! comments a research job's answer on the issue it came from.
//!
//! **Where the notification runs.** A research job made from an issue carries
//! `notify = "github-issue"` in its metadata (see `fleet_shared::github::webhook`).
//! Every worker with GitHub credentials runs one notifier task: it follows the
//! research queue's `done` channel (job IDs as they reach an end state), reads the
//! record, and for such a job *claims* it (`SET <prefix>:{research}:notified:<id> NX`,
//! expiring with the results) before posting, so with many workers exactly one
//! comments. A post that fails is tried again a few times, then the claim is dropped
//! and the failure logged. A job that ends while no worker is subscribed (every
//! worker down at that moment) gets no comment: known limit, see ARCHITECTURE.md.

use std::sync::Arc;
use std::time::Duration;

use fleet_shared::error::JobError;
use fleet_shared::github::publish::{publish_report, render_report};
use fleet_shared::github::{GithubClient, RepoName, notify};
use fleet_shared::job::JobId;
use fleet_shared::queue::RedisQueue;
use fleet_shared::queue::apalis_backend::JobOutput;
use fleet_shared::settings::GithubSettings;
use futures::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Attempts to post one comment (GitHub rate limits are waited out inside each).
const COMMENT_ATTEMPTS: u32 = 3;

/// What the GitHub jobs need: the client (when credentials are configured) and `[github]`.
pub struct GithubWork {
    pub client: Option<GithubClient>,
    pub settings: GithubSettings,
}

impl GithubWork {
    fn client(&self) -> Result<&GithubClient, JobError> {
        self.client.as_ref().ok_or_else(|| {
            JobError::permanent(format!(
                "no GitHub credentials on this worker: set {} (github.token_env) or a GitHub App (github.app_id)",
                self.settings.token_env
            ))
        })
    }
}

/// The `publish` lifecycle job: the batch's records become a report on a branch and
/// a pull request (updated when published again).
pub async fn publish(
    work: &GithubWork,
    research: &RedisQueue,
    repo: &str,
    batch_id: &str,
    job_ids: &[JobId],
) -> Result<JobOutput, JobError> {
    let client = work.client()?;
    let repo = RepoName::parse(repo).map_err(JobError::permanent)?;
    let mut records = Vec::with_capacity(job_ids.len());
    let mut missing = 0usize;
    for id in job_ids {
        match research.job_record(&id.to_string()).await {
            Ok(Some(r)) if r.status.is_final() => records.push(r),
            Ok(Some(r)) => {
                return Err(JobError::transient(format!(
                    "job {id} of batch {batch_id} is still {}; publishing once every job ended",
                    r.status
                ))
                .with_retry_after(Some(Duration::from_secs(10))));
            }
            Ok(None) => missing += 1,
            Err(e) => return Err(JobError::transient(format!("reading job {id}: {e}"))),
        }
    }
    let (markdown, json_doc) = render_report(batch_id, &records);
    let published = publish_report(
        client,
        &repo,
        batch_id,
        &work.settings.report_dir,
        &markdown,
        &json_doc,
    )
    .await?;
    tracing::info!(%repo, batch_id, pull_request = published.pull_request, opened = published.opened, "batch report published");
    Ok(json!({"published": published, "jobs": records.len(), "expired": missing}))
}

/// Follow the research queue's job endings and comment on the issues jobs came from,
/// until `stop`.
pub fn spawn_notifier(
    client: GithubClient,
    research: RedisQueue,
    claim_ttl: Duration,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let client = Arc::new(client);
    tokio::spawn(async move {
        let mut wait = Duration::from_millis(200);
        while !stop.is_cancelled() {
            let subscribed = async {
                let mut pubsub =
                    fleet_shared::connection::pubsub(research.redis_settings()).await?;
                // Every shard's channel: a job ends on its own (queue/shards.rs).
                for channel in research.done_channels() {
                    pubsub.subscribe(&channel).await?;
                }
                anyhow::Ok(pubsub)
            }
            .await;
            let mut pubsub = match subscribed {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "GitHub notifier cannot subscribe to job endings; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            wait = Duration::from_millis(200);
            tracing::debug!("GitHub notifier following job endings");
            let mut messages = pubsub.on_message();
            loop {
                let message = tokio::select! {
                    _ = stop.cancelled() => return,
                    m = messages.next() => m,
                };
                let Some(message) = message else { break };
                let Ok(id) = message.get_payload::<String>() else {
                    continue;
                };
                let (client, research) = (client.clone(), research.clone());
                tokio::spawn(async move {
                    notify_job(&client, &research, &id, claim_ttl).await;
                });
            }
        }
    })
}

/// Comment on the job's issue if it asks for it and no other worker has.
async fn notify_job(client: &GithubClient, research: &RedisQueue, id: &str, claim_ttl: Duration) {
    let record = match research.job_record(id).await {
        Ok(Some(r)) if r.status.is_final() => r,
        _ => return,
    };
    let Some((repo, issue)) = notify::target(&record) else {
        return;
    };
    let Some(body) = notify::comment_body(&record) else {
        return;
    };
    let claim = format!("{}notified:{id}", research.keys().prefix);
    let mut redis = research.connection();
    let claimed: Result<Option<String>, _> = redis::cmd("SET")
        .arg(&claim)
        .arg("1")
        .arg("NX")
        .arg("EX")
        .arg(claim_ttl.as_secs().max(1))
        .query_async(&mut redis)
        .await;
    match claimed {
        Ok(Some(_)) => {}
        Ok(None) => return, // another worker comments
        Err(e) => {
            tracing::warn!(job_id = %id, error = %e, "cannot claim the GitHub comment of a job; skipping it");
            return;
        }
    }
    for attempt in 1..=COMMENT_ATTEMPTS {
        match notify::post_comment(client, &repo, issue, &body).await {
            Ok(comment) => {
                tracing::info!(job_id = %id, %repo, issue, comment, status = %record.status, "commented on the issue");
                return;
            }
            Err(e) if attempt < COMMENT_ATTEMPTS && e.status.is_none_or(|s| s >= 500) => {
                tracing::warn!(job_id = %id, %repo, issue, error = %e, "comment failed; trying again");
                tokio::time::sleep(Duration::from_secs(2u64 << attempt)).await;
            }
            Err(e) => {
                tracing::error!(job_id = %id, %repo, issue, error = %e, "could not comment on the issue");
                let _: Result<i64, _> = redis::cmd("DEL").arg(&claim).query_async(&mut redis).await;
                return;
            }
        }
    }
}
