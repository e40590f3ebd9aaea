//! Live events end to end: real `fleet-worker` processes running a command agent in
//! local sandboxes write each attempt's output to the job's stream as it happens;
//! `fleet watch` and `fleet submit --follow` print it and exit with the job's ending;
//! `fleet serve` streams it as Server-Sent Events that resume after a reconnect with
//! `Last-Event-ID`, losing and repeating nothing. The stream is capped, drops
//! oldest-first with a count when Redis is slower than the agent, and expires with the
//! job's result.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_shared::events::Event;
use fleet_shared::events::reader::read_all;
use fleet_shared::job::JobSpec;
use fleet_shared::results::JobStatus;
use fleet_tests::fixture::Fleet;
use fleet_tests::harness::workspace_root;
use fleet_tests::processes::{ServeProcess, binary, fleet as fleet_cli};
use futures::StreamExt as _;
use serde_json::{Value, json};

/// A shell loop that waits until file `{dir}/NAME` exists (the agent's own pacing,
/// set by the test, so lines come before and after a point the test chooses).
fn gate(name: &str) -> String {
    format!("while [ ! -e {{dir}}/{name} ]; do sleep 0.02; done")
}

fn open_gate(fleet: &Fleet, name: &str) {
    std::fs::write(fleet.path(name), "").unwrap();
}

async fn events_of(fleet: &Fleet, id: &str) -> Vec<Event> {
    let mut conn = fleet.queue.connection();
    read_all(&mut conn, &fleet.queue.keys().events(id))
        .await
        .expect("read the events")
}

/// The stdout lines among `events`, in order.
fn stdout_lines(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.kind == "stdout")
        .map(|e| e.data.as_str().unwrap_or_default().to_string())
        .collect()
}

fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test]
async fn events_appear_while_the_job_runs_in_order_with_secrets_redacted() {
    let script = format!(
        "echo one; echo two >&2; echo \"key=$EVENTS_TEST_KEY\"; {}; echo three; echo done",
        gate("release")
    );
    let mut fleet = Fleet::start(&script, "secret_env = [\"EVENTS_TEST_KEY\"]").await;
    fleet.start_worker_with_env("w1", &[("EVENTS_TEST_KEY", "sk-live-0123456789".into())]);
    let id = fleet
        .submit(JobSpec::research("q", "test"))
        .await
        .to_string();

    // Before the job ends: the lines printed so far are there, nothing after the gate.
    // (Order holds within stdout and within stderr; the two pipes are read apart.)
    let early = fleet
        .eventually("the first lines as events", LONG, || async {
            let events = events_of(&fleet, &id).await;
            let stderr = events.iter().any(|e| e.kind == "stderr");
            (stdout_lines(&events).len() >= 2 && stderr).then_some(events)
        })
        .await;
    assert_eq!(fleet.record(&id).await.status, JobStatus::Running);
    assert_eq!(early.len(), 4, "{early:?}");
    assert_eq!(early[0].kind, "attempt_started");
    assert_eq!(early[0].data["worker"], "w1");
    assert_eq!(early[0].data["agent"], "test");
    let stderr: Vec<&Value> = early
        .iter()
        .filter(|e| e.kind == "stderr")
        .map(|e| &e.data)
        .collect();
    assert_eq!(stderr, [&json!("two")]);
    assert_eq!(stdout_lines(&early), ["one", "key=[redacted]"]);
    assert!(early.iter().all(|e| e.attempt == 1));

    open_gate(&fleet, "release");
    fleet.wait_status(&id, JobStatus::Succeeded, LONG).await;
    let events = events_of(&fleet, &id).await;
    assert_eq!(
        stdout_lines(&events),
        ["one", "key=[redacted]", "three", "done"]
    );
    assert_eq!(events.last().unwrap().kind, "attempt_ended");
    assert_eq!(events.last().unwrap().data, json!({"status": "succeeded"}));
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        &ids[..early.len()],
        &early.iter().map(|e| e.id.as_str()).collect::<Vec<_>>()[..]
    );
    let raw = serde_json::to_string(&events).unwrap();
    assert!(
        !raw.contains("sk-live-0123456789"),
        "the secret reached Redis"
    );
}

