//! Webhook deliveries: the signature check, and what each event asks for.
//!
//! [`verify_signature`] checks `X-Hub-Signature-256: sha256=<hex>` — HMAC-SHA256 of
//! the raw body with the webhook secret — in constant time; the caller answers 401
//! before parsing anything when it fails. [`plan`] turns a verified delivery into
//! jobs, purely (no I/O), so each rule is unit-tested:
//!
//! - `ping`: answered.
//! - `push` to a tracked branch of a tracked repo: one `refresh` lifecycle job per
//!   agent profile that follows that branch, at the pushed commit.
//! - `issues` (`opened`, `labeled`, `edited`, `reopened`) of an open issue carrying
//!   the research label, and `issue_comment` (`created`, `edited`) starting with
//!   `/research`: one research job, whose metadata asks the worker to comment the
//!   answer on the issue. Idempotency keys come from the repository, issue and
//!   comment IDs, so a redelivery or an edit finds the job already there.
//! - anything else: acknowledged and ignored.

use std::collections::BTreeMap;

use serde_json::Value;

use super::RepoName;
use crate::job::{JobSpec, LifecycleJob};
use crate::runtime::checkout::{is_commit_id, is_git_url};
use crate::settings::{AgentProfile, GithubSettings};

/// Metadata keys of a research job that came from an issue: the worker comments its
/// answer there (`notify.rs`).
pub const META_NOTIFY: &str = "notify";
pub const NOTIFY_GITHUB: &str = "github-issue";
pub const META_REPO: &str = "github_repo";
pub const META_ISSUE: &str = "github_issue";

/// Why a signature was refused (the answer is 401 whichever it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Mismatch,
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SignatureError::Missing => "no X-Hub-Signature-256 header",
            SignatureError::Malformed => "X-Hub-Signature-256 is not sha256=<64 hex digits>",
            SignatureError::Mismatch => "X-Hub-Signature-256 does not match the body",
        })
    }
}

/// Check `X-Hub-Signature-256` against the raw body, in constant time.
pub fn verify_signature(
    secret: &[u8],
    body: &[u8],
    header: Option<&str>,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex = header
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed)?;
    if hex.len() != 64 {
        return Err(SignatureError::Malformed);
    }
    let mut given = [0u8; 32];
    for (i, byte) in given.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
            .map_err(|_| SignatureError::Malformed)?;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    // ring compares in constant time.
    ring::hmac::verify(&key, body, &given).map_err(|_| SignatureError::Mismatch)
}

/// `sha256=<hex>` of `body` (for tests and `fleet github` tooling).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What a delivery asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// `ping`: nothing to do but answer.
    Pong,
    /// Acknowledged, nothing to do (the reason is returned to GitHub).
    Ignore(String),
    /// Lifecycle jobs (refresh).
    Lifecycle(Vec<JobSpec>),
    /// One research job from an issue or a comment.
    Research(Box<JobSpec>),
}

/// What [`plan`] needs from the settings.
pub struct PlanContext<'a> {
    pub github: &'a GithubSettings,
    pub agents: &'a BTreeMap<String, AgentProfile>,
    pub default_agent: &'a str,
    /// Queries longer than this are cut (on a character boundary).
    pub max_query_bytes: usize,
}

impl PlanContext<'_> {
    /// Whether deliveries of `repo` are acted on.
    fn tracked(&self, repo: &RepoName) -> bool {
        let listed = self.github.tracked_repos();
        if listed.is_empty() {
            self.agents
                .values()
                .any(|p| profile_repo(p).is_some_and(|r| r.same_as(repo)))
        } else {
            listed.iter().any(|r| r.same_as(repo))
        }
    }
}

/// The GitHub repository an agent profile's git URL names.
pub fn profile_repo(profile: &AgentProfile) -> Option<RepoName> {
    let repo = profile.repo.trim();
    is_git_url(repo)
        .then(|| RepoName::from_git_url(repo))
        .flatten()
}

/// The jobs a verified delivery asks for.
pub fn plan(event: &str, payload: &Value, ctx: &PlanContext) -> Plan {
    match event {
        "ping" => Plan::Pong,
        "push" => plan_push(payload, ctx),
        "issues" => plan_issue(payload, ctx),
        "issue_comment" => plan_comment(payload, ctx),
        other => Plan::Ignore(format!("event {other:?} is not handled")),
    }
}

