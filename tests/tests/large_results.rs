//! Large results: an agent that prints 100 MB. Its answer is stored apart from the
//! job's hash (which stays under 4 KiB), in chunks that expire with the job; or, past
//! `results.max_bytes`, cut while it is read, with a marker in the text and
//! `truncated: true`. `fleet result` and `GET /v1/jobs/{id}/result` stream it, and
//! neither they nor the worker ever hold it twice (peak RSS, `VmHWM`, well under twice
//! the output).

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_shared::job::JobSpec;
use fleet_shared::results::JobStatus;
use fleet_tests::fixture::Fleet;
use fleet_tests::processes::{ServeProcess, binary};
use redis::AsyncCommands;

const MB: usize = 1 << 20;
/// What the agent prints: this line over and over, `{bytes}` bytes in all.
const LINE: &[u8] = b"0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n";

fn agent(bytes: usize) -> String {
    format!(
        "cat > /dev/null; yes '{}' | head -c {bytes}",
        std::str::from_utf8(&LINE[..LINE.len() - 1]).unwrap()
    )
}

/// The first `len` bytes of what the agent prints, checked as they stream past.
struct Expected {
    pos: usize,
}

impl Expected {
    fn check(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            let want = LINE[(self.pos + i) % LINE.len()];
            assert_eq!(*b, want, "byte {} differs", self.pos + i);
        }
        self.pos += bytes.len();
    }
}

/// The length of the first `len` bytes the agent prints once trailing whitespace is
/// trimmed off (answers are trimmed).
fn trimmed(mut len: usize) -> usize {
    while len > 0 && LINE[(len - 1) % LINE.len()].is_ascii_whitespace() {
        len -= 1;
    }
    len
}

/// Peak resident memory of a live process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kb * 1024
}

/// Bytes the job's hash takes: the sum of its fields' lengths, and Redis's own count.
async fn hash_size(fleet: &Fleet, id: &str) -> (usize, usize) {
    let mut conn = fleet.queue.connection();
    let key = fleet.queue.keys().job(id);
    let fields: Vec<String> = conn.hkeys(&key).await.unwrap();
    let mut sum = 0;
    for f in &fields {
        let len: usize = redis::cmd("HSTRLEN")
            .arg(&key)
            .arg(f)
            .query_async(&mut conn)
            .await
            .unwrap();
        sum += f.len() + len;
    }
    let usage: usize = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    (sum, usage)
}

const WITHIN: Duration = Duration::from_secs(180);

