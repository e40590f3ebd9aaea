//! Builds the worker from its settings and runs it until shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use apalis::layers::WorkerBuilderExt;
use apalis::layers::tracing::{DefaultMakeSpan, DefaultOnRequest, OnResponse, TraceLayer};
use apalis::prelude::{Monitor, WorkerBuilder};
use apalis_core::error::WorkerError;
use apalis_core::worker::context::WorkerContext;
use fleet_shared::admission::{FleetAdmission, Plan};
use fleet_shared::job::QueueKind;
use fleet_shared::pool::{AgentPool, ModelAccess, PoolProfile, Registry};
use fleet_shared::queue::apalis_backend::RedisBackend;
use fleet_shared::queue::lease_keeper::{KeeperTimings, LeaseKeeper};
use fleet_shared::queue::{QueueConfig, RedisQueue};
use fleet_shared::runtime::AgentRuntime;
use fleet_shared::runtime::claude_code::ClaudeCodeRuntime;
use fleet_shared::runtime::command::CommandRuntime;
use fleet_shared::runtime::dexter::DexterRuntime;
use fleet_shared::sandbox::SandboxProvider;
use fleet_shared::sandbox::e2b::E2bProvider;
use fleet_shared::sandbox::local::{LocalConfig, LocalProvider};
use fleet_shared::secret::Secret;
use fleet_shared::settings::{ProviderKind, RuntimeKind, Settings};
use tokio_util::sync::CancellationToken;

use crate::execute::{Executor, run_lifecycle, run_research};

/// A name unique to this process: `host-pid-random`.
pub fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    let salt: u32 = rand::random();
    format!("{host}-{}-{:06x}", std::process::id(), salt & 0xffffff)
}

/// Whether the job loops (one apalis worker per queue) still run. One that stopped on
/// an error — a panic outside any handler, which `catch_panic` does not see — makes
/// `/readyz` fail, and the process stops and exits non-zero for its supervisor to
/// restart it (see [`on_job_loop_error`]).
#[derive(Clone, Default)]
pub struct JobLoops {
    failure: Arc<OnceLock<String>>,
}

impl JobLoops {
    /// Why a job loop stopped, once one did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }
}

/// The monitor's restart policy. A job loop that ended with an error is not restarted
/// in place: whatever it held (fetched jobs, their leases) went with it, and its fetcher
/// would keep fetching and handing jobs back to a loop that is gone. Instead readiness
/// fails at once, and the whole worker stops in order (the other loop drains, leases are
/// released, the pool shuts down) and exits non-zero, so the supervisor (systemd,
/// Docker `restart:`, Kubernetes) starts a fresh process.
pub fn on_job_loop_error(
    loops: JobLoops,
    stop: CancellationToken,
) -> impl Fn(&WorkerContext, &WorkerError) -> bool + Send + Sync + 'static {
    move |worker, error| {
        if !stop.is_cancelled() {
            let why = format!("job loop {} stopped: {error}", worker.name());
            tracing::error!(reason = %why, "a job loop stopped unexpectedly; failing readiness and stopping the worker (exit 1) for its supervisor to restart it");
            let _ = loops.failure.set(why);
            stop.cancel();
        }
        false
    }
}

