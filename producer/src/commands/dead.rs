//! `fleet dead list|show|retry|purge`: the dead-letter queues of both queues.
//!
//! `retry` and `purge` with IDs check every ID first (malformed or unknown: nothing is
//! done, exit 2); IDs that are not dead-lettered are reported and make the exit 1.
//! With `--all` they work through each queue in chunks, at most as many jobs as were
//! dead when they started (so a job that dies again meanwhile is not looped on).

use std::collections::BTreeSet;

use anyhow::Context as _;
use fleet_shared::job::{JobId, QueueKind};
use fleet_shared::queue::{QueueError, RedisQueue};
use fleet_shared::results::JobStatus;
use fleet_shared::time::now_ms;
use serde_json::json;

use crate::cli::{DeadCommand, Selection};
use crate::context::{Ctx, Queues, parse_id, unknown_job};
use crate::exit::Fail;
use crate::exit::{FAILED, SUCCESS};
use crate::output::{DeadRow, emit_json, emit_text, record_json, render_dead_list, render_detail};

/// Jobs per retry/purge script call with `--all`.
const CHUNK: usize = 500;

pub async fn dead(ctx: &Ctx, command: DeadCommand) -> anyhow::Result<u8> {
    match command {
        DeadCommand::List { limit } => list(ctx, limit as usize).await,
        DeadCommand::Show(args) => show(ctx, &args.id).await,
        DeadCommand::Retry(sel) => act(ctx, sel, Action::Retry).await,
        DeadCommand::Purge(sel) => act(ctx, sel, Action::Purge).await,
    }
}

async fn list(ctx: &Ctx, limit: usize) -> anyhow::Result<u8> {
    let queues = ctx.queues().await?;
    let mut found = Vec::new();
    let mut total = 0;
    for kind in QueueKind::ALL {
        let q = queues.get(kind);
        total += q.dead_count().await.context("counting dead jobs")?;
        for (id, at) in q.dead_list(0, limit).await.context("listing dead jobs")? {
            found.push((at, kind, id));
        }
    }
    found.sort_by(|a, b| (a.0, &a.2).cmp(&(b.0, &b.2)));
    found.truncate(limit);
    let mut rows = Vec::with_capacity(found.len());
    for (at, kind, id) in found {
        let record = queues
            .get(kind)
            .job_record(&id)
            .await
            .with_context(|| format!("reading job {id}"))?;
        rows.push(DeadRow::new(id, kind, at, record.as_ref()));
    }
    if ctx.json {
        emit_json(&json!({
            "total": total,
            "jobs": rows.iter().map(DeadRow::to_json).collect::<Vec<_>>(),
        }))?;
    } else {
        emit_text(&render_dead_list(&rows, total))?;
    }
    Ok(SUCCESS)
}

async fn show(ctx: &Ctx, raw_id: &str) -> anyhow::Result<u8> {
    let id = parse_id(raw_id)?;
    let (kind, record) = ctx.queues().await?.find(&id).await?;
    if record.status != JobStatus::Dead {
        eprintln!(
            "note: job {id} is not dead-lettered; it is {}",
            record.status
        );
    }
    if ctx.json {
        emit_json(&record_json(kind, &record))?;
    } else {
        emit_text(&render_detail(kind, &record, now_ms()))?;
    }
    Ok(SUCCESS)
}

/// What to do with dead letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Retry,
    Purge,
}

impl Action {
    /// The past tense, which is also the count's name in the JSON answer.
    pub fn done(self) -> &'static str {
        match self {
            Action::Retry => "requeued",
            Action::Purge => "purged",
        }
    }

    async fn apply(self, q: &RedisQueue, ids: &[String], max: usize) -> Result<u64, QueueError> {
        match self {
            Action::Retry => q.retry_dead(ids, max).await,
            Action::Purge => q.purge_dead(ids, max).await,
        }
    }
}

