//! Every Redis connection of the fleet is opened here, whatever the topology behind
//! it: one node, a Redis Cluster, or a primary watched by Sentinel (`[redis]`
//! settings, README "Scaling out"). The queue, the lease keeper, results, events, the
//! pool, the gateway, the API and the GitHub notifier all hold a [`RedisConn`] and
//! never learn which topology they talk to.
//!
//! - **One node**: a `ConnectionManager` (it reconnects by itself).
//! - **Cluster**: redis-rs' cluster client: it learns the slot map from the seed nodes
//!   and follows MOVED and ASK, and retries TRYAGAIN and CLUSTERDOWN, by itself. Every
//!   queue keeps its keys under one `{hash tag}`, so each script touches one slot.
//! - **Sentinel** ([`sentinel`]): a `ConnectionManager` to the primary the sentinels
//!   name, replaced when a write is refused (READONLY, MASTERDOWN) or the link breaks
//!   and the sentinels name another primary.
//!
//! Pub/sub ([`pubsub`]) follows the same topology: on a Cluster any node hears every
//! `PUBLISH`; on Sentinel the subscriber connects to the current primary.
//!
//! TLS (`rediss://`) uses rustls with the CA and client certificate of the settings;
//! ACL credentials come from the URL or from `username`/`password_env`.

pub mod durability;
pub mod sentinel;

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::settings::{RedisSettings, SettingsError};

pub use durability::{ServerCheckError, check_server};
pub use sentinel::SentinelConn;

/// Where Redis is, as the settings describe it.
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    Single {
        url: String,
    },
    Cluster {
        nodes: Vec<String>,
    },
    Sentinel {
        sentinels: Vec<String>,
        master: String,
    },
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redact = |u: &[String]| u.iter().map(|u| redacted_url(u)).collect::<Vec<_>>();
        match self {
            Topology::Single { url } => write!(f, "Single({})", redacted_url(url)),
            Topology::Cluster { nodes } => write!(f, "Cluster({:?})", redact(nodes)),
            Topology::Sentinel { sentinels, master } => {
                write!(f, "Sentinel({:?}, master {master:?})", redact(sentinels))
            }
        }
    }
}

impl Topology {
    /// The topology the settings select, or what is wrong with them.
    pub fn from_settings(redis: &RedisSettings) -> Result<Topology, SettingsError> {
        let err = |k: &str, m: String| Err(SettingsError::new(k, m));
        if !redis.cluster_urls.is_empty() && !redis.sentinel_urls.is_empty() {
            return err(
                "redis.cluster_urls",
                "and redis.sentinel_urls are both set; choose one topology".into(),
            );
        }
        for (key, urls) in [
            ("redis.cluster_urls", &redis.cluster_urls),
            ("redis.sentinel_urls", &redis.sentinel_urls),
        ] {
            for url in urls.iter() {
                if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                    return err(
                        key,
                        format!(
                            "{} must start with redis:// or rediss://",
                            redacted_url(url)
                        ),
                    );
                }
            }
        }
        if !redis.cluster_urls.is_empty() {
            return Ok(Topology::Cluster {
                nodes: redis.cluster_urls.clone(),
            });
        }
        if !redis.sentinel_urls.is_empty() {
            if redis.sentinel_master.is_empty() {
                return err(
                    "redis.sentinel_master",
                    "must name the primary when redis.sentinel_urls is set".into(),
                );
            }
            return Ok(Topology::Sentinel {
                sentinels: redis.sentinel_urls.clone(),
                master: redis.sentinel_master.clone(),
            });
        }
        let url = redis.url.as_str();
        for (scheme, tls) in [("redis+cluster://", false), ("rediss+cluster://", true)] {
            if let Some(rest) = url.strip_prefix(scheme) {
                let (nodes, _) = split_hosts(rest, tls);
                if nodes.is_empty() {
                    return err("redis.url", "names no cluster node".into());
                }
                return Ok(Topology::Cluster { nodes });
            }
        }
        for (scheme, tls) in [("redis+sentinel://", false), ("rediss+sentinel://", true)] {
            if let Some(rest) = url.strip_prefix(scheme) {
                let (sentinels, path) = split_hosts(rest, tls);
                let master = path.trim_matches('/').to_string();
                if sentinels.is_empty() || master.is_empty() || master.contains('/') {
                    return err(
                        "redis.url",
                        "a sentinel URL is redis+sentinel://host:port,host:port/<master-name>"
                            .into(),
                    );
                }
                return Ok(Topology::Sentinel { sentinels, master });
            }
        }
        if !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("unix://"))
        {
            return err(
                "redis.url",
                "must start with redis://, rediss://, unix://, redis+cluster:// or redis+sentinel:// (rediss+… for TLS)"
                    .into(),
            );
        }
        Ok(Topology::Single {
            url: url.to_string(),
        })
    }
}

