//! The Redis key map of one queue. Every key starts with `<key_prefix>:{<queue>}:`;
//! the braces are a Redis Cluster hash tag, so one queue lives in one slot and each
//! Lua script touches keys of one slot only. Callers pass every key they can name in
//! KEYS; what a script may reach undeclared (records it finds by reading) is listed in
//! docs/ARCHITECTURE.md, "Keys and Redis Cluster", and checked by
//! tests/tests/script_keys.rs.
//!
//! | key                        | type   | holds                                              |
//! |----------------------------|--------|----------------------------------------------------|
//! | `…:wait`                   | LIST   | ready job IDs (LPUSH in, RPOP out: FIFO)           |
//! | `…:active`                 | ZSET   | running job ID → lease expiry (ms)                 |
//! | `…:delayed`                | ZSET   | job ID → run_at (ms): retries and scheduled jobs   |
//! | `…:dead`                   | ZSET   | dead-lettered job ID → when (ms)                   |
//! | `…:marker`                 | ZSET   | one member; wakes a worker blocked in BZPOPMIN     |
//! | `…:token`                  | STRING | fencing-token counter (tokens: `<counter>.<nonce>`) |
//! | `…:reclaim_clock`          | HASH   | when reclaim last ran and until when it waits after a stall (Redis' clock) |
//! | `…:job:<id>`               | HASH   | the job: spec, status, attempts, lease, result     |
//! | `…:attempts:<id>`          | LIST   | one JSON record per attempt                        |
//! | `…:events:<id>`            | STREAM | live events of the job's attempts (`crate::events`; capped, expires with the result) |
//! | `…:batch:<id>`             | HASH   | a batch: total and a counter per status            |
//! | `…:idem:<key>`             | STRING | idempotency key → job ID (with its TTL)            |
//! | `…:answer:<id>`            | HASH   | a large answer in chunks: field `0`, `1`, … (results/store.rs) |
//! | `…:staged:<id>:<token>`    | HASH   | an attempt's answer chunks until its complete renames them |
//! | `…:cache:<sha256>`         | HASH   | result cache entry: `job`, `state` (running/done), `f:<id>` followers |
//! | `…:fetch:<worker>:<fid>`   | STRING | what one fetch leased, for its retries (lease TTL) |
//! | `…:worker:<name>`          | STRING | a live worker (expires one lease TTL after its last beat) |
//! | `…:workers`                | SET    | names of workers that announced themselves (dead ones are removed by the reconcile that killed their sandboxes) |
//! | `…:done` (channel)         | PUBSUB | job IDs as they reach an end state                 |
//! | `…:cancel` (channel)       | PUBSUB | job IDs whose cancellation was requested           |

use crate::job::QueueKind;

#[derive(Debug, Clone)]
pub struct Keys {
    /// `<key_prefix>:{<queue>}:`, passed to every script.
    pub prefix: String,
    pub wait: String,
    pub active: String,
    pub delayed: String,
    pub dead: String,
    pub marker: String,
    pub token: String,
    pub reclaim_clock: String,
    pub done_channel: String,
    pub cancel_channel: String,
}

impl Keys {
    pub fn new(key_prefix: &str, queue: QueueKind) -> Keys {
        Keys::for_shard(key_prefix, queue, 0)
    }

    /// The keys of one shard of a queue (`shards.rs`): shard 0 keeps the queue's own
    /// tag, `{research}` (what existed before sharding stays valid); shard k ≥ 1 is
    /// `{research:k}`, a hash tag of its own and so, on a cluster, a slot of its own.
    pub fn for_shard(key_prefix: &str, queue: QueueKind, shard: u16) -> Keys {
        let prefix = if shard == 0 {
            format!("{key_prefix}:{{{}}}:", queue.as_str())
        } else {
            format!("{key_prefix}:{{{}:{shard}}}:", queue.as_str())
        };
        let k = |name: &str| format!("{prefix}{name}");
        Keys {
            wait: k("wait"),
            active: k("active"),
            delayed: k("delayed"),
            dead: k("dead"),
            marker: k("marker"),
            token: k("token"),
            reclaim_clock: k("reclaim_clock"),
            done_channel: k("done"),
            cancel_channel: k("cancel"),
            prefix,
        }
    }

    pub fn job(&self, id: &str) -> String {
        format!("{}job:{id}", self.prefix)
    }

    pub fn attempts(&self, id: &str) -> String {
        format!("{}attempts:{id}", self.prefix)
    }

    /// The job's live events (a capped stream; see `crate::events`).
    pub fn events(&self, id: &str) -> String {
        format!("{}events:{id}", self.prefix)
    }

    pub fn worker(&self, name: &str) -> String {
        format!("{}worker:{name}", self.prefix)
    }

    pub fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }

    /// An idempotency key's record (`idem:` alone for none: scripts declare it unused).
    pub fn idem(&self, key: &str) -> String {
        format!("{}idem:{key}", self.prefix)
    }

    /// What one fetch leased, for its retries (fetch-7.lua).
    pub fn fetch(&self, worker: &str, fetch_id: &str) -> String {
        format!("{}fetch:{worker}:{fetch_id}", self.prefix)
    }

    pub fn batch(&self, id: &str) -> String {
        format!("{}batch:{id}", self.prefix)
    }

    /// A large answer's chunks (results/store.rs).
    pub fn answer(&self, id: &str) -> String {
        format!("{}answer:{id}", self.prefix)
    }

    /// An attempt's answer chunks before its complete (results/store.rs).
    pub fn staged_answer(&self, id: &str, token: &str) -> String {
        format!("{}staged:{id}:{token}", self.prefix)
    }

    /// A result cache entry, by the digest of its identity (results/cache.rs).
    pub fn cache(&self, digest: &str) -> String {
        format!("{}cache:{digest}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new("fleet", QueueKind::Research);
        assert_eq!(k.wait, "fleet:{research}:wait");
        assert_eq!(k.job("abc"), "fleet:{research}:job:abc");
        assert_eq!(k.events("abc"), "fleet:{research}:events:abc");
        for key in [&k.wait, &k.active, &k.delayed, &k.dead, &k.marker, &k.token] {
            assert!(key.contains("{research}"));
        }
    }

    #[test]
    fn each_shard_has_its_own_hash_tag_and_shard_zero_keeps_the_old_one() {
        assert_eq!(
            Keys::for_shard("fleet", QueueKind::Research, 0).wait,
            Keys::new("fleet", QueueKind::Research).wait
        );
        let k = Keys::for_shard("fleet", QueueKind::Research, 3);
        assert_eq!(k.wait, "fleet:{research:3}:wait");
        assert_eq!(k.job("abc"), "fleet:{research:3}:job:abc");
        assert_eq!(k.done_channel, "fleet:{research:3}:done");
    }
}
