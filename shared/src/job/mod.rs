//! The job model: what travels through the queue.
//!
//! A job is a [`JobSpec`] (what to do, and per-job options) plus the identity the
//! producer gives it: a UUID v7 [`JobId`] and its creation time. On the wire and
//! in Redis a spec is JSON. Two kinds exist: research jobs (a query for an agent)
//! and lifecycle jobs (launch, pause, resume, terminate, refresh, scale, health-check
//! agents; publish results); each kind has its own queue.
//!
//! Validation happens here, at the edge, before anything is written: a bad query
//! is refused with a message that says what is wrong, and nothing is enqueued.

pub mod batch;
pub mod bounds;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A job's identity: a UUID v7, so IDs sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    pub fn new() -> Self {
        JobId(Uuid::now_v7())
    }

    /// A new ID for a job stored on queue shard `shard` (`queue/shards.rs`): a UUID v7
    /// whose last byte is the shard's number. That byte is random in a v7 UUID (below
    /// its counter), so IDs stay unique and still sort by creation time; the shard is
    /// found from the ID alone, with no lookup.
    pub fn for_shard(shard: u16) -> Self {
        let mut bytes = *Uuid::now_v7().as_bytes();
        bytes[15] = shard as u8;
        JobId(Uuid::from_bytes(bytes))
    }

    /// The shard this ID names (its last byte). IDs made before sharding, or not by
    /// [`JobId::for_shard`], name an arbitrary shard: their jobs live on shard 0, where
    /// a lookup falls back to (`queue/shards.rs`).
    pub fn named_shard(&self) -> u16 {
        u16::from(self.0.as_bytes()[15])
    }

    /// When the ID was made (ms, from its UUIDv7 timestamp; 0 for other UUIDs): the
    /// submission order of jobs addressed to one agent. IDs made by one process sort
    /// in the order they were made, ties included.
    pub fn submitted_ms(&self) -> u64 {
        self.0
            .get_timestamp()
            .map(|t| {
                let (secs, nanos) = t.to_unix();
                secs * 1000 + u64::from(nanos) / 1_000_000
            })
            .unwrap_or(0)
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for JobId {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim())
            .map(JobId)
            .map_err(|_| ValidationError::new(format!("not a job ID (expected a UUID): {s:?}")))
    }
}

/// Which queue a job travels on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueKind {
    Research,
    Lifecycle,
}

impl QueueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueKind::Research => "research",
            QueueKind::Lifecycle => "lifecycle",
        }
    }
    pub const ALL: [QueueKind; 2] = [QueueKind::Research, QueueKind::Lifecycle];
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One research query for one agent profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResearchJob {
    /// The question, passed to the agent as data (stdin, env or file), never as shell text.
    pub query: String,
    /// The agent profile (a key of `[agents.*]` in the settings) that answers it.
    pub agent: String,
    /// Run on this agent (sandbox) only, when set: the persistent-agent pattern.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Launch a fresh agent for this query and terminate it after: the ephemeral pattern.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

/// Agent lifecycle operations, run by the worker on the lifecycle queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum LifecycleJob {
    /// Create a sandbox for `agent` (a profile), set it up, and add it to the pool.
    Launch {
        agent: String,
        persistent: bool,
    },
    Pause {
        agent_id: String,
    },
    Resume {
        agent_id: String,
    },
    Terminate {
        agent_id: String,
    },
    /// Re-set-up every agent of a profile (e.g. after a push to its repository).
    /// With `commit` (a git profile), each agent's checkout is moved to that commit
    /// in place (a busy agent after its job) and new agents start from it; without,
    /// agents are replaced.
    Refresh {
        agent: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<String>,
    },
    /// Publish the results of `job_ids` (a batch) to the GitHub repo `repo`
    /// ("owner/name") as a Markdown + JSON report on a branch, with a pull request.
    /// Publishing the same batch again updates that branch and pull request.
    Publish {
        repo: String,
        batch_id: String,
        job_ids: Vec<JobId>,
    },
    /// Grow or shrink the pool of a profile to `size` agents.
    Scale {
        agent: String,
        size: u32,
    },
    HealthCheck,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobPayload {
    Research(ResearchJob),
    Lifecycle(LifecycleJob),
}

impl JobPayload {
    pub fn queue(&self) -> QueueKind {
        match self {
            JobPayload::Research(_) => QueueKind::Research,
            JobPayload::Lifecycle(_) => QueueKind::Lifecycle,
        }
    }
}

/// Per-job options. Unset values fall back to the queue's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    /// How many attempts in all before the job is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Retry backoff of this job: the n-th retry waits a random time in
    /// `[0, min(cap, base * 2^(n-1))]` (milliseconds). Unset: the queue's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_base_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_cap_ms: Option<u64>,
    /// Each attempt is killed after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_timeout_secs: Option<u64>,
    /// The whole job (all attempts, waits included) must end within this many
    /// seconds of submission; after that it is dead-lettered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// The same key within its TTL returns the existing job's ID instead of a new job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Set by `fleet batch`: the batch record counts this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Free-form labels, returned with the result.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// The agent's step cap for this job (Claude Code `--max-turns`, Dexter
    /// `maxIterations`); it may lower the profile's, never raise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_turns: Option<u32>,
    /// The agent's spending cap for this job in US dollars (Claude Code
    /// `--max-budget-usd`); it may lower the profile's, never raise it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_budget_usd: Option<Usd>,
    /// The most tokens (input, output and cache, all attempts) the job may use through
    /// the model gateway; a request that would pass it is refused (`budget_exceeded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Serve this job from the result cache (an identical query's recent answer) or
    /// not; unset: its profile's `cache` setting (see `results::cache`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<bool>,
}

