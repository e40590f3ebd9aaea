//! Per-profile resource use of the fleet's running agents for `/metrics`: CPU and
//! memory of each idle or busy agent's sandbox, as its provider reports it
//! ([`SandboxProvider::metrics`]; E2B's `GET /sandboxes/{id}/metrics`).
//!
//! A scrape must stay cheap and never fail for this: the provider is asked for
//! every running agent at once (at most [`CONCURRENCY`] calls in flight), all within
//! [`SCRAPE_BOUND`]; an agent with no answer in time, or an error, is left out. The
//! rendered gauges are kept for [`CACHE_FOR`], so scraping every second asks the
//! provider at most once per that period, and concurrent scrapes share one refresh.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use fleet_shared::pool::{AgentRecord, AgentState};
use fleet_shared::sandbox::{SandboxMetrics, SandboxProvider};
use futures::StreamExt;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The longest one refresh may take, all agents together.
pub const SCRAPE_BOUND: Duration = Duration::from_secs(2);
/// How long a refresh's result is served before the provider is asked again.
pub const CACHE_FOR: Duration = Duration::from_secs(5);
/// Provider calls in flight at once during a refresh.
pub const CONCURRENCY: usize = 16;

/// The gauges of the last refresh, and when it was made.
#[derive(Default)]
pub struct UsageGauges {
    last: Mutex<Option<(Instant, String)>>,
}

impl UsageGauges {
    /// The gauges for `agents`: served from the cache while it is fresh, else
    /// measured again (one refresh at a time; a scrape arriving meanwhile waits
    /// for it and shares its result).
    pub async fn render(
        &self,
        provider: &Arc<dyn SandboxProvider>,
        agents: &[AgentRecord],
    ) -> String {
        self.render_targets(provider, running(provider, agents), SCRAPE_BOUND)
            .await
    }

    async fn render_targets(
        &self,
        provider: &Arc<dyn SandboxProvider>,
        targets: Vec<Target>,
        bound: Duration,
    ) -> String {
        let mut last = self.last.lock().await;
        if let Some((at, text)) = last.as_ref()
            && at.elapsed() < CACHE_FOR
        {
            return text.clone();
        }
        let samples = sample(provider, targets, Instant::now() + bound).await;
        let text = format_gauges(&samples);
        *last = Some((Instant::now(), text.clone()));
        text
    }
}

/// One agent to sample.
struct Target {
    profile: String,
    sandbox: String,
    agent: String,
}

/// The agents whose sandboxes run (idle or busy) on this worker's provider. Owned,
/// so the futures of a refresh borrow nothing from the caller (the handler's future
/// must be `Send` for any lifetime).
fn running(provider: &Arc<dyn SandboxProvider>, agents: &[AgentRecord]) -> Vec<Target> {
    agents
        .iter()
        .filter(|a| {
            matches!(a.state, AgentState::Idle | AgentState::Busy)
                && !a.sandbox_id.is_empty()
                && a.provider == provider.name()
        })
        .map(|a| Target {
            profile: a.profile.clone(),
            sandbox: a.sandbox_id.clone(),
            agent: a.agent_id.clone(),
        })
        .collect()
}

