//! Running one command through envd: start it, feed stdin, collect (and stream)
//! output, enforce the timeout, honour cancellation, and survive a dropped stream.
//!
//! - **Timeout**: our own timer ends the call; we then SIGKILL the process and
//!   return `Timeout`. `Connect-Timeout-Ms` is also sent, a few seconds later than
//!   our timer, only as a backstop (envd kills the process when it elapses), so a
//!   process outlives a crashed worker by at most that grace.
//! - **Cancellation**: SIGKILL, then `Cancelled`.
//! - **Dropped call**: a caller that drops the `exec` future (an attempt cut off by
//!   its outer timeout, a panic) still gets its process killed: a guard sends the
//!   SIGKILL from a task of its own, so nothing keeps running in a sandbox that is
//!   given back to the pool.
//! - **Dropped stream**: envd keeps the process running when the HTTP stream
//!   breaks, so we re-attach with `process.Process/Connect` (by PID, or by the tag
//!   given at start if the PID is not known yet). Output produced while detached
//!   is lost; the result is then marked `output_lost` (and `truncated`), which
//!   the runtimes never take for a complete answer. If the edge answers the
//!   re-attach with 502 "sandbox not found", the sandbox is gone: `NotFound`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::mpsc::UnboundedSender;

use super::envd::{
    EnvdClient, Event, OpenError, ProcessConfig, Selector, StartRequest, StreamError, Target,
    UnaryError,
};
use super::http::{RetryPolicy, is_retryable};
use crate::sandbox::{ExecControl, ExecOutput, ExecRequest, OutputChunk, SandboxError};

/// How much later than our own timer envd's backstop kill fires.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// The default of `ExecRequest::max_output_bytes == 0`.
const DEFAULT_MAX_OUTPUT: usize = 1 << 20;
/// Stdin is sent in pieces of this size (each a unary `SendInput`).
const STDIN_CHUNK: usize = 64 << 10;