/// The sandbox provider. E2B's plan limits are the fleet's: its slots and start turns
/// live in Redis, shared with every worker on the same key prefix, and this worker's
/// holds last one lease TTL without renewal (so a killed worker's come back).
pub async fn build_provider(settings: &Settings) -> anyhow::Result<Arc<dyn SandboxProvider>> {
    Ok(match settings.sandbox.provider {
        ProviderKind::Local => {
            let mut config = LocalConfig::from_settings(&settings.sandbox.local);
            // The bundled demo agent sits next to this binary.
            if let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
            {
                config.extra_path.push(dir);
            }
            Arc::new(LocalProvider::new(config))
        }
        ProviderKind::E2b => {
            let e2b = &settings.sandbox.e2b;
            let plan = Plan::new(
                e2b.max_concurrent_sandboxes,
                e2b.creates_per_second,
                settings.lease_ttl(),
            );
            let admission = FleetAdmission::open(&settings.redis, "e2b", plan)
                .await
                .context("connecting to Redis for the E2B plan limits")?;
            // A job that cannot get a sandbox cannot progress: at a plan limit it waits
            // for one as long as an attempt may last (the pool stops waiting when the
            // attempt's own budget is spent), not a request timeout's worth, so waiting
            // in line behind a busy plan never costs it an attempt.
            let limit_wait = Duration::from_secs(
                settings
                    .queue
                    .research
                    .attempt_timeout_secs
                    .max(settings.queue.lifecycle.attempt_timeout_secs),
            );
            Arc::new(
                E2bProvider::new(e2b)
                    .map_err(|e| anyhow::anyhow!("sandbox.e2b: {e}"))?
                    .with_limit_wait(limit_wait)
                    .with_fleet_admission(admission),
            )
        }
    })
}

pub fn build_pool(
    settings: &Settings,
    provider: Arc<dyn SandboxProvider>,
    registry: Registry,
    worker: &str,
) -> anyhow::Result<AgentPool> {
    let base_dir = std::env::current_dir().context("current directory")?;
    let mut profiles = BTreeMap::new();
    for (name, profile) in &settings.agents {
        let secrets: BTreeMap<String, Secret> = profile
            .secret_env
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), Secret::new(v))))
            .collect();
        let runtime: Arc<dyn AgentRuntime> = match profile.runtime {
            RuntimeKind::Command => Arc::new(CommandRuntime::new(
                profile.clone(),
                secrets,
                base_dir.clone(),
            )),
            RuntimeKind::ClaudeCode => Arc::new(ClaudeCodeRuntime::new(
                profile.clone(),
                secrets,
                base_dir.clone(),
            )),
            RuntimeKind::Dexter => Arc::new(DexterRuntime::new(
                profile.clone(),
                secrets,
                base_dir.clone(),
            )),
        };
        let template = if profile.template.is_empty() {
            settings.sandbox.e2b.template.clone()
        } else {
            profile.template.clone()
        };
        // Egress: a restricting profile's sandboxes may always reach the gateway.
        let network = fleet_shared::sandbox::egress::for_profile(settings, profile);
        if network.is_some() && settings.sandbox.provider == ProviderKind::Local {
            tracing::warn!(
                profile = %name,
                "agents.{name}.network restricts egress, but the local provider does not enforce it: \
                 these sandboxes reach the network like the worker itself"
            );
        }
        profiles.insert(
            name.clone(),
            PoolProfile {
                runtime,
                template,
                env: BTreeMap::new(),
                max_agents: settings.pool.max_agents,
                min_idle: settings.pool.min_idle,
                repo: profile.repo.clone(),
                network,
                model_access: if settings.gateway.enabled && profile.gateway {
                    ModelAccess::Gateway
                } else {
                    ModelAccess::Direct
                },
            },
        );
    }
    Ok(AgentPool::new(
        provider,
        registry,
        profiles,
        settings.pool.clone(),
        worker,
        settings.lease_ttl(),
    ))
}

