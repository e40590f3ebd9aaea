//! The fleet-wide agent pool, with real `fleet-worker` processes sharing one Redis
//! registry and the local sandbox provider:
//!
//! - many jobs over a small pool and three workers: no agent is ever held by two jobs
//!   (checked from the intervals the agents record), and nothing is created after
//!   warm-up;
//! - a persistent agent serves the jobs addressed to it in submission order from
//!   whichever worker is free, and survives the `kill -9` of the worker running one;
//! - pause / resume / scale / terminate fired at random while jobs run: no job runs in
//!   a paused or killed sandbox, and a stopped fleet leaves no sandbox behind;
//! - ephemeral agents leave nothing behind, failures included.
//!
//! The test agent records, for every job, when it started and ended and in which
//! sandbox (its working directory), and whether its sandbox was paused or gone.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use fleet_shared::job::{JobSpec, LifecycleJob, QueueKind};
use fleet_shared::pool::{AgentState, Registry};
use fleet_shared::queue::RedisQueue;
use fleet_shared::results::JobStatus;
use fleet_tests::fixture::{FAST_RECOVERY, Fleet};
use fleet_tests::harness::queue;
use rand::Rng;

/// Records `<start ns> <end ns> <sandbox dir> <query>` per job, after a check that
/// its sandbox is neither paused nor gone (`violations` otherwise).
fn recording_agent(sleep: &str) -> String {
    format!(
        r#"q=$(cat); s=$(date +%s%N); d=$(pwd)
check() {{ if [ ! -f ../../meta.json ]; then echo "gone $d $q" >> {{dir}}/violations;
  elif grep -q '"state": *"paused"' ../../meta.json; then echo "paused $d $q" >> {{dir}}/violations; fi; }}
check; sleep {sleep}; check
echo "$s $(date +%s%N) $d $q" >> {{dir}}/leases
echo "answer to $q""#
    )
}

struct Lease {
    start: u128,
    end: u128,
    sandbox: String,
    query: String,
}

