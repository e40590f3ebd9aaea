//! What `fleet` prints: readable text for humans, JSON for scripts.
//!
//! Everything here is a pure function from records to text or JSON, so the formats
//! are unit-tested without Redis. Commands fetch; this module formats; `emit_*` write.

use std::fmt::Write as _;
use std::io::Write as _;

use fleet_shared::job::{JobPayload, LifecycleJob, QueueKind};
use fleet_shared::queue::{AttemptRecord, QueueCounts};
use fleet_shared::results::{BatchRecord, JobRecord, JobStatus};
use serde_json::{Value, json};

/// Write text to stdout (a trailing newline is added when missing). A reader that
/// stopped reading (`fleet dead list | head`) is not an error: the command goes on
/// and exits with its own code.
pub fn emit_text(text: &str) -> std::io::Result<()> {
    let write = || {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        out.flush()
    };
    match write() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Write one JSON document to stdout.
pub fn emit_json(value: &Value) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    emit_text(&text)
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds, e.g. `2023-11-14T22:13:20.123Z`.
pub fn fmt_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A duration for humans: `450ms`, `3.2s`, `2m05s`, `1h02m`.
pub fn fmt_duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

/// The first line of `s`, at most `max` characters, marked when cut.
pub fn one_line(s: &str, max: usize) -> String {
    let first = s.lines().next().unwrap_or("");
    let cut = first.chars().count() > max || s.trim_end().contains('\n');
    let mut out: String = first.chars().take(max).collect();
    if cut {
        out.push('…');
    }
    out
}

fn indent(text: &str, by: &str) -> String {
    text.lines()
        .map(|l| format!("{by}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The query of a research job, if it is one.
pub fn query_of(record: &JobRecord) -> Option<&str> {
    match record.spec.as_ref().map(|s| &s.payload) {
        Some(JobPayload::Research(r)) => Some(&r.query),
        _ => None,
    }
}

/// A lifecycle operation in words: `launch demo (persistent)`, `scale demo to 3`.
pub fn describe_lifecycle(job: &LifecycleJob) -> String {
    match job {
        LifecycleJob::Launch { agent, persistent } => {
            format!(
                "launch {agent}{}",
                if *persistent { " (persistent)" } else { "" }
            )
        }
        LifecycleJob::Pause { agent_id } => format!("pause {agent_id}"),
        LifecycleJob::Resume { agent_id } => format!("resume {agent_id}"),
        LifecycleJob::Terminate { agent_id } => format!("terminate {agent_id}"),
        LifecycleJob::Refresh {
            agent,
            commit: None,
        } => format!("refresh {agent}"),
        LifecycleJob::Refresh {
            agent,
            commit: Some(commit),
        } => format!("refresh {agent} to {commit}"),
        LifecycleJob::Publish {
            repo,
            batch_id,
            job_ids,
        } => format!(
            "publish batch {batch_id} ({} jobs) to {repo}",
            job_ids.len()
        ),
        LifecycleJob::Scale { agent, size } => format!("scale {agent} to {size}"),
        LifecycleJob::HealthCheck => "health check".to_string(),
    }
}

/// The answer of a succeeded job: `result.output.answer` when present (a string as
/// is, other JSON as JSON), else the output JSON.
pub fn answer_text(result: &Value) -> String {
    let output = result.get("output").unwrap_or(result);
    if let Some(stored) = fleet_shared::results::store::StoredAnswer::of(result) {
        // Stored in chunks (results/store.rs): `fleet result ID` streams it.
        return format!(
            "[a large answer of {} bytes, stored apart: `fleet result <job ID>` prints it]",
            stored.bytes
        );
    }
    match output.get("answer") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => serde_json::to_string_pretty(output).unwrap_or_else(|_| output.to_string()),
    }
}

/// Why a job ended without an answer: `dead: permanent: bad input (attempt 2)`.
pub fn error_text(record: &JobRecord) -> String {
    let status = record.status;
    let Some(err) = &record.error else {
        return format!("{status} (no error recorded)");
    };
    let detail = error_detail(err);
    match detail.strip_prefix(status.as_str()) {
        Some(rest) if rest.starts_with(": ") => format!("{status}{rest}"),
        _ => format!("{status}: {detail}"),
    }
}

/// A stored error `{class, message, attempt}` as `transient: upstream 503 (attempt 1)`.
pub fn error_detail(err: &Value) -> String {
    let message = err
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| err.to_string());
    let mut out = match err.get("class").and_then(Value::as_str) {
        Some(c) => format!("{c}: {message}"),
        None => message,
    };
    if let Some(a) = err.get("attempt").and_then(Value::as_u64) {
        let _ = write!(out, " (attempt {a})");
    }
    out
}

/// The record as JSON, with the queue it is on.
pub fn record_json(queue: QueueKind, record: &JobRecord) -> Value {
    let mut v = serde_json::to_value(record).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut v {
        map.insert("queue".into(), json!(queue.as_str()));
    }
    v
}

fn field(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{name:<12}{value}");
}

fn header(out: &mut String, queue: QueueKind, r: &JobRecord, now_ms: u64, full: bool) {
    field(out, "job", &r.id);
    field(out, "queue", queue);
    let mut status = r.status.to_string();
    if let (JobStatus::Retrying | JobStatus::Queued, Some(at)) = (r.status, r.run_at) {
        let _ = write!(
            status,
            " (next attempt at {}, in {})",
            fmt_time(at),
            fmt_duration(at.saturating_sub(now_ms))
        );
    }
    field(out, "status", status);
    match r.spec.as_ref().map(|s| &s.payload) {
        Some(JobPayload::Research(q)) => {
            if full && q.query.contains('\n') {
                let _ = writeln!(out, "query\n{}", indent(&q.query, "  "));
            } else if full {
                field(out, "query", &q.query);
            } else {
                field(out, "query", one_line(&q.query, 100));
            }
            let mut agent = q.agent.clone();
            if let Some(id) = &q.agent_id {
                let _ = write!(agent, " (agent {id})");
            }
            if q.ephemeral {
                agent.push_str(" (ephemeral)");
            }
            field(out, "agent", agent);
        }
        Some(JobPayload::Lifecycle(l)) => field(out, "operation", describe_lifecycle(l)),
        None => field(out, "spec", "(not stored)"),
    }
    field(
        out,
        "attempts",
        format!("{}/{}", r.attempts, r.max_attempts),
    );
    field(out, "created", fmt_time(r.created_at));
    if let Some(s) = r.started_at {
        field(
            out,
            "started",
            format!(
                "{} (waited {})",
                fmt_time(s),
                fmt_duration(s.saturating_sub(r.created_at))
            ),
        );
    }
    if let Some(f) = r.finished_at {
        field(
            out,
            "finished",
            format!(
                "{} ({} after submission)",
                fmt_time(f),
                fmt_duration(f.saturating_sub(r.created_at))
            ),
        );
    }
    if let Some(w) = &r.worker {
        field(out, "worker", w);
    }
    if let Some(b) = &r.batch {
        field(out, "batch", b);
    }
    if let Some(e) = &r.error {
        // The last error, which a job that went on to succeed keeps too.
        field(out, "last error", error_detail(e));
    }
}

/// `fleet status`: status, attempts, timings, last error, one line per attempt.
pub fn render_status(queue: QueueKind, r: &JobRecord, now_ms: u64) -> String {
    let mut out = String::new();
    header(&mut out, queue, r, now_ms, false);
    if let (JobStatus::Succeeded, Some(result)) = (r.status, &r.result) {
        field(&mut out, "answer", one_line(&answer_text(result), 100));
    }
    if r.history.is_empty() {
        field(&mut out, "history", "(no attempt yet)");
    } else {
        out.push_str("history\n");
        for a in &r.history {
            out.push_str(&attempt_line(a));
            out.push('\n');
        }
    }
    out
}

fn attempt_line(a: &AttemptRecord) -> String {
    let mut line = format!(
        "  #{:<3}{:<13}{}  {:>7}",
        a.attempt,
        a.outcome,
        if a.started_at > 0 {
            fmt_time(a.started_at)
        } else {
            "-".into()
        },
        fmt_duration(a.ended_at.saturating_sub(a.started_at))
    );
    if !a.worker.is_empty() {
        let _ = write!(line, "  {}", a.worker);
    }
    if let Some(e) = &a.error {
        let _ = write!(line, "  {}", one_line(e, 80));
    }
    if let Some(d) = a.retry_in_ms {
        let _ = write!(line, "  (retry in {})", fmt_duration(d));
    }
    line
}

/// `fleet dead show`: the whole record, the spec's options and every attempt in full.
pub fn render_detail(queue: QueueKind, r: &JobRecord, now_ms: u64) -> String {
    let mut out = String::new();
    header(&mut out, queue, r, now_ms, true);
    if let Some(spec) = &r.spec {
        let o = &spec.options;
        let mut opts = Vec::new();
        if let Some(n) = o.max_attempts {
            opts.push(format!("max_attempts={n}"));
        }
        if let Some(s) = o.attempt_timeout_secs {
            opts.push(format!("attempt_timeout={s}s"));
        }
        if let Some(s) = o.deadline_secs {
            opts.push(format!("deadline={s}s"));
        }
        if let Some(k) = &o.idempotency_key {
            opts.push(format!("idempotency_key={k}"));
        }
        if let Some(n) = o.max_turns {
            opts.push(format!("max_turns={n}"));
        }
        if let Some(usd) = o.max_budget_usd {
            opts.push(format!("max_budget_usd={}", usd.0));
        }
        if let Some(n) = o.max_tokens {
            opts.push(format!("max_tokens={n}"));
        }
        for (k, v) in &o.metadata {
            opts.push(format!("{k}={v}"));
        }
        if !opts.is_empty() {
            field(&mut out, "options", opts.join(" "));
        }
    }
    if let (JobStatus::Succeeded, Some(result)) = (r.status, &r.result) {
        let _ = writeln!(out, "answer\n{}", indent(&answer_text(result), "  "));
    }
    if r.history.is_empty() {
        field(&mut out, "history", "(no attempt yet)");
    }
    for a in &r.history {
        let _ = writeln!(out, "attempt {}", a.attempt);
        let mut f = |name: &str, value: String| {
            let _ = writeln!(out, "  {name:<10}{value}");
        };
        f("outcome", a.outcome.clone());
        if !a.worker.is_empty() {
            f("worker", a.worker.clone());
        }
        if a.started_at > 0 {
            f("started", fmt_time(a.started_at));
        }
        if a.ended_at > 0 {
            f(
                "ended",
                format!(
                    "{} (ran {})",
                    fmt_time(a.ended_at),
                    fmt_duration(a.ended_at.saturating_sub(a.started_at))
                ),
            );
        }
        if let Some(x) = &a.agent_id {
            f("agent", x.clone());
        }
        if let Some(x) = &a.sandbox_id {
            f("sandbox", x.clone());
        }
        if let Some(e) = &a.error {
            f("error", e.clone());
        }
        if let Some(d) = a.retry_in_ms {
            f("retry in", fmt_duration(d));
        }
        if let Some(d) = &a.details {
            // What the agent reported about the failed run (cost, turns, session, ...).
            f("details", one_line(&d.to_string(), 400));
        }
    }
    out
}

/// `fleet jobs`: one row per queue.
pub fn render_counts(rows: &[(QueueKind, QueueCounts)]) -> String {
    let mut out = format!(
        "{:<10}{:>8}{:>9}{:>9}{:>7}\n",
        "QUEUE", "READY", "RUNNING", "DELAYED", "DEAD"
    );
    for (q, c) in rows {
        let _ = writeln!(
            out,
            "{:<10}{:>8}{:>9}{:>9}{:>7}",
            q.as_str(),
            c.ready,
            c.running,
            c.delayed,
            c.dead
        );
    }
    out
}

pub fn counts_json(rows: &[(QueueKind, QueueCounts)]) -> Value {
    Value::Object(
        rows.iter()
            .map(|(q, c)| (q.as_str().to_string(), json!(c)))
            .collect(),
    )
}

/// One row of `fleet dead list`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadRow {
    pub id: String,
    pub queue: QueueKind,
    /// When it was dead-lettered (ms).
    pub died_at: u64,
    /// (attempts, max_attempts), when the record is there.
    pub attempts: Option<(u32, u32)>,
    /// The last error's message.
    pub reason: Option<String>,
}

impl DeadRow {
    pub fn new(id: String, queue: QueueKind, died_at: u64, record: Option<&JobRecord>) -> Self {
        DeadRow {
            id,
            queue,
            died_at,
            attempts: record.map(|r| (r.attempts, r.max_attempts)),
            reason: record.and_then(|r| {
                let e = r.error.as_ref()?;
                Some(
                    e.get("message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| e.to_string()),
                )
            }),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "queue": self.queue.as_str(),
            "died_at": self.died_at,
            "attempts": self.attempts.map(|a| a.0),
            "max_attempts": self.attempts.map(|a| a.1),
            "reason": self.reason,
        })
    }
}

/// `fleet dead list`: ID, queue, when, attempts, reason.
pub fn render_dead_list(rows: &[DeadRow], total: u64) -> String {
    if rows.is_empty() {
        return "no dead jobs\n".into();
    }
    let mut out = format!(
        "{:<38}{:<11}{:<26}{:<10}{}\n",
        "ID", "QUEUE", "DIED", "ATTEMPTS", "REASON"
    );
    for r in rows {
        let attempts = r
            .attempts
            .map(|(a, m)| format!("{a}/{m}"))
            .unwrap_or_else(|| "-".into());
        let reason = r
            .reason
            .as_deref()
            .map(|s| one_line(s, 100))
            .unwrap_or_else(|| "(no record)".into());
        let _ = writeln!(
            out,
            "{:<38}{:<11}{:<26}{:<10}{}",
            r.id,
            r.queue.as_str(),
            fmt_time(r.died_at),
            attempts,
            reason
        );
    }
    if total > rows.len() as u64 {
        let _ = writeln!(
            out,
            "showing {} of {total} dead jobs (--limit N for more)",
            rows.len()
        );
    }
    out
}

/// The progress bar's message: how many jobs are in each status, zeros left out,
/// ended ones first: `3 succeeded · 1 dead · 2 running · 4 queued`.
pub fn progress_message(b: &BatchRecord) -> String {
    let order = [
        JobStatus::Succeeded,
        JobStatus::Dead,
        JobStatus::Cancelled,
        JobStatus::Failed,
        JobStatus::Retrying,
        JobStatus::Running,
        JobStatus::Queued,
    ];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|s| {
            let n = b.count(*s);
            (n > 0).then(|| format!("{n} {s}"))
        })
        .collect();
    parts.join(" · ")
}

