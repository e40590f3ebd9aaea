//! A minimal [`SandboxProvider`] for the fake E2B server to run commands with:
//! one directory per sandbox under a temporary root, commands run directly (no
//! shell) in their own process group with a cleared environment.
//!
//! It exists so the fake and its tests do not depend on the real local provider
//! (`fleet_shared::sandbox::local`, written separately); the fake accepts any
//! provider. It is no isolation boundary: commands run as the test's user.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fleet_shared::sandbox::{
    ExecControl, ExecOutput, ExecRequest, ListFilter, OutputChunk, SandboxError, SandboxInfo,
    SandboxProvider, SandboxSpec, SandboxState,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const DEFAULT_MAX_OUTPUT: usize = 1 << 20;

struct Entry {
    dir: PathBuf,
    template: String,
    metadata: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    paused: bool,
}

/// Sandboxes as directories. Dropping the provider deletes them all.
pub struct DirProvider {
    root: tempfile::TempDir,
    sandboxes: Mutex<HashMap<String, Entry>>,
    next: AtomicU64,
}

impl DirProvider {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            root: tempfile::Builder::new().prefix("fake-e2b-").tempdir()?,
            sandboxes: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        })
    }

    /// The directory of a sandbox (for tests that look at files directly).
    pub fn dir(&self, id: &str) -> Option<PathBuf> {
        self.sandboxes
            .lock()
            .unwrap()
            .get(id)
            .map(|e| e.dir.clone())
    }

    fn running(&self, id: &str) -> Result<(PathBuf, BTreeMap<String, String>), SandboxError> {
        let s = self.sandboxes.lock().unwrap();
        match s.get(id) {
            None => Err(SandboxError::NotFound(id.to_string())),
            Some(e) if e.paused => Err(SandboxError::Conflict(format!("{id} is paused"))),
            Some(e) => Ok((e.dir.clone(), e.env.clone())),
        }
    }
}