pub async fn run(settings: Settings, name: Option<String>) -> anyhow::Result<()> {
    let worker = name.unwrap_or_else(default_worker_name);
    let stop = CancellationToken::new();
    // First of all, so that a signal while starting stops the worker in order.
    let releaser = crate::shutdown::watch_signals(
        stop.clone(),
        Duration::from_secs(settings.worker.drain_timeout_secs),
    )
    .context("installing the signal handlers")?;

    let lease_ttl = settings.lease_ttl();
    let timings = KeeperTimings {
        renew_every: lease_ttl / 3,
        reclaim_every: Duration::from_millis(settings.queue.reclaim_interval_ms),
    };
    let mut queues = BTreeMap::new();
    // One lease keeper per shard of each queue (queue/shards.rs); the first (shard 0)
    // also announces the worker.
    let mut shard_keepers: BTreeMap<QueueKind, Vec<Arc<LeaseKeeper>>> = BTreeMap::new();
    for kind in QueueKind::ALL {
        let mut config = QueueConfig::from_settings(&settings, kind);
        config.give_up_after = None;
        let Some(queue) = open_until_reachable(&settings, config.clone(), &stop).await else {
            tracing::info!("stopped before Redis became reachable");
            return Ok(());
        };
        let per_shard = (0..config.shards)
            .map(|shard| {
                let mut config = config.clone();
                config.shard = shard;
                Arc::new(LeaseKeeper::start(settings.redis.clone(), config, timings))
            })
            .collect();
        shard_keepers.insert(kind, per_shard);
        queues.insert(kind, queue);
    }
    let keepers: BTreeMap<QueueKind, Arc<LeaseKeeper>> = shard_keepers
        .iter()
        .map(|(kind, k)| (*kind, k[0].clone()))
        .collect();
    let all_keepers: Vec<Arc<LeaseKeeper>> = shard_keepers.values().flatten().cloned().collect();
    // A Redis that evicts keys would drop jobs and leases without a word, and one that
    // cannot confirm `queue.durability` would fail every settle: refuse both at start.
    {
        let research = &queues[&QueueKind::Research];
        let mut conn = research.connection();
        fleet_shared::connection::check_server(
            &mut conn,
            settings.queue.durability,
            Duration::from_millis(settings.queue.durability_timeout_ms),
            &research.keys().wait,
            true,
        )
        .await?;
    }

    // After Redis answered: the E2B provider shares its plan limits through it.
    let provider = build_provider(&settings).await?;
    let registry = Registry::open(&settings.redis)
        .await
        .context("connecting to Redis for the agent registry")?;
    let pool = Arc::new(build_pool(&settings, provider, registry, &worker)?);
    let pool_tasks = CancellationToken::new();
    pool.clone()
        .start_background(settings.redis.clone(), pool_tasks.clone());
    let research_queue = queues[&QueueKind::Research].clone();
    keepers[&QueueKind::Research].announce_worker(&worker);
    research_queue.announce_worker(&worker, lease_ttl).await?;
    let mut executor = Executor::new(pool.clone(), research_queue.clone());
    // The model gateway, when enabled: agents reach their providers through it. It
    // stops after the job loops (draining jobs still call their models).
    let gateway_stop = CancellationToken::new();
    let gateway_server = if settings.gateway.enabled {
        let gateway = fleet_shared::gateway::Gateway::open(&settings)
            .await
            .context("starting the model gateway")?;
        let server = gateway.serve(gateway_stop.clone()).await.with_context(|| {
            format!(
                "gateway.listen: cannot listen on {}",
                settings.gateway.listen
            )
        })?;
        executor = executor.with_gateway(gateway);
        Some(server)
    } else {
        None
    };
    if settings.events.enabled {
        // A connection of their own: a burst of output never queues behind the
        // queue's calls, nor they behind it. Should Redis fail just now, the queue's
        // connection serves (it reconnects by itself); a worker never stops for this.
        let conn = match fleet_shared::queue::connect(&settings.redis).await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "live events: no connection of their own; sharing the queue's");
                research_queue.connection()
            }
        };
        executor = executor.with_events(fleet_shared::events::writer::EventSink::new(
            conn,
            settings.events.clone(),
            research_queue.config().result_ttl,
        ));
    }
    // GitHub (issue 13): `publish` jobs, and comments on the issues research jobs
    // came from. Without credentials both are off (publish jobs fail with why).
    let github_client = fleet_shared::github::client_from_settings(&settings.github)
        .map_err(|m| anyhow::anyhow!(m))?;
    let notifier = github_client.clone().map(|client| {
        crate::github::spawn_notifier(
            client,
            research_queue.clone(),
            Duration::from_secs(settings.queue.result_ttl_secs),
            // Not the shutdown signal: jobs ending while the worker drains are
            // commented too; the task is aborted once the job loops stopped.
            CancellationToken::new(),
        )
    });
    let executor = Arc::new(executor.with_github(crate::github::GithubWork {
        client: github_client,
        settings: settings.github.clone(),
    }));
    releaser.set(all_keepers.clone());
    tokio::select! {
        _ = reconcile(&pool) => {}
        _ = stop.cancelled() => {}
    }
    let loops = JobLoops::default();
    let http = crate::http::serve(
        &settings.worker.http_addr,
        executor.clone(),
        loops.clone(),
        all_keepers.clone(),
        stop.clone(),
    )
    .await?;
    let maintenance = {
        let pool = pool.clone();
        let stop = stop.clone();
        let queue = research_queue.clone();
        let mut deaths = DeathWatch::new(worker.clone(), lease_ttl);
        tokio::spawn(async move {
            let mut idle = tokio::time::interval(POOL_MAINTENANCE_EVERY);
            idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut strays = tokio::time::interval(Duration::from_secs(60));
            let mut watch = tokio::time::interval(DEATH_WATCH_EVERY);
            watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = idle.tick() => {
                        pool.maintain().await;
                        pool.retry_failed_kills().await;
                    }
                    _ = strays.tick() => {
                        reconcile(&pool).await;
                    }
                    _ = watch.tick() => {
                        let dead = deaths.check(&queue).await;
                        if !dead.is_empty() {
                            tracing::warn!(workers = ?dead, "workers gone; adopting their agents");
                            pool.maintain().await;
                            // Forgotten only once dealt with: a failed listing is tried
                            // again at the next check.
                            if reconcile(&pool).await
                                && let Err(e) = queue.forget_workers(&dead).await
                            {
                                tracing::warn!(error = %e, "could not forget dead workers");
                            }
                        }
                    }
                }
            }
        })
    };

    tracing::info!(%worker, concurrency = settings.worker.concurrency, provider = pool.provider().name(), "worker started");
    // Each queue's shards, each with its keeper: a backend fetches from all of them.
    let shards_of = |kind: QueueKind| -> Vec<(RedisQueue, Arc<LeaseKeeper>)> {
        queues[&kind]
            .shards()
            .into_iter()
            .zip(shard_keepers[&kind].iter().cloned())
            .collect()
    };
    let research = shards_of(QueueKind::Research);
    let lifecycle = shards_of(QueueKind::Lifecycle);
    let (research_n, lifecycle_n) = (
        settings.worker.concurrency,
        settings.worker.lifecycle_concurrency,
    );
    let monitor = Monitor::new()
        .should_restart(on_job_loop_error(loops.clone(), stop.clone()))
        .register({
            let (shards, stop, exec, worker) =
                (research, stop.clone(), executor.clone(), worker.clone());
            move |run| {
                WorkerBuilder::new(format!("{worker}-research-{run}"))
                    .backend(RedisBackend::start_sharded(
                        shards.clone(),
                        &worker,
                        research_n,
                        stop.clone(),
                    ))
                    .layer(quiet_tracing())
                    .catch_panic()
                    .concurrency(research_n)
                    .data(exec.clone())
                    .build(run_research)
            }
        })
        .register({
            let (shards, stop, exec, worker) =
                (lifecycle, stop.clone(), executor.clone(), worker.clone());
            move |run| {
                WorkerBuilder::new(format!("{worker}-lifecycle-{run}"))
                    .backend(RedisBackend::start_sharded(
                        shards.clone(),
                        &worker,
                        lifecycle_n,
                        stop.clone(),
                    ))
                    .layer(quiet_tracing())
                    .catch_panic()
                    .concurrency(lifecycle_n)
                    .data(exec.clone())
                    .build(run_lifecycle)
            }
        });
    let signal = {
        let stop = stop.clone();
        async move {
            stop.cancelled().await;
            Ok(())
        }
    };
    // Whatever the monitor says, the pool and the keepers are shut down in order.
    let monitored = tokio::select! {
        ran = monitor.run_with_signal(signal) => ran,
        _ = releaser.gave_up_settling(lease_ttl) => {
            tracing::warn!(
                "released jobs could not be written back (Redis out of reach?); stopping anyway: \
                 they run again when their leases expire"
            );
            Ok(())
        }
    };
    maintenance.abort();
    if let Some(notifier) = notifier {
        notifier.abort();
    }
    tracing::info!("workers stopped; shutting the pool down");
    // The last worker out ends every free agent; the others only those they launched.
    // Withdrawn first (and no longer re-announced), so that of several workers
    // stopping at once, at least the last to look sees none left.
    keepers[&QueueKind::Research].stop_announcing();
    let last_out = async {
        research_queue.withdraw_worker(&worker).await?;
        let known = research_queue.known_workers().await?;
        let others: Vec<String> = known.into_iter().filter(|w| *w != worker).collect();
        let live = research_queue.live_workers(&others).await?;
        Ok::<bool, fleet_shared::queue::QueueError>(!live.into_iter().any(|alive| alive))
    };
    // Redis away (these calls would retry for ever): not known to be the last.
    let last = matches!(
        tokio::time::timeout(Duration::from_secs(2), last_out).await,
        Ok(Ok(true))
    );
    let left = pool
        .shutdown_within(
            Duration::from_secs(settings.worker.drain_timeout_secs),
            last,
        )
        .await;
    pool_tasks.cancel();
    if !left.is_empty() {
        tracing::error!(sandboxes = ?left, "sandboxes left running: they could not be killed within the drain timeout");
    }
    drop(keepers);
    drop(shard_keepers);
    drop(all_keepers);
    let _ = http.await;
    gateway_stop.cancel();
    if let Some(server) = gateway_server {
        let _ = server.await;
    }
    tracing::info!(stats = ?pool.stats(), "worker stopped");
    if let Some(why) = loops.failure() {
        anyhow::bail!("{why}");
    }
    monitored.context("apalis monitor")
}