/// What a retry or purge did: how many jobs, and the IDs that were not dead letters
/// (left alone).
#[derive(Debug, Default)]
pub struct DeadOutcome {
    pub done: u64,
    pub not_dead: Vec<(String, JobStatus)>,
}

impl DeadOutcome {
    /// `{"requeued" | "purged": N, "not_dead": [{id, status}]}`, as `fleet --json dead
    /// retry|purge` prints it and the HTTP API answers.
    pub fn to_json(&self, action: Action) -> serde_json::Value {
        json!({
            action.done(): self.done,
            "not_dead": self.not_dead.iter().map(|(id, s)| json!({"id": id, "status": s})).collect::<Vec<_>>(),
        })
    }
}

/// Retry or purge these jobs. Every ID is looked up first: an unknown one stops it
/// before anything is done (`Err(id)`); one that is not dead is left alone and named.
pub async fn act_on_ids(
    queues: &Queues,
    ids: &[JobId],
    action: Action,
) -> anyhow::Result<Result<DeadOutcome, JobId>> {
    let mut by_queue: [(QueueKind, Vec<String>); 2] = [
        (QueueKind::Research, Vec::new()),
        (QueueKind::Lifecycle, Vec::new()),
    ];
    let mut outcome = DeadOutcome::default();
    for id in ids {
        let Some((kind, record)) = queues.lookup(id).await? else {
            return Ok(Err(*id));
        };
        if record.status != JobStatus::Dead {
            outcome.not_dead.push((id.to_string(), record.status));
            continue;
        }
        if let Some((_, list)) = by_queue.iter_mut().find(|(k, _)| *k == kind) {
            list.push(id.to_string());
        }
    }
    for (kind, list) in &by_queue {
        if !list.is_empty() {
            outcome.done += action
                .apply(queues.get(*kind), list, list.len())
                .await
                .with_context(|| format!("{} dead jobs", action.done()))?;
        }
    }
    Ok(Ok(outcome))
}

/// Retry or purge every dead job of these queues, in chunks, at most as many as were
/// dead when it started (so a job that dies again meanwhile is not looped on).
pub async fn act_on_all(
    queues: &Queues,
    kinds: &[QueueKind],
    action: Action,
) -> anyhow::Result<u64> {
    let mut done = 0;
    for kind in kinds {
        let q = queues.get(*kind);
        let before = q.dead_count().await.context("counting dead jobs")?;
        let mut n = 0;
        while n < before {
            let step = action
                .apply(q, &[], CHUNK.min((before - n) as usize))
                .await
                .with_context(|| format!("{} dead jobs", action.done()))?;
            if step == 0 {
                break;
            }
            n += step;
        }
        done += n;
    }
    Ok(done)
}

async fn act(ctx: &Ctx, sel: Selection, action: Action) -> anyhow::Result<u8> {
    let ids: Vec<_> = sel
        .ids
        .iter()
        .map(|raw| parse_id(raw))
        .collect::<Result<BTreeSet<_>, _>>()?
        .into_iter()
        .collect();
    let queues = ctx.queues().await?;
    let outcome = if sel.all {
        DeadOutcome {
            done: act_on_all(queues, &QueueKind::ALL, action).await?,
            not_dead: Vec::new(),
        }
    } else {
        act_on_ids(queues, &ids, action)
            .await?
            .map_err(|id| Fail::usage(unknown_job(&id)))?
    };
    let done = outcome.done;
    if ctx.json {
        emit_json(&outcome.to_json(action))?;
    } else {
        emit_text(&format!(
            "{} {done} dead job{}",
            action.done(),
            if done == 1 { "" } else { "s" }
        ))?;
    }
    for (id, status) in &outcome.not_dead {
        eprintln!(
            "job {id} is not dead-lettered (it is {status}); not {}",
            action.done()
        );
    }
    Ok(if outcome.not_dead.is_empty() {
        SUCCESS
    } else {
        FAILED
    })
}
