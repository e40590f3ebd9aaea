//! The `dexter` runtime: Dexter (virattt/dexter, TypeScript on Bun) answering one query
//! per job (`runtime = "dexter"`).
//!
//! Dexter has no headless command, so the fleet ships its own wrapper,
//! `agents/dexter/run-once.ts` (compiled into the worker), and uploads it into the root
//! of the Dexter checkout. `setup` runs once per agent (sandbox): the checkout is copied
//! or cloned into `agent/` and the profile's setup commands run there (`bun install
//! --frozen-lockfile --ignore-scripts`); how long it took is recorded in
//! `agent/.fleet/setup.json` and the log. Later jobs on the agent reuse it. On E2B, bake
//! the checkout and its install into a template (see `config/examples/dexter.toml`) so
//! the first job does not pay for them.
//!
//! `run` starts `bun run fleet-run-once.ts` in `agent/` (the profile's `command`, if set,
//! replaces `bun`, e.g. to add `--preload`) with the query on stdin, `DEXTER_TIMEOUT_MS`
//! below the attempt's time, and `FLEET_DEXTER_CLEAR_CACHE=1` unless the profile shares
//! `.dexter/cache` on purpose (`share_cache`). The wrapper prints one JSON result; an
//! empty answer or one starting with `Error:` is a failure, classified from the HTTP
//! status of the failed model call the wrapper saw (not from message text); Dexter's
//! "Reached maximum iterations" sentinel is a permanent failure, like Claude's max turns.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Map, Value, json};

use super::command::CommandRuntime;
use super::{AgentOutput, AgentRuntime, RunOptions, redact, redact_value, tail_utf8, tighter_cap};
use crate::error::{ErrorClass, JobError};
use crate::sandbox::{ExecControl, ExecRequest, SandboxProvider};
use crate::secret::Secret;
use crate::settings::AgentProfile;

/// The wrapper, as shipped in this repository.
pub const RUN_ONCE_TS: &str = include_str!("../../../agents/dexter/run-once.ts");
/// Where the wrapper goes: the checkout's root, so its `./src/...` imports resolve.
const WRAPPER: &str = "fleet-run-once.ts";
const AGENT_DIR: &str = "agent";
const SETUP_RECORD: &str = "agent/.fleet/setup.json";
const STDERR_TAIL_BYTES: usize = 4096;
const ERROR_TAIL_BYTES: usize = 1024;
/// Time left, after `DEXTER_TIMEOUT_MS`, for the wrapper to print its result and exit.
const REPORT_MARGIN: Duration = Duration::from_secs(5);

pub struct DexterRuntime {
    profile: AgentProfile,
    secrets: BTreeMap<String, Secret>,
    /// Puts the checkout in place and runs the profile's setup commands.
    files: CommandRuntime,
}

impl DexterRuntime {
    pub fn new(
        profile: AgentProfile,
        secrets: BTreeMap<String, Secret>,
        base_dir: PathBuf,
    ) -> Self {
        // The checkout and setup commands are the command runtime's; its `command` is
        // not used for them.
        let files = CommandRuntime::new(profile.clone(), secrets.clone(), base_dir);
        Self {
            profile,
            secrets,
            files,
        }
    }

    fn agent_env(&self) -> BTreeMap<String, String> {
        let mut env = self.profile.env.clone();
        for (name, secret) in &self.secrets {
            env.insert(name.clone(), secret.expose().to_string());
        }
        env
    }

    /// The command line: the profile's `command` (default `bun`), then `run <wrapper>`.
    fn argv(&self) -> (String, Vec<String>) {
        let mut argv = if self.profile.command.is_empty() {
            vec!["bun".to_string()]
        } else {
            self.profile.command.clone()
        };
        argv.extend(["run".to_string(), WRAPPER.to_string()]);
        let program = argv.remove(0);
        (program, argv)
    }
}

