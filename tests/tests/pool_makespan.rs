//! How close the fleet-wide pool comes to the best its E2B plan allows: real
//! `fleet-worker` processes, the fake E2B server with E2B's latencies (create ≈ 450 ms,
//! resume ≈ 1 s, pause ≈ 2 s, kill ≈ 200 ms, each ± 20 %, seeded) enforcing a plan of
//! 20 concurrent sandboxes and 1 create (or resume) a second with 429s, and jobs whose
//! agent command takes 2 s.
//!
//! Each scenario's makespan (submission to the last job's end) is compared with the
//! best the plan allows ([`bound`]): agents can only come up one a second, then the
//! jobs are spread over them and agents reused. The bound is computed from what this
//! run measured of the parts that are not scheduling — how long a job's command takes,
//! how long from one job's start to the next on one agent, how long from a sandbox
//! running to its first job starting — so a loaded machine makes both sides slower
//! together and the ratio stays a statement about scheduling.
//!
//! - 100 jobs (suite) with one worker and with three: ≤ 1.05× the bound;
//! - a second wave after every idle agent was paused (each job then waits for a
//!   resume, one a second): ≤ 1.10× that wave's bound;
//! - ephemeral jobs while 20 idle warm agents hold the whole plan: they evict idle
//!   agents at once instead of waiting behind them: ≤ 1.05× the bound.
//!
//! The full 200-job versions are the `#[ignore]`d `full_*` tests (run in
//! BENCHMARKS.md). The scenarios run one at a time (a shared lock): they measure time.

