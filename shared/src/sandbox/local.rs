//! The local sandbox provider: sandboxes as directories on this machine, so that
//! the whole system runs with no API keys and no network.
//!
//! **This is a development convenience, NOT a security boundary.** Every command
//! runs as the worker's own user, can read and write anything that user can, and
//! can reach the network. Use the E2B provider for untrusted agents.
//! In particular, egress rules (`SandboxSpec::network`, from a profile's
//! `[agents.<name>.network]`) are ignored here: nothing restricts a local
//! sandbox's network (the worker warns at start when a profile sets them).
//!
//! Layout: `root/<id>/home/` is the sandbox's working directory (its `HOME`; relative
//! paths resolve inside it) and `root/<id>/meta.json` holds its state, metadata,
//! environment and the process groups of the commands running in it. Everything
//! lives on disk, so a new `LocalProvider` on the same root (a restarted worker)
//! sees the same sandboxes, can resume a paused one and can kill what it runs.
//!
//! Each command runs in a process group of its own with a cleared environment.
//! Timeout, cancellation, dropping the `exec` future, `pause` and `kill` all
//! signal the whole group, so children and grandchildren go with the command.
//! When a command's main process exits, anything it left running in its group is
//! killed too: nothing outlives the command that started it. A process that moves
//! itself to another group (`setsid`) escapes this bookkeeping.
//!
//! Sandbox lifetimes (`SandboxSpec::timeout`, `set_timeout`, `connect`) are recorded
//! in `meta.json` but not enforced here: the agent pool enforces them.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{
    ExecControl, ExecOutput, ExecRequest, ListFilter, OutputChunk, SandboxError, SandboxInfo,
    SandboxProvider, SandboxSpec, SandboxState,
};
use crate::settings::LocalSandboxSettings;
use crate::time::now_ms;

const META_FILE: &str = "meta.json";
const HOME_DIR: &str = "home";
const ID_PREFIX: char = 'l';
const ID_RANDOM_LEN: usize = 20;
const ID_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const READ_CHUNK: usize = 8192;

/// How the local provider is set up.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    /// Directory holding one directory per sandbox (made absolute at construction).
    pub root: PathBuf,
    /// Variables copied from the worker's environment into every command.
    pub env_allowlist: Vec<String>,
    /// Default cap on kept stdout and stderr bytes when a request says 0.
    pub max_output_bytes: usize,
    /// Directories put in front of the allowlisted `PATH` (e.g. the worker's own
    /// binary directory, so bundled agents such as `fleet-demo-agent` are found).
    pub extra_path: Vec<PathBuf>,
}

impl LocalConfig {
    pub fn from_settings(s: &LocalSandboxSettings) -> Self {
        Self {
            root: s.root.clone(),
            env_allowlist: s.env_allowlist.clone(),
            max_output_bytes: s.max_output_bytes,
            extra_path: Vec::new(),
        }
    }
}

/// The embedded sandbox provider. See the module documentation: not a security boundary.
pub struct LocalProvider {
    config: LocalConfig,
    /// Serialises every read-modify-write of a `meta.json` in this process, and
    /// makes "spawn a command and record its group" atomic with respect to
    /// `pause` and `kill`, so neither can miss a command that is just starting.
    meta_lock: Mutex<()>,
}

/// What `meta.json` holds. It may hold secrets (`env`), so it is written mode 0600.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    state: SandboxState,
    template: String,
    metadata: BTreeMap<String, String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    auto_pause: bool,
    created_ms: u64,
    /// When the sandbox's lifetime ends (Unix ms; 0 = none). Recorded only.
    deadline_ms: u64,
    /// Process groups of the commands running now.
    #[serde(default)]
    groups: Vec<TrackedGroup>,
}

/// A process group recorded on disk. The leader's start time (from
/// `/proc/<pid>/stat`) lets a later worker tell our group from an unrelated
/// process that reused the number after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct TrackedGroup {
    pgid: i32,
    #[serde(default)]
    start_ticks: Option<u64>,
}

impl LocalProvider {
    pub fn new(mut config: LocalConfig) -> Self {
        // A relative root would change meaning if the worker changed directory, and
        // absolute paths given to exec/read/write are compared against it.
        if let Ok(absolute) = std::path::absolute(&config.root) {
            config.root = absolute;
        }
        Self {
            config,
            meta_lock: Mutex::new(()),
        }
    }

    pub fn config(&self) -> &LocalConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The guarded data is on disk and written atomically, so a panic while the
        // lock was held leaves nothing half-done in memory: the poison can be ignored.
        self.meta_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn sandbox_dir(&self, id: &str) -> Result<PathBuf, SandboxError> {
        // The ID becomes a path component: anything but our own format could
        // point outside the root.
        if !is_valid_id(id) {
            return Err(SandboxError::NotFound(id.to_string()));
        }
        Ok(self.config.root.join(id))
    }

    fn home_dir(&self, id: &str) -> Result<PathBuf, SandboxError> {
        Ok(self.sandbox_dir(id)?.join(HOME_DIR))
    }

