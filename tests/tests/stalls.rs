//! Stalls and outages around leases: a worker that froze and fetched its own job again,
//! a Redis server frozen (or unreachable) for longer than the lease TTL, a worker cut
//! off from Redis. Real redis-server, real worker processes where it matters.

use std::time::{Duration, Instant};

use fleet_shared::job::{JobSpec, QueueKind};
use fleet_shared::queue::attempt::AbortReason;
use fleet_shared::queue::lease_keeper::{KeeperTimings, LeaseKeeper};
use fleet_shared::queue::{QueueConfig, RedisQueue};
use fleet_shared::results::JobStatus;
use fleet_tests::RedisServer;
use fleet_tests::fixture::{FAST_RECOVERY, Fleet};
use fleet_tests::harness::{eventually, settings};
use fleet_tests::redis_server::free_port;
use redis::Commands;

/// A research queue whose leases last `ttl` (shorter than settings allow, to keep the
/// library-level tests fast).
async fn queue_with_ttl(redis: &RedisServer, ttl: Duration) -> (RedisQueue, QueueConfig) {
    let s = settings(&redis.url(), &[]);
    let mut cfg = QueueConfig::from_settings(&s, QueueKind::Research);
    cfg.lease_ttl = ttl;
    let q = RedisQueue::open(&s.redis, cfg.clone()).await.unwrap();
    (q, cfg)
}

fn keeper(redis: &RedisServer, cfg: QueueConfig) -> LeaseKeeper {
    let ttl = cfg.lease_ttl;
    LeaseKeeper::start(
        settings(&redis.url(), &[]).redis,
        cfg,
        KeeperTimings {
            renew_every: ttl / 3,
            reclaim_every: Duration::from_millis(100),
        },
    )
}

/// The lease's expiry in the `active` set, if it is there.
fn lease_expiry(redis: &RedisServer, q: &RedisQueue, id: &str) -> Option<u64> {
    redis.conn().zscore(&q.keys().active, id).unwrap()
}

fn now_ms() -> u64 {
    fleet_shared::time::now_ms()
}

/// Item 1 of issue 9, at the library level: the worker fetched its own reclaimed job
/// again, so the keeper holds two attempts of one job ID. The stale one's release must
/// not stop the renewal of the new one, and the stale one is told to stop.
#[tokio::test]
async fn a_stale_attempts_release_leaves_the_new_attempt_of_the_same_job_renewed() {
    let redis = RedisServer::start();
    let ttl = Duration::from_millis(600);
    let (q, cfg) = queue_with_ttl(&redis, ttl).await;
    let (id, _) = q.enqueue(JobSpec::research("twice", "demo")).await.unwrap();
    let id = id.to_string();
    let stale = q.fetch("w", 1).await.unwrap().leases.remove(0);
    // The attempt stalls past its lease; it is reclaimed and the same worker fetches
    // the job again (reclaim puts it at the front).
    let _: () = redis.conn().zadd(&q.keys().active, &id, 0).unwrap();
    assert_eq!(q.reclaim_expired(10).await.unwrap(), 1);
    let fresh = q.fetch("w", 1).await.unwrap().leases.remove(0);
    assert_eq!((fresh.id.as_str(), fresh.attempt), (id.as_str(), 2));

    let keeper = keeper(&redis, cfg);
    let stale_abort = keeper.hold(&stale);
    let fresh_abort = keeper.hold(&fresh);
    // The stale attempt ends (its outcome refused) and lets go of its lease.
    keeper.release(&stale);

    // For five lease TTLs, the new attempt's lease stays renewed and it is not stopped.
    let watch_until = Instant::now() + ttl * 5;
    while Instant::now() < watch_until {
        let expiry = lease_expiry(&redis, &q, &id);
        assert!(
            expiry.is_some_and(|e| e > now_ms()),
            "the new attempt's lease was not renewed after the stale attempt's release: \
             expiry {expiry:?}, history {:?}",
            q.job_record(&id).await.unwrap().unwrap().history
        );
        assert_eq!(fresh_abort.reason(), None, "the new attempt was stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stale_abort.reason(),
        Some(AbortReason::LeaseLost),
        "the replaced attempt was told to stop"
    );
    let r = q.job_record(&id).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempts), (JobStatus::Running, 2), "{r:?}");
}