use std::collections::{BTreeMap, BinaryHeap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_shared::job::{JobPayload, JobSpec};
use fleet_tests::fake_e2b::{FakeE2b, Latencies, Plan, StartRecord};
use fleet_tests::fixture::Fleet;

const PLAN_SANDBOXES: usize = 20;
const STARTS_PER_SECOND: f64 = 1.0;
/// What the test agent sleeps.
const JOB_SECS: f64 = 2.0;
/// The fake's `Retry-After` on a rate refusal.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One scenario at a time: they measure time on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Appends `<start ns> <end ns> <working dir> <query>` for every job.
const AGENT: &str = r#"q=$(cat); s=$(date +%s%N); sleep 2
echo "$s $(date +%s%N) $(pwd) $q" >> {dir}/runs
printf 'answer: %s' "$q""#;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn ns(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

fn secs(ns: u128) -> f64 {
    ns as f64 / 1e9
}

#[derive(Debug, Clone)]
struct Run {
    start: u128,
    end: u128,
    /// The backing sandbox the job ran in.
    backing: String,
    query: String,
}

struct Scenario {
    fake: FakeE2b,
    fleet: Fleet,
}

impl Scenario {
    async fn start(workers: usize, concurrency: usize, pool: &str) -> Scenario {
        let fake = FakeE2b::start_local().await;
        fake.faults().set_plan(Some(Plan {
            max_running: PLAN_SANDBOXES,
            starts_per_second: STARTS_PER_SECOND,
        }));
        fake.faults().set_latencies(Some(Latencies::realistic()));
        let extra = format!(
            r#"
[queue]
lease_ttl_secs = 5
reclaim_interval_ms = 200
[worker]
concurrency = {concurrency}
drain_timeout_secs = 20
[pool]
max_agents = {PLAN_SANDBOXES}
{pool}
[sandbox]
provider = "e2b"
[sandbox.e2b]
api_url = "{api}"
envd_url = "{envd}"
max_concurrent_sandboxes = {PLAN_SANDBOXES}
creates_per_second = {STARTS_PER_SECOND:?}
"#,
            api = fake.api_url(),
            envd = fake.envd_url(),
        );
        let mut fleet = Fleet::start(AGENT, &extra).await;
        let env = [("E2B_API_KEY", fake.api_key().to_string())];
        for i in 0..workers {
            let w = fleet.start_worker_with_env(&format!("m{i}"), &env);
            fleet.wait_started(w).await;
        }
        Scenario { fake, fleet }
    }

    /// Submit `n` jobs (ephemeral or pooled) as one batch and wait for them all; the
    /// submission time (ns) and the runs they recorded.
    async fn wave(&self, name: &str, n: usize, ephemeral: bool) -> (u128, Vec<Run>, usize) {
        let refused_before = self.fake.counters().rate_refusal_gaps.len();
        let specs: Vec<JobSpec> = (0..n)
            .map(|i| {
                let mut spec = JobSpec::research(format!("{name}-{i}"), "test");
                if let JobPayload::Research(r) = &mut spec.payload {
                    r.ephemeral = ephemeral;
                }
                spec
            })
            .collect();
        let submitted = now_ns();
        self.fleet
            .queue
            .enqueue_many(specs, Some(name))
            .await
            .unwrap();
        self.fleet
            .wait_batch_final(name, n as u64, Duration::from_secs(300))
            .await;
        let b = self.fleet.queue.batch_record(name).await.unwrap().unwrap();
        assert_eq!(
            b.count(fleet_shared::results::JobStatus::Succeeded),
            n as u64,
            "every job of {name} succeeded: {b:?}\n{}",
            self.fleet.logs()
        );
        let prefix = format!("{name}-");
        let runs: Vec<Run> = self
            .fleet
            .lines("runs")
            .iter()
            .filter_map(|l| {
                let mut p = l.splitn(4, ' ');
                Some(Run {
                    start: p.next()?.parse().ok()?,
                    end: p.next()?.parse().ok()?,
                    backing: p.next()?.to_string(),
                    query: p.next()?.to_string(),
                })
            })
            .filter(|r| r.query.starts_with(&prefix))
            .collect();
        assert_eq!(runs.len(), n, "each job of {name} ran once");
        // The fleet spaces its starts by the plan's interval plus a 20 ms margin; a
        // start that reached the fake sooner than the interval after the previous one
        // was sent in its turn but delayed on the way (a loaded machine): E2B refuses
        // it (429, Retry-After 1 s) and every start waits that second. (Seen: up to
        // 176 ms late under load.) One refused well before its turn — within 750 ms of
        // the previous start — would be a scheduling fault: none may be.
        let gaps: Vec<Duration> = self.fake.counters().rate_refusal_gaps[refused_before..].to_vec();
        assert!(
            gaps.iter().all(|g| *g >= Duration::from_millis(750)),
            "{name}: starts were sent out of turn: refused {gaps:?} after the previous start"
        );
        (submitted, runs, gaps.len())
    }

    fn stop(mut self) {
        for w in &self.fleet.workers {
            w.sigterm();
        }
        for w in &mut self.fleet.workers {
            w.assert_clean_exit();
        }
        let c = self.fake.counters();
        assert_eq!(c.running, 0, "a stopped fleet leaves nothing running");
        drop(self.fake);
    }
}

fn median(mut v: Vec<u128>) -> u128 {
    assert!(!v.is_empty());
    v.sort();
    v[v.len() / 2]
}

/// What one wave measured, and the best the plan allows for it.
#[derive(Debug)]
struct Measured {
    jobs: usize,
    makespan: f64,
    bound: f64,
    /// Median job length and start-to-start cycle on one agent (s).
    job: f64,
    cycle: f64,
    /// Fastest sandbox-running to first-job-start (s).
    ready: f64,
    agents: usize,
    /// Starts refused for arriving early (machine delays), each adding RETRY_AFTER.
    refused: usize,
}

impl Measured {
    fn ratio(&self) -> f64 {
        self.makespan / self.bound
    }
}

/// The best makespan the plan allows for `runs`, submitted at `submitted`, whose
/// agents each had to be started by a create (or a resume, `resume`) first:
///
/// - the plan starts one sandbox per `1 / STARTS_PER_SECOND`, the first sent at
///   `submitted + head` (`head`: what must happen first, e.g. killing an idle agent to
///   free a plan slot), so sandbox k runs at `submitted + head + k / rate + latency`
///   (`latency`: the create's or resume's median at the fake);
/// - its first job starts `ready` later: the fastest observed in this run, from a
///   sandbox running to its first job's command starting (agent setup, or the
///   resume check, and the exec);
/// - each job then holds its agent for `cycle` (median start-to-start of consecutive
///   jobs on one agent in this run: 2 s plus the give-back, lease and exec) and its
///   last job ends `job` (median command length) after it starts; with `reuse` off
///   (ephemeral jobs) an agent runs one job;
/// - at most PLAN_SANDBOXES at once, and jobs are spread greedily over agents as they
///   free up (no schedule does better with identical jobs);
/// - plus `RETRY_AFTER` for each start the fake refused for arriving early because
///   the machine delayed it ([`Scenario::wave`] checks they were sent in turn): the
///   plan then holds every start back that long.
fn bound(
    submitted: u128,
    runs: &[Run],
    starts: &[StartRecord],
    head: Duration,
    latency: Duration,
    reuse: bool,
    refused: usize,
) -> Measured {
    // The start (create or resume) that brought up each backing sandbox, its latest
    // before the sandbox's first job in this wave.
    let mut by_agent: BTreeMap<&str, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        let backing = starts
            .iter()
            .map(|s| s.backing.as_str())
            .find(|b| r.backing.contains(b))
            .unwrap_or_else(|| panic!("no sandbox start for {}", r.backing));
        by_agent.entry(backing).or_default().push(r);
    }
    let mut ready = Vec::new();
    let mut cycles = Vec::new();
    for (backing, rs) in &mut by_agent {
        rs.sort_by_key(|r| r.start);
        let first = rs[0].start;
        if let Some(up) = starts
            .iter()
            .filter(|s| {
                s.backing == *backing && ns(s.running) <= first && ns(s.arrived) >= submitted
            })
            .map(|s| ns(s.running))
            .max()
        {
            ready.push(first - up);
        }
        cycles.extend(rs.windows(2).map(|w| w[1].start - w[0].start));
    }
    let job = median(runs.iter().map(|r| r.end - r.start).collect());
    let cycle = if cycles.is_empty() {
        job
    } else {
        median(cycles)
    };
    let ready = *ready
        .iter()
        .min()
        .expect("some agent was started in this wave");
    let interval = (1e9 / STARTS_PER_SECOND) as u128;
    let first = head.as_nanos() + latency.as_nanos() + ready;
    // Min-heap of when each agent can start its next job (ns after submission).
    let mut free: BinaryHeap<std::cmp::Reverse<u128>> = (0..PLAN_SANDBOXES.min(runs.len()))
        .map(|k| std::cmp::Reverse(first + k as u128 * interval))
        .collect();
    let mut end = 0;
    for _ in 0..runs.len() {
        let std::cmp::Reverse(t) = free.pop().unwrap();
        end = end.max(t + job);
        if reuse {
            free.push(std::cmp::Reverse(t + cycle));
        } else {
            // An ephemeral agent is killed, freeing its slot; a fresh one follows in
            // the next free start turn at the earliest, modelled by the turns above.
            free.push(std::cmp::Reverse(u128::MAX / 2));
        }
    }
    let last_end = runs.iter().map(|r| r.end).max().unwrap();
    Measured {
        jobs: runs.len(),
        makespan: secs(last_end - submitted),
        bound: secs(end) + refused as f64 * RETRY_AFTER.as_secs_f64(),
        refused,
        job: secs(job),
        cycle: secs(cycle),
        ready: secs(ready),
        agents: by_agent.len(),
    }
}

