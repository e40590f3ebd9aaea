//! The comment that answers a research job from an issue.
//!
//! A job made from an issue carries `notify = "github-issue"`, `github_repo` and
//! `github_issue` in its metadata. When it ends, the worker's notifier (see
//! `worker/src/github_notify.rs`) posts the comment built here: the answer when it
//! succeeded, a short note with the job ID and the reason when it was dead-lettered
//! (or failed for good), nothing when it was cancelled. One comment per job: the
//! notifier claims the job in Redis first.

use serde_json::{Value, json};

use super::webhook::{META_ISSUE, META_NOTIFY, META_REPO, NOTIFY_GITHUB};
use super::{GithubClient, GithubError, RepoName, segment};
use crate::results::{JobRecord, JobStatus};

/// GitHub's limit on a comment is 65,536 characters; answers are cut below it.
const MAX_ANSWER_CHARS: usize = 60_000;
const MAX_REASON_CHARS: usize = 500;

/// Where a job's comment goes: repository and issue number, if the job asks for one.
pub fn target(record: &JobRecord) -> Option<(RepoName, u64)> {
    let meta = &record.spec.as_ref()?.options.metadata;
    if meta.get(META_NOTIFY).map(String::as_str) != Some(NOTIFY_GITHUB) {
        return None;
    }
    let repo = RepoName::parse(meta.get(META_REPO)?).ok()?;
    let issue = meta.get(META_ISSUE)?.parse().ok()?;
    Some((repo, issue))
}

fn cut_chars(text: &str, max: usize) -> (String, bool) {
    match text.char_indices().nth(max) {
        Some((i, _)) => (text[..i].to_string(), true),
        None => (text.to_string(), false),
    }
}

/// The comment for a job that ended; `None` when nothing is said (cancelled, or not
/// ended).
pub fn comment_body(record: &JobRecord) -> Option<String> {
    match record.status {
        JobStatus::Succeeded => {
            let result = record.result.as_ref()?;
            let output = result.get("output").unwrap_or(result);
            let answer = match output.get("answer") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => output.to_string(),
            };
            let (answer, cut) = cut_chars(answer.trim(), MAX_ANSWER_CHARS);
            let agent = output["agent"].as_str().unwrap_or("agent");
            let mut body = format!("{answer}\n\n");
            if cut {
                body.push_str(
                    "_(answer cut at 60,000 characters; `fleet result` has it whole)_\n\n",
                );
            }
            body.push_str(&format!(
                "<sub>dexter-fleet research job `{}` · agent `{agent}`</sub>",
                record.id
            ));
            Some(body)
        }
        JobStatus::Dead | JobStatus::Failed => {
            let reason = record
                .error
                .as_ref()
                .and_then(|e| e["message"].as_str())
                .unwrap_or("no reason recorded");
            let (reason, _) = cut_chars(reason, MAX_REASON_CHARS);
            Some(format!(
                "The research job for this issue failed after {} attempt(s) and was set aside.\n\n\
                 > {reason}\n\n<sub>dexter-fleet job `{}` — `fleet dead retry {}` runs it again</sub>",
                record.attempts, record.id, record.id
            ))
        }
        _ => None,
    }
}

/// Post `body` as a comment on issue `number` of `repo`; the comment's ID.
pub async fn post_comment(
    client: &GithubClient,
    repo: &RepoName,
    number: u64,
    body: &str,
) -> Result<u64, GithubError> {
    let path = format!(
        "/repos/{}/{}/issues/{number}/comments",
        segment(&repo.owner),
        segment(&repo.name)
    );
    let answer = client.post(&path, &json!({ "body": body })).await?;
    Ok(answer["id"].as_u64().unwrap_or(0))
}