#[async_trait]
impl AgentRuntime for DexterRuntime {
    fn name(&self) -> &'static str {
        "dexter"
    }

    /// The wrapper writes Dexter's progress events as JSON lines on stderr.
    fn event_pipe(&self) -> Option<super::OutputPipe> {
        Some(super::OutputPipe::Stderr)
    }

    fn redact_output(&self, text: &str) -> String {
        redact(&self.secrets, text)
    }

    async fn setup(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
    ) -> Result<(), JobError> {
        let started = Instant::now();
        self.files.setup(provider, sandbox_id).await?;
        provider
            .write_file(
                sandbox_id,
                &format!("{AGENT_DIR}/{WRAPPER}"),
                RUN_ONCE_TS.as_bytes(),
            )
            .await?;
        let setup_ms = started.elapsed().as_millis() as u64;
        let record = json!({
            "runtime": "dexter",
            "setup_ms": setup_ms,
            "setup_commands": self.profile.setup.len(),
            "wrapper": WRAPPER,
        });
        provider
            .write_file(sandbox_id, SETUP_RECORD, record.to_string().as_bytes())
            .await?;
        tracing::info!(%sandbox_id, setup_ms, "dexter installed in the sandbox; later jobs on this agent reuse it");
        Ok(())
    }

    async fn run(
        &self,
        provider: &dyn SandboxProvider,
        sandbox_id: &str,
        query: &str,
        options: RunOptions,
    ) -> Result<AgentOutput, JobError> {
        let (program, args) = self.argv();
        let mut env = self.agent_env();
        let mut profile = self.profile.clone();
        profile.max_iterations = tighter_cap(profile.max_iterations, options.max_turns);
        env.extend(wrapper_env(&profile, options.timeout));
        env.extend(options.gateway_env.clone());
        let request = ExecRequest {
            program,
            args,
            env,
            cwd: Some(AGENT_DIR.into()),
            stdin: Some(query.as_bytes().to_vec()),
            timeout: options.timeout,
            max_output_bytes: 0,
        };
        let control = ExecControl {
            cancel: options.cancel,
            output: options.output,
        };
        let output = provider.exec(sandbox_id, &request, control).await?;
        let parsed = parse_result(
            &String::from_utf8_lossy(&output.stdout),
            &String::from_utf8_lossy(&output.stderr),
            output.exit_code,
            output.truncated,
        );
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

/// The wrapper's controls: its own timeout below the attempt's, the model, the
/// iteration cap, and whether to clear the scratch cache first.
fn wrapper_env(
    profile: &AgentProfile,
    attempt_timeout: Option<Duration>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(timeout) = attempt_timeout {
        let own = timeout
            .saturating_sub(REPORT_MARGIN)
            .max(timeout / 2)
            .max(Duration::from_millis(500));
        env.insert("DEXTER_TIMEOUT_MS".into(), own.as_millis().to_string());
    }
    if !profile.model.is_empty() {
        env.insert("DEXTER_MODEL".into(), profile.model.clone());
    }
    if profile.max_iterations > 0 {
        env.insert(
            "DEXTER_MAX_ITERATIONS".into(),
            profile.max_iterations.to_string(),
        );
    }
    if !profile.share_cache {
        env.insert("FLEET_DEXTER_CLEAR_CACHE".into(), "1".into());
    }
    env
}

/// What one run of the wrapper produced.
#[derive(Debug)]
pub struct ParsedResult {
    pub outcome: Result<String, JobError>,
    pub metadata: Value,
}

/// Parse the wrapper's output (pure): the last JSON line holding `ok` is the result.
pub fn parse_result(stdout: &str, stderr: &str, exit_code: i32, truncated: bool) -> ParsedResult {
    let result =
        stdout
            .lines()
            .rev()
            .find_map(|line| match serde_json::from_str::<Value>(line.trim()) {
                Ok(Value::Object(o)) if o.contains_key("ok") => Some(o),
                _ => None,
            });
    let Some(mut result) = result else {
        let tail = tail_utf8(stderr.as_bytes(), ERROR_TAIL_BYTES);
        let tail = tail.trim();
        let err = if truncated {
            JobError::permanent(
                "dexter printed more than the output limit before its result; the output was cut",
            )
        } else if tail.is_empty() {
            JobError::transient(format!(
                "dexter exited with code {exit_code} without a result"
            ))
        } else {
            JobError::transient(format!(
                "dexter exited with code {exit_code} without a result: {tail}"
            ))
        };
        return ParsedResult {
            outcome: Err(err),
            metadata: Value::Null,
        };
    };
    let answer = match result.remove("answer") {
        Some(Value::String(a)) => a,
        _ => String::new(),
    };
    let ok = result
        .remove("ok")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let error = result.remove("error");
    let mut metadata = Map::new();
    for (from, to) in [
        ("toolCalls", "tool_calls"),
        ("toolErrors", "tool_errors"),
        ("toolErrorDetails", "tool_error_details"),
        ("iterations", "iterations"),
        ("tokenUsage", "token_usage"),
        ("modelCalls", "model_calls"),
        ("totalTimeMs", "total_time_ms"),
        ("elapsedMs", "elapsed_ms"),
    ] {
        if let Some(v) = result.remove(from) {
            metadata.insert(to.into(), v);
        }
    }
    let metadata = Value::Object(metadata);
    // The wrapper's verdict, checked again here: an empty answer or one starting with
    // `Error:` is never a success.
    let outcome = if ok && !answer.trim().is_empty() && !answer.starts_with("Error:") {
        Ok(answer)
    } else {
        Err(classify(error.as_ref(), &answer))
    };
    ParsedResult { outcome, metadata }
}

/// The wrapper's `error` as a job error, from its kind and HTTP status.
fn classify(error: Option<&Value>, answer: &str) -> JobError {
    let field = |k: &str| error.and_then(|e| e.get(k));
    let kind = field("kind")
        .and_then(Value::as_str)
        .unwrap_or(if answer.trim().is_empty() {
            "empty_answer"
        } else {
            "agent_error"
        });
    let message = field("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .unwrap_or(answer);
    let status = field("status").and_then(Value::as_u64);
    let retry_after = field("retryAfterSecs")
        .and_then(Value::as_f64)
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(86_400.0)));
    let (class, what) = match (kind, status) {
        ("http", Some(status)) => (
            match status {
                400 | 401 | 403 | 404 | 413 | 422 => ErrorClass::Permanent,
                _ => ErrorClass::Transient,
            },
            format!("dexter: model call failed with HTTP {status}"),
        ),
        ("timeout", _) => (ErrorClass::Timeout, "dexter: timed out".to_string()),
        ("empty_answer", _) => (ErrorClass::Permanent, "dexter: empty answer".to_string()),
        ("max_iterations", _) => (
            ErrorClass::Permanent,
            "dexter: ran out of iterations".to_string(),
        ),
        (kind, _) => (ErrorClass::Transient, format!("dexter: {kind}")),
    };
    let message = if message.is_empty() || message == what {
        what
    } else {
        format!("{what}: {message}")
    };
    JobError::new(class, message).with_retry_after(retry_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> String {
        super::super::testdata("dexter", name)
    }

    fn parse(name: &str, exit_code: i32) -> ParsedResult {
        parse_result(&fixture(name), "", exit_code, false)
    }

    #[test]
    fn a_successful_run_gives_the_answer_and_every_model_calls_tokens() {
        let run = parse("success.json", 0);
        assert_eq!(
            run.outcome.unwrap(),
            "Apple's FY2024 revenue was $391.0B, up 2% — per the 10-K."
        );
        let m = &run.metadata;
        assert_eq!(m["iterations"], 2);
        assert_eq!(m["model_calls"], 3);
        assert_eq!(m["token_usage"]["totalTokens"], 1710);
        // The agent's own figure leaves the router call out; the wrapper's does not.
        assert_eq!(m["token_usage"]["reportedByAgent"]["totalTokens"], 1300);
        assert_eq!(m["tool_calls"][0]["tool"], "get_financials");
        assert_eq!(m["tool_errors"], 0);
    }

    #[test]
    fn the_real_dexters_outputs_parse() {
        // Printed by the wrapper driving virattt/dexter 823052e itself (see testdata/README).
        let run = parse("real_dexter_success.json", 0);
        assert_eq!(
            run.outcome.unwrap(),
            "Real Dexter answered: revenue was $391.0B."
        );
        assert_eq!(run.metadata["token_usage"]["totalTokens"], 120);
        let run = parse("real_dexter_401.json", 1);
        let err = run.outcome.unwrap_err();
        // Dexter's answer text has no status in it; the wrapper saw the 401.
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(
            err.message,
            "dexter: model call failed with HTTP 401: Error: OpenAI API key is invalid or expired. Check that your API key is correct in your environment variables."
        );
    }

    #[test]
    fn an_empty_answer_is_a_permanent_failure() {
        let err = parse("empty_answer.json", 1).outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message.starts_with("dexter: empty answer"),
            "{}",
            err.message
        );
        // Even if a wrapper called it ok.
        let forged = r#"{"ok":true,"answer":"  "}"#;
        let err = parse_result(forged, "", 0, false).outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
    }

    #[test]
    fn model_errors_are_classified_by_http_status_not_text() {
        let err = parse("model_401.json", 1).outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert_eq!(
            err.message,
            "dexter: model call failed with HTTP 401: Error: 401 Incorrect API key provided"
        );

        let err = parse("model_429.json", 1).outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(err.retry_after, Some(Duration::from_secs(3)));

        let err = parse("model_529.json", 1).outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert!(err.message.contains("HTTP 529"), "{}", err.message);

        // An `Error:` answer with no status seen is transient, whatever its text says.
        let text_only = r#"{"ok":false,"answer":"Error: 401 Unauthorized","error":{"kind":"agent_error","message":"Error: 401 Unauthorized"}}"#;
        let err = parse_result(text_only, "", 1, false).outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        let forged_ok = r#"{"ok":true,"answer":"Error: model unavailable"}"#;
        assert!(parse_result(forged_ok, "", 0, false).outcome.is_err());
    }

    #[test]
    fn max_iterations_and_timeouts() {
        // Dexter's "Reached maximum iterations" sentinel is no answer: like Claude's
        // max turns, another attempt would end the same way.
        let run = parse("max_iterations.json", 1);
        let err = run.outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(
            err.message
                .starts_with("dexter: ran out of iterations: Reached maximum iterations (10)"),
            "{}",
            err.message
        );
        assert_eq!(run.metadata["iterations"], 10);
        assert_eq!(run.metadata["tool_errors"], 1);
        assert_eq!(
            run.metadata["tool_error_details"][0]["tool"],
            "get_financials"
        );

        let err = parse("timeout.json", 1).outcome.unwrap_err();
        assert_eq!(err.class, ErrorClass::Timeout);
    }

    #[test]
    fn malformed_and_huge_output() {
        let err = parse_result("{\"ok\": tr", "TypeError: x is undefined\n", 1, false)
            .outcome
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Transient);
        assert_eq!(
            err.message,
            "dexter exited with code 1 without a result: TypeError: x is undefined"
        );
        let err = parse_result(&"x".repeat(1 << 20), "", 0, true)
            .outcome
            .unwrap_err();
        assert_eq!(err.class, ErrorClass::Permanent);
        assert!(err.message.contains("cut"), "{}", err.message);

        let big = "z".repeat(4 << 20);
        let line = json!({"ok": true, "answer": big}).to_string();
        let noisy = format!("debug noise\n{line}\n");
        assert_eq!(
            parse_result(&noisy, "", 0, false).outcome.unwrap().len(),
            big.len()
        );
    }

    #[test]
    fn the_wrapper_gets_its_timeout_model_and_cache_policy() {
        let mut profile = AgentProfile {
            model: "gpt-4.1".into(),
            max_iterations: 4,
            ..Default::default()
        };
        let env = wrapper_env(&profile, Some(Duration::from_secs(120)));
        assert_eq!(env["DEXTER_TIMEOUT_MS"], "115000");
        assert_eq!(env["DEXTER_MODEL"], "gpt-4.1");
        assert_eq!(env["DEXTER_MAX_ITERATIONS"], "4");
        assert_eq!(env["FLEET_DEXTER_CLEAR_CACHE"], "1");
        profile.share_cache = true;
        assert!(!wrapper_env(&profile, None).contains_key("FLEET_DEXTER_CLEAR_CACHE"));
        assert!(!wrapper_env(&profile, None).contains_key("DEXTER_TIMEOUT_MS"));
    }
}