/// Ephemeral bound: every job needs its own sandbox; sandbox k is sent in start turn
/// k (nothing is reused), so the last job ends at `first + (n - 1) / rate + job`.
fn ephemeral_bound(
    submitted: u128,
    runs: &[Run],
    starts: &[StartRecord],
    head: Duration,
    latency: Duration,
    refused: usize,
) -> Measured {
    let mut m = bound(submitted, runs, starts, head, latency, true, refused);
    let first = head.as_secs_f64() + latency.as_secs_f64() + m.ready;
    m.bound = first
        + (runs.len() - 1) as f64 / STARTS_PER_SECOND
        + m.job
        + refused as f64 * RETRY_AFTER.as_secs_f64();
    m
}

fn report(what: &str, m: &Measured, limit: f64) {
    assert!(m.job >= JOB_SECS, "jobs ran their 2 s: {m:?}");
    eprintln!(
        "{what}: {} jobs in {:.2} s, bound {:.2} s, ratio {:.3} (limit {limit}); job {:.3} s, cycle {:.3} s, ready {:.3} s, {} agents, {} late starts refused",
        m.jobs,
        m.makespan,
        m.bound,
        m.ratio(),
        m.job,
        m.cycle,
        m.ready,
        m.agents,
        m.refused
    );
    assert!(
        m.ratio() <= limit,
        "{what}: makespan {:.2} s is {:.3}× the best the plan allows ({:.2} s); limit {limit}×: {m:?}",
        m.makespan,
        m.ratio(),
        m.bound
    );
}

