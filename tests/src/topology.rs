//! Redis beyond one node, started for a test and stopped when dropped: a local Redis
//! Cluster (3 primaries, 3 replicas), a Sentinel set (a primary, a replica, 3
//! sentinels) and a TLS-only server with an ACL user and a CA made at test time.
//! Every process runs on a free port of 127.0.0.1 in a temporary directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::redis_server::free_port;

/// One `redis-server` process (a data node or a sentinel) of a topology.
pub struct Node {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl Node {
    /// Start `redis-server` with `args` (after the config file, if any) in `dir`.
    fn spawn(port: u16, dir: PathBuf, args: Vec<String>) -> Node {
        std::fs::create_dir_all(&dir).unwrap();
        let mut node = Node {
            port,
            dir,
            child: None,
            args,
        };
        node.start();
        node
    }

    fn start(&mut self) {
        let binary = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        self.child = Some(child);
        self.wait_log("Ready to accept connections");
    }

    /// Wait until the node's log holds `line`.
    pub fn wait_log(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.log().contains(line) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not log {line:?}; log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A synchronous plain-TCP connection (not for the TLS server).
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    /// `kill -9`, as a crash of its host would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port, directory and arguments (after [`kill9`]).
    pub fn restart(&mut self) {
        self.kill9();
        let log = self.dir.join("redis.log");
        let _ = std::fs::remove_file(&log);
        self.start();
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn base_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--dir",
        &dir.display().to_string(),
        "--logfile",
        &dir.join("redis.log").display().to_string(),
        "--save",
        "",
        "--daemonize",
        "no",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        // Replicas sync at once, not after the default 5 s.
        "--repl-diskless-sync-delay",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// A local Redis Cluster: 3 primaries and 3 replicas.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Three primaries, each with a replica, AOF on (`appendfsync always`).
    pub fn start() -> RedisCluster {
        Self::start_with(1, true)
    }

    /// Three primaries with `replicas` replicas each; `aof = false` keeps nothing on
    /// disk (the benchmarks' setting).
    pub fn start_with(replicas: usize, aof: bool) -> RedisCluster {
        let dir = temp_dir("fleet-cluster-");
        let nodes: Vec<Node> = (0..3 * (1 + replicas))
            .map(|i| {
                let port = free_port();
                let d = dir.path().join(format!("node{i}"));
                std::fs::create_dir_all(&d).unwrap();
                let mut args = base_args(port, &d);
                if !aof {
                    let at = args.iter().position(|a| a == "--appendonly").unwrap();
                    args[at + 1] = "no".into();
                }
                args.extend(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ]
                    .map(String::from),
                );
                Node::spawn(port, d, args)
            })
            .collect();
        let cli = std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into());
        let mut create = Command::new(&cli);
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cli}: {e}"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster.wait_ok();
        cluster
    }

