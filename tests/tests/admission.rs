//! Fleet-wide admission's scripts against a real redis-server: the running-sandbox
//! semaphore and the create-rate bucket that all workers share.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fleet_shared::admission::{AdmissionKeys, FleetAdmission, Plan, SlotAnswer, TurnAnswer};
use fleet_tests::harness::{eventually, settings};
use fleet_tests::redis_server::RedisServer;

async fn client(redis: &RedisServer, plan: Plan) -> FleetAdmission {
    let s = settings(&redis.url(), &[]);
    FleetAdmission::open(&s.redis, "e2b", plan)
        .await
        .expect("connect")
}

async fn redis_time_us(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    s * 1_000_000 + us
}

async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clients_contending_for_five_slots_never_hold_more_than_five() {
    let redis = RedisServer::start();
    let plan = Plan::new(5, 1000.0, Duration::from_secs(30));
    let clients = [client(&redis, plan).await, client(&redis, plan).await];
    let holding = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    // Eight contenders per client, 25 slot cycles each.
    for (c, admission) in clients.iter().enumerate() {
        for t in 0..8 {
            let (admission, holding, peak) = (admission.clone(), holding.clone(), peak.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    let holder = format!("create:{c}-{t}-{i}");
                    loop {
                        match admission.acquire_slot(&holder).await.unwrap() {
                            SlotAnswer::Taken => break,
                            SlotAnswer::Full { .. } => tokio::task::yield_now().await,
                        }
                    }
                    let now = holding.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let held = admission.held_slots().await.unwrap();
                    assert!(held <= 5, "{held} slots held");
                    tokio::task::yield_now().await;
                    holding.fetch_sub(1, Ordering::SeqCst);
                    assert_eq!(admission.release_slots(&[&holder]).await.unwrap(), 1);
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let peak = peak.load(Ordering::SeqCst);
    eprintln!("peak slots held: {peak}");
    assert!(peak <= 5, "peak {peak} > 5");
    assert!(peak >= 2, "the contenders did overlap: peak {peak}");
    assert_eq!(
        clients[0].held_slots().await.unwrap(),
        0,
        "every slot given back"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_holders_slot_is_reclaimed_and_a_renewed_one_is_kept() {
    let redis = RedisServer::start();
    let plan = Plan::new(2, 1000.0, Duration::from_secs(1));
    // A worker takes both slots; then it is killed (its holds are never renewed)...
    let dead = client(&redis, plan).await;
    assert_eq!(
        dead.acquire_slot("sbx-dead").await.unwrap(),
        SlotAnswer::Taken
    );
    // ...while a live worker holds the other and keeps renewing it.
    let live = client(&redis, plan).await;
    assert_eq!(
        live.acquire_slot("sbx-live").await.unwrap(),
        SlotAnswer::Taken
    );
    let newcomer = client(&redis, plan).await;
    match newcomer.acquire_slot("create:new").await.unwrap() {
        SlotAnswer::Full { earliest_expiry } => {
            assert!(
                earliest_expiry <= Duration::from_secs(1),
                "{earliest_expiry:?}"
            )
        }
        other => panic!("the plan is full, yet {other:?}"),
    }
    let t0 = Instant::now();
    eventually(
        "the dead holder's slot to be reclaimed",
        Duration::from_secs(5),
        || async {
            assert!(
                live.renew_slots(&["sbx-live".into()])
                    .await
                    .unwrap()
                    .lost
                    .is_empty()
            );
            (newcomer.acquire_slot("create:new").await.unwrap() == SlotAnswer::Taken).then_some(())
        },
    )
    .await;
    eprintln!("reclaimed after {:?}", t0.elapsed());
    let mut c = raw(&redis).await;
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg(&AdmissionKeys::new("fleet", "e2b").slots)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap();
    let members: HashSet<String> = members.into_iter().collect();
    assert_eq!(
        members,
        HashSet::from(["sbx-live".to_string(), "create:new".to_string()]),
        "the renewed hold survived, the dead one was reclaimed"
    );
    // Full again: the renewed holder's slot is not up for grabs.
    assert!(matches!(
        newcomer.acquire_slot("create:other").await.unwrap(),
        SlotAnswer::Full { .. }
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reservation_becomes_the_sandbox_and_its_release_frees_the_slot() {
    let redis = RedisServer::start();
    let plan = Plan::new(1, 1000.0, Duration::from_secs(30));
    let a = client(&redis, plan).await;
    assert_eq!(
        a.acquire_slot("create:r1").await.unwrap(),
        SlotAnswer::Taken
    );
    // A retried acquire after a lost reply keeps the same slot.
    assert_eq!(
        a.acquire_slot("create:r1").await.unwrap(),
        SlotAnswer::Taken
    );
    assert!(a.commit_slot("create:r1", "sbx1").await.unwrap());
    assert_eq!(a.held_slots().await.unwrap(), 1);
    assert!(matches!(
        a.acquire_slot("create:r2").await.unwrap(),
        SlotAnswer::Full { .. }
    ));
    // Another worker kills the sandbox: its slot is free for anyone.
    let b = client(&redis, plan).await;
    assert_eq!(b.release_slots(&["sbx1"]).await.unwrap(), 1);
    assert_eq!(
        a.acquire_slot("create:r2").await.unwrap(),
        SlotAnswer::Taken
    );
    // Released by another worker (it paused or killed the sandbox): the holder's next
    // renewal does not bring it back, and tells the holder to let it go.
    assert_eq!(b.release_slots(&["create:r2"]).await.unwrap(), 1);
    let renewed = a.renew_slots(&["create:r2".into()]).await.unwrap();
    assert_eq!(renewed.released, vec!["create:r2".to_string()]);
    assert!(renewed.lost.is_empty());
    assert_eq!(a.held_slots().await.unwrap(), 0);
    // Resumed later (by anyone): its slot is renewed again.
    assert_eq!(
        a.acquire_slot("create:r3").await.unwrap(),
        SlotAnswer::Taken
    );
    assert!(a.commit_slot("create:r3", "create:r2").await.unwrap());
    let renewed = a.renew_slots(&["create:r2".into()]).await.unwrap();
    assert_eq!(renewed, Default::default());
    assert_eq!(a.held_slots().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clients_get_starts_spaced_at_one_per_second() {
    let redis = RedisServer::start();
    let plan = Plan::new(100, 1.0, Duration::from_secs(30));
    let clients = [client(&redis, plan).await, client(&redis, plan).await];
    let sends = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for admission in &clients {
        for _ in 0..3 {
            let (admission, sends) = (admission.clone(), sends.clone());
            tasks.push(tokio::spawn(async move {
                match admission
                    .take_start_token(Duration::from_secs(10))
                    .await
                    .unwrap()
                {
                    TurnAnswer::Taken { wait } => tokio::time::sleep(wait).await,
                    other => panic!("{other:?}"),
                }
                sends.lock().unwrap().push(Instant::now());
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut sends = sends.lock().unwrap().clone();
    sends.sort();
    let gaps: Vec<Duration> = sends.windows(2).map(|w| w[1] - w[0]).collect();
    eprintln!("gaps between starts: {gaps:?}");
    assert_eq!(sends.len(), 6);
    for g in &gaps {
        assert!(*g >= Duration::from_millis(1000), "starts {g:?} apart");
    }
    // A caller that will not wait that long takes nothing.
    let ahead = match clients[0].take_start_token(Duration::ZERO).await.unwrap() {
        TurnAnswer::TooFar { wait } => wait,
        other => panic!("a turn was free at once: {other:?}"),
    };
    assert!(ahead <= Duration::from_millis(1050), "{ahead:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn holds_and_turns_are_timed_by_the_redis_clock_whatever_the_callers_clock() {
    // No script takes a time from its caller: expiries and turns are Redis TIME plus a
    // duration, and callers get durations back. So a worker whose clock is hours off
    // (here: the values are compared with Redis' clock, not this process's) changes
    // nothing.
    let redis = RedisServer::start();
    let plan = Plan::new(3, 2.0, Duration::from_secs(20));
    let a = client(&redis, plan).await;
    let keys = AdmissionKeys::new("fleet", "e2b");
    let mut c = raw(&redis).await;

    let before = redis_time_us(&redis).await / 1000;
    assert_eq!(a.acquire_slot("sbx1").await.unwrap(), SlotAnswer::Taken);
    let after = redis_time_us(&redis).await / 1000;
    let expiry: f64 = redis::cmd("ZSCORE")
        .arg(&keys.slots)
        .arg("sbx1")
        .query_async(&mut c)
        .await
        .unwrap();
    let expiry = expiry as u64;
    assert!(
        (before + 20_000..=after + 20_000).contains(&expiry),
        "hold expiry {expiry} is Redis time {before}..{after} + 20 s"
    );

    let before = redis_time_us(&redis).await;
    assert!(matches!(
        a.take_start_token(Duration::ZERO).await.unwrap(),
        TurnAnswer::Taken { wait } if wait.is_zero()
    ));
    let after = redis_time_us(&redis).await;
    let next: u64 = redis::cmd("GET")
        .arg(&keys.next_start)
        .query_async::<String>(&mut c)
        .await
        .unwrap()
        .parse()
        .unwrap();
    let interval = plan.start_interval.as_micros() as u64;
    assert!(
        (before + interval..=after + interval).contains(&next),
        "next turn {next} is Redis time {before}..{after} + {interval} µs"
    );

    // A 429's Retry-After holds every caller back, measured on the same clock.
    let ahead = a.defer_starts(Duration::from_secs(3)).await.unwrap();
    assert!(ahead >= Duration::from_millis(2900), "{ahead:?}");
    match a.take_start_token(Duration::from_secs(1)).await.unwrap() {
        TurnAnswer::TooFar { wait } => assert!(wait >= Duration::from_millis(2800), "{wait:?}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_providers_share_one_plan_and_a_crashed_ones_slots_come_back() {
    use fleet_shared::sandbox::e2b::E2bProvider;
    use fleet_shared::sandbox::{SandboxError, SandboxProvider, SandboxSpec};
    use fleet_tests::fake_e2b::{FakeE2b, Plan as FakePlan};

    let redis = RedisServer::start();
    let fake = FakeE2b::start_local().await;
    fake.faults().set_plan(Some(FakePlan {
        max_running: 2,
        starts_per_second: 1000.0,
    }));
    // Each provider alone believes in 100 sandboxes; the fleet's plan says 2.
    let plan = Plan::new(2, 1000.0, Duration::from_secs(1));
    let provider = |admission: FleetAdmission, wait: Duration| {
        E2bProvider::new(&fake.settings())
            .unwrap()
            .with_limit_wait(wait)
            .with_fleet_admission(admission)
    };
    let spec = || SandboxSpec {
        template: "base".into(),
        timeout: Duration::from_secs(300),
        ..Default::default()
    };
    let a = provider(client(&redis, plan).await, Duration::from_secs(10));
    let b = provider(client(&redis, plan).await, Duration::from_millis(300));
    let a1 = a.create(&spec()).await.unwrap();
    let a2 = a.create(&spec()).await.unwrap();

    // The plan is full: B waits, then gives up without sending anything.
    let e = b.create(&spec()).await.unwrap_err();
    assert!(matches!(e, SandboxError::LimitReached(_)), "{e:?}");
    assert_eq!(fake.counters().created, 2);

    // B kills one of A's sandboxes (as the reconcile of a dead worker's does): the slot
    // is free at once, fleet-wide.
    b.kill(&a1.id).await.unwrap();
    let b1 = b.create(&spec()).await.unwrap();

    // A crashes: it no longer renews its hold on a2. Its sandbox goes away at E2B (here
    // killed behind the fleet's back), and its slot comes back once its hold expires.
    drop(a);
    let outsider = E2bProvider::new(&fake.settings()).unwrap();
    outsider.kill(&a2.id).await.unwrap();
    let t0 = Instant::now();
    let b = provider(client(&redis, plan).await, Duration::from_secs(5));
    let b2 = b.create(&spec()).await.unwrap();
    let waited = t0.elapsed();
    eprintln!("the crashed provider's slot came back after {waited:?}");
    assert!(waited <= Duration::from_millis(1500), "{waited:?}");

    let c = fake.counters();
    assert_eq!(c.max_running, 2, "{c:?}");
    assert_eq!((c.cap_refusals, c.rate_refusals), (0, 0), "{c:?}");
    for id in [&b1.id, &b2.id] {
        b.kill(id).await.unwrap();
    }
    assert_eq!(b.running_sandboxes(), 0);
    let admission = client(&redis, plan).await;
    assert_eq!(admission.held_slots().await.unwrap(), 0, "no slot leaked");
}
