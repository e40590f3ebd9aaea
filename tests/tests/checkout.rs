//! Safe repo checkout (issue 11, item 3): a private git repo served over HTTP by
//! `git http-backend` behind a server that demands the token (`git_http.rs`), cloned
//! into a sandbox through a real worker. The token reaches git only through its
//! environment: it is in no process's argv during the clone, in no file, log or
//! Redis key, and not in the result; the checkout records the commit. A refresh
//! moves the checkout in place; one that fails leaves the old commit serving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use fleet_shared::error::ErrorClass;
use fleet_shared::job::JobSpec;
use fleet_shared::results::JobStatus;
use fleet_shared::runtime::command::CommandRuntime;
use fleet_shared::runtime::{AgentRuntime, RunOptions};
use fleet_shared::sandbox::local::{LocalConfig, LocalProvider};
use fleet_shared::sandbox::{SandboxProvider, SandboxSpec};
use fleet_shared::secret::Secret;
use fleet_shared::settings::{AgentProfile, QueryVia, RuntimeKind};
use fleet_tests::fixture::Fleet;
use fleet_tests::git_http::GitHttpServer;

const TOKEN: &str = "ghp_CheckoutTestToken_7f3a9c21d4e8";

/// The token and its Basic-auth form, the two shapes it could leak in.
fn leaks() -> [String; 2] {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"));
    [TOKEN.to_string(), basic]
}

fn assert_clean(what: &str, text: &str) {
    for leak in leaks() {
        assert!(!text.contains(&leak), "the token leaked into {what}");
    }
}

/// Every process's command line, sampled until `stop`.
fn sample_process_list(stop: Arc<AtomicBool>, seen: Arc<Mutex<BTreeSet<String>>>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Ok(raw) = std::fs::read(entry.path().join("cmdline"))
                    && !raw.is_empty()
                {
                    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                    seen.lock().unwrap().insert(line);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Every file under `dir`, as (path, bytes).
fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file()
                && let Ok(bytes) = std::fs::read(&path)
            {
                out.push((path, bytes));
            }
        }
    }
    out
}