/// apalis's tracing layer, except that a finished task logs how long it took and
/// not its whole result: a result is the agent's output, which is user data and may
/// hold what an agent printed (results are stored, not logged).
fn quiet_tracing() -> TraceLayer<DefaultMakeSpan, DefaultOnRequest, TaskDone> {
    TraceLayer::new().on_response(TaskDone)
}

#[derive(Debug, Clone, Copy)]
struct TaskDone;

impl<Res> OnResponse<Res> for TaskDone {
    fn on_response(self, _: &Res, done_in: Duration, _: &tracing::Span) {
        tracing::debug!(done_in_ms = done_in.as_millis() as u64, "task.done");
    }
}

/// How often each worker applies the pool's policy and adopts expired holds.
const POOL_MAINTENANCE_EVERY: Duration = Duration::from_secs(1);

/// How often the other workers' announcements are checked.
const DEATH_WATCH_EVERY: Duration = Duration::from_secs(1);

/// Notices, within about a second, that a worker's announcement (`worker:<name>`,
/// one lease TTL long) has expired, so that its sandboxes are killed while its
/// jobs start again elsewhere — not minutes later, with two copies running.
///
/// It costs two Redis reads a second; the provider's listing (an API call on
/// E2B) runs only when a worker is found dead. An absence is trusted only after
/// Redis has answered this worker promptly for a whole lease TTL: after an outage
/// or a stall, live workers get that long to reconnect and announce themselves
/// again (they renew every TTL/3) before their sandboxes could be taken for strays.
struct DeathWatch {
    me: String,
    trust_after: Duration,
    /// Since when every check has gone through promptly.
    healthy_since: Option<Instant>,
    last_ok: Option<Instant>,
}

