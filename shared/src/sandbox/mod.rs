//! Sandbox providers: where agents run.
//!
//! [`SandboxProvider`] is the one interface the pool and the runtimes use. Two
//! providers implement it:
//!
//! - [`local`]: the embedded default. One directory per sandbox on this machine;
//!   processes in their own process group with a cleared environment. It lets a
//!   new user run the whole system with no API keys. **It is a development
//!   convenience, not a security boundary**: an agent runs as the worker's user.
//! - [`e2b`]: E2B's control-plane REST API and the envd Connect-RPC API inside each
//!   sandbox.
//!
//! Every sandbox the system creates carries metadata (`owner`, `pool`, `agent_id`)
//! so that the pool can find and reconcile its own sandboxes after a restart.

pub mod e2b;
pub mod egress;
pub mod local;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::error::{ErrorClass, JobError};

/// Metadata key naming the system that created a sandbox.
pub const META_OWNER: &str = "dexter-fleet-owner";
/// Metadata key naming the pool (agent profile) a sandbox belongs to.
pub const META_POOL: &str = "dexter-fleet-pool";
/// Metadata key holding the agent ID the pool gave the sandbox.
pub const META_AGENT_ID: &str = "dexter-fleet-agent-id";

/// What to create.
#[derive(Debug, Clone, Default)]
pub struct SandboxSpec {
    /// E2B template ID or alias; the local provider ignores it.
    pub template: String,
    /// The sandbox's own lifetime; extended with `set_timeout` while a job holds it.
    pub timeout: Duration,
    /// Tags, filterable in `list` (always includes the `META_*` keys above).
    pub metadata: BTreeMap<String, String>,
    /// Environment for every process in the sandbox. May hold secrets: never log it.
    pub env: BTreeMap<String, String>,
    /// Pause instead of kill when the sandbox's timeout fires.
    pub auto_pause: bool,
    /// Egress rules (`None`: unrestricted). E2B enforces them; the local provider
    /// does not.
    pub network: Option<egress::Egress>,
    /// Give the create up if this fires before the request is sent (the pool's
    /// launches at shutdown): a request already sent is seen through, so a sandbox
    /// it made is known and can be killed rather than left running unrecorded.
    pub stop: Option<CancellationToken>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxState {
    Running,
    Paused,
}

/// A sandbox as a provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxInfo {
    pub id: String,
    pub state: SandboxState,
    pub template: String,
    pub metadata: BTreeMap<String, String>,
}

/// Which sandboxes `list` returns. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Every pair must be present in the sandbox's metadata.
    pub metadata: BTreeMap<String, String>,
    /// Only these states; empty means running and paused.
    pub states: Vec<SandboxState>,
}

/// One command to run in a sandbox. The program and its arguments are passed
/// as a vector, never through a shell, so a query given as data stays data.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    pub program: String,
    pub args: Vec<String>,
    /// Extra environment for this process (may hold secrets: never log it).
    pub env: BTreeMap<String, String>,
    /// Working directory, relative to the sandbox's home when not absolute.
    pub cwd: Option<String>,
    /// Bytes written to the process's stdin, which is then closed. `None`: no stdin.
    pub stdin: Option<Vec<u8>>,
    /// Kill the process (and its children) after this long.
    pub timeout: Option<Duration>,
    /// Keep at most this many bytes of stdout and of stderr (the rest is dropped
    /// and `truncated` is set). 0 means the provider's default (1 MiB).
    pub max_output_bytes: usize,
}

/// A piece of a running command's output, for streaming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputChunk {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// How a command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The output kept is not all the command wrote: output beyond
    /// `max_output_bytes` was dropped, or some was lost in transit (`output_lost`).
    pub truncated: bool,
    /// Stdout in particular was cut at `max_output_bytes` (stderr, diagnostics
    /// only, may be cut without it).
    pub stdout_truncated: bool,
    /// Output was lost in transit: the stream broke and was re-attached, and what
    /// the command wrote meanwhile is gone. The exit code is still the command's.
    pub output_lost: bool,
    pub duration: Duration,
}

/// Extra controls for `exec`.
#[derive(Debug, Clone, Default)]
pub struct ExecControl {
    /// Cancelling this kills the process; `exec` then returns `SandboxError::Cancelled`.
    pub cancel: CancellationToken,
    /// Output chunks are sent here as they arrive, when set.
    pub output: Option<mpsc::UnboundedSender<OutputChunk>>,
}

/// A sandbox's resource use: the latest sample its provider has.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SandboxMetrics {
    /// CPU cores the sandbox has.
    pub cpu_count: u32,
    /// CPU use, percent of all its cores (0–100).
    pub cpu_used_pct: f64,
    pub mem_used_bytes: u64,
    pub mem_total_bytes: u64,
    /// Disk used, when the provider reports it.
    pub disk_used_bytes: Option<u64>,
    /// When the sample was taken (ms since the Unix epoch).
    pub at_ms: u64,
}

