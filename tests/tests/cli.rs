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
    let config = dir.path().join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            "[sandbox.local]\nroot = \"{}\"\n",
            dir.path().join("sandboxes").display()
        ),
    )
    .unwrap();
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