/// Item 1 of issue 9 with a real worker: it stalls (SIGSTOP) past its lease, another
/// worker (the test) reclaims the job, and after SIGCONT the same worker fetches the
/// job again while its stale attempt is still winding down. The new attempt keeps its
/// lease: one `lease_lost` for the stall, then success; no cycle of lost leases.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_refetches_its_own_reclaimed_job_keeps_the_new_attempt() {
    let mut fleet = Fleet::start(
        r#"q=$(cat); echo "$q" >> {dir}/runs.log; sleep 4; printf '%s' "$q""#,
        FAST_RECOVERY,
    )
    .await;
    fleet.start_worker("w1");
    let id = fleet.submit(JobSpec::research("stalled", "test")).await;
    let id = id.to_string();
    fleet
        .eventually(
            "the first run to start",
            Duration::from_secs(30),
            || async { fleet.path("runs.log").exists().then_some(()) },
        )
        .await;
    let worker = fleet.workers[0].pid();
    unsafe { libc::kill(worker, libc::SIGSTOP) };
    // Another worker's reclaim tick, every 20 ms, until the stalled lease expires.
    fleet
        .eventually(
            "the stalled lease to be reclaimed",
            Duration::from_secs(10),
            || async { (fleet.queue.reclaim_expired(10).await.unwrap() == 1).then_some(()) },
        )
        .await;
    unsafe { libc::kill(worker, libc::SIGCONT) };
    let r = fleet
        .eventually("the job to end", Duration::from_secs(60), || async {
            let r = fleet.queue.job_record(&id).await.ok()??;
            matches!(r.status, JobStatus::Succeeded | JobStatus::Dead).then_some(r)
        })
        .await;
    assert_eq!(
        r.history
            .iter()
            .map(|h| h.outcome.as_str())
            .collect::<Vec<_>>(),
        ["lease_lost", "succeeded"],
        "the new attempt lost its lease to the stale one: {r:?}\n{}",
        fleet.logs()
    );
    assert_eq!((r.status, r.attempts), (JobStatus::Succeeded, 2));
}

/// Item 3 of issue 9, at the library level: Redis froze for longer than the lease TTL,
/// so no holder could renew. The first reclaim after the freeze must not take the
/// leases (their holders get a chance to renew); a lease nobody renews afterwards is
/// still reclaimed within its TTL.
#[tokio::test]
async fn reclaim_after_a_redis_freeze_spares_leases_nobody_could_renew() {
    let redis = RedisServer::start();
    let ttl = Duration::from_millis(1500);
    let (q, _) = queue_with_ttl(&redis, ttl).await;
    let (id, _) = q.enqueue(JobSpec::research("q", "demo")).await.unwrap();
    let id = id.to_string();
    q.fetch("w", 1).await.unwrap();
    // Reclaim ticks as usual before the freeze.
    assert_eq!(q.reclaim_expired(10).await.unwrap(), 0);
    redis.freeze();
    tokio::time::sleep(ttl * 2).await; // the stall itself: nothing can be awaited
    redis.thaw();
    let thawed = Instant::now();
    assert_eq!(
        q.reclaim_expired(10).await.unwrap(),
        0,
        "a lease whose holder could not renew during the freeze was reclaimed"
    );
    // Nobody renews it now: it is reclaimed within the TTL after the thaw (plus slack).
    eventually("the unrenewed lease to be reclaimed", ttl * 3, || async {
        (q.reclaim_expired(10).await.unwrap() == 1).then_some(())
    })
    .await;
    assert!(
        thawed.elapsed() < ttl + Duration::from_millis(1000),
        "reclaimed {:?} after the thaw",
        thawed.elapsed()
    );
    let r = q.job_record(&id).await.unwrap().unwrap();
    assert_eq!(r.history[0].outcome, "lease_lost");
}