/// `[user:pass@]h:p,h:p[/path]` → one `redis://[user:pass@]h:p` URL per host, and the
/// path. The credentials of a cluster URL are every node's; those of a sentinel URL
/// are the primary's (see [`sentinel`]), so they are split off by the caller.
fn split_hosts(rest: &str, tls: bool) -> (Vec<String>, String) {
    let scheme = if tls { "rediss" } else { "redis" };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, String::new()),
    };
    let (userinfo, hosts) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    let nodes = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(|h| match userinfo {
            Some(u) => format!("{scheme}://{u}@{h}"),
            None => format!("{scheme}://{h}"),
        })
        .collect();
    (nodes, path)
}

/// A Redis URL without its password, for messages. A URL that names several hosts
/// (`redis+cluster://user:pass@a,b`) loses its credentials the same way.
pub fn redacted_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://[redacted]@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// How long commands and connection attempts may take.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub response: Duration,
    pub connect: Duration,
}

impl Timeouts {
    pub fn from_settings(redis: &RedisSettings) -> Timeouts {
        Timeouts {
            response: Duration::from_millis(redis.response_timeout_ms),
            connect: Duration::from_millis(redis.connect_timeout_ms),
        }
    }
}

/// The TLS material of the settings, read from its files.
fn tls_certificates(redis: &RedisSettings) -> redis::RedisResult<Option<redis::TlsCertificates>> {
    let read = |what: &str, path: &str| {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "cannot read a TLS file",
                format!("redis.{what} {path}: {e}"),
            ))
        })
    };
    if redis.tls_ca_file.is_empty() && redis.tls_cert_file.is_empty() {
        return Ok(None);
    }
    let root_cert = if redis.tls_ca_file.is_empty() {
        None
    } else {
        Some(read("tls_ca_file", &redis.tls_ca_file)?)
    };
    let client_tls = if redis.tls_cert_file.is_empty() {
        None
    } else {
        Some(redis::ClientTlsConfig {
            client_cert: read("tls_cert_file", &redis.tls_cert_file)?,
            client_key: read("tls_key_file", &redis.tls_key_file)?,
        })
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// `url`'s connection info with the settings' credentials laid over it.
pub(crate) fn connection_info(
    url: &str,
    redis: &RedisSettings,
) -> redis::RedisResult<ConnectionInfo> {
    let info = url.into_connection_info()?;
    let mut node = info.redis_settings().clone();
    if !redis.username.is_empty() {
        node = node.set_username(&redis.username);
    }
    if let Some(password) = &redis.password {
        node = node.set_password(password.expose());
    }
    Ok(info.set_redis_settings(node))
}

/// A client for one node at `url` (TLS material and credentials applied).
pub(crate) fn client_for(url: &str, redis: &RedisSettings) -> redis::RedisResult<redis::Client> {
    let info = connection_info(url, redis)?;
    match tls_certificates(redis)? {
        Some(certs) if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) => {
            redis::Client::build_with_tls(info, certs)
        }
        _ => redis::Client::open(info),
    }
}

async fn manager(
    client: redis::Client,
    timeouts: Timeouts,
) -> redis::RedisResult<ConnectionManager> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeouts.response))
        .set_connection_timeout(Some(timeouts.connect))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(1));
    ConnectionManager::new_with_config(client, config).await
}

/// A self-healing connection to Redis in any topology. Cheap to clone: clones share
/// the connection (commands are multiplexed on it).
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

/// The settings' topology, as a Redis client error when they are bad.
fn topology_of(redis: &RedisSettings) -> redis::RedisResult<Topology> {
    Topology::from_settings(redis).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "bad Redis settings",
            e.to_string(),
        ))
    })
}

/// Open a connection with the settings' timeouts.
pub async fn connect(redis: &RedisSettings) -> redis::RedisResult<RedisConn> {
    connect_with(redis, Timeouts::from_settings(redis)).await
}

/// Open a connection whose commands may take up to `timeouts.response` (a blocking
/// connection for `BZPOPMIN` needs longer than the usual).
pub async fn connect_with(
    redis: &RedisSettings,
    timeouts: Timeouts,
) -> redis::RedisResult<RedisConn> {
    let topology = topology_of(redis)?;
    match topology {
        Topology::Single { url } => Ok(RedisConn::Single(
            manager(client_for(&url, redis)?, timeouts).await?,
        )),
        Topology::Cluster { nodes } => {
            let infos = nodes
                .iter()
                .map(|n| connection_info(n, redis))
                .collect::<redis::RedisResult<Vec<_>>>()?;
            let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
                .connection_timeout(timeouts.connect)
                .response_timeout(timeouts.response)
                .retries(8)
                .min_retry_wait(50)
                .max_retry_wait(2000);
            if !redis.username.is_empty() {
                builder = builder.username(&redis.username);
            }
            if let Some(password) = &redis.password {
                builder = builder.password(password.expose());
            }
            if let Some(certs) = tls_certificates(redis)? {
                builder = builder.certs(certs);
            }
            let client = builder.build()?;
            Ok(RedisConn::Cluster(client.get_async_connection().await?))
        }
        Topology::Sentinel { sentinels, master } => Ok(RedisConn::Sentinel(
            SentinelConn::connect(redis, &sentinels, &master, timeouts).await?,
        )),
    }
}