/// Run `request` in the sandbox behind `target`.
pub(crate) async fn run(
    envd: &EnvdClient,
    target: &Target,
    retry: RetryPolicy,
    request: &ExecRequest,
    control: ExecControl,
) -> Result<ExecOutput, SandboxError> {
    let started = Instant::now();
    let tag = format!("dexter-fleet-{}", uuid::Uuid::now_v7());
    // 0 until the `start` event names the process (no process has PID 0).
    let pid = Arc::new(AtomicU32::new(0));
    let mut kill_on_drop = KillOnDrop {
        envd: envd.clone(),
        target: target.clone(),
        tag: tag.clone(),
        pid: pid.clone(),
        armed: true,
    };
    let selector = || match pid.load(Ordering::SeqCst) {
        0 => Selector::Tag(tag.clone()),
        p => Selector::Pid(p),
    };
    let mut out = Collector {
        max: match request.max_output_bytes {
            0 => DEFAULT_MAX_OUTPUT,
            n => n,
        },
        stdout: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
        stdout_truncated: false,
        lost: false,
        tx: control.output.clone(),
    };
    let timer = async {
        match request.timeout {
            // A timeout past what an Instant can hold is no timeout.
            Some(t) => match started.checked_add(t) {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };
    let work = drive(envd, target, retry, request, &tag, &pid, &mut out);
    let result = tokio::select! {
        biased;
        _ = control.cancel.cancelled() => Err(SandboxError::Cancelled),
        _ = timer => Err(SandboxError::Timeout(request.timeout.unwrap_or_default())),
        r = work => r,
    };
    // Ended in order: the process is gone, or is killed below.
    kill_on_drop.armed = false;
    match result {
        Ok(exit_code) => Ok(ExecOutput {
            exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
            truncated: out.truncated || out.lost,
            stdout_truncated: out.stdout_truncated,
            output_lost: out.lost,
            duration: started.elapsed(),
        }),
        Err(e @ (SandboxError::Cancelled | SandboxError::Timeout(_))) => {
            kill(envd, target, &selector()).await;
            tracing::info!(sandbox = %target.sandbox, call = "exec", outcome = %e, "process killed");
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Kills the process when `run` is dropped before it ended in order.
struct KillOnDrop {
    envd: EnvdClient,
    target: Target,
    tag: String,
    pid: Arc<AtomicU32>,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let sel = match self.pid.load(Ordering::SeqCst) {
            0 => Selector::Tag(self.tag.clone()),
            p => Selector::Pid(p),
        };
        let (envd, target) = (self.envd.clone(), self.target.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    kill(&envd, &target, &sel).await;
                    tracing::info!(sandbox = %target.sandbox, call = "exec", "process of a dropped exec killed");
                });
            }
            Err(_) => {
                tracing::warn!(sandbox = %self.target.sandbox, "exec dropped with no runtime left; its process runs until envd's backstop timeout")
            }
        }
    }
}

/// SIGKILL, best effort: the process may already be gone (`not_found`), and a
/// failure here must not hide the reason we are killing it.
async fn kill(envd: &EnvdClient, target: &Target, sel: &Selector) {
    match envd.kill(target, sel).await {
        Ok(()) => {}
        Err(UnaryError::Rpc(e)) if e.code == "not_found" => {}
        Err(e) => {
            let e = e.into_sandbox_error("SendSignal");
            tracing::warn!(sandbox = %target.sandbox, call = "SendSignal", error = %e, "could not kill process");
        }
    }
}

/// Start, read events to the end, re-attaching when the stream breaks.
/// Returns the exit code.
async fn drive(
    envd: &EnvdClient,
    target: &Target,
    retry: RetryPolicy,
    request: &ExecRequest,
    tag: &str,
    pid: &AtomicU32,
    out: &mut Collector,
) -> Result<i32, SandboxError> {
    let start = StartRequest {
        process: ProcessConfig {
            cmd: &request.program,
            args: &request.args,
            envs: &request.env,
            cwd: request.cwd.as_deref(),
        },
        stdin: request.stdin.is_some(),
        tag: Some(tag),
    };
    tracing::debug!(sandbox = %target.sandbox, call = "process.Start", "starting process");
    // `None` while detached; `why` says how the last stream ended.
    let (mut stream, mut why) = match envd
        .start(
            target,
            &start,
            request.timeout.map(|t| t.saturating_add(KILL_GRACE)),
        )
        .await
    {
        Ok(s) => (Some(s), String::new()),
        // The request may have reached envd and started the process: look for it.
        Err(OpenError::NoAnswer(e)) => (None, e.to_string()),
        Err(OpenError::Refused(e)) => return Err(e),
    };
    let mut stdin: Option<BoxFuture<'_, ()>> = None;
    let mut stdin_started = false;
    let mut exit: Option<i32> = None;
    let mut reattached = false;
    let mut tries = 0u32;
    let max_tries = retry.attempts.max(2);
    loop {
        let Some(events) = stream.as_mut() else {
            // Detached: re-attach with Connect, by PID once known, else by tag.
            tries += 1;
            if tries >= max_tries {
                return Err(SandboxError::Unavailable(format!(
                    "lost the output stream of a process in sandbox {} {tries} times: {why}",
                    target.sandbox
                )));
            }
            let sel = match pid.load(Ordering::SeqCst) {
                0 => Selector::Tag(tag.to_string()),
                p => Selector::Pid(p),
            };
            tracing::info!(sandbox = %target.sandbox, call = "process.Connect", reason = %why, "re-attaching to process");
            tokio::time::sleep(retry.min_delay * 2u32.saturating_pow(tries - 1)).await;
            match envd.connect(target, &sel).await {
                Ok(s) => {
                    stream = Some(s);
                    reattached = true;
                    // Whatever the process wrote while we were away is lost.
                    out.lost = true;
                }
                // The edge's 502 "not found": the sandbox is gone.
                Err(OpenError::Refused(e)) if !is_retryable(&e) => return Err(e),
                Err(e) => why = e.into_inner().to_string(),
            }
            continue;
        };
        let next = match stdin.as_mut() {
            Some(writer) => tokio::select! {
                _ = writer => { stdin = None; continue; }
                ev = events.next() => ev,
            },
            None => events.next().await,
        };
        match next {
            Ok(Some(Event::Start { pid: p })) => {
                pid.store(p, Ordering::SeqCst);
                tracing::debug!(sandbox = %target.sandbox, pid = p, "process started");
                if let (Some(data), false) = (request.stdin.as_deref(), stdin_started) {
                    stdin_started = true;
                    stdin = Some(Box::pin(write_stdin(envd, target, Selector::Pid(p), data)));
                }
            }
            Ok(Some(Event::Stdout(b))) => out.push(false, b),
            Ok(Some(Event::Stderr(b))) => out.push(true, b),
            Ok(Some(Event::End(end))) => {
                tracing::debug!(sandbox = %target.sandbox, exit_code = end.exit_code, status = %end.status, "process ended");
                exit = Some(end.exit_code);
            }
            Ok(Some(Event::Keepalive | Event::Unknown)) => {}
            Ok(None) => match exit {
                Some(code) => return Ok(code),
                None => {
                    why = "stream ended without an end event".into();
                    stream = None;
                }
            },
            Err(StreamError::Rpc(e)) => {
                if e.code == "deadline_exceeded" {
                    return Err(SandboxError::Timeout(request.timeout.unwrap_or_default()));
                }
                if let Some(code) = exit {
                    // The process ended; the error is about the stream after it.
                    return Ok(code);
                }
                if e.code == "not_found" && (reattached || pid.load(Ordering::SeqCst) == 0) {
                    return Err(SandboxError::Unavailable(format!(
                        "process in sandbox {} is not running (ended while detached, or never started); \
                         exit status unknown",
                        target.sandbox
                    )));
                }
                let call = if reattached {
                    "process.Connect"
                } else {
                    "process.Start"
                };
                return Err(e.into_sandbox_error(call));
            }
            Err(StreamError::Broken(w)) => match exit {
                Some(code) => return Ok(code),
                None => {
                    why = w;
                    stream = None;
                }
            },
        }
    }
}

/// Feed stdin, then close it. Failures are logged, not fatal: a process may exit
/// without reading its input, and a lost sandbox shows on the event stream.
async fn write_stdin(envd: &EnvdClient, target: &Target, sel: Selector, data: &[u8]) {
    for piece in data.chunks(STDIN_CHUNK) {
        if let Err(e) = envd.send_input(target, &sel, piece).await {
            let e = e.into_sandbox_error("SendInput");
            tracing::debug!(sandbox = %target.sandbox, call = "SendInput", error = %e, "stdin not delivered");
            return;
        }
    }
    if let Err(e) = envd.close_stdin(target, &sel).await {
        let e = e.into_sandbox_error("CloseStdin");
        tracing::debug!(sandbox = %target.sandbox, call = "CloseStdin", error = %e, "stdin not closed");
    }
}

/// Output kept (up to `max` bytes per stream) and forwarded as it arrives.
struct Collector {
    max: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    truncated: bool,
    stdout_truncated: bool,
    /// The stream was re-attached: output written while detached is lost.
    lost: bool,
    tx: Option<UnboundedSender<OutputChunk>>,
}

impl Collector {
    fn push(&mut self, is_stderr: bool, mut bytes: Vec<u8>) {
        let buf = if is_stderr {
            &mut self.stderr
        } else {
            &mut self.stdout
        };
        let room = self.max.saturating_sub(buf.len());
        if bytes.len() > room {
            bytes.truncate(room);
            self.truncated = true;
            self.stdout_truncated |= !is_stderr;
        }
        if bytes.is_empty() {
            return;
        }
        buf.extend_from_slice(&bytes);
        if let Some(tx) = &self.tx {
            // A closed receiver means nobody is watching; the output is still kept.
            let _ = tx.send(if is_stderr {
                OutputChunk::Stderr(bytes)
            } else {
                OutputChunk::Stdout(bytes)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_truncates_per_stream_and_forwards_what_it_keeps() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut c = Collector {
            max: 4,
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: false,
            stdout_truncated: false,
            lost: false,
            tx: Some(tx),
        };
        c.push(false, b"abc".to_vec());
        c.push(false, b"def".to_vec());
        c.push(true, b"xy".to_vec());
        c.push(false, b"g".to_vec());
        assert_eq!(c.stdout, b"abcd");
        assert_eq!(c.stderr, b"xy");
        assert!(c.truncated);
        assert_eq!(rx.try_recv().unwrap(), OutputChunk::Stdout(b"abc".to_vec()));
        assert_eq!(rx.try_recv().unwrap(), OutputChunk::Stdout(b"d".to_vec()));
        assert_eq!(rx.try_recv().unwrap(), OutputChunk::Stderr(b"xy".to_vec()));
        assert!(rx.try_recv().is_err());
    }
}