    fn load_meta(&self, id: &str) -> Result<Meta, SandboxError> {
        let path = self.sandbox_dir(id)?.join(META_FILE);
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SandboxError::NotFound(id.to_string()));
            }
            Err(e) => return Err(unavailable(&path, e)),
        };
        serde_json::from_slice(&text)
            .map_err(|e| SandboxError::NotFound(format!("{id} (unreadable {META_FILE}: {e})")))
    }

    fn store_meta(&self, id: &str, meta: &Meta) -> Result<(), SandboxError> {
        let dir = self.sandbox_dir(id)?;
        let bytes = serde_json::to_vec_pretty(meta)
            .map_err(|e| SandboxError::Unavailable(format!("cannot encode {META_FILE}: {e}")))?;
        write_atomically(&dir.join(META_FILE), &bytes).map_err(|e| unavailable(&dir, e))
    }

    fn info(id: &str, meta: &Meta) -> SandboxInfo {
        SandboxInfo {
            id: id.to_string(),
            state: meta.state,
            template: meta.template.clone(),
            metadata: meta.metadata.clone(),
        }
    }

    /// Forget a finished command's group. The sandbox may be gone (killed while
    /// the command ran); then there is nothing to update.
    fn untrack(&self, id: &str, pgid: i32) {
        let _lock = self.lock();
        if let Ok(mut meta) = self.load_meta(id) {
            meta.groups.retain(|g| g.pgid != pgid);
            if let Err(e) = self.store_meta(id, &meta) {
                tracing::warn!(sandbox = id, error = %e, "cannot update local sandbox metadata");
            }
        }
    }

    /// The environment of a command: allowlisted worker variables, `HOME`, `PATH`
    /// with the extra directories first, the sandbox's env, then the request's.
    fn command_env(
        &self,
        home: &Path,
        sandbox_env: &BTreeMap<String, String>,
        request_env: &BTreeMap<String, String>,
    ) -> BTreeMap<OsString, OsString> {
        let mut env = BTreeMap::new();
        for name in &self.config.env_allowlist {
            if let Some(value) = std::env::var_os(name) {
                env.insert(OsString::from(name), value);
            }
        }
        env.insert("HOME".into(), home.as_os_str().to_owned());
        let mut path: Vec<PathBuf> = self.config.extra_path.clone();
        if let Some(inherited) = env.get(OsStr::new("PATH")) {
            path.extend(std::env::split_paths(inherited));
        }
        if !path.is_empty()
            && let Ok(joined) = std::env::join_paths(path)
        {
            env.insert("PATH".into(), joined);
        }
        for (key, value) in sandbox_env.iter().chain(request_env) {
            env.insert(key.into(), value.into());
        }
        env
    }
}

#[async_trait]
impl SandboxProvider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxInfo, SandboxError> {
        let id = new_id();
        let dir = self.sandbox_dir(&id)?;
        std::fs::create_dir_all(dir.join(HOME_DIR)).map_err(|e| unavailable(&dir, e))?;
        let now = now_ms();
        let meta = Meta {
            state: SandboxState::Running,
            template: spec.template.clone(),
            metadata: spec.metadata.clone(),
            env: spec.env.clone(),
            auto_pause: spec.auto_pause,
            created_ms: now,
            deadline_ms: deadline_after(now, spec.timeout),
            groups: Vec::new(),
        };
        // meta.json is written last: `list` skips directories without one, so a
        // half-created sandbox is never reported.
        if let Err(e) = self.store_meta(&id, &meta) {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        tracing::debug!(sandbox = %id, "local sandbox created");
        Ok(Self::info(&id, &meta))
    }

    async fn connect(&self, id: &str, timeout: Duration) -> Result<SandboxInfo, SandboxError> {
        let _lock = self.lock();
        let mut meta = self.load_meta(id)?;
        if meta.state == SandboxState::Paused {
            for group in &meta.groups {
                signal_group(*group, libc::SIGCONT);
            }
            meta.state = SandboxState::Running;
        }
        meta.deadline_ms = meta.deadline_ms.max(deadline_after(now_ms(), timeout));
        self.store_meta(id, &meta)?;
        Ok(Self::info(id, &meta))
    }

    async fn pause(&self, id: &str) -> Result<(), SandboxError> {
        let _lock = self.lock();
        let mut meta = self.load_meta(id)?;
        for group in &meta.groups {
            signal_group(*group, libc::SIGSTOP);
        }
        meta.state = SandboxState::Paused;
        self.store_meta(id, &meta)
    }

    async fn kill(&self, id: &str) -> Result<(), SandboxError> {
        let Ok(dir) = self.sandbox_dir(id) else {
            // Not one of our IDs, so it cannot exist: already gone.
            return Ok(());
        };
        let _lock = self.lock();
        if let Ok(meta) = self.load_meta(id) {
            // SIGKILL ends stopped processes too, so a paused sandbox needs no SIGCONT.
            for group in &meta.groups {
                signal_group(*group, libc::SIGKILL);
            }
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(unavailable(&dir, e)),
        }
    }

