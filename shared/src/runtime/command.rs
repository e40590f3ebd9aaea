//! The `command` runtime: runs any command-line agent (`runtime = "command"`).
//!
//! `setup` puts the agent's files in `agent/` inside the sandbox (a local
//! directory copied file by file through the provider, or a `git clone`) and runs
//! the profile's setup commands there. `run` starts the profile's command in
//! `agent/` and hands it the query as data: on stdin, in `FLEET_QUERY`, or in the
//! file `agent/.fleet-query.txt` named by `FLEET_QUERY_FILE` (relative to
//! `agent/`, the command's working directory). The query is never part of a
//! command line or a shell string.
//!
//! The exit code decides the error class: 0 is an answer; 75 (`EX_TEMPFAIL`) is
//! transient; the other sysexits codes 64–78 (bad usage or data) are permanent;
//! anything else, a signal included, is transient.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use super::checkout::{CheckoutRecord, RepoCheckout, is_git_url};
use super::{AgentOutput, AgentRuntime, RunOptions};
use crate::error::JobError;
use crate::sandbox::{ExecControl, ExecOutput, ExecRequest, SandboxProvider};
use crate::secret::Secret;
use crate::settings::{AgentProfile, QueryVia};

/// Directory of the agent's files inside the sandbox; commands run in it.
const AGENT_DIR: &str = "agent";
/// Where the query goes for `query_via = "file"`, relative to `AGENT_DIR`.
const QUERY_FILE: &str = ".fleet-query.txt";
/// Directories not copied from a local repo: history and build output, which are
/// large and which the agent rebuilds in its setup commands if it needs them.
const SKIPPED_DIRS: [&str; 3] = [".git", "target", "node_modules"];
/// How much of stderr an answer keeps for diagnosis.
const STDERR_TAIL_BYTES: usize = 4096;
/// How much of stderr an error message quotes.
const ERROR_TAIL_BYTES: usize = 1024;
/// `setup` has no caller-given timeout; this bounds a clone or an install that hangs.
const SETUP_COMMAND_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Secrets shorter than this are not redacted from output: replacing every
/// occurrence of a one- or two-character value would mangle ordinary text.
const MIN_REDACTED_SECRET_LEN: usize = 4;
const EX_TEMPFAIL: i32 = 75;

/// Where the agent's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RepoSource {
    None,
    Git(String),
    Local(PathBuf),
}

/// Runs a command-line agent described by an [`AgentProfile`].
pub struct CommandRuntime {
    profile: AgentProfile,
    /// Values of `profile.secret_env`, read from the worker's environment by the caller.
    secrets: BTreeMap<String, Secret>,
    /// Where a relative local `repo` path is resolved from.
    base_dir: PathBuf,
    /// A git `repo`: how it is checked out (or why it cannot be).
    checkout: Option<Result<RepoCheckout, String>>,
}

impl CommandRuntime {
    pub fn new(
        profile: AgentProfile,
        secrets: BTreeMap<String, Secret>,
        base_dir: PathBuf,
    ) -> Self {
        // The token for a private repo: read from the worker's environment here and
        // handed to git only through its processes' environment (`checkout.rs`).
        let token = (!profile.git_token_env.is_empty())
            .then(|| std::env::var(&profile.git_token_env).ok())
            .flatten()
            .map(Secret::new);
        Self::with_git_token(profile, secrets, base_dir, token)
    }

    /// As [`Self::new`], with the git token given rather than read from the
    /// environment variable the profile names.
    pub fn with_git_token(
        profile: AgentProfile,
        secrets: BTreeMap<String, Secret>,
        base_dir: PathBuf,
        token: Option<Secret>,
    ) -> Self {
        let repo = profile.repo.trim();
        let checkout = is_git_url(repo).then(|| RepoCheckout::new(repo, &profile.git_ref, token));
        Self {
            profile,
            secrets,
            base_dir,
            checkout,
        }
    }

    /// The git checkout of this profile's repo, if its repo is a git URL.
    pub fn repo_checkout(&self) -> Option<&RepoCheckout> {
        self.checkout.as_ref().and_then(|c| c.as_ref().ok())
    }

    fn git_checkout(&self) -> Result<&RepoCheckout, JobError> {
        match &self.checkout {
            Some(Ok(c)) => Ok(c),
            Some(Err(why)) => Err(JobError::permanent(format!("agent repo: {why}"))),
            None => Err(JobError::permanent(
                "the agent's repo is not a git URL: it cannot be refreshed to a commit",
            )),
        }
    }

