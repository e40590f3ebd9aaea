//! A fake E2B, built to E2B's published specs (`tests/specs/e2b/`), for testing
//! the E2B client over real HTTP without E2B.
//!
//! One listener serves both APIs:
//! - the control plane at `/` (`POST /sandboxes`, `GET /v2/sandboxes`,
//!   `GET|DELETE /sandboxes/{id}`, `.../timeout`, `.../connect`, `.../pause`,
//!   `GET /sandboxes/{id}/metrics`), checking `X-API-Key` and validating each
//!   request against `openapi.yml` (400 when it does not match, as E2B's request
//!   validator does);
//! - every sandbox's envd under `/envd/{id}` (`/health`, `/files`, and the
//!   `process.Process` Connect RPCs `Start`, `Connect`, `SendInput`,
//!   `CloseStdin`, `SendSignal`, `List`), checking `X-Access-Token`. Point the
//!   client's `envd_url` at [`FakeE2b::envd_url`].
//!
//! Commands and files go to the [`SandboxProvider`] the fake is given (by
//! default the local provider in a temporary directory): each fake sandbox is
//! backed by one of the provider's. Paths are shown as in E2B's templates: the
//! home directory is `/home/user`, and relative paths start there. Every request is recorded
//! ([`RecordedRequest`]); [`Faults`] switch on failures at runtime; [`Counters`]
//! tell what happened (created, killed, running, paused, the most running at once,
//! and when each create or resume arrived).

mod control;
mod envd;
mod faults;
pub mod openapi;
mod record;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use fleet_shared::sandbox::SandboxProvider;
use fleet_shared::sandbox::local::{LocalConfig, LocalProvider};
use fleet_shared::secret::Secret;
use fleet_shared::settings::E2bSettings;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use faults::{Faults, Latencies, NotFoundBody, Plan};
pub use record::RecordedRequest;

/// The API key the fake accepts unless told otherwise (E2B's format).
pub const DEFAULT_API_KEY: &str = "e2b_f00dfeedfacecafe0123456789abcdef";

/// The home directory of E2B's default user, as sandbox paths show it.
pub const SANDBOX_HOME: &str = "/home/user";

/// A sandbox path as the provider takes it: `/home/user/x` and `x` both become
/// `x` (relative to the provider sandbox's home); other paths pass unchanged.
pub(crate) fn provider_path(path: &str) -> String {
    match path.strip_prefix(SANDBOX_HOME) {
        Some("") => ".".into(),
        Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/').to_string(),
        _ => path.to_string(),
    }
}

/// What happened at the fake so far.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Sandboxes created (`POST /sandboxes` answered 201).
    pub created: usize,
    /// Sandboxes killed by `DELETE`, by a vanish fault, or on expiry.
    pub killed: usize,
    /// Paused sandboxes resumed by `connect`.
    pub resumed: usize,
    /// Pauses done (`POST .../pause` answered 204, or auto-pause on expiry).
    pub pauses: usize,
    pub running: usize,
    pub paused: usize,
    /// The most sandboxes running at once.
    pub max_running: usize,
    /// When each create and each resume arrived (what E2B's rate limit counts).
    pub starts: Vec<Instant>,
    /// Creates and resumes refused with 429 by the plan ([`Faults::set_plan`]):
    /// at its concurrent-sandbox cap, and for coming too soon after the last start.
    pub cap_refusals: usize,
    pub rate_refusals: usize,
    /// For each rate refusal, how soon after the last accepted start it arrived.
    pub rate_refusal_gaps: Vec<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    Running,
    Paused,
}