/// Item 5 of issue 9, at the library level: a worker cut off from Redis stops its
/// attempt before the lease can have expired (another worker may own the job by then).
#[tokio::test]
async fn an_attempt_cut_off_from_redis_is_stopped_before_its_lease_can_expire() {
    let redis = RedisServer::start();
    let ttl = Duration::from_millis(1500);
    let (q, cfg) = queue_with_ttl(&redis, ttl).await;
    q.enqueue(JobSpec::research("q", "demo")).await.unwrap();
    let lease = q.fetch("w", 1).await.unwrap().leases.remove(0);
    let keeper = keeper(&redis, cfg);
    let abort = keeper.hold(&lease);
    eventually("a renewal", Duration::from_secs(5), || async {
        (lease_expiry(&redis, &q, &lease.id)? > lease.leased_at_ms + ttl.as_millis() as u64)
            .then_some(())
    })
    .await;
    let cut_off = Instant::now();
    redis.freeze();
    // Polled by hand, so that Redis is thawed before any assertion can fail.
    let deadline = cut_off + ttl * 3;
    while abort.reason().is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = cut_off.elapsed();
    redis.thaw();
    let stopped = abort.reason();
    assert!(
        stopped.is_some(),
        "the attempt was not stopped within {:?} of losing Redis (lease TTL {ttl:?})",
        ttl * 3
    );
    assert_eq!(stopped, Some(AbortReason::LeaseUnconfirmed));
    assert!(
        after < ttl,
        "stopped {after:?} after the cut, past the lease TTL {ttl:?}"
    );
    drop(keeper);
}