/// A pub/sub connection: on one node, to it; on a Cluster, to the first seed node
/// that answers (classic `PUBLISH` reaches every node's subscribers); on Sentinel,
/// to the current primary. Subscribers reconnect through this after any error.
pub async fn pubsub(redis: &RedisSettings) -> redis::RedisResult<redis::aio::PubSub> {
    let topology = topology_of(redis)?;
    match topology {
        Topology::Single { url } => client_for(&url, redis)?.get_async_pubsub().await,
        Topology::Cluster { nodes } => {
            let mut last = None;
            for node in &nodes {
                match client_for(node, redis)?.get_async_pubsub().await {
                    Ok(p) => return Ok(p),
                    Err(e) => last = Some(e),
                }
            }
            Err(last.expect("a cluster has at least one seed node"))
        }
        Topology::Sentinel { sentinels, master } => {
            let url = sentinel::resolve_primary(redis, &sentinels, &master).await?;
            client_for(&url, redis)?.get_async_pubsub().await
        }
    }
}

impl RedisConn {
    /// Send `cmd` to the primary that holds `key`'s slot (on one node or Sentinel,
    /// just send it): for commands about one queue's writes (`WAIT`, `WAITAOF`) and
    /// server checks, which the cluster client would otherwise fan out or send anywhere.
    pub async fn query_for_key(&mut self, cmd: &Cmd, key: &str) -> redis::RedisResult<Value> {
        match self {
            RedisConn::Cluster(c) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(
                    Route::with_key(key, SlotAddr::Master),
                ));
                c.route_command(cmd.clone(), route).await
            }
            other => other.req_packed_command(cmd).await,
        }
    }

    /// Send `cmd` to every primary (to every node, on one node or Sentinel: the one);
    /// one reply each.
    pub async fn query_all_primaries(&mut self, cmd: &Cmd) -> redis::RedisResult<Vec<Value>> {
        match self {
            RedisConn::Cluster(c) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                let route = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = c.route_command(cmd.clone(), route).await?;
                // Without a response policy the replies come keyed by node address.
                Ok(match reply {
                    Value::Map(pairs) => pairs.into_iter().map(|(_, v)| v).collect(),
                    Value::Array(items) => items,
                    other => vec![other],
                })
            }
            other => Ok(vec![other.req_packed_command(cmd).await?]),
        }
    }

    /// Which topology this connection talks to, for logs.
    pub fn topology_name(&self) -> &'static str {
        match self {
            RedisConn::Single(_) => "single",
            RedisConn::Cluster(_) => "cluster",
            RedisConn::Sentinel(_) => "sentinel",
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(url: &str) -> RedisSettings {
        crate::settings::Settings::from_layers(
            None,
            &[("FLEET_REDIS__URL".to_string(), url.to_string())],
        )
        .unwrap()
        .redis
    }

    #[test]
    fn urls_select_the_topology() {
        assert_eq!(
            Topology::from_settings(&redis("redis://a:1")).unwrap(),
            Topology::Single {
                url: "redis://a:1".into()
            }
        );
        assert_eq!(
            Topology::from_settings(&redis("rediss+cluster://u:p@a:1,b:2")).unwrap(),
            Topology::Cluster {
                nodes: vec!["rediss://u:p@a:1".into(), "rediss://u:p@b:2".into()]
            }
        );
        assert_eq!(
            Topology::from_settings(&redis("redis+sentinel://a:1,b:2/mymaster")).unwrap(),
            Topology::Sentinel {
                sentinels: vec!["redis://a:1".into(), "redis://b:2".into()],
                master: "mymaster".into()
            }
        );
    }

    #[test]
    fn a_sentinel_url_without_a_master_name_is_refused_naming_the_setting() {
        let e = crate::settings::Settings::from_layers(
            None,
            &[("FLEET_REDIS__URL".into(), "redis+sentinel://a:1,b:2".into())],
        )
        .unwrap_err();
        assert!(e.to_string().contains("redis.url"), "{e}");
        let e = crate::settings::Settings::from_layers(
            None,
            &[(
                "FLEET_REDIS__SENTINEL_URLS".into(),
                "[\"redis://a:1\"]".into(),
            )],
        )
        .unwrap_err();
        assert!(e.to_string().contains("redis.sentinel_master"), "{e}");
    }

    #[test]
    fn no_password_is_printed() {
        let mut s = redis("redis+cluster://fleet:hunter2@a:1,b:2");
        s.cluster_urls = vec!["redis://x:hunter3@c:3".into()];
        s.password = Some(crate::secret::Secret::new("hunter4"));
        let printed = format!("{s:?} {:?}", Topology::from_settings(&s).unwrap());
        for secret in ["hunter2", "hunter3", "hunter4"] {
            assert!(!printed.contains(secret), "{printed}");
        }
    }
}
