//! Safe checkout of an agent's git repository inside a sandbox, for every runtime.
//!
//! A profile names a git `repo` URL, optionally a `git_ref` (branch, tag or commit)
//! and `git_token_env`, the worker environment variable holding a token for it.
//! The checkout is `git init` + `git fetch --depth 1 origin <ref>` + `git checkout`
//! in `agent/`, then the resolved commit is recorded (`.fleet/checkout.json`, next
//! to `agent/`, and returned) so the agent registry can say which commit serves.
//!
//! The token reaches git one way only: the environment of the git processes. The
//! worker passes `FLEET_GIT_TOKEN` and an env-only git configuration
//! (`GIT_CONFIG_COUNT`/`GIT_CONFIG_KEY_n`/`GIT_CONFIG_VALUE_n`) that first clears
//! every configured credential helper (so no `store` helper writes it to disk),
//! then installs a helper scoped to the repo's origin that prints the token from
//! that variable. The helper's text holds the variable's *name*; its value is
//! expanded by the shell inside the helper (`echo` is a builtin), so no process's
//! argv ever holds it. The remote URL carries no credentials (URLs with a password
//! are refused), nothing with the token is written to a file, and git's messages
//! are redacted before they reach an error, a log or Redis. A token is never sent
//! over plain `http://` except to a loopback address (local test servers).
//!
//! A refresh (`refresh`) fetches the new commit into an existing checkout and
//! checks it out; if the fetch fails nothing has changed, so the old commit keeps
//! serving.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::JobError;
use crate::sandbox::{ExecControl, ExecOutput, ExecRequest, SandboxProvider};
use crate::secret::Secret;

/// Where the record of the current checkout is kept, relative to the sandbox home
/// (outside `agent/`, so the checkout's `git status` stays clean).
pub const CHECKOUT_RECORD: &str = ".fleet/checkout.json";
/// The environment variable of the git processes that holds the token.
const TOKEN_VAR: &str = "FLEET_GIT_TOKEN";
/// The user name sent with the token: GitHub's documented name for installation
/// tokens, accepted with personal access tokens too.
const TOKEN_USER: &str = "x-access-token";
/// A clone or fetch that hangs is given up after this long.
const GIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const ERROR_TAIL_BYTES: usize = 1024;

/// What a checkout produced: the agent's code is `commit` of `url`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutRecord {
    pub url: String,
    /// What was asked for: a branch, tag or commit ("HEAD": the remote's default branch).
    pub git_ref: String,
    /// The commit checked out (40 hex digits).
    pub commit: String,
}

/// One profile's repository and how to check it out.
pub struct RepoCheckout {
    url: String,
    git_ref: String,
    token: Option<Secret>,
    /// A commit set by a refresh: agents launched from now on check it out instead of
    /// `git_ref`.
    pinned: RwLock<Option<String>>,
}

impl std::fmt::Debug for RepoCheckout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoCheckout")
            .field("url", &self.url)
            .field("git_ref", &self.git_ref)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

/// Whether `repo` names a git repository (rather than a local directory).
pub fn is_git_url(repo: &str) -> bool {
    ["https://", "http://", "ssh://", "git@", "file://"]
        .iter()
        .any(|prefix| repo.starts_with(prefix))
        || repo.ends_with(".git")
}

