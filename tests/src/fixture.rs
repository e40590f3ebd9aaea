//! A whole fleet for a test: its own redis-server, a temp directory with a config
//! file, an agent repository and a sandbox root, and `fleet-worker` processes.

use std::path::PathBuf;
use std::time::Duration;

use fleet_shared::job::QueueKind;
use fleet_shared::queue::RedisQueue;
use fleet_shared::results::{JobRecord, JobStatus};
use fleet_shared::settings::Settings;

use crate::harness::queue;
use crate::processes::WorkerProcess;
use crate::redis_server::RedisServer;

/// Settings for fault tests: a 3 s lease reclaimed within 0.2 s of expiring, fast
/// retries with attempts to spare, and a short drain. Append to (or `.replace` in)
/// the `extra` TOML of [`Fleet::start`].
pub const FAST_RECOVERY: &str = r#"
[queue]
lease_ttl_secs = 3
reclaim_interval_ms = 200
[queue.research]
max_attempts = 10
backoff_base_ms = 50
backoff_cap_ms = 200
[worker]
concurrency = 4
drain_timeout_secs = 2
"#;

pub struct Fleet {
    pub redis: RedisServer,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub settings: Settings,
    pub queue: RedisQueue,
    pub workers: Vec<WorkerProcess>,
}

impl Fleet {
    /// A fleet whose `test` agent runs `sh -c SCRIPT` with the query on stdin;
    /// `{dir}` in the script is replaced by the fleet's temp directory.
    /// `extra` is TOML appended to the config (e.g. `[queue]` overrides), `{dir}`
    /// replaced there too.
    pub async fn start(script: &str, extra: &str) -> Fleet {
        let redis = RedisServer::start();
        let dir = tempfile::Builder::new()
            .prefix("fleet-test-")
            .tempdir()
            .unwrap();
        let agent_repo = dir.path().join("agent-repo");
        std::fs::create_dir_all(&agent_repo).unwrap();
        std::fs::write(agent_repo.join("README.md"), "test agent\n").unwrap();
        let script = script.replace("{dir}", &dir.path().display().to_string());
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let config = dir.path().join("fleet.toml");
        let text = format!(
            r#"default_agent = "test"
[redis]
url = "{url}"
[sandbox.local]
root = "{root}"
[agents.test]
runtime = "command"
repo = "{repo}"
command = ["sh", "-c", {script:?}]
query_via = "stdin"
{extra}
"#,
            url = redis.url(),
            root = dir.path().join("sandboxes").display(),
            repo = agent_repo.display(),
        );
        std::fs::write(&config, &text).unwrap();
        // A placeholder key, so that configs choosing the e2b provider validate.
        let env = [("E2B_API_KEY".to_string(), "e2b_fixture".to_string())];
        let settings = Settings::from_layers(Some(&text), &env).expect("fixture config is valid");
        let queue = queue(&settings, QueueKind::Research).await;
        Fleet {
            redis,
            dir,
            config,
            settings,
            queue,
            workers: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn start_worker(&mut self, name: &str) -> usize {
        self.start_worker_with_env(name, &[])
    }

    pub fn start_worker_with_env(&mut self, name: &str, env: &[(&str, String)]) -> usize {
        let w = WorkerProcess::start(&self.config, name, env, self.dir.path());
        self.workers.push(w);
        self.workers.len() - 1
    }

    /// The lines of a file in the fleet's directory (none if it does not exist yet),
    /// e.g. what a test agent appends to as it runs.
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.path(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Wait until worker `index`'s log holds any of `needles`.
    pub async fn wait_for_log(
        &self,
        index: usize,
        what: &str,
        timeout: Duration,
        needles: &[&str],
    ) {
        self.eventually(what, timeout, || async {
            let log = self.workers[index].log_text();
            needles.iter().any(|n| log.contains(n)).then_some(())
        })
        .await;
    }

    /// Wait until worker `index` has logged that it started (it fetches from then on).
    pub async fn wait_started(&self, index: usize) {
        let name = self.workers[index].name.clone();
        self.eventually(
            &format!("worker {name} to start"),
            Duration::from_secs(30),
            || async {
                self.workers[index]
                    .log_text()
                    .contains("worker started")
                    .then_some(())
            },
        )
        .await;
    }

    /// Enqueue one job on the research queue; its ID.
    pub async fn submit(&self, spec: fleet_shared::job::JobSpec) -> fleet_shared::job::JobId {
        self.queue.enqueue(spec).await.expect("enqueue").0
    }

    pub async fn record(&self, id: &str) -> JobRecord {
        self.queue
            .job_record(id)
            .await
            .unwrap()
            .expect("job record")
    }

    /// Like [`eventually`], but a timeout also prints the workers' logs.
    pub async fn eventually<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<T>>,
    {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if std::time::Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for: {what}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until the batch has `n` jobs in a final status.
    pub async fn wait_batch_final(&self, batch: &str, n: u64, timeout: Duration) {
        self.eventually(
            &format!("batch {batch} to finish {n} jobs"),
            timeout,
            || async {
                let b = self.queue.batch_record(batch).await.ok()??;
                (b.finished() >= n).then_some(())
            },
        )
        .await;
    }

    pub async fn wait_status(&self, id: &str, status: JobStatus, timeout: Duration) -> JobRecord {
        self.eventually(&format!("job {id} to be {status}"), timeout, || async {
            let r = self.queue.job_record(id).await.ok()??;
            (r.status == status).then_some(r)
        })
        .await
    }

    /// Worker logs, for assertion messages.
    pub fn logs(&self) -> String {
        self.workers
            .iter()
            .map(|w| format!("--- {} ---\n{}", w.name, w.log_text()))
            .collect()
    }
}