    /// Move this sandbox's checkout to `commit` (or the profile's ref) and run the
    /// setup commands again. A failed fetch changes nothing; a failed setup puts the
    /// previous commit back. Either way the old commit keeps serving.
    pub async fn refresh_checkout(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        commit: Option<&str>,
    ) -> Result<CheckoutRecord, JobError> {
        let checkout = self.git_checkout()?;
        let previous = checkout.head(provider, sandbox_id, AGENT_DIR).await?;
        let record = checkout
            .refresh(provider, sandbox_id, AGENT_DIR, commit)
            .await?;
        if record.commit != previous
            && let Err(e) = self.run_setup_commands(provider, sandbox_id).await
        {
            tracing::warn!(%sandbox_id, error = %e.message, commit = %record.commit, "setup failed after a refresh; putting the previous commit back");
            checkout
                .refresh(provider, sandbox_id, AGENT_DIR, Some(&previous))
                .await?;
            return Err(e);
        }
        Ok(record)
    }

    fn repo_source(&self) -> RepoSource {
        let repo = self.profile.repo.trim();
        if repo.is_empty() {
            RepoSource::None
        } else if is_git_url(repo) {
            RepoSource::Git(repo.to_string())
        } else {
            RepoSource::Local(self.base_dir.join(repo))
        }
    }

    /// The profile's environment plus the secrets: what every agent process gets.
    fn agent_env(&self) -> BTreeMap<String, String> {
        let mut env = self.profile.env.clone();
        for (name, secret) in &self.secrets {
            env.insert(name.clone(), secret.expose().to_string());
        }
        env
    }

    /// Replace secret values in text that may reach a log, an error or a result.
    fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        for secret in self.secrets.values() {
            if secret.expose().len() >= MIN_REDACTED_SECRET_LEN {
                text = text.replace(secret.expose(), "[redacted]");
            }
        }
        text
    }

    /// [`Self::redact`] without a copy when the text holds no secret (a large answer).
    fn redact_owned(&self, text: String) -> String {
        let holds_secret = self
            .secrets
            .values()
            .any(|s| s.expose().len() >= MIN_REDACTED_SECRET_LEN && text.contains(s.expose()));
        if holds_secret {
            self.redact(&text)
        } else {
            text
        }
    }

    /// [`Self::redact`] through a JSON value: every string (keys included), and a
    /// number whose digits hold a secret becomes the string `[redacted]`.
    fn redact_json(&self, value: serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match value {
            Value::String(s) => Value::String(self.redact(&s)),
            Value::Number(n) => {
                let digits = n.to_string();
                let redacted = self.redact(&digits);
                if redacted == digits {
                    Value::Number(n)
                } else {
                    Value::String(redacted)
                }
            }
            Value::Array(items) => {
                Value::Array(items.into_iter().map(|v| self.redact_json(v)).collect())
            }
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.redact(&k), self.redact_json(v)))
                    .collect(),
            ),
            other => other,
        }
    }

    /// Run one setup-time command in the sandbox and fail unless it exits 0.
    async fn run_setup_command(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        what: &str,
        request: ExecRequest,
    ) -> Result<(), JobError> {
        let output = provider
            .exec(sandbox_id, &request, ExecControl::default())
            .await?;
        if output.exit_code != 0 {
            return Err(self.exit_error(what, &output));
        }
        Ok(())
    }

    async fn copy_local_repo(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        dir: &Path,
    ) -> Result<(), JobError> {
        let root = dir.to_path_buf();
        let files = tokio::task::spawn_blocking(move || list_repo_files(&root))
            .await
            .map_err(|e| JobError::transient(format!("listing the agent repo failed: {e}")))??;
        if files.is_empty() {
            return Err(JobError::permanent(format!(
                "agent repo {} holds no files",
                dir.display()
            )));
        }
        for relative in files {
            let source = dir.join(&relative);
            let contents = tokio::fs::read(&source).await.map_err(|e| {
                JobError::permanent(format!("cannot read {}: {e}", source.display()))
            })?;
            provider
                .write_file(sandbox_id, &format!("{AGENT_DIR}/{relative}"), &contents)
                .await?;
        }
        Ok(())
    }

    /// The error for a command that exited non-zero, classified by its exit code.
    fn exit_error(&self, what: &str, output: &ExecOutput) -> JobError {
        let tail = self.redact(tail_utf8(&output.stderr, ERROR_TAIL_BYTES).trim());
        let message = if tail.is_empty() {
            format!("{what} exited with code {} (no stderr)", output.exit_code)
        } else {
            format!("{what} exited with code {}: {tail}", output.exit_code)
        };
        classify_exit(output.exit_code, message)
    }
}

