//! The result cache: identical research queries answered once.
//!
//! A research job uses the cache when its own `cache` option says so, or, without one,
//! when its profile has `cache = true` (jobs addressed to one agent by `agent_id` only
//! with their own `cache = true`: a persistent agent may carry state between queries).
//! Its identity is the SHA-256 of:
//!
//! - the profile name;
//! - the profile's code revision ([`code_revision`]): today its `repo` setting as
//!   written, since the fleet does not resolve a commit; this is the hook for a commit
//!   hash once the pool knows which commit an agent runs;
//! - the job's step and spending caps (`max_turns`, `max_budget_usd`), which change
//!   what the agent may do;
//! - the normalized query ([`normalize_query`]): leading and trailing whitespace removed
//!   and every run of whitespace inside (spaces, tabs, newlines: Unicode `White_Space`)
//!   made one space. Case, punctuation and everything else are kept as they are.
//!
//! The lookup happens in the enqueue script itself (enqueue_cached-n.lua), one atomic
//! step per call, so two identical jobs never both run:
//! - a **hit** (an identical job succeeded within `results.cache_ttl_secs`) writes the
//!   new job `succeeded` at once with that result, marked `cached: true` and
//!   `cached_from: <job ID>`, and a copy of its stored answer; no agent runs;
//! - an identical job still **queued or running** makes the new job wait on it (status
//!   `queued`, in no ready list); when it succeeds, every job waiting gets its result
//!   (marked the same way). This is how a batch with the same query ten times runs the
//!   agent once;
//! - otherwise the job runs, and its success fills the cache.
//!
//! Failures are never cached. When the job others wait on ends without a result (dead,
//! cancelled), the first job waiting takes over and runs the query itself, and the
//! others wait on that one: each waiting job ends with its own outcome, none is failed
//! for another's failure. A cancelled waiting job just stops waiting.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::job::{Job, JobId, JobPayload};
use crate::queue::{QueueError, RedisQueue};
use crate::settings::{AgentProfile, Settings};

/// What the cache needs to know of one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileCache {
    /// `cache = true` in the profile.
    pub enabled: bool,
    /// What identifies the agent's code ([`code_revision`]).
    pub revision: String,
}

/// The cache's settings: its TTL and each profile's part.
#[derive(Debug, Clone, Default)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub profiles: BTreeMap<String, ProfileCache>,
}

impl CacheConfig {
    pub fn from_settings(settings: &Settings) -> CacheConfig {
        // Never past the result TTL: a hit serves the record of the job that answered.
        let mut ttl = Duration::from_secs(settings.results.cache_ttl_secs);
        if settings.queue.result_ttl_secs > 0 {
            ttl = ttl.min(Duration::from_secs(settings.queue.result_ttl_secs));
        }
        CacheConfig {
            ttl,
            profiles: settings
                .agents
                .iter()
                .map(|(name, p)| {
                    let cache = ProfileCache {
                        enabled: p.cache,
                        revision: code_revision(p),
                    };
                    (name.clone(), cache)
                })
                .collect(),
        }
    }

    /// The digest of `job`'s identity when it uses the cache, else `None`.
    pub fn identity(&self, job: &Job) -> Option<String> {
        let JobPayload::Research(research) = &job.spec.payload else {
            return None;
        };
        let profile = self.profiles.get(&research.agent)?;
        let wanted = match job.spec.options.cache {
            Some(wanted) => wanted,
            None => profile.enabled && research.agent_id.is_none(),
        };
        if !wanted {
            return None;
        }
        let options = &job.spec.options;
        let identity = format!(
            "v1\n{}\n{}\n{}\n{}\n{}",
            research.agent,
            profile.revision,
            options.max_turns.map(|n| n.to_string()).unwrap_or_default(),
            options
                .max_budget_usd
                .map(|usd| usd.0.to_string())
                .unwrap_or_default(),
            normalize_query(&research.query),
        );
        Some(hex(ring::digest::digest(
            &ring::digest::SHA256,
            identity.as_bytes(),
        )
        .as_ref()))
    }
}