fn check_plan(fake: &FakeE2b) {
    let c = fake.counters();
    assert!(
        c.max_running <= PLAN_SANDBOXES,
        "peak running {} > {PLAN_SANDBOXES}",
        c.max_running
    );
    assert_eq!(c.cap_refusals, 0, "the fleet never hit the plan's cap");
    eprintln!(
        "plan: created {}, resumed {}, paused {}, killed {}, peak running {}, rate 429s {} (arrived {:?} after the last start)",
        c.created,
        c.resumed,
        c.pauses,
        c.killed,
        c.max_running,
        c.rate_refusals,
        c.rate_refusal_gaps
    );
}

async fn cold_pool(workers: usize, jobs: usize) {
    let _one = SERIAL.lock().await;
    // Enough handlers that a freed agent always has a job waiting for it.
    let concurrency = (PLAN_SANDBOXES + 4).div_ceil(workers);
    let s = Scenario::start(workers, concurrency, "").await;
    let (submitted, runs, refused) = s.wave("cold", jobs, false).await;
    let m = bound(
        submitted,
        &runs,
        &s.fake.start_log(),
        Duration::ZERO,
        Latencies::realistic().create,
        true,
        refused,
    );
    check_plan(&s.fake);
    report(
        &format!("{jobs} jobs, cold pool, {workers} worker(s)"),
        &m,
        1.05,
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_pool_on_one_worker_comes_within_5_percent_of_the_plans_best() {
    cold_pool(1, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_pool_on_three_workers_comes_within_5_percent_of_the_plans_best() {
    cold_pool(3, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark scenario (BENCHMARKS.md): 200 jobs"]
async fn full_200_jobs_cold_pool_one_worker() {
    cold_pool(1, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark scenario (BENCHMARKS.md): 200 jobs"]
async fn full_200_jobs_cold_pool_three_workers() {
    cold_pool(3, 200).await;
}

/// Wave 1 warms the pool, its idle agents are all paused, then wave 2 runs on
/// resumes.
async fn second_wave(workers: usize, jobs: usize) {
    let _one = SERIAL.lock().await;
    let concurrency = (PLAN_SANDBOXES + 4).div_ceil(workers);
    let s = Scenario::start(workers, concurrency, "idle_pause_after_secs = 1\n").await;
    s.wave("first", jobs, false).await;
    let agents = s
        .fleet
        .eventually(
            "every idle agent paused",
            Duration::from_secs(120),
            || async {
                let c = s.fake.counters();
                (c.running == 0 && c.paused > 0).then_some(c.paused)
            },
        )
        .await;
    let (submitted, runs, refused) = s.wave("second", jobs, false).await;
    let m = bound(
        submitted,
        &runs,
        &s.fake.start_log(),
        Duration::ZERO,
        Latencies::realistic().resume,
        true,
        refused,
    );
    eprintln!("{agents} agents were paused before the second wave");
    check_plan(&s.fake);
    report(
        &format!("{jobs} jobs after the pool was paused, {workers} worker(s)"),
        &m,
        1.10,
    );
    s.stop();
}

async fn ephemeral_at_a_full_plan(workers: usize, jobs: usize) {
    let _one = SERIAL.lock().await;
    let concurrency = (PLAN_SANDBOXES + 4).div_ceil(workers);
    let s = Scenario::start(workers, concurrency, "").await;
    // Fill the plan with warm idle agents (a pooled wave on all 20).
    s.wave("warm", PLAN_SANDBOXES * 3, false).await;
    s.fleet
        .eventually("20 idle warm agents", Duration::from_secs(60), || async {
            (s.fake.counters().running == PLAN_SANDBOXES).then_some(())
        })
        .await;
    let (submitted, runs, refused) = s.wave("ephemeral", jobs, true).await;
    let m = ephemeral_bound(
        submitted,
        &runs,
        &s.fake.start_log(),
        // The first create needs a plan slot: an idle agent killed first.
        Latencies::realistic().kill,
        Latencies::realistic().create,
        refused,
    );
    check_plan(&s.fake);
    report(
        &format!("{jobs} ephemeral jobs beside 20 idle agents, {workers} worker(s)"),
        &m,
        1.05,
    );
    s.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_wave_after_the_pool_paused_comes_within_10_percent_of_the_plans_best() {
    second_wave(3, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark scenario (BENCHMARKS.md): 200 jobs"]
async fn full_200_jobs_second_wave_after_pause() {
    second_wave(3, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_jobs_beside_idle_agents_holding_the_plan_come_within_5_percent() {
    ephemeral_at_a_full_plan(3, 20).await;
}
