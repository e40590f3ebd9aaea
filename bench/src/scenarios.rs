//! The scenarios, each run for this project and then for apalis-redis on the same
//! redis-server, with `FLUSHALL` before every measurement:
//!
//! 1. `enqueue`: bulk enqueue of N jobs (and one at a time, N/10 jobs).
//! 2. `drain`: N no-op jobs already queued, drained by one and by two worker processes.
//! 3. `latency`: an idle worker, one job at a time: enqueue → handler start.
//! 4. `recovery`: a worker is `kill -9`'d holding a job; time until another runs it.
//! 5. `memory`: Redis `used_memory` per queued job; worker RSS with N queued, 100 in flight.
//! 6. `pool`: warm agent lease latency; makespan of 1,000 × 200 ms jobs over 10 agents.
//! 7. `events`: live events, agent prints a line → an SSE client sees it (this project only).
//!
//! Each scenario returns report rows; the drain also records the profile of the path.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apalis::prelude::TaskSink;
use fleet_tests::RedisServer;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::child::{self, WorkerProc, WorkerSpec};
use crate::report::{Better, Report, Row, Value};
use crate::util::{self, CommandStats, now_us};
use crate::{Cli, System, baseline, events, fleet, pool, work};

/// Pickup-latency jobs not recorded (connections and script cache warm up).
const WARM_UP: usize = 1;

/// Worker concurrency in the RSS scenario (the 100 jobs in flight).
const RSS_IN_FLIGHT: usize = 100;

struct Bench<'a> {
    cli: &'a Cli,
    url: String,
    /// Admin connection (FLUSHALL, INFO, polling).
    admin: ConnectionManager,
    /// Connection for blocking pops (its response timeout allows for long blocks).
    blocking: ConnectionManager,
    redis_pid: u32,
    rows: Vec<Row>,
    notes: Vec<String>,
    profile: Vec<String>,
}

async fn connect(url: &str, response_timeout: Duration) -> Result<ConnectionManager> {
    Ok(redis::Client::open(url)?
        .get_connection_manager_with_config(
            redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(response_timeout))
                .set_connection_timeout(Some(Duration::from_secs(5))),
        )
        .await?)
}

pub async fn run_all(cli: &Cli) -> Result<Report> {
    let server = RedisServer::start_with(false);
    let url = server.url();
    eprintln!("redis-server on {url} (AOF off, no RDB snapshots)");
    let mut admin = connect(&url, Duration::from_secs(30)).await?;
    let blocking = connect(&url, Duration::from_secs(600)).await?;
    let machine = util::machine(&mut admin).await?;
    let redis_pid = util::redis_pid(&mut admin).await?;
    let mut b = Bench {
        cli,
        url,
        admin,
        blocking,
        redis_pid,
        rows: Vec::new(),
        notes: Vec::new(),
        profile: Vec::new(),
    };
    let want = |s: &str| cli.only.iter().any(|o| o == s);
    if want("enqueue") {
        b.enqueue().await.context("scenario enqueue")?;
    }
    if want("drain") {
        b.drain().await.context("scenario drain")?;
    }
    if want("latency") {
        b.latency().await.context("scenario latency")?;
    }
    if want("recovery") {
        for ttl in &cli.recovery_ttls {
            b.recovery(*ttl).await.context("scenario recovery")?;
        }
    }
    if want("memory") {
        b.memory().await.context("scenario memory")?;
    }
    if want("pool") {
        b.pool().await.context("scenario pool")?;
    }
    if want("gateway") {
        b.flush().await?;
        let (rows, notes) = crate::gateway::overhead(&b.url, cli.samples)
            .await
            .context("scenario gateway")?;
        b.rows.extend(rows);
        b.notes.extend(notes);
    }
    if want("ratelimit") {
        b.flush().await?;
        let (rows, notes) =
            crate::gateway::shared_limit(&b.url, cli.gateway_rpm, cli.gateway_batch)
                .await
                .context("scenario ratelimit")?;
        b.rows.extend(rows);
        b.notes.extend(notes);
    }
    if want("events") {
        b.events().await.context("scenario events")?;
    }
    if want("shards") {
        b.flush().await?;
        let (rows, notes) = crate::shards::sharding(cli, &b.url)
            .await
            .context("scenario shards")?;
        b.rows.extend(rows);
        b.notes.extend(notes);
    }
    b.flush().await?;
    let mut command = String::from("cargo run --release -p fleet-bench");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    Ok(Report {
        machine,
        command,
        rows: b.rows,
        notes: b.notes,
        profile: b.profile,
    })
}

fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}

