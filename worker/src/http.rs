//! `/healthz` (the process is up), `/readyz` (Redis answers, the job loops run, every
//! lease keeper has renewed within half the lease TTL, and the worker is not draining)
//! and `/metrics` (Prometheus text: attempts, pool, queue depths, the running agents'
//! CPU and memory by profile, and the model gateway's requests, tokens and cost by
//! profile and model when it runs).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use fleet_shared::queue::lease_keeper::LeaseKeeper;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::execute::Executor;
use crate::wiring::JobLoops;

#[derive(Clone)]
struct AppState {
    exec: Arc<Executor>,
    loops: JobLoops,
    keepers: Arc<[Arc<LeaseKeeper>]>,
    stop: CancellationToken,
    /// Per-profile CPU and memory of the running agents, cached between scrapes.
    usage: Arc<crate::usage::UsageGauges>,
}

/// Serve on `addr` until `stop`; an empty address serves nothing.
pub async fn serve(
    addr: &str,
    exec: Arc<Executor>,
    loops: JobLoops,
    keepers: Vec<Arc<LeaseKeeper>>,
    stop: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    if addr.is_empty() {
        return Ok(tokio::spawn(async {}));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("worker.http_addr: cannot listen on {addr}: {e}"))?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AppState {
            exec,
            loops,
            keepers: keepers.into(),
            stop: stop.clone(),
            usage: Arc::default(),
        });
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
    }))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    if let Some(why) = state.loops.failure() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    }
    if state.stop.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    // Redis may answer this read while leases cannot be renewed (writes blocked, the
    // keeper's connection broken, its thread stuck): a worker that cannot keep its
    // leases must not be sent work.
    if !state.keepers.iter().all(|k| k.is_ticking()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "lease renewal is not working\n".into(),
        );
    }
    match tokio::time::timeout(
        std::time::Duration::from_secs(2),
        state.exec.research_queue.counts(),
    )
    .await
    {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n".into()),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "redis unreachable\n".into(),
        ),
    }
}

/// The fleet's agents from the registry, by profile and state, with the seconds
/// their sandboxes ran and were paused (what the provider bills).
fn pool_metrics(agents: &[fleet_shared::pool::AgentRecord]) -> String {
    use std::collections::BTreeMap;
    let mut by_state: BTreeMap<(&str, String), u64> = BTreeMap::new();
    let mut secs: BTreeMap<&str, (f64, f64, u64)> = BTreeMap::new();
    for a in agents {
        let state = serde_json::to_value(a.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *by_state.entry((a.profile.as_str(), state)).or_default() += 1;
        let s = secs.entry(a.profile.as_str()).or_default();
        s.0 += a.active_secs;
        s.1 += a.paused_secs;
        s.2 += a.jobs_served;
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP fleet_agents Agents of the whole fleet (the registry), by profile and state.\n# TYPE fleet_agents gauge"
    );
    for ((profile, state), n) in &by_state {
        let _ = writeln!(
            out,
            "fleet_agents{{profile=\"{profile}\",state=\"{state}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP fleet_agent_active_seconds Seconds the sandboxes of live agents ran (to their last state change), by profile.\n# TYPE fleet_agent_active_seconds gauge"
    );
    for (profile, (active, _, _)) in &secs {
        let _ = writeln!(
            out,
            "fleet_agent_active_seconds{{profile=\"{profile}\"}} {active:.3}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP fleet_agent_paused_seconds Seconds the sandboxes of live agents were paused, by profile.\n# TYPE fleet_agent_paused_seconds gauge"
    );
    for (profile, (_, paused, _)) in &secs {
        let _ = writeln!(
            out,
            "fleet_agent_paused_seconds{{profile=\"{profile}\"}} {paused:.3}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP fleet_agent_jobs_served Jobs served by live agents, by profile.\n# TYPE fleet_agent_jobs_served gauge"
    );
    for (profile, (_, _, jobs)) in &secs {
        let _ = writeln!(
            out,
            "fleet_agent_jobs_served{{profile=\"{profile}\"}} {jobs}"
        );
    }
    out
}

async fn metrics(State(state): State<AppState>) -> String {
    let e = &state.exec;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "fleet_attempts_started_total",
        "counter",
        "Research attempts started.",
        e.attempts_started.load(Ordering::Relaxed),
    );
    metric(
        "fleet_attempts_succeeded_total",
        "counter",
        "Research attempts that succeeded.",
        e.attempts_succeeded.load(Ordering::Relaxed),
    );
    metric(
        "fleet_attempts_failed_total",
        "counter",
        "Research attempts that failed.",
        e.attempts_failed.load(Ordering::Relaxed),
    );
    let s = e.pool.stats();
    metric(
        "fleet_pool_sandboxes_created_total",
        "counter",
        "Sandboxes created by this worker's pool.",
        s.created,
    );
    metric(
        "fleet_pool_sandboxes_killed_total",
        "counter",
        "Sandboxes killed by this worker's pool.",
        s.killed,
    );
    for (name, help, value) in [
        (
            "fleet_pool_sandboxes_paused_total",
            "Sandboxes paused by this worker.",
            s.paused,
        ),
        (
            "fleet_pool_sandboxes_resumed_total",
            "Sandboxes resumed by this worker.",
            s.resumed,
        ),
        (
            "fleet_pool_leases_total",
            "Agents leased to jobs by this worker.",
            s.leases,
        ),
        (
            "fleet_pool_sandbox_extensions_total",
            "Sandbox lifetime extensions made at lease time by this worker.",
            s.extended,
        ),
        (
            "fleet_pool_agents_adopted_total",
            "Agents adopted by this worker from workers that are gone.",
            s.adopted,
        ),
        (
            "fleet_pool_agents_unhealthy_total",
            "Agents this worker replaced after a failed health check.",
            s.unhealthy,
        ),
    ] {
        metric(name, "counter", help, value);
    }
    if let Ok(Ok(c)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), e.research_queue.counts()).await
    {
        metric(
            "fleet_queue_ready",
            "gauge",
            "Research jobs ready to run.",
            c.ready,
        );
        metric(
            "fleet_queue_running",
            "gauge",
            "Research jobs running.",
            c.running,
        );
        metric(
            "fleet_queue_delayed",
            "gauge",
            "Research jobs waiting for a retry or their time.",
            c.delayed,
        );
        metric(
            "fleet_queue_dead",
            "gauge",
            "Dead-lettered research jobs.",
            c.dead,
        );
    }
    if let Some(gateway) = &e.gateway {
        out.push_str(&gateway.metrics_text());
    }
    let fleet_agents =
        tokio::time::timeout(std::time::Duration::from_secs(2), e.pool.agents()).await;
    if let Ok(Ok(agents)) = fleet_agents {
        out.push_str(&pool_metrics(&agents));
        // Bounded in time and cached (see `usage.rs`); missing samples are left out.
        out.push_str(&state.usage.render(e.pool.provider(), &agents).await);
    }
    out
}
