//! The pool's policy, applied by every worker about once a second (`maintain`), on
//! the registry's fleet-wide view: each decision is carried out by a fenced script
//! (`pause`, `terminate` with the fence the decision was made on), so two workers
//! applying it at once cannot both act on one agent.
//!
//! - **Idle pause** (`pool.idle_pause_after_secs`, idle policy `keep`): the agent idle
//!   longest is marked and paused, one per round, and never below `min_idle` warm
//!   agents — so a job arriving meanwhile finds an idle agent instead of watching one
//!   be paused. The pause (seconds at E2B) goes on in the background, so the rounds,
//!   and the next agent's pause, do not wait for it.
//! - **Paused kill** (`pool.kill_paused_after_secs`): pooled agents paused that long
//!   are terminated (persistent agents are kept).
//! - **Lifetime** (`pool.max_lifetime_secs`, the provider's sandbox lifetime limit: 1 h
//!   Hobby / 24 h Pro on E2B): idle agents within `pool.lifetime_margin_secs` of it are
//!   recycled; leases skip them, and a job's agent that reached it is killed when given
//!   back.
//! - **Warm minimum** (`min_idle`): launches until that many pooled agents are idle or
//!   launching, within `max_agents` — at start and after use.
//!
//! The pool never calls `connect` or `set_timeout` on an idle member to keep it alive:
//! that resets the provider's timeout and is how idle sandboxes leak.

use std::time::Duration;

use super::AgentPool;
use super::registry::{AgentState, Start, TerminateBy};
use crate::settings::{IdlePolicy, PoolSettings};

/// Whether an agent this old is within the lifetime margin (recycle it).
pub fn near_lifetime(settings: &PoolSettings, age: Duration) -> bool {
    lease_max_age(settings).is_some_and(|max| age > max)
}

/// The oldest agent a lease takes (`None`: no lifetime limit).
pub fn lease_max_age(settings: &PoolSettings) -> Option<Duration> {
    (settings.max_lifetime_secs > 0).then(|| {
        Duration::from_secs(
            settings
                .max_lifetime_secs
                .saturating_sub(settings.lifetime_margin_secs)
                .max(1),
        )
    })
}

/// Terminate and kill each of `agents` that is still as it was read (the script is
/// given the fence the decision was made on; a lease since then wins).
async fn retire<'a>(
    pool: &AgentPool,
    profile: &str,
    agents: impl Iterator<Item = &'a super::AgentRecord>,
    why: &str,
) {
    let core = &pool.core;
    for a in agents {
        if let Ok(Start::Started { fence, sandbox_id }) = core
            .registry
            .terminate(
                &a.agent_id,
                profile,
                &core.worker,
                core.hold,
                TerminateBy::Policy,
                Some(a.fence),
            )
            .await
        {
            tracing::info!(agent_id = %a.agent_id, "{why}");
            core.kill_and_forget(&a.agent_id, profile, &sandbox_id, fence)
                .await;
        }
    }
}

/// One round of the policy over every profile this worker serves.
pub async fn apply(pool: &AgentPool) {
    let core = &pool.core;
    let Ok(now) = core.registry.now_ms().await else {
        return;
    };
    for (profile, p) in &core.profiles {
        let Ok(agents) = core.registry.list(Some(profile)).await else {
            continue;
        };
        let here = |host: &str| host.is_empty() || host == core.host;
        let pooled = || agents.iter().filter(|a| !a.persistent && here(&a.host));
        let since = |ms: u64| Duration::from_millis(now.saturating_sub(ms));

        // Lifetime: recycle idle agents near the provider's limit.
        if let Some(max_age) = lease_max_age(&core.settings) {
            let old = pooled()
                .filter(|a| a.state == AgentState::Idle && since(a.created_at_ms) > max_age);
            retire(
                pool,
                profile,
                old,
                "recycling an agent near its sandbox's lifetime limit",
            )
            .await;
        }

        // Paused too long: terminate.
        if core.settings.kill_paused_after_secs > 0 {
            let limit = Duration::from_secs(core.settings.kill_paused_after_secs);
            let stale = pooled()
                .filter(|a| a.state == AgentState::Paused && since(a.state_since_ms) >= limit);
            retire(
                pool,
                profile,
                stale,
                "terminating an agent paused for too long",
            )
            .await;
        }

        let idle: Vec<_> = pooled().filter(|a| a.state == AgentState::Idle).collect();
        let launching = pooled()
            .filter(|a| a.state == AgentState::Launching)
            .count();

        // Idle pause: the longest-idle agent, one at a time, keeping min_idle warm.
        let after = core.settings.idle_pause_after_secs;
        if core.settings.idle_policy == IdlePolicy::Keep
            && after > 0
            && idle.len() > p.min_idle
            && let Some(oldest) = idle.iter().min_by_key(|a| a.state_since_ms)
            && since(oldest.state_since_ms) >= Duration::from_secs(after)
            && let Ok(Start::Started { fence, sandbox_id }) = core
                .registry
                .pause(
                    &oldest.agent_id,
                    profile,
                    &core.worker,
                    core.hold,
                    Duration::from_secs(after),
                    false,
                )
                .await
        {
            tracing::info!(agent_id = %oldest.agent_id, "pausing an agent idle for {after}s");
            // Shutdown waits for it (the tracker), so no pause is left half done.
            let (core, agent_id, profile) =
                (core.clone(), oldest.agent_id.clone(), profile.clone());
            pool.core.tasks.spawn(async move {
                core.finish_pause(&agent_id, &profile, &sandbox_id, fence)
                    .await
            });
        }

        // Warm minimum: one launch per round, within max_agents (the launch script
        // refuses past it).
        let mine = core
            .launching
            .lock()
            .unwrap()
            .get(profile.as_str())
            .copied()
            .unwrap_or(0);
        if p.min_idle > 0 && idle.len() + launching.max(mine) < p.min_idle {
            let timeout = core.sandbox_timeout(Duration::ZERO);
            drop(pool.launch_in_background(profile, timeout).await);
        }
    }
}
