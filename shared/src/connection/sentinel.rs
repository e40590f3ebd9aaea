//! A connection that follows the primary a set of Sentinels names.
//!
//! The sentinels are asked `SENTINEL get-master-addr-by-name <master>` in turn; the
//! node they name must say `ROLE` = master before it is used (a sentinel may lag a
//! failover). Commands go to a `ConnectionManager` on that primary. When a command
//! fails in a way that says the primary moved — the link broke, or the node refuses
//! writes (READONLY: demoted to replica; MASTERDOWN) — the sentinels are asked again
//! and, if they name another node, the connection is replaced for every clone. A
//! refused command (READONLY, MASTERDOWN) was not executed, so it is sent again to the
//! new primary; any other error goes back to the caller, whose retries (with the same
//! idempotent IDs and fencing tokens) decide.
//!
//! Credentials: a sentinel URL's own `user:pass@` are that sentinel's; the primary's
//! come from the `redis+sentinel://user:pass@…` URL or `username`/`password_env`.

use std::sync::{Arc, Mutex};

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisError, RedisFuture, RedisResult, Value};

use super::{Timeouts, client_for, manager};
use crate::settings::RedisSettings;

/// A primary's connection and how many times it has been replaced.
struct Current {
    generation: u64,
    url: String,
    conn: ConnectionManager,
}

struct Shared {
    /// The settings, with the primary's credentials laid over them.
    redis: RedisSettings,
    sentinels: Vec<String>,
    master: String,
    timeouts: Timeouts,
    current: Mutex<Current>,
    /// One re-resolution at a time; the others wait for its outcome.
    resolving: tokio::sync::Mutex<()>,
}

#[derive(Clone)]
pub struct SentinelConn {
    shared: Arc<Shared>,
}

/// Ask the sentinels which node is the primary of `master`; its URL (with the
/// primary's scheme: `rediss` when the sentinels are reached over TLS).
pub async fn resolve_primary(
    redis: &RedisSettings,
    sentinels: &[String],
    master: &str,
) -> RedisResult<String> {
    let redis = primary_settings(redis);
    let mut last: Option<RedisError> = None;
    for sentinel in sentinels {
        match ask_sentinel(&redis, sentinel, master).await {
            Ok(url) => return Ok(url),
            Err(e) => {
                tracing::debug!(sentinel = %super::redacted_url(sentinel), error = %e, "sentinel did not name a usable primary");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "no sentinel configured",
        ))
    }))
}

/// The credentials of a `redis+sentinel://user:pass@…` URL are the primary's: they
/// are moved into the settings so that the sentinel URLs carry none.
fn primary_settings(redis: &RedisSettings) -> RedisSettings {
    let mut out = redis.clone();
    for scheme in ["redis+sentinel://", "rediss+sentinel://"] {
        let Some(rest) = redis.url.strip_prefix(scheme) else {
            continue;
        };
        let authority = rest.split('/').next().unwrap_or("");
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            let (user, pass) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            if out.username.is_empty() && !user.is_empty() {
                out.username = decode(user);
            }
            if out.password.is_none()
                && let Some(p) = pass
            {
                out.password = Some(crate::secret::Secret::new(decode(p)));
            }
        }
    }
    out
}

/// The sentinel URL without the credentials the primary's URL form puts in it.
fn sentinel_url(redis: &RedisSettings, sentinel: &str) -> String {
    let from_url_form =
        redis.url.starts_with("redis+sentinel://") || redis.url.starts_with("rediss+sentinel://");
    match (from_url_form, sentinel.find("://"), sentinel.rfind('@')) {
        (true, Some(s), Some(at)) if at > s => {
            format!("{}{}", &sentinel[..s + 3], &sentinel[at + 1..])
        }
        _ => sentinel.to_string(),
    }
}

async fn ask_sentinel(redis: &RedisSettings, sentinel: &str, master: &str) -> RedisResult<String> {
    let tls = sentinel.starts_with("rediss://");
    // The sentinel is reached with the TLS material but not the primary's credentials.
    let mut for_sentinel = redis.clone();
    for_sentinel.username.clear();
    for_sentinel.password = None;
    let client = client_for(&sentinel_url(redis, sentinel), &for_sentinel)?;
    let ask = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async(&mut conn)
            .await?;
        addr.ok_or_else(|| {
            RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "the sentinel does not know this master name",
                master.to_string(),
            ))
        })
    };
    let (host, port) = tokio::time::timeout(redis_timeout(redis), ask)
        .await
        .map_err(|_| RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut)))??;
    let url = format!("{}://{host}:{port}", if tls { "rediss" } else { "redis" });
    // A sentinel that has not seen the failover yet may name the old primary, now a
    // replica: only a node that says it is a master is taken.
    let check = async {
        let mut conn = client_for(&url, redis)?
            .get_multiplexed_async_connection()
            .await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
        let is_master = matches!(role.first(), Some(Value::BulkString(b)) if b == b"master");
        RedisResult::Ok(is_master)
    };
    match tokio::time::timeout(redis_timeout(redis), check).await {
        Ok(Ok(true)) => Ok(url),
        Ok(Ok(false)) => Err(RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown),
            "the node the sentinel names is not a master (yet)",
        ))),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(RedisError::from(std::io::Error::from(
            std::io::ErrorKind::TimedOut,
        ))),
    }
}