    /// Until every node says `cluster_state:ok` and knows all the others.
    pub fn wait_ok(&self) {
        let known = format!("cluster_known_nodes:{}", self.nodes.len());
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut n.conn())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") && info.contains(&known) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "cluster node {} not ok: {info}",
                    n.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`, asked of a running node).
    pub fn keyslot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.running_node().conn())
            .unwrap()
    }

    fn running_node(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.is_running())
            .expect("a node runs")
    }

    /// The index in [`RedisCluster::nodes`] of the primary serving `slot`, as every
    /// running node's `CLUSTER SLOTS` agrees (None while they disagree or nobody
    /// serves it).
    pub fn slot_owner(&self, slot: u16) -> Option<usize> {
        let mut owner = None;
        for n in self.nodes.iter().filter(|n| n.is_running()) {
            let (_, _, port) = slot_ranges(n.conn())
                .into_iter()
                .find(|(lo, hi, _)| (*lo..=*hi).contains(&slot))?;
            let seen = self.nodes.iter().position(|n| n.port == port)?;
            if *owner.get_or_insert(seen) != seen {
                return None;
            }
        }
        owner
    }

    /// The first and last slot of the contiguous range holding `slot`, as a running
    /// node's `CLUSTER SLOTS` lists it.
    pub fn slot_range(&self, slot: u16) -> (u16, u16) {
        slot_ranges(self.running_node().conn())
            .into_iter()
            .map(|(lo, hi, _)| (lo, hi))
            .find(|(lo, hi)| (*lo..=*hi).contains(&slot))
            .expect("every slot is served")
    }

    /// Until every running node names one primary for `slot` other than node
    /// `old`, and that primary serves it; returns its index.
    pub fn wait_slot_moved_from(&self, slot: u16, old: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(owner) = self.slot_owner(slot)
                && owner != old
            {
                let role: Vec<redis::Value> = redis::cmd("ROLE")
                    .query(&mut self.nodes[owner].conn())
                    .unwrap_or_default();
                if matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master") {
                    return owner;
                }
            }
            assert!(
                Instant::now() < deadline,
                "slot {slot} still on node {old} (port {})",
                self.nodes[old].port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The cluster node ID of node `i` (`CLUSTER MYID`).
    pub fn node_id(&self, i: usize) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.nodes[i].conn())
            .unwrap()
    }

    /// Step by step, as `redis-cli --cluster reshard` moves one slot: mark `slot`
    /// importing on node `to` and migrating on node `from`. Then move keys with
    /// [`RedisCluster::migrate_keys`] and end with [`RedisCluster::finish_migration`].
    pub fn begin_migration(&self, slot: u16, from: usize, to: usize) {
        let set = |node: usize, state: &str, peer: usize| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(state)
                .arg(self.node_id(peer))
                .query(&mut self.nodes[node].conn())
                .unwrap();
        };
        set(to, "IMPORTING", from);
        set(from, "MIGRATING", to);
    }

    /// `MIGRATE` these keys of a migrating slot from node `from` to node `to`.
    pub fn migrate_keys(&self, from: usize, to: usize, keys: &[String]) {
        let _: redis::Value = redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(self.nodes[to].port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(keys)
            .query(&mut self.nodes[from].conn())
            .unwrap();
    }

    /// Move the rest of `slot`'s keys and give the slot to node `to` on every primary.
    pub fn finish_migration(&self, slot: u16, from: usize, to: usize) {
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(100)
                .query(&mut self.nodes[from].conn())
                .unwrap();
            if keys.is_empty() {
                break;
            }
            self.migrate_keys(from, to, &keys);
        }
        let id = self.node_id(to);
        // The new owner first, then the old, then the other primaries (replicas refuse
        // SETSLOT and learn it from gossip).
        let others = (0..self.nodes.len()).filter(|&n| n != to && n != from);
        for node in [to, from].into_iter().chain(others) {
            let set: redis::RedisResult<()> = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg("NODE")
                .arg(&id)
                .query(&mut self.nodes[node].conn());
            if node == to || node == from {
                set.unwrap();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.slot_owner(slot) != Some(to) {
            assert!(Instant::now() < deadline, "slot {slot} not on node {to}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Move `slots` slots from node `from` to node `to` with `redis-cli --cluster
    /// reshard`, and wait for it.
    pub fn reshard(&self, from: usize, to: usize, slots: u16) {
        let out = self
            .start_reshard(from, to, slots, 10)
            .wait_with_output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster reshard failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Start `redis-cli --cluster reshard` moving `slots` slots (redis-cli takes a
    /// source's lowest slots first) from node `from` to node `to`, moving
    /// `pipeline` keys per MIGRATE. Returns the running child: the caller waits for it.
    pub fn start_reshard(&self, from: usize, to: usize, slots: u16, pipeline: u16) -> Child {
        let cli = std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into());
        Command::new(cli)
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{}", self.nodes[from].port))
            .args(["--cluster-from", &self.node_id(from)])
            .args(["--cluster-to", &self.node_id(to)])
            .args(["--cluster-slots", &slots.to_string()])
            .args(["--cluster-pipeline", &pipeline.to_string()])
            .arg("--cluster-yes")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run redis-cli --cluster reshard")
    }

    /// The `redis+cluster://` URL naming three of the nodes.
    pub fn cluster_url(&self) -> String {
        let hosts: Vec<String> = self.nodes[..3]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }
}

/// A node's `CLUSTER SLOTS`: (first slot, last slot, primary's port) per range;
/// empty if the node does not answer.
fn slot_ranges(mut conn: redis::Connection) -> Vec<(u16, u16, u16)> {
    use redis::Value;
    let int = |v: &Value| match v {
        Value::Int(i) => u16::try_from(*i).ok(),
        _ => None,
    };
    let ranges: Vec<Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut conn)
        .unwrap_or_default();
    ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(parts) = range else {
                return None;
            };
            let Some(Value::Array(primary)) = parts.get(2) else {
                return None;
            };
            Some((int(&parts[0])?, int(&parts[1])?, int(primary.get(1)?)?))
        })
        .collect()
}

/// The master name the sentinels of [`SentinelSet`] watch.
pub const SENTINEL_MASTER: &str = "fleetprimary";