    /// Records the new deadline; the local provider does not enforce it (the pool does).
    async fn set_timeout(&self, id: &str, timeout: Duration) -> Result<(), SandboxError> {
        let _lock = self.lock();
        let mut meta = self.load_meta(id)?;
        meta.deadline_ms = deadline_after(now_ms(), timeout);
        self.store_meta(id, &meta)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>, SandboxError> {
        let entries = match std::fs::read_dir(&self.config.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(unavailable(&self.config.root, e)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| unavailable(&self.config.root, e))?;
            let Some(id) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if !is_valid_id(&id) {
                continue;
            }
            // Being created, being killed, or damaged: not a sandbox to report.
            let Ok(meta) = self.load_meta(&id) else {
                continue;
            };
            let state_matches = filter.states.is_empty() || filter.states.contains(&meta.state);
            let metadata_matches = filter
                .metadata
                .iter()
                .all(|(k, v)| meta.metadata.get(k) == Some(v));
            if state_matches && metadata_matches {
                found.push(Self::info(&id, &meta));
            }
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    async fn exec(
        &self,
        id: &str,
        request: &ExecRequest,
        control: ExecControl,
    ) -> Result<ExecOutput, SandboxError> {
        let home = self.home_dir(id)?;
        let cwd = match &request.cwd {
            Some(cwd) => resolve_in_home(&home, cwd)?,
            None => home.clone(),
        };
        let limit = if request.max_output_bytes == 0 {
            self.config.max_output_bytes
        } else {
            request.max_output_bytes
        };

        let (mut child, pgid) = {
            let _lock = self.lock();
            let mut meta = self.load_meta(id)?;
            if meta.state == SandboxState::Paused {
                return Err(SandboxError::Conflict("sandbox is paused".into()));
            }
            if !cwd.is_dir() {
                return Err(SandboxError::Invalid(format!(
                    "working directory not found: {}",
                    request.cwd.as_deref().unwrap_or(".")
                )));
            }
            let env = self.command_env(&home, &meta.env, &request.env);
            let program = resolve_program(
                &request.program,
                &cwd,
                env.get(OsStr::new("PATH")).map(OsString::as_os_str),
            )?;
            let mut command = tokio::process::Command::new(&program);
            command
                .args(&request.args)
                .env_clear()
                .envs(&env)
                .current_dir(&cwd)
                .process_group(0)
                .kill_on_drop(true)
                .stdin(if request.stdin.is_some() {
                    Stdio::piped()
                } else {
                    Stdio::null()
                })
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let child = command
                .spawn()
                .map_err(|e| spawn_error(&request.program, e))?;
            let Some(pgid) = child.id().map(|pid| pid as i32) else {
                return Err(SandboxError::Unavailable(
                    "command exited before it could be tracked".into(),
                ));
            };
            meta.groups.push(TrackedGroup {
                pgid,
                start_ticks: process_start_ticks(pgid),
            });
            if let Err(e) = self.store_meta(id, &meta) {
                // Untracked, it could not be paused or killed later: do not let it run.
                signal_group(
                    TrackedGroup {
                        pgid,
                        start_ticks: None,
                    },
                    libc::SIGKILL,
                );
                return Err(e);
            }
            (child, pgid)
        };
        // From here on, however this future ends (even dropped by an aborted
        // job), the group is killed and forgotten.
        let mut guard = GroupGuard {
            provider: self,
            sandbox_id: id,
            pgid,
            live: true,
        };

        let started = Instant::now();
        let stdin_pipe = child.stdin.take();
        let stdout_pipe = child.stdout.take();
        let stderr_pipe = child.stderr.take();
        let mut stdout = Capture::new(limit);
        let mut stderr = Capture::new(limit);

        let feed_stdin = async {
            if let (Some(mut pipe), Some(bytes)) = (stdin_pipe, request.stdin.as_ref()) {
                // A command that exits without reading its input is not an error.
                let _ = pipe.write_all(bytes).await;
                let _ = pipe.shutdown().await;
            }
        };
        let pumps = async {
            tokio::join!(
                feed_stdin,
                pump(
                    stdout_pipe,
                    &mut stdout,
                    control.output.as_ref(),
                    OutputChunk::Stdout
                ),
                pump(
                    stderr_pipe,
                    &mut stderr,
                    control.output.as_ref(),
                    OutputChunk::Stderr
                ),
            )
        };
        let leader = async {
            let status = child.wait().await;
            // Background children still hold the pipes open; ending them lets
            // the pumps reach end of file and keeps them from outliving the command.
            kill_group_now(pgid);
            status
        };
        let finished = async move { tokio::join!(leader, pumps).0 };
        let timeout = async {
            match request.timeout {
                Some(limit) => tokio::time::sleep(limit).await,
                None => std::future::pending().await,
            }
        };

        enum Ending {
            Exited(io::Result<ExitStatus>),
            TimedOut,
            Cancelled,
        }
        let ending = tokio::select! {
            status = finished => Ending::Exited(status),
            () = timeout => Ending::TimedOut,
            () = control.cancel.cancelled() => Ending::Cancelled,
        };

        let status = match ending {
            Ending::Exited(status) => status,
            Ending::TimedOut | Ending::Cancelled => {
                kill_group_now(pgid);
                let _ = child.wait().await;
                guard.live = false;
                drop(guard);
                return Err(match ending {
                    Ending::TimedOut => SandboxError::Timeout(request.timeout.unwrap_or_default()),
                    _ => SandboxError::Cancelled,
                });
            }
        };
        guard.live = false;
        drop(guard);
        let status = status
            .map_err(|e| SandboxError::Unavailable(format!("cannot wait for command: {e}")))?;
        // The sandbox was killed under the command: report it lost, not as the
        // command's own failure.
        if !self.sandbox_dir(id)?.join(META_FILE).exists() {
            return Err(SandboxError::NotFound(id.to_string()));
        }
        Ok(ExecOutput {
            output_lost: false,
            exit_code: exit_code(status),
            truncated: stdout.truncated || stderr.truncated,
            stdout_truncated: stdout.truncated,
            stdout: stdout.kept,
            stderr: stderr.kept,
            duration: started.elapsed(),
        })
    }

    async fn write_file(&self, id: &str, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        let target = self.existing_home_path(id, path)?;
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| file_error(path, e))?;
        }
        tokio::fs::write(&target, contents)
            .await
            .map_err(|e| file_error(path, e))
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, SandboxError> {
        let target = self.existing_home_path(id, path)?;
        tokio::fs::read(&target)
            .await
            .map_err(|e| file_error(path, e))
    }
}

impl LocalProvider {
    /// `path` inside the home of a sandbox that exists.
    fn existing_home_path(&self, id: &str, path: &str) -> Result<PathBuf, SandboxError> {
        let home = self.home_dir(id)?;
        if !self.sandbox_dir(id)?.join(META_FILE).exists() {
            return Err(SandboxError::NotFound(id.to_string()));
        }
        resolve_in_home(&home, path)
    }
}

/// Kills and forgets a command's process group when the exec future ends early.
struct GroupGuard<'a> {
    provider: &'a LocalProvider,
    sandbox_id: &'a str,
    pgid: i32,
    /// The group may still hold running processes.
    live: bool,
}

impl Drop for GroupGuard<'_> {
    fn drop(&mut self) {
        if self.live {
            kill_group_now(self.pgid);
        }
        self.provider.untrack(self.sandbox_id, self.pgid);
    }
}