impl DeathWatch {
    fn new(me: String, lease_ttl: Duration) -> DeathWatch {
        DeathWatch {
            me,
            trust_after: lease_ttl,
            healthy_since: None,
            last_ok: None,
        }
    }

    /// The known workers whose announcement is gone, when that can be trusted.
    async fn check(&mut self, queue: &RedisQueue) -> Vec<String> {
        let asked = Instant::now();
        let looked = async {
            let known = queue.known_workers().await?;
            let others: Vec<String> = known.into_iter().filter(|w| *w != self.me).collect();
            let live = queue.live_workers(&others).await?;
            Ok::<_, fleet_shared::queue::QueueError>(
                others
                    .into_iter()
                    .zip(live)
                    .filter_map(|(w, alive)| (!alive).then_some(w))
                    .collect::<Vec<String>>(),
            )
        };
        let answer = tokio::time::timeout(DEATH_WATCH_EVERY, looked).await;
        let now = Instant::now();
        let prompt = now - asked < DEATH_WATCH_EVERY
            && self.last_ok.is_none_or(|t| now - t < DEATH_WATCH_EVERY * 3);
        match answer {
            Ok(Ok(dead)) if prompt => {
                self.last_ok = Some(now);
                let since = *self.healthy_since.get_or_insert(asked);
                if now - since >= self.trust_after {
                    return dead;
                }
            }
            Ok(Ok(_)) => {
                // Late: start a new healthy stretch from here.
                self.healthy_since = None;
                self.last_ok = Some(now);
            }
            _ => {
                self.healthy_since = None;
                self.last_ok = None;
            }
        }
        Vec::new()
    }
}