fn redis_timeout(redis: &RedisSettings) -> std::time::Duration {
    std::time::Duration::from_millis(redis.connect_timeout_ms.max(500))
}

/// Whether `err` says the primary may have moved.
fn primary_may_have_moved(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || refused_by_non_primary(err)
}

/// Refused before it ran: safe to send again to the new primary.
fn refused_by_non_primary(err: &RedisError) -> bool {
    matches!(
        err.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
            | redis::ErrorKind::Server(redis::ServerErrorKind::MasterDown)
    )
}

impl SentinelConn {
    pub async fn connect(
        redis: &RedisSettings,
        sentinels: &[String],
        master: &str,
        timeouts: Timeouts,
    ) -> RedisResult<SentinelConn> {
        let primary = primary_settings(redis);
        let url = resolve_primary(redis, sentinels, master).await?;
        let conn = manager(client_for(&url, &primary)?, timeouts).await?;
        tracing::info!(master, primary = %url, "connected to the primary the sentinels name");
        Ok(SentinelConn {
            shared: Arc::new(Shared {
                redis: primary,
                sentinels: sentinels.to_vec(),
                master: master.to_string(),
                timeouts,
                current: Mutex::new(Current {
                    generation: 0,
                    url,
                    conn,
                }),
                resolving: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn current(&self) -> (u64, ConnectionManager) {
        let c = self.shared.current.lock().unwrap();
        (c.generation, c.conn.clone())
    }

    /// The URL of the primary in use (for tests and logs).
    pub fn primary_url(&self) -> String {
        self.shared.current.lock().unwrap().url.clone()
    }

    /// Ask the sentinels again, unless another task already replaced connection
    /// `seen` meanwhile. Failures are logged: the caller's error stands and its
    /// retry comes back here.
    async fn follow_primary(&self, seen: u64) {
        let _one = self.shared.resolving.lock().await;
        if self.shared.current.lock().unwrap().generation != seen {
            return;
        }
        let s = &self.shared;
        let url = match resolve_primary(&s.redis, &s.sentinels, &s.master).await {
            Ok(url) => url,
            Err(e) => {
                tracing::warn!(master = %s.master, error = %e, "the sentinels name no reachable primary yet");
                return;
            }
        };
        if s.current.lock().unwrap().url == url {
            return;
        }
        let conn = match client_for(&url, &s.redis) {
            Ok(client) => manager(client, s.timeouts).await,
            Err(e) => Err(e),
        };
        match conn {
            Ok(conn) => {
                let mut c = s.current.lock().unwrap();
                tracing::warn!(master = %s.master, from = %c.url, to = %url, "Redis primary moved; following it");
                c.generation += 1;
                c.url = url;
                c.conn = conn;
            }
            Err(e) => {
                tracing::warn!(master = %s.master, primary = %url, error = %e, "cannot connect to the new primary yet")
            }
        }
    }
}

/// How many times a command refused by a non-primary is sent again after following
/// the primary (each follow asks the sentinels once).
const REFUSED_RESENDS: usize = 3;

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let mut resends = 0;
            loop {
                let (generation, mut conn) = self.current();
                match conn.req_packed_command(cmd).await {
                    Err(e) if primary_may_have_moved(&e) => {
                        self.follow_primary(generation).await;
                        if refused_by_non_primary(&e) && resends < REFUSED_RESENDS {
                            resends += 1;
                            continue;
                        }
                        return Err(e);
                    }
                    other => return other,
                }
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let (generation, mut conn) = self.current();
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            if let Err(e) = &result
                && primary_may_have_moved(e)
            {
                self.follow_primary(generation).await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.current().1.get_db()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentinel_urls_credentials_are_the_primarys_and_not_sent_to_the_sentinels() {
        let mut redis = crate::settings::Settings::from_layers(
            None,
            &[(
                "FLEET_REDIS__URL".to_string(),
                "redis+sentinel://fleet:p%40ss@a:1,b:2/main".to_string(),
            )],
        )
        .unwrap()
        .redis;
        let primary = primary_settings(&redis);
        assert_eq!(primary.username, "fleet");
        assert_eq!(primary.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(
            sentinel_url(&redis, "redis://fleet:p%40ss@a:1"),
            "redis://a:1"
        );
        // Listed sentinels keep their own credentials.
        redis.url = "redis://unused:1".into();
        assert_eq!(sentinel_url(&redis, "redis://s:pw@a:1"), "redis://s:pw@a:1");
    }
}
