//! Agent runtimes: how a query is run by one kind of agent inside a sandbox.
//!
//! - [`command`]: any command-line agent; the query goes in through stdin, an
//!   environment variable or a file, never spliced into a shell string. Dexter and
//!   Claude Code run through it today with a profile each (see `config/examples/`).
//!
//! A runtime prepares a new sandbox once (`setup`: the agent's files, installs)
//! and then runs queries in it (`run`). Its errors are [`JobError`]s, already
//! classified, so the queue knows whether to retry.

pub mod command;

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
}

#[async_trait]
pub trait AgentRuntime: Send + Sync + 'static {
    /// `command`, `dexter` or `claude_code`.
    fn name(&self) -> &'static str;

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
}
