//! Durable acknowledgements (`queue.durability`) and the checks a process makes of
//! its Redis at start.
//!
//! After a write the caller asks Redis to confirm it reached more than the primary's
//! memory: `WAITAOF 1 0 <ms>` (fsynced to the primary's AOF; Redis 7.2+) or
//! `WAIT 1 <ms>` (received by a replica). Both count the writes sent before them on
//! the same connection; on a Cluster they go to the primary of the queue's slot.

use std::time::Duration;

use redis::Value;

use super::RedisConn;
use crate::settings::Durability;

/// What is wrong with the Redis a process was pointed at.
#[derive(Debug, thiserror::Error)]
pub enum ServerCheckError {
    #[error(
        "Redis evicts keys under memory pressure (maxmemory-policy {policy} on {node}); the queue would lose jobs. Set `maxmemory-policy noeviction` on the server (managed Redis: its parameter group / configuration)"
    )]
    Evicting { policy: String, node: String },
    #[error(
        "queue.durability = \"aof\" needs WAITAOF, which Redis {version} lacks (7.2 or later); use \"replica\" or \"none\", or upgrade Redis"
    )]
    AofUnsupported { version: String },
    #[error("queue.durability = \"{mode}\": {detail}")]
    Unconfirmable { mode: &'static str, detail: String },
    #[error("cannot check the Redis server: {0}")]
    Redis(#[from] redis::RedisError),
}

/// A write not confirmed as `queue.durability` asks.
#[derive(Debug, thiserror::Error)]
#[error("write not confirmed durable within {timeout_ms} ms ({mode}: {detail})")]
pub struct Unconfirmed {
    pub mode: &'static str,
    pub timeout_ms: u64,
    pub detail: String,
}

fn mode_name(mode: Durability) -> &'static str {
    match mode {
        Durability::None => "none",
        Durability::Aof => "aof",
        Durability::Replica => "replica",
    }
}

/// Wait until the writes sent so far on `conn` are durable as `mode` asks (for the
/// slot of `key` on a Cluster). `Ok(Err(_))`: Redis answered but did not confirm.
pub async fn confirm(
    conn: &mut RedisConn,
    mode: Durability,
    timeout: Duration,
    key: &str,
) -> redis::RedisResult<Result<(), Unconfirmed>> {
    let ms = timeout.as_millis().max(1) as u64;
    let unconfirmed = |detail: String| {
        Ok(Err(Unconfirmed {
            mode: mode_name(mode),
            timeout_ms: ms,
            detail,
        }))
    };
    match mode {
        Durability::None => Ok(Ok(())),
        Durability::Replica => {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(1).arg(ms);
            // an error reply comes back as a value: made an error here, so that a
            // failover's refusal is seen as one (backoff::is_transient)
            let reply = conn.query_for_key(&cmd, key).await?.extract_error()?;
            let replicas: i64 = redis::from_redis_value(reply)?;
            if replicas >= 1 {
                Ok(Ok(()))
            } else {
                unconfirmed("no replica acknowledged it".into())
            }
        }
        Durability::Aof => {
            let mut cmd = redis::cmd("WAITAOF");
            cmd.arg(1).arg(0).arg(ms);
            let reply = conn.query_for_key(&cmd, key).await?.extract_error()?;
            let counts: Vec<i64> = redis::from_redis_value(reply)?;
            if counts.first().copied().unwrap_or(0) >= 1 {
                Ok(Ok(()))
            } else {
                unconfirmed(
                    "the primary's AOF fsync did not happen in time (is appendonly on?)".into(),
                )
            }
        }
    }
}

/// The server's `redis_version` (from `INFO server`), for `key`'s primary.
pub async fn server_version(conn: &mut RedisConn, key: &str) -> redis::RedisResult<String> {
    let mut cmd = redis::cmd("INFO");
    cmd.arg("server");
    let info: String = redis::from_redis_value(conn.query_for_key(&cmd, key).await?)?;
    Ok(info_field(&info, "redis_version").unwrap_or_default())
}

fn info_field(info: &str, field: &str) -> Option<String> {
    info.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// Whether `version` (`7.0.15`) is at least `major.minor`.
fn at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

/// The checks a process makes before it starts work:
/// - with `check_eviction` (workers), every primary must run `noeviction`: an evicting
///   Redis drops queued jobs and leases silently. `CONFIG GET` is used where allowed,
///   else `INFO memory` (managed services often disable CONFIG).
/// - `durability = "aof"` needs Redis 7.2+ (WAITAOF); "replica" and "aof" are tried
///   once, so a server that cannot confirm (no replica, AOF off) is named at start.
pub async fn check_server(
    conn: &mut RedisConn,
    durability: Durability,
    timeout: Duration,
    key: &str,
    check_eviction: bool,
) -> Result<(), ServerCheckError> {
    if check_eviction {
        for (node, policy) in eviction_policies(conn).await? {
            if policy != "noeviction" {
                return Err(ServerCheckError::Evicting { policy, node });
            }
        }
    }
    if durability == Durability::Aof {
        let version = server_version(conn, key).await?;
        if !at_least(&version, 7, 2) {
            return Err(ServerCheckError::AofUnsupported { version });
        }
    }
    if durability != Durability::None
        && let Err(e) = confirm(conn, durability, timeout, key).await?
    {
        return Err(ServerCheckError::Unconfirmable {
            mode: e.mode,
            detail: format!("a test confirmation failed: {}", e.detail),
        });
    }
    Ok(())
}

/// `maxmemory-policy` of every primary, with a name for each (its index).
async fn eviction_policies(conn: &mut RedisConn) -> redis::RedisResult<Vec<(String, String)>> {
    let mut config = redis::cmd("CONFIG");
    config.arg("GET").arg("maxmemory-policy");
    let mut out = Vec::new();
    match conn.query_all_primaries(&config).await {
        Ok(replies) => {
            for (i, reply) in replies.into_iter().enumerate() {
                let mut strings = Vec::new();
                collect_strings(&reply, &mut strings);
                if let Some(p) = strings.into_iter().find(|s| s != "maxmemory-policy") {
                    out.push((format!("primary {i}"), p));
                }
            }
            if !out.is_empty() {
                return Ok(out);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "CONFIG GET refused; reading INFO memory instead");
        }
    }
    let mut info = redis::cmd("INFO");
    info.arg("memory");
    for (i, reply) in conn
        .query_all_primaries(&info)
        .await?
        .into_iter()
        .enumerate()
    {
        let mut strings = Vec::new();
        collect_strings(&reply, &mut strings);
        for s in strings {
            if let Some(p) = info_field(&s, "maxmemory_policy") {
                out.push((format!("primary {i}"), p));
            }
        }
    }
    Ok(out)
}

fn collect_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::BulkString(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) | Value::VerbatimString { text: s, .. } => out.push(s.clone()),
        Value::Array(items) | Value::Set(items) => {
            items.iter().for_each(|i| collect_strings(i, out))
        }
        Value::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            collect_strings(k, out);
            collect_strings(v, out)
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert!(!at_least("7.0.15", 7, 2));
        assert!(at_least("7.2.0", 7, 2));
        assert!(at_least("8.0.1", 7, 2));
        assert!(!at_least("", 7, 2));
    }

    #[test]
    fn info_fields_are_read_by_name() {
        let info = "# Memory\r\nused_memory:1\r\nmaxmemory_policy:allkeys-lru\r\n";
        assert_eq!(info_field(info, "maxmemory_policy").unwrap(), "allkeys-lru");
        assert_eq!(info_field(info, "maxmemory"), None);
    }
}