impl Bench<'_> {
    async fn flush(&mut self) -> Result<()> {
        let _: () = redis::cmd("FLUSHALL")
            .arg("SYNC")
            .query_async(&mut self.admin)
            .await?;
        Ok(())
    }

    fn spec(&self, system: System, name: &str, concurrency: usize) -> WorkerSpec {
        WorkerSpec {
            system,
            redis_url: self.url.clone(),
            name: name.to_string(),
            concurrency,
            lease_ttl_secs: 30,
            apalis_poll_ms: self.cli.apalis_poll_ms,
            apalis_batch: self.cli.apalis_batch,
            apalis_heartbeat_secs: 30,
            apalis_missed: 10,
            // Only the drain turns it on (see `drain`): with it, an apalis worker whose
            // fetch came back empty was never polled again (seen with MONITOR), so idle
            // pickup and recovery would only happen at the 30 s heartbeat.
            apalis_parallelize: false,
            apalis_rearming_poll: self.cli.apalis_rearming_poll,
            pool_root: None,
            shards: 1,
        }
    }

    // ------------------------------------------------------------------ 1. enqueue

    async fn enqueue(&mut self) -> Result<()> {
        let n = self.cli.jobs;
        let mut bulk = Row::new(format!("Bulk enqueue, {n} jobs"), "jobs/s", Better::Higher);
        let one_n = (n / 10).max(1);
        let mut single = Row::new(
            format!("Enqueue one at a time, {one_n} jobs, 1 producer"),
            "jobs/s",
            Better::Higher,
        );

        progress(format!("enqueue: this project, {n} jobs in bulk"));
        self.flush().await?;
        let q = fleet::open(&self.url).await?;
        let specs = work::specs("noop", n);
        let t = Instant::now();
        q.enqueue_many(specs, None).await?;
        let el = t.elapsed();
        let c = q.counts().await?;
        if c.ready != n as u64 {
            bail!("after the bulk enqueue {} jobs are ready, not {n}", c.ready);
        }
        bulk.fleet = Value::Num(n as f64 / el.as_secs_f64());

        progress(format!("enqueue: this project, {one_n} jobs one at a time"));
        self.flush().await?;
        let specs = work::specs("noop", one_n);
        let t = Instant::now();
        for s in specs {
            q.enqueue(s).await?;
        }
        single.fleet = Value::Num(one_n as f64 / t.elapsed().as_secs_f64());

        progress(format!("enqueue: apalis-redis, {n} jobs with push_bulk"));
        self.flush().await?;
        let mut storage = baseline::producer(&self.url).await?;
        let specs = work::specs("noop", n);
        let t = Instant::now();
        baseline::push_bulk(&mut storage, specs).await?;
        let el = t.elapsed();
        let scheduled: u64 = self
            .admin
            .zcard(format!("{}:scheduled", baseline::QUEUE))
            .await?;
        if scheduled != n as u64 {
            bail!("after push_bulk {scheduled} tasks are scheduled, not {n}");
        }
        bulk.apalis = Value::Num(n as f64 / el.as_secs_f64());

        progress(format!("enqueue: apalis-redis, {one_n} jobs one at a time"));
        self.flush().await?;
        let specs = work::specs("noop", one_n);
        let t = Instant::now();
        for s in specs {
            storage
                .push(s)
                .await
                .map_err(|e| anyhow::anyhow!("push: {e:?}"))?;
        }
        single.apalis = Value::Num(one_n as f64 / t.elapsed().as_secs_f64());

        self.rows.push(bulk);
        self.rows.push(single);
        self.notes.push(format!(
            "**Enqueue**: one producer task, no worker running. This project: one \
             `RedisQueue::enqueue_many` call for all {n} jobs (the library sends them in \
             chunks of 500 per script call). apalis-redis: `push_bulk` in chunks of {} (one \
             `batch_push.lua` EVAL each). apalis puts every push in its `scheduled` ZSET; \
             {n} due entries would make the next worker fetch fail (the ~8,000 `unpack` \
             limit), so only the push is measured and the data is flushed before any worker \
             starts. One-at-a-time rows: `enqueue(spec)` vs `push(spec)`, awaited in turn. \
             Both carry the same payload: a `JobSpec` (serialized JSON, ~110 bytes).",
            baseline::PUSH_CHUNK
        ));
        self.flush().await
    }

    // -------------------------------------------------------------------- 2. drain

    async fn drain(&mut self) -> Result<()> {
        let n = self.cli.drain_jobs;
        let conc = self.cli.concurrency;
        let repeat = self.cli.drain_repeat.max(1);
        let mut ranges = Vec::new();
        for feed in [Feed::Steady, Feed::Backlog] {
            for workers in [1usize, 2] {
                let mut row = Row::new(
                    format!(
                        "Drain {n} no-op jobs, {}, {workers} worker process{} × concurrency {conc}",
                        match feed {
                            Feed::Steady => "fed to keep ≤ 2,000 queued",
                            Feed::Backlog => "all queued up front",
                        },
                        if workers == 1 { "" } else { "es" }
                    ),
                    "jobs/s",
                    Better::Higher,
                );
                let mut f_rates = Vec::new();
                let mut a_rates = Vec::new();
                // Alternate the two systems so that load from other work on the machine
                // falls on both alike; report the median.
                for r in 0..repeat {
                    let f = self.drain_fleet(n, workers, feed).await?;
                    if self.cli.fleet_only {
                        progress(format!(
                            "drain {feed:?} {workers}w run {}: this project {:.0}/s ({})",
                            r + 1,
                            f.rate,
                            f.busy()
                        ));
                        continue;
                    }
                    let a = self.drain_apalis(n, workers, feed).await?;
                    progress(format!(
                        "drain {feed:?} {workers}w run {}: this project {:.0}/s ({}), \
                         apalis {:.0}/s ({})",
                        r + 1,
                        f.rate,
                        f.busy(),
                        a.rate,
                        a.busy()
                    ));
                    f_rates.push(f.rate);
                    a_rates.push(a.rate);
                    if workers == 1 && r + 1 == repeat {
                        self.profile_lines(&f, &a, n, feed);
                    }
                }
                if self.cli.fleet_only {
                    continue;
                }
                f_rates.sort_by(f64::total_cmp);
                a_rates.sort_by(f64::total_cmp);
                ranges.push(format!(
                    "{feed:?}/{workers}: this project {:.0}–{:.0}, apalis {:.0}–{:.0}",
                    f_rates[0],
                    f_rates[f_rates.len() - 1],
                    a_rates[0],
                    a_rates[a_rates.len() - 1]
                ));
                row.fleet = Value::Num(median(&f_rates));
                row.apalis = Value::Num(median(&a_rates));
                self.rows.push(row);
            }
        }
        self.notes.push(format!(
            "**Drain**: worker processes (this binary in `--worker` mode) are started, connect, \
             and say `ready`; the clock starts when all are told `go` and stops when the parent, \
             polling Redis every 1–5 ms, sees all {n} jobs settled (this project: nothing ready, \
             running or delayed; apalis: all ids in its `done` set). *Fed*: the parent enqueues \
             1,000 jobs whenever fewer than 1,000 are waiting, so at most ~2,000 are ever \
             queued (the steady state of a busy queue; for apalis these pushes go through its \
             own `scheduled` → `active` promotion, well under its ~8,000 limit). *All queued \
             up front*: {n} jobs are enqueued before the workers start (not timed); apalis' \
             entries are moved from `scheduled` to `active` by hand in chunks of 5,000 (its \
             fetch would fail on {n} due entries), the state its own fetch would leave them \
             in. Its `acquire_leases.lua` runs `LREM active 1 <id>` for every task after the \
             fetch has already trimmed the id off the list, so every task scans the whole \
             remaining backlog: apalis slows down as the backlog grows, which is why both \
             feeds are reported. Each figure is the median of {repeat} runs, the two systems \
             alternating (ranges, jobs/s: {}). Each process: one apalis `Worker` at \
             concurrency {conc}. This project: `RedisBackend::start(.., {conc}, ..)` + \
             `LeaseKeeper` (lease 30 s, renew every 10 s, reclaim every 1 s). apalis-redis: \
             `poll_with_interval({} ms)`, `batch_size({})`, `.concurrency({conc})`, {}, other \
             `Config` defaults (lock_tasks, persist_results, emit_events on), a unique worker \
             name per process.",
            ranges.join("; "),
            self.cli.apalis_poll_ms,
            self.cli.apalis_batch,
            if self.cli.apalis_no_parallelize {
                "no `parallelize`"
            } else {
                "`.parallelize(tokio::spawn)` (about 20% faster here than without)"
            }
        ));
        self.flush().await
    }

    async fn drain_fleet(&mut self, n: usize, workers: usize, feed: Feed) -> Result<DrainRun> {
        self.flush().await?;
        let q = fleet::open(&self.url).await?;
        let mut specs = work::specs("noop", n).into_iter();
        if feed == Feed::Backlog {
            q.enqueue_many(specs.by_ref().collect(), None).await?;
        }
        let wspecs: Vec<WorkerSpec> = (0..workers)
            .map(|i| self.spec(System::Fleet, &format!("fleet-w{i}"), self.cli.concurrency))
            .collect();
        let mut procs = child::spawn_all(&wspecs).await?;
        let before = self.snapshot(&procs).await?;
        child::go_all(&mut procs).await?;
        let t = Instant::now();
        let deadline = t + drain_limit(n);
        let mut looks = 0u64;
        let result: Result<()> = async {
            loop {
                let c = q.counts().await?;
                looks += 1;
                if c.dead > 0 {
                    bail!("{} jobs were dead-lettered during the drain", c.dead);
                }
                let left = specs.len();
                if left > 0 && c.ready < FEED_LOW {
                    let chunk: Vec<_> = specs.by_ref().take(FEED_CHUNK).collect();
                    q.enqueue_many(chunk, None).await?;
                    continue;
                }
                if left == 0 && c.ready == 0 && c.running == 0 && c.delayed == 0 {
                    return Ok(());
                }
                if procs.iter_mut().any(|p| p.exited().is_some()) {
                    bail!("a worker process exited during the drain");
                }
                if Instant::now() > deadline {
                    bail!("not drained within {:?}: {c:?}", drain_limit(n));
                }
                tokio::time::sleep(poll_pause(left)).await;
            }
        }
        .await;
        // The parent's own polling: counts() = LLEN + 3 × ZCARD per look.
        let polling = [("llen", looks), ("zcard", 3 * looks)];
        self.end_drain(n, t, procs, &before, result, &polling).await
    }

    async fn drain_apalis(&mut self, n: usize, workers: usize, feed: Feed) -> Result<DrainRun> {
        self.flush().await?;
        let mut storage = baseline::producer(&self.url).await?;
        let mut specs = work::specs("noop", n).into_iter();
        if feed == Feed::Backlog {
            baseline::push_bulk(&mut storage, specs.by_ref().collect()).await?;
            baseline::promote_all(&mut self.admin).await?;
        }
        let wspecs: Vec<WorkerSpec> = (0..workers)
            .map(|i| {
                let mut s = self.spec(
                    System::Apalis,
                    &format!("apalis-w{i}"),
                    self.cli.concurrency,
                );
                s.apalis_parallelize = !self.cli.apalis_no_parallelize;
                s
            })
            .collect();
        let mut procs = child::spawn_all(&wspecs).await?;
        let before = self.snapshot(&procs).await?;
        child::go_all(&mut procs).await?;
        let t = Instant::now();
        let deadline = t + drain_limit(n);
        let mut looks = 0u64;
        let mut admin = self.admin.clone();
        let result: Result<()> = async {
            loop {
                let (done, active, scheduled): (u64, u64, u64) = redis::pipe()
                    .scard(format!("{}:done", baseline::QUEUE))
                    .llen(format!("{}:active", baseline::QUEUE))
                    .zcard(format!("{}:scheduled", baseline::QUEUE))
                    .query_async(&mut admin)
                    .await?;
                looks += 1;
                let left = specs.len();
                if left > 0 && active + scheduled < FEED_LOW {
                    let chunk: Vec<_> = specs.by_ref().take(FEED_CHUNK).collect();
                    baseline::push_bulk(&mut storage, chunk).await?;
                    continue;
                }
                if left == 0 && done >= n as u64 {
                    return Ok(());
                }
                if procs.iter_mut().any(|p| p.exited().is_some()) {
                    bail!("a worker process exited during the drain ({done}/{n} done)");
                }
                if Instant::now() > deadline {
                    bail!("not drained within {:?}: {done}/{n} done", drain_limit(n));
                }
                tokio::time::sleep(poll_pause(left)).await;
            }
        }
        .await;
        let polling = [("scard", looks), ("llen", looks), ("zcard", looks)];
        self.end_drain(n, t, procs, &before, result, &polling).await
    }

    /// The end of a drain run, either system: stop the clock, take the after-snapshot,
    /// stop the workers, and count Redis' work without the parent's own `polling`
    /// commands (name, how many).
    async fn end_drain(
        &mut self,
        n: usize,
        started: Instant,
        mut procs: Vec<WorkerProc>,
        before: &Snapshot,
        result: Result<()>,
        polling: &[(&str, u64)],
    ) -> Result<DrainRun> {
        let elapsed = started.elapsed();
        let after = self.snapshot(&procs).await?;
        child::kill_all(&mut procs).await;
        result?;
        let mut stats = util::stats_delta(&before.stats, &after.stats);
        for (cmd, count) in polling {
            subtract(&mut stats, cmd, *count);
        }
        Ok(DrainRun::new(n, elapsed, stats, before, &after))
    }

    async fn snapshot(&mut self, procs: &[WorkerProc]) -> Result<Snapshot> {
        Ok(Snapshot {
            stats: util::command_stats(&mut self.admin).await?,
            redis_cpu: util::proc_cpu(self.redis_pid).unwrap_or_default(),
            worker_cpu: procs
                .iter()
                .map(|p| util::proc_cpu(p.pid).unwrap_or_default())
                .sum(),
        })
    }

    fn profile_lines(&mut self, f: &DrainRun, a: &DrainRun, n: usize, feed: Feed) {
        let p = &mut self.profile;
        p.push(match feed {
            Feed::Steady => format!(
                "### Steady state: one worker process, {n} jobs fed in while it runs\n\n\
                 Everything Redis did for each job end to end: the producer's enqueue *and* the \
                 worker's fetch and settle (the parent's own polling subtracted).\n"
            ),
            Feed::Backlog => format!(
                "### All {n} jobs queued up front: one worker process\n\n\
                 The workers' part only (fetch and settle; the enqueue happened before).\n"
            ),
        });
        if feed == Feed::Steady {
            p.insert(
                0,
                "Measured with `INFO commandstats` deltas and `/proc/<pid>/stat` CPU time of \
                 redis-server and of the worker process, in the last of the drain runs. A \
                 \"round trip\" is a command a client sent (EVALSHA/EVAL/BZPOPMIN/…); \
                 \"commands inside scripts\" are the `redis.call`s those scripts made.\n"
                    .to_string(),
            );
        }
        p.push("| Per job | This project | apalis-redis |".into());
        p.push("|---|---:|---:|".into());
        let rows: [(&str, ProfileCell); 9] = [
            ("Round trips (client commands)", |d| {
                format!("{:.2}", d.round_trips as f64 / d.n as f64)
            }),
            ("of which EVALSHA/EVAL", |d| {
                format!("{:.2}", d.evals as f64 / d.n as f64)
            }),
            ("Commands run inside scripts", |d| {
                format!("{:.1}", d.inner as f64 / d.n as f64)
            }),
            ("Redis time in scripts (commandstats usec)", |d| {
                format!("{:.1} µs", d.eval_usec as f64 / d.n as f64)
            }),
            ("… of which the commands inside", |d| {
                format!("{:.1} µs", d.inner_usec as f64 / d.n as f64)
            }),
            (
                "… of which script-call overhead (Lua, args, replies)",
                |d| {
                    format!(
                        "{:.1} µs",
                        d.eval_usec.saturating_sub(d.inner_usec) as f64 / d.n as f64
                    )
                },
            ),
            ("redis-server CPU (/proc)", |d| {
                format!("{:.1} µs", d.redis_cpu.as_secs_f64() * 1e6 / d.n as f64)
            }),
            ("Worker process CPU (/proc)", |d| {
                format!("{:.1} µs", d.worker_cpu.as_secs_f64() * 1e6 / d.n as f64)
            }),
            ("Wall time", |d| {
                format!("{:.1} µs", d.elapsed.as_secs_f64() * 1e6 / d.n as f64)
            }),
        ];
        for (label, get) in rows {
            p.push(format!("| {label} | {} | {} |", get(f), get(a)));
        }
        let fetches = f.stats.get("zrange").map(|s| s.0).unwrap_or(0);
        let other_calls = f.evals.saturating_sub(fetches);
        let a_fetches = a.stats.get("lrange").map(|s| s.0).unwrap_or(0);
        p.push(format!(
            "\nThis project: {fetches} `fetch` calls for {n} jobs ({:.1} jobs per fetch; the \
             fetch script's closing `ZRANGE` counts them) and {other_calls} other script calls \
             (settling — `complete` batches — plus lease renewal and reclaim passes{}; {:.1} \
             jobs per call). apalis-redis: {a_fetches} `fetch_next` calls ({:.1} tasks per \
             fetch; its `LRANGE` counts them).\n",
            n as f64 / fetches.max(1) as f64,
            if feed == Feed::Steady {
                ", and the producer's enqueue calls"
            } else {
                ""
            },
            n as f64 / other_calls.max(1) as f64,
            n as f64 / a_fetches.max(1) as f64,
        ));
        for (label, d) in [("This project", f), ("apalis-redis", a)] {
            let mut top: Vec<(&String, &(u64, u64))> = d.stats.iter().collect();
            top.sort_by_key(|(_, (_, usec))| std::cmp::Reverse(*usec));
            let list: Vec<String> = top
                .iter()
                .filter(|(cmd, _)| cmd.as_str() != "info")
                .take(16)
                .map(|(cmd, (calls, usec))| {
                    format!(
                        "{cmd} {:.2}× {:.1} µs",
                        *calls as f64 / n as f64,
                        *usec as f64 / n as f64
                    )
                })
                .collect();
            p.push(format!(
                "{label}, per job, by Redis time (calls × time; EVALSHA's time includes the \
                 commands its scripts ran): {}.\n",
                list.join(", ")
            ));
        }
    }

    // ------------------------------------------------------------------ 3. latency

    async fn latency(&mut self) -> Result<()> {
        let samples = self.cli.samples;
        let budget = Duration::from_secs(self.cli.latency_budget_secs);
        let mut p50 = Row::new(
            format!("Idle pickup latency p50 (up to {samples} jobs, one at a time)"),
            "ms",
            Better::Lower,
        );
        let mut p99 = Row::new("Idle pickup latency p99", "ms", Better::Lower);
        let mut max = Row::new("Idle pickup latency max", "ms", Better::Lower);
        let mut counts = Vec::new();
        for system in [System::Fleet, System::Apalis] {
            progress(format!(
                "latency: {}, up to {samples} jobs one at a time (budget {} s)",
                system.as_str(),
                budget.as_secs()
            ));
            let mut lat = self.latency_run(system, samples, budget).await?;
            lat.sort_by(f64::total_cmp);
            let stalled = lat.iter().filter(|ms| **ms > 1000.0).count();
            counts.push(format!(
                "{}: {} samples{}, {stalled} over 1 s",
                match system {
                    System::Apalis => "apalis-redis",
                    _ => "this project",
                },
                lat.len(),
                if lat.len() < samples {
                    format!(
                        " (the {} s budget ran out before {samples})",
                        budget.as_secs()
                    )
                } else {
                    String::new()
                }
            ));
            let (a, b, c) = (
                util::quantile(&lat, 0.5),
                util::quantile(&lat, 0.99),
                *lat.last().unwrap_or(&f64::NAN),
            );
            match system {
                System::Fleet | System::FleetPool => {
                    p50.fleet = Value::Num(a);
                    p99.fleet = Value::Num(b);
                    max.fleet = Value::Num(c);
                }
                System::Apalis => {
                    p50.apalis = Value::Num(a);
                    p99.apalis = Value::Num(b);
                    max.apalis = Value::Num(c);
                }
            }
        }
        self.rows.extend([p50, p99, max]);
        self.notes.push(format!(
            "**Pickup latency**: one idle worker process (concurrency {}); the parent stamps \
             the job with the wall-clock time just before calling `enqueue` / `push`, the \
             handler's first act is to take the time again and push the difference to a Redis \
             list; the parent waits for it (up to 40 s), then sleeps a random 10–30 ms (so the \
             worker is idle again and arrivals do not phase-lock with apalis' poll timer) before \
             the next job; {WARM_UP} unrecorded warm-up job first (script cache); each side stops after {samples} \
             samples or {} s. Collected: {}. apalis-redis polls every {} ms \
             (`poll_with_interval`); a sample over 1 s means its poll timer was lost and the \
             job waited for the worker's next 30 s heartbeat (see `BENCHMARKS.md`, \"apalis-redis defects met\").",
            self.cli.concurrency,
            budget.as_secs(),
            counts.join("; "),
            self.cli.apalis_poll_ms
        ));
        self.flush().await
    }

    async fn latency_run(
        &mut self,
        system: System,
        samples: usize,
        budget: Duration,
    ) -> Result<Vec<f64>> {
        self.flush().await?;
        let spec = self.spec(
            system,
            &format!("{}-lat", system.as_str()),
            self.cli.concurrency,
        );
        let mut proc = WorkerProc::spawn(&spec).await?;
        proc.go().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let q = fleet::open(&self.url).await?;
        let mut storage = baseline::producer(&self.url).await?;
        let mut out = Vec::with_capacity(samples);
        let mut rng_state = 0x9e37_79b9_7f4a_7c15u64 ^ now_us();
        let started = Instant::now();
        let mut i = 0;
        while out.len() < samples && started.elapsed() < budget {
            let spec = work::spec("lat");
            match system {
                System::Fleet | System::FleetPool => {
                    q.enqueue(spec).await?;
                }
                System::Apalis => storage
                    .push(spec)
                    .await
                    .map_err(|e| anyhow::anyhow!("push: {e:?}"))?,
            }
            let got: Option<(String, u64)> = self
                .blocking
                .blpop(work::LAT_KEY, 40.0)
                .await
                .context("BLPOP latency")?;
            let Some((_, us)) = got else {
                proc.kill9().await;
                bail!("{}: job {i} did not start within 40 s", system.as_str());
            };
            if i >= WARM_UP {
                out.push(us as f64 / 1000.0);
            }
            i += 1;
            // xorshift: a random pause of 10–30 ms
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            tokio::time::sleep(Duration::from_micros(10_000 + rng_state % 20_000)).await;
        }
        proc.kill9().await;
        Ok(out)
    }

    // ----------------------------------------------------------------- 4. recovery

    async fn recovery(&mut self, ttl: u64) -> Result<()> {
        let cap = Duration::from_secs(self.cli.recovery_cap_secs);
        // apalis: its defaults for the 30 s row; for shorter TTLs, a heartbeat of 1 s and
        // ttl missed beats, i.e. a worker counts as dead after the same `ttl` seconds.
        let (hb, missed) = if ttl >= 30 {
            (30, 10)
        } else {
            (1, ttl as usize)
        };
        let mut row = Row::new(
            format!(
                "Crash recovery (kill -9 → job running elsewhere), lease TTL {ttl} s; apalis \
                 heartbeat {hb} s × {missed} missed{}",
                if ttl >= 30 { " (its defaults)" } else { "" }
            ),
            "s",
            Better::Lower,
        );
        progress(format!("recovery: this project, lease TTL {ttl} s"));
        let (fleet_secs, lease_left) = self.recovery_fleet(ttl, cap).await?;
        row.fleet = fleet_secs;
        progress(format!(
            "recovery: apalis-redis, heartbeat {hb} s × {missed} (cap {} s)",
            cap.as_secs()
        ));
        row.apalis = self.recovery_apalis(hb, missed, cap).await?;
        progress(format!(
            "recovery, TTL {ttl} s: this project {:?} (lease left at kill {lease_left:.3} s), apalis {:?}",
            row.fleet, row.apalis
        ));
        self.notes.push(format!(
            "**Crash recovery, TTL {ttl} s**: worker process A (concurrency 4) starts a job that \
             would run for an hour; worker B is started and idle; A is killed with SIGKILL; the \
             row is the time from the kill to B's handler starting the job (B stamps the time). \
             The kill is timed for the worst case: just after A renewed the lease (this \
             project; it had {lease_left:.1} s left; renewal every {:.1} s) or just after A's \
             heartbeat (apalis-redis, when the result can fall within the cap). This project: \
             recovery = remaining lease + up to 1 s until B's keeper runs its reclaim pass + \
             pickup. apalis-redis: B re-enqueues a dead worker's tasks at its own heartbeat \
             once the dead worker's last beat is {} s old (heartbeat × missed; timestamps in \
             whole seconds); waited at most {} s.{}",
            ttl as f64 / 3.0,
            hb * missed as u64,
            cap.as_secs(),
            if hb * missed as u64 > cap.as_secs() {
                format!(
                    " With its defaults a dead worker's tasks come back only after {}–{} s \
                     (reference §2.5), longer than the cap, so that cell says \"> cap\" rather \
                     than waiting five minutes.",
                    hb * missed as u64,
                    hb * missed as u64 + hb
                )
            } else {
                String::new()
            }
        ));
        self.rows.push(row);
        self.flush().await
    }

    async fn recovery_fleet(&mut self, ttl: u64, cap: Duration) -> Result<(Value, f64)> {
        self.flush().await?;
        let mut spec_a = self.spec(System::Fleet, "fleet-a", 4);
        spec_a.lease_ttl_secs = ttl;
        let mut spec_b = spec_a.clone();
        spec_b.name = "fleet-b".into();
        let mut a = WorkerProc::spawn(&spec_a).await?;
        a.go().await?;
        let q = fleet::open(&self.url).await?;
        let (id, _) = q.enqueue(work::spec("long")).await?;
        self.expect_started("fleet-a", Duration::from_secs(10))
            .await?;
        let mut b = WorkerProc::spawn(&spec_b).await?;
        b.go().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The worst case: kill A just after it renewed the lease (the lease score moved).
        let lease_until = self
            .wait_score_change(&q.keys().active, &id.to_string(), Duration::from_secs(ttl))
            .await
            .context("waiting for worker A to renew its lease")?;
        a.kill9().await;
        let killed = now_us();
        let lease_left = (lease_until - (killed / 1000) as f64) / 1000.0;
        let got = self
            .started_by(cap + Duration::from_secs(ttl))
            .await
            .context("waiting for the job to run again")?;
        b.kill9().await;
        let value = match got {
            Some((who, at)) if who == "fleet-b" => {
                Value::Num(at.saturating_sub(killed) as f64 / 1e6)
            }
            Some((who, _)) => bail!("the job ran again on {who}, not on fleet-b"),
            None => Value::Above((cap + Duration::from_secs(ttl)).as_secs_f64()),
        };
        Ok((value, lease_left))
    }

    async fn recovery_apalis(&mut self, hb: u64, missed: usize, cap: Duration) -> Result<Value> {
        self.flush().await?;
        let mut spec_a = self.spec(System::Apalis, "apalis-a", 4);
        spec_a.apalis_heartbeat_secs = hb;
        spec_a.apalis_missed = missed;
        let mut spec_b = spec_a.clone();
        spec_b.name = "apalis-b".into();
        let mut a = WorkerProc::spawn(&spec_a).await?;
        a.go().await?;
        let mut storage = baseline::producer(&self.url).await?;
        storage
            .push(work::spec("long"))
            .await
            .map_err(|e| anyhow::anyhow!("push: {e:?}"))?;
        self.expect_started("apalis-a", Duration::from_secs(10))
            .await?;
        let mut b = WorkerProc::spawn(&spec_b).await?;
        b.go().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        if hb * missed as u64 <= cap.as_secs() {
            // The worst case, as for this project: kill A just after its heartbeat.
            let workers = format!("{}:workers", baseline::QUEUE);
            let member = format!("apalis-a-{}", a.pid);
            self.wait_score_change(&workers, &member, Duration::from_secs(hb + 2))
                .await
                .context("waiting for worker A's heartbeat")?;
        }
        a.kill9().await;
        let killed = now_us();
        let got = self.started_by(cap).await?;
        b.kill9().await;
        Ok(match got {
            Some((who, at)) if who == "apalis-b" => {
                Value::Num(at.saturating_sub(killed) as f64 / 1e6)
            }
            Some((who, _)) => bail!("the job ran again on {who}, not on apalis-b"),
            None => Value::Above(cap.as_secs_f64()),
        })
    }

    /// Wait until `member`'s score in the ZSET `key` changes; returns the new score.
    async fn wait_score_change(&mut self, key: &str, member: &str, limit: Duration) -> Result<f64> {
        let first: Option<f64> = self.admin.zscore(key, member).await?;
        let first = first.with_context(|| format!("{member} is not in {key}"))?;
        let deadline = Instant::now() + limit;
        loop {
            let now: Option<f64> = self.admin.zscore(key, member).await?;
            match now {
                Some(v) if v != first => return Ok(v),
                _ if Instant::now() > deadline => bail!("{member} in {key} did not change"),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Wait for a `long` job to start on `worker`.
    async fn expect_started(&mut self, worker: &str, limit: Duration) -> Result<()> {
        match self.started_by(limit).await? {
            Some((who, _)) if who == worker => Ok(()),
            other => bail!("expected the job to start on {worker}, got {other:?}"),
        }
    }

    /// The next `long` job start: (worker, µs timestamp), or None after `limit`.
    async fn started_by(&mut self, limit: Duration) -> Result<Option<(String, u64)>> {
        let got: Option<(String, String)> = self
            .blocking
            .blpop(work::STARTED_KEY, limit.as_secs_f64())
            .await?;
        Ok(got.and_then(|(_, v)| {
            let (who, at) = v.rsplit_once(' ')?;
            Some((who.to_string(), at.parse().ok()?))
        }))
    }

    // ------------------------------------------------------------------- 5. memory

    async fn memory(&mut self) -> Result<()> {
        let n = self.cli.jobs;
        let mut mem = Row::new(
            format!("Redis memory per queued job ({n} queued)"),
            "bytes",
            Better::Lower,
        );
        let mut rss = Row::new(
            format!("Worker RSS, {n} queued + {RSS_IN_FLIGHT} in flight"),
            "MiB",
            Better::Lower,
        );

        progress(format!("memory: this project, {n} queued"));
        self.flush().await?;
        let q = fleet::open(&self.url).await?;
        let m0 = util::used_memory(&mut self.admin).await?;
        q.enqueue_many(work::specs("park", n), None).await?;
        let m1 = util::used_memory(&mut self.admin).await?;
        mem.fleet = Value::Num((m1.saturating_sub(m0)) as f64 / n as f64);
        progress(format!(
            "memory: this project, worker RSS with {RSS_IN_FLIGHT} in flight"
        ));
        let (kib, peak) = self.rss_with_jobs_in_flight(System::Fleet).await?;
        let c = q.counts().await?;
        if c.running != RSS_IN_FLIGHT as u64 {
            bail!("expected {RSS_IN_FLIGHT} running, found {c:?}");
        }
        rss.fleet = Value::Num(kib as f64 / 1024.0);
        let fleet_peak = peak;

        progress(format!("memory: apalis-redis, {n} queued"));
        self.flush().await?;
        let mut storage = baseline::producer(&self.url).await?;
        let m0 = util::used_memory(&mut self.admin).await?;
        baseline::push_bulk(&mut storage, work::specs("park", n)).await?;
        let m1 = util::used_memory(&mut self.admin).await?;
        mem.apalis = Value::Num((m1.saturating_sub(m0)) as f64 / n as f64);
        baseline::promote_all(&mut self.admin).await?;
        progress(format!(
            "memory: apalis-redis, worker RSS with {RSS_IN_FLIGHT} in flight"
        ));
        let (kib, apalis_peak) = self.rss_with_jobs_in_flight(System::Apalis).await?;
        rss.apalis = Value::Num(kib as f64 / 1024.0);

        self.rows.push(mem);
        self.rows.push(rss);
        self.notes.push(format!(
            "**Memory**: `INFO memory` `used_memory` after enqueueing {n} jobs minus before, \
             divided by {n} (this project: job hash + ready-list entry; apalis-redis: entry in \
             its `data` hash + a `meta:<id>` hash + `scheduled` ZSET entry). **Worker RSS**: \
             `VmRSS` from `/proc/<pid>/status` of one worker process at concurrency \
             {RSS_IN_FLIGHT} once {RSS_IN_FLIGHT} jobs are running (each parked in a sleep) with \
             the rest still queued, 2 s after the last one started (peak `VmHWM`: this project \
             {:.1} MiB, apalis-redis {:.1} MiB). apalis: batch_size {}, its backlog moved from \
             `scheduled` to `active` by hand first (see Drain).",
            fleet_peak as f64 / 1024.0,
            apalis_peak as f64 / 1024.0,
            self.cli.apalis_batch
        ));
        self.flush().await
    }

    async fn rss_with_jobs_in_flight(&mut self, system: System) -> Result<(u64, u64)> {
        let spec = self.spec(system, &format!("{}-rss", system.as_str()), RSS_IN_FLIGHT);
        let mut proc = WorkerProc::spawn(&spec).await?;
        proc.go().await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let running: Option<u64> = self.admin.get(work::RUNNING_KEY).await?;
            if running.unwrap_or(0) >= RSS_IN_FLIGHT as u64 {
                break;
            }
            if Instant::now() > deadline || proc.exited().is_some() {
                proc.kill9().await;
                bail!(
                    "{}: only {running:?} jobs running after 60 s",
                    system.as_str()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = util::proc_rss_kib(proc.pid).context("read worker RSS")?;
        proc.kill9().await;
        Ok(got)
    }

    // ------------------------------------------------------------------- 7. events

    /// Live events: agent prints a timestamped line → the SSE client of `fleet serve`
    /// sees it (`bench/src/events.rs`). apalis-redis has no live events.
    async fn events(&mut self) -> Result<()> {
        let n = self.cli.event_samples;
        progress(format!("events: {n} lines, agent → SSE client latency"));
        let mut lat = events::sse_latency(n).await?;
        lat.sort_by(f64::total_cmp);
        for (q, label) in [(0.5, "p50"), (0.95, "p95")] {
            let mut row = Row::new(
                format!(
                    "Live events latency {label}, agent prints a line → SSE client sees it ({n} lines)"
                ),
                "ms",
                Better::Lower,
            );
            row.fleet = Value::Num(util::quantile(&lat, q));
            row.apalis = Value::Skipped("no live events".into());
            self.rows.push(row);
        }
        let max = lat.last().copied().unwrap_or(f64::NAN);
        progress(format!(
            "events: p50 {:.2} ms, p95 {:.2} ms, max {max:.2} ms",
            util::quantile(&lat, 0.5),
            util::quantile(&lat, 0.95)
        ));
        self.notes.push(format!(
            "**Live events** (this project only). A `fleet-worker` and `fleet serve` (the \
             workspace's debug builds) on their own redis-server; the job's command agent \
             prints `date +%s%N` every 20 ms; this process follows `GET /v1/jobs/{{id}}/events` \
             and subtracts each line's timestamp from its clock when the event arrives. \
             {n} lines; max {max:.2} ms."
        ));
        Ok(())
    }

    // --------------------------------------------------------------------- 6. pool

    /// Agent-pool scenarios: warm agent lease latency, and the makespan of 1,000 jobs
    /// of 200 ms over 10 agents against the ideal. apalis-redis has no agent pool.
    async fn pool(&mut self) -> Result<()> {
        let no_pool = || Value::Skipped("no agent pool".into());
        let samples = 1000;
        progress(format!("pool: warm agent lease latency, {samples} leases"));
        let root = tempfile::Builder::new()
            .prefix("fleet-bench-pool-")
            .tempdir()?;
        let mut lat = pool::warm_lease_latency(root.path(), samples, &self.url).await?;
        lat.sort_by(f64::total_cmp);
        for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
            let mut row = Row::new(
                format!("Warm agent lease latency {label} (local sandboxes, pool of 10)"),
                "ms",
                Better::Lower,
            );
            row.fleet = Value::Num(util::quantile(&lat, q));
            row.apalis = no_pool();
            self.rows.push(row);
        }

        let n = self.cli.makespan_jobs;
        let agents = pool::AGENTS;
        let ideal = n as f64 * pool::JOB_SECS / agents as f64;
        progress(format!(
            "pool: makespan of {n} jobs × {} ms over {agents} agents (ideal {ideal:.1} s)",
            pool::JOB_SECS * 1000.0
        ));
        self.flush().await?;
        let q = fleet::open(&self.url).await?;
        q.enqueue_many(work::specs("pool", n), None).await?;
        let root = tempfile::Builder::new()
            .prefix("fleet-bench-pool-")
            .tempdir()?;
        // Three worker processes share one fleet-wide pool of `agents` agents (the
        // registry in Redis); together they run more handlers than there are agents.
        let mut procs = Vec::new();
        for i in 0..pool::WORKERS {
            let mut spec = self.spec(
                System::FleetPool,
                &format!("fleet-pool-{i}"),
                pool::CONCURRENCY,
            );
            spec.pool_root = Some(root.path().to_path_buf());
            procs.push(WorkerProc::spawn(&spec).await?);
        }
        for proc in &mut procs {
            proc.go().await?;
        }
        let t = Instant::now();
        let limit = Duration::from_secs_f64(ideal * 3.0 + 30.0);
        let drained: Result<()> = async {
            loop {
                let c = q.counts().await?;
                if c.dead > 0 {
                    bail!("{} pool jobs were dead-lettered", c.dead);
                }
                if c.ready == 0 && c.running == 0 && c.delayed == 0 {
                    return Ok(());
                }
                if procs.iter_mut().any(|p| p.exited().is_some()) {
                    bail!("a pool worker exited");
                }
                if t.elapsed() > limit {
                    bail!("pool jobs not done within {limit:?}: {c:?}");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        .await;
        let makespan = t.elapsed().as_secs_f64();
        for mut proc in procs {
            proc.kill9().await;
        }
        drained?;
        let (lease_us, run_us) = pool::take_sums(&mut self.admin).await?;
        let mut row = Row::new(
            format!(
                "Makespan, {n} jobs × {} ms over {agents} agents, vs ideal {ideal:.0} s",
                pool::JOB_SECS * 1000.0
            ),
            "× ideal",
            Better::Lower,
        );
        row.fleet = Value::Num(makespan / ideal);
        row.apalis = no_pool();
        self.rows.push(row);
        // Every agent's sandbox ran (billed) for the whole batch; the agents ran jobs
        // for the sum of the handlers' run times.
        let billed = agents as f64 * makespan;
        let mut row = Row::new(
            "Billed sandbox-seconds ÷ agent run seconds, that batch".to_string(),
            "ratio",
            Better::Lower,
        );
        row.fleet = Value::Num(billed / (run_us as f64 / 1e6));
        row.apalis = no_pool();
        self.rows.push(row);
        let run_ms = run_us as f64 / n as f64 / 1000.0;
        progress(format!(
            "pool: makespan {makespan:.2} s ({:.3}× ideal); per job: agent run {run_ms:.1} ms, lease wait {:.2} ms",
            makespan / ideal,
            lease_us as f64 / n as f64 / 1000.0
        ));
        self.notes.push(format!(
            "**Agent pool** (this project only; apalis-redis has no agent pool). Both use the \
             library's `AgentPool` with the `local` sandbox provider and the `command` runtime, \
             as `worker/src/wiring.rs` wires them. *Warm lease*: {samples} sequential \
             `lease` + `give_back` cycles on a pool of 10 agents launched beforehand (a warm \
             lease extends the sandbox's timeout: one `meta.json` rewrite); max {:.2} ms. \
             *Makespan*: {n} jobs queued, then three worker processes (`RedisBackend`, \
             concurrency 4 each) sharing one fleet-wide pool of {agents} agents in the Redis \
             registry (launched before the clock starts), whose handler \
             mirrors `worker/src/execute.rs`: lease an agent, run the query with the agent's \
             runtime, give it back. The agent command is `sleep {}`, so the ideal makespan \
             is {n} × {} s / {agents} = {ideal:.1} s. Measured {makespan:.2} s; per job the \
             agent run took {run_ms:.1} ms on average (the command runtime's process start, \
             query hand-over and output capture on top of the 200 ms) and waiting for an agent \
             {:.2} ms; the rest is the queue (fetch, settle) and the gaps between jobs.",
            lat.last().copied().unwrap_or(f64::NAN),
            pool::JOB_SECS,
            pool::JOB_SECS,
            lease_us as f64 / n as f64 / 1000.0
        ));
        self.flush().await
    }
}

/// How the drain's jobs arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Feed {
    /// Topped up while the workers run, so only a short queue ever waits.
    Steady,
    /// All enqueued before the workers start.
    Backlog,
}

/// Steady feed: enqueue `FEED_CHUNK` jobs whenever fewer than `FEED_LOW` wait.
const FEED_LOW: u64 = 1000;
const FEED_CHUNK: usize = 1000;

/// Poll quickly while feeding, less often once everything is enqueued.
fn poll_pause(left_to_feed: usize) -> Duration {
    Duration::from_millis(if left_to_feed > 0 { 1 } else { 5 })
}

fn median(sorted: &[f64]) -> f64 {
    let m = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[m]
    } else {
        (sorted[m - 1] + sorted[m]) / 2.0
    }
}

fn drain_limit(n: usize) -> Duration {
    Duration::from_secs((n as u64 / 500).max(60))
}

fn subtract(stats: &mut CommandStats, cmd: &str, calls: u64) {
    if let Some(s) = stats.get_mut(cmd) {
        s.0 = s.0.saturating_sub(calls);
    }
}

struct Snapshot {
    stats: CommandStats,
    redis_cpu: Duration,
    worker_cpu: Duration,
}

/// One cell of the profile table, computed from a drain run.
type ProfileCell = fn(&DrainRun) -> String;

/// What one drain run measured.
struct DrainRun {
    n: usize,
    rate: f64,
    elapsed: Duration,
    stats: CommandStats,
    round_trips: u64,
    evals: u64,
    inner: u64,
    inner_usec: u64,
    eval_usec: u64,
    redis_cpu: Duration,
    worker_cpu: Duration,
}

/// Commands a client sends itself (the rest, in a drain, run inside Lua scripts).
const TOP_LEVEL: &[&str] = &[
    "evalsha",
    "eval",
    "evalsha_ro",
    "eval_ro",
    "bzpopmin",
    "blpop",
    "subscribe",
    "psubscribe",
    "ping",
    "hello",
    "select",
    "info",
    "flushall",
];

impl DrainRun {
    /// Where the time went, for the progress line: redis-server's share of the wall
    /// time, and CPU per job of redis-server and of the worker process(es).
    fn busy(&self) -> String {
        let per_job = |d: Duration| d.as_secs_f64() * 1e6 / self.n as f64;
        format!(
            "redis busy {:.0}%, per job: redis {:.1} µs, workers {:.1} µs",
            100.0 * self.redis_cpu.as_secs_f64() / self.elapsed.as_secs_f64(),
            per_job(self.redis_cpu),
            per_job(self.worker_cpu)
        )
    }

    fn new(
        n: usize,
        elapsed: Duration,
        stats: CommandStats,
        before: &Snapshot,
        after: &Snapshot,
    ) -> DrainRun {
        let is_top = |cmd: &str| {
            TOP_LEVEL.contains(&cmd)
                || cmd.starts_with("script|")
                || cmd.starts_with("client|")
                || cmd.starts_with("config|")
        };
        let mut round_trips = 0;
        let mut evals = 0;
        let mut inner = 0;
        let mut inner_usec = 0;
        let mut eval_usec = 0;
        for (cmd, (calls, usec)) in &stats {
            if cmd == "info" {
                continue; // the parent's snapshot
            }
            if is_top(cmd) {
                round_trips += calls;
                if cmd.starts_with("eval") {
                    evals += calls;
                    eval_usec += usec;
                }
            } else {
                inner += calls;
                inner_usec += usec;
            }
        }
        DrainRun {
            n,
            rate: n as f64 / elapsed.as_secs_f64(),
            elapsed,
            stats,
            round_trips,
            evals,
            inner,
            inner_usec,
            eval_usec,
            redis_cpu: after.redis_cpu.saturating_sub(before.redis_cpu),
            worker_cpu: after.worker_cpu.saturating_sub(before.worker_cpu),
        }
    }
}