/// A primary, its replica, and three sentinels (quorum 2) watching it.
pub struct SentinelSet {
    pub primary: Node,
    pub replica: Node,
    pub sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    pub fn start() -> SentinelSet {
        let dir = temp_dir("fleet-sentinel-");
        let primary_port = free_port();
        let pd = dir.path().join("primary");
        let primary = Node::spawn(primary_port, pd.clone(), base_args(primary_port, &pd));
        let replica_port = free_port();
        let rd = dir.path().join("replica");
        let mut args = base_args(replica_port, &rd);
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary_port.to_string(),
        ]);
        let replica = Node::spawn(replica_port, rd, args);
        let sentinels = (0..3)
            .map(|i| {
                let port = free_port();
                let d = dir.path().join(format!("sentinel{i}"));
                std::fs::create_dir_all(&d).unwrap();
                let conf = d.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {log}\n\
                         sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {primary_port} 2\n\
                         sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                         sentinel failover-timeout {SENTINEL_MASTER} 5000\n\
                         sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                        dir = d.display(),
                        log = d.join("redis.log").display(),
                    ),
                )
                .unwrap();
                let args = vec![conf.display().to_string(), "--sentinel".into()];
                let mut node = Node {
                    port,
                    dir: d,
                    child: None,
                    args,
                };
                let binary =
                    std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
                node.child = Some(
                    Command::new(binary)
                        .args(&node.args)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                        .expect("start a sentinel"),
                );
                node.wait_log("+monitor master");
                node
            })
            .collect();
        let set = SentinelSet {
            primary,
            replica,
            sentinels,
            _dir: dir,
        };
        set.wait_settled();
        set
    }

    /// Until every sentinel knows the replica and the two other sentinels.
    fn wait_settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for s in &self.sentinels {
            loop {
                let fields: Vec<String> = redis::cmd("SENTINEL")
                    .arg("MASTER")
                    .arg(SENTINEL_MASTER)
                    .query(&mut s.conn())
                    .unwrap_or_default();
                let field = |name: &str| {
                    fields
                        .iter()
                        .position(|f| f == name)
                        .and_then(|i| fields.get(i + 1))
                        .cloned()
                        .unwrap_or_default()
                };
                if field("num-slaves") == "1" && field("num-other-sentinels") == "2" {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel {} not settled: {fields:?}",
                    s.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// `redis+sentinel://h:p,h:p,h:p/<master>`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{SENTINEL_MASTER}", hosts.join(","))
    }

    /// The port of the node the sentinels name as primary now.
    pub fn primary_port_now(&self) -> Option<u16> {
        for s in self.sentinels.iter() {
            let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(SENTINEL_MASTER)
                .query(&mut s.conn())
                .ok()
                .flatten();
            if let Some((_, port)) = addr {
                return Some(port);
            }
        }
        None
    }

    /// Until the sentinels name a primary other than `old_port`, and it says it is one.
    pub fn wait_failover(&self, old_port: u16) -> u16 {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(port) = self.primary_port_now()
                && port != old_port
            {
                let role: Vec<redis::Value> =
                    redis::Client::open(format!("redis://127.0.0.1:{port}"))
                        .and_then(|c| c.get_connection())
                        .and_then(|mut c| redis::cmd("ROLE").query(&mut c))
                        .unwrap_or_default();
                if matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master") {
                    return port;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no failover away from port {old_port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Certificates made with the `openssl` CLI for one test: a CA, a server certificate
/// for 127.0.0.1/localhost and a client certificate, all signed by it.
pub struct TestCa {
    pub dir: tempfile::TempDir,
}

impl TestCa {
    pub fn generate() -> TestCa {
        let dir = temp_dir("fleet-tls-");
        let ca = TestCa { dir };
        ca.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-subj",
            "/CN=fleet test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        ca.issue(
            "server",
            "serverAuth",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        );
        ca.issue("client", "clientAuth", "subjectAltName=DNS:fleet-client");
        ca
    }

    /// Another CA, unrelated to this one (for the wrong-CA test).
    pub fn other() -> TestCa {
        TestCa::generate()
    }

    fn issue(&self, name: &str, usage: &str, san: &str) {
        let ext = self.path(&format!("{name}.ext"));
        std::fs::write(
            &ext,
            format!("{san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
        )
        .unwrap();
        self.openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            &format!("{name}.crt"),
            "-extfile",
            &ext.display().to_string(),
        ]);
    }

    fn openssl(&self, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

/// The ACL user of [`TlsRedis`] and its password.
pub const TLS_USER: &str = "fleetuser";
pub const TLS_PASSWORD: &str = "s3cret-for-tests";

/// A `redis-server` that speaks TLS only (`--port 0`), asks for client certificates,
/// and knows the `default` user as disabled and [`TLS_USER`] as the only one.
pub struct TlsRedis {
    pub node: Node,
    pub ca: TestCa,
}

impl TlsRedis {
    pub fn start() -> TlsRedis {
        let ca = TestCa::generate();
        let port = free_port();
        let dir = ca.path("server-data");
        std::fs::create_dir_all(&dir).unwrap();
        let mut args = base_args(0, &dir);
        let p = |f: &str| ca.path(f).display().to_string();
        args.extend([
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            p("server.crt"),
            "--tls-key-file".into(),
            p("server.key"),
            "--tls-ca-cert-file".into(),
            p("ca.crt"),
            "--tls-auth-clients".into(),
            "yes".into(),
        ]);
        // The ACL file: `default` off, the fleet's user with every right.
        let acl = dir.join("users.acl");
        std::fs::write(
            &acl,
            format!("user default off\nuser {TLS_USER} on >{TLS_PASSWORD} ~* &* +@all\n"),
        )
        .unwrap();
        args.extend(["--aclfile".into(), acl.display().to_string()]);
        let node = Node::spawn(port, dir, args);
        TlsRedis { node, ca }
    }

    /// `rediss://127.0.0.1:<port>` (no credentials: they come from the settings).
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.node.port)
    }
}
