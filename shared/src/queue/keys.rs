//! The Redis key map of one queue. Every key starts with `<key_prefix>:{<queue>}:`;
//! the braces are a Redis Cluster hash tag, so one queue lives in one slot and each
//! Lua script touches keys of one slot only. A sharded queue (`shards.rs`) has this map
//! once per shard, each under its own tag ([`shard_tag`]: `{research}` for shard 0). Callers pass every key a
//! script touches in KEYS, reading first the names held in records (a job's batch and
//! cache entry, an entry's jobs, the IDs a fetch claims): docs/ARCHITECTURE.md, "Keys
//! and Redis Cluster"; checked by tests/tests/script_keys.rs.
//!
//! | key                        | type   | holds                                              |
//! |----------------------------|--------|----------------------------------------------------|
//! | `…:wait`                   | LIST   | ready job IDs (LPUSH in, RPOP out: FIFO)           |
//! | `…:active`                 | ZSET   | running (or claimed) job ID → lease expiry (ms)    |
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
//! | `…:fetch:<worker>:<fid>`   | STRING | what one fetch claimed, then leased, for its retries (lease TTL) |
//! | `…:worker:<name>`          | STRING | a live worker (expires one lease TTL after its last beat) |
//! | `…:workers`                | SET    | names of workers that announced themselves (dead ones are removed by the reconcile that killed their sandboxes) |
//! | `…:ix:<status>`            | ZSET   | listing index: IDs of the jobs in that status, all scored 0 (ordered by ID); `running` has none (`active` is its index) |
//! | `…:ix:agent:<name>`        | ZSET   | listing index: jobs for an agent profile or addressed to an agent ID |
//! | `…:ix:batch:<id>`          | ZSET   | listing index: a batch's jobs                      |
//! | `…:ix:ended`               | ZSET   | `<id>\t<ix>` → when the job ended (ms): for the index trim |
//! | `…:hist:cur`               | HASH   | this minute's counters (`minute` = its start, ms)  |
//! | `…:hist:log`               | ZSET   | earlier minutes' counters, scored by minute; 8 days kept |
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
    /// The index tail every status-changing script declares last (lua/_index.lua):
    /// the six status indexes (`running` has none: [`Keys::status_index`]),
    /// `ix:ended`, `hist:cur`, `hist:log`.
    pub index_tail: [String; 9],
}

/// The statuses with an index, in the order of the index tail.
pub const INDEXED_STATUSES: [&str; 7] = [
    "queued",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "dead",
    "cancelled",
];

/// The index tail under `prefix` (lua/_index.lua): the six status indexes, `ix:ended`,
/// `hist:cur`, `hist:log`.
fn index_tail(prefix: &str) -> [String; 9] {
    [
        "ix:queued",
        "ix:retrying",
        "ix:succeeded",
        "ix:failed",
        "ix:dead",
        "ix:cancelled",
        "ix:ended",
        "hist:cur",
        "hist:log",
    ]
    .map(|name| format!("{prefix}{name}"))
}

impl Keys {
    pub fn new(key_prefix: &str, queue: QueueKind) -> Keys {
        Keys::for_shard(key_prefix, queue, 0)
    }

