//! `fleet watch ID` (and `fleet submit --follow`): print a job's live events as they
//! come, until the job has ended, and exit with its ending (0 succeeded, 1 not).
//!
//! Lines go to stdout as the agent wrote them (stderr lines, agent events and the
//! attempts' starts and ends marked); `--json` prints each event as one JSON line
//! (what `GET /v1/jobs/{id}/events` sends as SSE `data`) and a last line
//! `{"kind": "end", "status": …}`. The follow blocks in `XREAD BLOCK` and learns of the
//! end from the queue's `done` channel (`fleet_shared::events::reader`).

use std::time::Duration;

use anyhow::Context as _;
use fleet_shared::events::reader::{Follow, Step, done_signal};
use fleet_shared::events::{Event, is_entry_id};
use fleet_shared::job::JobId;
use futures::StreamExt as _;
use serde_json::{Value, json};

use crate::cli::WatchArgs;
use crate::commands::inspect::ending;
use crate::context::{Ctx, parse_id, unknown_job};
use crate::exit::{FAILED, Fail};
use crate::output::{emit_text, fmt_time};

pub async fn watch(ctx: &Ctx, args: WatchArgs) -> anyhow::Result<u8> {
    let id = parse_id(&args.id)?;
    if let Some(after) = &args.after
        && !is_entry_id(after)
    {
        return Err(Fail::usage(format!(
            "--after: not an event ID (expected <milliseconds>-<sequence>, as `--json` prints): {after:?}"
        ))
        .into());
    }
    follow(ctx, id, args.after).await
}

/// Follow job `id` after event `after` (none: from its first event) to its end.
pub async fn follow(ctx: &Ctx, id: JobId, after: Option<String>) -> anyhow::Result<u8> {
    let queues = ctx.queues().await?;
    let key = id.to_string();
    let (kind, _) = queues.find(&id).await?;
    let queue = queues.get(kind);
    // Subscribed before `Follow::start` reads the status: an end between the two is
    // not missed.
    let mut done = done_signal(queue, &key).await;
    let block = Duration::from_secs(ctx.settings.events.keepalive_secs);
    let mut follow = Follow::start(queue.clone(), &key, after, block)
        .await
        .with_context(|| format!("following job {key}"))?;
    loop {
        let changed = async {
            match done.as_mut() {
                Some(done) => {
                    if done.next().await.is_none() {
                        // The subscription broke: the status read at each block
                        // timeout still finds the end.
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        let step = follow
            .next(changed)
            .await
            .with_context(|| format!("following job {key}"))?;
        match step {
            Step::Events(events) => {
                for event in &events {
                    if ctx.json {
                        emit_text(&serde_json::to_string(event)?)?;
                    } else {
                        emit_text(&render(event))?;
                    }
                }
            }
            Step::Idle => {}
            Step::End(status) => {
                let Some(status) = status else {
                    return Err(Fail::new(
                        FAILED,
                        format!("{} (its record is gone)", unknown_job(&id)),
                    )
                    .into());
                };
                if ctx.json {
                    emit_text(&json!({"kind": "end", "status": status}).to_string())?;
                } else {
                    eprintln!("job {key} ended {status}");
                }
                return Ok(ending(status));
            }
        }
    }
}

/// One event as a line for people (pure).
pub fn render(event: &Event) -> String {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let attempt = event.attempt;
    let at = event
        .id
        .split('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(fmt_time)
        .unwrap_or_default();
    match event.kind.as_str() {
        "stdout" => text(&event.data),
        "stderr" => format!("[stderr] {}", text(&event.data)),
        "agent" => format!("[agent] {}", event.data),
        "attempt_started" => format!(
            "[attempt {attempt}] started at {at} on worker {} (agent {})",
            text(&event.data["worker"]),
            text(&event.data["agent"]),
        ),
        "attempt_ended" => match event.data["status"].as_str() {
            Some("succeeded") => format!("[attempt {attempt}] succeeded at {at}"),
            _ => format!(
                "[attempt {attempt}] failed at {at} ({}): {}",
                text(&event.data["class"]),
                text(&event.data["error"]),
            ),
        },
        "dropped" => format!(
            "[{} lines dropped: Redis was slower than the agent]",
            text(&event.data["count"])
        ),
        other => format!("[{other}] {}", event.data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: &str, data: Value) -> Event {
        Event {
            id: "1700000000000-0".into(),
            attempt: 2,
            kind: kind.into(),
            data,
        }
    }

    #[test]
    fn events_read_as_lines() {
        assert_eq!(render(&event("stdout", json!("hello"))), "hello");
        assert_eq!(render(&event("stderr", json!("oops"))), "[stderr] oops");
        assert_eq!(
            render(&event("agent", json!({"type": "result"}))),
            r#"[agent] {"type":"result"}"#
        );
        assert_eq!(
            render(&event(
                "attempt_ended",
                json!({"status": "failed", "class": "transient", "error": "exit 75"})
            )),
            "[attempt 2] failed at 2023-11-14T22:13:20.000Z (transient): exit 75"
        );
        assert_eq!(
            render(&event("dropped", json!({"count": 3}))),
            "[3 lines dropped: Redis was slower than the agent]"
        );
    }
}