/// `path` inside `dir`: relative paths from the sandbox's home (its directory),
/// absolute ones from its root (also its directory); `..` is refused.
fn inside(dir: &Path, path: &str) -> Result<PathBuf, SandboxError> {
    let mut out = dir.to_path_buf();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(SandboxError::Invalid(format!(
                    "path {path:?} leaves the sandbox"
                )));
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl SandboxProvider for DirProvider {
    fn name(&self) -> &'static str {
        "dir"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<SandboxInfo, SandboxError> {
        let id = format!("dir{}", self.next.fetch_add(1, Ordering::SeqCst));
        let dir = self.root.path().join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| SandboxError::Unavailable(e.to_string()))?;
        self.sandboxes.lock().unwrap().insert(
            id.clone(),
            Entry {
                dir,
                template: spec.template.clone(),
                metadata: spec.metadata.clone(),
                env: spec.env.clone(),
                paused: false,
            },
        );
        Ok(SandboxInfo {
            id,
            state: SandboxState::Running,
            template: spec.template.clone(),
            metadata: spec.metadata.clone(),
        })
    }

    async fn connect(&self, id: &str, _timeout: Duration) -> Result<SandboxInfo, SandboxError> {
        let mut s = self.sandboxes.lock().unwrap();
        let e = s
            .get_mut(id)
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        e.paused = false;
        Ok(SandboxInfo {
            id: id.to_string(),
            state: SandboxState::Running,
            template: e.template.clone(),
            metadata: e.metadata.clone(),
        })
    }

    async fn pause(&self, id: &str) -> Result<(), SandboxError> {
        let mut s = self.sandboxes.lock().unwrap();
        let e = s
            .get_mut(id)
            .ok_or_else(|| SandboxError::NotFound(id.to_string()))?;
        e.paused = true;
        Ok(())
    }

    async fn kill(&self, id: &str) -> Result<(), SandboxError> {
        if let Some(e) = self.sandboxes.lock().unwrap().remove(id) {
            let _ = std::fs::remove_dir_all(e.dir);
        }
        Ok(())
    }

    async fn set_timeout(&self, id: &str, _timeout: Duration) -> Result<(), SandboxError> {
        self.running(id).map(drop)
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<SandboxInfo>, SandboxError> {
        let s = self.sandboxes.lock().unwrap();
        Ok(s.iter()
            .map(|(id, e)| SandboxInfo {
                id: id.clone(),
                state: if e.paused {
                    SandboxState::Paused
                } else {
                    SandboxState::Running
                },
                template: e.template.clone(),
                metadata: e.metadata.clone(),
            })
            .filter(|i| filter.states.is_empty() || filter.states.contains(&i.state))
            .filter(|i| {
                filter
                    .metadata
                    .iter()
                    .all(|(k, v)| i.metadata.get(k) == Some(v))
            })
            .collect())
    }

    async fn exec(
        &self,
        id: &str,
        req: &ExecRequest,
        control: ExecControl,
    ) -> Result<ExecOutput, SandboxError> {
        let (dir, env) = self.running(id)?;
        let started = Instant::now();
        let cwd = match &req.cwd {
            Some(c) => inside(&dir, c)?,
            None => dir.clone(),
        };
        let mut cmd = Command::new(&req.program);
        cmd.args(&req.args)
            .current_dir(&cwd)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", &dir)
            .envs(&env)
            .envs(&req.env)
            .stdin(if req.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .map_err(|e| SandboxError::Invalid(format!("cannot start {:?}: {e}", req.program)))?;
        let pgid = child.id().map(|p| p as i32);
        if let (Some(data), Some(mut stdin)) = (req.stdin.clone(), child.stdin.take()) {
            tokio::spawn(async move {
                let _ = stdin.write_all(&data).await;
            });
        }
        let max = if req.max_output_bytes == 0 {
            DEFAULT_MAX_OUTPUT
        } else {
            req.max_output_bytes
        };
        let out = pump(
            child.stdout.take().unwrap(),
            max,
            control.output.clone(),
            OutputChunk::Stdout,
        );
        let err = pump(
            child.stderr.take().unwrap(),
            max,
            control.output.clone(),
            OutputChunk::Stderr,
        );
        let run = async {
            let (out, err, status) = tokio::join!(out, err, child.wait());
            (out, err, status)
        };
        let timer = async {
            match req.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let killpg = || {
            if let Some(p) = pgid {
                // SAFETY: plain syscall on a process group we started.
                unsafe { libc::killpg(p, libc::SIGKILL) };
            }
        };
        tokio::select! {
            _ = control.cancel.cancelled() => { killpg(); Err(SandboxError::Cancelled) }
            _ = timer => { killpg(); Err(SandboxError::Timeout(req.timeout.unwrap_or_default())) }
            ((stdout, t1), (stderr, t2), status) = run => {
                let status = status.map_err(|e| SandboxError::Unavailable(e.to_string()))?;
                use std::os::unix::process::ExitStatusExt;
                let exit_code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                Ok(ExecOutput { exit_code, stdout, stderr, truncated: t1 || t2, duration: started.elapsed() })
            }
        }
    }

    async fn write_file(&self, id: &str, path: &str, contents: &[u8]) -> Result<(), SandboxError> {
        let (dir, _) = self.running(id)?;
        let p = inside(&dir, path)?;
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        }
        std::fs::write(&p, contents).map_err(|e| SandboxError::Invalid(e.to_string()))
    }

    async fn read_file(&self, id: &str, path: &str) -> Result<Vec<u8>, SandboxError> {
        let (dir, _) = self.running(id)?;
        std::fs::read(inside(&dir, path)?)
            .map_err(|e| SandboxError::Invalid(format!("{path}: {e}")))
    }
}

/// Read a pipe to its end, keeping `max` bytes and forwarding what is kept.
async fn pump(
    mut r: impl AsyncRead + Unpin,
    max: usize,
    tx: Option<tokio::sync::mpsc::UnboundedSender<OutputChunk>>,
    wrap: fn(Vec<u8>) -> OutputChunk,
) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let take = n.min(max - kept.len());
        truncated |= take < n;
        if take > 0 {
            kept.extend_from_slice(&buf[..take]);
            if let Some(tx) = &tx {
                let _ = tx.send(wrap(buf[..take].to_vec()));
            }
        }
    }
    (kept, truncated)
}
