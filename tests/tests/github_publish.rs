//! Publishing a batch as a pull request, end to end: `fleet batch FILE --publish-pr
//! octo/agent` runs the batch on a real worker, then a `publish` lifecycle job
//! commits the Markdown + JSON report to `fleet/batch-<id>` of the fake GitHub and
//! opens a pull request. Publishing again updates the same files, branch and pull
//! request: no second branch, no second pull request, and an update carries the
//! file's current `sha` (the fake refuses it otherwise, as GitHub does).

use std::time::Duration;

use base64::Engine as _;
use fleet_shared::job::{JobId, JobSpec, LifecycleJob, QueueKind};
use fleet_shared::results::JobStatus;
use fleet_tests::fake_github::{FakeGithub, Recorded};
use fleet_tests::fixture::Fleet;
use serde_json::Value;

const TOKEN: &str = "ghp_PublishTestToken_0123456789";

fn calls(requests: &[Recorded]) -> Vec<String> {
    requests
        .iter()
        .map(|r| {
            format!(
                "{} {} {}",
                r.method,
                r.path.split('?').next().unwrap(),
                r.status
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_a_batch_opens_one_pull_request_and_publishing_again_updates_it() {
    let github = FakeGithub::start(TOKEN).await;
    github.add_repo("octo/research");
    let extra = format!("[github]\napi_url = \"{}\"\n", github.url());
    let mut fleet = Fleet::start("printf 'answer to: '; cat", &extra).await;
    fleet.start_worker_with_env("w1", &[("GITHUB_TOKEN", TOKEN.to_string())]);
    let queries = fleet.path("queries.txt");
    std::fs::write(
        &queries,
        "What was ACME's revenue?\nCompare Globex | Initech\n",
    )
    .unwrap();
    let config = fleet.config.to_str().unwrap().to_string();
    let out = tokio::task::spawn_blocking(move || {
        fleet_tests::processes::fleet(
            &[
                "--config",
                &config,
                "--json",
                "batch",
                queries.to_str().unwrap(),
                "--publish-pr",
                "octo/research",
                "--no-progress",
            ],
            &[],
            None,
        )
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fleet.logs()
    );
    let publish: Value = serde_json::from_str(&stdout).unwrap();
    let published = &publish["result"]["output"]["published"];
    assert_eq!(published["opened"], true, "{publish}");
    assert_eq!(published["pull_request"], 1);

    let repo = github.repo("octo/research");
    assert_eq!(repo.pulls.len(), 1);
    let branch = repo.pulls[0]["head"]["ref"].as_str().unwrap().to_string();
    let batch_id = branch.strip_prefix("fleet/batch-").unwrap().to_string();
    assert_eq!(repo.pulls[0]["base"]["ref"], "main");
    let md_path = format!("fleet-reports/{batch_id}.md");
    let json_path = format!("fleet-reports/{batch_id}.json");
    let md = String::from_utf8(repo.files[&(branch.clone(), md_path.clone())].1.clone()).unwrap();
    assert!(md.contains("2 of 2 jobs succeeded"), "{md}");
    assert!(md.contains("answer to: What was ACME's revenue?"), "{md}");
    assert!(
        md.contains("Compare Globex \\| Initech"),
        "pipes escaped in the table: {md}"
    );
    let doc: Value =
        serde_json::from_slice(&repo.files[&(branch.clone(), json_path.clone())].1).unwrap();
    assert_eq!(doc["batch_id"], batch_id.as_str());
    assert_eq!(doc["jobs"].as_array().unwrap().len(), 2);

    // The requests, in order: base branch, new branch from its head, two new files,
    // no open pull request yet, one opened.
    let enc_branch = "fleet/batch-".to_string() + &batch_id;
    let expected = [
        "GET /repos/octo/research 200".to_string(),
        format!("GET /repos/octo/research/git/ref/heads/{enc_branch} 404"),
        "GET /repos/octo/research/git/ref/heads/main 200".to_string(),
        "POST /repos/octo/research/git/refs 201".to_string(),
        format!("GET /repos/octo/research/contents/fleet-reports/{batch_id}.md 404"),
        format!("PUT /repos/octo/research/contents/fleet-reports/{batch_id}.md 201"),
        format!("GET /repos/octo/research/contents/fleet-reports/{batch_id}.json 404"),
        format!("PUT /repos/octo/research/contents/fleet-reports/{batch_id}.json 201"),
        "GET /repos/octo/research/pulls 200".to_string(),
        "POST /repos/octo/research/pulls 201".to_string(),
    ];
    let first = calls(&github.requests());
    assert_eq!(first, expected);
    let created_ref = &github.requests()[3].body;
    assert_eq!(created_ref["ref"], format!("refs/heads/{branch}").as_str());
    assert_eq!(
        created_ref["sha"],
        github.repo("octo/research").refs["main"].as_str()
    );

    // Publish again, with one more job in the batch: the files are updated in place
    // (with their sha), the same pull request is edited.
    let extra_job = fleet
        .submit(JobSpec::research("One more question", "test"))
        .await;
    fleet
        .wait_status(
            &extra_job.to_string(),
            JobStatus::Succeeded,
            Duration::from_secs(60),
        )
        .await;
    let mut job_ids: Vec<JobId> = doc["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().parse().unwrap())
        .collect();
    job_ids.push(extra_job);
    let lifecycle = fleet_tests::harness::queue(&fleet.settings, QueueKind::Lifecycle).await;
    let (again, _) = lifecycle
        .enqueue(JobSpec::lifecycle(LifecycleJob::Publish {
            repo: "octo/research".into(),
            batch_id: batch_id.clone(),
            job_ids,
        }))
        .await
        .unwrap();
    let record = lifecycle
        .wait_for_final(&again.to_string(), Some(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, JobStatus::Succeeded, "{:?}", record.error);
    let published = &record.result.unwrap()["output"]["published"];
    assert_eq!(published["opened"], false);
    assert_eq!(published["pull_request"], 1);

    let second: Vec<String> = calls(&github.requests())[first.len()..].to_vec();
    assert_eq!(
        second,
        [
            "GET /repos/octo/research 200".to_string(),
            format!("GET /repos/octo/research/git/ref/heads/{enc_branch} 200"),
            format!("GET /repos/octo/research/contents/fleet-reports/{batch_id}.md 200"),
            format!("PUT /repos/octo/research/contents/fleet-reports/{batch_id}.md 200"),
            format!("GET /repos/octo/research/contents/fleet-reports/{batch_id}.json 200"),
            format!("PUT /repos/octo/research/contents/fleet-reports/{batch_id}.json 200"),
            "GET /repos/octo/research/pulls 200".to_string(),
            "PATCH /repos/octo/research/pulls/1 200".to_string(),
        ]
    );
    let repo = github.repo("octo/research");
    assert_eq!(repo.pulls.len(), 1, "no second pull request");
    assert_eq!(
        repo.refs.keys().filter(|b| b.starts_with("fleet/")).count(),
        1,
        "no second branch"
    );
    let md = String::from_utf8(repo.files[&(branch.clone(), md_path)].1.clone()).unwrap();
    assert!(md.contains("3 of 3 jobs succeeded"), "{md}");
    let put = github
        .requests()
        .into_iter()
        .rfind(|r| r.method == "PUT")
        .unwrap();
    assert!(
        put.body["sha"].is_string(),
        "an update names the blob it replaces"
    );
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(put.body["content"].as_str().unwrap())
            .map(|b| !b.is_empty())
            .ok(),
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_without_github_credentials_dead_letters_with_the_reason() {
    let mut fleet = Fleet::start("cat", "").await;
    // A token variable nobody sets, whatever this machine's environment holds.
    fleet.start_worker_with_env(
        "w1",
        &[(
            "FLEET_GITHUB__TOKEN_ENV",
            "FLEET_TEST_NO_SUCH_TOKEN".to_string(),
        )],
    );
    let lifecycle = fleet_tests::harness::queue(&fleet.settings, QueueKind::Lifecycle).await;
    let (id, _) = lifecycle
        .enqueue(JobSpec::lifecycle(LifecycleJob::Publish {
            repo: "octo/research".into(),
            batch_id: "b1".into(),
            job_ids: vec![],
        }))
        .await
        .unwrap();
    let record = lifecycle
        .wait_for_final(&id.to_string(), Some(Duration::from_secs(60)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.status, JobStatus::Dead);
    assert_eq!(record.attempts, 1);
    let message = record.error.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("FLEET_TEST_NO_SUCH_TOKEN"), "{message}");
}
