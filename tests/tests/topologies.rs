//! Redis beyond one node (README "Scaling out"): the queue's core operations over
//! TLS with an ACL user, through Sentinel (and across a failover), on a Cluster; the
//! checks a worker makes of its Redis at start; durable acknowledgements.

use std::time::Duration;

use fleet_shared::connection::{ServerCheckError, check_server};
use fleet_shared::job::{JobSpec, QueueKind};
use fleet_shared::queue::QueueError;
use fleet_shared::settings::{Durability, Settings};
use fleet_tests::RedisServer;
use fleet_tests::harness::{eventually, queue, settings};
use fleet_tests::queue_contract::core_queue_operations;
use fleet_tests::topology::{RedisCluster, SentinelSet, TLS_PASSWORD, TLS_USER, TlsRedis};

/// Settings for `url` with these `FLEET_…` overrides and extra environment variables.
fn settings_env(url: &str, overrides: &[(&str, &str)], env: &[(&str, &str)]) -> Settings {
    let mut all: Vec<(String, String)> = vec![("FLEET_REDIS__URL".into(), url.into())];
    all.extend(
        overrides
            .iter()
            .map(|(k, v)| (format!("FLEET_{k}"), v.to_string())),
    );
    all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Settings::from_layers(None, &all).expect("test settings are valid")
}

