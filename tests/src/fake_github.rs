//! A fake GitHub REST API over real HTTP, for the GitHub client, notifier and publish
//! tests. It answers the calls the fleet makes with the shapes GitHub documents:
//!
//! - `GET /repos/{o}/{r}` → `{id, full_name, default_branch}`
//! - `GET /repos/{o}/{r}/git/ref/heads/{branch}` → `{ref, object: {sha}}` or 404
//! - `POST /repos/{o}/{r}/git/refs` `{ref, sha}` → 201 (422 if it exists)
//! - `GET|PUT /repos/{o}/{r}/contents/{path}[?ref=]` → `{sha, content (base64)}` /
//!   `{content: {sha}, commit: {sha}}` (201 new, 200 updated; 409 without the
//!   current `sha`, 422 with a stale one)
//! - `GET /repos/{o}/{r}/pulls?state=open&head=owner:branch`, `POST …/pulls`
//!   (422 if an open one exists for the head), `PATCH …/pulls/{n}`
//! - `GET|POST /repos/{o}/{r}/issues/{n}/comments` (listings paginated with `Link`)
//! - `POST /repos/{o}/{r}/hooks` → 201 `{id, config}`
//! - `POST /app/installations/{id}/access_tokens` (Bearer: an RS256 JWT checked with
//!   the app's public key) → 201 `{token, expires_at}`
//!
//! Every request must carry `Authorization: Bearer <token>`, a `User-Agent`, and
//! `Accept: application/vnd.github+json` (else 401/403/415, as GitHub would). Each
//! request is recorded. Faults are injected by queueing answers: a primary rate
//! limit (403 with `x-ratelimit-remaining: 0` and a reset time), a `retry-after`
//! (403 or 429), a secondary limit (403 without either), or any status.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub status: u16,
    pub body: Value,
    pub at: Instant,
}

/// A canned answer for the next matching request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 403, `x-ratelimit-remaining: 0`, reset this many seconds from now.
    PrimaryLimit { reset_in_secs: u64 },
    /// This status with `retry-after`.
    RetryAfter { status: u16, secs: u64 },
    /// 403 "You have exceeded a secondary rate limit", no timing headers.
    Secondary,
    /// Any status with a JSON message.
    Status(u16),
}

#[derive(Debug, Clone, Default)]
pub struct Repo {
    pub id: u64,
    pub default_branch: String,
    /// branch → head commit
    pub refs: BTreeMap<String, String>,
    /// (branch, path) → (blob sha, content)
    pub files: BTreeMap<(String, String), (String, Vec<u8>)>,
    pub pulls: Vec<Value>,
    /// issue number → comments
    pub comments: BTreeMap<u64, Vec<Value>>,
    pub hooks: Vec<Value>,
}

#[derive(Default)]
struct Inner {
    repos: BTreeMap<String, Repo>,
    requests: Vec<Recorded>,
    faults: Vec<(String, Fault)>,
    counter: u64,
    /// Installation tokens minted (token, expires_at seconds).
    minted: Vec<String>,
    /// Seconds an installation token lives (GitHub: 3600).
    token_lifetime_secs: u64,
    /// Largest page of a listing (GitHub: 100); smaller to test pagination.
    max_per_page: usize,
}

pub struct FakeGithub {
    pub addr: SocketAddr,
    token: String,
    /// PKCS#1 DER of the App's public key, when App auth is tested.
    app_public_key: Mutex<Option<Vec<u8>>>,
    inner: Mutex<Inner>,
}