/// One fake sandbox.
pub(crate) struct FakeSandbox {
    pub id: String,
    pub template: String,
    pub metadata: BTreeMap<String, String>,
    pub env_vars: BTreeMap<String, String>,
    /// The egress rules its create carried.
    pub egress: Egress,
    /// `None` unless created with `secure: true`.
    pub token: Option<String>,
    pub auto_pause: bool,
    pub state: State,
    pub started_at: SystemTime,
    pub end_at: SystemTime,
    /// Creation order, for list order and cursors.
    pub seq: u64,
    /// The provider's sandbox behind this one.
    pub inner: String,
    pub processes: HashMap<u32, Arc<envd::Proc>>,
    pub next_pid: u32,
}

/// What the fake's `GET /sandboxes/{id}/metrics` reports for a sandbox.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SandboxUsage {
    pub cpu_count: i64,
    pub cpu_used_pct: f64,
    pub mem_used: i64,
    pub mem_total: i64,
    pub disk_used: i64,
}

impl Default for SandboxUsage {
    /// 2 cores at 12.5 %, 128 of 512 MiB (the sizes the fake's sandboxes show).
    fn default() -> Self {
        SandboxUsage {
            cpu_count: 2,
            cpu_used_pct: 12.5,
            mem_used: 128 << 20,
            mem_total: 512 << 20,
            disk_used: 700 << 20,
        }
    }
}

/// The egress rules a create carried (`None`: the field was absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    pub allow_internet_access: Option<bool>,
    pub allow_out: Option<Vec<String>>,
    pub deny_out: Option<Vec<String>>,
}

#[derive(Default)]
pub(crate) struct World {
    pub sandboxes: BTreeMap<String, FakeSandbox>,
    pub seq: u64,
    pub counters: Counters,
    /// Every access token issued, for leak checks.
    pub tokens: Vec<String>,
    /// Creates and resumes admitted by the plan and not finished yet.
    pub starting: usize,
    /// When the plan last admitted a start.
    pub last_start: Option<Instant>,
    /// Usage set by [`FakeE2b::set_usage`], by sandbox.
    pub usage: HashMap<String, SandboxUsage>,
    /// Every create and resume that started a sandbox, in the order they finished.
    pub start_log: Vec<StartRecord>,
}

/// A create or resume that started a sandbox ([`FakeE2b::start_log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRecord {
    pub sandbox_id: String,
    /// The backing (local provider) sandbox: commands run in a directory named by it.
    pub backing: String,
    /// True for a resume (`connect` of a paused sandbox), false for a create.
    pub resume: bool,
    /// When the request arrived and when the sandbox was running (wall clock).
    pub arrived: SystemTime,
    pub running: SystemTime,
}

impl World {
    /// Admit a create or resume that arrived at `at` under `plan`, or say why not
    /// (E2B's 429 message and `Retry-After`). An admitted start counts as running
    /// until [`World::start_done`].
    pub fn admit_start(
        &mut self,
        plan: Option<faults::Plan>,
        at: Instant,
    ) -> Result<(), (String, Option<u64>)> {
        if let Some(plan) = plan {
            if self.running() + self.starting >= plan.max_running {
                self.counters.cap_refusals += 1;
                return Err((
                    format!(
                        "you have reached the maximum number of concurrent E2B sandboxes ({})",
                        plan.max_running
                    ),
                    None,
                ));
            }
            let interval = Duration::from_secs_f64(1.0 / plan.starts_per_second.max(1e-6));
            if let Some(last) = self.last_start.filter(|last| at < *last + interval) {
                self.counters.rate_refusals += 1;
                self.counters
                    .rate_refusal_gaps
                    .push(at.saturating_duration_since(last));
                return Err(("Rate limit exceeded".into(), Some(1)));
            }
            self.last_start = Some(at);
        }
        self.starting += 1;
        Ok(())
    }

    pub fn start_done(&mut self) {
        self.starting = self.starting.saturating_sub(1);
    }

    pub fn running(&self) -> usize {
        self.sandboxes
            .values()
            .filter(|s| s.state == State::Running)
            .count()
    }

    /// Note a sandbox that started running (create or resume).
    pub fn started(&mut self, at: Instant) {
        self.counters.starts.push(at);
        self.counters.max_running = self.counters.max_running.max(self.running());
    }
}

