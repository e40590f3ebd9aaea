//! The agent pool (`fleet_shared::pool::AgentPool`) under attempts that end badly:
//! an attempt dropped mid-run (the outer timeout, a caught panic) must still give
//! its agent back and leave no process running in the sandbox — with the local
//! provider, and with the E2B client against the fake E2B server over real HTTP.
//! The registry lives in a Redis of the test's own.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_shared::pool::{AgentPool, AgentState, JobRef, PoolProfile, Registry};
use fleet_shared::runtime::RunOptions;
use fleet_shared::runtime::command::CommandRuntime;
use fleet_shared::sandbox::SandboxProvider;
use fleet_shared::sandbox::e2b::E2bProvider;
use fleet_shared::settings::{AgentProfile, QueryVia, RuntimeKind, Settings};
use fleet_tests::fake_e2b::{self, FakeE2b};
use fleet_tests::harness::eventually;
use fleet_tests::processes::process_ended;
use fleet_tests::redis_server::RedisServer;
use tokio_util::sync::CancellationToken;

const PROFILE: &str = "test";
const WAIT: Duration = Duration::from_secs(20);

/// A pool of one profile whose agent runs `sh -c script` (query on stdin), with its
/// registry in `redis`.
async fn pool(
    provider: Arc<dyn SandboxProvider>,
    script: &str,
    redis: &RedisServer,
) -> Arc<AgentPool> {
    let profile = AgentProfile {
        runtime: RuntimeKind::Command,
        command: vec!["sh".into(), "-c".into(), script.into()],
        query_via: QueryVia::Stdin,
        ..Default::default()
    };
    let runtime = Arc::new(CommandRuntime::new(
        profile,
        BTreeMap::new(),
        std::env::temp_dir(),
    ));
    let mut settings = Settings::from_layers(None, &[]).unwrap();
    settings.redis.url = redis.url();
    let registry = Registry::open(&settings.redis).await.unwrap();
    let profiles = BTreeMap::from([(
        PROFILE.to_string(),
        PoolProfile {
            runtime,
            template: "base".into(),
            env: BTreeMap::new(),
            max_agents: 2,
            min_idle: 0,
            repo: String::new(),
            network: None,
            model_access: Default::default(),
        },
    )]);
    Arc::new(AgentPool::new(
        provider,
        registry,
        profiles,
        settings.pool.clone(),
        "pool-test",
        settings.lease_ttl(),
    ))
}

/// Lease `agent_id` and run a query on it, in a task the test can abort (as the
/// attempt layer's outer timeout drops a handler).
fn run_on(pool: &Arc<AgentPool>, agent_id: &str) -> tokio::task::JoinHandle<()> {
    let (pool, agent_id) = (pool.clone(), agent_id.to_string());
    tokio::spawn(async move {
        let cancel = CancellationToken::new();
        let lease = pool
            .lease(
                PROFILE,
                Some(&agent_id),
                false,
                Duration::from_secs(60),
                &cancel,
                &job("j1"),
            )
            .await
            .unwrap();
        let runtime = pool.runtime(PROFILE).unwrap();
        let _ = runtime
            .run(
                pool.provider().as_ref(),
                &lease.sandbox_id,
                "q",
                RunOptions::default(),
            )
            .await;
        pool.give_back(lease, true).await;
    })
}

fn job(id: &str) -> JobRef {
    JobRef {
        id: id.to_string(),
        order: 0,
    }
}

async fn state(pool: &AgentPool, agent_id: &str) -> Option<AgentState> {
    pool.registry()
        .get(agent_id)
        .await
        .unwrap()
        .map(|a| a.state)
}

async fn read_pid(path: &Path) -> i32 {
    eventually("the agent to write its pid", WAIT, || async {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_attempt_gives_its_persistent_agent_back_and_kills_its_process() {
    let dir = tempfile::tempdir().unwrap();
    let (provider, _root) = fake_e2b::local_provider().unwrap();
    let pid_file = dir.path().join("agent.pid");
    let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
    let redis = RedisServer::start();
    let pool = pool(provider, &script, &redis).await;
    let agent = pool.launch(PROFILE, true).await.unwrap();

    let attempt = run_on(&pool, &agent.agent_id);
    let pid = read_pid(&pid_file).await;
    assert_eq!(state(&pool, &agent.agent_id).await, Some(AgentState::Busy));
    attempt.abort();
    let _ = attempt.await;

    eventually(
        "the dropped attempt's agent to be idle again",
        WAIT,
        || async { (state(&pool, &agent.agent_id).await == Some(AgentState::Idle)).then_some(()) },
    )
    .await;
    eventually(
        "the dropped attempt's process to be killed",
        WAIT,
        || async { process_ended(&pid.to_string()).then_some(()) },
    )
    .await;
    // The next job on that agent gets it at once.
    let cancel = CancellationToken::new();
    let lease = tokio::time::timeout(
        Duration::from_secs(5),
        pool.lease(
            PROFILE,
            Some(&agent.agent_id),
            false,
            Duration::from_secs(60),
            &cancel,
            &job("j2"),
        ),
    )
    .await
    .expect("the agent is free again")
    .unwrap();
    pool.give_back(lease, true).await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_attempt_on_e2b_kills_its_process_in_the_sandbox() {
    let fake = FakeE2b::start_local().await;
    let provider: Arc<dyn SandboxProvider> = Arc::new(
        E2bProvider::new(&fake.settings())
            .unwrap()
            .with_backoff(Duration::from_millis(5), Duration::from_millis(50)),
    );
    // The fake runs commands with the local provider, so the pid is a real one.
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("agent.pid");
    let script = format!("echo $$ > {}; exec sleep 300", pid_file.display());
    let redis = RedisServer::start();
    let pool = pool(provider, &script, &redis).await;
    let agent = pool.launch(PROFILE, true).await.unwrap();

    let attempt = run_on(&pool, &agent.agent_id);
    let pid = read_pid(&pid_file).await;
    attempt.abort();
    let _ = attempt.await;

    fake.wait_for_request(WAIT, |r| r.path.ends_with("/process.Process/SendSignal"))
        .await
        .expect("the dropped exec's process was sent a kill");
    eventually("the process in the sandbox to be killed", WAIT, || async {
        process_ended(&pid.to_string()).then_some(())
    })
    .await;
    eventually("the agent to be idle again", WAIT, || async {
        (state(&pool, &agent.agent_id).await == Some(AgentState::Idle)).then_some(())
    })
    .await;
    pool.shutdown().await;
}
