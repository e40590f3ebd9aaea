//! A private git repository over smart HTTP, for the checkout tests: `git
//! http-backend` (git's own CGI server) behind a small axum server that demands
//! `Authorization: Basic` with one token as the password, like GitHub does for a
//! private repo. Every request is recorded (whether it carried the right token),
//! so a test can show git really went through the credential path: a first request
//! without credentials gets 401, the next one carries the token.
//!
//! Repositories are bare, under `root/<owner>/<name>.git`; [`GitHttpServer::commit`]
//! pushes a new commit to one from a scratch working copy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use base64::Engine as _;
use tokio::io::AsyncWriteExt;

/// One request the server saw.
#[derive(Debug, Clone)]
pub struct GitRequest {
    pub method: String,
    pub path: String,
    /// An `Authorization` header was sent.
    pub had_credentials: bool,
    /// It carried the right token.
    pub authorized: bool,
}

struct ServerState {
    root: PathBuf,
    token: String,
    requests: Mutex<Vec<GitRequest>>,
    /// Each upload-pack answer waits this long first (a slow server: keeps git's
    /// processes alive long enough to be seen in the process list).
    delay: Mutex<Duration>,
}

pub struct GitHttpServer {
    pub addr: SocketAddr,
    pub root: tempfile::TempDir,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=fleet-test",
            "-c",
            "user.email=fleet-test@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .expect("git is installed");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl GitHttpServer {
    /// Serve an empty root; every request must carry `token`.
    pub async fn start(token: &str) -> GitHttpServer {
        let root = tempfile::Builder::new()
            .prefix("fleet-git-")
            .tempdir()
            .unwrap();
        let state = Arc::new(ServerState {
            root: root.path().to_path_buf(),
            token: token.to_string(),
            requests: Mutex::default(),
            delay: Mutex::new(Duration::ZERO),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitHttpServer {
            addr,
            root,
            state,
            task,
        }
    }

    /// The clone URL of `owner/name` (no credentials in it).
    pub fn url(&self, repo: &str) -> String {
        format!("http://{}/{repo}.git", self.addr)
    }

    /// Create the bare repo `owner/name` with one commit holding `files`; its commit ID.
    pub fn create_repo(&self, repo: &str, files: &[(&str, &str)]) -> String {
        let bare = self.root.path().join(format!("{repo}.git"));
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "-q", "--bare"]);
        // Fetching a commit by its ID works over protocol v2; allow it on v0 too.
        git(
            &bare,
            &["config", "uploadpack.allowReachableSHA1InWant", "true"],
        );
        git(&bare, &["config", "http.receivepack", "false"]);
        self.commit(repo, files, "first")
    }

    /// Commit `files` (written over the current tree) to `main` of `repo`; the commit ID.
    pub fn commit(&self, repo: &str, files: &[(&str, &str)], message: &str) -> String {
        let bare = self.root.path().join(format!("{repo}.git"));
        let work = tempfile::tempdir().unwrap();
        let has_commits = Command::new("git")
            .args(["rev-parse", "--verify", "-q", "main"])
            .current_dir(&bare)
            .output()
            .unwrap()
            .status
            .success();
        if has_commits {
            git(work.path(), &["clone", "-q", bare.to_str().unwrap(), "."]);
        } else {
            git(work.path(), &["init", "-q"]);
        }
        for (name, content) in files {
            let path = work.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        git(work.path(), &["add", "-A"]);
        git(work.path(), &["commit", "-q", "-m", message]);
        git(
            work.path(),
            &["push", "-q", bare.to_str().unwrap(), "HEAD:refs/heads/main"],
        );
        git(work.path(), &["rev-parse", "HEAD"])
    }

    pub fn requests(&self) -> Vec<GitRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().unwrap() = delay;
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn authorized(headers: &HeaderMap, token: &str) -> (bool, bool) {
    let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return (false, false);
    };
    let ok = value
        .strip_prefix("Basic ")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|d| d.split_once(':').map(|(_, p)| p == token))
        .unwrap_or(false);
    (true, ok)
}

async fn handle(
    State(state): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (had_credentials, ok) = authorized(&headers, &state.token);
    state.requests.lock().unwrap().push(GitRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        had_credentials,
        authorized: ok,
    });
    if !ok {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header("WWW-Authenticate", "Basic realm=\"fleet-test\"")
            .body(Body::from("authentication required\n"))
            .unwrap();
    }
    let delay = *state.delay.lock().unwrap();
    if uri.path().ends_with("git-upload-pack") && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &state.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("REMOTE_USER", "fleet-test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("CONTENT_LENGTH", body.len().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(ct) = headers.get("content-type").and_then(|v| v.to_str().ok()) {
        cmd.env("CONTENT_TYPE", ct);
    }
    if let Some(p) = headers.get("git-protocol").and_then(|v| v.to_str().ok()) {
        cmd.env("GIT_PROTOCOL", p);
    }
    if let Some(enc) = headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        cmd.env("HTTP_CONTENT_ENCODING", enc);
    }
    let mut child = cmd.spawn().expect("git http-backend");
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.expect("http-backend output");
    let _ = writer.await;
    cgi_response(&out.stdout)
}

/// A CGI answer (headers, blank line, body) as an HTTP response.
fn cgi_response(raw: &[u8]) -> Response {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let Some((end, sep)) = split else {
        return Response::builder()
            .status(500)
            .body(Body::from("bad CGI output"))
            .unwrap();
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut builder = Response::builder().status(200);
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(200);
            builder = builder.status(code);
        } else {
            builder = builder.header(name.trim(), value);
        }
    }
    builder.body(Body::from(raw[end + sep..].to_vec())).unwrap()
}