/// Failures of sandbox operations, in the terms the queue needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SandboxError {
    /// The sandbox does not exist any more (killed, expired, never existed).
    #[error("sandbox not found: {0}")]
    NotFound(String),
    /// The sandbox is between states (pausing, resuming); try again shortly.
    #[error("sandbox is in transition: {0}")]
    Conflict(String),
    /// The provider asked us to slow down.
    #[error("rate limited by the sandbox provider{}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    /// A limit of our own (concurrent sandboxes, create rate) stopped the call.
    #[error("sandbox limit reached: {0}")]
    LimitReached(String),
    /// A passing failure (5xx, network, connection reset); retry with backoff.
    #[error("sandbox provider unavailable: {0}")]
    Unavailable(String),
    /// The command ran past its timeout and was killed.
    #[error("command timed out after {0:?}")]
    Timeout(Duration),
    /// The command was cancelled and killed.
    #[error("command cancelled")]
    Cancelled,
    /// The request itself is wrong (bad template, bad argument, auth); retrying won't help.
    #[error("sandbox request refused: {0}")]
    Invalid(String),
}

impl SandboxError {
    /// The job error class this failure maps into.
    pub fn class(&self) -> ErrorClass {
        match self {
            SandboxError::NotFound(_) => ErrorClass::SandboxLost,
            SandboxError::Conflict(_)
            | SandboxError::RateLimited { .. }
            | SandboxError::LimitReached(_)
            | SandboxError::Unavailable(_) => ErrorClass::Transient,
            SandboxError::Timeout(_) => ErrorClass::Timeout,
            SandboxError::Cancelled => ErrorClass::Cancelled,
            SandboxError::Invalid(_) => ErrorClass::Permanent,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SandboxError::RateLimited { retry_after } => *retry_after,
            _ => None,
        }
    }
}

impl From<SandboxError> for JobError {
    fn from(e: SandboxError) -> Self {
        let retry_after = e.retry_after();
        JobError::new(e.class(), e.to_string()).with_retry_after(retry_after)
    }
}

/// A place to run agents: create, control and run commands in sandboxes.
///
/// Implementations retry passing failures of their own transport where that is
/// safe (idempotent calls) and report what remains as a [`SandboxError`].
#[async_trait]
pub trait SandboxProvider: Send + Sync + 'static {
    /// `local` or `e2b`.
    fn name(&self) -> &'static str;

    /// Create a sandbox and return it running.
    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxInfo, SandboxError>;

    /// Reconnect to a sandbox by ID, resuming it if paused; its timeout becomes
    /// at least `timeout` from now. This is how a paused agent is resumed.
    async fn connect(&self, id: &str, timeout: Duration) -> Result<SandboxInfo, SandboxError>;

    /// `connect` for a caller that needs nothing back (the agent pool resuming its
    /// own agent, whose metadata it keeps): providers that must make an extra call
    /// to describe the sandbox skip it.
    async fn resume(&self, id: &str, timeout: Duration) -> Result<(), SandboxError> {
        self.connect(id, timeout).await.map(|_| ())
    }

    /// Pause: keep filesystem (and memory, where the provider can) for a later `connect`.
    async fn pause(&self, id: &str) -> Result<(), SandboxError>;

    /// Kill for good. Killing a sandbox that is already gone is not an error.
    async fn kill(&self, id: &str) -> Result<(), SandboxError>;

    /// Set the sandbox's remaining lifetime to `timeout` from now.
    async fn set_timeout(&self, id: &str, timeout: Duration) -> Result<(), SandboxError>;

    /// The sandboxes that match `filter`.
    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>, SandboxError>;

    /// Run one command to its end (or timeout, or cancellation), streaming its
    /// output to `control.output` when set.
    async fn exec(
        &self,
        id: &str,
        request: &ExecRequest,
        control: ExecControl,
    ) -> Result<ExecOutput, SandboxError>;

    /// Retry, once each, the kills that failed earlier (a provider that can fail
    /// a kill keeps them until confirmed); returns the sandbox IDs still not
    /// confirmed killed. Providers whose kills cannot fail this way have none.
    async fn retry_failed_kills(&self) -> Vec<String> {
        Vec::new()
    }

    /// The sandbox IDs whose kill failed and is not confirmed yet.
    fn failed_kills(&self) -> Vec<String> {
        Vec::new()
    }

    /// Whether a create or resume is waiting now because the provider's plan is full
    /// (every concurrent-sandbox slot taken). The pool then ends an idle agent to make
    /// room for a job that needs a fresh sandbox. Providers without such a limit: never.
    fn slot_wanted(&self) -> bool {
        false
    }

    /// The sandbox's latest resource-use sample. `Ok(None)`: the provider does not
    /// report metrics, or has no recent sample (a paused or just-started sandbox).
    /// For monitoring only: callers bound the time it may take and never fail
    /// work because of it.
    async fn metrics(&self, id: &str) -> Result<Option<SandboxMetrics>, SandboxError> {
        let _ = id;
        Ok(None)
    }

    /// Write a file (parents created, existing file replaced).
    async fn write_file(&self, id: &str, path: &str, contents: &[u8]) -> Result<(), SandboxError>;

    /// Read a whole file.
    async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, SandboxError>;
}
