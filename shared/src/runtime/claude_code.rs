//! The `claude_code` runtime: runs the Claude Code CLI headless (`runtime = "claude_code"`).
//!
//! `setup` puts the profile's repo in `agent/` (as the `command` runtime does), then
//! makes sure a `claude` binary is there: the one on the sandbox's `PATH`, or else the
//! pinned `@anthropic-ai/claude-code` installed with npm under `.fleet/claude-code`. The
//! path found is kept in `agent/.fleet/claude-cli`.
//!
//! `run` starts `claude -p --output-format stream-json --verbose` in `agent/` with the
//! query on stdin (never in argv or a shell string) and the profile's model, max turns,
//! allowed tools, permission mode and budget as flags. The fleet owns retries: the
//! CLI's own are off (`CLAUDE_CODE_MAX_RETRIES=0`) and its request timeout
//! (`API_TIMEOUT_MS`) is set below the attempt's time, so an API error ends the run at
//! once and the queue decides, honouring the provider's `retry-after` (read from the
//! SDK's debug log of the response headers, `ANTHROPIC_LOG=debug`).
//!
//! The final `result` event becomes the answer (`result`) and the metadata
//! (`is_error`, `subtype`, `num_turns`, `total_cost_usd`, `usage`, `session_id`,
//! `duration_ms`, ...), for failed runs too (on the error's `details`). Errors are
//! classified from the structured fields: HTTP 400/401/403/404/413, `error_max_turns`
//! and `error_max_budget_usd` are permanent; 408/409/429/5xx/529 and anything
//! unexplained are transient.
//!
//! Sessions: with `resume_session`, a job addressed to a persistent agent resumes the
//! agent's last session (`--resume`), whose ID is kept in the sandbox
//! (`agent/.fleet/claude-session-id`) after every run, failed ones included, so a retry
//! continues the conversation rather than starting over.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::command::CommandRuntime;
use super::{AgentOutput, AgentRuntime, RunOptions, redact, redact_value, tail_utf8, tighter_cap};
use crate::error::{ErrorClass, JobError};
use crate::sandbox::{ExecControl, ExecRequest, SandboxProvider};
use crate::secret::Secret;
use crate::settings::AgentProfile;

/// The CLI version installed when the sandbox has none (npm `@anthropic-ai/claude-code`).
pub const DEFAULT_CLI_VERSION: &str = "2.1.332";
const NPM_PACKAGE: &str = "@anthropic-ai/claude-code";
/// npm prefix of an installed CLI, relative to the sandbox home.
const CLI_PREFIX: &str = ".fleet/claude-code";
/// Where setup records the CLI's path (relative to the sandbox home).
const CLI_PATH_FILE: &str = "agent/.fleet/claude-cli";
/// The agent's last session ID (relative to the sandbox home).
const SESSION_FILE: &str = "agent/.fleet/claude-session-id";
const AGENT_DIR: &str = "agent";
/// stream-json output with `--verbose` carries every tool result; the final `result`
/// event comes last, so the limit must hold a whole run.
const MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;
const SETUP_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const STDERR_TAIL_BYTES: usize = 4096;
const ERROR_TAIL_BYTES: usize = 1024;
/// Time left, after the CLI's request timeout, for it to report and exit.
const REPORT_MARGIN: Duration = Duration::from_secs(5);

pub struct ClaudeCodeRuntime {
    profile: AgentProfile,
    secrets: BTreeMap<String, Secret>,
    /// Puts the repo in place and runs the profile's setup commands.
    files: CommandRuntime,
}

impl ClaudeCodeRuntime {
    pub fn new(
        profile: AgentProfile,
        secrets: BTreeMap<String, Secret>,
        base_dir: PathBuf,
    ) -> Self {
        let files = CommandRuntime::new(profile.clone(), secrets.clone(), base_dir);
        Self {
            profile,
            secrets,
            files,
        }
    }

    fn cli_version(&self) -> &str {
        if self.profile.cli_version.is_empty() {
            DEFAULT_CLI_VERSION
        } else {
            &self.profile.cli_version
        }
    }

    fn agent_env(&self) -> BTreeMap<String, String> {
        let mut env = self.profile.env.clone();
        for (name, secret) in &self.secrets {
            env.insert(name.clone(), secret.expose().to_string());
        }
        env
    }

