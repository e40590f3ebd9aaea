//! The queue's Lua scripts, one per state transition (see `lua/`), each loaded once
//! and run with EVALSHA (`redis::Script` falls back to EVAL and reloads after a Redis
//! restart empties the script cache). `_lib.lua` is prepended to each.

use std::sync::LazyLock;

use redis::Script;

pub struct Scripts {
    pub enqueue: Script,
    pub fetch: Script,
    pub renew_leases: Script,
    pub complete: Script,
    pub fail: Script,
    pub reclaim_expired: Script,
    pub cancel: Script,
    pub retry_dead: Script,
    pub purge_dead: Script,
    pub enqueue_cached: Script,
}

const LIB: &str = include_str!("lua/_lib.lua");
/// Large results and the result cache (shared/src/results/).
const RESULTS_LIB: &str = include_str!("lua/_results.lua");

fn load(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{RESULTS_LIB}\n{body}"))
}

pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: load(include_str!("lua/enqueue-3.lua")),
    fetch: load(include_str!("lua/fetch-6.lua")),
    renew_leases: load(include_str!("lua/renew_leases-1.lua")),
    complete: load(include_str!("lua/complete-1.lua")),
    fail: load(include_str!("lua/fail-5.lua")),
    reclaim_expired: load(include_str!("lua/reclaim_expired-4.lua")),
    cancel: load(include_str!("lua/cancel-2.lua")),
    retry_dead: load(include_str!("lua/retry_dead-3.lua")),
    purge_dead: load(include_str!("lua/purge_dead-1.lua")),
    enqueue_cached: load(include_str!("lua/enqueue_cached-n.lua")),
});
