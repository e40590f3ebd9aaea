//! Batch files: one query per line, or JSON Lines with per-job options.
//!
//! ```text
//! What was ACME's revenue in 2023?
//! {"query": "Compare Globex and Initech margins", "agent": "demo", "max_attempts": 5}
//! ```
//!
//! Blank lines are skipped. Any bad line fails the whole batch with its line
//! number, before anything is enqueued: a batch is accepted whole or not at all.
//!
//! The JSON object of a line ([`JobRequest`]) is also what the HTTP API takes: one as
//! the body of `POST /v1/jobs` ([`parse_job`]), an array of them as a batch
//! ([`parse_batch_array`], errors naming the item).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{JobOptions, JobPayload, JobSpec, Limits, ResearchJob, Usd, ValidationError};

/// One job as a JSON object: a JSON Lines batch line, an item of a batch sent to the
/// HTTP API as a JSON array, or the body of `POST /v1/jobs`. Unknown fields are
/// refused, so a misspelt option is an error rather than silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub query: String,
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub attempt_timeout_secs: Option<u64>,
    #[serde(default)]
    pub backoff_base_ms: Option<u64>,
    #[serde(default)]
    pub backoff_cap_ms: Option<u64>,
    #[serde(default)]
    pub deadline_secs: Option<u64>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    #[serde(default)]
    pub max_budget_usd: Option<Usd>,
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Use the result cache for this job (overrides the profile's `cache`).
    #[serde(default)]
    pub cache: Option<bool>,
}

impl JobRequest {
    /// The research job it asks for (`default_agent` when it names no agent). Not
    /// validated yet: see [`JobRequest::validated`].
    pub fn into_spec(self, default_agent: &str) -> JobSpec {
        JobSpec {
            payload: JobPayload::Research(ResearchJob {
                query: self.query,
                agent: self.agent.unwrap_or_else(|| default_agent.to_string()),
                agent_id: self.agent_id,
                ephemeral: self.ephemeral,
            }),
            options: JobOptions {
                max_attempts: self.max_attempts,
                attempt_timeout_secs: self.attempt_timeout_secs,
                backoff_base_ms: self.backoff_base_ms,
                backoff_cap_ms: self.backoff_cap_ms,
                deadline_secs: self.deadline_secs,
                idempotency_key: self.idempotency_key,
                batch_id: None,
                metadata: self.metadata,
                max_turns: self.max_turns,
                max_budget_usd: self.max_budget_usd,
                max_tokens: self.max_tokens,
                cache: self.cache,
            },
        }
    }

    /// The spec, checked against the limits.
    pub fn validated(
        self,
        default_agent: &str,
        limits: &Limits,
    ) -> Result<JobSpec, ValidationError> {
        let spec = self.into_spec(default_agent);
        spec.validate(limits)?;
        Ok(spec)
    }
}

/// Parse and validate one job object (JSON text, as sent to `POST /v1/jobs`).
pub fn parse_job(
    bytes: &[u8],
    default_agent: &str,
    limits: &Limits,
) -> Result<JobSpec, ValidationError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ValidationError::new(format!("malformed JSON: {e}")))?;
    job_object(value)
        .map_err(ValidationError::new)?
        .validated(default_agent, limits)
}

/// A job object; anything else (serde would read an array as the fields in order) is
/// refused.
fn job_object(value: serde_json::Value) -> Result<JobRequest, String> {
    if !value.is_object() {
        return Err("a job must be a JSON object, such as {\"query\": \"...\"}".into());
    }
    serde_json::from_value(value).map_err(|e| format!("not a valid job object: {e}"))
}