#[async_trait]
impl AgentRuntime for CommandRuntime {
    fn name(&self) -> &'static str {
        "command"
    }

    fn redact_output(&self, text: &str) -> String {
        self.redact(text)
    }

    async fn setup(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
    ) -> Result<(), JobError> {
        match self.repo_source() {
            RepoSource::None => {
                // Commands run in agent/, so it must exist even with nothing in it.
                provider
                    .write_file(sandbox_id, &format!("{AGENT_DIR}/.keep"), b"")
                    .await?;
            }
            RepoSource::Local(dir) => {
                if !dir.is_dir() {
                    return Err(JobError::permanent(format!(
                        "agent repo {} is not a directory",
                        dir.display()
                    )));
                }
                self.copy_local_repo(provider, sandbox_id, &dir).await?;
            }
            RepoSource::Git(_) => {
                self.git_checkout()?
                    .clone_into(provider, sandbox_id, AGENT_DIR)
                    .await?;
            }
        }
        self.run_setup_commands(provider, sandbox_id).await
    }

    async fn run(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        query: &str,
        options: RunOptions,
    ) -> Result<AgentOutput, JobError> {
        self.run_query(provider, sandbox_id, query, options).await
    }

    async fn refresh(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        commit: Option<&str>,
    ) -> Result<CheckoutRecord, JobError> {
        self.refresh_checkout(provider, sandbox_id, commit).await
    }

    fn repo_checkout(&self) -> Option<&RepoCheckout> {
        CommandRuntime::repo_checkout(self)
    }
}

impl CommandRuntime {
    /// The profile's setup commands, in `agent/`.
    async fn run_setup_commands(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
    ) -> Result<(), JobError> {
        for command in &self.profile.setup {
            let Some((program, args)) = command.split_first() else {
                return Err(JobError::permanent("an agent setup command is empty"));
            };
            let request = ExecRequest {
                program: program.clone(),
                args: args.to_vec(),
                env: self.agent_env(),
                cwd: Some(AGENT_DIR.into()),
                timeout: Some(SETUP_COMMAND_TIMEOUT),
                ..Default::default()
            };
            let what = format!("setup command `{}`", command.join(" "));
            self.run_setup_command(provider, sandbox_id, &what, request)
                .await?;
        }
        Ok(())
    }

    async fn run_query(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        query: &str,
        options: RunOptions,
    ) -> Result<AgentOutput, JobError> {
        let Some((program, args)) = self.profile.command.split_first() else {
            return Err(JobError::permanent("the agent profile has no command"));
        };
        let mut env = self.agent_env();
        env.extend(options.gateway_env.clone());
        let stdin = match self.profile.query_via {
            QueryVia::Stdin => Some(query.as_bytes().to_vec()),
            QueryVia::Env => {
                env.insert("FLEET_QUERY".into(), query.to_string());
                None
            }
            QueryVia::File => {
                provider
                    .write_file(
                        sandbox_id,
                        &format!("{AGENT_DIR}/{QUERY_FILE}"),
                        query.as_bytes(),
                    )
                    .await?;
                env.insert("FLEET_QUERY_FILE".into(), QUERY_FILE.into());
                None
            }
        };
        let request = ExecRequest {
            program: program.clone(),
            args: args.to_vec(),
            env,
            cwd: Some(AGENT_DIR.into()),
            stdin,
            timeout: options.timeout,
            max_output_bytes: options.max_output_bytes,
        };
        let control = ExecControl {
            cancel: options.cancel,
            output: options.output,
        };
        let output = provider.exec(sandbox_id, &request, control).await?;
        if output.exit_code != 0 {
            return Err(self.exit_error("agent", &output));
        }
        // Output that is not whole is never an answer: an empty or cut answer
        // stored as a success would be wrong for good.
        if output.output_lost {
            return Err(JobError::transient(
                "the agent's output stream broke while it ran and part of its output was lost; \
                 running it again",
            ));
        }
        // The output is held once: the text is the bytes read (no copy when they are
        // UTF-8), trimmed and redacted in place where nothing needs replacing.
        let cut = output.stdout_truncated;
        let (mut answer, metadata) = parse_answer(utf8_in_place(output.stdout));
        answer = self.redact_owned(answer);
        if cut {
            // Cut while it was read, at `results.max_bytes` (provider default when 0).
            answer.push_str(&truncation_marker(options.max_output_bytes));
        }
        Ok(AgentOutput {
            answer,
            exit_code: output.exit_code,
            stderr_tail: self.redact(&tail_utf8(&output.stderr, STDERR_TAIL_BYTES)),
            // Everything returned reaches Redis, the API and the CLI: the metadata
            // an agent printed is redacted like its answer.
            metadata: self.redact_json(metadata),
            truncated: output.truncated,
        })
    }
}

