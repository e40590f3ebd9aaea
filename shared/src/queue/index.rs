//! The listing indexes and the history counters, Rust side (the scripts keep them:
//! lua/_index.lua).
//!
//! - **Status indexes** `ix:<status>`: every status-changing script moves a job's ID
//!   from one to the next in the same step as its status, so a job is in exactly the
//!   index of its status. All members score 0: Redis orders them by ID, and job IDs are
//!   UUID v7, so that is creation order and a page is one `ZRANGEBYLEX`.
//! - **Membership indexes** `ix:agent:<name>` and `ix:batch:<id>`: written once, at
//!   enqueue (the agent is the profile a job names and the agent ID it is addressed to,
//!   as the listing's `agent` filter means it: known when it is written, so declared;
//!   the agent a job happened to run on is in its result, not indexed).
//! - **Trim**: an ended job (succeeded, failed, cancelled) is noted in `ix:ended` with
//!   when it ended and its memberships; once its record has expired (the result TTL),
//!   [`RedisQueue::trim_indexes`] takes it out of every index, a bounded number per
//!   call. Dead letters stay (they are kept until retried or purged). A listing skips an
//!   entry whose record is gone before the trim got to it.
//! - **History**: per-minute counters in `hist:cur` (this minute) rolled into
//!   `hist:log` (one member per minute, 8 days kept): [`RedisQueue::history`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::job::{JobPayload, JobSpec, LifecycleJob};
use crate::queue::{QueueError, RedisQueue, SCRIPTS};

/// Index entries the trim takes out per script call.
pub const TRIM_CHUNK: usize = 500;

/// The membership index suffixes (after `ix:`) of a job: its agent profile, the agent
/// ID it is addressed to, its batch. Joined by tabs, this is the job's `ix` field.
pub fn memberships(spec: &JobSpec, batch: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(3);
    let (profile, agent_id) = job_agents(spec);
    if let Some(p) = profile {
        out.push(format!("agent:{p}"));
    }
    if let Some(a) = agent_id
        && Some(a) != profile
    {
        out.push(format!("agent:{a}"));
    }
    if !batch.is_empty() {
        out.push(format!("batch:{batch}"));
    }
    // A tab inside a name would split it: such a name is not indexed (the listing's
    // filter on top still finds the job through another index).
    out.retain(|s| !s.contains('\t'));
    out
}

/// The agent profile a job names and the persistent agent it is addressed to.
pub fn job_agents(spec: &JobSpec) -> (Option<&str>, Option<&str>) {
    use LifecycleJob as L;
    match &spec.payload {
        JobPayload::Research(r) => (Some(&r.agent), r.agent_id.as_deref()),
        JobPayload::Lifecycle(
            L::Launch { agent, .. } | L::Refresh { agent, .. } | L::Scale { agent, .. },
        ) => (Some(agent), None),
        JobPayload::Lifecycle(
            L::Pause { agent_id } | L::Resume { agent_id } | L::Terminate { agent_id },
        ) => (None, Some(agent_id)),
        _ => (None, None),
    }
}

/// The history of one minute (or, summed, of several).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HistoryMinute {
    /// Start of the minute (Unix ms, Redis' clock).
    pub minute: u64,
    /// Jobs enqueued (an idempotent repeat is not counted).
    pub enqueued: u64,
    /// Jobs that succeeded (served from the result cache too).
    pub succeeded: u64,
    /// Attempts that failed: settled retry or dead, or their lease was lost.
    pub failed: u64,
    /// Jobs dead-lettered.
    pub dead: u64,
    /// Attempts put back to run again: retries after a failure or a lost lease, and
    /// dead letters retried.
    pub retried: u64,
    /// What the jobs that succeeded cost (USD, all their attempts; where known).
    pub cost_usd: f64,
}

impl HistoryMinute {
    fn add_field(&mut self, field: &str, n: i64) {
        let n = n.max(0) as u64;
        match field {
            "enqueued" => self.enqueued += n,
            "succeeded" => self.succeeded += n,
            "failed" => self.failed += n,
            "dead" => self.dead += n,
            "retried" => self.retried += n,
            "cost" => self.cost_usd += n as f64 / 1e6,
            _ => {}
        }
    }

    /// Add another minute's counts (the same minute from another queue).
    pub fn add(&mut self, o: &HistoryMinute) {
        self.enqueued += o.enqueued;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.dead += o.dead;
        self.retried += o.retried;
        self.cost_usd += o.cost_usd;
    }

    /// A `hist:log` member: "<minute> field=n ...".
    fn parse_log(member: &str) -> Option<HistoryMinute> {
        let mut parts = member.split(' ');
        let mut m = HistoryMinute {
            minute: parts.next()?.parse().ok()?,
            ..Default::default()
        };
        for p in parts {
            if let Some((k, v)) = p.split_once('=') {
                m.add_field(k, v.parse().unwrap_or(0));
            }
        }
        Some(m)
    }
}

