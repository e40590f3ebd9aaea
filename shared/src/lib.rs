//! dexter-fleet's core library: everything the producer (`fleet`) and the worker
//! (`fleet-worker`) share.
//!
//! The modules follow the path of one job through the system:
//!
//! - [`job`]: what a job is (research and lifecycle jobs), its ID and validation.
//! - [`error`]: how failures are classified (transient, permanent, timeout,
//!   sandbox-lost, cancelled) so the queue knows whether to retry.
//! - [`queue`]: the project's own Redis backend for apalis: one Lua script per
//!   state transition, leases with fencing tokens, delayed retries, dead letters.
//! - [`results`]: the result store, keyed by job ID, and batch records.
//! - [`events`]: live events: each attempt's output, as it happens, in a capped
//!   Redis Stream per job, and the follower that reads it.
//! - [`pool`]: the agent pool that leases sandboxes to jobs.
//! - [`admission`]: a provider's plan limits (running sandboxes, creates per
//!   second) shared by every worker through Redis.
//! - [`sandbox`]: the sandbox provider trait and its `local` and `e2b` providers.
//! - [`runtime`]: agent runtimes (`command`, `dexter`, `claude_code`) that run a
//!   query inside a sandbox.
//! - [`github`]: the GitHub REST client (rate limits, App tokens), webhook
//!   verification and planning, issue comments and published reports.
//! - [`settings`]: configuration from `config/default.toml`, an optional file,
//!   environment variables and `.env`, validated with errors that name the key.
//! - [`gateway`]: the model gateway: agents reach model providers and data APIs
//!   through it with per-attempt tokens; it meters, prices, budgets and rate-limits.
//! - [`secret`]: a wrapper that keeps API keys out of logs and debug output.

pub mod admission;
pub mod connection;
pub mod error;
pub mod events;
pub mod gateway;
pub mod github;
pub mod job;
pub mod pool;
pub mod queue;
pub mod results;
pub mod runtime;
pub mod sandbox;
pub mod secret;
pub mod settings;
pub mod time;