/// Exit code to error class: 75 (`EX_TEMPFAIL`) transient, the other sysexits
/// codes 64–78 permanent (the agent says the input itself is wrong), anything
/// else transient (crashes, signals, out of memory: another attempt may work).
fn classify_exit(exit_code: i32, message: String) -> JobError {
    match exit_code {
        EX_TEMPFAIL => JobError::transient(message),
        64..=78 => JobError::permanent(message),
        _ => JobError::transient(message),
    }
}

/// Output larger than this is taken as text without trying it as JSON: parsing
/// would hold it twice.
const MAX_JSON_ANSWER_BYTES: usize = 4 << 20;

/// The line appended to an answer cut at the output cap (`limit` 0: the provider's
/// default cap).
pub fn truncation_marker(limit: usize) -> String {
    let at = if limit == 0 {
        "the sandbox's output limit".to_string()
    } else {
        format!("{limit} bytes (results.max_bytes)")
    };
    format!("\n[dexter-fleet: output truncated at {at}; the agent printed more]\n")
}

/// Bytes as text without copying them: valid UTF-8 is taken as it is, a character cut
/// at the end by the output cap is dropped, and only text with invalid bytes inside is
/// copied (with U+FFFD for them).
fn utf8_in_place(mut bytes: Vec<u8>) -> String {
    if let Err(e) = std::str::from_utf8(&bytes)
        && e.error_len().is_none()
    {
        bytes.truncate(e.valid_up_to());
    }
    match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// An agent that prints a JSON object with a string `answer` gives its answer
/// there and everything else as metadata; any other stdout is the answer as text,
/// trimmed in place.
fn parse_answer(mut stdout: String) -> (String, serde_json::Value) {
    let trimmed = stdout.trim();
    if trimmed.len() <= MAX_JSON_ANSWER_BYTES
        && trimmed.starts_with('{')
        && let Ok(serde_json::Value::Object(mut object)) = serde_json::from_str(trimmed)
        && let Some(serde_json::Value::String(answer)) = object.remove("answer")
    {
        let metadata = if object.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::Object(object)
        };
        return (answer, metadata);
    }
    let end = stdout.trim_end().len();
    stdout.truncate(end);
    let start = stdout.len() - stdout.trim_start().len();
    stdout.drain(..start);
    (stdout, serde_json::Value::Null)
}