    /// The CLI path setup found, or `claude` (the sandbox's PATH).
    async fn cli(&self, provider: &dyn SandboxProvider, sandbox_id: &str) -> String {
        match provider.read_file(sandbox_id, CLI_PATH_FILE).await {
            Ok(bytes) => {
                let path = String::from_utf8_lossy(&bytes).trim().to_string();
                if path.is_empty() {
                    "claude".into()
                } else {
                    path
                }
            }
            Err(_) => "claude".into(),
        }
    }

    async fn saved_session(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
    ) -> Option<String> {
        let bytes = provider.read_file(sandbox_id, SESSION_FILE).await.ok()?;
        let id = String::from_utf8_lossy(&bytes).trim().to_string();
        is_session_id(&id).then_some(id)
    }

    async fn find_or_install_cli(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
    ) -> Result<String, JobError> {
        let probe = ExecRequest {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                format!(
                    "command -v claude || {{ test -x {CLI_PREFIX}/node_modules/.bin/claude && echo \"$PWD/{CLI_PREFIX}/node_modules/.bin/claude\"; }}"
                ),
            ],
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let found = provider
            .exec(sandbox_id, &probe, ExecControl::default())
            .await?;
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        if found.exit_code == 0 && !path.is_empty() {
            return Ok(path);
        }
        let install = ExecRequest {
            program: "npm".into(),
            args: vec![
                "install".into(),
                "--prefix".into(),
                CLI_PREFIX.into(),
                "--no-audit".into(),
                "--no-fund".into(),
                format!("{NPM_PACKAGE}@{}", self.cli_version()),
            ],
            env: self.profile.env.clone(),
            timeout: Some(SETUP_TIMEOUT),
            ..Default::default()
        };
        let installed = provider
            .exec(sandbox_id, &install, ExecControl::default())
            .await?;
        if installed.exit_code != 0 {
            let tail = redact(
                &self.secrets,
                tail_utf8(&installed.stderr, ERROR_TAIL_BYTES).trim(),
            );
            return Err(JobError::transient(format!(
                "installing {NPM_PACKAGE}@{} exited with code {}: {tail}",
                self.cli_version(),
                installed.exit_code
            )));
        }
        let found = provider
            .exec(sandbox_id, &probe, ExecControl::default())
            .await?;
        let path = String::from_utf8_lossy(&found.stdout).trim().to_string();
        if found.exit_code != 0 || path.is_empty() {
            return Err(JobError::permanent(format!(
                "{NPM_PACKAGE}@{} installed but no claude binary was found",
                self.cli_version()
            )));
        }
        Ok(path)
    }
}