/// A batch record as JSON: its total, how many jobs ended, and a count for every
/// status (zeros included).
pub fn batch_json(b: &BatchRecord) -> Value {
    let counts: serde_json::Map<String, Value> = JobStatus::ALL
        .iter()
        .map(|s| (s.as_str().to_string(), json!(b.count(*s))))
        .collect();
    json!({
        "batch_id": b.id,
        "total": b.total,
        "finished": b.finished(),
        "counts": counts,
    })
}

/// One job of a batch, as reported at the end of `batch --wait` and `demo`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchItem {
    pub id: String,
    pub query: Option<String>,
    /// `None`: the record is gone.
    pub status: Option<JobStatus>,
    pub answer: Option<String>,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub error_text: Option<String>,
    /// Served from the result cache: the job whose run produced the answer.
    pub cached_from: Option<String>,
}

impl BatchItem {
    pub fn new(id: String, record: Option<&JobRecord>) -> BatchItem {
        let succeeded = record.is_some_and(|r| r.status == JobStatus::Succeeded);
        BatchItem {
            id,
            query: record.and_then(query_of).map(str::to_string),
            status: record.map(|r| r.status),
            answer: record
                .and_then(|r| r.result.as_ref())
                .filter(|_| succeeded)
                .map(answer_text),
            output: record
                .and_then(|r| r.result.as_ref())
                .and_then(|r| r.get("output").cloned()),
            error: record.and_then(|r| r.error.clone()).filter(|_| !succeeded),
            error_text: match record {
                None => Some("no record (it expired, or was never written)".into()),
                Some(r) if r.status == JobStatus::Succeeded => None,
                Some(r) if r.status.is_final() => Some(error_text(r)),
                Some(r) => Some(format!("not ended: {}", r.status)),
            },
            cached_from: record
                .and_then(|r| r.result.as_ref())
                .and_then(|r| r.get("cached_from"))
                .and_then(Value::as_str)
                .map(str::to_string),
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == Some(JobStatus::Succeeded)
    }

    pub fn to_json(&self) -> Value {
        let mut doc = json!({
            "id": self.id,
            "query": self.query,
            "status": self.status,
            "answer": self.answer,
            "output": self.output,
            "error": self.error,
        });
        if let (Some(from), Some(map)) = (&self.cached_from, doc.as_object_mut()) {
            map.insert("cached".into(), json!(true));
            map.insert("cached_from".into(), json!(from));
        }
        doc
    }
}

/// Each job's question and answer (or error), in submission order.
pub fn render_batch_results(items: &[BatchItem]) -> String {
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let q = item.query.as_deref().unwrap_or(&item.id);
        let _ = writeln!(out, "[{}] {}", i + 1, one_line(q, 200));
        match (&item.answer, &item.error_text) {
            (Some(a), _) => {
                let _ = writeln!(out, "{}", indent(a, "    "));
            }
            (None, Some(e)) => {
                let _ = writeln!(out, "    error: {e}");
            }
            (None, None) => {
                let _ = writeln!(out, "    (no answer)");
            }
        }
    }
    out
}

