//! Upper bounds on what one job may ask for. [`JobSpec::validate`](super::JobSpec::validate)
//! checks every option against them at the edge (CLI, HTTP API, batch files), and
//! `Settings::validate` holds the queue policies to the same bounds.
//!
//! They are fixed rather than settings: they keep every duration and timestamp the
//! queue and the worker compute from a job (attempt timeout plus grace, submit time
//! plus deadline, now plus backoff) far from overflow, and every job record small,
//! whatever the configuration. The README's "Limits" table lists them.

use std::collections::BTreeMap;

use super::ValidationError;

/// Attempts in all (first run included).
pub const MAX_ATTEMPTS: u32 = 100;
/// One attempt's timeout: a day.
pub const MAX_ATTEMPT_TIMEOUT_SECS: u64 = 86_400;
/// The whole job's deadline after submission: 30 days.
pub const MAX_DEADLINE_SECS: u64 = 30 * 86_400;
/// Retry backoff base and cap: a day, in milliseconds.
pub const MAX_BACKOFF_MS: u64 = 86_400_000;
/// An agent's step cap for one job (`max_turns`).
pub const MAX_TURNS: u32 = 10_000;
/// An agent's spending cap for one job (`max_budget_usd`), in US dollars.
pub const MAX_BUDGET_USD: f64 = 10_000.0;
/// Metadata labels per job, and the size of each key and value.
pub const MAX_METADATA_ENTRIES: usize = 64;
pub const MAX_METADATA_KEY_BYTES: usize = 128;
pub const MAX_METADATA_VALUE_BYTES: usize = 1024;
/// An agent ID (`agent_id` of a research job, or of a lifecycle operation).
pub const MAX_AGENT_ID_BYTES: usize = 128;
/// `fleet pool scale N`: agents of one profile in one worker's pool (E2B's largest plan
/// runs 100 sandboxes at once).
pub const MAX_POOL_SIZE: u32 = 1000;

/// `value` must not exceed `max`; the message names the option.
pub fn at_most<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: Option<T>,
    max: T,
) -> Result<(), ValidationError> {
    match value {
        Some(v) if v > max => Err(ValidationError::new(format!(
            "{name} must be at most {max} (got {v})"
        ))),
        _ => Ok(()),
    }
}

/// Metadata: a bounded number of labels, each a short non-empty key and a short value.
pub fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(ValidationError::new(format!(
            "{} metadata entries, over the limit of {MAX_METADATA_ENTRIES}",
            metadata.len()
        )));
    }
    for (key, value) in metadata {
        if key.is_empty() {
            return Err(ValidationError::new("a metadata key is empty"));
        }
        if key.len() > MAX_METADATA_KEY_BYTES {
            return Err(ValidationError::new(format!(
                "a metadata key is {} bytes, over the limit of {MAX_METADATA_KEY_BYTES} bytes",
                key.len()
            )));
        }
        if value.len() > MAX_METADATA_VALUE_BYTES {
            return Err(ValidationError::new(format!(
                "the metadata value of {key:?} is {} bytes, over the limit of {MAX_METADATA_VALUE_BYTES} bytes",
                value.len()
            )));
        }
    }
    Ok(())
}

/// An agent ID: 1 to [`MAX_AGENT_ID_BYTES`] bytes, no control characters (the pool's
/// IDs look like `agent-0193…`).
pub fn check_agent_id(agent_id: &str) -> Result<(), ValidationError> {
    if agent_id.is_empty() {
        return Err(ValidationError::new("agent_id is empty"));
    }
    if agent_id.len() > MAX_AGENT_ID_BYTES {
        return Err(ValidationError::new(format!(
            "agent_id is {} bytes, over the limit of {MAX_AGENT_ID_BYTES} bytes",
            agent_id.len()
        )));
    }
    if agent_id.chars().any(char::is_control) {
        return Err(ValidationError::new(
            "agent_id contains a control character",
        ));
    }
    Ok(())
}
