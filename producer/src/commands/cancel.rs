//! `fleet cancel ID`: a job that has not started ends `cancelled` at once; a running
//! one is flagged and its worker stops it; an ended one is left as it is.

use anyhow::Context as _;
use fleet_shared::job::{JobId, QueueKind};
use fleet_shared::queue::CancelOutcome;
use fleet_shared::results::JobStatus;
use serde_json::json;

use crate::context::{Ctx, Queues, parse_id, unknown_job};
use crate::exit::{Fail, SUCCESS};
use crate::output::{emit_json, emit_text};

/// What to tell the user, and the outcome's name for `--json`.
pub fn describe(outcome: &CancelOutcome) -> (&'static str, String) {
    match outcome {
        CancelOutcome::Cancelled => ("cancelled", "cancelled".into()),
        CancelOutcome::Cancelling => (
            "cancelling",
            "cancelling (the worker is stopping it)".into(),
        ),
        CancelOutcome::AlreadyEnded(s) => ("already_ended", format!("already ended: {s}")),
        CancelOutcome::NotFound => ("not_found", "no such job".into()),
    }
}

/// Cancel a job wherever it is (shared by `fleet cancel` and `POST /v1/jobs/{id}/cancel`).
/// `None`: no such job (never submitted, or its record expired, even meanwhile).
pub async fn cancel_job(
    queues: &Queues,
    id: &JobId,
) -> anyhow::Result<Option<(QueueKind, CancelOutcome)>> {
    let Some((kind, record)) = queues.lookup(id).await? else {
        return Ok(None);
    };
    // An ended job is left alone. (The cancel script answers an already-cancelled job
    // with "cancelled", which would read as if this call had cancelled it.)
    let outcome = if record.status.is_final() {
        CancelOutcome::AlreadyEnded(record.status.to_string())
    } else {
        queues
            .get(kind)
            .cancel(id)
            .await
            .with_context(|| format!("cancelling job {id}"))?
    };
    Ok((outcome != CancelOutcome::NotFound).then_some((kind, outcome)))
}

/// `fleet cancel --json`'s document (and the API's answer). `status` is the job's status
/// after the call: `cancelled`; `running` while its worker stops it; or the status it
/// had already ended with.
pub fn cancel_json(id: &JobId, kind: QueueKind, outcome: &CancelOutcome) -> serde_json::Value {
    let status = match outcome {
        CancelOutcome::Cancelled => JobStatus::Cancelled.to_string(),
        CancelOutcome::Cancelling => JobStatus::Running.to_string(),
        CancelOutcome::AlreadyEnded(s) => s.clone(),
        // `cancel_job` answers "no such job" before a document is made.
        CancelOutcome::NotFound => "not_found".to_string(),
    };
    json!({"id": id, "queue": kind.as_str(), "outcome": describe(outcome).0, "status": status})
}

pub async fn cancel(ctx: &Ctx, raw_id: &str) -> anyhow::Result<u8> {
    let id = parse_id(raw_id)?;
    let queues = ctx.queues().await?;
    let Some((kind, outcome)) = cancel_job(queues, &id).await? else {
        return Err(Fail::usage(unknown_job(&id)).into());
    };
    if ctx.json {
        emit_json(&cancel_json(&id, kind, &outcome))?;
    } else {
        emit_text(&describe(&outcome).1)?;
    }
    Ok(SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_read_as_specified() {
        assert_eq!(describe(&CancelOutcome::Cancelled).1, "cancelled");
        assert_eq!(
            describe(&CancelOutcome::Cancelling).1,
            "cancelling (the worker is stopping it)"
        );
        let (name, text) = describe(&CancelOutcome::AlreadyEnded("succeeded".into()));
        assert_eq!(
            (name, text.as_str()),
            ("already_ended", "already ended: succeeded")
        );
    }

    #[test]
    fn the_json_document_always_names_the_status() {
        let id: JobId = "01932c7e-8d1c-7b3a-9f1e-2a4b5c6d7e8f".parse().unwrap();
        let status = |o: CancelOutcome| cancel_json(&id, QueueKind::Research, &o)["status"].clone();
        assert_eq!(status(CancelOutcome::Cancelled), "cancelled");
        assert_eq!(status(CancelOutcome::Cancelling), "running");
        assert_eq!(
            status(CancelOutcome::AlreadyEnded("succeeded".into())),
            "succeeded"
        );
    }
}