#[async_trait]
impl AgentRuntime for ClaudeCodeRuntime {
    fn name(&self) -> &'static str {
        "claude_code"
    }

    /// `--output-format stream-json`: one event per line on stdout.
    fn event_pipe(&self) -> Option<super::OutputPipe> {
        Some(super::OutputPipe::Stdout)
    }

    fn redact_output(&self, text: &str) -> String {
        redact(&self.secrets, text)
    }

    async fn setup(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
    ) -> Result<(), JobError> {
        self.files.setup(provider, sandbox_id).await?;
        let cli = self.find_or_install_cli(provider, sandbox_id).await?;
        provider
            .write_file(sandbox_id, CLI_PATH_FILE, cli.as_bytes())
            .await?;
        tracing::info!(%sandbox_id, cli = %cli, "claude code ready");
        Ok(())
    }

    async fn run(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        query: &str,
        options: RunOptions,
    ) -> Result<AgentOutput, JobError> {
        let keep_session = self.profile.resume_session && options.keep_session;
        let mut resume = if keep_session {
            self.saved_session(provider, sandbox_id).await
        } else {
            None
        };
        let program = self.cli(provider, sandbox_id).await;
        let mut profile = self.profile.clone();
        profile.max_turns = tighter_cap(profile.max_turns, options.max_turns);
        profile.max_budget_usd = tighter_cap(profile.max_budget_usd, options.max_budget_usd);
        // A second run (a fresh session, below) gets only what is left of the attempt.
        let deadline = options.timeout.map(|t| std::time::Instant::now() + t);
        let (output, parsed) = loop {
            let timeout = deadline.map(|d| d.saturating_duration_since(std::time::Instant::now()));
            let mut env = self.agent_env();
            env.extend(control_env(timeout));
            env.extend(options.gateway_env.clone());
            let request = ExecRequest {
                program: program.clone(),
                args: cli_args(&profile, resume.as_deref()),
                env,
                cwd: Some(AGENT_DIR.into()),
                stdin: Some(query.as_bytes().to_vec()),
                timeout,
                max_output_bytes: MAX_OUTPUT_BYTES,
            };
            let control = ExecControl {
                cancel: options.cancel.clone(),
                output: options.output.clone(),
            };
            let output = provider.exec(sandbox_id, &request, control).await?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let parsed = parse_run(&stdout, &stderr, output.exit_code, output.truncated);
            // A saved session the CLI no longer has (its transcript is gone) would fail
            // every later job on the agent: start a fresh session instead, once.
            if resume.is_some() && parsed.resume_refused() {
                tracing::warn!(%sandbox_id, session = ?resume, "the agent's saved session cannot be resumed; starting a new one");
                resume = None;
                continue;
            }
            break (output, parsed);
        };
        if keep_session
            && let Some(id) = parsed.session_id()
            && is_session_id(id)
        {
            provider
                .write_file(sandbox_id, SESSION_FILE, id.as_bytes())
                .await?;
        }
        let metadata = redact_value(&self.secrets, parsed.metadata);
        match parsed.outcome {
            Ok(answer) => Ok(AgentOutput {
                answer: redact(&self.secrets, &answer),
                exit_code: output.exit_code,
                stderr_tail: redact(&self.secrets, &tail_utf8(&output.stderr, STDERR_TAIL_BYTES)),
                metadata,
                truncated: output.truncated,
            }),
            Err(mut err) => {
                err.message = redact(&self.secrets, &err.message);
                Err(err.with_details(metadata))
            }
        }
    }

    async fn refresh(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        commit: Option<&str>,
    ) -> Result<super::checkout::CheckoutRecord, JobError> {
        self.files
            .refresh_checkout(provider, sandbox_id, commit)
            .await
    }

    fn repo_checkout(&self) -> Option<&super::checkout::RepoCheckout> {
        self.files.repo_checkout()
    }
}

/// The CLI's own retry and timeout settings: no retries (the queue retries, honouring
/// `retry-after`), a request timeout below the attempt's time, and the SDK's debug log
/// (response headers, the API key masked) so a 429's `retry-after` can be read.
fn control_env(attempt_timeout: Option<Duration>) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("CLAUDE_CODE_MAX_RETRIES".into(), "0".into());
    env.insert("DISABLE_AUTOUPDATER".into(), "1".into());
    env.insert(
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC".into(),
        "1".into(),
    );
    env.insert("ANTHROPIC_LOG".into(), "debug".into());
    if let Some(timeout) = attempt_timeout {
        let request = timeout
            .saturating_sub(REPORT_MARGIN)
            .max(timeout / 2)
            .max(Duration::from_secs(1));
        env.insert("API_TIMEOUT_MS".into(), request.as_millis().to_string());
    }
    env
}

/// The CLI's arguments: the query is not among them (it goes in on stdin).
fn cli_args(profile: &AgentProfile, resume: Option<&str>) -> Vec<String> {
    let mut args: Vec<String> = ["-p", "--output-format", "stream-json", "--verbose"]
        .map(String::from)
        .to_vec();
    if !profile.model.is_empty() {
        args.extend(["--model".into(), profile.model.clone()]);
    }
    if profile.max_turns > 0 {
        args.extend(["--max-turns".into(), profile.max_turns.to_string()]);
    }
    if !profile.allowed_tools.is_empty() {
        args.extend(["--allowedTools".into(), profile.allowed_tools.join(",")]);
    }
    if !profile.permission_mode.is_empty() {
        args.extend(["--permission-mode".into(), profile.permission_mode.clone()]);
    }
    if profile.max_budget_usd > 0.0 {
        args.extend([
            "--max-budget-usd".into(),
            profile.max_budget_usd.to_string(),
        ]);
    }
    if let Some(id) = resume {
        args.extend(["--resume".into(), id.to_string()]);
    }
    args
}

/// A session ID as the CLI makes them (a UUID): checked before it goes into argv.
fn is_session_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('-')
        && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

