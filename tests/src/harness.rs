//! Helpers shared by the integration tests: settings pointed at a test Redis, queues,
//! and waiting on conditions (never sleeping in place of one).

use std::future::Future;
use std::time::{Duration, Instant};

use fleet_shared::job::QueueKind;
use fleet_shared::queue::{QueueConfig, RedisQueue};
use fleet_shared::settings::Settings;

/// Default settings with Redis at `redis_url` and any `FLEET_…`-style overrides,
/// given as (`SECTION__KEY`, value) pairs.
pub fn settings(redis_url: &str, overrides: &[(&str, &str)]) -> Settings {
    let mut env: Vec<(String, String)> = vec![("FLEET_REDIS__URL".into(), redis_url.into())];
    env.extend(
        overrides
            .iter()
            .map(|(k, v)| (format!("FLEET_{k}"), v.to_string())),
    );
    Settings::from_layers(None, &env).expect("test settings are valid")
}

pub async fn queue(settings: &Settings, kind: QueueKind) -> RedisQueue {
    RedisQueue::open(&settings.redis, QueueConfig::from_settings(settings, kind))
        .await
        .expect("open queue")
}

/// Poll `check` until it returns `Some`, or panic after `timeout` naming `what`.
/// For conditions no event announces (e.g. a record in Redis changing).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many of batch `batch`'s jobs have ended (0 while its record cannot be read,
/// as during a failover).
pub async fn batch_finished(q: &fleet_shared::queue::RedisQueue, batch: &str) -> u64 {
    q.batch_record(batch)
        .await
        .ok()
        .flatten()
        .map(|b| b.finished())
        .unwrap_or(0)
}

/// The workspace root (where `agents/`, `config/` live).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Write `<dir>/fleet.toml` with local sandboxes under `<dir>/sandboxes` and `extra`
/// TOML after it; returns its path (for `--config`).
pub fn local_config(dir: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("fleet.toml");
    std::fs::write(
        &config,
        format!(
            "[sandbox.local]\nroot = \"{}\"\n{extra}",
            dir.join("sandboxes").display()
        ),
    )
    .expect("write the test config");
    config
}