/// Item 3 of issue 9 with real workers: Redis frozen for longer than the lease TTL,
/// every worker alive. No job is charged an attempt for it, none is dead-lettered,
/// each ends with exactly one result.
#[tokio::test(flavor = "multi_thread")]
async fn redis_frozen_longer_than_the_lease_ttl_charges_no_attempt() {
    // Calls in flight during the freeze time out (the default 5 s response timeout)
    // and are sent again: a fetch retried after its reply was lost returns the same
    // leases (item 4), so no lease is left without a holder.
    let mut fleet = Fleet::start(r#"q=$(cat); sleep 1; printf '%s' "$q""#, FAST_RECOVERY).await;
    fleet.start_worker("w1");
    fleet.start_worker("w2");
    let ids = fleet
        .queue
        .enqueue_many(
            (0..24)
                .map(|i| JobSpec::research(format!("query {i}"), "test"))
                .collect(),
            Some("b"),
        )
        .await
        .unwrap();
    eventually("jobs running", Duration::from_secs(30), || async {
        let b = fleet.queue.batch_record("b").await.ok()??;
        (b.count(JobStatus::Running) >= 4).then_some(())
    })
    .await;
    // A third worker with nothing to renew, only reclaiming: after the freeze it is
    // as quick to reclaim as the holders are to renew.
    let reclaimer = {
        let queue = fleet.queue.clone();
        tokio::spawn(async move {
            loop {
                let _ = queue.reclaim_expired(100).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    fleet.redis.freeze();
    tokio::time::sleep(Duration::from_secs(8)).await; // the outage itself
    fleet.redis.thaw();
    fleet
        .wait_batch_final("b", 24, Duration::from_secs(90))
        .await;
    reclaimer.abort();
    // The freeze outlasted the point where workers stop unconfirmed attempts (item 5):
    // those attempts were handed back uncounted, which the histories above show.
    assert!(
        fleet
            .logs()
            .contains("stopping this attempt before its lease can expire"),
        "no attempt was stopped for want of renewal:\n{}",
        fleet.logs()
    );
    for id in &ids {
        let r = fleet.record(&id.to_string()).await;
        assert_eq!(r.status, JobStatus::Succeeded, "{r:?}\n{}", fleet.logs());
        assert_eq!(
            r.history
                .iter()
                .map(|h| h.outcome.as_str())
                .collect::<Vec<_>>(),
            ["succeeded"],
            "charged an attempt for the Redis freeze: {r:?}\n{}",
            fleet.logs()
        );
        assert_eq!(r.attempts, 1, "{r:?}");
    }
    assert_eq!(fleet.queue.dead_count().await.unwrap(), 0);
}

/// Item 5 of issue 9: `/readyz` fails when the lease keeper cannot renew, even while
/// Redis still answers reads (here: `CLIENT PAUSE … WRITE` holds every script).
#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_the_lease_keeper_cannot_renew() {
    let mut fleet = Fleet::start(r#"cat"#, FAST_RECOVERY).await;
    let addr = format!("127.0.0.1:{}", free_port());
    fleet.start_worker_with_env("w1", &[("FLEET_WORKER__HTTP_ADDR", addr.clone())]);
    let readyz = format!("http://{addr}/readyz");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let status = |http: reqwest::Client, url: String| async move {
        http.get(&url)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    };
    fleet
        .eventually("ready", Duration::from_secs(30), || async {
            (status(http.clone(), readyz.clone()).await == Some(200)).then_some(())
        })
        .await;
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(10_000)
        .arg("WRITE")
        .query(&mut fleet.redis.conn())
        .unwrap();
    let paused = Instant::now();
    fleet
        .eventually(
            "/readyz to fail while renewals are held",
            Duration::from_secs(6),
            || async { (status(http.clone(), readyz.clone()).await == Some(503)).then_some(()) },
        )
        .await;
    assert!(
        paused.elapsed() < Duration::from_secs(4),
        "/readyz said ready for {:?} while no lease could be renewed (lease TTL 3 s)",
        paused.elapsed()
    );
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query(&mut fleet.redis.conn())
        .unwrap();
    fleet
        .eventually("ready again", Duration::from_secs(10), || async {
            (status(http.clone(), readyz.clone()).await == Some(200)).then_some(())
        })
        .await;
}

/// Item 5 of issue 9: SIGTERM while Redis is down (gone, not restarting) still stops
/// the worker, its running agent killed, within a bounded time.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_redis_is_down_stops_the_worker_in_bounded_time() {
    let mut fleet = Fleet::start(
        r#"echo $$ > {dir}/agent.pid; exec sleep 300"#,
        FAST_RECOVERY,
    )
    .await;
    fleet.start_worker("w1");
    let id = fleet.submit(JobSpec::research("long", "test")).await;
    fleet
        .wait_status(&id.to_string(), JobStatus::Running, Duration::from_secs(30))
        .await;
    let pid: i32 = fleet
        .eventually("agent pid", Duration::from_secs(10), || async {
            std::fs::read_to_string(fleet.path("agent.pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
        .await;
    fleet.redis.kill9();
    let stopping = Instant::now();
    fleet.workers[0].sigterm();
    let deadline = stopping + Duration::from_secs(30);
    while fleet.workers[0].is_running() {
        assert!(
            Instant::now() < deadline,
            "the worker did not exit within 30 s of SIGTERM while Redis is down\n{}",
            fleet.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "took {:?} to stop (drain timeout 2 s)",
        stopping.elapsed()
    );
    assert_eq!(fleet.workers[0].wait(), Some(0), "{}", fleet.logs());
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
    assert!(
        stat.is_none_or(|s| s.split_whitespace().nth(2) == Some("Z")),
        "the agent still runs after its worker stopped"
    );
}

/// The HTTP status `url` answers with, if it answers at all.
async fn http_status(http: &reqwest::Client, url: &str) -> Option<u16> {
    http.get(url).send().await.ok().map(|r| r.status().as_u16())
}

/// Item 5 of issue 9 with real workers: one worker's Redis traffic is cut off (a
/// silent partition through a proxy) while it runs a job; the other worker still
/// reaches Redis. The cut-off worker stops its attempt (the agent process ends) while
/// its lease still holds, so before anyone could take the job over; the job is then
/// reclaimed, charged one `lease_lost` to the cut-off worker, and succeeds once on the
/// other worker. After the partition heals the cut-off worker is ready and serves again.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_cut_off_from_redis_stops_its_attempt_before_another_can_own_the_job() {
    use fleet_tests::processes::process_ended;
    use fleet_tests::tcp_proxy::TcpProxy;
    let mut fleet = Fleet::start(
        r#"q=$(cat); if [ "$q" = long ]; then echo $$ >> {dir}/long.pids; sleep 6; fi; printf '%s' "$q""#,
        FAST_RECOVERY,
    )
    .await;
    let proxy = TcpProxy::start(fleet.redis.port());
    let addr = format!("127.0.0.1:{}", free_port());
    let cut = fleet.start_worker_with_env(
        "cut",
        &[
            ("FLEET_REDIS__URL", proxy.url()),
            ("FLEET_WORKER__HTTP_ADDR", addr.clone()),
        ],
    );
    let readyz = format!("http://{addr}/readyz");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    fleet.wait_started(cut).await;
    let id = fleet
        .submit(JobSpec::research("long", "test"))
        .await
        .to_string();
    let pids = |fleet: &Fleet| fleet.lines("long.pids");
    let pid = fleet
        .eventually(
            "the agent to run on the cut-off worker",
            Duration::from_secs(30),
            || async { pids(&fleet).first().cloned() },
        )
        .await;
    let other = fleet.start_worker("other");
    fleet.wait_started(other).await;
    fleet
        .eventually(
            "the cut-off worker to be ready",
            Duration::from_secs(10),
            || async { (http_status(&http, &readyz).await == Some(200)).then_some(()) },
        )
        .await;

    proxy.cut_off();
    let cut_at = Instant::now();
    // Until the agent ends, the job must still be leased to the cut-off worker: its
    // lease (renewed by nobody now) has not expired, nobody reclaimed it, nobody else
    // runs the job.
    loop {
        let expiry = lease_expiry(&fleet.redis, &fleet.queue, &id);
        let now = now_ms();
        let ended = process_ended(&pid);
        assert!(
            expiry.is_some_and(|e| e > now) && pids(&fleet).len() == 1,
            "the lease expired (expiry {expiry:?}, now {now}) or the job ran elsewhere \
             ({:?}) {:?} after the cut while the cut-off worker's agent {}\n{}",
            pids(&fleet),
            cut_at.elapsed(),
            if ended { "had just ended" } else { "still ran" },
            fleet.logs()
        );
        if ended {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_after = cut_at.elapsed();
    assert!(
        stopped_after < Duration::from_secs(3),
        "stopped {stopped_after:?} after the cut (lease TTL 3 s)"
    );
    fleet
        .eventually(
            "the cut-off worker to log the stop",
            Duration::from_secs(5),
            || async {
                fleet.workers[cut]
                    .log_text()
                    .contains("stopping this attempt before its lease can expire")
                    .then_some(())
            },
        )
        .await;
    fleet
        .eventually(
            "/readyz of the cut-off worker to fail",
            Duration::from_secs(5),
            || async { (http_status(&http, &readyz).await == Some(503)).then_some(()) },
        )
        .await;

    let r = fleet
        .wait_status(&id, JobStatus::Succeeded, Duration::from_secs(30))
        .await;
    assert_eq!(
        r.history
            .iter()
            .map(|h| (h.outcome.as_str(), h.worker.as_str()))
            .collect::<Vec<_>>(),
        [("lease_lost", "cut"), ("succeeded", "other")],
        "{r:?}\n{}",
        fleet.logs()
    );
    assert_eq!(r.attempts, 2);
    assert_eq!(r.result.as_ref().unwrap()["output"]["answer"], "long");
    assert_eq!(pids(&fleet).len(), 2, "one run per attempt");

    // The partition heals: the cut-off worker is ready again and serves jobs (the
    // other one is stopped, so the next job can only run there).
    proxy.restore();
    fleet
        .eventually(
            "the cut-off worker to be ready again",
            Duration::from_secs(15),
            || async { (http_status(&http, &readyz).await == Some(200)).then_some(()) },
        )
        .await;
    fleet.workers[other].sigterm();
    fleet.workers[other].assert_clean_exit();
    let quick = fleet
        .submit(JobSpec::research("quick", "test"))
        .await
        .to_string();
    let q = fleet
        .wait_status(&quick, JobStatus::Succeeded, Duration::from_secs(20))
        .await;
    assert_eq!(q.history[0].worker, "cut", "{q:?}");
    let after = fleet.record(&id).await;
    assert_eq!(
        after.history, r.history,
        "nothing more was written for the job"
    );
}