    /// The keys of one shard of a queue (`shards.rs`): shard 0 keeps the queue's own
    /// tag, `{research}` (what existed before sharding stays valid); shard k ≥ 1 has a
    /// tag of its own, `{research:k.j}` ([`shard_tag`]), and so, on a cluster, a slot of
    /// its own.
    pub fn for_shard(key_prefix: &str, queue: QueueKind, shard: u16) -> Keys {
        let prefix = format!("{key_prefix}:{{{}}}:", shard_tag(queue.as_str(), shard));
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
            index_tail: index_tail(&prefix),
            prefix,
        }
    }

    /// The index of jobs in `status` (one of [`INDEXED_STATUSES`]). For `running` it
    /// is `active`, the leases (ID → lease expiry, not ordered by ID): no script keeps
    /// a second set of the running jobs, and the listing reads this one whole.
    pub fn status_index(&self, status: &str) -> String {
        if status == "running" {
            return self.active.clone();
        }
        format!("{}ix:{status}", self.prefix)
    }

    /// A membership index by its suffix after `ix:` (`agent:<name>`, `batch:<id>`).
    pub fn index(&self, suffix: &str) -> String {
        format!("{}ix:{suffix}", self.prefix)
    }

    /// These keys as a queue with `queue.listing_indexes = on` uses them: when off,
    /// the tail the scripts get names `ix:off` in place of each of its seven index
    /// keys, and lua/_index.lua then keeps no index (only the history).
    pub fn with_indexes(mut self, on: bool) -> Keys {
        if !on {
            let off = format!("{}ix:off", self.prefix);
            for k in &mut self.index_tail[..7] {
                k.clone_from(&off);
            }
        }
        self
    }

    /// Whether the scripts keep the listing indexes ([`Keys::with_indexes`]).
    pub fn indexes_on(&self) -> bool {
        self.index_tail[0] != self.index_tail[1]
    }

    /// The index tail with every index named, whatever the setting: the trim takes
    /// out what was indexed before the indexes were turned off.
    pub fn full_index_tail(&self) -> [String; 9] {
        index_tail(&self.prefix)
    }

    pub fn ended_index(&self) -> String {
        format!("{}ix:ended", self.prefix)
    }

    pub fn history_current(&self) -> &str {
        &self.index_tail[7]
    }

    pub fn history_log(&self) -> &str {
        &self.index_tail[8]
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

    /// What one fetch claimed, then leased, for its retries (claim-5.lua, lease-n.lua).
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

/// The Redis Cluster slot of a hash tag (CRC16/XMODEM of it, modulo 16384).
pub fn cluster_slot(tag: &str) -> u16 {
    let mut crc: u16 = 0;
    for b in tag.as_bytes() {
        crc ^= u16::from(*b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % SLOTS
}

const SLOTS: u16 = 16384;
/// Tags tried per shard when choosing its slot.
const TAG_CANDIDATES: u32 = 256;

/// The hash tag of shard `shard` of queue `queue`: `queue` itself for shard 0; for
/// shard k, `queue:k.j` with the `j` (below 256) that spreads the shards' slots
/// evenly: shard k lands in a part of the slot space, cut into k+1 equal parts, that
/// no earlier shard holds, as far as it can from the earlier ones. On a cluster whose
/// slots are split evenly between its primaries (as `redis-cli --cluster create`
/// makes it), N shards then land on N different primaries for every N up to 7, and
/// near-evenly beyond. A pure function of (queue, k): every process, of every
/// version, names a shard's keys alike (pinned by a test), whatever `queue.shards` is.
pub fn shard_tag(queue: &str, shard: u16) -> String {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    /// Per queue name, the tags chosen so far and their slots.
    type Chosen = HashMap<String, Vec<(String, u16)>>;
    static CHOSEN: OnceLock<Mutex<Chosen>> = OnceLock::new();
    let mut chosen = CHOSEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let tags = chosen
        .entry(queue.to_string())
        .or_insert_with(|| vec![(queue.to_string(), cluster_slot(queue))]);
    while tags.len() <= usize::from(shard) {
        let k = tags.len();
        let parts = k as u32 + 1;
        let part = |slot: u16| u32::from(slot) * parts / u32::from(SLOTS);
        let mut best: Option<((bool, u16), String, u16)> = None;
        for j in 0..TAG_CANDIDATES {
            let tag = format!("{queue}:{k}.{j}");
            let slot = cluster_slot(&tag);
            let alone = tags.iter().all(|(_, s)| part(*s) != part(slot));
            let gap = tags
                .iter()
                .map(|(_, s)| s.abs_diff(slot))
                .min()
                .unwrap_or(0);
            if best
                .as_ref()
                .is_none_or(|(score, _, _)| (alone, gap) > *score)
            {
                best = Some(((alone, gap), tag, slot));
            }
        }
        let (_, tag, slot) = best.expect("candidates were tried");
        tags.push((tag, slot));
    }
    tags[usize::from(shard)].0.clone()
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
        assert_eq!(k.wait, "fleet:{research:3.33}:wait");
        assert_eq!(k.job("abc"), "fleet:{research:3.33}:job:abc");
        assert_eq!(k.done_channel, "fleet:{research:3.33}:done");
    }

    #[test]
    fn shard_tags_never_change_and_spread_over_the_slot_space() {
        // Pinned: a job's keys must be found by every version of the fleet.
        let tags: Vec<String> = (0..4).map(|k| shard_tag("research", k)).collect();
        assert_eq!(
            tags,
            [
                "research",
                "research:1.102",
                "research:2.170",
                "research:3.33"
            ]
        );
        assert_eq!(cluster_slot("research"), 11833);
        // CRC16/XMODEM's check value (below 16384, so the slot itself).
        assert_eq!(cluster_slot("123456789"), 0x31c3);
        // Every N up to 7: the first N shards hold N different N-ths of the slots.
        for n in 1..=7u32 {
            let mut parts: Vec<u32> = (0..n as u16)
                .map(|k| u32::from(cluster_slot(&shard_tag("research", k))) * n / 16384)
                .collect();
            parts.sort_unstable();
            parts.dedup();
            assert_eq!(parts.len(), n as usize, "{n} shards");
        }
    }
}
