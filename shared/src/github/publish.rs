//! Publishing a batch's results to a repository as a reviewed pull request.
//!
//! The report is two files, `<report_dir>/<batch>.md` (a table, then each answer)
//! and `<report_dir>/<batch>.json` (the records), committed with the contents API on
//! the branch `fleet/batch-<batch>`, created from the default branch's head when it
//! does not exist. Then the open pull request from that branch is found (updated)
//! or opened. Publishing the same batch again therefore updates the same files,
//! branch and pull request: nothing is duplicated. Each step is a plain REST call
//! through [`GithubClient`], so rate limits are waited out on every one; the calls
//! are made one after another (GitHub asks for content-creating requests not to be
//! made in parallel).

use base64::Engine as _;
use serde_json::{Value, json};

use super::{GithubClient, GithubError, RepoName, path_segments, segment};
use crate::results::{JobRecord, JobStatus};

/// Most jobs one publish job may name.
pub const MAX_PUBLISHED_JOBS: u64 = 10_000;
/// Longest answer shown in the Markdown report (the JSON has them whole).
const MAX_ANSWER_CHARS: usize = 4_000;

/// What a publish did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Published {
    pub branch: String,
    pub pull_request: u64,
    pub url: String,
    /// The pull request was opened now (false: an open one was updated).
    pub opened: bool,
    /// The report commits made (one per file that changed).
    pub commits: Vec<String>,
}

pub fn branch_name(batch_id: &str) -> String {
    format!("fleet/batch-{batch_id}")
}

fn answer_of(record: &JobRecord) -> String {
    let Some(result) = &record.result else {
        return String::new();
    };
    let output = result.get("output").unwrap_or(result);
    match output.get("answer") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => output.to_string(),
    }
}

fn query_of(record: &JobRecord) -> String {
    match record.spec.as_ref().map(|s| &s.payload) {
        Some(crate::job::JobPayload::Research(r)) => r.query.clone(),
        _ => String::new(),
    }
}

/// A table cell: one line, pipes escaped.
fn cell(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out: String = one_line.chars().take(max).collect();
    if one_line.chars().count() > max {
        out.push('…');
    }
    out.replace('|', "\\|")
}

/// The Markdown report and the JSON document of a batch's records (in the order given).
pub fn render_report(batch_id: &str, records: &[JobRecord]) -> (String, String) {
    let succeeded = records
        .iter()
        .filter(|r| r.status == JobStatus::Succeeded)
        .count();
    let mut md = format!(
        "# Research batch `{batch_id}`\n\n{succeeded} of {} jobs succeeded.\n\n\
         | # | job | status | query |\n|---|---|---|---|\n",
        records.len()
    );
    for (i, r) in records.iter().enumerate() {
        md.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            i + 1,
            r.id,
            r.status,
            cell(&query_of(r), 80)
        ));
    }
    for (i, r) in records.iter().enumerate() {
        md.push_str(&format!("\n## {}. {}\n\n", i + 1, cell(&query_of(r), 200)));
        match r.status {
            JobStatus::Succeeded => {
                let answer = answer_of(r);
                let shown: String = answer.chars().take(MAX_ANSWER_CHARS).collect();
                md.push_str(shown.trim());
                if answer.chars().count() > MAX_ANSWER_CHARS {
                    md.push_str("\n\n_(cut; the JSON report has the whole answer)_");
                }
                md.push('\n');
            }
            status => {
                let reason = r
                    .error
                    .as_ref()
                    .and_then(|e| e["message"].as_str())
                    .unwrap_or("");
                md.push_str(&format!("_{status}_ {}\n", cell(reason, 300)));
            }
        }
    }
    let jobs: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "status": r.status,
                "query": query_of(r),
                "answer": (r.status == JobStatus::Succeeded).then(|| answer_of(r)),
                "error": r.error,
                "attempts": r.attempts,
                "finished_at": r.finished_at,
            })
        })
        .collect();
    let doc =
        json!({"batch_id": batch_id, "total": records.len(), "succeeded": succeeded, "jobs": jobs});
    (md, serde_json::to_string_pretty(&doc).expect("JSON"))
}

