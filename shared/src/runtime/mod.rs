//! Agent runtimes: how a query is run by one kind of agent inside a sandbox.
//!
//! - [`command`]: any command-line agent; the query goes in through stdin, an
//!   environment variable or a file, never spliced into a shell string.
//! - [`claude_code`]: the Claude Code CLI, headless; its stream-json result becomes the
//!   answer and metadata (cost, turns, session), its API errors are classified.
//! - [`dexter`]: Dexter (virattt/dexter, Bun) through the project's run-once wrapper
//!   (`agents/dexter/run-once.ts`), uploaded into the sandbox.
//!
//! Working profiles for each are in `config/examples/`.
//!
//! A runtime prepares a new sandbox once (`setup`: the agent's files, installs)
//! and then runs queries in it (`run`). An agent whose repo is a git URL is
//! checked out by [`checkout`] (token only in git's environment, commit recorded)
//! and can be moved to another commit in place (`refresh`). Its errors are [`JobError`]s, already
//! classified, so the queue knows whether to retry.

pub mod checkout;
pub mod claude_code;
pub mod command;
pub mod dexter;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::JobError;
use crate::sandbox::{OutputChunk, SandboxProvider};

/// What one run produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentOutput {
    /// The agent's answer, as text.
    pub answer: String,
    pub exit_code: i32,
    /// The last few KiB of stderr, for diagnosis.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    /// Runtime-specific figures: cost, tokens, turns, tool calls.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
    /// Output beyond the size limit was dropped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
}

/// Controls for one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Kill the agent's process after this long (the attempt timeout).
    pub timeout: Option<Duration>,
    /// Cancelling kills the agent's process; the run returns a `Cancelled` error.
    pub cancel: CancellationToken,
    /// Stream output here as it arrives, when set.
    pub output: Option<mpsc::UnboundedSender<OutputChunk>>,
    /// The job was addressed to one agent (a persistent agent): state the agent keeps
    /// between jobs, such as a Claude Code session, may carry over. Pooled agents
    /// serve unrelated jobs and never carry a conversation over.
    pub keep_session: bool,
    /// The job's step cap (`max_turns`): lowers the profile's, never raises it.
    pub max_turns: Option<u32>,
    /// The job's spending cap in US dollars: lowers the profile's, never raises it.
    pub max_budget_usd: Option<f64>,
    /// Set last in the agent's environment when the job runs through the model gateway:
    /// base URLs pointing at the gateway and the attempt's token in place of every
    /// provider key (it overrides a real key of the same name).
    pub gateway_env: std::collections::BTreeMap<String, String>,
    /// Keep at most this many bytes of the agent's output (`results.max_bytes`); the
    /// provider drops the rest as it reads. 0: the provider's default. The `command`
    /// runtime cuts its answer there with a marker; the others parse structured output
    /// and keep their own limits.
    pub max_output_bytes: usize,
}

/// The tighter of a profile's cap and a job's (`0` or `None`: no cap).
pub(crate) fn tighter_cap<T: PartialOrd + Default + Copy>(profile: T, job: Option<T>) -> T {
    let unset = T::default();
    match job {
        Some(job) if job > unset && (profile <= unset || job < profile) => job,
        _ => profile,
    }
}

/// One of a process's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputPipe {
    Stdout,
    Stderr,
}

#[async_trait]
pub trait AgentRuntime: Send + Sync + 'static {
    /// `command`, `dexter` or `claude_code`.
    fn name(&self) -> &'static str;

    /// The output stream on which the agent writes structured events, one JSON object
    /// per line (live events show them as `agent` events); `None`: plain text only.
    fn event_pipe(&self) -> Option<OutputPipe> {
        None
    }

    /// `text` (a line of the agent's output, on its way to live events) with the
    /// values of the profile's secrets replaced.
    fn redact_output(&self, text: &str) -> String;

    /// Prepare a freshly created sandbox: put the agent's files in place and run
    /// its setup commands.
    async fn setup(&self, provider: &dyn SandboxProvider, sandbox_id: &str)
    -> Result<(), JobError>;

    /// Run one query to its answer.
    async fn run(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        query: &str,
        options: RunOptions,
    ) -> Result<AgentOutput, JobError>;

    /// Move a set-up sandbox's checkout to `commit` (`None`: the profile's ref) and
    /// run the setup commands again. On failure the old commit keeps serving.
    async fn refresh(
        &self,
        _provider: &dyn SandboxProvider,
        _sandbox_id: &str,
        _commit: Option<&str>,
    ) -> Result<checkout::CheckoutRecord, JobError> {
        Err(JobError::permanent(
            "this agent's repo is not a git URL: it cannot be refreshed to a commit",
        ))
    }

    /// The profile's git checkout, when its repo is a git URL.
    fn repo_checkout(&self) -> Option<&checkout::RepoCheckout> {
        None
    }
}

/// Secrets shorter than this are not redacted: replacing every occurrence of a one-
/// or two-character value would mangle ordinary text.
const MIN_REDACTED_SECRET_LEN: usize = 4;

/// Replace secret values in text that may reach a log, an error or a result.
pub(crate) fn redact(
    secrets: &std::collections::BTreeMap<String, crate::secret::Secret>,
    text: &str,
) -> String {
    let mut text = text.to_string();
    for secret in secrets.values() {
        if secret.expose().len() >= MIN_REDACTED_SECRET_LEN {
            text = text.replace(secret.expose(), "[redacted]");
        }
    }
    text
}

/// [`redact`] for a JSON value (an agent's metadata).
pub(crate) fn redact_value(
    secrets: &std::collections::BTreeMap<String, crate::secret::Secret>,
    value: serde_json::Value,
) -> serde_json::Value {
    if value.is_null() {
        return value;
    }
    serde_json::from_str(&redact(secrets, &value.to_string())).unwrap_or(value)
}

/// The last `max` bytes of `bytes` as text, starting on a character boundary.
pub(crate) fn tail_utf8(bytes: &[u8], max: usize) -> String {
    let mut start = bytes.len().saturating_sub(max);
    while start < bytes.len() && start > 0 && bytes[start] & 0xC0 == 0x80 {
        start += 1;
    }
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// A recorded output of `agent` from `src/runtime/testdata/<agent>/<name>`, for the
/// runtimes' parsing tests.
#[cfg(test)]
pub(crate) fn testdata(agent: &str, name: &str) -> String {
    let path = format!(
        "{}/src/runtime/testdata/{agent}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::tighter_cap;

    #[test]
    fn a_job_may_lower_a_profile_cap_but_not_raise_it() {
        assert_eq!(tighter_cap(20u32, Some(5)), 5);
        assert_eq!(tighter_cap(20u32, Some(50)), 20);
        assert_eq!(tighter_cap(0u32, Some(50)), 50, "no profile cap: the job's");
        assert_eq!(tighter_cap(20u32, None), 20);
        assert_eq!(tighter_cap(20u32, Some(0)), 20);
        assert_eq!(tighter_cap(1.0f64, Some(0.25)), 0.25);
        assert_eq!(tighter_cap(1.0f64, Some(3.0)), 1.0);
        assert_eq!(tighter_cap(0.0f64, None), 0.0);
    }
}