/// An amount in US dollars. Compared by its bits, so options stay `Eq`; validation
/// refuses NaN and infinities.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Usd(pub f64);

impl PartialEq for Usd {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Usd {}

/// What to do and how: the part of a job the producer is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    #[serde(flatten)]
    pub payload: JobPayload,
    #[serde(default)]
    pub options: JobOptions,
}

impl JobSpec {
    pub fn research(query: impl Into<String>, agent: impl Into<String>) -> Self {
        JobSpec {
            payload: JobPayload::Research(ResearchJob {
                query: query.into(),
                agent: agent.into(),
                agent_id: None,
                ephemeral: false,
            }),
            options: JobOptions::default(),
        }
    }

    pub fn lifecycle(job: LifecycleJob) -> Self {
        JobSpec {
            payload: JobPayload::Lifecycle(job),
            options: JobOptions::default(),
        }
    }

    pub fn queue(&self) -> QueueKind {
        self.payload.queue()
    }

    /// Check the spec against the limits; the error names what is wrong.
    pub fn validate(&self, limits: &Limits) -> Result<(), ValidationError> {
        if let JobPayload::Research(r) = &self.payload {
            if r.query.trim().is_empty() {
                return Err(ValidationError::new("the query is empty"));
            }
            if r.query.len() > limits.max_query_bytes {
                return Err(ValidationError::new(format!(
                    "the query is {} bytes, over the limit of {} bytes (queue.max_query_bytes)",
                    r.query.len(),
                    limits.max_query_bytes
                )));
            }
            if r.query.contains('\0') {
                return Err(ValidationError::new("the query contains a NUL byte"));
            }
            check_agent(&r.agent, limits)?;
            if let Some(agent_id) = &r.agent_id {
                bounds::check_agent_id(agent_id)?;
            }
        }
        if let JobPayload::Lifecycle(
            LifecycleJob::Launch { agent, .. }
            | LifecycleJob::Refresh { agent, .. }
            | LifecycleJob::Scale { agent, .. },
        ) = &self.payload
        {
            check_agent(agent, limits)?;
        }
        if let JobPayload::Lifecycle(
            LifecycleJob::Pause { agent_id }
            | LifecycleJob::Resume { agent_id }
            | LifecycleJob::Terminate { agent_id },
        ) = &self.payload
        {
            bounds::check_agent_id(agent_id)?;
        }
        if let JobPayload::Lifecycle(LifecycleJob::Refresh {
            commit: Some(commit),
            ..
        }) = &self.payload
            && !crate::runtime::checkout::is_commit_id(commit)
        {
            return Err(ValidationError::new(format!(
                "refresh commit {commit:?} is not a commit ID (40 or 64 hex digits)"
            )));
        }
        if let JobPayload::Lifecycle(LifecycleJob::Publish {
            repo,
            batch_id,
            job_ids,
        }) = &self.payload
        {
            crate::github::RepoName::parse(repo).map_err(ValidationError::new)?;
            if batch_id.is_empty()
                || batch_id.len() > 128
                || !batch_id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(ValidationError::new(
                    "publish batch_id must be 1 to 128 letters, digits, '-' or '_'",
                ));
            }
            bounds::at_most(
                "the jobs of one publish",
                Some(job_ids.len() as u64),
                crate::github::publish::MAX_PUBLISHED_JOBS,
            )?;
        }
        if let JobPayload::Lifecycle(LifecycleJob::Scale { size, .. }) = &self.payload {
            bounds::at_most("the pool size", Some(*size), bounds::MAX_POOL_SIZE)?;
        }
        let o = &self.options;
        if o.max_attempts == Some(0) {
            return Err(ValidationError::new("max_attempts must be at least 1"));
        }
        // Upper bounds first: a value past them is refused whatever else it is.
        bounds::at_most("max_attempts", o.max_attempts, bounds::MAX_ATTEMPTS)?;
        bounds::at_most(
            "attempt_timeout_secs",
            o.attempt_timeout_secs,
            bounds::MAX_ATTEMPT_TIMEOUT_SECS,
        )?;
        bounds::at_most("deadline_secs", o.deadline_secs, bounds::MAX_DEADLINE_SECS)?;
        bounds::at_most("backoff_base_ms", o.backoff_base_ms, bounds::MAX_BACKOFF_MS)?;
        bounds::at_most("backoff_cap_ms", o.backoff_cap_ms, bounds::MAX_BACKOFF_MS)?;
        bounds::check_metadata(&o.metadata)?;
        if o.max_turns == Some(0) {
            return Err(ValidationError::new("max_turns must be at least 1"));
        }
        bounds::at_most("max_turns", o.max_turns, bounds::MAX_TURNS)?;
        if let Some(Usd(usd)) = o.max_budget_usd
            && !(usd.is_finite() && usd > 0.0 && usd <= bounds::MAX_BUDGET_USD)
        {
            return Err(ValidationError::new(format!(
                "max_budget_usd must be more than 0 and at most {}",
                bounds::MAX_BUDGET_USD
            )));
        }
        if o.max_tokens == Some(0) {
            return Err(ValidationError::new("max_tokens must be at least 1"));
        }
        if let (Some(base), Some(cap)) = (o.backoff_base_ms, o.backoff_cap_ms)
            && cap < base
        {
            return Err(ValidationError::new(
                "backoff_cap_ms must be at least backoff_base_ms",
            ));
        }
        if o.attempt_timeout_secs == Some(0) {
            return Err(ValidationError::new(
                "attempt_timeout_secs must be at least 1",
            ));
        }
        if o.deadline_secs == Some(0) {
            return Err(ValidationError::new("deadline_secs must be at least 1"));
        }
        if let Some(key) = &o.idempotency_key
            && (key.is_empty() || key.len() > 256)
        {
            return Err(ValidationError::new(
                "idempotency_key must be 1 to 256 bytes long",
            ));
        }
        Ok(())
    }
}

