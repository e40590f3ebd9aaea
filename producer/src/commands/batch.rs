//! `fleet batch FILE`: parse the whole file first (all or nothing; errors name the
//! line), enqueue it under a fresh batch ID, print the batch ID and count. With
//! `--wait`, a progress bar fed by the batch record, then each job's answer or error
//! in file order. `demo` reuses `submit_batch`, `wait_batch` and `report_batch`.

use std::time::Duration;

use anyhow::Context as _;
use fleet_shared::job::JobId;
use fleet_shared::job::JobSpec;
use fleet_shared::job::batch::parse_batch;
use fleet_shared::queue::RedisQueue;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cli::BatchArgs;
use crate::context::{Ctx, read_input};
use crate::exit::{FAILED, Fail, SUCCESS};
use crate::output::{
    BatchItem, batch_summary, emit_json, emit_text, progress_message, render_batch_results,
};

/// How often the progress bar is refreshed from Redis.
const POLL: Duration = Duration::from_millis(250);

/// A batch as submitted.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub batch_id: String,
    /// Each job's ID, in file order (an idempotency key already used gives the earlier job's).
    pub ids: Vec<JobId>,
}

pub async fn batch(ctx: &Ctx, args: BatchArgs) -> anyhow::Result<u8> {
    if let Some(repo) = &args.publish_pr {
        fleet_shared::github::RepoName::parse(repo)
            .map_err(|m| Fail::usage(format!("--publish-pr: {m}")))?;
    }
    let bytes = read_input(&args.file)?;
    let agent = ctx.agent(args.agent.as_deref());
    let specs = parse_batch(&bytes, &agent, &ctx.settings.limits()).map_err(|e| {
        let name = if args.file == "-" {
            "stdin"
        } else {
            &args.file
        };
        Fail::usage(format!(
            "invalid batch ({name}; nothing was submitted): {e}"
        ))
    })?;
    let queue = &ctx.queues().await?.research;
    let submitted = submit_batch(queue, &ctx.settings.redis, specs).await?;
    let wait = args.wait || args.publish_pr.is_some();
    if !wait || !ctx.json {
        if ctx.json {
            // The shape of the HTTP API's `POST /v1/batches` answer.
            emit_json(&json!({
                "batch_id": submitted.batch_id,
                "count": submitted.ids.len(),
                "job_ids": submitted.ids,
            }))?;
        } else {
            emit_text(&format!(
                "batch {} ({} jobs)",
                submitted.batch_id,
                submitted.ids.len()
            ))?;
        }
    }
    if !wait {
        return Ok(SUCCESS);
    }
    wait_batch(queue, &submitted, !args.no_progress, || Ok(())).await?;
    match &args.publish_pr {
        None => report_batch(ctx, queue, &submitted).await,
        Some(repo) => crate::commands::github::publish_batch(ctx, repo, &submitted).await,
    }
}

pub async fn submit_batch(
    queue: &RedisQueue,
    redis: &fleet_shared::settings::RedisSettings,
    specs: Vec<JobSpec>,
) -> anyhow::Result<Submitted> {
    let batch_id = uuid::Uuid::now_v7().to_string();
    let addressed: Vec<(usize, JobSpec)> = specs
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            matches!(&s.payload, fleet_shared::job::JobPayload::Research(r) if r.agent_id.is_some())
        })
        .map(|(i, s)| (i, s.clone()))
        .collect();
    let ids = queue
        .enqueue_many(specs, Some(&batch_id))
        .await
        .context("submitting the batch")?;
    let expected: Vec<_> = addressed
        .iter()
        .filter_map(|(i, spec)| ids.get(*i).map(|id| (*id, spec)))
        .collect();
    fleet_shared::pool::expect_submitted(redis, &expected)
        .await
        .context("queueing the batch's jobs for their agents")?;
    Ok(Submitted { batch_id, ids })
}

fn progress_bar(len: u64, show: bool) -> ProgressBar {
    let target = if show {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(len), target);
    let style = ProgressStyle::with_template("{bar:24} {pos}/{len} ended  {msg} ({elapsed})")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

/// Wait until every job of the batch ended, showing progress (on stderr, when it is a
/// terminal). `check` runs each round and can stop the wait (the demo checks its worker).
pub async fn wait_batch(
    queue: &RedisQueue,
    batch: &Submitted,
    show_progress: bool,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let bar = progress_bar(batch.ids.len() as u64, show_progress);
    let result = async {
        loop {
            check()?;
            let record = queue
                .batch_record(&batch.batch_id)
                .await
                .context("reading the batch record")?;
            if let Some(r) = &record {
                bar.set_message(progress_message(r));
                bar.set_length(r.total);
                bar.set_position(r.finished());
            }
            // The counters cover the jobs this batch created; a job reused through its
            // idempotency key is counted by its own batch, so confirm with the statuses.
            if record.as_ref().is_none_or(|r| r.finished() >= r.total) {
                let statuses = queue
                    .job_statuses(&batch.ids)
                    .await
                    .context("reading job statuses")?;
                if statuses.iter().all(|s| s.is_none_or(|s| s.is_final())) {
                    return anyhow::Ok(());
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }
    .await;
    // The summary printed next says how it ended.
    bar.finish_and_clear();
    result
}

/// Each job's record, in order, read a few at a time.
pub async fn collect_items(queue: &RedisQueue, ids: &[JobId]) -> anyhow::Result<Vec<BatchItem>> {
    futures::stream::iter(ids.iter().map(|id| async move {
        let key = id.to_string();
        let record = queue
            .job_record(&key)
            .await
            .with_context(|| format!("reading job {key}"))?;
        anyhow::Ok(BatchItem::new(key, record.as_ref()))
    }))
    .buffered(16)
    .collect::<Vec<_>>()
    .await
    .into_iter()
    .collect()
}

/// Print each job's answer or error in order; exit 1 unless all succeeded.
pub async fn report_batch(ctx: &Ctx, queue: &RedisQueue, batch: &Submitted) -> anyhow::Result<u8> {
    let items = collect_items(queue, &batch.ids).await?;
    let all_ok = items.iter().all(BatchItem::succeeded);
    if ctx.json {
        emit_json(&json!({
            "batch_id": batch.batch_id,
            "count": items.len(),
            "succeeded": items.iter().filter(|i| i.succeeded()).count(),
            "jobs": items.iter().map(BatchItem::to_json).collect::<Vec<_>>(),
        }))?;
    } else {
        emit_text(&render_batch_results(&items))?;
        eprintln!("{}", batch_summary(&items));
    }
    Ok(if all_ok { SUCCESS } else { FAILED })
}