fn tls_settings(tls: &TlsRedis, url: &str, ca: &std::path::Path) -> Settings {
    let ca = ca.display().to_string();
    let cert = tls.ca.path("client.crt").display().to_string();
    let key = tls.ca.path("client.key").display().to_string();
    settings_env(
        url,
        &[
            ("REDIS__TLS_CA_FILE", &ca),
            ("REDIS__TLS_CERT_FILE", &cert),
            ("REDIS__TLS_KEY_FILE", &key),
            ("REDIS__USERNAME", TLS_USER),
            ("REDIS__PASSWORD_ENV", "TEST_REDIS_PASSWORD"),
            ("REDIS__CONNECT_TIMEOUT_MS", "2000"),
        ],
        &[("TEST_REDIS_PASSWORD", TLS_PASSWORD)],
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn core_queue_operations_pass_over_tls_with_an_acl_user_and_client_certificate() {
    let tls = TlsRedis::start();
    let s = tls_settings(&tls, &tls.url(), &tls.ca.path("ca.crt"));
    core_queue_operations(&s).await;
    assert!(
        !format!("{s:?}").contains(TLS_PASSWORD),
        "the settings print no password"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let tls = TlsRedis::start();
    let other = fleet_tests::topology::TestCa::other();
    let s = tls_settings(&tls, &tls.url(), &other.path("ca.crt"));
    let err = fleet_shared::queue::connect(&s.redis)
        .await
        .err()
        .expect("a certificate of an unknown CA must be refused");
    let text = err.to_string();
    assert!(
        text.contains("redis.tls_ca_file"),
        "the error says it is the certificate: {text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_refused_with_a_clear_error_that_does_not_repeat_it() {
    let tls = TlsRedis::start();
    let url = format!(
        "rediss://{TLS_USER}:not-the-password@127.0.0.1:{}",
        tls.node.port
    );
    let ca = tls.ca.path("ca.crt").display().to_string();
    let cert = tls.ca.path("client.crt").display().to_string();
    let key = tls.ca.path("client.key").display().to_string();
    let s = settings_env(
        &url,
        &[
            ("REDIS__TLS_CA_FILE", &ca),
            ("REDIS__TLS_CERT_FILE", &cert),
            ("REDIS__TLS_KEY_FILE", &key),
        ],
        &[],
    );
    let err = fleet_shared::queue::connect(&s.redis)
        .await
        .err()
        .expect("a wrong password must be refused");
    let text = err.to_string();
    assert!(
        text.contains("refused the credentials"),
        "the error says it is the credentials: {text}"
    );
    assert!(!text.contains("not-the-password"), "{text}");
    assert!(!format!("{:?}", s.redis).contains("not-the-password"));
}

#[tokio::test(flavor = "multi_thread")]
async fn core_queue_operations_pass_through_sentinel() {
    let set = SentinelSet::start();
    let s = settings(&set.url(), &[]);
    core_queue_operations(&s).await;
}

/// The primary dies (SIGKILL) with jobs queued, replicated, and confirmed: the
/// sentinels promote the replica; the same queue handle (no restart) finds it and
/// every job acknowledged under `durability = "replica"` is still there.
#[tokio::test(flavor = "multi_thread")]
async fn a_sentinel_failover_is_followed_without_a_restart_and_loses_no_acknowledged_job() {
    let mut set = SentinelSet::start();
    let s = settings(
        &set.url(),
        &[
            ("QUEUE__DURABILITY", "replica"),
            ("REDIS__RESPONSE_TIMEOUT_MS", "1000"),
            ("REDIS__CONNECT_TIMEOUT_MS", "500"),
        ],
    );
    let mut config = fleet_shared::queue::QueueConfig::from_settings(&s, QueueKind::Research);
    config.give_up_after = Some(Duration::from_secs(60));
    let q = fleet_shared::queue::RedisQueue::open(&s.redis, config)
        .await
        .unwrap();
    let mut acknowledged = Vec::new();
    for i in 0..50 {
        let (id, _) = q
            .enqueue(JobSpec::research(format!("before {i}"), "demo"))
            .await
            .unwrap();
        acknowledged.push(id.to_string());
    }
    let old = set.primary.port;
    set.primary.kill9();
    let new = set.wait_failover(old);
    assert_eq!(new, set.replica.port);
    // Until a replica follows the new primary, `replica` durability cannot be
    // confirmed: enqueues are refused as retryable, not acknowledged.
    let mut refused = q.enqueue(JobSpec::research("no replica yet", "demo")).await;
    while let Err(QueueError::Unreachable { .. }) = refused {
        refused = q.enqueue(JobSpec::research("no replica yet", "demo")).await;
    }
    assert!(
        matches!(refused, Err(QueueError::NotDurable(_))),
        "{refused:?}"
    );
    // The old primary comes back; the sentinels make it the new primary's replica.
    set.primary.restart();
    // The handle opened before the failover goes on: enqueues after it are retried
    // until the new primary takes them (an unconfirmed one is retried by the caller).
    for i in 0..50 {
        let id = eventually(
            "an enqueue on the new primary",
            Duration::from_secs(60),
            || async {
                match q
                    .enqueue(JobSpec::research(format!("after {i}"), "demo"))
                    .await
                {
                    Ok((id, _)) => Some(id),
                    Err(QueueError::NotDurable(_)) | Err(QueueError::Unreachable { .. }) => None,
                    Err(e) => panic!("not a failover error: {e}"),
                }
            },
        )
        .await;
        acknowledged.push(id.to_string());
    }
    let mut fetched = std::collections::HashSet::new();
    loop {
        let leases = q.fetch("w", 100).await.unwrap().leases;
        if leases.is_empty() {
            break;
        }
        for l in leases {
            q.complete(&l, "{}").await.unwrap();
            fetched.insert(l.id);
        }
    }
    for id in &acknowledged {
        assert!(fetched.contains(id), "acknowledged job {id} was lost");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_is_reached_through_the_one_constructor_with_pub_sub_across_nodes() {
    let cluster = RedisCluster::start();
    let s = settings(&cluster.cluster_url(), &[]);
    let mut conn = fleet_shared::connection::connect(&s.redis).await.unwrap();
    assert_eq!(conn.topology_name(), "cluster");
    // Keys of many slots, on every primary: the client follows the slot map.
    for i in 0..50 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let v: i64 = redis::cmd("GET")
        .arg("k42")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(v, 42);
    // A subscriber on one node hears a PUBLISH sent anywhere.
    let mut sub = fleet_shared::connection::pubsub(&s.redis).await.unwrap();
    sub.subscribe("fleet-test-channel").await.unwrap();
    let mut messages = sub.on_message();
    for node in &cluster.nodes {
        let _: i64 = redis::cmd("PUBLISH")
            .arg("fleet-test-channel")
            .arg(node.port)
            .query(&mut node.conn())
            .unwrap();
        let msg = tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut messages),
        )
        .await
        .expect("the message arrives")
        .unwrap();
        assert_eq!(msg.get_payload::<u16>().unwrap(), node.port);
    }
    // The seed-list form selects the same topology.
    let urls = format!(
        "[{}]",
        cluster
            .urls()
            .iter()
            .map(|u| format!("{u:?}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let s2 = settings("redis://unused:1", &[("REDIS__CLUSTER_URLS", &urls)]);
    let mut conn2 = fleet_shared::connection::connect(&s2.redis).await.unwrap();
    let v: i64 = redis::cmd("GET")
        .arg("k7")
        .query_async(&mut conn2)
        .await
        .unwrap();
    assert_eq!(v, 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn core_queue_operations_pass_on_a_cluster() {
    let cluster = RedisCluster::start();
    let s = settings(&cluster.cluster_url(), &[]);
    core_queue_operations(&s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_refuses_a_redis_that_evicts_keys_naming_the_setting() {
    use fleet_tests::fixture::Fleet;
    let mut fleet = Fleet::start("cat", "").await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("allkeys-lru")
        .query(&mut fleet.redis.conn())
        .unwrap();
    let w = fleet.start_worker("w1");
    let code = fleet.workers[w].wait();
    assert_ne!(code, Some(0));
    let log = fleet.workers[w].log_text();
    assert!(log.contains("maxmemory-policy"), "{log}");
    assert!(log.contains("allkeys-lru"), "{log}");
    assert!(log.contains("noeviction"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_eviction_check_reads_info_where_config_is_disabled() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let mut conn = q.connection();
    check_server(
        &mut conn,
        Durability::None,
        Duration::from_secs(1),
        &q.keys().wait,
        true,
    )
    .await
    .expect("noeviction passes");
    // Managed services rename CONFIG away; the same answer must come from INFO.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("volatile-lru")
        .query(&mut redis.conn())
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-config")
        .query(&mut redis.conn())
        .unwrap();
    let mut conn = queue(&s, QueueKind::Research).await.connection();
    let err = check_server(
        &mut conn,
        Durability::None,
        Duration::from_secs(1),
        &q.keys().wait,
        true,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, ServerCheckError::Evicting { ref policy, .. } if policy == "volatile-lru"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn durability_aof_is_refused_at_start_on_a_redis_older_than_7_2() {
    let redis = RedisServer::start();
    let s = settings(&redis.url(), &[]);
    let q = queue(&s, QueueKind::Research).await;
    let version: String =
        fleet_shared::connection::durability::server_version(&mut q.connection(), &q.keys().wait)
            .await
            .unwrap();
    let mut conn = q.connection();
    let checked = check_server(
        &mut conn,
        Durability::Aof,
        Duration::from_secs(1),
        &q.keys().wait,
        false,
    )
    .await;
    if version.starts_with("7.0") || version.starts_with("7.1") || version.starts_with('6') {
        let err = checked.unwrap_err();
        assert!(
            matches!(err, ServerCheckError::AofUnsupported { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("7.2"), "{err}");
        // The producer says so at start too.
        let out = fleet_tests::processes::fleet(
            &["status", "0190c2a4-1b2c-7d3e-8f40-123456789abc"],
            &[
                ("FLEET_REDIS__URL", redis.url()),
                ("FLEET_QUEUE__DURABILITY", "aof".into()),
            ],
            None,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains("WAITAOF"), "{stderr}");
    } else {
        checked.expect("Redis 7.2+ with AOF on confirms");
    }
}

/// `durability = "replica"` with no replica: the enqueue is refused as not durable
/// (retryable); once a replica follows, the same enqueue (same idempotency key) is
/// confirmed and makes one job.
#[tokio::test(flavor = "multi_thread")]
async fn durability_replica_refuses_an_enqueue_no_replica_confirmed_and_its_retry_makes_one_job() {
    let redis = RedisServer::start();
    let s = settings(
        &redis.url(),
        &[
            ("QUEUE__DURABILITY", "replica"),
            ("QUEUE__DURABILITY_TIMEOUT_MS", "200"),
        ],
    );
    let q = queue(&s, QueueKind::Research).await;
    let mut keyed = JobSpec::research("needs a replica", "demo");
    keyed.options.idempotency_key = Some("once".into());
    let err = q.enqueue(keyed.clone()).await.unwrap_err();
    assert!(matches!(err, QueueError::NotDurable(_)), "{err}");
    assert!(err.to_string().contains("retry"), "{err}");

    let replica = RedisServer::start_with(false);
    replica.replicaof(Some(&redis));
    replica.wait_replica_synced();
    let (id, existing) = q.enqueue(keyed).await.unwrap();
    assert!(existing, "the retry found the job the refused call wrote");
    let leases = q.fetch("w", 10).await.unwrap().leases;
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].id, id.to_string());
    q.complete(&leases[0], "{}").await.unwrap();
}

/// Failover under load: 1,000 jobs over 2 worker processes on a Sentinel set with
/// `durability = "replica"`; the primary is SIGKILLed mid-batch and the replica
/// promoted. The workers go on without a restart, no acknowledged job is lost, and
/// every job ends succeeded with exactly one result.
#[tokio::test(flavor = "multi_thread")]
async fn a_primary_killed_mid_batch_loses_no_acknowledged_job_and_workers_go_on() {
    use fleet_shared::results::JobStatus;
    use fleet_tests::fixture::Fleet;
    const JOBS: usize = 1000;
    let mut set = SentinelSet::start();
    let mut fleet = Fleet::start(r#"q=$(cat); printf '%s' "$q""#, "").await;
    let env = [
        ("FLEET_REDIS__URL", set.url()),
        ("FLEET_QUEUE__DURABILITY", "replica".to_string()),
        ("FLEET_REDIS__RESPONSE_TIMEOUT_MS", "1000".to_string()),
        ("FLEET_REDIS__CONNECT_TIMEOUT_MS", "500".to_string()),
        ("FLEET_WORKER__CONCURRENCY", "8".to_string()),
    ];
    fleet.start_worker_with_env("w1", &env);
    fleet.start_worker_with_env("w2", &env);
    let s = settings(
        &set.url(),
        &[
            ("QUEUE__DURABILITY", "replica"),
            ("REDIS__RESPONSE_TIMEOUT_MS", "1000"),
            ("REDIS__CONNECT_TIMEOUT_MS", "500"),
        ],
    );
    let q = queue(&s, QueueKind::Research).await;
    let specs: Vec<JobSpec> = (0..JOBS)
        .map(|i| JobSpec::research(format!("job {i}"), "test"))
        .collect();
    let ids: Vec<String> = q
        .enqueue_many(specs, Some("load"))
        .await
        .unwrap()
        .iter()
        .map(|id| id.to_string())
        .collect();
    let finished = |q: fleet_shared::queue::RedisQueue| async move {
        fleet_tests::harness::batch_finished(&q, "load").await
    };
    eventually(
        "a fifth of the batch done",
        Duration::from_secs(120),
        || {
            let q = q.clone();
            async move { (finished(q).await >= (JOBS / 5) as u64).then_some(()) }
        },
    )
    .await;
    let old = set.primary.port;
    set.primary.kill9();
    set.wait_failover(old);
    // The old primary's host comes back; the sentinels make it a replica.
    set.primary.restart();
    eventually("every job to end", Duration::from_secs(300), || {
        let q = q.clone();
        async move { (finished(q).await >= JOBS as u64).then_some(()) }
    })
    .await;
    for w in fleet.workers.iter_mut() {
        assert!(
            w.is_running(),
            "worker {} stopped:\n{}",
            w.name,
            w.log_text()
        );
        assert!(
            w.log_text().contains("Redis primary moved; following it"),
            "worker {} followed the new primary:\n{}",
            w.name,
            w.log_text()
        );
    }
    let statuses = q
        .job_statuses(&ids.iter().map(|i| i.parse().unwrap()).collect::<Vec<_>>())
        .await
        .unwrap();
    for (id, status) in ids.iter().zip(statuses) {
        assert_eq!(status, Some(JobStatus::Succeeded), "job {id}");
    }
    for id in &ids {
        let r = q.job_record(id).await.unwrap().unwrap();
        let successes = r
            .history
            .iter()
            .filter(|h| h.outcome == "succeeded")
            .count();
        assert_eq!(successes, 1, "job {id}: {:?}", r.history);
        assert!(r.result.is_some());
    }
}