/// The last `max` bytes of `bytes` as text, starting on a character boundary.
fn tail_utf8(bytes: &[u8], max: usize) -> String {
    let mut start = bytes.len().saturating_sub(max);
    // Skip UTF-8 continuation bytes (10xxxxxx) so the tail starts on a whole character.
    while start < bytes.len() && start > 0 && bytes[start] & 0xC0 == 0x80 {
        start += 1;
    }
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// Files of a local repo, as `/`-separated paths relative to `root`, skipping
/// `SKIPPED_DIRS`. Symlinks to files are copied as files; symlinks to
/// directories are skipped, as they may loop.
fn list_repo_files(root: &Path) -> Result<Vec<String>, JobError> {
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(relative_dir) = pending.pop() {
        let dir = root.join(&relative_dir);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| JobError::permanent(format!("cannot read {}: {e}", dir.display())))?;
        for entry in entries {
            let entry = entry
                .map_err(|e| JobError::permanent(format!("cannot read {}: {e}", dir.display())))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                return Err(JobError::permanent(format!(
                    "agent repo file name is not UTF-8: {}",
                    entry.path().display()
                )));
            };
            let relative = relative_dir.join(name);
            let file_type = entry.file_type().map_err(|e| {
                JobError::permanent(format!("cannot read {}: {e}", entry.path().display()))
            })?;
            if file_type.is_dir() {
                if !SKIPPED_DIRS.contains(&name) {
                    pending.push(relative);
                }
            } else if file_type.is_file() || entry.path().is_file() {
                let parts: Vec<&str> = relative.iter().filter_map(|p| p.to_str()).collect();
                files.push(parts.join("/"));
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use crate::sandbox::local::{LocalConfig, LocalProvider};
    use crate::sandbox::{SandboxError, SandboxSpec};
    use crate::settings::RuntimeKind;

    const HOSTILE_QUERY: &str =
        "$(touch pwned); rm -rf ~ `id` && touch pwned2; echo \"$HOME\" > pwned3 'q'\n\tline two";

    fn profile(command: &[&str], query_via: QueryVia) -> AgentProfile {
        AgentProfile {
            runtime: RuntimeKind::Command,
            repo: String::new(),
            command: command.iter().map(|s| s.to_string()).collect(),
            query_via,
            setup: Vec::new(),
            env: BTreeMap::new(),
            secret_env: Vec::new(),
            template: String::new(),
            ..Default::default()
        }
    }

    struct Fixture {
        root: tempfile::TempDir,
        provider: LocalProvider,
        sandbox: String,
    }

    async fn fixture() -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let provider = LocalProvider::new(LocalConfig {
            root: root.path().to_path_buf(),
            env_allowlist: vec!["PATH".into()],
            max_output_bytes: 1024 * 1024,
            extra_path: Vec::new(),
        });
        let sandbox = provider.create(&SandboxSpec::default()).await.unwrap().id;
        Fixture {
            root,
            provider,
            sandbox,
        }
    }

    fn runtime(profile: AgentProfile) -> CommandRuntime {
        CommandRuntime::new(profile, BTreeMap::new(), PathBuf::from("/nonexistent"))
    }

    async fn setup_and_run(runtime: &CommandRuntime, query: &str) -> Result<AgentOutput, JobError> {
        let f = fixture().await;
        runtime.setup(&f.provider, &f.sandbox).await?;
        let result = runtime
            .run(&f.provider, &f.sandbox, query, RunOptions::default())
            .await;
        let home = f.root.path().join(&f.sandbox).join("home");
        for name in ["pwned", "pwned2", "pwned3", "agent/pwned", "agent/pwned2"] {
            assert!(!home.join(name).exists(), "{name} was created");
        }
        result
    }

    fn exit(code: i32) -> ExecOutput {
        ExecOutput {
            exit_code: code,
            stderr: b"some context\n".to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_hostile_query_arrives_byte_for_byte_through_stdin() {
        let rt = runtime(profile(&["cat"], QueryVia::Stdin));
        let out = setup_and_run(&rt, HOSTILE_QUERY).await.unwrap();
        assert_eq!(out.answer, HOSTILE_QUERY);
        assert_eq!(out.exit_code, 0);
    }

    #[tokio::test]
    async fn a_hostile_query_arrives_byte_for_byte_through_env() {
        let rt = runtime(profile(
            &[
                "sh",
                "-c",
                "printf '%s' \"$FLEET_QUERY\"; test -z \"$FLEET_QUERY_FILE\"",
            ],
            QueryVia::Env,
        ));
        let out = setup_and_run(&rt, HOSTILE_QUERY).await.unwrap();
        assert_eq!(out.answer, HOSTILE_QUERY);
    }

    #[tokio::test]
    async fn a_hostile_query_arrives_byte_for_byte_through_a_file() {
        let rt = runtime(profile(
            &[
                "sh",
                "-c",
                "test \"$FLEET_QUERY_FILE\" = .fleet-query.txt && cat \"$FLEET_QUERY_FILE\"",
            ],
            QueryVia::File,
        ));
        let f = fixture().await;
        rt.setup(&f.provider, &f.sandbox).await.unwrap();
        let out = rt
            .run(
                &f.provider,
                &f.sandbox,
                HOSTILE_QUERY,
                RunOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(out.answer, HOSTILE_QUERY);
        let written = f
            .provider
            .read_file(&f.sandbox, "agent/.fleet-query.txt")
            .await
            .unwrap();
        assert_eq!(written, HOSTILE_QUERY.as_bytes());
    }

    #[tokio::test]
    async fn a_json_answer_is_split_into_answer_and_metadata() {
        let rt = runtime(profile(
            &["echo", r#"{"answer": "42", "cost_usd": 0.5, "turns": 3}"#],
            QueryVia::Stdin,
        ));
        let out = setup_and_run(&rt, "q").await.unwrap();
        assert_eq!(out.answer, "42");
        assert_eq!(
            out.metadata,
            serde_json::json!({"cost_usd": 0.5, "turns": 3})
        );
    }

    #[test]
    fn answers_parse_as_json_only_when_they_hold_a_string_answer() {
        assert_eq!(
            parse_answer("  plain text\n".into()),
            ("plain text".into(), serde_json::Value::Null)
        );
        assert_eq!(
            parse_answer(r#"{"answer": "only"}"#.into()),
            ("only".into(), serde_json::Value::Null)
        );
        let numeric = r#"{"answer": 42, "x": 1}"#;
        assert_eq!(
            parse_answer(numeric.into()),
            (numeric.into(), serde_json::Value::Null)
        );
        assert_eq!(
            parse_answer("[1, 2]".into()),
            ("[1, 2]".into(), serde_json::Value::Null)
        );
    }

    #[test]
    fn output_becomes_text_in_place() {
        let text = "plain é text".to_string();
        let ptr = text.as_ptr();
        let back = utf8_in_place(text.into_bytes());
        assert_eq!(back, "plain é text");
        assert_eq!(back.as_ptr(), ptr, "valid UTF-8 is not copied");
        // A character cut by the output cap is dropped, not replaced.
        let mut cut = "ab€".as_bytes().to_vec();
        cut.pop();
        assert_eq!(utf8_in_place(cut), "ab");
        assert_eq!(utf8_in_place(vec![b'a', 0xff, b'b']), "a\u{fffd}b");
        let (answer, _) = parse_answer("\n\n  spaced out  \n".into());
        assert_eq!(answer, "spaced out");
    }

    #[tokio::test]
    async fn output_past_the_cap_is_cut_with_a_marker() {
        let rt = runtime(profile(
            &["sh", "-c", "head -c 100000 /dev/zero | tr '\\0' x"],
            QueryVia::Stdin,
        ));
        let f = fixture().await;
        rt.setup(&f.provider, &f.sandbox).await.unwrap();
        let options = RunOptions {
            max_output_bytes: 1000,
            ..Default::default()
        };
        let out = rt.run(&f.provider, &f.sandbox, "q", options).await.unwrap();
        assert!(out.truncated);
        assert!(out.answer.starts_with(&"x".repeat(1000)), "{}", out.answer);
        assert_eq!(
            out.answer,
            format!("{}{}", "x".repeat(1000), truncation_marker(1000))
        );
        assert!(
            out.answer
                .contains("output truncated at 1000 bytes (results.max_bytes)")
        );
    }

    #[test]
    fn exit_codes_are_classified() {
        let rt = runtime(profile(&["x"], QueryVia::Stdin));
        assert_eq!(
            rt.exit_error("agent", &exit(75)).class,
            ErrorClass::Transient
        );
        for code in [64, 65, 66, 70, 74, 76, 78] {
            assert_eq!(
                rt.exit_error("agent", &exit(code)).class,
                ErrorClass::Permanent,
                "{code}"
            );
        }
        for code in [1, 2, 63, 79, 127, 137, 143, -1] {
            assert_eq!(
                rt.exit_error("agent", &exit(code)).class,
                ErrorClass::Transient,
                "{code}"
            );
        }
        let err = rt.exit_error("agent", &exit(65));
        assert_eq!(err.message, "agent exited with code 65: some context");
    }

    #[tokio::test]
    async fn a_failing_agent_reports_its_code_and_stderr_tail() {
        let noisy = "x".repeat(5000);
        let rt = runtime(profile(
            &[
                "sh",
                "-c",
                &format!("echo {noisy} >&2; echo 'no such company' >&2; exit 65"),
            ],
            QueryVia::Stdin,
        ));
        let err = setup_and_run(&rt, "q").await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message.starts_with("agent exited with code 65: "),
            "{}",
            err.message
        );
        assert!(err.message.ends_with("no such company"), "{}", err.message);
        assert!(err.message.len() < 1200, "{}", err.message.len());

        let rt = runtime(profile(&["sh", "-c", "exit 75"], QueryVia::Stdin));
        let err = setup_and_run(&rt, "q").await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(err.message, "agent exited with code 75 (no stderr)");

        let rt = runtime(profile(&["sh", "-c", "kill -9 $$"], QueryVia::Stdin));
        let err = setup_and_run(&rt, "q").await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert!(err.message.contains("137"), "{}", err.message);
    }

    #[tokio::test]
    async fn sandbox_errors_keep_their_class() {
        let rt = runtime(profile(&["sleep", "100"], QueryVia::Stdin));
        let f = fixture().await;
        rt.setup(&f.provider, &f.sandbox).await.unwrap();
        let options = RunOptions {
            timeout: Some(Duration::from_millis(200)),
            ..Default::default()
        };
        let err = rt
            .run(&f.provider, &f.sandbox, "q", options)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Timeout);

        let options = RunOptions::default();
        options.cancel.cancel();
        let err = rt
            .run(&f.provider, &f.sandbox, "q", options)
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Cancelled);

        f.provider.kill(&f.sandbox).await.unwrap();
        let err = rt
            .run(&f.provider, &f.sandbox, "q", RunOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::SandboxLost);

        let missing = runtime(profile(&["no-such-agent-xyz"], QueryVia::Stdin));
        let f = fixture().await;
        missing.setup(&f.provider, &f.sandbox).await.unwrap();
        let err = missing
            .run(&f.provider, &f.sandbox, "q", RunOptions::default())
            .await
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(
            JobError::from(SandboxError::Invalid(
                "program not found: no-such-agent-xyz".into()
            )),
            err
        );
    }

    #[tokio::test]
    async fn secrets_reach_the_agent_but_not_errors_or_answers() {
        let mut p = profile(
            &[
                "sh",
                "-c",
                "echo \"key=$MODEL_KEY plain=$PLAIN\"; echo \"leaking $MODEL_KEY\" >&2; exit ${FAIL:-0}",
            ],
            QueryVia::Stdin,
        );
        p.env.insert("PLAIN".into(), "visible".into());
        let secrets = BTreeMap::from([("MODEL_KEY".to_string(), Secret::new("sk-very-secret"))]);
        let rt = CommandRuntime::new(p.clone(), secrets.clone(), PathBuf::new());
        let out = setup_and_run(&rt, "q").await.unwrap();
        assert_eq!(out.answer, "key=[redacted] plain=visible");
        assert_eq!(out.stderr_tail, "leaking [redacted]\n");

        p.env.insert("FAIL".into(), "1".into());
        let rt = CommandRuntime::new(p, secrets, PathBuf::new());
        let err = setup_and_run(&rt, "q").await.unwrap_err();
        assert!(!err.message.contains("sk-very-secret"), "{}", err.message);
        assert!(
            err.message.contains("leaking [redacted]"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn secrets_are_redacted_from_json_metadata() {
        let p = profile(
            &[
                "sh",
                "-c",
                r#"printf '{"answer":"a","debug":"k=%s","deep":[{"%s":["%s"]}],"n":1}' "$K" "$K" "$K""#,
            ],
            QueryVia::Stdin,
        );
        let secrets = BTreeMap::from([("K".to_string(), Secret::new("sk-very-secret"))]);
        let rt = CommandRuntime::new(p, secrets, PathBuf::new());
        let out = setup_and_run(&rt, "q").await.unwrap();
        assert_eq!(out.answer, "a");
        assert_eq!(
            out.metadata,
            serde_json::json!({"debug": "k=[redacted]", "deep": [{"[redacted]": ["[redacted]"]}], "n": 1})
        );
        let numeric = CommandRuntime::new(
            profile(&["true"], QueryVia::Stdin),
            BTreeMap::from([("K".to_string(), Secret::new("31415926"))]),
            PathBuf::new(),
        );
        assert_eq!(
            numeric.redact_json(serde_json::json!({"pin": 31415926, "other": 2})),
            serde_json::json!({"pin": "[redacted]", "other": 2})
        );
    }

    #[tokio::test]
    async fn setup_copies_a_local_repo_and_runs_setup_commands_in_it() {
        let base = tempfile::tempdir().unwrap();
        let repo = base.path().join("agents/echo");
        std::fs::create_dir_all(repo.join("lib")).unwrap();
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        std::fs::create_dir_all(repo.join("node_modules/dep")).unwrap();
        std::fs::create_dir_all(repo.join("target/debug")).unwrap();
        std::fs::write(repo.join("run.sh"), "cat lib/prefix.txt; cat\n").unwrap();
        std::fs::write(repo.join("lib/prefix.txt"), "echo: ").unwrap();
        std::fs::write(repo.join(".git/HEAD"), "ref").unwrap();
        std::fs::write(repo.join("node_modules/dep/index.js"), "").unwrap();
        std::fs::write(repo.join("target/debug/big"), "").unwrap();

        let mut p = profile(&["sh", "run.sh"], QueryVia::Stdin);
        p.repo = "agents/echo".into();
        p.setup = vec![vec!["sh".into(), "-c".into(), "pwd > setup-ran".into()]];
        let rt = CommandRuntime::new(p, BTreeMap::new(), base.path().to_path_buf());
        let f = fixture().await;
        rt.setup(&f.provider, &f.sandbox).await.unwrap();

        let agent = f.root.path().join(&f.sandbox).join("home/agent");
        assert!(agent.join("run.sh").is_file());
        assert!(agent.join("lib/prefix.txt").is_file());
        for skipped in [".git", "node_modules", "target"] {
            assert!(!agent.join(skipped).exists(), "{skipped} was copied");
        }
        let setup_dir = std::fs::read_to_string(agent.join("setup-ran")).unwrap();
        assert_eq!(setup_dir.trim(), agent.to_str().unwrap());

        let out = rt
            .run(&f.provider, &f.sandbox, "hello", RunOptions::default())
            .await
            .unwrap();
        assert_eq!(out.answer, "echo: hello");
    }

    #[tokio::test]
    async fn setup_failures_are_classified() {
        let mut p = profile(&["true"], QueryVia::Stdin);
        p.repo = "does/not/exist".into();
        let base = tempfile::tempdir().unwrap();
        let rt = CommandRuntime::new(p.clone(), BTreeMap::new(), base.path().to_path_buf());
        let f = fixture().await;
        let err = rt.setup(&f.provider, &f.sandbox).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);

        p.repo = String::new();
        p.setup = vec![vec![
            "sh".into(),
            "-c".into(),
            "echo broken >&2; exit 3".into(),
        ]];
        let rt = CommandRuntime::new(p, BTreeMap::new(), base.path().to_path_buf());
        let err = rt.setup(&f.provider, &f.sandbox).await.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(
            err.message,
            "setup command `sh -c echo broken >&2; exit 3` exited with code 3: broken"
        );
    }

    #[tokio::test]
    async fn setup_clones_a_git_url() {
        let upstream = tempfile::tempdir().unwrap();
        let git = |args: &[&str]| {
            let status = std::process::Command::new("git")
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .current_dir(upstream.path())
                .status()
                .expect("git is installed");
            assert!(status.success(), "git {args:?}");
        };
        git(&["init", "-q"]);
        std::fs::write(upstream.path().join("answer.txt"), "from git\n").unwrap();
        git(&["add", "answer.txt"]);
        git(&["commit", "-q", "-m", "init"]);

        let mut p = profile(&["cat", "answer.txt"], QueryVia::Stdin);
        p.repo = format!("file://{}", upstream.path().display());
        let out = setup_and_run(&runtime(p), "q").await.unwrap();
        assert_eq!(out.answer, "from git");

        let mut p = profile(&["true"], QueryVia::Stdin);
        p.repo = "file:///nonexistent/repo.git".into();
        let err = setup_and_run(&runtime(p), "q").await.unwrap_err();
        assert!(
            err.message
                .starts_with("git fetch of file:///nonexistent/repo.git failed (exit 128)"),
            "{}",
            err.message
        );
        assert_eq!(err.class, ErrorClass::Permanent, "no such repo: no retry");
    }

    #[test]
    fn repo_sources_are_recognised() {
        let rt = |repo: &str| {
            let mut p = profile(&["x"], QueryVia::Stdin);
            p.repo = repo.into();
            CommandRuntime::new(p, BTreeMap::new(), PathBuf::from("/base")).repo_source()
        };
        for url in [
            "https://github.com/x/y",
            "git@github.com:x/y.git",
            "file:///srv/y",
            "ssh://git@host/y",
            "../y.git",
        ] {
            assert_eq!(rt(url), RepoSource::Git(url.into()), "{url}");
        }
        assert_eq!(
            rt("agents/demo"),
            RepoSource::Local("/base/agents/demo".into())
        );
        assert_eq!(rt("/abs/agent"), RepoSource::Local("/abs/agent".into()));
        assert_eq!(rt(""), RepoSource::None);
    }

    #[test]
    fn stderr_tails_start_on_a_character_boundary() {
        let text = "é".repeat(10);
        let tail = tail_utf8(text.as_bytes(), 5);
        assert_eq!(tail, "éé");
        assert_eq!(tail_utf8(b"short", 4096), "short");
    }
}