#[tokio::test]
async fn a_retried_job_has_each_attempt_in_one_stream() {
    // The first attempt fails transiently (exit 75), the second succeeds.
    let script = "if [ -e {dir}/failed ]; then echo second; else touch {dir}/failed; echo first; exit 75; fi";
    let extra = "[queue.research]\nbackoff_base_ms = 10\nbackoff_cap_ms = 20\n";
    let mut fleet = Fleet::start(script, extra).await;
    fleet.start_worker("w1");
    let id = fleet
        .submit(JobSpec::research("q", "test"))
        .await
        .to_string();
    fleet.wait_status(&id, JobStatus::Succeeded, LONG).await;
    let events = events_of(&fleet, &id).await;
    let summary: Vec<(u32, &str)> = events
        .iter()
        .map(|e| (e.attempt, e.kind.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, "attempt_started"),
            (1, "stdout"),
            (1, "attempt_ended"),
            (2, "attempt_started"),
            (2, "stdout"),
            (2, "attempt_ended"),
        ]
    );
    assert_eq!(events[2].data["status"], "failed");
    assert_eq!(events[2].data["class"], "transient");
    assert_eq!(events[5].data["status"], "succeeded");
}

/// `fleet` with the fleet's config, as a child whose stdout is read line by line.
fn spawn_fleet(fleet: &Fleet, args: &[&str]) -> std::process::Child {
    Command::new(binary("fleet"))
        .arg("--config")
        .arg(&fleet.config)
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fleet")
}

