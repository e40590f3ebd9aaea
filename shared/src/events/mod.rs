//! Live events: what an attempt prints, as it happens, in a capped Redis Stream per
//! job (`…:{<queue>}:events:<id>`, beside the job's hash, under the queue's hash tag).
//!
//! - [`writer`]: the worker side. One [`writer::AttemptEvents`] per attempt takes the
//!   agent's output chunks (`RunOptions::output`), cuts them into lines, classifies each
//!   (stdout, stderr, or an agent's JSON event: Claude Code's stream-json on stdout,
//!   Dexter's progress lines on stderr), redacts secret values, and hands them to one
//!   writer task that appends them in order with pipelined `XADD … MAXLEN ~`. The buffer
//!   between the two is bounded: when Redis is slower than the agent, the oldest
//!   unwritten lines are dropped and a `dropped` event says how many, so the agent never
//!   waits for Redis.
//! - [`reader`]: the reading side, shared by `fleet watch` and `GET /v1/jobs/{id}/events`.
//!   [`reader::Follow`] blocks in `XREAD BLOCK` for new entries and ends once the job has
//!   reached a final status and every entry written before is delivered.
//!
//! An entry holds three fields: `attempt` (1 for the first), `kind` (see [`EventKind`])
//! and `data` (JSON: a line as a string, an agent's event as an object, an attempt's
//! start or end as an object). The stream keeps about `events.max_len` entries and
//! expires `queue.result_ttl_secs` after its last write, which is the attempt's end:
//! it goes with the job's record.

pub mod reader;
pub mod writer;

use serde::{Deserialize, Serialize};

/// `[events]`: live events of attempts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSettings {
    /// Write attempts' output to the per-job stream at all.
    pub enabled: bool,
    /// Entries a job's stream keeps (about: trimmed with `MAXLEN ~`).
    pub max_len: u64,
    /// Lines an attempt may have waiting for Redis; beyond it the oldest are dropped.
    pub buffer_events: usize,
    /// Longest line kept whole; longer ones are cut into pieces of this size.
    pub max_line_bytes: usize,
    /// Seconds between keep-alives of a follower with nothing to show (SSE comments),
    /// and the longest one `XREAD BLOCK`.
    pub keepalive_secs: u64,
}

impl EventsSettings {
    /// The first out-of-range value: (key, message).
    pub fn problem(&self) -> Option<(&'static str, &'static str)> {
        if self.max_len == 0 {
            return Some(("events.max_len", "must be at least 1"));
        }
        if self.buffer_events == 0 {
            return Some(("events.buffer_events", "must be at least 1"));
        }
        if self.max_line_bytes < 64 {
            return Some(("events.max_line_bytes", "must be at least 64"));
        }
        if !(1..=3600).contains(&self.keepalive_secs) {
            return Some(("events.keepalive_secs", "must be between 1 and 3600"));
        }
        None
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An attempt began: `{worker, agent}`.
    AttemptStarted,
    /// A line the agent wrote to stdout (a string).
    Stdout,
    /// A line the agent wrote to stderr (a string).
    Stderr,
    /// A structured event of the agent (a JSON object: Claude Code's stream-json
    /// events, Dexter's progress events).
    Agent,
    /// Lines dropped because Redis was slower than the agent: `{count}`.
    Dropped,
    /// An attempt ended: `{status: "succeeded"}` or `{status: "failed", class, error}`.
    AttemptEnded,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::AttemptStarted => "attempt_started",
            EventKind::Stdout => "stdout",
            EventKind::Stderr => "stderr",
            EventKind::Agent => "agent",
            EventKind::Dropped => "dropped",
            EventKind::AttemptEnded => "attempt_ended",
        }
    }
}

/// One entry of a job's stream, as followers see it (the JSON of `fleet watch --json`
/// and of an SSE event's `data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The stream entry ID (`<ms>-<seq>`, Redis' clock): resume after it.
    pub id: String,
    pub attempt: u32,
    /// An [`EventKind`] name; kept as text so a newer writer's kinds pass through.
    pub kind: String,
    pub data: serde_json::Value,
}

/// Whether `id` is a stream entry ID (`<ms>-<seq>` or `<ms>`), e.g. a `Last-Event-ID`.
pub fn is_entry_id(id: &str) -> bool {
    let mut parts = id.splitn(2, '-');
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    parts.next().is_some_and(digits) && parts.next().is_none_or(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_recognised() {
        for ok in ["0", "0-0", "1700000000000-12"] {
            assert!(is_entry_id(ok), "{ok}");
        }
        for bad in ["", "-", "1-", "a-1", "1-2-3", "1 2", "$", ">"] {
            assert!(!is_entry_id(bad), "{bad}");
        }
    }
}