/// A cost in USD as the scripts count it: whole micro-USD.
pub fn micro_usd(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).round() as u64
    } else {
        0
    }
}

impl RedisQueue {
    /// Take up to `max` jobs whose records have expired out of the listing indexes;
    /// returns how many (trim_indexes-n.lua). Each worker calls it on its reclaim tick.
    pub async fn trim_indexes(&self, max: usize) -> Result<u64, QueueError> {
        let ttl = self.config().result_ttl.as_millis() as u64;
        if ttl == 0 || max == 0 {
            return Ok(0);
        }
        let keys = self.keys().clone();
        let entries: Vec<String> = self
            .retrying("trim_indexes_read", || {
                let mut conn = self.connection();
                let ended = keys.ended_index().to_string();
                async move {
                    let (secs, micros): (u64, u64) =
                        redis::cmd("TIME").query_async(&mut conn).await?;
                    let now = secs * 1000 + micros / 1000;
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(ended)
                        .arg("-inf")
                        .arg(now.saturating_sub(ttl))
                        .arg("LIMIT")
                        .arg(0)
                        .arg(max)
                        .query_async(&mut conn)
                        .await
                }
            })
            .await?;
        if entries.is_empty() {
            return Ok(0);
        }
        let mut members: Vec<&str> = Vec::new();
        for e in &entries {
            for suffix in e.split('\t').skip(1).filter(|s| !s.is_empty()) {
                if !members.contains(&suffix) {
                    members.push(suffix);
                }
            }
        }
        self.retrying("trim_indexes", || {
            let mut conn = self.connection();
            let mut inv = SCRIPTS.trim_indexes.prepare_invoke();
            for e in &entries {
                inv.key(keys.job(e.split('\t').next().unwrap_or("")));
            }
            for m in &members {
                inv.key(keys.index(m));
            }
            // every index named, also when they are off: what was indexed before
            // goes when its record expires
            for k in keys.full_index_tail() {
                inv.key(k);
            }
            inv.arg(&keys.prefix).arg(ttl).arg(members.len());
            for e in &entries {
                inv.arg(e);
            }
            async move { inv.invoke_async(&mut conn).await }
        })
        .await
    }

    /// The history of the minutes that start within `[from_ms, to_ms]`, oldest first,
    /// one entry per minute that counted anything.
    pub async fn history(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<HistoryMinute>, QueueError> {
        let keys = self.keys().clone();
        let (log, cur): (Vec<String>, BTreeMap<String, String>) = self
            .retrying("history", || {
                let mut conn = self.connection();
                let mut pipe = redis::pipe();
                pipe.cmd("ZRANGEBYSCORE")
                    .arg(keys.history_log())
                    .arg(from_ms)
                    .arg(to_ms)
                    .cmd("HGETALL")
                    .arg(keys.history_current());
                async move { pipe.query_async(&mut conn).await }
            })
            .await?;
        let mut by_minute: BTreeMap<u64, HistoryMinute> = BTreeMap::new();
        let mut put = |m: HistoryMinute| {
            by_minute
                .entry(m.minute)
                .or_insert(HistoryMinute {
                    minute: m.minute,
                    ..Default::default()
                })
                .add(&m);
        };
        log.iter()
            .filter_map(|s| HistoryMinute::parse_log(s))
            .for_each(&mut put);
        if let Some(minute) = cur.get("minute").and_then(|m| m.parse::<u64>().ok())
            && (from_ms..=to_ms).contains(&minute)
        {
            let mut m = HistoryMinute {
                minute,
                ..Default::default()
            };
            for (k, v) in &cur {
                m.add_field(k, v.parse().unwrap_or(0));
            }
            put(m);
        }
        Ok(by_minute.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_research_job_joins_its_profile_agent_and_batch() {
        let mut spec = JobSpec::research("q", "dexter");
        assert_eq!(memberships(&spec, ""), vec!["agent:dexter"]);
        if let JobPayload::Research(r) = &mut spec.payload {
            r.agent_id = Some("agt-1".into());
        }
        assert_eq!(
            memberships(&spec, "b1"),
            vec!["agent:dexter", "agent:agt-1", "batch:b1"]
        );
    }

    #[test]
    fn log_members_parse_and_unknown_fields_are_ignored() {
        let m = HistoryMinute::parse_log("60000 enqueued=3 cost=1500000 other=9").unwrap();
        assert_eq!(m.minute, 60_000);
        assert_eq!(m.enqueued, 3);
        assert!((m.cost_usd - 1.5).abs() < 1e-9);
        assert_eq!(HistoryMinute::parse_log("x"), None);
        assert_eq!(micro_usd(0.0000015), 2);
        assert_eq!(micro_usd(f64::NAN), 0);
    }
}
