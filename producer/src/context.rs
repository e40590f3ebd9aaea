//! What every command starts from: the settings (with the global flags applied), the
//! output mode, and the two queues over one Redis connection, opened on first use so
//! that bad input is refused before Redis is even asked.

use std::path::Path;

use anyhow::Context as _;
use fleet_shared::job::{JobId, QueueKind};
use fleet_shared::queue::{self, QueueConfig, RedisQueue};
use fleet_shared::results::JobRecord;
use fleet_shared::settings::Settings;
use tokio::sync::OnceCell;

use crate::exit::Fail;

pub struct Ctx {
    pub settings: Settings,
    /// Machine output (`--json`).
    pub json: bool,
    queues: OnceCell<Queues>,
}

/// The research and lifecycle queues.
#[derive(Clone)]
pub struct Queues {
    pub research: RedisQueue,
    pub lifecycle: RedisQueue,
}

impl Queues {
    pub fn get(&self, kind: QueueKind) -> &RedisQueue {
        match kind {
            QueueKind::Research => &self.research,
            QueueKind::Lifecycle => &self.lifecycle,
        }
    }

    /// Both queues over one connection to the configured Redis.
    pub async fn open(settings: &Settings) -> anyhow::Result<Queues> {
        let mut conn = queue::connect(&settings.redis).await?;
        if settings.queue.durability != fleet_shared::settings::Durability::None {
            // Said once at start, not as a failure of every submit.
            let research_wait =
                fleet_shared::queue::Keys::new(&settings.redis.key_prefix, QueueKind::Research)
                    .wait;
            fleet_shared::connection::check_server(
                &mut conn,
                settings.queue.durability,
                std::time::Duration::from_millis(settings.queue.durability_timeout_ms),
                &research_wait,
                false,
            )
            .await?;
        }
        let open = |kind| {
            RedisQueue::with_connection(
                conn.clone(),
                &settings.redis,
                QueueConfig::from_settings(settings, kind),
            )
        };
        Ok(Queues {
            research: open(QueueKind::Research),
            lifecycle: open(QueueKind::Lifecycle),
        })
    }

    /// Look a job up: the research queue first, then the lifecycle queue; `None` if
    /// neither has it.
    pub async fn lookup(&self, id: &JobId) -> anyhow::Result<Option<(QueueKind, JobRecord)>> {
        let key = id.to_string();
        for kind in QueueKind::ALL {
            if let Some(r) = self
                .get(kind)
                .job_record(&key)
                .await
                .with_context(|| format!("looking up job {key}"))?
            {
                return Ok(Some((kind, r)));
            }
        }
        Ok(None)
    }

    /// Find a job like [`Queues::lookup`]; an unknown ID is a usage error.
    pub async fn find(&self, id: &JobId) -> anyhow::Result<(QueueKind, JobRecord)> {
        self.lookup(id)
            .await?
            .ok_or_else(|| Fail::usage(unknown_job(id)).into())
    }
}

/// What an unknown job ID gets told.
pub fn unknown_job(id: &JobId) -> String {
    format!(
        "no job with ID {id} (never submitted here, or its record expired after queue.result_ttl_secs)"
    )
}

/// Settings from the standard layers, then `--redis-url`; errors name the key (exit 2).
pub fn load_settings(config: Option<&Path>, redis_url: Option<&str>) -> Result<Settings, Fail> {
    let bad = |e: fleet_shared::settings::SettingsError| Fail::usage(format!("bad settings: {e}"));
    let mut settings = Settings::load(config).map_err(bad)?;
    if let Some(url) = redis_url {
        settings.redis.url = url.to_string();
        settings.validate().map_err(bad)?;
    }
    Ok(settings)
}

impl Ctx {
    pub fn new(settings: Settings, json: bool) -> Ctx {
        Ctx {
            settings,
            json,
            queues: OnceCell::new(),
        }
    }

    /// Both queues, connecting on first use.
    pub async fn queues(&self) -> anyhow::Result<&Queues> {
        self.queues
            .get_or_try_init(|| Queues::open(&self.settings))
            .await
    }

    /// The agent profile to use: the one named, else `default_agent`.
    pub fn agent(&self, named: Option<&str>) -> String {
        named
            .map(str::to_string)
            .unwrap_or_else(|| self.settings.default_agent.clone())
    }
}

/// A job ID from the command line; a malformed one is a usage error (exit 2).
pub fn parse_id(raw: &str) -> Result<JobId, Fail> {
    raw.parse::<JobId>().map_err(|e| Fail::usage(e.message))
}

/// The bytes of FILE, or of stdin for `-`; a missing file is "no such file: X" (exit 2).
pub fn read_input(path: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    if path == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        return Ok(buf);
    }
    match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Fail::usage(format!("no such file: {path}")).into())
        }
        Err(e) => Err(Fail::usage(format!("cannot read {path}: {e}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{USAGE, code_of};

    #[test]
    fn malformed_and_unknown_ids_read_differently() {
        let err = parse_id("not-a-uuid").unwrap_err();
        assert_eq!(err.code, USAGE);
        assert!(err.message.starts_with("not a job ID"), "{err}");
        assert!(parse_id("01932c7e-8d1c-7b3a-9f1e-2a4b5c6d7e8f").is_ok());
    }

    #[test]
    fn missing_file_is_named() {
        let err = read_input("/nonexistent/queries.txt").unwrap_err();
        assert_eq!(err.to_string(), "no such file: /nonexistent/queries.txt");
        assert_eq!(code_of(&err), USAGE);
    }

    #[test]
    fn redis_url_flag_is_validated_with_the_key() {
        let err = load_settings(None, Some("http://nope")).unwrap_err();
        assert_eq!(err.code, USAGE);
        assert!(err.message.contains("redis.url"), "{err}");
        let s = load_settings(None, Some("redis://127.0.0.1:7777")).unwrap();
        assert_eq!(s.redis.url, "redis://127.0.0.1:7777");
    }
}