/// What one run of the CLI produced.
#[derive(Debug)]
pub struct ParsedRun {
    /// The answer, or the classified failure.
    pub outcome: Result<String, JobError>,
    /// The result event's figures (Null when there was none).
    pub metadata: Value,
}

impl ParsedRun {
    pub fn session_id(&self) -> Option<&str> {
        self.metadata.get("session_id").and_then(Value::as_str)
    }

    /// The CLI ended before its first turn with `error_during_execution`: what it does
    /// when `--resume` names a session it does not have.
    pub fn resume_refused(&self) -> bool {
        self.outcome.is_err()
            && self.metadata.get("subtype").and_then(Value::as_str)
                == Some("error_during_execution")
            && self.metadata.get("num_turns").and_then(Value::as_u64) == Some(0)
    }
}

/// Fields of the result event kept as the job's metadata.
const RESULT_FIELDS: [&str; 12] = [
    "is_error",
    "subtype",
    "num_turns",
    "total_cost_usd",
    "usage",
    "session_id",
    "duration_ms",
    "duration_api_ms",
    "api_error_status",
    "terminal_reason",
    "errors",
    "permission_denials",
];

/// Parse the CLI's stream-json output (pure). Lines that are not JSON (the SDK's debug
/// log) are skipped; the last `result` event decides; without one, the exit code and
/// stderr explain the failure.
pub fn parse_run(stdout: &str, stderr: &str, exit_code: i32, truncated: bool) -> ParsedRun {
    let mut result: Option<Map<String, Value>> = None;
    let mut session_id: Option<String> = None;
    for line in stdout.lines() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let Ok(Value::Object(event)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if session_id.is_none()
            && let Some(id) = event.get("session_id").and_then(Value::as_str)
        {
            session_id = Some(id.to_string());
        }
        if event.get("type").and_then(Value::as_str) == Some("result") {
            result = Some(event);
        }
    }
    let retry_after = retry_after(stdout).or_else(|| retry_after(stderr));
    let Some(result) = result else {
        let metadata = session_id.map_or(Value::Null, |id| json!({"session_id": id}));
        let tail = tail_utf8(stderr.as_bytes(), ERROR_TAIL_BYTES);
        let tail = tail.trim();
        let err = if truncated {
            JobError::permanent(format!(
                "claude code printed more than {} MiB before its result event; the output was cut",
                MAX_OUTPUT_BYTES / (1024 * 1024)
            ))
        } else if tail.is_empty() {
            JobError::transient(format!(
                "claude code exited with code {exit_code} without a result event"
            ))
        } else {
            JobError::transient(format!(
                "claude code exited with code {exit_code} without a result event: {tail}"
            ))
        };
        return ParsedRun {
            outcome: Err(err.with_retry_after(retry_after)),
            metadata,
        };
    };
    let mut metadata = Map::new();
    for field in RESULT_FIELDS {
        if let Some(value) = result.get(field)
            && !value.is_null()
        {
            metadata.insert(field.to_string(), value.clone());
        }
    }
    if !metadata.contains_key("session_id")
        && let Some(id) = session_id
    {
        metadata.insert("session_id".into(), Value::String(id));
    }
    let is_error = result
        .get("is_error")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let subtype = result.get("subtype").and_then(Value::as_str).unwrap_or("");
    let text = result.get("result").and_then(Value::as_str).unwrap_or("");
    let status = result.get("api_error_status").and_then(Value::as_u64);
    let outcome = if !is_error && subtype == "success" {
        if text.trim().is_empty() {
            Err(JobError::permanent(
                "claude code finished with an empty answer",
            ))
        } else {
            Ok(text.to_string())
        }
    } else {
        Err(classify(&result, subtype, status, text).with_retry_after(retry_after))
    };
    ParsedRun {
        outcome,
        metadata: Value::Object(metadata),
    }
}