/// Lines of a child's stdout, sent as they are read.
fn line_channel(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn next_line(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
    rx.recv_timeout(LONG)
        .unwrap_or_else(|e| panic!("no line from fleet while waiting for {what}: {e}"))
}

#[tokio::test]
async fn fleet_watch_prints_events_as_they_come_and_exits_with_the_jobs_status() {
    let script = format!(
        "read q; echo \"asked: $q\"; {}; echo answer; case \"$q\" in bad*) exit 64;; esac",
        gate("release")
    );
    let mut fleet = Fleet::start(&script, "").await;
    fleet.start_worker("w1");
    let id = fleet
        .submit(JobSpec::research("good question", "test"))
        .await
        .to_string();

    let mut watch = spawn_fleet(&fleet, &["watch", &id]);
    let lines = line_channel(&mut watch);
    assert!(next_line(&lines, "the attempt's start").starts_with("[attempt 1] started at "));
    // Printed while the agent still waits: the watch is live, not a replay at the end.
    assert_eq!(
        next_line(&lines, "the agent's line"),
        "asked: good question"
    );
    assert!(
        watch.try_wait().unwrap().is_none(),
        "fleet watch ended early"
    );
    open_gate(&fleet, "release");
    assert_eq!(next_line(&lines, "the answer line"), "answer");
    assert!(next_line(&lines, "the attempt's end").starts_with("[attempt 1] succeeded at "));
    let status = watch.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut stderr = String::new();
    std::io::Read::read_to_string(watch.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains(&format!("job {id} ended succeeded")),
        "{stderr}"
    );

    // `submit --follow --json`: the ID, every event as JSON, the end; exit 1 for a job
    // that ends dead (exit 64 is permanent).
    let out = fleet_cli(
        &[
            "--config",
            &fleet.config.display().to_string(),
            "--json",
            "submit",
            "bad question",
            "--follow",
        ],
        &[],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let bad_id = docs[0]["id"]
        .as_str()
        .expect("the job ID first")
        .to_string();
    let kinds: Vec<&str> = docs[1..]
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "attempt_started",
            "stdout",
            "stdout",
            "attempt_ended",
            "end"
        ]
    );
    assert_eq!(docs[2]["data"], "asked: bad question");
    assert_eq!(docs[4]["data"]["class"], "permanent");
    assert_eq!(docs[5]["status"], "dead");
    assert!(
        docs[1]["id"].as_str().unwrap().contains('-'),
        "events carry their IDs"
    );

    // A job that ended already is printed whole, at once; --after skips what was seen.
    let out = fleet_cli(
        &[
            "--config",
            &fleet.config.display().to_string(),
            "--json",
            "watch",
            &bad_id,
            "--after",
            docs[2]["id"].as_str().unwrap(),
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let replay: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(replay, docs[3..]);

    // Unknown and malformed IDs.
    let config = fleet.config.display().to_string();
    let out = fleet_cli(
        &[
            "--config",
            &config,
            "watch",
            "01a217cf-bef0-7595-8600-e8846f368fb2",
        ],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job with ID"));
    let out = fleet_cli(
        &["--config", &config, "watch", &id, "--after", "x"],
        &[],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
}

/// One Server-Sent Event, or a comment.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    id: Option<String>,
    event: Option<String>,
    data: String,
    comment: bool,
}

/// Reads SSE frames from a response as they arrive.
struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseReader {
    fn new(response: reqwest::Response) -> SseReader {
        SseReader {
            body: response.bytes_stream().boxed(),
            buffer: String::new(),
        }
    }

    /// The next frame; `None` when the response ended.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let mut sse = Sse {
                    id: None,
                    event: None,
                    data: String::new(),
                    comment: false,
                };
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        sse.id = Some(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        sse.event = Some(v.trim_start().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        sse.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    } else if line.starts_with(':') {
                        sse.comment = true;
                    }
                }
                return Some(sse);
            }
            let chunk = tokio::time::timeout(LONG, self.body.next())
                .await
                .expect("the event stream went silent")?
                .expect("reading the event stream");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// The next frame that is not a comment.
    async fn next_event(&mut self) -> Option<Sse> {
        loop {
            let sse = self.next().await?;
            if !sse.comment {
                return Some(sse);
            }
        }
    }
}

const TOKEN: &str = "events-test-token-0123456789";

#[tokio::test]
async fn sse_streams_events_live_and_resumes_after_a_reconnect_without_loss_or_repeats() {
    let script = format!(
        "for i in 1 2 3; do echo line $i; done; {}; for i in 4 5 6; do echo line $i; done; {}; for i in 7 8 9; do echo line $i; done",
        gate("gate1"),
        gate("gate2")
    );
    let mut fleet = Fleet::start(&script, "[events]\nkeepalive_secs = 1\n").await;
    fleet.start_worker("w1");
    let config = fleet.config.display().to_string();
    let server = ServeProcess::start(
        &["--config", &config],
        &[("FLEET_API__TOKEN", TOKEN.to_string())],
        fleet.dir.path(),
    );
    let http = reqwest::Client::new();
    let get = |path: String| {
        http.get(server.url(&path))
            .header("authorization", format!("Bearer {TOKEN}"))
    };
    let id = fleet
        .submit(JobSpec::research("q", "test"))
        .await
        .to_string();
    let path = format!("/v1/jobs/{id}/events");

    // The same guards as the other routes: a token, a job that exists, a sound ID.
    let r = http.get(server.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = get("/v1/jobs/01a217cf-bef0-7595-8600-e8846f368fb2/events".into())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("no job with ID"));
    let r = get(path.clone())
        .header("last-event-id", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // First connection: the events up to the first gate, live; then the client leaves.
    let r = get(path.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut first = SseReader::new(r);
    let mut seen: Vec<Sse> = Vec::new();
    while seen
        .iter()
        .filter(|e| e.event.as_deref() == Some("stdout"))
        .count()
        < 3
    {
        seen.push(first.next_event().await.expect("events before the gate"));
    }
    assert_eq!(fleet.record(&id).await.status, JobStatus::Running);
    drop(first);

    // Lines 4–6 are written while nobody listens.
    open_gate(&fleet, "gate1");
    fleet
        .eventually("lines 4-6 in the stream", LONG, || async {
            (stdout_lines(&events_of(&fleet, &id).await).len() >= 6).then_some(())
        })
        .await;

    // Reconnect after the last event seen: the rest, then keep-alives while the agent
    // waits, then the end.
    let last = seen.last().unwrap().id.clone().expect("events carry IDs");
    let r = get(path.clone())
        .header("last-event-id", &last)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut second = SseReader::new(r);
    let mut keep_alive = false;
    while !keep_alive {
        let sse = second
            .next()
            .await
            .expect("a keep-alive while the agent waits");
        if sse.comment {
            keep_alive = true;
        } else {
            seen.push(sse);
        }
    }
    open_gate(&fleet, "gate2");
    let end = loop {
        let sse = second.next_event().await.expect("events up to the end");
        if sse.event.as_deref() == Some("end") {
            break sse;
        }
        seen.push(sse);
    };
    assert_eq!(
        serde_json::from_str::<Value>(&end.data).unwrap(),
        json!({"status": "succeeded"})
    );
    assert_eq!(end.id, None, "the end is no stream entry");
    assert!(
        second.next().await.is_none(),
        "the response ends after the end event"
    );

    // Exactly the stream, in order: nothing lost across the reconnect, nothing repeated.
    let stored = events_of(&fleet, &id).await;
    let got: Vec<Event> = seen
        .iter()
        .map(|sse| {
            let event: Event = serde_json::from_str(&sse.data).expect("data is the event's JSON");
            assert_eq!(sse.id.as_deref(), Some(event.id.as_str()));
            assert_eq!(sse.event.as_deref(), Some(event.kind.as_str()));
            event
        })
        .collect();
    assert_eq!(got, stored);
    let expected: Vec<String> = (1..=9).map(|i| format!("line {i}")).collect();
    assert_eq!(stdout_lines(&got), expected);

    // A job that ended: its events at once, then the end.
    let r = get(path.clone()).send().await.unwrap();
    let mut replay = SseReader::new(r);
    let mut count = 0;
    while let Some(sse) = replay.next_event().await {
        count += 1;
        if sse.event.as_deref() == Some("end") {
            assert!(replay.next().await.is_none());
            break;
        }
    }
    assert_eq!(count, stored.len() + 1);
}

#[tokio::test]
async fn the_stream_is_capped() {
    let mut fleet = Fleet::start("seq 1 2000", "[events]\nmax_len = 50\n").await;
    fleet.start_worker("w1");
    let id = fleet
        .submit(JobSpec::research("q", "test"))
        .await
        .to_string();
    fleet.wait_status(&id, JobStatus::Succeeded, LONG).await;
    let events = events_of(&fleet, &id).await;
    // `MAXLEN ~` trims whole stream nodes (100 entries each by default).
    assert!(
        (50..=150).contains(&events.len()),
        "{} entries kept",
        events.len()
    );
    let lines = stdout_lines(&events);
    assert_eq!(
        lines.last().map(String::as_str),
        Some("2000"),
        "the newest are kept"
    );
    let first: u32 = lines[0].parse().unwrap();
    assert!(first > 1800, "the oldest went first (first kept: {first})");
    let numbers: Vec<u32> = lines.iter().map(|l| l.parse().unwrap()).collect();
    assert!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gap"
    );
    assert_eq!(events.last().unwrap().kind, "attempt_ended");
}

#[tokio::test]
async fn a_slow_redis_drops_the_oldest_lines_and_counts_them_without_holding_the_agent() {
    let script = format!(
        "touch {{dir}}/agent-running; {}; seq 1 300; date +%s%N > {{dir}}/agent-done",
        gate("go")
    );
    let mut fleet = Fleet::start(&script, "[events]\nbuffer_events = 20\n").await;
    fleet.start_worker("w1");
    let id = fleet
        .submit(JobSpec::research("q", "test"))
        .await
        .to_string();
    // The agent runs (its lease, which goes through Redis, is done) before Redis is
    // made slow: what is measured is the output's path, not the lease's.
    fleet
        .eventually("the agent to run", LONG, || async {
            fleet.path("agent-running").exists().then_some(())
        })
        .await;
    // Redis refuses no write, but holds every write for 3 s.
    let mut admin = fleet.redis.conn();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("WRITE")
        .query(&mut admin)
        .unwrap();
    let paused_at = std::time::Instant::now();
    open_gate(&fleet, "go");
    // The agent is not held up: it finishes while Redis still holds the writes.
    fleet
        .eventually("the agent to finish", LONG, || async {
            fleet.path("agent-done").exists().then_some(())
        })
        .await;
    assert!(
        paused_at.elapsed() < Duration::from_millis(2500),
        "the agent waited for Redis: {:?}",
        paused_at.elapsed()
    );
    fleet.wait_status(&id, JobStatus::Succeeded, LONG).await;
    let events = fleet
        .eventually("the attempt's end in the stream", LONG, || async {
            let events = events_of(&fleet, &id).await;
            (events.last()?.kind == "attempt_ended").then_some(events)
        })
        .await;
    let dropped: u64 = events
        .iter()
        .filter(|e| e.kind == "dropped")
        .map(|e| e.data["count"].as_u64().unwrap())
        .sum();
    let lines = stdout_lines(&events);
    assert!(dropped > 0, "nothing was dropped: {}", kinds(&events).len());
    assert_eq!(
        lines.len() as u64 + dropped,
        300,
        "every line is either written or counted"
    );
    assert_eq!(
        lines.last().map(String::as_str),
        Some("300"),
        "the newest are kept"
    );
    let numbers: Vec<u32> = lines.iter().map(|l| l.parse().unwrap()).collect();
    assert!(numbers.windows(2).all(|w| w[0] < w[1]), "in order");
}

#[tokio::test]
async fn events_expire_with_the_result_ttl() {
    let mut fleet = Fleet::start("echo hello", "[queue]\nresult_ttl_secs = 2\n").await;
    fleet.start_worker("w1");
    let id = fleet
        .submit(JobSpec::research("q", "test"))
        .await
        .to_string();
    fleet.wait_status(&id, JobStatus::Succeeded, LONG).await;
    let key = fleet.queue.keys().events(&id);
    let mut conn = fleet.redis.conn();
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut conn).unwrap();
    assert!((1..=2000).contains(&ttl), "events TTL {ttl} ms");
    assert_eq!(stdout_lines(&events_of(&fleet, &id).await), ["hello"]);
    fleet
        .eventually(
            "the job and its events to expire",
            Duration::from_secs(10),
            || async {
                let mut conn = fleet.redis.conn();
                let left: i64 = redis::cmd("EXISTS")
                    .arg(&key)
                    .arg(fleet.queue.keys().job(&id))
                    .query(&mut conn)
                    .unwrap();
                (left == 0).then_some(())
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_e2b_provider_streams_events_while_the_job_runs() {
    let fake = fleet_tests::fake_e2b::FakeE2b::start_local().await;
    let extra = format!(
        "[sandbox]\nprovider = \"e2b\"\n[sandbox.e2b]\napi_url = \"{}\"\nenvd_url = \"{}\"\ncreates_per_second = 20.0\n",
        fake.api_url(),
        fake.envd_url(),
    );
    let script = format!(
        "echo before; echo oops >&2; {}; echo after",
        gate("release")
    );
    let mut fleet = Fleet::start(&script, &extra).await;
    fleet.start_worker_with_env("e1", &[("E2B_API_KEY", fake.api_key().to_string())]);
    let id = fleet
        .submit(JobSpec::research("q", "test"))
        .await
        .to_string();
    let early = fleet
        .eventually("events through envd while the job runs", LONG, || async {
            let events = events_of(&fleet, &id).await;
            let stderr = events.iter().any(|e| e.kind == "stderr");
            (!stdout_lines(&events).is_empty() && stderr).then_some(events)
        })
        .await;
    assert_eq!(fleet.record(&id).await.status, JobStatus::Running);
    assert_eq!(stdout_lines(&early), ["before"]);
    open_gate(&fleet, "release");
    fleet.wait_status(&id, JobStatus::Succeeded, LONG).await;
    let events = events_of(&fleet, &id).await;
    assert_eq!(stdout_lines(&events), ["before", "after"]);
    assert_eq!(events.last().unwrap().data["status"], "succeeded");
}

#[tokio::test]
async fn sigterm_ends_open_event_streams_and_the_server_exits_promptly() {
    let mut fleet = Fleet::start(&gate("never"), "").await;
    fleet.start_worker("w1");
    let config = fleet.config.display().to_string();
    let mut server = ServeProcess::start(&["--config", &config], &[], fleet.dir.path());
    let id = fleet.submit(JobSpec::research("q", "test")).await;
    let r = reqwest::get(server.url(&format!("/v1/jobs/{id}/events")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut stream = SseReader::new(r);
    let started = stream.next_event().await.expect("the attempt's start");
    assert_eq!(started.event.as_deref(), Some("attempt_started"));
    server.sigterm();
    assert!(
        stream.next_event().await.is_none(),
        "the response ends at SIGTERM, without an end event (the job has not ended)"
    );
    assert_eq!(
        server.wait_timeout(Duration::from_secs(15)),
        Some(0),
        "{}",
        server.logs()
    );
    // Let the agent finish, so no sandbox process outlives the test.
    open_gate(&fleet, "never");
    fleet
        .wait_status(&id.to_string(), JobStatus::Succeeded, LONG)
        .await;
}