/// Every value of every key in Redis, as text.
async fn redis_dump(url: &str) -> String {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut dump = String::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut c)
            .await
            .unwrap();
        let values: Vec<String> = match kind.as_str() {
            "string" => vec![
                redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
                    .unwrap(),
            ],
            "hash" => redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap(),
            "list" => redis::cmd("LRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(&key)
                .query_async(&mut c)
                .await
                .unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query_async(&mut c)
                .await
                .unwrap(),
            _ => vec![],
        };
        dump.push_str(&format!("{key} {kind} {}\n", values.join(" ")));
    }
    dump
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_repo_is_cloned_with_the_token_only_in_gits_environment() {
    let git = GitHttpServer::start(TOKEN).await;
    let v1 = git.create_repo("octo/agent", &[("VERSION", "v1\n")]);
    // A slow server keeps git's processes alive long enough to be sampled.
    git.set_delay(Duration::from_millis(300));
    let extra = format!(
        r#"
[agents.private]
runtime = "command"
repo = "{url}"
git_token_env = "FLEET_TEST_GIT_TOKEN"
command = ["cat", "VERSION"]
"#,
        url = git.url("octo/agent")
    );
    let mut fleet = Fleet::start("cat", &extra).await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let sampler = {
        let (stop, seen) = (stop.clone(), seen.clone());
        std::thread::spawn(move || sample_process_list(stop, seen))
    };
    fleet.start_worker_with_env("w1", &[("FLEET_TEST_GIT_TOKEN", TOKEN.to_string())]);
    let id = fleet
        .submit(JobSpec::research("which version serves?", "private"))
        .await
        .to_string();
    let record = fleet
        .wait_status(&id, JobStatus::Succeeded, Duration::from_secs(90))
        .await;
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();

    let result = record.result.clone().expect("a result");
    assert_eq!(result["output"]["answer"], "v1", "{result}");

    // The credential path was really taken: git asked without credentials first
    // (401), then sent the token the helper gave it.
    let requests = git.requests();
    assert!(
        requests.iter().any(|r| !r.had_credentials),
        "git never met the 401: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.authorized && r.path.ends_with("git-upload-pack")),
        "no authorized fetch: {requests:?}"
    );

    // The commit is recorded next to the checkout.
    let sandboxes = fleet.path("sandboxes");
    let records: Vec<serde_json::Value> = all_files(&sandboxes)
        .into_iter()
        .filter(|(p, _)| p.ends_with(".fleet/checkout.json"))
        .map(|(_, bytes)| serde_json::from_slice(&bytes).unwrap())
        .collect();
    assert_eq!(records.len(), 1, "one agent, one checkout record");
    assert_eq!(records[0]["commit"], v1.as_str());
    assert_eq!(records[0]["url"], git.url("octo/agent").as_str());

    // argv of every process seen during the clone.
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|c| c.contains("git") && (c.contains(" fetch ") || c.contains("remote-http"))),
        "the sampler never saw git fetching, so it proves nothing: {seen:?}"
    );
    for cmdline in &seen {
        assert_clean(&format!("the command line {cmdline:?}"), cmdline);
    }
    // Files: the sandbox (checkout, .git/config, records), config and logs.
    for (path, bytes) in all_files(fleet.dir.path()) {
        assert_clean(
            &format!("the file {}", path.display()),
            &String::from_utf8_lossy(&bytes),
        );
    }
    let git_config = all_files(&sandboxes)
        .into_iter()
        .find(|(p, _)| p.ends_with("agent/.git/config"))
        .expect("the checkout's .git/config");
    let git_config = String::from_utf8_lossy(&git_config.1).to_string();
    assert!(
        git_config.contains(&git.url("octo/agent")),
        "the remote is the plain URL: {git_config}"
    );
    assert_clean("the worker's log", &fleet.logs());
    assert_clean("Redis", &redis_dump(&fleet.redis.url()).await);
    assert_clean(
        "the job record",
        &serde_json::to_string(&fleet.record(&id).await).unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_without_the_token_fails_permanently_and_says_why() {
    let git = GitHttpServer::start(TOKEN).await;
    git.create_repo("octo/agent", &[("VERSION", "v1\n")]);
    let extra = format!(
        r#"
[agents.private]
runtime = "command"
repo = "{url}"
git_token_env = "FLEET_TEST_GIT_TOKEN"
command = ["cat", "VERSION"]
"#,
        url = git.url("octo/agent")
    );
    let mut fleet = Fleet::start("cat", &extra).await;
    // The worker has a wrong token.
    fleet.start_worker_with_env(
        "w1",
        &[("FLEET_TEST_GIT_TOKEN", "ghp_wrong_token_123".into())],
    );
    let id = fleet
        .submit(JobSpec::research("which version?", "private"))
        .await
        .to_string();
    let record = fleet
        .wait_status(&id, JobStatus::Dead, Duration::from_secs(60))
        .await;
    assert_eq!(record.attempts, 1, "a refused token is not retried");
    let error = record.error.unwrap();
    assert_eq!(error["class"], "permanent", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("git fetch"), "{message}");
    assert!(!message.contains("ghp_wrong_token_123"), "{message}");
}

struct Sandbox {
    _root: tempfile::TempDir,
    provider: LocalProvider,
    id: String,
}

async fn sandbox() -> Sandbox {
    let root = tempfile::tempdir().unwrap();
    let provider = LocalProvider::new(LocalConfig {
        root: root.path().to_path_buf(),
        env_allowlist: vec!["PATH".into()],
        max_output_bytes: 1024 * 1024,
        extra_path: vec![],
    });
    let id = provider.create(&SandboxSpec::default()).await.unwrap().id;
    Sandbox {
        _root: root,
        provider,
        id,
    }
}

fn runtime(url: &str, git_ref: &str, setup: Vec<Vec<String>>) -> CommandRuntime {
    let profile = AgentProfile {
        runtime: RuntimeKind::Command,
        repo: url.to_string(),
        git_ref: git_ref.to_string(),
        command: vec!["cat".into(), "VERSION".into()],
        query_via: QueryVia::Stdin,
        setup,
        ..Default::default()
    };
    CommandRuntime::with_git_token(
        profile,
        BTreeMap::new(),
        PathBuf::from("/"),
        Some(Secret::new(TOKEN)),
    )
}

async fn answer(rt: &CommandRuntime, sb: &Sandbox) -> String {
    rt.run(&sb.provider, &sb.id, "version?", RunOptions::default())
        .await
        .unwrap()
        .answer
}

#[tokio::test]
async fn a_refresh_moves_the_checkout_in_place_and_a_failed_one_keeps_the_old_commit() {
    let git = GitHttpServer::start(TOKEN).await;
    let v1 = git.create_repo("octo/agent", &[("VERSION", "v1\n")]);
    let rt = runtime(&git.url("octo/agent"), "", vec![]);
    let sb = sandbox().await;
    rt.setup(&sb.provider, &sb.id).await.unwrap();
    assert_eq!(answer(&rt, &sb).await, "v1");

    let v2 = git.commit("octo/agent", &[("VERSION", "v2\n")], "second");
    let record = rt.refresh(&sb.provider, &sb.id, Some(&v2)).await.unwrap();
    assert_eq!(record.commit, v2);
    assert_eq!(answer(&rt, &sb).await, "v2");

    // A commit the server does not have: the fetch fails and nothing changes.
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let err = rt
        .refresh(&sb.provider, &sb.id, Some(missing))
        .await
        .unwrap_err();
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert_eq!(answer(&rt, &sb).await, "v2", "the old commit keeps serving");
    let recorded = fleet_shared::runtime::checkout::read_record(&sb.provider, &sb.id)
        .await
        .unwrap();
    assert_eq!(recorded.commit, v2);

    // Going back to a pinned older commit works too (fetch by commit ID).
    let record = rt.refresh(&sb.provider, &sb.id, Some(&v1)).await.unwrap();
    assert_eq!(record.commit, v1);
    assert_eq!(answer(&rt, &sb).await, "v1");
}

#[tokio::test]
async fn a_refresh_whose_setup_fails_puts_the_previous_commit_back() {
    let git = GitHttpServer::start(TOKEN).await;
    git.create_repo(
        "octo/agent",
        &[("VERSION", "v1\n"), ("setup.sh", "exit 0\n")],
    );
    let setup = vec![vec!["sh".to_string(), "setup.sh".to_string()]];
    let rt = runtime(&git.url("octo/agent"), "main", setup);
    let sb = sandbox().await;
    rt.setup(&sb.provider, &sb.id).await.unwrap();
    let broken = git.commit(
        "octo/agent",
        &[
            ("VERSION", "v2\n"),
            ("setup.sh", "echo cannot install >&2; exit 1\n"),
        ],
        "broken setup",
    );
    let err = rt
        .refresh(&sb.provider, &sb.id, Some(&broken))
        .await
        .unwrap_err();
    assert!(err.message.contains("cannot install"), "{}", err.message);
    assert_eq!(answer(&rt, &sb).await, "v1", "the old commit keeps serving");
}