/// Parse and validate a JSON array of job objects (a batch sent to the HTTP API). Any
/// bad item fails the whole batch, naming the item (counted from 1) and its index.
pub fn parse_batch_array(
    bytes: &[u8],
    default_agent: &str,
    limits: &Limits,
) -> Result<Vec<JobSpec>, ValidationError> {
    let items: Vec<serde_json::Value> = match serde_json::from_slice(bytes) {
        Ok(items) => items,
        Err(e) if e.is_data() => {
            return Err(ValidationError::new(
                "the body must be a JSON array of job objects",
            ));
        }
        Err(e) => return Err(ValidationError::new(format!("malformed JSON: {e}"))),
    };
    let total = items.len();
    let mut specs = Vec::with_capacity(total);
    for (index, item) in items.into_iter().enumerate() {
        let at = |msg: String| {
            ValidationError::new(format!(
                "item {} of {total} (index {index}): {msg}",
                index + 1
            ))
        };
        let request = job_object(item).map_err(at)?;
        specs.push(
            request
                .validated(default_agent, limits)
                .map_err(|e| at(e.message))?,
        );
    }
    if specs.is_empty() {
        return Err(ValidationError::new("the batch holds no queries"));
    }
    Ok(specs)
}

/// Parse and validate a batch file's bytes into job specs.
pub fn parse_batch(
    bytes: &[u8],
    default_agent: &str,
    limits: &Limits,
) -> Result<Vec<JobSpec>, ValidationError> {
    let mut specs = Vec::new();
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = index + 1;
        let at = |msg: String| ValidationError::new(format!("line {line_no}: {msg}"));
        let line = std::str::from_utf8(raw).map_err(|e| {
            at(format!(
                "not valid UTF-8 (byte {} of the line)",
                e.valid_up_to() + 1
            ))
        })?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            continue;
        }
        let spec = if line.trim_start().starts_with('{') {
            let parsed: JobRequest =
                serde_json::from_str(line).map_err(|e| at(format!("malformed JSON: {e}")))?;
            parsed.into_spec(default_agent)
        } else {
            JobSpec::research(line.trim(), default_agent)
        };
        spec.validate(limits).map_err(|e| at(e.message))?;
        specs.push(spec);
    }
    if specs.is_empty() {
        return Err(ValidationError::new("the batch holds no queries"));
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_query_bytes: 100,
            agents: vec!["demo".into(), "dexter".into()],
        }
    }

    #[test]
    fn plain_lines_and_json_lines_mix() {
        let input = b"What was ACME revenue in 2023?\n\n{\"query\":\"q2\",\"agent\":\"dexter\",\"max_attempts\":5}\r\n";
        let specs = parse_batch(input, "demo", &limits()).unwrap();
        assert_eq!(specs.len(), 2);
        let JobPayload::Research(r) = &specs[1].payload else {
            panic!()
        };
        assert_eq!(r.agent, "dexter");
        assert_eq!(specs[1].options.max_attempts, Some(5));
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let err = parse_batch(b"ok\nbad \xff here\n", "demo", &limits()).unwrap_err();
        assert!(err.message.starts_with("line 2: not valid UTF-8"), "{err}");
    }

    #[test]
    fn malformed_json_names_the_line() {
        let err = parse_batch(b"ok\nok\n{\"query\": 3}\n", "demo", &limits()).unwrap_err();
        assert!(err.message.starts_with("line 3: malformed JSON"), "{err}");
    }

    #[test]
    fn unknown_field_is_refused() {
        let err = parse_batch(b"{\"query\":\"q\",\"retries\":3}\n", "demo", &limits()).unwrap_err();
        assert!(err.message.contains("unknown field `retries`"), "{err}");
    }

    #[test]
    fn bad_query_names_the_line() {
        let err = parse_batch(b"ok\n{\"query\":\"  \"}\n", "demo", &limits()).unwrap_err();
        assert_eq!(err.message, "line 2: the query is empty");
    }

    #[test]
    fn a_job_object_maps_every_field() {
        let body = br#"{"query": "Compare Globex and Initech margins", "agent": "dexter",
            "agent_id": "agent-1", "ephemeral": true, "max_attempts": 5,
            "attempt_timeout_secs": 120, "backoff_base_ms": 10, "backoff_cap_ms": 20,
            "deadline_secs": 600, "idempotency_key": "q-17", "metadata": {"team": "research"},
            "max_turns": 8, "max_budget_usd": 0.75}"#;
        let spec = parse_job(body, "demo", &limits()).unwrap();
        let JobPayload::Research(r) = &spec.payload else {
            panic!()
        };
        assert_eq!(r.query, "Compare Globex and Initech margins");
        assert_eq!(r.agent, "dexter");
        assert_eq!(r.agent_id.as_deref(), Some("agent-1"));
        assert!(r.ephemeral);
        let o = &spec.options;
        assert_eq!(o.max_attempts, Some(5));
        assert_eq!(o.attempt_timeout_secs, Some(120));
        assert_eq!((o.backoff_base_ms, o.backoff_cap_ms), (Some(10), Some(20)));
        assert_eq!(o.deadline_secs, Some(600));
        assert_eq!(o.idempotency_key.as_deref(), Some("q-17"));
        assert_eq!(o.metadata.get("team").map(String::as_str), Some("research"));
        assert_eq!(o.batch_id, None);
        assert_eq!(o.max_turns, Some(8));
        assert_eq!(o.max_budget_usd, Some(Usd(0.75)));

        let spec = parse_job(br#"{"query": "q"}"#, "demo", &limits()).unwrap();
        assert_eq!(spec, JobSpec::research("q", "demo"));
    }

    #[test]
    fn a_bad_job_object_is_refused_with_the_reason() {
        let err = |body: &[u8]| parse_job(body, "demo", &limits()).unwrap_err().message;
        assert!(err(b"{\"query\": ").starts_with("malformed JSON"));
        assert_eq!(err(br#"{"query": " "}"#), "the query is empty");
        assert!(
            err(br#"{"query": "q", "agent": "nobody"}"#)
                .contains("unknown agent profile \"nobody\"")
        );
        assert!(err(br#"{"query": "q", "timeout": 5}"#).contains("unknown field `timeout`"));
        assert!(err(br#"{"agent": "demo"}"#).contains("missing field `query`"));
        // serde reads an array as a struct's fields in order: not a job.
        assert!(
            err(br#"["q", "demo", null, true]"#).starts_with("a job must be a JSON object"),
            "{}",
            err(br#"["q", "demo", null, true]"#)
        );
        assert_eq!(
            err(br#"{"query": "q", "max_attempts": 0}"#),
            "max_attempts must be at least 1"
        );
        assert_eq!(
            err(br#"{"query": "q", "max_turns": 0}"#),
            "max_turns must be at least 1"
        );
        assert_eq!(
            err(br#"{"query": "q", "max_turns": 10001}"#),
            "max_turns must be at most 10000 (got 10001)"
        );
        for budget in ["0", "-1", "10000.5", "1e400"] {
            let body = format!(r#"{{"query": "q", "max_budget_usd": {budget}}}"#);
            let message = err(body.as_bytes());
            assert!(
                message.contains("max_budget_usd must be more than 0 and at most 10000")
                    || message.starts_with("malformed JSON"),
                "{budget}: {message}"
            );
        }
    }

    #[test]
    fn a_json_array_batch_names_the_bad_item() {
        let specs = parse_batch_array(
            br#"[{"query": "a"}, {"query": "b", "agent": "dexter"}]"#,
            "demo",
            &limits(),
        )
        .unwrap();
        assert_eq!(
            specs,
            vec![
                JobSpec::research("a", "demo"),
                JobSpec::research("b", "dexter")
            ]
        );
        let err = |body: &[u8]| {
            parse_batch_array(body, "demo", &limits())
                .unwrap_err()
                .message
        };
        assert_eq!(
            err(br#"[{"query": "a"}, {"query": ""}]"#),
            "item 2 of 2 (index 1): the query is empty"
        );
        assert!(
            err(br#"[{"query": "a"}, "b"]"#)
                .starts_with("item 2 of 2 (index 1): a job must be a JSON object")
        );
        assert!(
            err(br#"[{"query": "a"}, ["b", "demo"]]"#)
                .starts_with("item 2 of 2 (index 1): a job must be a JSON object")
        );
        assert!(
            err(br#"[{"query": "a", "retries": 1}]"#)
                .starts_with("item 1 of 1 (index 0): not a valid job object")
        );
        assert_eq!(
            err(br#"{"query": "a"}"#),
            "the body must be a JSON array of job objects"
        );
        assert!(err(b"[{").starts_with("malformed JSON"));
        assert_eq!(err(b"[]"), "the batch holds no queries");
    }

    #[test]
    fn empty_batch_is_refused() {
        let err = parse_batch(b"\n  \n", "demo", &limits()).unwrap_err();
        assert_eq!(err.message, "the batch holds no queries");
    }
}