fn check_agent(agent: &str, limits: &Limits) -> Result<(), ValidationError> {
    if limits.agents.is_empty() || limits.agents.iter().any(|a| a == agent) {
        Ok(())
    } else {
        Err(ValidationError::new(format!(
            "unknown agent profile {agent:?} (configured: {})",
            limits.agents.join(", ")
        )))
    }
}

/// What the edge checks a spec against.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_query_bytes: usize,
    /// Known agent profiles; empty means "do not check".
    pub agents: Vec<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_query_bytes: 64 * 1024,
            agents: Vec::new(),
        }
    }
}

/// A job as stored: its ID, its spec and when it was submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    #[serde(flatten)]
    pub spec: JobSpec,
    pub created_at_ms: u64,
}

impl Job {
    pub fn new(spec: JobSpec) -> Self {
        Job {
            id: JobId::new(),
            spec,
            created_at_ms: crate::time::now_ms(),
        }
    }
}

/// Bad input, with a message a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub message: String,
}

impl ValidationError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_query_bytes: 16,
            agents: vec!["demo".into()],
        }
    }

    #[test]
    fn empty_query_is_refused() {
        let err = JobSpec::research("   ", "demo")
            .validate(&limits())
            .unwrap_err();
        assert_eq!(err.message, "the query is empty");
    }

    #[test]
    fn oversized_query_names_the_limit() {
        let err = JobSpec::research("x".repeat(17), "demo")
            .validate(&limits())
            .unwrap_err();
        assert!(err.message.contains("17 bytes"), "{err}");
        assert!(err.message.contains("queue.max_query_bytes"), "{err}");
    }

    #[test]
    fn unknown_agent_is_refused_with_the_known_ones() {
        let err = JobSpec::research("q", "nope")
            .validate(&limits())
            .unwrap_err();
        assert!(err.message.contains("\"nope\""), "{err}");
        assert!(err.message.contains("demo"), "{err}");
    }

    #[test]
    fn extreme_values_are_refused_at_the_edge() {
        // Each of these was accepted before and broke a worker (overflowing durations,
        // a deadline that wrapped) or sat in Redis for days (megabytes of labels).
        let refused = |edit: &dyn Fn(&mut JobSpec)| {
            let mut spec = JobSpec::research("q", "demo");
            edit(&mut spec);
            spec.validate(&limits())
                .expect_err("an out-of-range value must be refused")
                .message
        };
        let msg = refused(&|s| s.options.attempt_timeout_secs = Some(u64::MAX));
        assert!(msg.contains("attempt_timeout_secs"), "{msg}");
        assert!(msg.contains("at most 86400"), "{msg}");
        let msg = refused(&|s| s.options.deadline_secs = Some(u64::MAX));
        assert!(msg.contains("deadline_secs must be at most"), "{msg}");
        let msg = refused(&|s| s.options.max_attempts = Some(u32::MAX));
        assert!(msg.contains("max_attempts must be at most 100"), "{msg}");
        let msg = refused(&|s| {
            s.options.backoff_base_ms = Some(u64::MAX);
            s.options.backoff_cap_ms = Some(u64::MAX);
        });
        assert!(msg.contains("backoff_base_ms must be at most"), "{msg}");
        let msg = refused(&|s| {
            s.options.metadata = (0..500).map(|i| (format!("k{i}"), "v".into())).collect()
        });
        assert!(msg.contains("500 metadata entries"), "{msg}");
        let msg = refused(&|s| {
            s.options
                .metadata
                .insert("notes".into(), "x".repeat(9 << 20));
        });
        assert!(msg.contains("metadata value of \"notes\""), "{msg}");
        let msg = refused(&|s| {
            s.options.metadata.insert("k".repeat(200), "v".into());
        });
        assert!(msg.contains("metadata key"), "{msg}");
        let msg = refused(&|s| {
            if let JobPayload::Research(r) = &mut s.payload {
                r.agent_id = Some("a".repeat(9 << 20));
            }
        });
        assert!(msg.contains("agent_id"), "{msg}");
        let msg = refused(&|s| {
            *s = JobSpec::lifecycle(LifecycleJob::Pause {
                agent_id: "a".repeat(300),
            })
        });
        assert!(msg.contains("agent_id"), "{msg}");
        let msg = refused(&|s| {
            *s = JobSpec::lifecycle(LifecycleJob::Scale {
                agent: "demo".into(),
                size: u32::MAX,
            })
        });
        assert!(msg.contains("the pool size must be at most 1000"), "{msg}");

        // The limits themselves are accepted.
        let mut spec = JobSpec::research("q", "demo");
        spec.options.attempt_timeout_secs = Some(86_400);
        spec.options.deadline_secs = Some(30 * 86_400);
        spec.options.max_attempts = Some(100);
        spec.options.backoff_base_ms = Some(86_400_000);
        spec.options.backoff_cap_ms = Some(86_400_000);
        spec.options.metadata = (0..64)
            .map(|i| (format!("k{i}"), "v".repeat(1024)))
            .collect();
        spec.validate(&limits()).unwrap();
    }

    #[test]
    fn spec_round_trips_as_json() {
        let mut spec = JobSpec::research("What was ACME's revenue in 2023?", "demo");
        spec.options.max_attempts = Some(4);
        let job = Job::new(spec);
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"kind\":\"research\""), "{text}");
        let back: Job = serde_json::from_str(&text).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn job_ids_are_uuid_v7() {
        assert_eq!(JobId::new().0.get_version_num(), 7);
        let on_two = JobId::for_shard(2);
        assert_eq!(on_two.0.get_version_num(), 7);
        assert_eq!(on_two.named_shard(), 2);
        // Still ordered by creation within a process, ties included.
        let ids: Vec<JobId> = (0..100).map(|i| JobId::for_shard(i % 3)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
}
