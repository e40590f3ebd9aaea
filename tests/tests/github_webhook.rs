//! `POST /webhooks/github` on a real `fleet serve`, with real workers, a fake GitHub
//! server and a token-protected git server:
//!
//! - GitHub's documented signature test vector verifies; missing, wrong and
//!   truncated signatures get 401 before the body is read as JSON; a replayed
//!   delivery ID is ignored.
//! - A push → `refresh` lifecycle jobs → the agent answers from the new commit (the
//!   same agent, refreshed in place); a push of a commit that cannot be fetched
//!   leaves the old commit serving.
//! - A labelled issue → one research job → one comment with the answer; the same
//!   delivery again and an edit → still one job and one comment; a dead-lettered job
//!   → a failure note with its job ID.

use std::time::Duration;

use fleet_shared::github::webhook::sign;
use fleet_shared::job::{JobSpec, QueueKind};
use fleet_shared::queue::RedisQueue;
use fleet_shared::results::JobStatus;
use fleet_tests::fake_github::{FakeGithub, FakeGithubServer};
use fleet_tests::fixture::Fleet;
use fleet_tests::git_http::GitHttpServer;
use fleet_tests::processes::ServeProcess;
use serde_json::{Value, json};

const SECRET: &str = "It's a Secret to Everybody";
const GITHUB_TOKEN: &str = "ghp_WebhookTestToken_123456";
const GIT_TOKEN: &str = "ghp_GitRepoToken_abcdef0123";

struct Setup {
    fleet: Fleet,
    serve: ServeProcess,
    http: reqwest::Client,
    lifecycle: RedisQueue,
    github: FakeGithubServer,
    git: GitHttpServer,
}

