//! A real `redis-server` per test: started on a free port in its own directory,
//! with AOF on by default, so a test can kill it (`kill -9`) and restart it on the
//! same port and data and see what survives.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    appendonly: bool,
}

impl RedisServer {
    /// Start a server with AOF persistence (`appendfsync always`, so an
    /// acknowledged write survives `kill -9`).
    pub fn start() -> RedisServer {
        Self::start_with(true)
    }

    /// Start a server; `appendonly = false` keeps nothing on disk (faster for benchmarks).
    pub fn start_with(appendonly: bool) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("fleet-redis-")
            .tempdir()
            .expect("temp dir for redis-server");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
            appendonly,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let binary = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&binary);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(self.dir.path().join("redis.log"));
        if self.appendonly {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (is redis-server installed?): {e}"));
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            if let Ok(mut conn) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut conn).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not come up; log: {}",
                self.port,
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `kill -9` the server, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -STOP` the server, as a stalled host (or a long fork/fsync) would: it keeps
    /// its connections and its data but answers nothing until [`thaw`](Self::thaw).
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// `kill -CONT`: the frozen server goes on where it stopped.
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let child = self.child.as_ref().expect("redis-server is running");
        let done = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(done, 0, "could not signal redis-server");
    }

    /// Start it again on the same port and directory (AOF replays).
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// `REPLICAOF` the `primary` (it refuses writes with `READONLY` from then on), or,
    /// for `None`, `REPLICAOF NO ONE` (a primary again, its data kept).
    pub fn replicaof(&self, primary: Option<&RedisServer>) {
        let mut cmd = redis::cmd("REPLICAOF");
        match primary {
            Some(p) => {
                // The primary syncs its replica at once, not after the default 5 s.
                let _: () = redis::cmd("CONFIG")
                    .arg("SET")
                    .arg("repl-diskless-sync-delay")
                    .arg(0)
                    .query(&mut p.conn())
                    .expect("CONFIG SET");
                cmd.arg("127.0.0.1").arg(p.port())
            }
            None => cmd.arg("NO").arg("ONE"),
        };
        let _: () = cmd.query(&mut self.conn()).expect("REPLICAOF");
    }

    /// Wait until this replica's link to its primary is up (its first sync done).
    pub fn wait_replica_synced(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut self.conn())
                .unwrap();
            if info.contains("master_link_status:up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica on port {} did not sync: {info}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A synchronous connection, for test assertions.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