/// `11 of 12 succeeded; 1 dead`.
pub fn batch_summary(items: &[BatchItem]) -> String {
    let ok = items.iter().filter(|i| i.succeeded()).count();
    let mut others: std::collections::BTreeMap<&str, usize> = Default::default();
    for i in items.iter().filter(|i| !i.succeeded()) {
        *others
            .entry(i.status.map(JobStatus::as_str).unwrap_or("missing"))
            .or_default() += 1;
    }
    let mut s = format!("{ok} of {} succeeded", items.len());
    if !others.is_empty() {
        let parts: Vec<String> = others.iter().map(|(k, n)| format!("{n} {k}")).collect();
        let _ = write!(s, "; {}", parts.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_shared::job::JobSpec;

    fn record(status: JobStatus) -> JobRecord {
        JobRecord {
            id: "01932c7e-8d1c-7b3a-9f1e-2a4b5c6d7e8f".into(),
            status,
            spec: Some(JobSpec::research(
                "What was ACME's revenue in 2023?",
                "demo",
            )),
            attempts: 1,
            max_attempts: 3,
            created_at: 1_700_000_000_000,
            started_at: Some(1_700_000_000_120),
            finished_at: None,
            run_at: None,
            worker: Some("w1".into()),
            error: None,
            result: None,
            batch: None,
            history: vec![],
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(fmt_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(fmt_time(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(450), "450ms");
        assert_eq!(fmt_duration(3_249), "3.2s");
        assert_eq!(fmt_duration(125_000), "2m05s");
        assert_eq!(fmt_duration(3_720_000), "1h02m");
    }

    #[test]
    fn one_line_cuts_and_marks() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("abcdef", 3), "abc…");
        assert_eq!(one_line("first\nsecond", 20), "first…");
        assert_eq!(one_line("trailing\n", 20), "trailing");
    }

    #[test]
    fn answer_prefers_the_answer_field() {
        let r = json!({"output": {"answer": "42", "sources": []}, "attempts": 1});
        assert_eq!(answer_text(&r), "42");
        let r = json!({"output": {"answer": {"value": 42}}});
        assert_eq!(answer_text(&r), "{\"value\":42}");
        let r = json!({"output": {"text": "hi"}});
        assert_eq!(answer_text(&r), "{\n  \"text\": \"hi\"\n}");
    }

    #[test]
    fn error_text_names_status_class_and_attempt() {
        let mut r = record(JobStatus::Dead);
        r.error = Some(json!({"class": "permanent", "message": "no such company", "attempt": 2}));
        assert_eq!(
            error_text(&r),
            "dead: permanent: no such company (attempt 2)"
        );
        r.status = JobStatus::Cancelled;
        r.error = Some(json!({"class": "cancelled", "message": "cancelled before it ran"}));
        assert_eq!(error_text(&r), "cancelled: cancelled before it ran");
        r.error = None;
        assert_eq!(error_text(&r), "cancelled (no error recorded)");
    }

    #[test]
    fn status_shows_attempts_timings_error_and_history() {
        let mut r = record(JobStatus::Retrying);
        r.run_at = Some(1_700_000_005_000);
        r.error = Some(json!({"class": "transient", "message": "rate limited", "attempt": 1}));
        r.history = vec![AttemptRecord {
            attempt: 1,
            worker: "w1".into(),
            started_at: 1_700_000_000_120,
            ended_at: 1_700_000_001_320,
            outcome: "transient".into(),
            error: Some("rate limited".into()),
            retry_in_ms: Some(3_000),
            ..Default::default()
        }];
        let text = render_status(QueueKind::Research, &r, 1_700_000_002_000);
        assert!(
            text.contains(
                "status      retrying (next attempt at 2023-11-14T22:13:25.000Z, in 3.0s)"
            ),
            "{text}"
        );
        assert!(text.contains("attempts    1/3"), "{text}");
        assert!(
            text.contains("started     2023-11-14T22:13:20.120Z (waited 120ms)"),
            "{text}"
        );
        assert!(
            text.contains("last error  transient: rate limited (attempt 1)"),
            "{text}"
        );
        assert!(text.contains("  #1  transient    2023-11-14T22:13:20.120Z     1.2s  w1  rate limited  (retry in 3.0s)"), "{text}");
    }

    #[test]
    fn status_of_a_lifecycle_job_names_the_operation() {
        let mut r = record(JobStatus::Queued);
        r.spec = Some(JobSpec::lifecycle(LifecycleJob::Scale {
            agent: "demo".into(),
            size: 3,
        }));
        let text = render_status(QueueKind::Lifecycle, &r, 0);
        assert!(text.contains("operation   scale demo to 3"), "{text}");
        assert!(text.contains("queue       lifecycle"), "{text}");
        assert!(text.contains("history     (no attempt yet)"), "{text}");
    }

    #[test]
    fn detail_lists_every_attempt_in_full() {
        let mut r = record(JobStatus::Dead);
        r.history = vec![
            AttemptRecord {
                attempt: 1,
                worker: "w1".into(),
                started_at: 1_700_000_000_000,
                ended_at: 1_700_000_000_500,
                outcome: "timeout".into(),
                error: Some("killed after 600s".into()),
                sandbox_id: Some("sb-1".into()),
                ..Default::default()
            },
            AttemptRecord {
                attempt: 2,
                outcome: "permanent".into(),
                error: Some("bad data".into()),
                details: Some(serde_json::json!({"num_turns": 2, "total_cost_usd": 0.01})),
                ..Default::default()
            },
        ];
        let text = render_detail(QueueKind::Research, &r, 0);
        assert!(
            text.contains("  details   {\"num_turns\":2,\"total_cost_usd\":0.01}"),
            "{text}"
        );
        assert!(
            text.contains("attempt 1\n  outcome   timeout\n  worker    w1\n"),
            "{text}"
        );
        assert!(
            text.contains("  ended     2023-11-14T22:13:20.500Z (ran 500ms)"),
            "{text}"
        );
        assert!(text.contains("  sandbox   sb-1"), "{text}");
        assert!(
            text.contains("attempt 2\n  outcome   permanent\n  error     bad data"),
            "{text}"
        );
        assert!(
            text.contains("query       What was ACME's revenue in 2023?"),
            "{text}"
        );
    }

    #[test]
    fn counts_table() {
        let text = render_counts(&[
            (
                QueueKind::Research,
                QueueCounts {
                    ready: 3,
                    running: 1,
                    delayed: 0,
                    dead: 12,
                },
            ),
            (QueueKind::Lifecycle, QueueCounts::default()),
        ]);
        assert_eq!(
            text,
            "QUEUE        READY  RUNNING  DELAYED   DEAD\n\
             research         3        1        0     12\n\
             lifecycle        0        0        0      0\n"
        );
    }

    #[test]
    fn dead_list_rows_and_footer() {
        let mut r = record(JobStatus::Dead);
        r.attempts = 3;
        r.error = Some(
            json!({"class": "transient", "message": "upstream 503 (gave up after attempt 3 of 3)"}),
        );
        let rows = vec![DeadRow::new(
            r.id.clone(),
            QueueKind::Research,
            1_700_000_000_000,
            Some(&r),
        )];
        let text = render_dead_list(&rows, 5);
        assert!(text.starts_with("ID "), "{text}");
        assert!(text.contains("research   2023-11-14T22:13:20.000Z  3/3       upstream 503 (gave up after attempt 3 of 3)"), "{text}");
        assert!(
            text.ends_with("showing 1 of 5 dead jobs (--limit N for more)\n"),
            "{text}"
        );
        assert_eq!(render_dead_list(&[], 0), "no dead jobs\n");
        assert_eq!(
            rows[0].to_json()["reason"],
            "upstream 503 (gave up after attempt 3 of 3)"
        );
    }

    #[test]
    fn progress_message_counts_ended_and_running() {
        let mut b = BatchRecord {
            id: "b".into(),
            total: 10,
            ..Default::default()
        };
        b.counts.insert("succeeded".into(), 3);
        b.counts.insert("dead".into(), 1);
        b.counts.insert("running".into(), 2);
        assert_eq!(progress_message(&b), "3 succeeded · 1 dead · 2 running");
    }

    #[test]
    fn batch_json_counts_every_status() {
        let mut b = BatchRecord {
            id: "b1".into(),
            total: 4,
            ..Default::default()
        };
        b.counts.insert("succeeded".into(), 3);
        b.counts.insert("running".into(), 1);
        let v = batch_json(&b);
        assert_eq!(v["batch_id"], "b1");
        assert_eq!(v["total"], 4);
        assert_eq!(v["finished"], 3);
        assert_eq!(v["counts"]["succeeded"], 3);
        assert_eq!(v["counts"]["dead"], 0);
        assert_eq!(v["counts"].as_object().unwrap().len(), 7);
    }

    #[test]
    fn batch_results_in_order_with_errors() {
        let mut ok = record(JobStatus::Succeeded);
        ok.result = Some(json!({"output": {"answer": "$1.2M\nfrom the 10-K"}}));
        let mut dead = record(JobStatus::Dead);
        dead.spec = Some(JobSpec::research("Who?", "demo"));
        dead.error =
            Some(json!({"class": "permanent", "message": "unknown company", "attempt": 1}));
        let items = vec![
            BatchItem::new("a".into(), Some(&ok)),
            BatchItem::new("b".into(), Some(&dead)),
            BatchItem::new("c".into(), None),
        ];
        assert_eq!(
            render_batch_results(&items),
            "[1] What was ACME's revenue in 2023?\n    $1.2M\n    from the 10-K\n\n\
             [2] Who?\n    error: dead: permanent: unknown company (attempt 1)\n\n\
             [3] c\n    error: no record (it expired, or was never written)\n"
        );
        assert_eq!(batch_summary(&items), "1 of 3 succeeded; 1 dead, 1 missing");
        assert_eq!(items[0].to_json()["answer"], "$1.2M\nfrom the 10-K");
        assert_eq!(items[1].to_json()["error"]["class"], "permanent");
        assert!(items[0].to_json()["error"].is_null());
    }

    #[test]
    fn record_json_carries_the_queue() {
        let v = record_json(QueueKind::Lifecycle, &record(JobStatus::Queued));
        assert_eq!(v["queue"], "lifecycle");
        assert_eq!(v["status"], "queued");
    }
}