/// `true` for 40 (SHA-1) or 64 (SHA-256) hex digits.
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl RepoCheckout {
    /// A checkout of `url` at `git_ref` ("" = the remote's default branch), with an
    /// optional token. Refused: a URL holding a password (put the token in the
    /// environment variable named by `git_token_env` instead), a token for a plain
    /// `http://` URL that is not loopback, a ref that git would read as an option.
    pub fn new(url: &str, git_ref: &str, token: Option<Secret>) -> Result<Self, String> {
        let url = url.trim().to_string();
        if let Some((_, rest)) = url.split_once("://")
            && let Some((userinfo, _)) = rest.split_once('@')
            && !userinfo.contains('/')
            && userinfo.contains(':')
        {
            return Err(
                "the repo URL holds a password: remove it and name the environment variable \
                 that holds the token in git_token_env"
                    .into(),
            );
        }
        let git_ref = git_ref.trim();
        if git_ref.starts_with('-') || git_ref.contains(['\0', '\n', ' ', '~', '^', ':']) {
            return Err(format!("git_ref {git_ref:?} is not a valid git ref"));
        }
        let token = token.filter(|t| !t.is_empty());
        if token.is_some() && url.starts_with("http://") && !is_loopback_url(&url) {
            return Err(
                "a token would be sent in clear over http://; use an https:// repo URL".into(),
            );
        }
        Ok(RepoCheckout {
            url,
            git_ref: git_ref.to_string(),
            token,
            pinned: RwLock::new(None),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// What a new checkout fetches: the pinned commit, else the profile's ref, else HEAD.
    pub fn target(&self) -> String {
        if let Some(commit) = self.pinned.read().unwrap().clone() {
            return commit;
        }
        if self.git_ref.is_empty() {
            "HEAD".into()
        } else {
            self.git_ref.clone()
        }
    }

    /// Agents launched from now on check out `commit`.
    pub fn pin(&self, commit: &str) {
        *self.pinned.write().unwrap() = Some(commit.to_string());
    }

    /// The origin (`scheme://host[:port]/`) the credential helper is scoped to; `None`
    /// for URLs git does not send HTTP credentials to (ssh, file).
    fn http_origin(&self) -> Option<String> {
        let (scheme, rest) = self.url.split_once("://")?;
        if scheme != "https" && scheme != "http" {
            return None;
        }
        let host = rest.split('/').next()?;
        let host = host.rsplit('@').next()?;
        Some(format!("{scheme}://{host}/"))
    }

    /// The environment of every git process: no prompts, and with a token, the
    /// env-only credential configuration described at the top of this file.
    pub fn git_env(&self) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        // Without a terminal a credential prompt would hang until the timeout.
        env.insert("GIT_TERMINAL_PROMPT".into(), "0".into());
        env.insert("GIT_ASKPASS".into(), String::new());
        env.insert("SSH_ASKPASS".into(), String::new());
        if let (Some(token), Some(origin)) = (&self.token, self.http_origin()) {
            env.insert(TOKEN_VAR.into(), token.expose().to_string());
            env.insert("GIT_CONFIG_COUNT".into(), "2".into());
            // An empty helper clears the list configured so far (system, global,
            // repo): no `store` helper can write the token to a file.
            env.insert("GIT_CONFIG_KEY_0".into(), "credential.helper".into());
            env.insert("GIT_CONFIG_VALUE_0".into(), String::new());
            env.insert(
                "GIT_CONFIG_KEY_1".into(),
                format!("credential.{origin}.helper"),
            );
            // `$1` is the helper's action (get, store, erase); only `get` answers.
            env.insert(
                "GIT_CONFIG_VALUE_1".into(),
                format!(
                    "!f() {{ test \"$1\" = get || return 0; echo username={TOKEN_USER}; \
                     echo \"password=${TOKEN_VAR}\"; }}; f"
                ),
            );
        }
        env
    }

    /// Remove the token (and its Basic-auth form) from text git printed.
    pub fn redact(&self, text: &str) -> String {
        use base64::Engine as _;
        let Some(token) = &self.token else {
            return text.to_string();
        };
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{TOKEN_USER}:{}", token.expose()));
        text.replace(token.expose(), "[redacted]")
            .replace(&basic, "[redacted]")
    }

    /// Check the repo out into `dir` (a new directory) of a fresh sandbox, at
    /// [`Self::target`]; records and returns the commit.
    pub async fn clone_into(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        dir: &str,
    ) -> Result<CheckoutRecord, JobError> {
        let target = self.target();
        self.git(provider, sandbox_id, None, &["init", "-q", "--", dir])
            .await?;
        self.git(
            provider,
            sandbox_id,
            Some(dir),
            &["remote", "add", "origin", "--", &self.url],
        )
        .await?;
        self.fetch_and_checkout(provider, sandbox_id, dir, &target)
            .await
    }

    /// Move an existing checkout in `dir` to `commit` (or [`Self::target`]). When the
    /// fetch fails, the checkout is untouched: the old commit keeps serving.
    pub async fn refresh(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        dir: &str,
        commit: Option<&str>,
    ) -> Result<CheckoutRecord, JobError> {
        let target = commit.map(str::to_string).unwrap_or_else(|| self.target());
        self.fetch_and_checkout(provider, sandbox_id, dir, &target)
            .await
    }

    /// The commit `dir` is at now.
    pub async fn head(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        dir: &str,
    ) -> Result<String, JobError> {
        let out = self
            .git(provider, sandbox_id, Some(dir), &["rev-parse", "HEAD"])
            .await?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    async fn fetch_and_checkout(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        dir: &str,
        target: &str,
    ) -> Result<CheckoutRecord, JobError> {
        let fetched = self
            .git(
                provider,
                sandbox_id,
                Some(dir),
                &["fetch", "-q", "--depth", "1", "origin", "--", target],
            )
            .await;
        let checkout_what = match fetched {
            Ok(_) => "FETCH_HEAD".to_string(),
            // A server that refuses to fetch a commit by its ID (no protocol v2, no
            // allowReachableSHA1InWant): fetch its branches whole and find it there.
            Err(_) if is_commit_id(target) => {
                self.git(
                    provider,
                    sandbox_id,
                    Some(dir),
                    &[
                        "fetch",
                        "-q",
                        "origin",
                        "--",
                        "+refs/heads/*:refs/remotes/origin/*",
                    ],
                )
                .await?;
                let object = format!("{target}^{{commit}}");
                if self
                    .git(
                        provider,
                        sandbox_id,
                        Some(dir),
                        &["cat-file", "-e", &object],
                    )
                    .await
                    .is_err()
                {
                    return Err(JobError::permanent(format!(
                        "commit {target} is not in {}",
                        self.url
                    )));
                }
                target.to_string()
            }
            Err(e) => return Err(e),
        };
        self.git(
            provider,
            sandbox_id,
            Some(dir),
            &[
                "-c",
                "advice.detachedHead=false",
                "checkout",
                "-q",
                "-f",
                "--detach",
                &checkout_what,
            ],
        )
        .await?;
        let commit = self.head(provider, sandbox_id, dir).await?;
        if is_commit_id(target) && !commit.eq_ignore_ascii_case(target) {
            return Err(JobError::permanent(format!(
                "checked out {commit} of {} but {target} was asked for",
                self.url
            )));
        }
        let record = CheckoutRecord {
            url: self.url.clone(),
            git_ref: target.to_string(),
            commit,
        };
        let json = serde_json::to_vec(&record).expect("a record serialises");
        provider
            .write_file(sandbox_id, CHECKOUT_RECORD, &json)
            .await?;
        tracing::info!(%sandbox_id, url = %self.url, git_ref = %record.git_ref, commit = %record.commit, "agent repo checked out");
        Ok(record)
    }

    /// Run git with the credential environment; fail unless it exits 0. A failure
    /// is permanent when git says the repo, ref or credentials are wrong, else
    /// transient (network, server errors).
    async fn git(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        dir: Option<&str>,
        args: &[&str],
    ) -> Result<ExecOutput, JobError> {
        let mut argv: Vec<String> = Vec::new();
        if let Some(dir) = dir {
            argv.extend(["-C".to_string(), dir.to_string()]);
        }
        argv.extend(args.iter().map(|a| a.to_string()));
        let request = ExecRequest {
            program: "git".into(),
            args: argv,
            env: self.git_env(),
            timeout: Some(GIT_TIMEOUT),
            ..Default::default()
        };
        let output = provider
            .exec(sandbox_id, &request, ExecControl::default())
            .await?;
        if output.exit_code == 0 {
            return Ok(output);
        }
        let stderr = super::tail_utf8(&output.stderr, ERROR_TAIL_BYTES);
        let stderr = self.redact(stderr.trim());
        // The subcommand, for the message: the first word not an option (nor the
        // value of a `-c`).
        let mut words = args.iter();
        let mut what = "git";
        while let Some(word) = words.next() {
            if *word == "-c" {
                words.next();
            } else if !word.starts_with('-') {
                what = word;
                break;
            }
        }
        let message = format!(
            "git {what} of {} failed (exit {}): {stderr}",
            self.url, output.exit_code
        );
        let lower = stderr.to_ascii_lowercase();
        let permanent = [
            "authentication failed",
            "could not read username",
            "not found",
            "couldn't find remote ref",
            "not our ref",
            "does not appear to be a git repository",
            "invalid",
            "unadvertised object",
        ]
        .iter()
        .any(|needle| lower.contains(needle));
        Err(if permanent {
            JobError::permanent(message)
        } else {
            JobError::transient(message)
        })
    }
}

/// The checkout record a sandbox holds, if its agent's repo came from git.
pub async fn read_record(
    provider: &dyn SandboxProvider,
    sandbox_id: &str,
) -> Option<CheckoutRecord> {
    let bytes = provider.read_file(sandbox_id, CHECKOUT_RECORD).await.ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn is_loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "ghp_0123456789abcdefSECRET";

    fn checkout(url: &str) -> RepoCheckout {
        RepoCheckout::new(url, "", Some(Secret::new(TOKEN))).unwrap()
    }

    #[test]
    fn the_token_is_only_in_the_variable_the_helper_reads() {
        let c = checkout("https://github.com/o/r.git");
        let env = c.git_env();
        assert_eq!(env[TOKEN_VAR], TOKEN);
        for (key, value) in &env {
            if key != TOKEN_VAR {
                assert!(!value.contains(TOKEN), "{key} holds the token");
            }
        }
        assert_eq!(env["GIT_CONFIG_KEY_0"], "credential.helper");
        assert_eq!(env["GIT_CONFIG_VALUE_0"], "");
        assert_eq!(
            env["GIT_CONFIG_KEY_1"],
            "credential.https://github.com/.helper"
        );
        assert!(env["GIT_CONFIG_VALUE_1"].contains("$FLEET_GIT_TOKEN"));
    }

    #[test]
    fn urls_with_a_password_and_tokens_over_plain_http_are_refused() {
        let err = RepoCheckout::new("https://x:ghp_abc@github.com/o/r.git", "", None).unwrap_err();
        assert!(err.contains("git_token_env"), "{err}");
        assert!(!err.contains("ghp_abc"));
        let err = RepoCheckout::new(
            "http://git.example.com/o/r.git",
            "",
            Some(Secret::new("t0ken")),
        )
        .unwrap_err();
        assert!(err.contains("https"), "{err}");
        assert!(
            RepoCheckout::new("http://127.0.0.1:9/o/r.git", "", Some(Secret::new("t0ken"))).is_ok()
        );
        assert!(RepoCheckout::new("https://github.com/o/r.git", "--upload-pack=x", None).is_err());
    }

    #[test]
    fn no_token_no_helper() {
        let c = RepoCheckout::new("https://github.com/o/r.git", "main", None).unwrap();
        let env = c.git_env();
        assert!(!env.contains_key(TOKEN_VAR));
        assert!(!env.contains_key("GIT_CONFIG_COUNT"));
        assert_eq!(c.target(), "main");
        c.pin("0123456789012345678901234567890123456789");
        assert_eq!(c.target(), "0123456789012345678901234567890123456789");
    }

    #[test]
    fn git_output_is_redacted() {
        use base64::Engine as _;
        let c = checkout("https://github.com/o/r.git");
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"));
        let text = format!("fatal: {TOKEN} and Basic {basic}");
        let redacted = c.redact(&text);
        assert!(
            !redacted.contains(TOKEN) && !redacted.contains(&basic),
            "{redacted}"
        );
    }
}