fn leases(fleet: &Fleet) -> Vec<Lease> {
    fleet
        .lines("leases")
        .iter()
        .filter_map(|l| {
            let mut parts = l.splitn(4, ' ');
            Some(Lease {
                start: parts.next()?.parse().ok()?,
                end: parts.next()?.parse().ok()?,
                sandbox: parts.next()?.to_string(),
                query: parts.next().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// No two recorded jobs overlap in one sandbox.
fn assert_no_agent_held_twice(all: &[Lease]) {
    let mut by_sandbox: BTreeMap<&str, Vec<(u128, u128, &str)>> = BTreeMap::new();
    for l in all {
        by_sandbox
            .entry(&l.sandbox)
            .or_default()
            .push((l.start, l.end, &l.query));
    }
    for (sandbox, mut spans) in by_sandbox {
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[1].0 >= w[0].1,
                "sandbox {sandbox} ran two jobs at once: {:?} and {:?}",
                w[0],
                w[1]
            );
        }
    }
}

fn sandboxes_on_disk(fleet: &Fleet) -> usize {
    std::fs::read_dir(fleet.path("sandboxes"))
        .map(|d| {
            d.filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
                .count()
        })
        .unwrap_or(0)
}

async fn registry(fleet: &Fleet) -> Registry {
    Registry::open(&fleet.settings.redis).await.unwrap()
}

async fn lifecycle(fleet: &Fleet) -> RedisQueue {
    queue(&fleet.settings, QueueKind::Lifecycle).await
}

/// Run a lifecycle job to its end; its result.
async fn run_lifecycle(fleet: &Fleet, q: &RedisQueue, job: LifecycleJob) -> serde_json::Value {
    let (id, _) = q.enqueue(JobSpec::lifecycle(job)).await.unwrap();
    let id = id.to_string();
    let record = fleet
        .eventually(
            "the lifecycle job to end",
            Duration::from_secs(60),
            || async {
                let r = q.job_record(&id).await.ok()??;
                r.status.is_final().then_some(r)
            },
        )
        .await;
    assert_eq!(record.status, JobStatus::Succeeded, "{record:?}");
    record.result.unwrap_or_default()
}

fn stop_all(fleet: &mut Fleet) {
    for w in &fleet.workers {
        w.sigterm();
    }
    for w in &mut fleet.workers {
        w.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_jobs_over_three_workers_never_share_an_agent_and_create_nothing_after_warm_up() {
    let extra = format!("{FAST_RECOVERY}\n[pool]\nmax_agents = 10\n");
    let mut fleet = Fleet::start(&recording_agent("0.01"), &extra).await;
    for name in ["w1", "w2", "w3"] {
        let i = fleet.start_worker(name);
        fleet.wait_started(i).await;
    }
    let lq = lifecycle(&fleet).await;
    run_lifecycle(
        &fleet,
        &lq,
        LifecycleJob::Scale {
            agent: "test".into(),
            size: 10,
        },
    )
    .await;
    let reg = registry(&fleet).await;
    let warm: HashSet<String> = reg
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.sandbox_id)
        .collect();
    assert_eq!(warm.len(), 10, "the pool is warm with 10 agents");
    // `fleet agents list` shows the fleet's agents (the registry), not one worker's.
    let listed = std::process::Command::new(fleet_tests::processes::binary("fleet"))
        .arg("--config")
        .arg(&fleet.config)
        .args(["--json", "agents", "list"])
        .output()
        .unwrap();
    assert!(listed.status.success(), "{listed:?}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let listed = listed["agents"].as_array().unwrap();
    assert_eq!(listed.len(), 10, "{listed:?}");
    let launchers: HashSet<&str> = listed
        .iter()
        .filter_map(|a| a["launched_by"].as_str())
        .collect();
    assert_eq!(
        launchers.len(),
        1,
        "one worker ran the scale job: {launchers:?}"
    );
    assert!(listed.iter().all(|a| a["state"] == "idle"), "{listed:?}");

    let n = 1000;
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            fleet
                .submit(JobSpec::research(format!("q{i}"), "test"))
                .await,
        );
    }
    fleet
        .eventually("all jobs to succeed", Duration::from_secs(300), || async {
            let c = fleet.queue.counts().await.ok()?;
            assert_eq!(c.dead, 0, "no job is dead-lettered");
            (c.ready == 0 && c.running == 0 && c.delayed == 0).then_some(())
        })
        .await;
    for id in ids.iter().step_by(97) {
        let r = fleet.record(&id.to_string()).await;
        assert_eq!(r.status, JobStatus::Succeeded);
        // Each result names the agent and sandbox it ran on and the sandbox time used.
        let out = &r.result.as_ref().unwrap()["output"];
        assert!(
            out["agent_id"]
                .as_str()
                .is_some_and(|a| a.starts_with("agent-")),
            "{out}"
        );
        assert!(out["sandbox_id"].as_str().is_some(), "{out}");
        let secs = out["sandbox_seconds"].as_f64().unwrap();
        assert!((0.01..60.0).contains(&secs), "{out}");
    }
    let all = leases(&fleet);
    assert_eq!(all.len(), n, "every job ran once");
    assert_no_agent_held_twice(&all);
    let used: HashSet<&str> = all.iter().map(|l| l.sandbox.as_str()).collect();
    assert!(used.len() <= 10, "only the 10 warm agents ran jobs");
    let after: HashSet<String> = reg
        .list(None)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.sandbox_id)
        .collect();
    assert_eq!(after, warm, "no agent was created after warm-up");
    assert_eq!(sandboxes_on_disk(&fleet), 10);
    let violations = fleet.lines("violations");
    assert!(violations.is_empty(), "{violations:?}");
    stop_all(&mut fleet);
    assert_eq!(
        sandboxes_on_disk(&fleet),
        0,
        "a stopped fleet leaves no sandbox"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_agent_serves_its_jobs_in_order_from_any_worker_and_survives_a_killed_one() {
    let mut fleet = Fleet::start(&recording_agent("0.3"), FAST_RECOVERY).await;
    for name in ["p1", "p2", "p3"] {
        let i = fleet.start_worker(name);
        fleet.wait_started(i).await;
    }
    let lq = lifecycle(&fleet).await;
    let launched = run_lifecycle(
        &fleet,
        &lq,
        LifecycleJob::Launch {
            agent: "test".into(),
            persistent: true,
        },
    )
    .await;
    let agent_id = launched["output"]["agent"]["agent_id"]
        .as_str()
        .unwrap_or_else(|| panic!("a launch names its agent: {launched}"))
        .to_string();

    let mut ids = Vec::new();
    for i in 0..20 {
        let mut spec = JobSpec::research(format!("job{i:02}"), "test");
        if let fleet_shared::job::JobPayload::Research(r) = &mut spec.payload {
            r.agent_id = Some(agent_id.clone());
        }
        // As `fleet submit` and the HTTP API do: enqueue, then take a place in line.
        let id = fleet.submit(spec.clone()).await;
        fleet_shared::pool::expect_submitted(&fleet.settings.redis, &[(id, &spec)])
            .await
            .unwrap();
        ids.push(id.to_string());
    }
    // Kill the worker running the sixth job on the agent, while it runs there.
    let reg = registry(&fleet).await;
    let victim_job = &ids[5];
    let victim = fleet
        .eventually(
            "the sixth job to hold the agent",
            Duration::from_secs(60),
            || async {
                let a = reg.get(&agent_id).await.ok()??;
                (a.state == AgentState::Busy && &a.holder == victim_job).then_some(a.worker)
            },
        )
        .await;
    let index = fleet
        .workers
        .iter()
        .position(|w| w.name == victim)
        .expect("the victim is one of ours");
    fleet.workers[index].kill9();
    let killed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    for id in &ids {
        fleet
            .wait_status(id, JobStatus::Succeeded, Duration::from_secs(60))
            .await;
    }
    let all = leases(&fleet);
    assert_no_agent_held_twice(&all);
    let sandboxes: HashSet<&str> = all.iter().map(|l| l.sandbox.as_str()).collect();
    assert_eq!(sandboxes.len(), 1, "every job ran on the one agent");
    let next = all
        .iter()
        .map(|l| l.start)
        .filter(|s| *s > killed_at)
        .min()
        .expect("jobs ran after the kill");
    let gap = Duration::from_nanos((next - killed_at) as u64);
    let ttl = Duration::from_secs(fleet.settings.queue.lease_ttl_secs);
    eprintln!("the first job after the kill started {gap:?} after it (TTL {ttl:?})");
    assert!(
        gap <= ttl + Duration::from_secs(2),
        "the next job started within TTL + 2 s of the kill: {gap:?}"
    );
    // Started in submission order. The killed worker's jobs (the one it ran, whose
    // command finished on its own, and those it had waiting) rejoin the line when they
    // run again; with every other worker busy waiting, later jobs may go first after a
    // grace. So the order is checked over the jobs that ran on their first attempt.
    let mut rerun = HashSet::new();
    for id in &ids {
        let r = fleet.record(id).await;
        if r.attempts > 1
            && let Some(fleet_shared::job::JobPayload::Research(q)) =
                r.spec.as_ref().map(|s| &s.payload)
        {
            rerun.insert(q.query.clone());
        }
    }
    assert!(rerun.contains("job05"), "the killed job ran again");
    let order: Vec<&str> = all
        .iter()
        .map(|l| l.query.as_str())
        // An empty query: the killed worker's own command, cut off from its stdin.
        .filter(|q| !q.is_empty() && !rerun.contains(*q))
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "jobs ran in submission order");
    assert!(
        order.len() >= 10,
        "most jobs ran on their first attempt: {order:?}"
    );
    let agents = reg.list(None).await.unwrap();
    assert_eq!(agents.len(), 1, "the agent was not duplicated: {agents:?}");
    assert_eq!(agents[0].agent_id, agent_id);
    assert_eq!(agents[0].state, AgentState::Idle);
    assert!(agents[0].jobs_served >= 19);
    stop_all(&mut fleet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_lifecycle_commands_never_touch_a_running_job_and_a_stopped_fleet_leaves_nothing() {
    let extra = format!("{FAST_RECOVERY}\n[pool]\nmax_agents = 8\n");
    let mut fleet = Fleet::start(&recording_agent("0.05"), &extra).await;
    for name in ["c1", "c2", "c3"] {
        let i = fleet.start_worker(name);
        fleet.wait_started(i).await;
    }
    let lq = lifecycle(&fleet).await;
    let reg = registry(&fleet).await;
    let n = 500;
    for i in 0..n {
        fleet
            .submit(JobSpec::research(format!("q{i}"), "test"))
            .await;
    }
    let mut commands = 0;
    let started = Instant::now();
    loop {
        let c = fleet.queue.counts().await.unwrap();
        if c.ready == 0 && c.running == 0 && c.delayed == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "jobs did not finish: {c:?}\n{}",
            fleet.logs()
        );
        let agents = reg.list(None).await.unwrap();
        let job = {
            let mut rng = rand::rng();
            let pick = |rng: &mut rand::rngs::ThreadRng| {
                if agents.is_empty() {
                    "agent-none".to_string()
                } else {
                    agents[rng.random_range(0..agents.len())].agent_id.clone()
                }
            };
            match rng.random_range(0..4) {
                0 => LifecycleJob::Pause {
                    agent_id: pick(&mut rng),
                },
                1 => LifecycleJob::Resume {
                    agent_id: pick(&mut rng),
                },
                2 => LifecycleJob::Terminate {
                    agent_id: pick(&mut rng),
                },
                _ => LifecycleJob::Scale {
                    agent: "test".into(),
                    size: rng.random_range(1..8),
                },
            }
        };
        lq.enqueue(JobSpec::lifecycle(job)).await.unwrap();
        commands += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        commands > 20,
        "commands were fired while jobs ran ({commands})"
    );
    let c = fleet.queue.counts().await.unwrap();
    assert_eq!(c.dead, 0, "every job succeeded\n{}", fleet.logs());
    let all = leases(&fleet);
    assert_eq!(all.len(), n, "every job ran once");
    assert_no_agent_held_twice(&all);
    let violations = fleet.lines("violations");
    assert!(
        violations.is_empty(),
        "jobs ran in paused or killed sandboxes: {violations:?}"
    );
    // Let the lifecycle commands still queued drain, then stop the fleet.
    fleet
        .eventually(
            "lifecycle commands to drain",
            Duration::from_secs(60),
            || async {
                let c = lq.counts().await.ok()?;
                (c.ready == 0 && c.running == 0 && c.delayed == 0).then_some(())
            },
        )
        .await;
    stop_all(&mut fleet);
    assert_eq!(
        sandboxes_on_disk(&fleet),
        0,
        "zero sandboxes after shutdown\n{}",
        fleet.logs()
    );
    assert!(
        reg.list(None).await.unwrap().is_empty(),
        "the registry is empty"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_jobs_leave_no_sandbox_behind_failures_included() {
    let script = r#"q=$(cat); case "$q" in fail*) echo "no" >&2; exit 3;; esac; echo "ok $q""#;
    let extra = FAST_RECOVERY.replace("max_attempts = 10", "max_attempts = 1");
    let mut fleet = Fleet::start(script, &extra).await;
    for name in ["e1", "e2"] {
        let i = fleet.start_worker(name);
        fleet.wait_started(i).await;
    }
    let mut ids = Vec::new();
    for i in 0..30 {
        let query = if i % 3 == 0 {
            format!("fail{i}")
        } else {
            format!("ok{i}")
        };
        let mut spec = JobSpec::research(query, "test");
        if let fleet_shared::job::JobPayload::Research(r) = &mut spec.payload {
            r.ephemeral = true;
        }
        ids.push((i, fleet.submit(spec).await.to_string()));
    }
    for (i, id) in &ids {
        let want = if i % 3 == 0 {
            JobStatus::Dead
        } else {
            JobStatus::Succeeded
        };
        fleet.wait_status(id, want, Duration::from_secs(60)).await;
    }
    let reg = registry(&fleet).await;
    fleet
        .eventually(
            "ephemeral agents to be gone",
            Duration::from_secs(10),
            || async {
                let left = reg.list(None).await.ok()?;
                (left.is_empty() && sandboxes_on_disk(&fleet) == 0).then_some(())
            },
        )
        .await;
    stop_all(&mut fleet);
}