/// State shared by all handlers.
pub(crate) struct Shared {
    pub provider: Arc<dyn SandboxProvider>,
    pub api_key: String,
    pub faults: Faults,
    pub world: Mutex<World>,
    pub records: Mutex<Vec<RecordedRequest>>,
    pub recorded: Notify,
}

impl Shared {
    /// Cancel a sandbox's processes (kill, pause-without-files, vanish).
    pub fn stop_processes(sb: &mut FakeSandbox) {
        for p in sb.processes.values() {
            p.cancel.cancel();
        }
        sb.processes.clear();
    }
}

/// A running fake E2B server. Dropping it stops the server.
pub struct FakeE2b {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
    /// The local provider's directory, when the fake made one.
    _root: Option<tempfile::TempDir>,
}

/// A local provider in a new temporary directory (deleted with the directory).
pub fn local_provider() -> std::io::Result<(Arc<LocalProvider>, tempfile::TempDir)> {
    let root = tempfile::Builder::new().prefix("fake-e2b-").tempdir()?;
    let provider = LocalProvider::new(LocalConfig {
        root: root.path().to_path_buf(),
        env_allowlist: vec!["PATH".into(), "LANG".into()],
        max_output_bytes: 1 << 20,
        extra_path: Vec::new(),
    });
    Ok((Arc::new(provider), root))
}

impl FakeE2b {
    /// Serve on a free loopback port, accepting [`DEFAULT_API_KEY`], running
    /// commands with the local provider in a temporary directory.
    pub async fn start_local() -> FakeE2b {
        let (provider, root) = local_provider().expect("temporary directory");
        let mut fake = Self::start(provider).await;
        fake._root = Some(root);
        fake
    }

    /// Serve on a free loopback port, accepting [`DEFAULT_API_KEY`].
    pub async fn start(provider: Arc<dyn SandboxProvider>) -> FakeE2b {
        Self::start_on("127.0.0.1:0".parse().unwrap(), provider, DEFAULT_API_KEY)
            .await
            .expect("bind a loopback port")
    }

