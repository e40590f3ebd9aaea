//! The `fleet` and `fleet-worker` binaries at the edge: bad input gets a clear error
//! and writes nothing; a submitted query's result is read back by its job ID.

use fleet_tests::RedisServer;
use fleet_tests::processes::{WorkerProcess, fleet};

fn env(redis: &RedisServer) -> Vec<(&'static str, String)> {
    vec![("FLEET_REDIS__URL", redis.url())]
}

fn keys_in(redis: &RedisServer) -> i64 {
    redis::cmd("DBSIZE").query(&mut redis.conn()).unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Arguments, standard input, and the message expected on stderr.
type BadInput<'a> = (Vec<&'a str>, Option<&'a [u8]>, &'a str);

#[test]
fn bad_input_gets_a_clear_error_and_writes_nothing() {
    let redis = RedisServer::start();
    let e = env(&redis);
    let cases: Vec<BadInput> = vec![
        (vec!["submit", ""], None, "the query is empty"),
        (vec!["submit", "   "], None, "the query is empty"),
        (
            vec!["submit", "q", "--agent", "nobody"],
            None,
            "unknown agent profile \"nobody\"",
        ),
        (
            vec!["submit", "-"],
            Some(&[b'x'; 70_000]),
            "over the limit of 65536 bytes",
        ),
        (
            vec!["batch", "-"],
            Some(b"fine\nbad \xff line\n"),
            "line 2: not valid UTF-8",
        ),
        (
            vec!["batch", "-"],
            Some(b"fine\n{\"query\": 3}\n"),
            "line 2: malformed JSON",
        ),
        (
            vec!["batch", "-"],
            Some(b"fine\n\n{\"query\": \"\"}\n"),
            "line 3: the query is empty",
        ),
        (
            vec!["batch", "/definitely/not/here.txt"],
            None,
            "no such file",
        ),
        (vec!["status", "not-an-id"], None, "not a job ID"),
        (
            vec!["status", "01a217cf-bef0-7595-8600-e8846f368fb2"],
            None,
            "no job with ID",
        ),
    ];
    for (args, stdin, expected) in cases {
        let out = fleet(&args, &e, stdin);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?}: wanted {expected:?} in {}",
            stderr(&out)
        );
        assert_eq!(keys_in(&redis), 0, "{args:?} wrote to Redis");
    }
}

#[test]
fn bad_configuration_names_the_key_in_both_binaries() {
    let redis = RedisServer::start();
    let mut e = env(&redis);
    e.push(("FLEET_WORKER__CONCURRENCY", "0".into()));
    let out = fleet(&["jobs"], &e, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("worker.concurrency: must be at least 1"),
        "{}",
        stderr(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[queue]\nlease_ttl_secs = \"soon\"\n").unwrap();
    let mut w = WorkerProcess::start(&config, "bad", &env(&redis), dir.path());
    assert_eq!(w.wait(), Some(2));
    assert!(
        w.log_text().contains("queue.lease_ttl_secs"),
        "{}",
        w.log_text()
    );
}

#[test]
fn submitted_query_is_answered_and_read_back_by_job_id() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet_tests::harness::local_config(dir.path(), "");
    let _worker = WorkerProcess::start(&config, "w1", &env(&redis), dir.path());
    let e = env(&redis);
    let out = fleet(
        &[
            "--json",
            "submit",
            "What was Acme Robotics' revenue in 2023?",
        ],
        &e,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let submitted: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = submitted["id"].as_str().expect("the job ID").to_string();

    let out = fleet(&["result", &id, "--wait", "--timeout", "60"], &e, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains("$1,342 million"), "{answer}");

    let out = fleet(&["--json", "status", &id], &e, None);
    let record: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["status"], "succeeded");
    assert_eq!(record["attempts"], 1);
    let result = &record["result"];
    assert!(
        result["output"]["agent_id"]
            .as_str()
            .unwrap()
            .starts_with("agent-")
    );
    assert!(result["output"]["sandbox_id"].as_str().is_some());
    assert!(result["run_ms"].as_u64().is_some());
}