pub struct FakeGithubServer {
    pub state: Arc<FakeGithub>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGithubServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::ops::Deref for FakeGithubServer {
    type Target = FakeGithub;
    fn deref(&self) -> &FakeGithub {
        &self.state
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn utc(secs: u64) -> String {
    // Civil from days (Howard Hinnant), enough for test timestamps.
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl FakeGithub {
    /// Serve on a free port; requests must carry `Bearer <token>`.
    pub async fn start(token: &str) -> FakeGithubServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(FakeGithub {
            addr,
            token: token.to_string(),
            app_public_key: Mutex::new(None),
            inner: Mutex::new(Inner {
                token_lifetime_secs: 3600,
                max_per_page: 100,
                ..Default::default()
            }),
        });
        let app = Router::new().fallback(handle).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGithubServer { state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A repository with one commit on its default branch `main`.
    pub fn add_repo(&self, full_name: &str) {
        let mut inner = self.inner.lock().unwrap();
        inner.counter += 1;
        let id = 1000 + inner.counter;
        let mut repo = Repo {
            id,
            default_branch: "main".into(),
            ..Default::default()
        };
        repo.refs.insert("main".into(), format!("{:040x}", id));
        inner.repos.insert(full_name.to_lowercase(), repo);
    }

    pub fn repo(&self, full_name: &str) -> Repo {
        self.inner.lock().unwrap().repos[&full_name.to_lowercase()].clone()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn comments(&self, full_name: &str, issue: u64) -> Vec<Value> {
        self.repo(full_name)
            .comments
            .get(&issue)
            .cloned()
            .unwrap_or_default()
    }

    /// Answer the next request whose path starts with `path_prefix` with `fault`
    /// (faults queue in order).
    pub fn inject(&self, path_prefix: &str, fault: Fault) {
        self.inner
            .lock()
            .unwrap()
            .faults
            .push((path_prefix.to_string(), fault));
    }

    /// Accept App JWTs signed by this key; tokens minted live `lifetime_secs`.
    pub fn accept_app(&self, public_key_der: Vec<u8>, lifetime_secs: u64) {
        *self.app_public_key.lock().unwrap() = Some(public_key_der);
        self.inner.lock().unwrap().token_lifetime_secs = lifetime_secs;
    }

    /// Listings return at most `n` items a page (with `Link` to the next).
    pub fn set_max_per_page(&self, n: usize) {
        self.inner.lock().unwrap().max_per_page = n;
    }

    pub fn minted(&self) -> Vec<String> {
        self.inner.lock().unwrap().minted.clone()
    }

    fn verify_jwt(&self, jwt: &str) -> bool {
        let Some(key) = self.app_public_key.lock().unwrap().clone() else {
            return false;
        };
        let mut parts = jwt.rsplitn(2, '.');
        let (Some(sig), Some(signed)) = (parts.next(), parts.next()) else {
            return false;
        };
        let Ok(sig) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(sig) else {
            return false;
        };
        let verified = ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            key,
        )
        .verify(signed.as_bytes(), &sig)
        .is_ok();
        let claims = signed
            .split('.')
            .nth(1)
            .and_then(|c| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(c)
                    .ok()
            })
            .and_then(|c| serde_json::from_slice::<Value>(&c).ok())
            .unwrap_or(Value::Null);
        let now = now_secs();
        verified
            && claims["iat"].as_u64().is_some_and(|iat| iat <= now)
            && claims["exp"]
                .as_u64()
                .is_some_and(|exp| exp > now && exp <= now + 600)
    }
}

fn answer(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

fn fault_response(fault: &Fault) -> Response {
    let mut response = match fault {
        Fault::PrimaryLimit { .. } => answer(403, json!({"message": "API rate limit exceeded"})),
        Fault::RetryAfter { status, .. } => answer(
            *status,
            json!({"message": "You have exceeded a rate limit"}),
        ),
        Fault::Secondary => answer(
            403,
            json!({"message": "You have exceeded a secondary rate limit. Please wait a few minutes before you try again."}),
        ),
        Fault::Status(s) => answer(*s, json!({"message": "injected"})),
    };
    let h = response.headers_mut();
    match fault {
        Fault::PrimaryLimit { reset_in_secs } => {
            h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
            h.insert("x-ratelimit-limit", HeaderValue::from_static("5000"));
            h.insert(
                "x-ratelimit-reset",
                HeaderValue::from(now_secs() + reset_in_secs),
            );
        }
        Fault::RetryAfter { secs, .. } => {
            h.insert("retry-after", HeaderValue::from(*secs));
        }
        _ => {}
    }
    response
}

async fn handle(
    State(gh): State<Arc<FakeGithub>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path_and_query = uri
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let body_json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let response = route(&gh, &method, &uri, &headers, &body_json);
    gh.inner.lock().unwrap().requests.push(Recorded {
        method: method.to_string(),
        path: path_and_query,
        status: response.status().as_u16(),
        body: body_json,
        at: Instant::now(),
    });
    response
}

fn route(
    gh: &FakeGithub,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Value,
) -> Response {
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
    if header("user-agent").is_empty() {
        return answer(
            403,
            json!({"message": "Request forbidden by administrative rules. Please make sure your request has a User-Agent header"}),
        );
    }
    if header("accept") != "application/vnd.github+json"
        || header("x-github-api-version") != "2022-11-28"
    {
        return answer(
            415,
            json!({"message": "expected GitHub's Accept and X-GitHub-Api-Version headers"}),
        );
    }
    let path = uri.path().to_string();
    let query: BTreeMap<String, String> = uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let bearer = header("authorization")
        .strip_prefix("Bearer ")
        .unwrap_or("");
    // The App's token exchange is authenticated by its JWT.
    if method == Method::POST
        && path.starts_with("/app/installations/")
        && path.ends_with("/access_tokens")
    {
        if !gh.verify_jwt(bearer) {
            return answer(
                401,
                json!({"message": "A JSON web token could not be decoded"}),
            );
        }
        let mut inner = gh.inner.lock().unwrap();
        inner.counter += 1;
        let token = format!("ghs_minted{}", inner.counter);
        inner.minted.push(token.clone());
        let expires = now_secs() + inner.token_lifetime_secs;
        return answer(201, json!({"token": token, "expires_at": utc(expires)}));
    }
    let authorized =
        bearer == gh.token || gh.inner.lock().unwrap().minted.iter().any(|t| t == bearer);
    if !authorized {
        return answer(401, json!({"message": "Bad credentials"}));
    }
    {
        let mut inner = gh.inner.lock().unwrap();
        if let Some(i) = inner
            .faults
            .iter()
            .position(|(p, _)| path.starts_with(p.as_str()))
        {
            let (_, fault) = inner.faults.remove(i);
            return fault_response(&fault);
        }
    }
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .to_string()
        })
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    if segs.len() < 3 || segs[0] != "repos" {
        return answer(404, json!({"message": "Not Found"}));
    }
    let full = format!("{}/{}", segs[1], segs[2]).to_lowercase();
    let mut inner = gh.inner.lock().unwrap();
    inner.counter += 1;
    let n = inner.counter;
    let inner_max_per_page = inner.max_per_page;
    let Some(repo) = inner.repos.get_mut(&full) else {
        return answer(404, json!({"message": "Not Found"}));
    };
    let rest = &segs[3..];
    match (method.as_str(), rest) {
        ("GET", []) => answer(
            200,
            json!({"id": repo.id, "full_name": full, "default_branch": repo.default_branch}),
        ),
        ("GET", ["git", "ref", "heads", branch @ ..]) => {
            let branch = branch.join("/");
            match repo.refs.get(&branch) {
                Some(sha) => answer(
                    200,
                    json!({"ref": format!("refs/heads/{branch}"), "object": {"sha": sha, "type": "commit"}}),
                ),
                None => answer(404, json!({"message": "Not Found"})),
            }
        }
        ("POST", ["git", "refs"]) => {
            let r = body["ref"].as_str().unwrap_or("");
            let sha = body["sha"].as_str().unwrap_or("");
            let Some(branch) = r.strip_prefix("refs/heads/") else {
                return answer(422, json!({"message": "Reference name is invalid"}));
            };
            if repo.refs.contains_key(branch) {
                return answer(422, json!({"message": "Reference already exists"}));
            }
            repo.refs.insert(branch.to_string(), sha.to_string());
            answer(201, json!({"ref": r, "object": {"sha": sha}}))
        }
        ("GET", ["contents", file @ ..]) => {
            let branch = query
                .get("ref")
                .cloned()
                .unwrap_or(repo.default_branch.clone());
            match repo.files.get(&(branch, file.join("/"))) {
                Some((sha, content)) => answer(
                    200,
                    json!({"type": "file", "sha": sha, "encoding": "base64",
                           "content": base64::engine::general_purpose::STANDARD.encode(content)}),
                ),
                None => answer(404, json!({"message": "Not Found"})),
            }
        }
        ("PUT", ["contents", file @ ..]) => {
            let file = file.join("/");
            let branch = body["branch"]
                .as_str()
                .unwrap_or(&repo.default_branch)
                .to_string();
            if !repo.refs.contains_key(&branch) {
                return answer(404, json!({"message": "Branch not found"}));
            }
            let Some(content) = body["content"]
                .as_str()
                .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
            else {
                return answer(422, json!({"message": "content is not valid Base64"}));
            };
            let key = (branch.clone(), file.clone());
            let existing = repo.files.get(&key).map(|(sha, _)| sha.clone());
            match (&existing, body["sha"].as_str()) {
                (Some(_), None) => {
                    return answer(
                        422,
                        json!({"message": "Invalid request.\n\n\"sha\" wasn't supplied."}),
                    );
                }
                (Some(current), Some(given)) if current != given => {
                    return answer(
                        409,
                        json!({"message": format!("{file} does not match {given}")}),
                    );
                }
                _ => {}
            }
            let blob = format!("{:040x}", n * 7919);
            let commit = format!("{:040x}", n * 104729);
            repo.files.insert(key, (blob.clone(), content));
            repo.refs.insert(branch, commit.clone());
            answer(
                if existing.is_some() { 200 } else { 201 },
                json!({"content": {"path": file, "sha": blob}, "commit": {"sha": commit}}),
            )
        }
        ("GET", ["pulls"]) => {
            let head = query.get("head").cloned();
            let open: Vec<Value> = repo
                .pulls
                .iter()
                .filter(|p| p["state"] == "open")
                .filter(|p| {
                    head.as_ref().is_none_or(|h| {
                        h.split_once(':').map(|(_, b)| b) == p["head"]["ref"].as_str()
                    })
                })
                .cloned()
                .collect();
            answer(200, Value::Array(open))
        }
        ("POST", ["pulls"]) => {
            let head = body["head"].as_str().unwrap_or("").to_string();
            if repo
                .pulls
                .iter()
                .any(|p| p["state"] == "open" && p["head"]["ref"] == head.as_str())
            {
                return answer(
                    422,
                    json!({"message": format!("A pull request already exists for {head}.")}),
                );
            }
            let number = repo.pulls.len() as u64 + 1;
            let pr = json!({"number": number, "state": "open", "title": body["title"], "body": body["body"],
                            "head": {"ref": head}, "base": {"ref": body["base"]},
                            "html_url": format!("https://github.com/{full}/pull/{number}")});
            repo.pulls.push(pr.clone());
            answer(201, pr)
        }
        ("PATCH", ["pulls", number]) => {
            let Some(pr) = repo
                .pulls
                .iter_mut()
                .find(|p| number.parse::<u64>().ok() == p["number"].as_u64())
            else {
                return answer(404, json!({"message": "Not Found"}));
            };
            for field in ["title", "body"] {
                if !body[field].is_null() {
                    pr[field] = body[field].clone();
                }
            }
            answer(200, pr.clone())
        }
        ("POST", ["issues", number, "comments"]) => {
            let Ok(number) = number.parse::<u64>() else {
                return answer(404, json!({"message": "Not Found"}));
            };
            let comment = json!({"id": n, "body": body["body"], "user": {"login": "fleet-bot", "type": "Bot"}});
            repo.comments
                .entry(number)
                .or_default()
                .push(comment.clone());
            answer(201, comment)
        }
        ("GET", ["issues", number, "comments"]) => {
            let Ok(number) = number.parse::<u64>() else {
                return answer(404, json!({"message": "Not Found"}));
            };
            let all = repo.comments.get(&number).cloned().unwrap_or_default();
            let max = inner_max_per_page;
            let per_page: usize = query
                .get("per_page")
                .and_then(|p| p.parse().ok())
                .unwrap_or(30)
                .min(max);
            let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
            let items: Vec<Value> = all
                .iter()
                .skip((page - 1) * per_page)
                .take(per_page)
                .cloned()
                .collect();
            let mut response = answer(200, Value::Array(items));
            if page * per_page < all.len() {
                let next = format!(
                    "<http://{}{path}?per_page={per_page}&page={}>; rel=\"next\"",
                    gh.addr,
                    page + 1
                );
                response
                    .headers_mut()
                    .insert("link", HeaderValue::from_str(&next).unwrap());
            }
            response
        }
        ("POST", ["hooks"]) => {
            let hook = json!({"id": n, "name": body["name"], "active": body["active"],
                              "events": body["events"], "config": body["config"]});
            repo.hooks.push(hook.clone());
            answer(201, hook)
        }
        _ => answer(404, json!({"message": "Not Found"})),
    }
}
