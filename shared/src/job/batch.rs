//! Batch files: one query per line, or JSON Lines with per-job options.
//!
//! ```text
//! What was ACME's revenue in 2023?
//! {"query": "Compare Globex and Initech margins", "agent": "demo", "max_attempts": 5}
//! ```
//!
//! Blank lines are skipped. Any bad line fails the whole batch with its line
//! number, before anything is enqueued: a batch is accepted whole or not at all.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{JobOptions, JobPayload, JobSpec, Limits, ResearchJob, ValidationError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchLine {
    query: String,
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    agent_id: Option<String>,
    #[serde(default)]
    ephemeral: bool,
    #[serde(default)]
    max_attempts: Option<u32>,
    #[serde(default)]
    attempt_timeout_secs: Option<u64>,
    #[serde(default)]
    backoff_base_ms: Option<u64>,
    #[serde(default)]
    backoff_cap_ms: Option<u64>,
    #[serde(default)]
    deadline_secs: Option<u64>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
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
            let parsed: BatchLine =
                serde_json::from_str(line).map_err(|e| at(format!("malformed JSON: {e}")))?;
            JobSpec {
                payload: JobPayload::Research(ResearchJob {
                    query: parsed.query,
                    agent: parsed.agent.unwrap_or_else(|| default_agent.to_string()),
                    agent_id: parsed.agent_id,
                    ephemeral: parsed.ephemeral,
                }),
                options: JobOptions {
                    max_attempts: parsed.max_attempts,
                    attempt_timeout_secs: parsed.attempt_timeout_secs,
                    backoff_base_ms: parsed.backoff_base_ms,
                    backoff_cap_ms: parsed.backoff_cap_ms,
                    deadline_secs: parsed.deadline_secs,
                    idempotency_key: parsed.idempotency_key,
                    batch_id: None,
                    metadata: parsed.metadata,
                },
            }
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
    fn empty_batch_is_refused() {
        let err = parse_batch(b"\n  \n", "demo", &limits()).unwrap_err();
        assert_eq!(err.message, "the batch holds no queries");
    }
}