/// A failed result event as a job error, from its structured fields.
fn classify(
    result: &Map<String, Value>,
    subtype: &str,
    status: Option<u64>,
    text: &str,
) -> JobError {
    let errors: Vec<&str> = result
        .get("errors")
        .and_then(Value::as_array)
        .map(|e| e.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let reason = if !text.is_empty() {
        text.to_string()
    } else if !errors.is_empty() {
        errors.join("; ")
    } else {
        "no reason given".into()
    };
    let kind = result.get("api_error_type").and_then(Value::as_str);
    let what = match (status, kind) {
        (Some(status), Some(kind)) => format!("claude code {subtype}, HTTP {status} {kind}"),
        (Some(status), None) => format!("claude code {subtype}, HTTP {status}"),
        _ => format!("claude code {subtype}"),
    };
    let message = format!("{what}: {reason}");
    let class = match (subtype, status) {
        ("error_max_turns" | "error_max_budget_usd" | "error_max_structured_output_retries", _) => {
            ErrorClass::Permanent
        }
        (_, Some(400 | 401 | 403 | 404 | 413 | 422)) => ErrorClass::Permanent,
        _ => ErrorClass::Transient,
    };
    JobError::new(class, message)
}

/// The last `retry-after` (seconds) or `retry-after-ms` response header in the SDK's
/// debug log: `"retry-after": "7",`.
fn retry_after(log: &str) -> Option<Duration> {
    let mut found = None;
    for line in log.lines() {
        let line = line.trim().trim_end_matches(',');
        let value = |name: &str| {
            let rest = line.strip_prefix(&format!("\"{name}\":"))?.trim();
            rest.trim_matches('"')
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        if let Some(ms) = value("retry-after-ms") {
            found = Some(Duration::from_secs_f64((ms / 1000.0).min(86_400.0)));
        } else if let Some(secs) = value("retry-after") {
            found = Some(Duration::from_secs_f64(secs.min(86_400.0)));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        super::super::testdata("claude_code", name)
    }

    fn parse(name: &str, exit_code: i32) -> ParsedRun {
        parse_run(&fixture(name), "", exit_code, false)
    }

    #[test]
    fn a_successful_run_gives_the_result_as_answer_and_its_figures_as_metadata() {
        let run = parse("success.jsonl", 0);
        assert_eq!(
            run.outcome.unwrap(),
            "Revenue grew 12% — see 10-K.\nLine two \"quoted\""
        );
        let m = &run.metadata;
        assert_eq!(m["is_error"], false);
        assert_eq!(m["subtype"], "success");
        assert_eq!(m["num_turns"], 1);
        assert_eq!(m["total_cost_usd"], 0.00081);
        assert_eq!(m["session_id"], "6abbaccb-ee5b-4755-bac5-b424d9a985a8");
        assert_eq!(m["duration_ms"], 212);
        assert_eq!(m["usage"]["input_tokens"], 120);
        assert_eq!(m["usage"]["output_tokens"], 30);
    }

    #[test]
    fn an_empty_answer_is_a_permanent_failure() {
        let run = parse("empty_answer.jsonl", 0);
        let err = run.outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(err.message.contains("empty answer"), "{}", err.message);
        assert_eq!(run.metadata["num_turns"], 1);
    }

    #[test]
    fn a_401_is_permanent_and_keeps_its_reason_and_figures() {
        let run = parse("auth_401.jsonl", 1);
        let err = run.outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(
            err.message,
            "claude code success, HTTP 401 authentication_error: Invalid API key · Fix external API key"
        );
        assert_eq!(run.metadata["api_error_status"], 401);
        assert_eq!(run.metadata["is_error"], true);
        assert_eq!(
            run.metadata["session_id"],
            "71f55b5e-6c47-4f2c-bbfd-a77c72adf240"
        );
    }

    #[test]
    fn a_429_is_transient_with_the_providers_retry_after() {
        let run = parse("rate_limit_429.jsonl", 1);
        let err = run.outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(err.retry_after, Some(Duration::from_secs(7)));
        assert!(
            err.message.contains("HTTP 429 rate_limit_error"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_529_is_transient() {
        let run = parse("overloaded_529.jsonl", 1);
        let err = run.outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(err.retry_after, None);
        assert!(
            err.message.contains("HTTP 529 overloaded_error"),
            "{}",
            err.message
        );
    }

    #[test]
    fn max_turns_and_budget_are_permanent() {
        let run = parse("max_turns.jsonl", 1);
        let err = run.outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(
            err.message,
            "claude code error_max_turns: Reached maximum number of turns (1)"
        );
        assert_eq!(run.metadata["num_turns"], 2);
        assert_eq!(run.metadata["total_cost_usd"], 0.00081);

        let run = parse("budget.jsonl", 1);
        let err = run.outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message.contains("error_max_budget_usd"),
            "{}",
            err.message
        );
        assert_eq!(run.metadata["subtype"], "error_max_budget_usd");
    }

    #[test]
    fn malformed_output_without_a_result_event_is_transient() {
        let run = parse_run(
            &fixture("malformed.jsonl"),
            "Error: something broke\n",
            1,
            false,
        );
        let err = run.outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(
            err.message,
            "claude code exited with code 1 without a result event: Error: something broke"
        );
        // The session the init event announced is still recorded.
        assert_eq!(
            run.metadata["session_id"],
            "0c3b8a7e-5a0e-4f7c-9d51-6f2f1f0e9b11"
        );
    }

    #[test]
    fn huge_output_cut_before_the_result_is_a_clear_permanent_failure() {
        let init = fixture("success.jsonl").lines().next().unwrap().to_string();
        let mut huge = init + "\n";
        let filler = format!(
            "{{\"type\":\"assistant\",\"message\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{}\"}}]}}}}\n",
            "x".repeat(64 * 1024)
        );
        while huge.len() < MAX_OUTPUT_BYTES {
            huge.push_str(&filler);
        }
        huge.truncate(MAX_OUTPUT_BYTES);
        let run = parse_run(&huge, "", 0, true);
        let err = run.outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message.contains("the output was cut"),
            "{}",
            err.message
        );

        // A huge answer that did fit is kept whole.
        let answer = "y".repeat(2 * 1024 * 1024);
        let result = json!({"type": "result", "subtype": "success", "is_error": false, "result": answer, "num_turns": 1});
        let run = parse_run(&format!("{result}\n"), "", 0, false);
        assert_eq!(run.outcome.unwrap().len(), answer.len());
    }

    #[test]
    fn a_session_the_cli_cannot_resume_is_recognised() {
        let run = parse("resume_missing.jsonl", 1);
        assert!(run.resume_refused());
        assert_eq!(run.outcome.unwrap_err().class, ErrorClass::Transient);
        for other in ["auth_401.jsonl", "max_turns.jsonl", "success.jsonl"] {
            assert!(!parse(other, 1).resume_refused(), "{other}");
        }
    }

    #[test]
    fn retry_after_is_read_from_the_debug_log() {
        assert_eq!(
            retry_after("    \"retry-after\": \"7\",\n"),
            Some(Duration::from_secs(7))
        );
        assert_eq!(
            retry_after("\"retry-after\": \"1\",\n  \"retry-after-ms\": \"2500\",\n"),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(retry_after("\"retry-after\": \"Wed, 21 Oct 2015\""), None);
        assert_eq!(retry_after("nothing"), None);
    }

    #[test]
    fn arguments_come_from_the_profile_and_never_hold_the_query() {
        let profile = AgentProfile {
            model: "sonnet".into(),
            max_turns: 8,
            allowed_tools: vec!["Read".into(), "Bash(git diff:*)".into()],
            permission_mode: "acceptEdits".into(),
            max_budget_usd: 0.5,
            ..Default::default()
        };
        assert_eq!(
            cli_args(&profile, Some("8b7f692c-b82b-49c0-b361-a7ddc0c22ffc")).join(" "),
            "-p --output-format stream-json --verbose --model sonnet --max-turns 8 \
             --allowedTools Read,Bash(git diff:*) --permission-mode acceptEdits \
             --max-budget-usd 0.5 --resume 8b7f692c-b82b-49c0-b361-a7ddc0c22ffc"
        );
        assert_eq!(
            cli_args(&AgentProfile::default(), None).join(" "),
            "-p --output-format stream-json --verbose"
        );
        assert!(is_session_id("8b7f692c-b82b-49c0-b361-a7ddc0c22ffc"));
        for bad in ["", "--dangerously-skip-permissions", "abc; rm -rf /", "x y"] {
            assert!(!is_session_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_cli_request_timeout_stays_below_the_attempt() {
        let env = control_env(Some(Duration::from_secs(600)));
        assert_eq!(env["API_TIMEOUT_MS"], "595000");
        assert_eq!(env["CLAUDE_CODE_MAX_RETRIES"], "0");
        let env = control_env(Some(Duration::from_secs(4)));
        assert_eq!(env["API_TIMEOUT_MS"], "2000");
        assert!(!control_env(None).contains_key("API_TIMEOUT_MS"));
    }
}