/// Commit the report on the batch's branch and open (or update) its pull request.
pub async fn publish_report(
    client: &GithubClient,
    repo: &RepoName,
    batch_id: &str,
    report_dir: &str,
    markdown: &str,
    json_doc: &str,
) -> Result<Published, GithubError> {
    let base_path = format!("/repos/{}/{}", segment(&repo.owner), segment(&repo.name));
    let branch = branch_name(batch_id);
    let info = client.get(&base_path).await?;
    let base = info["default_branch"]
        .as_str()
        .unwrap_or("main")
        .to_string();
    // The branch: created from the base's head unless it exists.
    match client
        .get(&format!(
            "{base_path}/git/ref/heads/{}",
            path_segments(&branch)
        ))
        .await
    {
        Ok(_) => {}
        Err(e) if e.is_not_found() => {
            let head = client
                .get(&format!(
                    "{base_path}/git/ref/heads/{}",
                    path_segments(&base)
                ))
                .await?;
            let sha = head["object"]["sha"].as_str().unwrap_or_default();
            client
                .post(
                    &format!("{base_path}/git/refs"),
                    &json!({"ref": format!("refs/heads/{branch}"), "sha": sha}),
                )
                .await?;
        }
        Err(e) => return Err(e),
    }
    let dir = report_dir.trim_matches('/');
    let mut commits = Vec::new();
    for (name, content) in [
        (format!("{dir}/{batch_id}.md"), markdown),
        (format!("{dir}/{batch_id}.json"), json_doc),
    ] {
        let url = format!("{base_path}/contents/{}", path_segments(&name));
        let existing = match client.get(&format!("{url}?ref={}", segment(&branch))).await {
            Ok(file) => Some(file),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e),
        };
        let encoded = base64::engine::general_purpose::STANDARD.encode(content);
        if let Some(file) = &existing {
            let current = file["content"].as_str().unwrap_or("").replace('\n', "");
            if current == encoded {
                continue; // unchanged: no empty commit
            }
        }
        let mut body = json!({
            "message": format!("fleet: report of batch {batch_id}"),
            "content": encoded,
            "branch": branch,
        });
        if let Some(sha) = existing.as_ref().and_then(|f| f["sha"].as_str()) {
            body["sha"] = json!(sha);
        }
        let written = client.put(&url, &body).await?;
        if let Some(sha) = written["commit"]["sha"].as_str() {
            commits.push(sha.to_string());
        }
    }
    // The pull request: the open one from this branch, else a new one.
    let open = client
        .get_all(&format!(
            "{base_path}/pulls?state=open&head={}",
            segment(&format!("{}:{branch}", repo.owner))
        ))
        .await?;
    let title = format!("Research report: batch {batch_id}");
    let description = format!(
        "Results of dexter-fleet batch `{batch_id}`: `{dir}/{batch_id}.md` (report) and \
         `{dir}/{batch_id}.json` (every record). Published again, this pull request is updated."
    );
    let (pr, opened) = match open.into_iter().next() {
        Some(pr) => {
            let number = pr["number"].as_u64().unwrap_or(0);
            let updated = client
                .patch(
                    &format!("{base_path}/pulls/{number}"),
                    &json!({"title": title, "body": description}),
                )
                .await?;
            (updated, false)
        }
        None => {
            let created = client
                .post(
                    &format!("{base_path}/pulls"),
                    &json!({"title": title, "head": branch, "base": base, "body": description, "draft": false}),
                )
                .await?;
            (created, true)
        }
    };
    Ok(Published {
        branch,
        pull_request: pr["number"].as_u64().unwrap_or(0),
        url: pr["html_url"].as_str().unwrap_or_default().to_string(),
        opened,
        commits,
    })
}