/// Kill this system's sandboxes that no agent record claims (see
/// `AgentPool::reconcile`). False when it could not be done (listing failed).
async fn reconcile(pool: &AgentPool) -> bool {
    let found = match pool.owned_sandboxes().await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "could not list sandboxes to reconcile");
            return false;
        }
    };
    match pool.reconcile(found).await {
        Ok(0) => true,
        Ok(n) => {
            tracing::info!(
                sandboxes = n,
                "killed sandboxes that no agent record claims"
            );
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "reconcile failed");
            false
        }
    }
}

/// The queue once Redis answers; `None` when the worker is stopped first.
async fn open_until_reachable(
    settings: &Settings,
    config: QueueConfig,
    stop: &CancellationToken,
) -> Option<RedisQueue> {
    loop {
        match RedisQueue::open(&settings.redis, config.clone()).await {
            Ok(q) => return Some(q),
            Err(e) => {
                tracing::warn!(error = %e, "Redis not reachable yet; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return None,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use apalis_core::backend::TaskSink;
    use apalis_core::backend::memory::MemoryStorage;

    use super::*;

    #[tokio::test]
    async fn a_job_loop_that_panics_fails_readiness_and_stops_the_worker() {
        // A panic outside any handler's `catch_panic` ends the apalis worker future;
        // before, the process went on with that loop gone and /readyz still 200.
        let mut backend = MemoryStorage::new();
        backend.push(1u32).await.unwrap();
        let backend = Mutex::new(Some(backend));
        let loops = JobLoops::default();
        let stop = CancellationToken::new();
        let monitor = Monitor::new()
            .should_restart(on_job_loop_error(loops.clone(), stop.clone()))
            .register(move |run| {
                let backend = backend.lock().unwrap().take().expect("built once");
                WorkerBuilder::new(format!("panicky-{run}"))
                    .backend(backend)
                    .build(|n: u32| async move {
                        if n > 0 {
                            panic!("overflow when adding durations");
                        }
                    })
            });
        let signal = {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                Ok(())
            }
        };
        let ended = tokio::time::timeout(Duration::from_secs(10), monitor.run_with_signal(signal))
            .await
            .expect("the monitor stops by itself, without a signal");
        assert!(ended.is_err(), "the monitor reports the failed loop");
        assert!(stop.is_cancelled(), "the worker is told to stop");
        let why = loops.failure().expect("readiness fails");
        assert!(why.contains("panicky-0"), "{why}");
        assert!(why.contains("overflow when adding durations"), "{why}");
    }

    #[test]
    fn an_error_while_stopping_is_no_failure() {
        let loops = JobLoops::default();
        let stop = CancellationToken::new();
        stop.cancel();
        let restart = on_job_loop_error(loops.clone(), stop);
        let ctx = WorkerContext::new("stopping");
        assert!(!restart(&ctx, &WorkerError::PanicError("late".into())));
        assert_eq!(loops.failure(), None);
    }
}