fn repository(payload: &Value) -> Option<(RepoName, u64)> {
    let repo = RepoName::parse(payload["repository"]["full_name"].as_str()?).ok()?;
    let id = payload["repository"]["id"].as_u64().unwrap_or(0);
    Some((repo, id))
}

fn plan_push(payload: &Value, ctx: &PlanContext) -> Plan {
    let Some((repo, _)) = repository(payload) else {
        return Plan::Ignore("no repository in the payload".into());
    };
    if !ctx.tracked(&repo) {
        return Plan::Ignore(format!("{repo} is not tracked"));
    }
    let Some(branch) = payload["ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("refs/heads/"))
    else {
        return Plan::Ignore("not a branch push".into());
    };
    if payload["deleted"].as_bool() == Some(true) {
        return Plan::Ignore(format!("branch {branch} was deleted"));
    }
    let Some(commit) = payload["after"].as_str().filter(|c| is_commit_id(c)) else {
        return Plan::Ignore("the push names no commit".into());
    };
    let default_branch = payload["repository"]["default_branch"]
        .as_str()
        .unwrap_or("");
    let branches = &ctx.github.branches;
    if !branches.is_empty() && !branches.iter().any(|b| b == branch) {
        return Plan::Ignore(format!("branch {branch} is not tracked"));
    }
    let jobs: Vec<JobSpec> = ctx
        .agents
        .iter()
        .filter(|(_, p)| profile_repo(p).is_some_and(|r| r.same_as(&repo)))
        .filter(|(_, p)| {
            let wanted = p.git_ref.trim();
            // A profile on the default branch follows pushes to it; one on a named
            // branch follows that branch; a commit or tag stays where it is.
            (wanted.is_empty() && (branch == default_branch || !branches.is_empty()))
                || wanted == branch
                || wanted == format!("refs/heads/{branch}")
        })
        .map(|(name, _)| {
            let mut spec = JobSpec::lifecycle(LifecycleJob::Refresh {
                agent: name.clone(),
                commit: Some(commit.to_string()),
            });
            spec.options.idempotency_key = Some(format!("github:push:{repo}:{commit}:{name}"));
            spec.options
                .metadata
                .insert(META_REPO.into(), repo.to_string());
            spec
        })
        .collect();
    if jobs.is_empty() {
        return Plan::Ignore(format!("no agent profile follows {repo} {branch}"));
    }
    Plan::Lifecycle(jobs)
}

fn labels(issue: &Value) -> Vec<String> {
    issue["labels"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|x| x["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The agent profile named by an `agent:<profile>` label, else the configured default.
fn issue_agent(issue: &Value, ctx: &PlanContext) -> String {
    let prefix = &ctx.github.agent_label_prefix;
    if !prefix.is_empty() {
        for label in labels(issue) {
            if let Some(name) = label.strip_prefix(prefix.as_str())
                && ctx.agents.contains_key(name)
            {
                return name.to_string();
            }
        }
    }
    if ctx.github.default_agent.is_empty() {
        ctx.default_agent.to_string()
    } else {
        ctx.github.default_agent.clone()
    }
}

fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

fn research_spec(
    query: &str,
    issue: &Value,
    repo: &RepoName,
    key: String,
    ctx: &PlanContext,
) -> Plan {
    let query = cut(query.trim(), ctx.max_query_bytes);
    if query.is_empty() {
        return Plan::Ignore("the query is empty".into());
    }
    let Some(number) = issue["number"].as_u64() else {
        return Plan::Ignore("the issue has no number".into());
    };
    let mut spec = JobSpec::research(query, issue_agent(issue, ctx));
    spec.options.idempotency_key = Some(key);
    let meta = &mut spec.options.metadata;
    meta.insert(META_NOTIFY.into(), NOTIFY_GITHUB.into());
    meta.insert(META_REPO.into(), repo.to_string());
    meta.insert(META_ISSUE.into(), number.to_string());
    Plan::Research(Box::new(spec))
}

fn plan_issue(payload: &Value, ctx: &PlanContext) -> Plan {
    let label = &ctx.github.research_label;
    if label.is_empty() {
        return Plan::Ignore("research from issues is off (github.research_label)".into());
    }
    let Some((repo, repo_id)) = repository(payload) else {
        return Plan::Ignore("no repository in the payload".into());
    };
    if !ctx.tracked(&repo) {
        return Plan::Ignore(format!("{repo} is not tracked"));
    }
    let action = payload["action"].as_str().unwrap_or("");
    if !matches!(action, "opened" | "labeled" | "edited" | "reopened") {
        return Plan::Ignore(format!("issue action {action:?} is not handled"));
    }
    let issue = &payload["issue"];
    if issue["state"].as_str() == Some("closed") {
        return Plan::Ignore("the issue is closed".into());
    }
    if !labels(issue).iter().any(|l| l == label) {
        return Plan::Ignore(format!("the issue has no {label:?} label"));
    }
    let title = issue["title"].as_str().unwrap_or("");
    let body = issue["body"].as_str().unwrap_or("");
    let query = if body.trim().is_empty() {
        title.to_string()
    } else {
        format!("{title}\n\n{body}")
    };
    let issue_key = issue["id"]
        .as_u64()
        .map(|id| id.to_string())
        .unwrap_or_else(|| issue["number"].to_string());
    research_spec(
        &query,
        issue,
        &repo,
        format!("github:issue:{repo_id}:{issue_key}"),
        ctx,
    )
}

fn plan_comment(payload: &Value, ctx: &PlanContext) -> Plan {
    let Some((repo, repo_id)) = repository(payload) else {
        return Plan::Ignore("no repository in the payload".into());
    };
    if !ctx.tracked(&repo) {
        return Plan::Ignore(format!("{repo} is not tracked"));
    }
    let action = payload["action"].as_str().unwrap_or("");
    if !matches!(action, "created" | "edited") {
        return Plan::Ignore(format!("comment action {action:?} is not handled"));
    }
    let comment = &payload["comment"];
    // Our own answers, and other bots, never start a job.
    if comment["user"]["type"].as_str() == Some("Bot") {
        return Plan::Ignore("comments by bots are not handled".into());
    }
    let body = comment["body"].as_str().unwrap_or("").trim_start();
    let Some(rest) = body.strip_prefix("/research") else {
        return Plan::Ignore("the comment is not a /research command".into());
    };
    if !(rest.is_empty() || rest.starts_with(char::is_whitespace)) {
        return Plan::Ignore("the comment is not a /research command".into());
    }
    let issue = &payload["issue"];
    let query = if rest.trim().is_empty() {
        let title = issue["title"].as_str().unwrap_or("");
        let body = issue["body"].as_str().unwrap_or("");
        format!("{title}\n\n{body}")
    } else {
        rest.trim().to_string()
    };
    let Some(comment_id) = comment["id"].as_u64() else {
        return Plan::Ignore("the comment has no ID".into());
    };
    research_spec(
        &query,
        issue,
        &repo,
        format!("github:comment:{repo_id}:{comment_id}"),
        ctx,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobPayload;
    use crate::settings::Settings;
    use serde_json::json;

    #[test]
    fn githubs_documented_test_vector_verifies() {
        let secret = b"It's a Secret to Everybody";
        let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert_eq!(sign(secret, b"Hello, World!"), expected);
        assert_eq!(
            verify_signature(secret, b"Hello, World!", Some(expected)),
            Ok(())
        );
    }

    #[test]
    fn wrong_missing_and_truncated_signatures_are_refused() {
        let secret = b"It's a Secret to Everybody";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let body = b"Hello, World!";
        assert_eq!(
            verify_signature(secret, body, None),
            Err(SignatureError::Missing)
        );
        assert_eq!(
            verify_signature(secret, body, Some(&good[..good.len() - 2])),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(secret, body, Some(&good["sha256=".len()..])),
            Err(SignatureError::Malformed)
        );
        let wrong = good.replace("757107", "757108");
        assert_eq!(
            verify_signature(secret, body, Some(&wrong)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"another secret", body, Some(good)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(secret, b"Hello, World?", Some(good)),
            Err(SignatureError::Mismatch)
        );
    }

    fn settings() -> Settings {
        let toml = r#"
[github]
research_label = "research"
[agents.dexter]
runtime = "command"
command = ["true"]
repo = "https://github.com/octo/agent.git"
[agents.pinned]
runtime = "command"
command = ["true"]
repo = "https://github.com/octo/agent.git"
git_ref = "0123456789012345678901234567890123456789"
[agents.other]
runtime = "command"
command = ["true"]
repo = "https://github.com/octo/other.git"
"#;
        Settings::from_layers(Some(toml), &[]).unwrap()
    }

    fn ctx(s: &Settings) -> PlanContext<'_> {
        PlanContext {
            github: &s.github,
            agents: &s.agents,
            default_agent: &s.default_agent,
            max_query_bytes: 100,
        }
    }

    const AFTER: &str = "1111111111111111111111111111111111111111";

    fn push(branch: &str) -> Value {
        json!({"ref": format!("refs/heads/{branch}"), "after": AFTER, "deleted": false,
               "repository": {"id": 7, "full_name": "Octo/Agent", "default_branch": "main"}})
    }

    #[test]
    fn a_push_to_the_default_branch_refreshes_the_profiles_that_follow_it() {
        let s = settings();
        let Plan::Lifecycle(jobs) = plan("push", &push("main"), &ctx(&s)) else {
            panic!("expected refresh jobs")
        };
        assert_eq!(
            jobs.len(),
            1,
            "the pinned profile stays, the other repo's too"
        );
        assert_eq!(
            jobs[0].payload,
            JobPayload::Lifecycle(LifecycleJob::Refresh {
                agent: "dexter".into(),
                commit: Some(AFTER.into())
            })
        );
        assert!(matches!(
            plan("push", &push("feature"), &ctx(&s)),
            Plan::Ignore(_)
        ));
        let mut deleted = push("main");
        deleted["deleted"] = json!(true);
        assert!(matches!(plan("push", &deleted, &ctx(&s)), Plan::Ignore(_)));
        let mut untracked = push("main");
        untracked["repository"]["full_name"] = json!("someone/else");
        assert!(matches!(
            plan("push", &untracked, &ctx(&s)),
            Plan::Ignore(_)
        ));
    }

    fn issue(action: &str, labels: &[&str]) -> Value {
        let labels: Vec<Value> = labels.iter().map(|l| json!({"name": l})).collect();
        json!({"action": action,
               "repository": {"id": 7, "full_name": "octo/agent"},
               "issue": {"id": 99, "number": 5, "state": "open", "title": "AAPL margins",
                         "body": "Compare 2023 and 2024.", "labels": labels}})
    }

    #[test]
    fn a_labelled_issue_is_one_research_job_keyed_by_the_issue() {
        let s = settings();
        let Plan::Research(spec) = plan(
            "issues",
            &issue("labeled", &["research", "agent:other"]),
            &ctx(&s),
        ) else {
            panic!("expected a research job")
        };
        let JobPayload::Research(r) = &spec.payload else {
            panic!()
        };
        assert_eq!(r.query, "AAPL margins\n\nCompare 2023 and 2024.");
        assert_eq!(r.agent, "other", "picked by the agent: label");
        assert_eq!(
            spec.options.idempotency_key.as_deref(),
            Some("github:issue:7:99")
        );
        assert_eq!(spec.options.metadata[META_ISSUE], "5");
        assert_eq!(spec.options.metadata[META_REPO], "octo/agent");
        // An edit keys the same job.
        let Plan::Research(edited) = plan("issues", &issue("edited", &["research"]), &ctx(&s))
        else {
            panic!()
        };
        assert_eq!(edited.options.idempotency_key, spec.options.idempotency_key);
        assert!(matches!(
            plan("issues", &issue("opened", &["bug"]), &ctx(&s)),
            Plan::Ignore(_)
        ));
        assert!(matches!(
            plan("issues", &issue("closed", &["research"]), &ctx(&s)),
            Plan::Ignore(_)
        ));
    }

    #[test]
    fn a_research_comment_is_keyed_by_the_comment() {
        let s = settings();
        let mut payload = issue("created", &[]);
        payload["comment"] =
            json!({"id": 1234, "body": "/research what is MSFT's P/E?", "user": {"type": "User"}});
        let Plan::Research(spec) = plan("issue_comment", &payload, &ctx(&s)) else {
            panic!()
        };
        let JobPayload::Research(r) = &spec.payload else {
            panic!()
        };
        assert_eq!(r.query, "what is MSFT's P/E?");
        assert_eq!(
            spec.options.idempotency_key.as_deref(),
            Some("github:comment:7:1234")
        );
        payload["comment"]["body"] = json!("/researcher is not a command");
        assert!(matches!(
            plan("issue_comment", &payload, &ctx(&s)),
            Plan::Ignore(_)
        ));
        payload["comment"]["body"] = json!("/research x");
        payload["comment"]["user"]["type"] = json!("Bot");
        assert!(matches!(
            plan("issue_comment", &payload, &ctx(&s)),
            Plan::Ignore(_)
        ));
    }

    #[test]
    fn long_queries_are_cut_on_a_character_boundary() {
        assert_eq!(cut("ééé", 3), "é");
        assert_eq!(cut("abc", 10), "abc");
    }
}