#[tokio::test(flavor = "multi_thread")]
async fn a_100_mb_answer_is_stored_apart_and_streamed_to_the_cli_and_the_api() {
    let size = 100 * MB;
    let mut fleet = Fleet::start(
        &agent(size),
        "[results]\nmax_bytes = 134217728\n[queue.research]\nattempt_timeout_secs = 170\n",
    )
    .await;
    fleet.start_worker("w1");
    let worker_pid = fleet.workers[0].child.id();
    let id = fleet
        .submit(JobSpec::research("print a lot", "test"))
        .await
        .to_string();
    let record = fleet.wait_status(&id, JobStatus::Succeeded, WITHIN).await;
    let result = record.result.expect("a result");
    let output = &result["output"];
    // Trailing whitespace is trimmed, as for any answer.
    let answer_len = trimmed(size);
    assert_eq!(output["answer_stored"]["bytes"], answer_len, "{output}");
    assert!(output.get("answer").is_none(), "{output}");
    assert_ne!(output["truncated"], true, "{output}");

    let (fields, usage) = hash_size(&fleet, &id).await;
    assert!(
        fields < 4096 && usage < 4096,
        "job hash: {fields} bytes of fields, {usage} in memory"
    );
    let mut conn = fleet.queue.connection();
    let job_ttl: i64 = conn.pttl(fleet.queue.keys().job(&id)).await.unwrap();
    let answer_ttl: i64 = conn.pttl(fleet.queue.keys().answer(&id)).await.unwrap();
    assert!(job_ttl > 0, "the job record expires ({job_ttl})");
    assert!(
        (job_ttl - answer_ttl).abs() < 5_000,
        "the answer expires with the job: {answer_ttl} ms vs {job_ttl} ms"
    );
    let worker_peak = peak_rss(worker_pid);
    assert!(
        worker_peak < size * 3 / 2,
        "worker peak RSS {} MiB for a {} MiB answer",
        worker_peak / MB,
        size / MB
    );

    // `fleet result` writes the answer as it reads it.
    let config = fleet.config.display().to_string();
    let mut cli = Command::new(binary("fleet"))
        .args(["--config", &config, "result", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let cli_pid = cli.id();
    let mut stdout = cli.stdout.take().unwrap();
    let mut expected = Expected { pos: 0 };
    let mut buf = vec![0u8; 256 << 10];
    let mut cli_peak = 0;
    loop {
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        // Sampled while it still writes (more than a pipe's worth is left to read).
        if expected.pos < answer_len - 4 * MB {
            cli_peak = peak_rss(cli_pid);
        }
        let upto = n.min(answer_len.saturating_sub(expected.pos));
        expected.check(&buf[..upto]);
        if upto < n {
            assert_eq!(
                &buf[upto..n],
                b"\n",
                "only a final newline follows the answer"
            );
        }
    }
    assert!(cli.wait().unwrap().success());
    assert_eq!(expected.pos, answer_len);
    assert!(
        cli_peak > 0 && cli_peak < size / 4,
        "fleet result peak RSS {} MiB for a {} MiB answer",
        cli_peak / MB,
        size / MB
    );

    // The HTTP route streams the same document any result has, the answer last.
    let server = ServeProcess::start(&["--config", &config], &[], fleet.dir.path());
    let http = reqwest::Client::new();
    let url = format!("{}/v1/jobs/{id}/result", server.base);
    let response = fleet
        .eventually("the API to answer", Duration::from_secs(30), || async {
            http.get(&url).send().await.ok()
        })
        .await;
    assert_eq!(response.status(), 200);
    let mut body = Vec::with_capacity(size + 4096);
    let mut response = response;
    let mut serve_peak = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
        if body.len() < answer_len - 4 * MB {
            serve_peak = peak_rss(server.child.id());
        }
    }
    eprintln!(
        "peak RSS for a {} MiB answer: worker {} MiB, fleet result {} MiB, fleet serve {} MiB",
        size / MB,
        worker_peak / MB,
        cli_peak / MB,
        serve_peak / MB
    );
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("the body is JSON");
    let answer = doc["answer"].as_str().expect("an answer");
    assert_eq!(answer.len(), answer_len);
    Expected { pos: 0 }.check(answer.as_bytes());
    assert_eq!(doc["id"], id.as_str());
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(doc["output"]["answer_stored"]["bytes"], answer_len);
    assert!(
        // Its own baseline (the API with webhooks, events, …) plus chunks in flight,
        // far below the answer held once.
        serve_peak > 0 && serve_peak < size / 3,
        "fleet serve peak RSS {} MiB for a {} MiB answer",
        serve_peak / MB,
        size / MB
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn output_past_the_cap_is_cut_while_read_with_a_marker() {
    let size = 100 * MB;
    let cap = 8 * MB;
    let mut fleet = Fleet::start(
        &agent(size),
        &format!("[results]\nmax_bytes = {cap}\n[queue.research]\nattempt_timeout_secs = 170\n"),
    )
    .await;
    fleet.start_worker("w1");
    let worker_pid = fleet.workers[0].child.id();
    let id = fleet
        .submit(JobSpec::research("print too much", "test"))
        .await
        .to_string();
    let record = fleet.wait_status(&id, JobStatus::Succeeded, WITHIN).await;
    let output = &record.result.expect("a result")["output"];
    assert_eq!(output["truncated"], true, "{output}");
    let marker = fleet_shared::runtime::command::truncation_marker(cap);
    let kept = trimmed(cap);
    assert_eq!(
        output["answer_stored"]["bytes"],
        kept + marker.len(),
        "{output}"
    );
    let (fields, usage) = hash_size(&fleet, &id).await;
    assert!(
        fields < 4096 && usage < 4096,
        "job hash: {fields} bytes of fields, {usage} in memory"
    );
    // The worker read all 100 MB but kept only the first 8.
    let worker_peak = peak_rss(worker_pid);
    assert!(
        worker_peak < size / 2,
        "worker peak RSS {} MiB with a {} MiB cap on a {} MiB output",
        worker_peak / MB,
        cap / MB,
        size / MB
    );

    let config = fleet.config.display().to_string();
    let out = fleet_tests::processes::fleet(&["--config", &config, "result", &id], &[], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = out.stdout;
    Expected { pos: 0 }.check(&text[..kept]);
    assert_eq!(
        &text[kept..],
        marker.as_bytes(),
        "the marker ends the stored text"
    );
    assert!(
        String::from_utf8_lossy(&text[kept..])
            .contains("output truncated at 8388608 bytes (results.max_bytes)")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_answer_expires_with_its_job_and_small_ones_stay_inline() {
    let mut fleet = Fleet::start(
        r#"q=$(cat); case "$q" in
  big) yes x | head -c 20000 ;;
  meta) printf '{"answer": "short", "notes": "%s"}' "$(yes n | head -c 8000 | tr -d '\n')" ;;
  *) printf small ;;
esac"#,
        "[queue]\nresult_ttl_secs = 4\n",
    )
    .await;
    fleet.start_worker("w1");
    let big = fleet
        .submit(JobSpec::research("big", "test"))
        .await
        .to_string();
    let small = fleet
        .submit(JobSpec::research("small", "test"))
        .await
        .to_string();
    let meta = fleet
        .submit(JobSpec::research("meta", "test"))
        .await
        .to_string();
    let r = fleet.wait_status(&big, JobStatus::Succeeded, WITHIN).await;
    assert_eq!(r.result.unwrap()["output"]["answer_stored"]["chunks"], 1);
    let r = fleet
        .wait_status(&small, JobStatus::Succeeded, WITHIN)
        .await;
    assert_eq!(r.result.unwrap()["output"]["answer"], "small");
    // Long metadata the agent printed stays out of the hash too, and reads back whole.
    let r = fleet.wait_status(&meta, JobStatus::Succeeded, WITHIN).await;
    let (fields, usage) = hash_size(&fleet, &meta).await;
    assert!(
        fields < 4096 && usage < 4096,
        "job hash: {fields} bytes of fields, {usage} in memory"
    );
    let output = &r.result.unwrap()["output"];
    assert_eq!(output["answer"], "short");
    assert_eq!(
        output["metadata"]["notes"].as_str().unwrap().len(),
        4000,
        "{output}"
    );
    let mut conn = fleet.queue.connection();
    assert!(
        !conn
            .exists::<_, bool>(fleet.queue.keys().answer(&small))
            .await
            .unwrap()
    );
    let answer_key = fleet.queue.keys().answer(&big);
    let job_key = fleet.queue.keys().job(&big);
    assert!(conn.exists::<_, bool>(&answer_key).await.unwrap());
    fleet
        .eventually(
            "the job and its answer to expire",
            Duration::from_secs(10),
            || {
                let mut conn = conn.clone();
                let (a, j) = (answer_key.clone(), job_key.clone());
                async move {
                    let left: usize = conn.exists(&[a, j]).await.ok()?;
                    (left == 0).then_some(())
                }
            },
        )
        .await;
    // No staged answer is left behind either.
    let staged: Vec<String> = conn
        .keys(format!("{}staged:*", fleet.queue.keys().prefix))
        .await
        .unwrap();
    assert!(staged.is_empty(), "{staged:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_staged_answer_becomes_the_jobs_only_with_the_holders_token_at_success() {
    use fleet_shared::job::QueueKind;
    use fleet_shared::queue::{Completion, Fenced};
    let redis = fleet_tests::redis_server::RedisServer::start();
    let settings = fleet_tests::harness::settings(&redis.url(), &[]);
    let q = fleet_tests::harness::queue(&settings, QueueKind::Research).await;
    q.enqueue(JobSpec::research("q", "test")).await.unwrap();
    let lease = q.fetch("w", 1).await.unwrap().leases.remove(0);
    let id = lease.id.clone();
    let status = |q: &fleet_shared::queue::RedisQueue| {
        let (q, id) = (q.clone(), id.clone());
        async move { q.job_record(&id).await.unwrap().unwrap().status }
    };
    let stored = r#"{"output":{"answer_stored":{"bytes":5000,"chunks":1}}}"#;
    let completion = |token: &str| Completion {
        id: id.clone(),
        token: token.to_string(),
        result_json: stored.into(),
        staged: true,
        cost_usd: 0.0,
    };

    // Claiming a staged answer that is not there: refused, the job is not succeeded.
    let out = q.complete_many(&[completion(&lease.token)]).await.unwrap();
    assert_eq!(out, vec![Fenced::Stale]);
    assert_eq!(status(&q).await, JobStatus::Running);

    // Another attempt's staged answer (an older token) never becomes the job's.
    let stale = format!("{}0", lease.token);
    let mut output = serde_json::json!({"answer": "s".repeat(5000)});
    assert!(q.stage_answer(&id, &stale, &mut output).await.unwrap());
    let out = q.complete_many(&[completion(&stale)]).await.unwrap();
    assert_eq!(out, vec![Fenced::Stale]);
    assert_eq!(status(&q).await, JobStatus::Running);

    // The holder's: the answer and `succeeded` land in one step.
    let mut output = serde_json::json!({"answer": "a".repeat(5000), "agent": "test"});
    assert!(
        q.stage_answer(&id, &lease.token, &mut output)
            .await
            .unwrap()
    );
    assert!(output.get("answer").is_none());
    assert_eq!(output["answer_stored"]["bytes"], 5000);
    let out = q.complete_many(&[completion(&lease.token)]).await.unwrap();
    assert_eq!(out, vec![Fenced::Accepted]);
    let record = q.job_record(&id).await.unwrap().unwrap();
    assert_eq!(record.status, JobStatus::Succeeded);
    let chunk = q.answer_chunk(&id, 0).await.unwrap().unwrap();
    assert_eq!(&chunk[..], "a".repeat(5000).as_bytes());
    let mut conn = q.connection();
    let own: bool = conn
        .exists(q.keys().staged_answer(&id, &lease.token))
        .await
        .unwrap();
    assert!(!own, "the holder's staged key became the answer");
    let stale_ttl: i64 = conn
        .pttl(q.keys().staged_answer(&id, &stale))
        .await
        .unwrap();
    assert!(stale_ttl > 0, "a stale staged answer expires on its own");
}
