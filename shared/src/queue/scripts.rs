//! The queue's Lua scripts, one per state transition (see `lua/`), each loaded once
//! and run with EVALSHA (`redis::Script` falls back to EVAL and reloads after a Redis
//! restart empties the script cache). `_index.lua`, `_lib.lua` and `_results.lua` are
//! prepended to each, in that order.

use std::sync::LazyLock;

use redis::Script;

pub struct Scripts {
    pub enqueue: Script,
    pub claim: Script,
    pub lease: Script,
    pub due_delayed: Script,
    pub promote_delayed: Script,
    pub renew_leases: Script,
    pub complete: Script,
    pub fail: Script,
    pub reclaim_clock: Script,
    pub reclaim_expired: Script,
    pub cancel: Script,
    pub retry_dead: Script,
    pub purge_dead: Script,
    pub enqueue_cached: Script,
    pub trim_indexes: Script,
}

/// The listing indexes and history counters: first, as `_lib.lua` keeps them too.
const INDEX_LIB: &str = include_str!("lua/_index.lua");
const LIB: &str = include_str!("lua/_lib.lua");
/// Large results and the result cache (shared/src/results/).
const RESULTS_LIB: &str = include_str!("lua/_results.lua");

fn load(body: &str) -> Script {
    Script::new(&format!("{INDEX_LIB}\n{LIB}\n{RESULTS_LIB}\n{body}"))
}

pub static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: load(include_str!("lua/enqueue-n.lua")),
    claim: load(include_str!("lua/claim-5.lua")),
    lease: load(include_str!("lua/lease-n.lua")),
    due_delayed: load(include_str!("lua/due_delayed-1.lua")),
    promote_delayed: load(include_str!("lua/promote_delayed-n.lua")),
    renew_leases: load(include_str!("lua/renew_leases-n.lua")),
    complete: load(include_str!("lua/complete-n.lua")),
    fail: load(include_str!("lua/fail-n.lua")),
    reclaim_clock: load(include_str!("lua/reclaim_clock-2.lua")),
    reclaim_expired: load(include_str!("lua/reclaim_expired-n.lua")),
    cancel: load(include_str!("lua/cancel-n.lua")),
    retry_dead: load(include_str!("lua/retry_dead-n.lua")),
    purge_dead: load(include_str!("lua/purge_dead-n.lua")),
    enqueue_cached: load(include_str!("lua/enqueue_cached-n.lua")),
    trim_indexes: load(include_str!("lua/trim_indexes-n.lua")),
});

impl Scripts {
    /// Each script's name (its file, without the key count) and SHA1 digest, the name
    /// EVALSHA calls it by: for tools and tests that audit what the scripts do.
    pub fn digests(&self) -> Vec<(&'static str, String)> {
        [
            ("enqueue", &self.enqueue),
            ("claim", &self.claim),
            ("lease", &self.lease),
            ("due_delayed", &self.due_delayed),
            ("promote_delayed", &self.promote_delayed),
            ("renew_leases", &self.renew_leases),
            ("complete", &self.complete),
            ("fail", &self.fail),
            ("reclaim_clock", &self.reclaim_clock),
            ("reclaim_expired", &self.reclaim_expired),
            ("cancel", &self.cancel),
            ("retry_dead", &self.retry_dead),
            ("purge_dead", &self.purge_dead),
            ("enqueue_cached", &self.enqueue_cached),
            ("trim_indexes", &self.trim_indexes),
        ]
        .into_iter()
        .map(|(name, script)| (name, script.get_hash().to_string()))
        .collect()
    }
}
