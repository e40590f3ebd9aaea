//! `fleet status` and `fleet result`: find a job (research queue, then lifecycle) and
//! show where it is, or its answer. `report_final` is shared with `submit --wait` and
//! the lifecycle commands' `--wait`.

use std::time::Duration;

use anyhow::Context as _;
use fleet_shared::job::QueueKind;
use fleet_shared::results::store::{StoredAnswer, escape_json_chunk, json_with_answer};
use fleet_shared::results::{JobRecord, JobStatus};
use fleet_shared::time::now_ms;

use crate::cli::ResultArgs;
use crate::context::{Ctx, parse_id};
use crate::exit::{FAILED, NOT_ENDED, SUCCESS};
use crate::output::{answer_text, emit_json, emit_text, error_text, record_json, render_status};

pub async fn status(ctx: &Ctx, raw_id: &str) -> anyhow::Result<u8> {
    let id = parse_id(raw_id)?;
    let (kind, record) = ctx.queues().await?.find(&id).await?;
    if ctx.json {
        emit_json(&record_json(kind, &record))?;
    } else {
        emit_text(&render_status(kind, &record, now_ms()))?;
    }
    Ok(SUCCESS)
}

pub async fn result(ctx: &Ctx, args: ResultArgs) -> anyhow::Result<u8> {
    let id = parse_id(&args.id)?;
    let queues = ctx.queues().await?;
    let (kind, record) = queues.find(&id).await?;
    let wait = args.wait || args.timeout.is_some();
    let key = id.to_string();
    let record = if wait && !record.status.is_final() {
        queues
            .get(kind)
            .wait_for_final(&key, args.timeout.map(Duration::from_secs))
            .await
            .with_context(|| format!("waiting for job {key}"))?
    } else {
        Some(record)
    };
    if let Some(r) = &record
        && r.status == JobStatus::Succeeded
        && let Some(stored) = r.result.as_ref().and_then(StoredAnswer::of)
    {
        stream_answer(ctx, queues.get(kind), kind, r, stored).await?;
        return Ok(SUCCESS);
    }
    report_final(ctx, kind, &key, record)
}

/// Print a succeeded job's answer that is stored in chunks (results/store.rs) as it is
/// read, one chunk in memory at a time; with `--json`, the record with the answer as
/// its last field. A reader that closes the pipe early ends it quietly.
async fn stream_answer(
    ctx: &Ctx,
    queue: &fleet_shared::queue::RedisQueue,
    kind: QueueKind,
    record: &JobRecord,
    stored: StoredAnswer,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let write = |bytes: &[u8]| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()
    };
    let json = ctx
        .json
        .then(|| json_with_answer(&record_json(kind, record), "answer"));
    let mut chunks = std::pin::pin!(queue.answer_chunks(&record.id, stored));
    let mut last = b'\n';
    let written: std::io::Result<()> = async {
        if let Some((head, _)) = &json {
            write(head.as_bytes())?;
        }
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(std::io::Error::other)?;
            if json.is_some() {
                write(escape_json_chunk(&chunk).as_bytes())?;
            } else {
                write(&chunk)?;
                last = chunk.last().copied().unwrap_or(last);
            }
        }
        match &json {
            Some((_, tail)) => write(format!("{tail}\n").as_bytes()),
            None if last != b'\n' => write(b"\n"),
            None => Ok(()),
        }
    }
    .await;
    match written {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::anyhow!(
            "reading the answer of job {}: {e}",
            record.id
        )),
        Ok(()) => Ok(()),
    }
}

/// Print how a job ended and return the exit code: its answer (0); its error (1); or
/// that it has not ended (4). With `--json`, the whole record in every case.
/// After a submit: print the job ID (with `fields` in JSON mode) and return, or,
/// with `wait`, print the ID, wait for the job to end and report how it ended.
pub async fn announce_or_wait(
    ctx: &Ctx,
    queue: &fleet_shared::queue::RedisQueue,
    kind: QueueKind,
    id: fleet_shared::job::JobId,
    wait: bool,
    fields: serde_json::Value,
) -> anyhow::Result<u8> {
    if !wait {
        if ctx.json {
            let mut doc = serde_json::json!({"id": id});
            if let (Some(doc), serde_json::Value::Object(extra)) = (doc.as_object_mut(), fields) {
                doc.extend(extra);
            }
            emit_json(&doc)?;
        } else {
            emit_text(&id.to_string())?;
        }
        return Ok(SUCCESS);
    }
    if !ctx.json {
        emit_text(&id.to_string())?;
    }
    let id = id.to_string();
    let record = queue
        .wait_for_final(&id, None)
        .await
        .with_context(|| format!("waiting for job {id}"))?;
    report_final(ctx, kind, &id, record)
}

/// How a job in this status has ended, as an exit code: with its answer (0), without
/// one (1: dead, cancelled, failed), or not yet (4). The API maps these to 200, 409, 202.
pub fn ending(status: JobStatus) -> u8 {
    match status {
        JobStatus::Succeeded => SUCCESS,
        s if s.is_final() => FAILED,
        _ => NOT_ENDED,
    }
}

pub fn report_final(
    ctx: &Ctx,
    kind: QueueKind,
    id: &str,
    record: Option<JobRecord>,
) -> anyhow::Result<u8> {
    let Some(record) = record else {
        anyhow::bail!("the record of job {id} disappeared while waiting (it expired)");
    };
    let code = ending(record.status);
    if ctx.json {
        emit_json(&record_json(kind, &record))?;
        return Ok(code);
    }
    match code {
        SUCCESS => {
            let answer = record.result.as_ref().map(answer_text).unwrap_or_default();
            emit_text(&answer)?;
        }
        FAILED => eprintln!("job {id} ended {}", error_text(&record)),
        _ => eprintln!(
            "job {id} has not ended: it is {} (attempt {} of {}); `fleet result --wait {id}` waits for it",
            record.status, record.attempts, record.max_attempts
        ),
    }
    Ok(code)
}