async fn setup(start_worker: bool) -> Setup {
    let github = FakeGithub::start(GITHUB_TOKEN).await;
    github.add_repo("octo/agent");
    let git = GitHttpServer::start(GIT_TOKEN).await;
    git.create_repo("octo/agent", &[("VERSION", "v1\n")]);
    let extra = format!(
        r#"
[api]
# GitHub cannot send the API's bearer token: the webhook is signed instead.
token = "fleet-api-token-0123456789"
[github]
api_url = "{api}"
repos = ["octo/agent"]
research_label = "research"
[agents.gitagent]
runtime = "command"
repo = "{repo}"
git_token_env = "FLEET_TEST_GIT_TOKEN"
# A query starting with "slow" holds the agent for a while (and says it started).
command = ["sh", "-c", "read q; case \"$q\" in slow*) touch {{dir}}/slow-started; sleep 3;; esac; cat VERSION"]
[agents.failing]
runtime = "command"
repo = ""
command = ["sh", "-c", "echo no data for that >&2; exit 65"]
"#,
        api = github.url(),
        repo = git.url("octo/agent"),
    );
    // The `test` agent answers with the query it was given.
    let mut fleet = Fleet::start("printf 'answer to: '; cat", &extra).await;
    if start_worker {
        fleet.start_worker_with_env(
            "w1",
            &[
                ("GITHUB_TOKEN", GITHUB_TOKEN.to_string()),
                ("FLEET_TEST_GIT_TOKEN", GIT_TOKEN.to_string()),
            ],
        );
    }
    let serve = ServeProcess::start(
        &["--config", fleet.config.to_str().unwrap()],
        &[("GITHUB_WEBHOOK_SECRET", SECRET.to_string())],
        fleet.dir.path(),
    );
    let http = reqwest::Client::new();
    let lifecycle = fleet_tests::harness::queue(&fleet.settings, QueueKind::Lifecycle).await;
    let s = Setup {
        fleet,
        serve,
        http,
        lifecycle,
        github,
        git,
    };
    s.fleet
        .eventually("fleet serve to answer", Duration::from_secs(30), || async {
            s.http
                .get(s.serve.url("/healthz"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
        })
        .await;
    s
}

impl Setup {
    /// POST a delivery with the given signature header (None: no header).
    async fn post(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .post(self.serve.url("/webhooks/github"))
            .header("X-GitHub-Event", event)
            .header("X-GitHub-Delivery", delivery)
            .header("Content-Type", "application/json")
            .header("User-Agent", "GitHub-Hookshot/test")
            .body(body.to_vec());
        if let Some(sig) = signature {
            request = request.header("X-Hub-Signature-256", sig);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// POST a correctly signed delivery.
    async fn deliver(&self, event: &str, delivery: &str, payload: &Value) -> Value {
        let body = serde_json::to_vec(payload).unwrap();
        let signature = sign(SECRET.as_bytes(), &body);
        let (status, answer) = self.post(event, delivery, &body, Some(&signature)).await;
        assert_eq!(status, 200, "{answer}\n{}", self.serve.logs());
        answer
    }

    async fn wait_lifecycle(
        &self,
        id: &str,
        status: JobStatus,
    ) -> fleet_shared::results::JobRecord {
        self.fleet
            .eventually(
                &format!("lifecycle job {id} to be {status}"),
                Duration::from_secs(90),
                || async {
                    let r = self.lifecycle.job_record(id).await.ok()??;
                    (r.status == status).then_some(r)
                },
            )
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_are_checked_first_and_replayed_deliveries_are_ignored() {
    let s = setup(false).await;
    let vector = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    // GitHub's documented vector: this secret, this body, this signature.
    let (status, answer) = s
        .post("ping", "delivery-1", b"Hello, World!", Some(vector))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["pong"], true);

    // Refused before the body is read: a body that is not JSON gets 401, not 400.
    let not_json = b"Hello, World!";
    for (what, signature) in [
        ("missing", None),
        ("wrong", Some(vector.replace("757107", "757108"))),
        ("truncated", Some(vector[..vector.len() - 4].to_string())),
        (
            "without the sha256= prefix",
            Some(vector["sha256=".len()..].to_string()),
        ),
        (
            "for another body",
            Some(sign(SECRET.as_bytes(), b"Hello, World?")),
        ),
    ] {
        let (status, answer) = s
            .post(
                "push",
                &format!("delivery-{what}"),
                not_json,
                signature.as_deref(),
            )
            .await;
        assert_eq!(status, 401, "{what}: {answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .starts_with("signature refused"),
            "{what}: {answer}"
        );
    }

    // The /v1 routes do want the bearer token that the webhook does without.
    let v1 = s
        .http
        .post(s.serve.url("/v1/jobs"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(v1.status().as_u16(), 401);

    // The same delivery again: acknowledged, nothing done.
    let (status, answer) = s
        .post("ping", "delivery-1", b"Hello, World!", Some(vector))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["duplicate"], true, "{answer}");
    // A signed push for an untracked repo is acknowledged and ignored.
    let answer = s
        .deliver(
            "push",
            "delivery-2",
            &json!({"ref": "refs/heads/main", "after": "1".repeat(40),
                    "repository": {"id": 1, "full_name": "someone/else", "default_branch": "main"}}),
        )
        .await;
    assert!(
        answer["ignored"].as_str().unwrap().contains("not tracked"),
        "{answer}"
    );
    assert_eq!(s.lifecycle.counts().await.unwrap().ready, 0, "no job");
}

fn push(after: &str) -> Value {
    json!({"ref": "refs/heads/main", "before": "0".repeat(40), "after": after,
           "deleted": false, "forced": false,
           "repository": {"id": 77, "full_name": "octo/agent", "name": "agent",
                          "owner": {"login": "octo"}, "default_branch": "main"}})
}

async fn ask_gitagent(s: &Setup) -> (String, String) {
    let id = s
        .fleet
        .submit(JobSpec::research("which version?", "gitagent"))
        .await
        .to_string();
    let record = s
        .fleet
        .wait_status(&id, JobStatus::Succeeded, Duration::from_secs(90))
        .await;
    let output = &record.result.unwrap()["output"];
    (
        output["answer"].as_str().unwrap().to_string(),
        output["agent_id"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_refreshes_the_agents_to_the_new_commit_and_a_bad_one_keeps_the_old() {
    let s = setup(true).await;
    let (answer, agent) = ask_gitagent(&s).await;
    assert_eq!(answer, "v1");

    // A job holds the agent when the push arrives: the agent is refreshed after it.
    let slow = s
        .fleet
        .submit(JobSpec::research("slow question", "gitagent"))
        .await
        .to_string();
    s.fleet
        .eventually(
            "the slow job to hold the agent",
            Duration::from_secs(60),
            || async { s.fleet.path("slow-started").exists().then_some(()) },
        )
        .await;

    let v2 = s.git.commit("octo/agent", &[("VERSION", "v2\n")], "v2");
    let answer = s.deliver("push", "push-1", &push(&v2)).await;
    let jobs = answer["jobs"].as_array().expect("refresh jobs").clone();
    assert_eq!(
        jobs.len(),
        1,
        "one profile follows octo/agent main: {answer}"
    );
    let refresh = jobs[0].as_str().unwrap();
    let record = s.wait_lifecycle(refresh, JobStatus::Succeeded).await;
    let slow = s
        .fleet
        .wait_status(&slow, JobStatus::Succeeded, Duration::from_secs(30))
        .await;
    assert_eq!(
        slow.result.as_ref().unwrap()["output"]["answer"],
        "v1",
        "the running job kept its commit"
    );
    assert!(
        record.finished_at.unwrap() >= slow.finished_at.unwrap(),
        "the busy agent was refreshed after its job"
    );
    let output = &record.result.unwrap()["output"];
    assert_eq!(output["commit"], v2.as_str(), "{output}");
    assert_eq!(output["refreshed"][0]["agent_id"], agent.as_str());
    assert_eq!(output["refreshed"][0]["commit"], v2.as_str());
    let (answer, same_agent) = ask_gitagent(&s).await;
    assert_eq!(answer, "v2", "the agent serves the new commit");
    assert_eq!(same_agent, agent, "refreshed in place, not replaced");

    // The same push delivered again does nothing.
    let again = s.deliver("push", "push-1", &push(&v2)).await;
    assert_eq!(again["duplicate"], true);

    // A commit the repo does not have: the refresh fails, v2 keeps serving.
    let missing = "feedfacefeedfacefeedfacefeedfacefeedface";
    let answer = s.deliver("push", "push-2", &push(missing)).await;
    let bad = answer["jobs"][0].as_str().unwrap().to_string();
    let record = s.wait_lifecycle(&bad, JobStatus::Dead).await;
    let error = record.error.unwrap();
    assert!(
        error["message"].as_str().unwrap().contains(missing),
        "{error}"
    );
    let (answer, _) = ask_gitagent(&s).await;
    assert_eq!(
        answer, "v2",
        "a failed refresh leaves the old commit serving"
    );
}

fn issue_event(action: &str, number: u64, labels: &[&str], body: &str) -> Value {
    let labels: Vec<Value> = labels.iter().map(|l| json!({"name": l})).collect();
    json!({"action": action,
           "repository": {"id": 77, "full_name": "octo/agent"},
           "issue": {"id": 5000 + number, "number": number, "state": "open",
                     "title": format!("Question {number}"), "body": body, "labels": labels},
           "sender": {"login": "alice", "type": "User"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_issue_gets_one_job_and_one_comment_whatever_is_redelivered() {
    let s = setup(true).await;
    let answer = s
        .deliver(
            "issues",
            "issue-1",
            &issue_event("labeled", 5, &["research"], "ACME revenue?"),
        )
        .await;
    let job = answer["jobs"][0].as_str().unwrap().to_string();
    assert_eq!(answer["existing"], false);
    s.fleet
        .wait_status(&job, JobStatus::Succeeded, Duration::from_secs(60))
        .await;
    let comments = s
        .fleet
        .eventually(
            "the answer commented on issue 5",
            Duration::from_secs(30),
            || async {
                let c = s.github.comments("octo/agent", 5);
                (!c.is_empty()).then_some(c)
            },
        )
        .await;
    let body = comments[0]["body"].as_str().unwrap();
    assert!(
        body.contains("answer to: Question 5\n\nACME revenue?"),
        "{body}"
    );
    assert!(body.contains(&job), "the comment names the job: {body}");

    // The same delivery again, then an edit (a new delivery): the same job.
    let again = s
        .deliver(
            "issues",
            "issue-1",
            &issue_event("labeled", 5, &["research"], "ACME revenue?"),
        )
        .await;
    assert_eq!(again["duplicate"], true);
    let edited = s
        .deliver(
            "issues",
            "issue-2",
            &issue_event("edited", 5, &["research"], "ACME revenue in 2024?"),
        )
        .await;
    assert_eq!(edited["jobs"][0], job.as_str(), "{edited}");
    assert_eq!(edited["existing"], true);
    // An issue without the label is ignored.
    let unlabelled = s
        .deliver(
            "issues",
            "issue-3",
            &issue_event("opened", 8, &["bug"], "crash"),
        )
        .await;
    assert!(unlabelled["ignored"].is_string(), "{unlabelled}");

    // A dead-lettered job: a short failure note with its ID. Its comment also shows
    // that every ending before it has been handled (the notifier follows them in order).
    let answer = s
        .deliver(
            "issues",
            "issue-4",
            &issue_event("opened", 6, &["research", "agent:failing"], "anything"),
        )
        .await;
    let failing = answer["jobs"][0].as_str().unwrap().to_string();
    s.fleet
        .wait_status(&failing, JobStatus::Dead, Duration::from_secs(60))
        .await;
    let note = s
        .fleet
        .eventually(
            "the failure note on issue 6",
            Duration::from_secs(30),
            || async { s.github.comments("octo/agent", 6).into_iter().next() },
        )
        .await;
    let note = note["body"].as_str().unwrap();
    assert!(note.contains(&failing), "{note}");
    assert!(note.contains("no data for that"), "the reason: {note}");

    assert_eq!(
        s.github.comments("octo/agent", 5).len(),
        1,
        "still one comment"
    );
    assert_eq!(s.github.comments("octo/agent", 8).len(), 0);
    let counts = s.fleet.queue.counts().await.unwrap();
    assert_eq!(counts.ready + counts.running + counts.delayed, 0);
    assert_eq!(counts.dead, 1);
    let research_jobs: Vec<_> = s
        .github
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.contains("/comments"))
        .collect();
    assert_eq!(
        research_jobs.len(),
        2,
        "one comment per job: {research_jobs:?}"
    );
    // Neither the GitHub token nor the webhook secret reaches a log.
    for log in [s.fleet.logs(), s.serve.logs()] {
        assert!(!log.contains(GITHUB_TOKEN) && !log.contains(SECRET));
    }
}