/// A plain HTTP/1.0 GET on loopback: (status code, body).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((code, body))
}

#[test]
fn worker_serves_health_readiness_and_metrics() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = fleet_tests::redis_server::free_port();
    let config = fleet_tests::harness::local_config(
        dir.path(),
        &format!("[worker]\nhttp_addr = \"127.0.0.1:{port}\"\n"),
    );
    let mut e = env(&redis);
    // The fixture clears the address by default; this test wants the server.
    e.push(("FLEET_WORKER__HTTP_ADDR", format!("127.0.0.1:{port}")));
    let mut worker = WorkerProcess::start(&config, "http", &e, dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let health = loop {
        if let Some(r) = http_get(port, "/healthz") {
            break r;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /healthz: {}",
            worker.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(health.0, 200);
    assert_eq!(http_get(port, "/readyz").unwrap().0, 200);
    let metrics = http_get(port, "/metrics").unwrap();
    assert_eq!(metrics.0, 200);
    for name in [
        "fleet_attempts_started_total",
        "fleet_queue_ready",
        "fleet_pool_agents",
    ] {
        assert!(
            metrics.1.contains(name),
            "{name} missing from /metrics:\n{}",
            metrics.1
        );
    }
    worker.sigterm();
    assert_eq!(worker.wait(), Some(0));
}

#[test]
fn a_worker_stopped_while_it_waits_for_redis_exits_cleanly() {
    // Nothing listens on this port: the worker keeps waiting for Redis. Its signal
    // handlers are in place before it connects, so SIGTERM stops it in order (exit 0)
    // instead of killing it.
    let dir = tempfile::tempdir().unwrap();
    let config = fleet_tests::harness::local_config(dir.path(), "");
    let port = fleet_tests::redis_server::free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut worker =
        WorkerProcess::start(&config, "early", &[("FLEET_REDIS__URL", url)], dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !worker.log_text().contains("Redis not reachable yet") {
        assert!(
            std::time::Instant::now() < deadline && worker.is_running(),
            "the worker should be waiting for Redis: {}",
            worker.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    worker.sigterm();
    worker.assert_clean_exit();
    assert!(
        worker
            .log_text()
            .contains("stopped before Redis became reachable"),
        "{}",
        worker.log_text()
    );
}

#[test]
fn extreme_values_are_refused_at_submit_and_write_nothing() {
    // Each was accepted before: the worker then panicked on the timeout, the deadline
    // wrapped, and megabytes of labels were kept for a week.
    let redis = RedisServer::start();
    let e = env(&redis);
    let many_labels: serde_json::Map<String, serde_json::Value> = (0..500)
        .map(|i| (format!("k{i}"), serde_json::Value::from("v")))
        .collect();
    let many_labels_line = serde_json::json!({"query": "q", "metadata": many_labels}).to_string();
    let long_agent_id_line =
        serde_json::json!({"query": "q", "agent_id": "a".repeat(100_000)}).to_string();
    let long_label = format!("notes={}", "x".repeat(100_000));
    let cases: Vec<BadInput> = vec![
        (
            vec!["submit", "q", "--timeout", "18446744073709551615"],
            None,
            "attempt_timeout_secs must be at most 86400",
        ),
        (
            vec!["submit", "q", "--deadline", "18446744073709551615"],
            None,
            "deadline_secs must be at most 2592000",
        ),
        (
            vec!["submit", "q", "--max-attempts", "4294967295"],
            None,
            "max_attempts must be at most 100",
        ),
        (
            vec!["submit", "q", "--backoff-base-ms", "18446744073709551615"],
            None,
            "backoff_base_ms must be at most 86400000",
        ),
        (
            vec!["submit", "q", "--meta", &long_label],
            None,
            "metadata value of \"notes\" is 100000 bytes",
        ),
        (
            vec!["batch", "-"],
            Some(many_labels_line.as_bytes()),
            "line 1: 500 metadata entries",
        ),
        (
            vec!["batch", "-"],
            Some(long_agent_id_line.as_bytes()),
            "line 1: agent_id is 100000 bytes",
        ),
    ];
    for (args, stdin, expected) in cases {
        let out = fleet(&args, &e, stdin);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{:?}: {}",
            &args[..2],
            stderr(&out)
        );
        assert!(
            stderr(&out).contains(expected),
            "{:?}: wanted {expected:?} in {}",
            &args[..2],
            stderr(&out)
        );
        assert_eq!(keys_in(&redis), 0, "{:?} wrote to Redis", &args[..2]);
    }
}

#[test]
fn unrelated_fleet_variables_stop_neither_binary() {
    // Only FLEET_<SECTION>__<KEY> (and FLEET_CONFIG) are settings; a script's own
    // FLEET_BIN_DIR or a misremembered FLEET_REDIS_URL is none of the binaries' business.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet_tests::harness::local_config(dir.path(), "");
    let mut e = env(&redis);
    e.push(("FLEET_BIN_DIR", "/opt/fleet/bin".into()));
    e.push(("FLEET_REDIS_URL", "redis://elsewhere:1".into()));
    let out = fleet(&["--json", "jobs"], &e, None);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut worker = WorkerProcess::start(&config, "env", &e, dir.path());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !worker.log_text().contains("worker started") {
        assert!(
            std::time::Instant::now() < deadline && worker.is_running(),
            "the worker should have started: {}",
            worker.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    worker.sigterm();
    worker.assert_clean_exit();
}

#[test]
fn the_cli_needs_no_e2b_key_it_never_uses() {
    // A config shared by workers and the CLI names the e2b provider; the CLI only talks
    // to Redis, so it runs without E2B_API_KEY. The worker, which calls E2B, still
    // refuses to start without it, naming the key.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = fleet_tests::harness::local_config(dir.path(), "[sandbox]\nprovider = \"e2b\"\n");
    let config_arg = config.display().to_string();
    let e = env(&redis);
    let out = fleet(
        &["--config", &config_arg, "--json", "submit", "q"],
        &e,
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = fleet(&["--config", &config_arg, "jobs"], &e, None);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut worker = WorkerProcess::start(&config, "e2b", &e, dir.path());
    assert_eq!(worker.wait(), Some(2), "{}", worker.log_text());
    assert!(
        worker.log_text().contains("E2B_API_KEY is not set"),
        "{}",
        worker.log_text()
    );
}

#[test]
fn a_result_wait_of_any_length_waits_instead_of_panicking() {
    // `--timeout` takes any u64; one too long for a clock deadline means "no limit".
    let redis = RedisServer::start();
    let e = env(&redis);
    let out = fleet(&["--json", "submit", "q"], &e, None);
    assert!(out.status.success(), "{}", stderr(&out));
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let waiting = {
        let (e, id) = (e.clone(), id.clone());
        std::thread::spawn(move || {
            fleet(
                &["result", &id, "--timeout", "18446744073709551615"],
                &e,
                None,
            )
        })
    };
    // Cancel once the result command listens for the job's end (or has ended early).
    let channel =
        fleet_shared::queue::keys::Keys::new("fleet", fleet_shared::job::QueueKind::Research)
            .done_channel;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, listeners): (String, i64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&channel)
            .query(&mut redis.conn())
            .unwrap();
        if listeners > 0 || waiting.is_finished() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "`fleet result` never waited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let cancelled = fleet(&["cancel", &id], &e, None);
    assert!(cancelled.status.success(), "{}", stderr(&cancelled));
    let out = waiting.join().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "ended cancelled, so exit 1: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("cancelled"), "{}", stderr(&out));
}