/// Output kept up to a byte limit; the rest is counted as truncated.
struct Capture {
    kept: Vec<u8>,
    limit: usize,
    truncated: bool,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Self {
            kept: Vec::new(),
            limit,
            truncated: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.kept.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// Read a pipe to its end, keeping what fits and streaming every chunk.
/// Reading goes on past the limit so that the command never blocks on a full pipe.
async fn pump(
    pipe: Option<impl AsyncRead + Unpin>,
    capture: &mut Capture,
    stream: Option<&mpsc::UnboundedSender<OutputChunk>>,
    wrap: fn(Vec<u8>) -> OutputChunk,
) {
    let Some(mut pipe) = pipe else { return };
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                capture.push(&buf[..n]);
                if let Some(stream) = stream {
                    // A receiver that went away only stops the streaming.
                    let _ = stream.send(wrap(buf[..n].to_vec()));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
}

/// Shell convention for a process killed by a signal: 128 + the signal number.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// SIGKILL a group we spawned and still own (its leader not yet reaped, or just
/// reaped by us), so the number cannot belong to anyone else.
fn kill_group_now(pgid: i32) {
    signal_group(
        TrackedGroup {
            pgid,
            start_ticks: None,
        },
        libc::SIGKILL,
    );
}

/// Signal a recorded process group, unless its number now belongs to another process.
fn signal_group(group: TrackedGroup, signal: libc::c_int) {
    // killpg(0) and killpg(1) would hit the worker's own group or init's.
    if group.pgid <= 1 {
        return;
    }
    // The leader alive with another start time means the number was reused after
    // our group ended. A leader that is gone is fine: while any member lives the
    // kernel keeps the number reserved for the group, so it can only be ours.
    if let (Some(recorded), Some(current)) = (group.start_ticks, process_start_ticks(group.pgid))
        && recorded != current
    {
        return;
    }
    // SAFETY: killpg has no memory-safety preconditions; ESRCH (group gone) is expected.
    unsafe {
        libc::killpg(group.pgid, signal);
    }
}

/// Start time of a process in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
fn process_start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after
    // the last ')' start at field 3.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

fn new_id() -> String {
    let mut rng = rand::rng();
    let mut id = String::with_capacity(1 + ID_RANDOM_LEN);
    id.push(ID_PREFIX);
    for _ in 0..ID_RANDOM_LEN {
        id.push(ID_ALPHABET[rng.random_range(0..ID_ALPHABET.len())] as char);
    }
    id
}

fn is_valid_id(id: &str) -> bool {
    id.len() == 1 + ID_RANDOM_LEN
        && id.starts_with(ID_PREFIX)
        && id[1..]
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn deadline_after(now_ms: u64, timeout: Duration) -> u64 {
    if timeout.is_zero() {
        0
    } else {
        now_ms.saturating_add(crate::time::millis(timeout))
    }
}

/// Resolve a sandbox path (relative to the home, or absolute inside it) without
/// letting `..` climb out. Symlinks are not followed: this is bookkeeping, not
/// confinement.
fn resolve_in_home(home: &Path, path: &str) -> Result<PathBuf, SandboxError> {
    let given = Path::new(path);
    let relative = if given.is_absolute() {
        given.strip_prefix(home).map_err(|_| {
            SandboxError::Invalid(format!("path is outside the sandbox's home: {path}"))
        })?
    } else {
        given
    };
    let mut inside = PathBuf::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => inside.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !inside.pop() {
                    return Err(SandboxError::Invalid(format!(
                        "path escapes the sandbox: {path}"
                    )));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(SandboxError::Invalid(format!("unsupported path: {path}")));
            }
        }
    }
    Ok(home.join(inside))
}

/// Find the program the way `execvp` would, but against the command's own
/// `PATH` and working directory, so a missing program is reported as such
/// rather than as an ambiguous spawn failure.
fn resolve_program(
    program: &str,
    cwd: &Path,
    path: Option<&OsStr>,
) -> Result<PathBuf, SandboxError> {
    let not_found = || SandboxError::Invalid(format!("program not found: {program}"));
    if program.is_empty() {
        return Err(SandboxError::Invalid("empty program name".into()));
    }
    if program.contains('/') {
        let candidate = cwd.join(program);
        return if candidate.is_file() {
            Ok(candidate)
        } else {
            Err(not_found())
        };
    }
    let Some(path) = path else {
        return Err(not_found());
    };
    std::env::split_paths(path)
        .map(|dir| cwd.join(dir).join(program))
        .find(|candidate| is_executable_file(candidate))
        .ok_or_else(not_found)
}

fn is_executable_file(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn spawn_error(program: &str, e: io::Error) -> SandboxError {
    match e.kind() {
        // The program exists, so this is a missing interpreter or library.
        io::ErrorKind::NotFound => {
            SandboxError::Invalid(format!("program not found: {program} ({e})"))
        }
        io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput => {
            SandboxError::Invalid(format!("cannot run {program}: {e}"))
        }
        _ => SandboxError::Unavailable(format!("cannot start {program}: {e}")),
    }
}

/// File errors are about the request, not the sandbox: a missing file must not
/// read as `NotFound`, which would make the pool drop a healthy sandbox.
fn file_error(path: &str, e: io::Error) -> SandboxError {
    match e.kind() {
        io::ErrorKind::NotFound => SandboxError::Invalid(format!("file not found: {path}")),
        io::ErrorKind::PermissionDenied
        | io::ErrorKind::IsADirectory
        | io::ErrorKind::NotADirectory
        | io::ErrorKind::InvalidInput => SandboxError::Invalid(format!("{path}: {e}")),
        _ => SandboxError::Unavailable(format!("{path}: {e}")),
    }
}

fn unavailable(path: &Path, e: io::Error) -> SandboxError {
    SandboxError::Unavailable(format!("{}: {e}", path.display()))
}

/// Write through a temporary file and rename, so a reader (or a worker that
/// crashed mid-write) never sees half a file. Mode 0600: it may hold secrets.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let temporary = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::META_POOL;
    use tokio_util::sync::CancellationToken;

    const WAIT_LIMIT: Duration = Duration::from_secs(20);

    fn config(root: &Path) -> LocalConfig {
        LocalConfig {
            root: root.to_path_buf(),
            env_allowlist: vec!["PATH".into()],
            max_output_bytes: 1024 * 1024,
            extra_path: Vec::new(),
        }
    }

    async fn sandbox(provider: &LocalProvider) -> String {
        provider
            .create(&SandboxSpec {
                template: "base".into(),
                timeout: Duration::from_secs(60),
                metadata: BTreeMap::from([(META_POOL.to_string(), "demo".to_string())]),
                ..Default::default()
            })
            .await
            .unwrap()
            .id
    }

    fn run(program: &str, args: &[&str]) -> ExecRequest {
        ExecRequest {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }
    }

    fn sh(script: &str) -> ExecRequest {
        run("sh", &["-c", script])
    }

    /// Poll a condition until it holds; fails the test after `WAIT_LIMIT`.
    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let give_up = Instant::now() + WAIT_LIMIT;
        while !condition() {
            assert!(Instant::now() < give_up, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `R`, `S`, `T`, `Z`... of a process; `None` once it is gone.
    fn process_state(pid: i32) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..].trim_start().chars().next()
    }

    fn is_running(pid: i32) -> bool {
        !matches!(process_state(pid), None | Some('Z') | Some('X'))
    }

    /// Wait for a command to write its pid into `file` in the sandbox home.
    async fn pid_from(provider: &LocalProvider, id: &str, file: &str) -> i32 {
        let path = provider.home_dir(id).unwrap().join(file);
        let mut pid = None;
        wait_until(&format!("{file} holds a pid"), || {
            pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            pid.is_some()
        })
        .await;
        pid.unwrap()
    }

    #[tokio::test]
    async fn ids_look_like_local_ids_and_sandboxes_start_running() {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let info = provider.create(&SandboxSpec::default()).await.unwrap();
        assert!(
            info.id.starts_with('l') && info.id.len() == 21,
            "{}",
            info.id
        );
        assert!(is_valid_id(&info.id));
        assert_eq!(info.state, SandboxState::Running);
        assert!(root.path().join(&info.id).join("home").is_dir());
        assert_eq!(provider.name(), "local");
    }

    #[tokio::test]
    async fn exec_runs_in_home_and_captures_output_and_exit_code() {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let id = sandbox(&provider).await;
        let out = provider
            .exec(
                &id,
                &sh("pwd; echo oops >&2; exit 3"),
                ExecControl::default(),
            )
            .await
            .unwrap();
        assert_eq!(out.exit_code, 3);
        let home = provider.home_dir(&id).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            home.to_str().unwrap()
        );
        assert_eq!(out.stderr, b"oops\n");
        assert!(!out.truncated);
    }

    #[tokio::test]
    async fn environment_is_cleared_except_the_allowlist() {
        // Cargo sets this in the test process's environment.
        let probe = "CARGO_MANIFEST_DIR";
        let worker_value = std::env::var(probe).expect("cargo test sets CARGO_MANIFEST_DIR");
        let root = tempfile::tempdir().unwrap();

        let provider = LocalProvider::new(config(root.path()));
        let id = sandbox(&provider).await;
        let out = provider
            .exec(&id, &run("env", &[]), ExecControl::default())
            .await
            .unwrap();
        let env = String::from_utf8(out.stdout).unwrap();
        assert!(
            !env.contains(probe),
            "{probe} leaked into the sandbox:\n{env}"
        );
        let home = provider.home_dir(&id).unwrap();
        assert!(env.contains(&format!("HOME={}\n", home.display())), "{env}");
        assert!(env.lines().any(|l| l.starts_with("PATH=")), "{env}");

        let mut allowing = config(root.path());
        allowing.env_allowlist.push(probe.into());
        let provider = LocalProvider::new(allowing);
        let out = provider
            .exec(&id, &run("env", &[]), ExecControl::default())
            .await
            .unwrap();
        let env = String::from_utf8(out.stdout).unwrap();
        assert!(env.contains(&format!("{probe}={worker_value}\n")), "{env}");
    }

    #[tokio::test]
    async fn sandbox_env_then_request_env_then_extra_path() {
        let root = tempfile::tempdir().unwrap();
        let bin = tempfile::tempdir().unwrap();
        let tool = bin.path().join("fleet-test-tool");
        std::fs::write(&tool, "#!/bin/sh\necho tool says $GREETING\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cfg = config(root.path());
        cfg.extra_path = vec![bin.path().to_path_buf()];
        let provider = LocalProvider::new(cfg);
        let id = provider
            .create(&SandboxSpec {
                env: BTreeMap::from([
                    ("GREETING".to_string(), "sandbox".to_string()),
                    ("KEEP".to_string(), "kept".to_string()),
                ]),
                ..Default::default()
            })
            .await
            .unwrap()
            .id;
        let mut request = sh("fleet-test-tool; echo $KEEP; echo $PATH");
        request.env.insert("GREETING".into(), "request".into());
        let out = provider
            .exec(&id, &request, ExecControl::default())
            .await
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "tool says request");
        assert_eq!(lines[1], "kept");
        assert!(lines[2].starts_with(bin.path().to_str().unwrap()), "{text}");
    }

    #[tokio::test]
    async fn shell_metacharacters_in_stdin_and_env_stay_data() {
        let query = "$(touch pwned); rm -rf ~ `id` && touch pwned2 | cat > pwned3 'x' \"y\"";
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let id = sandbox(&provider).await;
        provider
            .write_file(&id, "keep.txt", b"still here")
            .await
            .unwrap();

        let mut via_stdin = run("cat", &[]);
        via_stdin.stdin = Some(query.as_bytes().to_vec());
        let out = provider
            .exec(&id, &via_stdin, ExecControl::default())
            .await
            .unwrap();
        assert_eq!(out.stdout, query.as_bytes());

        let mut via_env = run("printenv", &["QUERY"]);
        via_env.env.insert("QUERY".into(), query.into());
        let out = provider
            .exec(&id, &via_env, ExecControl::default())
            .await
            .unwrap();
        assert_eq!(out.stdout, format!("{query}\n").as_bytes());

        let as_argument = run("echo", &[query]);
        let out = provider
            .exec(&id, &as_argument, ExecControl::default())
            .await
            .unwrap();
        assert_eq!(out.stdout, format!("{query}\n").as_bytes());

        let home = provider.home_dir(&id).unwrap();
        for name in ["pwned", "pwned2", "pwned3"] {
            assert!(!home.join(name).exists(), "{name} was created");
        }
        assert_eq!(
            provider.read_file(&id, "keep.txt").await.unwrap(),
            b"still here"
        );
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_process_group() {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let id = sandbox(&provider).await;
        let mut request = sh("sleep 100 & echo $! > kid.tmp && mv kid.tmp kid; wait");
        request.timeout = Some(Duration::from_millis(500));
        let started = Instant::now();
        let err = provider
            .exec(&id, &request, ExecControl::default())
            .await
            .unwrap_err();
        assert_eq!(err, SandboxError::Timeout(Duration::from_millis(500)));
        assert!(started.elapsed() < Duration::from_secs(10));
        let kid = pid_from(&provider, &id, "kid").await;
        wait_until("the grandchild is gone", || !is_running(kid)).await;
        assert!(provider.load_meta(&id).unwrap().groups.is_empty());
    }

    #[tokio::test]
    async fn background_children_end_with_their_command() {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let id = sandbox(&provider).await;
        let out = provider
            .exec(
                &id,
                &sh("sleep 100 & echo $! > kid.tmp && mv kid.tmp kid; echo done"),
                ExecControl::default(),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout, b"done\n");
        let kid = pid_from(&provider, &id, "kid").await;
        wait_until("the background child is gone", || !is_running(kid)).await;
    }

    #[tokio::test]
    async fn cancellation_kills_and_returns_cancelled() {
        let root = tempfile::tempdir().unwrap();
        let provider = std::sync::Arc::new(LocalProvider::new(config(root.path())));
        let id = sandbox(&provider).await;
        let cancel = CancellationToken::new();
        let task = {
            let (provider, id, cancel) = (provider.clone(), id.clone(), cancel.clone());
            tokio::spawn(async move {
                let control = ExecControl {
                    cancel,
                    output: None,
                };
                provider
                    .exec(
                        &id,
                        &sh("echo $$ > pid.tmp && mv pid.tmp pid; exec sleep 100"),
                        control,
                    )
                    .await
            })
        };
        let pid = pid_from(&provider, &id, "pid").await;
        assert!(is_running(pid));
        cancel.cancel();
        assert_eq!(task.await.unwrap().unwrap_err(), SandboxError::Cancelled);
        wait_until("the cancelled process is gone", || !is_running(pid)).await;
    }

    #[tokio::test]
    async fn dropping_the_exec_future_kills_the_group() {
        let root = tempfile::tempdir().unwrap();
        let provider = std::sync::Arc::new(LocalProvider::new(config(root.path())));
        let id = sandbox(&provider).await;
        let task = {
            let (provider, id) = (provider.clone(), id.clone());
            tokio::spawn(async move {
                provider
                    .exec(
                        &id,
                        &sh("sleep 100 & echo $! > kid.tmp && mv kid.tmp kid; wait"),
                        ExecControl::default(),
                    )
                    .await
            })
        };
        let kid = pid_from(&provider, &id, "kid").await;
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        wait_until("the grandchild is gone", || !is_running(kid)).await;
        assert!(provider.load_meta(&id).unwrap().groups.is_empty());
    }

    #[tokio::test]
    async fn output_is_truncated_at_the_limit_and_streamed_whole() {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let id = sandbox(&provider).await;
        let mut request = sh("head -c 100000 /dev/zero; head -c 50 /dev/zero >&2");
        request.max_output_bytes = 1000;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let control = ExecControl {
            output: Some(tx),
            ..Default::default()
        };
        let out = provider.exec(&id, &request, control).await.unwrap();
        assert_eq!(out.exit_code, 0);
        assert_eq!(out.stdout.len(), 1000);
        assert_eq!(out.stderr.len(), 50);
        assert!(out.truncated);
        let (mut streamed_out, mut streamed_err) = (0, 0);
        while let Ok(chunk) = rx.try_recv() {
            match chunk {
                OutputChunk::Stdout(b) => streamed_out += b.len(),
                OutputChunk::Stderr(b) => streamed_err += b.len(),
            }
        }
        assert_eq!((streamed_out, streamed_err), (100_000, 50));
    }

    #[tokio::test]
    async fn config_limit_applies_when_the_request_says_zero() {
        let root = tempfile::tempdir().unwrap();
        let mut cfg = config(root.path());
        cfg.max_output_bytes = 10;
        let provider = LocalProvider::new(cfg);
        let id = sandbox(&provider).await;
        let out = provider
            .exec(&id, &sh("echo 0123456789abcdef"), ExecControl::default())
            .await
            .unwrap();
        assert_eq!(out.stdout, b"0123456789");
        assert!(out.truncated);
    }

    #[tokio::test]
    async fn missing_program_unknown_sandbox_and_escaping_paths_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let id = sandbox(&provider).await;
        let err = provider
            .exec(
                &id,
                &run("no-such-program-xyz", &[]),
                ExecControl::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            err,
            SandboxError::Invalid("program not found: no-such-program-xyz".into())
        );
        let err = provider
            .exec(
                "lnosuchsandbox0000000",
                &run("true", &[]),
                ExecControl::default(),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, SandboxError::NotFound(_)), "{err:?}");
        let err = provider
            .exec("../../etc", &run("true", &[]), ExecControl::default())
            .await
            .unwrap_err();
        assert!(matches!(err, SandboxError::NotFound(_)), "{err:?}");

        let mut escaping = run("true", &[]);
        escaping.cwd = Some("../..".into());
        let err = provider
            .exec(&id, &escaping, ExecControl::default())
            .await
            .unwrap_err();
        assert!(matches!(err, SandboxError::Invalid(_)), "{err:?}");
        for path in ["../meta.json", "a/../../x", "/etc/passwd"] {
            let err = provider.read_file(&id, path).await.unwrap_err();
            assert!(matches!(err, SandboxError::Invalid(_)), "{path}: {err:?}");
            let err = provider.write_file(&id, path, b"x").await.unwrap_err();
            assert!(matches!(err, SandboxError::Invalid(_)), "{path}: {err:?}");
        }
        let err = provider.read_file(&id, "missing.txt").await.unwrap_err();
        assert_eq!(
            err,
            SandboxError::Invalid("file not found: missing.txt".into())
        );
    }

