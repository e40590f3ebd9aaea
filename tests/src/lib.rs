//! Test support for dexter-fleet's integration tests (in `tests/tests/`) and
//! benchmarks: a real `redis-server` per test, settings and queue helpers, and (in
//! `fake_e2b`) a fake E2B server that follows E2B's published specs and injects faults.

pub mod agent_clis;
pub mod fake_anthropic;
pub mod fake_e2b;
pub mod fake_github;
pub mod fake_openai;
pub mod fixture;
pub mod git_http;
pub mod harness;
pub mod processes;
pub mod queue_contract;
pub mod redis_server;
pub mod script_audit;
pub mod tcp_proxy;
pub mod topology;

pub use redis_server::RedisServer;