    /// Serve on `addr` (port 0: any free one), accepting `api_key`.
    pub async fn start_on(
        addr: SocketAddr,
        provider: Arc<dyn SandboxProvider>,
        api_key: &str,
    ) -> std::io::Result<FakeE2b> {
        let shared = Arc::new(Shared {
            provider,
            api_key: api_key.to_string(),
            faults: Faults::default(),
            world: Mutex::new(World::default()),
            records: Mutex::new(Vec::new()),
            recorded: Notify::new(),
        });
        let app: Router = control::router(shared.clone())
            .merge(envd::router(shared.clone()))
            .layer(axum::middleware::from_fn_with_state(
                shared.clone(),
                record::record,
            ));
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled().await })
                .await;
        });
        Ok(FakeE2b {
            addr,
            shared,
            stop,
            server,
            _root: None,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The control-plane base URL (`api_url` setting).
    pub fn api_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The envd URL pattern (`envd_url` setting), `{id}` standing for the sandbox.
    pub fn envd_url(&self) -> String {
        format!("http://{}/envd/{{id}}", self.addr)
    }

    pub fn api_key(&self) -> &str {
        &self.shared.api_key
    }

    /// Client settings pointing at this server: generous limits, 5 s request
    /// timeout, 3 attempts. Adjust fields as a test needs.
    pub fn settings(&self) -> E2bSettings {
        E2bSettings {
            domain: "e2b.invalid".into(),
            api_url: self.api_url(),
            envd_url: self.envd_url(),
            template: "base".into(),
            max_concurrent_sandboxes: 100,
            creates_per_second: 1000.0,
            request_timeout_secs: 5,
            request_attempts: 3,
            api_key: Some(Secret::new(self.shared.api_key.clone())),
        }
    }

    /// The fault switches (shared with the running server).
    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    pub fn counters(&self) -> Counters {
        let w = self.shared.world.lock().unwrap();
        let mut c = w.counters.clone();
        c.running = w.running();
        c.paused = w.sandboxes.len() - c.running;
        c
    }

    /// Every create and resume that started a sandbox so far, with when it arrived
    /// and when the sandbox ran (what a makespan bound is computed from).
    pub fn start_log(&self) -> Vec<StartRecord> {
        self.shared.world.lock().unwrap().start_log.clone()
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.records.lock().unwrap().clone()
    }

    pub fn clear_requests(&self) {
        self.shared.records.lock().unwrap().clear();
    }

    /// Wait for a request matching `pred` (already received or arriving within
    /// `timeout`).
    pub async fn wait_for_request(
        &self,
        timeout: Duration,
        pred: impl Fn(&RecordedRequest) -> bool,
    ) -> Option<RecordedRequest> {
        record::wait_for(&self.shared, timeout, pred).await
    }

    /// The envd access tokens issued so far (for leak checks).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.world.lock().unwrap().tokens.clone()
    }

    /// The egress rules fake sandbox `id`'s create carried.
    pub fn egress_of(&self, id: &str) -> Option<Egress> {
        self.shared
            .world
            .lock()
            .unwrap()
            .sandboxes
            .get(id)
            .map(|s| s.egress.clone())
    }

    /// The provider sandbox behind fake sandbox `id`.
    pub fn backing_sandbox(&self, id: &str) -> Option<String> {
        self.shared
            .world
            .lock()
            .unwrap()
            .sandboxes
            .get(id)
            .map(|s| s.inner.clone())
    }

    /// What `GET /sandboxes/{id}/metrics` reports for `id` from now on.
    pub fn set_usage(&self, id: &str, usage: SandboxUsage) {
        self.shared
            .world
            .lock()
            .unwrap()
            .usage
            .insert(id.to_string(), usage);
    }

    /// The IDs of the fake's sandboxes (running and paused).
    pub fn sandbox_ids(&self) -> Vec<String> {
        self.shared
            .world
            .lock()
            .unwrap()
            .sandboxes
            .keys()
            .cloned()
            .collect()
    }

    /// Move a sandbox's end time to now, so it expires (killed, or paused when
    /// created with `autoPause`) at the next request, as E2B's evictor would.
    pub fn expire(&self, id: &str) {
        if let Some(s) = self.shared.world.lock().unwrap().sandboxes.get_mut(id) {
            s.end_at = SystemTime::now();
        }
    }
}

impl Drop for FakeE2b {
    fn drop(&mut self) {
        self.stop.cancel();
        self.server.abort();
        let mut w = self.shared.world.lock().unwrap();
        for sb in w.sandboxes.values_mut() {
            Shared::stop_processes(sb);
        }
    }
}

/// `"i"` and 20 lowercase alphanumerics, as E2B's IDs.
pub(crate) fn new_sandbox_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..20)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("i{tail}")
}

/// A random access token (64 hex digits).
pub(crate) fn new_token() -> String {
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// RFC 3339 in UTC, second precision (`2026-08-21T10:00:00Z`).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_787_305_600)),
            "2026-08-21T09:46:40Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn e2b_home_paths_map_into_the_provider_home() {
        assert_eq!(provider_path("/home/user/a/b.txt"), "a/b.txt");
        assert_eq!(provider_path("/home/user"), ".");
        assert_eq!(provider_path("a/b.txt"), "a/b.txt");
        assert_eq!(provider_path("/home/username/x"), "/home/username/x");
        assert_eq!(provider_path("/etc/passwd"), "/etc/passwd");
    }

    #[test]
    fn ids_look_like_e2b_ids() {
        let id = new_sandbox_id();
        assert_eq!(id.len(), 21);
        assert!(id.starts_with('i'));
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
    }
}