    #[tokio::test]
    async fn files_round_trip_with_parents_created() {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let id = sandbox(&provider).await;
        let bytes: Vec<u8> = (0..=255).collect();
        provider.write_file(&id, "a/b/c.bin", &bytes).await.unwrap();
        assert_eq!(provider.read_file(&id, "a/b/c.bin").await.unwrap(), bytes);
        provider.write_file(&id, "a/b/c.bin", b"new").await.unwrap();
        let home = provider.home_dir(&id).unwrap();
        let absolute = home.join("a/b/c.bin");
        let read = provider
            .read_file(&id, absolute.to_str().unwrap())
            .await
            .unwrap();
        assert_eq!(read, b"new");
        // What a command writes is what read_file returns, and the other way round.
        let mut request = sh("cat a/b/c.bin > copy && mkdir -p sub");
        request.cwd = Some(".".into());
        provider
            .exec(&id, &request, ExecControl::default())
            .await
            .unwrap();
        assert_eq!(provider.read_file(&id, "copy").await.unwrap(), b"new");
        let mut in_sub = run("pwd", &[]);
        in_sub.cwd = Some("sub".into());
        let out = provider
            .exec(&id, &in_sub, ExecControl::default())
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            home.join("sub").to_str().unwrap()
        );
    }

    #[tokio::test]
    async fn pause_stops_processes_and_connect_resumes_them_across_restarts() {
        let root = tempfile::tempdir().unwrap();
        let first = std::sync::Arc::new(LocalProvider::new(config(root.path())));
        let id = sandbox(&first).await;
        let task = {
            let (provider, id) = (first.clone(), id.clone());
            tokio::spawn(async move {
                provider
                    .exec(
                        &id,
                        &sh("echo $$ > pid.tmp && mv pid.tmp pid; exec sleep 100"),
                        ExecControl::default(),
                    )
                    .await
            })
        };
        let pid = pid_from(&first, &id, "pid").await;
        first.pause(&id).await.unwrap();
        wait_until("the process is stopped", || process_state(pid) == Some('T')).await;
        let err = first
            .exec(&id, &run("true", &[]), ExecControl::default())
            .await
            .unwrap_err();
        assert_eq!(err, SandboxError::Conflict("sandbox is paused".into()));

        // A restarted worker: a new provider on the same root.
        let second = LocalProvider::new(config(root.path()));
        let paused = second
            .list(&ListFilter {
                states: vec![SandboxState::Paused],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(paused.len(), 1);
        assert_eq!(paused[0].id, id);
        assert_eq!(paused[0].template, "base");
        let info = second.connect(&id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(info.state, SandboxState::Running);
        wait_until("the process runs again", || {
            matches!(process_state(pid), Some('S') | Some('R'))
        })
        .await;

        // Killing from the new provider ends the first provider's command too.
        second.kill(&id).await.unwrap();
        let err = task.await.unwrap().unwrap_err();
        assert!(matches!(err, SandboxError::NotFound(_)), "{err:?}");
        wait_until("the process is gone", || !is_running(pid)).await;
        assert!(!root.path().join(&id).exists());
    }

    #[tokio::test]
    async fn list_filters_by_metadata_and_state_and_survives_restarts() {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let demo = sandbox(&provider).await;
        let other = provider
            .create(&SandboxSpec {
                template: "other".into(),
                metadata: BTreeMap::from([(META_POOL.to_string(), "other".to_string())]),
                ..Default::default()
            })
            .await
            .unwrap()
            .id;
        provider.pause(&other).await.unwrap();
        // Not a sandbox: ignored.
        std::fs::create_dir_all(root.path().join("lhalfcreated000000000/home")).unwrap();
        std::fs::create_dir_all(root.path().join("notes")).unwrap();

        let restarted = LocalProvider::new(config(root.path()));
        let all = restarted.list(&ListFilter::default()).await.unwrap();
        let mut expected = vec![demo.clone(), other.clone()];
        expected.sort();
        assert_eq!(
            all.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
            expected
        );

        let by_pool = restarted
            .list(&ListFilter {
                metadata: BTreeMap::from([(META_POOL.to_string(), "demo".to_string())]),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(by_pool.len(), 1);
        assert_eq!(by_pool[0].id, demo);
        assert_eq!(by_pool[0].state, SandboxState::Running);

        let running = restarted
            .list(&ListFilter {
                states: vec![SandboxState::Running],
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(running.len(), 1);
        assert_eq!(running[0].id, demo);

        let none = LocalProvider::new(config(&root.path().join("never-created")));
        assert!(none.list(&ListFilter::default()).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn kill_removes_the_sandbox_and_killing_a_missing_one_is_ok() {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let id = sandbox(&provider).await;
        provider.kill(&id).await.unwrap();
        assert!(!root.path().join(&id).exists());
        provider.kill(&id).await.unwrap();
        provider.kill("lnosuchsandbox0000000").await.unwrap();
        provider.kill("not-an-id").await.unwrap();
        let err = provider
            .connect(&id, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(err, SandboxError::NotFound(_)));
        assert!(matches!(
            provider.pause(&id).await.unwrap_err(),
            SandboxError::NotFound(_)
        ));
        assert!(matches!(
            provider.write_file(&id, "x", b"x").await.unwrap_err(),
            SandboxError::NotFound(_)
        ));
    }

    #[tokio::test]
    async fn timeouts_are_recorded() {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(config(root.path()));
        let id = sandbox(&provider).await;
        let before = now_ms();
        provider
            .set_timeout(&id, Duration::from_secs(3600))
            .await
            .unwrap();
        let deadline = provider.load_meta(&id).unwrap().deadline_ms;
        assert!(deadline >= before + 3_600_000, "{deadline}");
        // connect only ever lengthens the lifetime.
        provider.connect(&id, Duration::from_secs(1)).await.unwrap();
        assert_eq!(provider.load_meta(&id).unwrap().deadline_ms, deadline);
    }

    #[test]
    fn paths_resolve_inside_the_home() {
        let home = Path::new("/srv/sb/l1/home");
        assert_eq!(resolve_in_home(home, "a/./b").unwrap(), home.join("a/b"));
        assert_eq!(resolve_in_home(home, "a/../b").unwrap(), home.join("b"));
        assert_eq!(
            resolve_in_home(home, "/srv/sb/l1/home/x").unwrap(),
            home.join("x")
        );
        assert!(resolve_in_home(home, "..").is_err());
        assert!(resolve_in_home(home, "/srv/sb/l1/meta.json").is_err());
    }
}