/// Each target's latest sample with its profile; those without one by `deadline`
/// (or whose call failed) are left out.
async fn sample(
    provider: &Arc<dyn SandboxProvider>,
    targets: Vec<Target>,
    deadline: Instant,
) -> Vec<(String, SandboxMetrics)> {
    futures::stream::iter(targets)
        .map(|t| {
            let provider = provider.clone();
            async move {
                match tokio::time::timeout_at(deadline, provider.metrics(&t.sandbox)).await {
                    Ok(Ok(Some(m))) => Some((t.profile, m)),
                    Ok(Ok(None)) => None,
                    Ok(Err(e)) => {
                        tracing::debug!(agent = %t.agent, sandbox = %t.sandbox, error = %e, "sandbox metrics unavailable");
                        None
                    }
                    Err(_) => {
                        tracing::debug!(agent = %t.agent, sandbox = %t.sandbox, "sandbox metrics took too long");
                        None
                    }
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|x| async move { x })
        .collect()
        .await
}

/// A gauge family: name, help, and its value for one profile.
type Gauge = (&'static str, &'static str, fn(&ProfileUsage) -> String);

#[derive(Default)]
struct ProfileUsage {
    sampled: u64,
    cpu_pct_sum: f64,
    mem_used: u64,
    mem_total: u64,
}

/// Prometheus text: per profile, the mean CPU use and the summed memory of the
/// agents sampled, and how many were.
fn format_gauges(samples: &[(String, SandboxMetrics)]) -> String {
    let mut by_profile: BTreeMap<&str, ProfileUsage> = BTreeMap::new();
    for (profile, m) in samples {
        let u = by_profile.entry(profile.as_str()).or_default();
        u.sampled += 1;
        u.cpu_pct_sum += m.cpu_used_pct;
        u.mem_used = u.mem_used.saturating_add(m.mem_used_bytes);
        u.mem_total = u.mem_total.saturating_add(m.mem_total_bytes);
    }
    let mut out = String::new();
    let gauges: [Gauge; 4] = [
        (
            "fleet_agent_sandboxes_sampled",
            "Running agents (idle or busy) whose sandbox reported resource use at the last sample, by profile.",
            |u| u.sampled.to_string(),
        ),
        (
            "fleet_agent_cpu_used_pct",
            "Mean CPU use (percent of the sandbox's cores) of the running agents' sandboxes, by profile.",
            |u| format!("{:.3}", u.cpu_pct_sum / u.sampled.max(1) as f64),
        ),
        (
            "fleet_agent_memory_used_bytes",
            "Memory used by the running agents' sandboxes, summed by profile.",
            |u| u.mem_used.to_string(),
        ),
        (
            "fleet_agent_memory_total_bytes",
            "Memory of the running agents' sandboxes, summed by profile.",
            |u| u.mem_total.to_string(),
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (profile, u) in &by_profile {
            let _ = writeln!(out, "{name}{{profile=\"{profile}\"}} {}", value(u));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use fleet_shared::sandbox::{
        ExecControl, ExecOutput, ExecRequest, ListFilter, SandboxError, SandboxInfo, SandboxSpec,
    };

    use super::*;

    fn m(pct: f64, used: u64, total: u64) -> SandboxMetrics {
        SandboxMetrics {
            cpu_count: 2,
            cpu_used_pct: pct,
            mem_used_bytes: used,
            mem_total_bytes: total,
            disk_used_bytes: None,
            at_ms: 1,
        }
    }

    /// A provider that only answers `metrics`: `slow` never does, `gone` is
    /// NotFound, `paused` has no sample, the rest report 10 % and 100 bytes.
    /// Counts the calls.
    struct Stub {
        calls: AtomicUsize,
    }

    #[async_trait]
    impl SandboxProvider for Stub {
        fn name(&self) -> &'static str {
            "stub"
        }
        async fn metrics(&self, id: &str) -> Result<Option<SandboxMetrics>, SandboxError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match id {
                "slow" => std::future::pending().await,
                "gone" => Err(SandboxError::NotFound(id.into())),
                "paused" => Ok(None),
                _ => Ok(Some(m(10.0, 100, 1000))),
            }
        }
        async fn create(&self, _: &SandboxSpec) -> Result<SandboxInfo, SandboxError> {
            unreachable!()
        }
        async fn connect(&self, _: &str, _: Duration) -> Result<SandboxInfo, SandboxError> {
            unreachable!()
        }
        async fn pause(&self, _: &str) -> Result<(), SandboxError> {
            unreachable!()
        }
        async fn kill(&self, _: &str) -> Result<(), SandboxError> {
            unreachable!()
        }
        async fn set_timeout(&self, _: &str, _: Duration) -> Result<(), SandboxError> {
            unreachable!()
        }
        async fn list(&self, _: &ListFilter) -> Result<Vec<SandboxInfo>, SandboxError> {
            unreachable!()
        }
        async fn exec(
            &self,
            _: &str,
            _: &ExecRequest,
            _: ExecControl,
        ) -> Result<ExecOutput, SandboxError> {
            unreachable!()
        }
        async fn write_file(&self, _: &str, _: &str, _: &[u8]) -> Result<(), SandboxError> {
            unreachable!()
        }
        async fn read_file(&self, _: &str, _: &str) -> Result<Vec<u8>, SandboxError> {
            unreachable!()
        }
    }

    fn target(profile: &str, sandbox: &str) -> Target {
        Target {
            profile: profile.into(),
            sandbox: sandbox.into(),
            agent: format!("agent-{sandbox}"),
        }
    }

    #[tokio::test]
    async fn a_refresh_is_bounded_skips_what_fails_and_is_cached() {
        let stub = Arc::new(Stub {
            calls: AtomicUsize::new(0),
        });
        let provider: Arc<dyn SandboxProvider> = stub.clone();
        let gauges = UsageGauges::default();
        let targets = vec![
            target("demo", "a"),
            target("demo", "slow"),
            target("demo", "gone"),
            target("demo", "paused"),
            target("other", "b"),
        ];
        // A sandbox that never answers does not hold the scrape past the bound
        // (the outer timeout only keeps a broken bound from hanging the test).
        let text = tokio::time::timeout(
            Duration::from_secs(30),
            gauges.render_targets(&provider, targets, Duration::from_millis(200)),
        )
        .await
        .expect("the refresh ended at its bound");
        for line in [
            "fleet_agent_sandboxes_sampled{profile=\"demo\"} 1",
            "fleet_agent_memory_used_bytes{profile=\"demo\"} 100",
            "fleet_agent_sandboxes_sampled{profile=\"other\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        assert_eq!(stub.calls.load(Ordering::SeqCst), 5);

        // Within the cache period nothing is asked again, whatever the agents.
        let again = gauges
            .render_targets(
                &provider,
                vec![target("x", "c")],
                Duration::from_millis(200),
            )
            .await;
        assert_eq!(again, text);
        assert_eq!(stub.calls.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn gauges_average_cpu_and_sum_memory_per_profile() {
        let text = format_gauges(&[
            ("demo".into(), m(10.0, 100, 1000)),
            ("demo".into(), m(30.0, 50, 1000)),
            ("claude".into(), m(5.5, 7, 9)),
        ]);
        for line in [
            "fleet_agent_sandboxes_sampled{profile=\"demo\"} 2",
            "fleet_agent_cpu_used_pct{profile=\"demo\"} 20.000",
            "fleet_agent_memory_used_bytes{profile=\"demo\"} 150",
            "fleet_agent_memory_total_bytes{profile=\"demo\"} 2000",
            "fleet_agent_cpu_used_pct{profile=\"claude\"} 5.500",
            "fleet_agent_memory_used_bytes{profile=\"claude\"} 7",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        // Nothing sampled: the families are declared, with no series.
        let empty = format_gauges(&[]);
        assert!(empty.contains("# TYPE fleet_agent_cpu_used_pct gauge"));
        assert!(!empty.contains("{profile="), "{empty}");
    }
}