/// What identifies a profile's code in the cache identity. Today the profile's `repo`
/// as configured (a URL or a path, with any ref written in it): the fleet clones or
/// copies it without resolving a commit. Hook: when the pool records the commit an
/// agent was set up from, return that hash here, and a new commit misses the cache.
pub fn code_revision(profile: &AgentProfile) -> String {
    profile.repo.trim().to_string()
}

/// A query as the cache compares it: trimmed, each run of whitespace one space.
pub fn normalize_query(query: &str) -> String {
    query.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Jobs per enqueue_cached call (its cache keys travel in KEYS).
const CACHED_CHUNK: usize = 500;

impl RedisQueue {
    /// Whether any of `jobs` uses the result cache.
    pub fn any_cached(&self, jobs: &[Job]) -> bool {
        jobs.iter()
            .any(|j| self.config().cache.identity(j).is_some())
    }

    /// Enqueue `jobs` of which some use the cache: those through enqueue_cached (the
    /// lookup and the write in one step), the others as usual. IDs in `jobs`' order.
    pub(crate) async fn enqueue_with_cache(
        &self,
        jobs: &[Job],
        batch_id: Option<&str>,
    ) -> Result<Vec<JobId>, QueueError> {
        let identities: Vec<Option<String>> = jobs
            .iter()
            .map(|j| self.config().cache.identity(j))
            .collect();
        let plain: Vec<Job> = jobs
            .iter()
            .zip(&identities)
            .filter(|(_, i)| i.is_none())
            .map(|(j, _)| j.clone())
            .collect();
        let mut plain_ids = if plain.is_empty() {
            Vec::new()
        } else {
            self.enqueue_uncached(&plain, batch_id).await?
        }
        .into_iter();
        let cached: Vec<(&Job, &String)> = jobs
            .iter()
            .zip(&identities)
            .filter_map(|(j, i)| i.as_ref().map(|i| (j, i)))
            .collect();
        let mut cached_ids = Vec::with_capacity(cached.len());
        let ttl_ms = self.config().cache.ttl.as_millis().max(1).to_string();
        for chunk in cached.chunks(CACHED_CHUNK) {
            // Keys: wait, marker, each job's cache entry; then per job its record,
            // idempotency key and answer; then each batch record once
            // (enqueue_cached-n.lua).
            let mut keys = vec![self.keys().wait.clone(), self.keys().marker.clone()];
            let mut job_keys = Vec::with_capacity(chunk.len() * 3);
            let mut batches: Vec<String> = Vec::new();
            let rows: Vec<_> = chunk
                .iter()
                .map(|(job, _)| self.enqueue_row(job, batch_id))
                .collect();
            let indexes: Vec<String> = crate::queue::row_indexes(rows.iter())
                .into_iter()
                .map(|i| self.keys().index(i))
                .collect();
            let mut args = vec![
                self.keys().prefix.clone(),
                self.config().result_ttl.as_millis().to_string(),
                self.config().idempotency_ttl.as_millis().to_string(),
                indexes.len().to_string(),
            ];
            for ((_, identity), row) in chunk.iter().zip(rows) {
                keys.push(self.keys().cache(identity));
                job_keys.extend([
                    self.keys().job(&row.id),
                    self.keys().idem(&row.idempotency_key),
                    self.keys().answer(&row.id),
                ]);
                if !row.batch.is_empty() && !batches.contains(&row.batch) {
                    batches.push(row.batch.clone());
                }
                args.extend([
                    row.id,
                    row.spec_json,
                    row.meta,
                    row.batch,
                    row.idempotency_key,
                    ttl_ms.clone(),
                    row.ix,
                ]);
            }
            keys.extend(job_keys);
            keys.extend(batches.iter().map(|b| self.keys().batch(b)));
            let mut entries: Vec<&String> = keys[2..2 + chunk.len()].iter().collect();
            entries.sort();
            entries.dedup();
            let ids: Vec<String> = self
                .retrying("enqueue_cached", || async {
                    // The job each entry names, read first so that it is declared; an
                    // entry taken over in between sends the call back (no IDs): again.
                    for _ in 0..=crate::queue::REREADS {
                        let mut conn = self.connection();
                        let mut pipe = redis::pipe();
                        for entry in &entries {
                            pipe.hget(*entry, "job");
                        }
                        let leaders: Vec<Option<String>> = pipe.query_async(&mut conn).await?;
                        let mut inv = crate::queue::scripts_enqueue_cached().prepare_invoke();
                        for k in &keys {
                            inv.key(k);
                        }
                        for leader in leaders.iter().flatten() {
                            inv.key(self.keys().job(leader))
                                .key(self.keys().answer(leader));
                        }
                        for k in indexes.iter().chain(&self.keys().index_tail) {
                            inv.key(k);
                        }
                        for a in &args {
                            inv.arg(a);
                        }
                        let ids: Vec<String> = inv.invoke_async(&mut conn).await?;
                        if !ids.is_empty() {
                            return Ok(ids);
                        }
                    }
                    Err(crate::queue::keys_kept_changing())
                })
                .await?;
            for id in ids {
                cached_ids.push(
                    id.parse()
                        .map_err(|_| QueueError::Corrupt(format!("job ID {id:?}")))?,
                );
            }
        }
        let mut cached_ids = cached_ids.into_iter();
        identities
            .iter()
            .map(|i| {
                let next = if i.is_some() {
                    cached_ids.next()
                } else {
                    plain_ids.next()
                };
                next.ok_or_else(|| QueueError::Corrupt("enqueue returned too few IDs".into()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobSpec;

    #[test]
    fn normalization_trims_and_collapses_whitespace_only() {
        assert_eq!(
            normalize_query("  What is\tACME's\n\n revenue?  "),
            "What is ACME's revenue?"
        );
        assert_eq!(normalize_query("a\u{00a0}\u{2003}b"), "a b");
        assert_ne!(normalize_query("Revenue?"), normalize_query("revenue?"));
        assert_eq!(normalize_query(" \n "), "");
    }

    fn config() -> CacheConfig {
        let mut profiles = BTreeMap::new();
        for (name, enabled) in [("on", true), ("off", false)] {
            profiles.insert(
                name.to_string(),
                ProfileCache {
                    enabled,
                    revision: "repo@1".into(),
                },
            );
        }
        CacheConfig {
            ttl: Duration::from_secs(60),
            profiles,
        }
    }

    fn job(query: &str, agent: &str) -> Job {
        Job::new(JobSpec::research(query.to_string(), agent.to_string()))
    }

    #[test]
    fn identity_follows_profile_query_revision_and_options() {
        let c = config();
        let a = c.identity(&job("What  is X?", "on")).unwrap();
        assert_eq!(a, c.identity(&job(" What is X? ", "on")).unwrap());
        assert_ne!(a, c.identity(&job("What is Y?", "on")).unwrap());
        assert_eq!(c.identity(&job("What is X?", "off")), None, "profile off");
        let mut forced = job("What is X?", "off");
        forced.spec.options.cache = Some(true);
        assert_ne!(c.identity(&forced).unwrap(), a, "another profile");
        let mut opted_out = job("What is X?", "on");
        opted_out.spec.options.cache = Some(false);
        assert_eq!(c.identity(&opted_out), None);
        let mut capped = job("What is X?", "on");
        capped.spec.options.max_turns = Some(3);
        assert_ne!(c.identity(&capped).unwrap(), a);
        let mut other = c.clone();
        other.profiles.get_mut("on").unwrap().revision = "repo@2".into();
        assert_ne!(
            other.identity(&job("What is X?", "on")).unwrap(),
            a,
            "another commit"
        );
        assert_eq!(c.identity(&job("q", "unknown")), None);
    }
}
