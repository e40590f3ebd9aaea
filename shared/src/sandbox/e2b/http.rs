//! HTTP plumbing shared by the control-plane and envd clients: how a failed
//! response or a transport error becomes a [`SandboxError`], and the retry policy
//! (exponential backoff with jitter that honours `Retry-After`).
//!
//! Error bodies are never trusted to be JSON: E2B's edge and older nginx front
//! ends answer 502 with HTML. Messages are cut short and never include request
//! headers, so an API key or access token cannot leak through an error.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::sandbox::SandboxError;

/// Which server answered: the meaning of 404 and 502 differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `api.e2b.app`: 404 means the sandbox is gone (killed, expired, unknown).
    Control,
    /// envd behind E2B's edge proxy: 502 "The sandbox was not found" means the
    /// sandbox is gone; 404 is envd's own "no such file".
    Envd,
}

/// Longest error-body excerpt kept in a message.
const MAX_MESSAGE: usize = 200;

/// Map a non-success response to a [`SandboxError`].
pub fn status_error(
    surface: Surface,
    call: &str,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> SandboxError {
    let detail = body_message(body);
    let msg = format!("{call}: HTTP {} {}", status.as_u16(), detail);
    match status.as_u16() {
        404 if surface == Surface::Envd => SandboxError::Invalid(msg),
        404 => SandboxError::NotFound(msg),
        409 => SandboxError::Conflict(msg),
        429 => SandboxError::RateLimited {
            retry_after: retry_after(headers),
        },
        502 if surface == Surface::Envd && detail.to_ascii_lowercase().contains("not found") => {
            SandboxError::NotFound(msg)
        }
        s if s >= 500 => SandboxError::Unavailable(msg),
        408 => SandboxError::Unavailable(msg),
        _ => SandboxError::Invalid(msg),
    }
}

/// A transport failure (connect refused, reset, timeout, cut body): always passing.
pub fn transport_error(call: &str, err: reqwest::Error) -> SandboxError {
    let kind = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "response body broken"
    } else {
        "request failed"
    };
    // `without_url`: the URL holds nothing secret, but keeping messages short and
    // uniform makes them easier to group; the call and sandbox name the target.
    SandboxError::Unavailable(format!("{call}: {kind}: {}", err.without_url()))
}

/// `Retry-After` as delta-seconds (what E2B sends). An HTTP-date is not parsed:
/// the backoff then applies alone.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A short, single-line description of an error body: the `message` of a JSON
/// error (E2B's `{code,message}` or Connect's `{code,message}`), else the start of
/// the text with markup stripped.
pub fn body_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(m) = v.get("message").and_then(|m| m.as_str())
    {
        return truncate(m);
    }
    let text = String::from_utf8_lossy(body);
    let mut plain = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                plain.push(' ');
            }
            c if !in_tag => plain.push(c),
            _ => {}
        }
    }
    truncate(&plain.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_MESSAGE {
        return s.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// When and how often a call is tried again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, the first included (`request_attempts`).
    pub attempts: u32,
    pub min_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn new(attempts: u32) -> Self {
        Self {
            attempts: attempts.max(1),
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(10),
        }
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.attempts.saturating_sub(1) as usize)
            .with_jitter()
    }

    /// Run `f` until it succeeds, fails with an error that retrying can't fix, or
    /// the attempts run out. A `Retry-After` longer than the backoff wins.
    pub async fn run<T, F, Fut>(&self, call: &str, sandbox: &str, f: F) -> Result<T, SandboxError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SandboxError>>,
    {
        f.retry(self.backoff())
            .when(is_retryable)
            .adjust(|err, backoff| {
                let backoff = backoff?;
                Some(match err.retry_after() {
                    Some(after) if after > backoff => after,
                    _ => backoff,
                })
            })
            .notify(|err, delay| {
                tracing::debug!(call, sandbox, error = %err, delay_ms = delay.as_millis() as u64, "retrying");
            })
            .await
    }
}

/// Errors another attempt of the same request may cure.
pub fn is_retryable(err: &SandboxError) -> bool {
    matches!(
        err,
        SandboxError::Unavailable(_) | SandboxError::Conflict(_) | SandboxError::RateLimited { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn map(surface: Surface, status: u16, body: &str) -> SandboxError {
        status_error(
            surface,
            "call",
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
        )
    }

    #[test]
    fn statuses_map_to_the_queue_classes() {
        assert!(matches!(
            map(Surface::Control, 404, "{}"),
            SandboxError::NotFound(_)
        ));
        assert!(matches!(
            map(Surface::Envd, 404, "{}"),
            SandboxError::Invalid(_)
        ));
        assert!(matches!(
            map(Surface::Control, 409, ""),
            SandboxError::Conflict(_)
        ));
        assert!(matches!(
            map(Surface::Control, 500, ""),
            SandboxError::Unavailable(_)
        ));
        assert!(matches!(
            map(Surface::Control, 502, "not found"),
            SandboxError::Unavailable(_)
        ));
        assert!(matches!(
            map(Surface::Control, 401, ""),
            SandboxError::Invalid(_)
        ));
        assert!(matches!(
            map(Surface::Control, 403, ""),
            SandboxError::Invalid(_)
        ));
        assert!(matches!(
            map(Surface::Control, 400, ""),
            SandboxError::Invalid(_)
        ));
        let gone = r#"{"sandboxId":"i1","message":"The sandbox was not found","code":502}"#;
        assert!(matches!(
            map(Surface::Envd, 502, gone),
            SandboxError::NotFound(_)
        ));
        let html = "<html><body><h1>The sandbox was not found</h1></body></html>";
        assert!(matches!(
            map(Surface::Envd, 502, html),
            SandboxError::NotFound(_)
        ));
        let nginx = "<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>";
        assert!(matches!(
            map(Surface::Envd, 502, nginx),
            SandboxError::Unavailable(_)
        ));
    }

    #[test]
    fn rate_limit_carries_retry_after() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        let e = status_error(
            Surface::Control,
            "c",
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            b"",
        );
        assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn body_message_prefers_json_message_and_strips_html() {
        assert_eq!(body_message(br#"{"code":404,"message":"gone"}"#), "gone");
        assert_eq!(
            body_message(b"<html><title>502 Bad Gateway</title>\n<p>x</p></html>"),
            "502 Bad Gateway x"
        );
        assert!(body_message("é".repeat(300).as_bytes()).ends_with('…'));
    }

    #[tokio::test]
    async fn retries_only_passing_errors_and_stops_after_attempts() {
        let mut policy = RetryPolicy::new(3);
        policy.min_delay = Duration::from_millis(1);
        let n = AtomicU32::new(0);
        let r: Result<(), _> = policy
            .run("c", "s", || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(SandboxError::Unavailable("x".into()))
            })
            .await;
        assert!(r.is_err());
        assert_eq!(n.load(Ordering::SeqCst), 3);

        let n = AtomicU32::new(0);
        let r: Result<(), _> = policy
            .run("c", "s", || async {
                n.fetch_add(1, Ordering::SeqCst);
                Err(SandboxError::NotFound("x".into()))
            })
            .await;
        assert!(matches!(r, Err(SandboxError::NotFound(_))));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }
}
