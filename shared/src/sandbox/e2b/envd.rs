//! envd, the daemon inside each E2B sandbox: the `process.Process` Connect-RPC
//! service (JSON codec, HTTP/1.1) and the plain-HTTP `/files` endpoint.
//!
//! Message shapes follow envd's `process.proto` in protojson form: lowerCamelCase
//! names, `bytes` as base64, zero values omitted (`exitCode` absent means 0),
//! oneofs as the key of the member that is set. Every request carries the
//! sandbox's access token (`X-Access-Token`) and, on RPCs, the user to run as
//! (`Authorization: Basic base64("user:")`); both headers are marked sensitive.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use percent_encoding::utf8_percent_encode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

use super::connect::{
    CONTENT_TYPE_STREAM, CONTENT_TYPE_UNARY, ConnectError, EndStream, FrameDecoder,
    PROTOCOL_VERSION_HEADER, TIMEOUT_HEADER, envelope,
};
use super::control::{COMPONENT, read_error};
use super::http::{Surface, body_message, status_error, transport_error};
use crate::sandbox::SandboxError;
use crate::secret::Secret;

/// The sandbox user commands run as and files belong to (E2B templates' default).
pub const USER: &str = "user";
/// Seconds of silence after which envd sends a keepalive event on a stream.
pub const KEEPALIVE_SECS: u64 = 50;
/// A stream silent for this long (three missed keepalives) is taken as dead.
const STREAM_IDLE: Duration = Duration::from_secs(3 * KEEPALIVE_SECS);

/// `ProcessConfig`.
#[derive(Serialize)]
pub(crate) struct ProcessConfig<'a> {
    pub cmd: &'a str,
    pub args: &'a [String],
    /// May hold secrets: the type has no `Debug` and is never logged.
    pub envs: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<&'a str>,
}

/// `StartRequest`. `stdin` is always sent: envd defaults it to `true`, which
/// would keep a pipe open that nobody closes.
#[derive(Serialize)]
pub(crate) struct StartRequest<'a> {
    pub process: ProcessConfig<'a>,
    pub stdin: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<&'a str>,
}

/// `ProcessSelector`: a process by PID, or by the tag given at start (usable
/// before the `start` event has told us the PID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    Pid(u32),
    Tag(String),
}

#[derive(Serialize)]
struct ProcessOnly<'a> {
    process: &'a Selector,
}

#[derive(Serialize)]
struct SendInputRequest<'a> {
    process: &'a Selector,
    input: StdinInput,
}

#[derive(Serialize)]
struct StdinInput {
    stdin: String,
}

#[derive(Serialize)]
struct SendSignalRequest<'a> {
    process: &'a Selector,
    signal: &'static str,
}

/// `StartResponse` / `ConnectResponse`.
#[derive(Debug, Deserialize)]
struct StreamMessage {
    #[serde(default)]
    event: Option<RawEvent>,
}

/// `ProcessEvent`: a oneof, so exactly one member is present.
#[derive(Debug, Default, Deserialize)]
struct RawEvent {
    #[serde(default)]
    start: Option<StartEvent>,
    #[serde(default)]
    data: Option<DataEvent>,
    #[serde(default)]
    end: Option<EndEvent>,
    #[serde(default)]
    keepalive: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
struct StartEvent {
    #[serde(default)]
    pid: u32,
}

#[derive(Debug, Deserialize)]
struct DataEvent {
    #[serde(default)]
    stdout: Option<String>,
    #[serde(default)]
    stderr: Option<String>,
    #[serde(default)]
    pty: Option<String>,
}

/// `ProcessEvent.EndEvent`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndEvent {
    /// Omitted by protojson when 0.
    #[serde(default)]
    pub exit_code: i32,
    #[serde(default)]
    pub exited: bool,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
}

/// A decoded process event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start {
        pid: u32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    End(EndEvent),
    Keepalive,
    /// A member added to `ProcessEvent` after this client was written.
    Unknown,
}

impl Event {
    fn parse(payload: &[u8]) -> Result<Event, String> {
        let msg: StreamMessage =
            serde_json::from_slice(payload).map_err(|e| format!("bad event message: {e}"))?;
        let raw = msg.event.unwrap_or_default();
        let decode = |s: &str| {
            B64.decode(s)
                .map_err(|e| format!("bad base64 in data event: {e}"))
        };
        Ok(if let Some(s) = raw.start {
            Event::Start { pid: s.pid }
        } else if let Some(d) = raw.data {
            match (d.stdout, d.stderr, d.pty) {
                (Some(b), _, _) => Event::Stdout(decode(&b)?),
                (_, Some(b), _) => Event::Stderr(decode(&b)?),
                // No PTY is requested, so none arrives; treat it as stdout if it does.
                (_, _, Some(b)) => Event::Stdout(decode(&b)?),
                _ => Event::Stdout(Vec::new()),
            }
        } else if let Some(e) = raw.end {
            Event::End(e)
        } else if raw.keepalive.is_some() {
            Event::Keepalive
        } else {
            Event::Unknown
        })
    }
}

/// How a stream stopped short of a clean end.
#[derive(Debug)]
pub(crate) enum StreamError {
    /// envd ended the stream with a Connect error.
    Rpc(ConnectError),
    /// The stream broke: cut connection, body ended without an end-of-stream
    /// envelope, garbage, or silence past three keepalives. Re-attach may help.
    Broken(String),
}

/// The response of a server-streaming call, decoded event by event.
pub(crate) struct EventStream {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    decoder: FrameDecoder,
    finished: bool,
}

impl EventStream {
    /// The next event; `Ok(None)` after a clean end of stream.
    ///
    /// Cancel-safe: a received chunk goes into the decoder before any other
    /// await, so dropping this future loses nothing.
    pub async fn next(&mut self) -> Result<Option<Event>, StreamError> {
        loop {
            if self.finished {
                return Ok(None);
            }
            match self.decoder.next_frame() {
                Err(e) => return Err(StreamError::Broken(e.to_string())),
                Ok(Some(frame)) if frame.is_end_stream() => {
                    self.finished = true;
                    let end: EndStream = serde_json::from_slice(&frame.payload).map_err(|e| {
                        StreamError::Broken(format!("bad end-of-stream message: {e}"))
                    })?;
                    return match end.error {
                        Some(e) => Err(StreamError::Rpc(e)),
                        None => Ok(None),
                    };
                }
                Ok(Some(frame)) => {
                    return Event::parse(&frame.payload)
                        .map(Some)
                        .map_err(StreamError::Broken);
                }
                Ok(None) => {}
            }
            match tokio::time::timeout(STREAM_IDLE, self.body.next()).await {
                Err(_) => {
                    return Err(StreamError::Broken(format!(
                        "no event or keepalive for {}s",
                        STREAM_IDLE.as_secs()
                    )));
                }
                Ok(None) => {
                    return Err(StreamError::Broken(format!(
                        "stream ended without an end-of-stream message ({} bytes left over)",
                        self.decoder.pending()
                    )));
                }
                Ok(Some(Err(e))) => {
                    return Err(StreamError::Broken(format!(
                        "stream broke: {}",
                        e.without_url()
                    )));
                }
                Ok(Some(Ok(chunk))) => self.decoder.push(&chunk),
            }
        }
    }
}

/// Where one sandbox's envd is, and its credentials.
#[derive(Clone)]
pub(crate) struct Target {
    pub sandbox: String,
    pub base: String,
    token: Option<HeaderValue>,
}

impl Target {
    pub fn new(sandbox: &str, base: String, token: Option<&Secret>) -> Result<Self, SandboxError> {
        let token = match token {
            Some(t) => {
                let mut v = HeaderValue::from_str(t.expose()).map_err(|_| {
                    SandboxError::Invalid("envd access token is not a valid header value".into())
                })?;
                v.set_sensitive(true);
                Some(v)
            }
            None => None,
        };
        Ok(Self {
            sandbox: sandbox.to_string(),
            base,
            token,
        })
    }

    fn auth_headers(&self, with_user: bool) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = &self.token {
            h.insert("X-Access-Token", t.clone());
        }
        if with_user {
            let mut v = HeaderValue::from_str(&format!("Basic {}", B64.encode(format!("{USER}:"))))
                .expect("static header value");
            v.set_sensitive(true);
            h.insert(AUTHORIZATION, v);
        }
        h
    }
}

/// Why a stream could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// No answer (connection failed or cut, no response head in time): the
    /// request may or may not have reached envd.
    NoAnswer(SandboxError),
    /// An answer other than 200 (edge 502, envd's 401, ...).
    Refused(SandboxError),
}

impl OpenError {
    pub fn into_inner(self) -> SandboxError {
        match self {
            OpenError::NoAnswer(e) | OpenError::Refused(e) => e,
        }
    }
}

/// A unary RPC failure: a Connect error from envd, or anything else already mapped.
#[derive(Debug)]
pub(crate) enum UnaryError {
    Rpc(ConnectError),
    Other(SandboxError),
}

impl UnaryError {
    pub fn into_sandbox_error(self, call: &str) -> SandboxError {
        match self {
            UnaryError::Rpc(e) => e.into_sandbox_error(call),
            UnaryError::Other(e) => e,
        }
    }
}

/// The envd client, shared by all sandboxes.
#[derive(Clone)]
pub(crate) struct EnvdClient {
    http: reqwest::Client,
    /// Bound on each unary call and file transfer, and on the wait for a
    /// stream's response headers (not on the stream itself).
    request_timeout: Duration,
}

impl EnvdClient {
    pub fn new(request_timeout: Duration) -> Result<Self, SandboxError> {
        // No overall client timeout: a command's stream lasts as long as the command.
        let http = reqwest::Client::builder()
            .connect_timeout(request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("dexter-fleet/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SandboxError::Invalid(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            http,
            request_timeout,
        })
    }

    /// `process.Process/Start`. `timeout` becomes `Connect-Timeout-Ms`, which envd
    /// also applies to the process's life; `None` sends no such header.
    pub async fn start(
        &self,
        t: &Target,
        req: &StartRequest<'_>,
        timeout: Option<Duration>,
    ) -> Result<EventStream, OpenError> {
        let body = serde_json::to_vec(req).expect("StartRequest serializes");
        self.stream(t, "Start", body, timeout).await
    }

    /// `process.Process/Connect`: re-attach to a running process's events.
    pub async fn connect(&self, t: &Target, sel: &Selector) -> Result<EventStream, OpenError> {
        let body = serde_json::to_vec(&ProcessOnly { process: sel }).expect("serializes");
        self.stream(t, "Connect", body, None).await
    }

    async fn stream(
        &self,
        t: &Target,
        method: &str,
        body: Vec<u8>,
        timeout: Option<Duration>,
    ) -> Result<EventStream, OpenError> {
        let call = format!("process.{method}");
        let mut rb = self
            .http
            .post(format!("{}/process.Process/{method}", t.base))
            .headers(t.auth_headers(true))
            .header(CONTENT_TYPE, CONTENT_TYPE_STREAM)
            .header(PROTOCOL_VERSION_HEADER, "1")
            .header("Keepalive-Ping-Interval", KEEPALIVE_SECS.to_string())
            .body(envelope(0, &body));
        if let Some(t) = timeout {
            // The header allows at most 10 digits.
            rb = rb.header(
                TIMEOUT_HEADER,
                t.as_millis().clamp(1, 9_999_999_999).to_string(),
            );
        }
        let resp = match tokio::time::timeout(self.request_timeout, rb.send()).await {
            Err(_) => {
                return Err(OpenError::NoAnswer(SandboxError::Unavailable(format!(
                    "{call}: no response within {:?}",
                    self.request_timeout
                ))));
            }
            Ok(r) => r.map_err(|e| OpenError::NoAnswer(transport_error(&call, e)))?,
        };
        tracing::trace!(sandbox = %t.sandbox, call = %call, status = resp.status().as_u16(), "envd stream opened");
        // Errors from connect-go arrive as 200 plus an end-of-stream error; any
        // other status comes from a layer before it (edge proxy, envd's token check).
        if resp.status() != reqwest::StatusCode::OK {
            return Err(OpenError::Refused(
                read_error(Surface::Envd, &call, resp).await,
            ));
        }
        Ok(EventStream {
            body: resp.bytes_stream().boxed(),
            decoder: FrameDecoder::new(),
            finished: false,
        })
    }

    async fn unary(&self, t: &Target, method: &str, body: Vec<u8>) -> Result<Bytes, UnaryError> {
        let call = format!("process.{method}");
        let resp = self
            .http
            .post(format!("{}/process.Process/{method}", t.base))
            .headers(t.auth_headers(true))
            .header(CONTENT_TYPE, CONTENT_TYPE_UNARY)
            .header(PROTOCOL_VERSION_HEADER, "1")
            .timeout(self.request_timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| UnaryError::Other(transport_error(&call, e)))?;
        let status = resp.status();
        tracing::trace!(sandbox = %t.sandbox, call = %call, status = status.as_u16(), "envd call");
        let headers = resp.headers().clone();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| UnaryError::Other(transport_error(&call, e)))?;
        if status.is_success() {
            return Ok(bytes);
        }
        // A Connect error has a string `code`; the edge's and envd's own have an int.
        if let Ok(e) = serde_json::from_slice::<ConnectError>(&bytes) {
            return Err(UnaryError::Rpc(e));
        }
        Err(UnaryError::Other(status_error(
            Surface::Envd,
            &call,
            status,
            &headers,
            &bytes,
        )))
    }

    /// `SendInput`: bytes to the process's stdin.
    pub async fn send_input(
        &self,
        t: &Target,
        sel: &Selector,
        data: &[u8],
    ) -> Result<(), UnaryError> {
        let body = serde_json::to_vec(&SendInputRequest {
            process: sel,
            input: StdinInput {
                stdin: B64.encode(data),
            },
        })
        .expect("serializes");
        self.unary(t, "SendInput", body).await.map(drop)
    }

    /// `CloseStdin`: end of input.
    pub async fn close_stdin(&self, t: &Target, sel: &Selector) -> Result<(), UnaryError> {
        let body = serde_json::to_vec(&ProcessOnly { process: sel }).expect("serializes");
        self.unary(t, "CloseStdin", body).await.map(drop)
    }

    /// `SendSignal` with `SIGNAL_SIGKILL`.
    pub async fn kill(&self, t: &Target, sel: &Selector) -> Result<(), UnaryError> {
        let body = serde_json::to_vec(&SendSignalRequest {
            process: sel,
            signal: "SIGNAL_SIGKILL",
        })
        .expect("serializes");
        self.unary(t, "SendSignal", body).await.map(drop)
    }

    fn file_url(t: &Target, path: &str) -> String {
        format!(
            "{}/files?path={}&username={USER}",
            t.base,
            utf8_percent_encode(path, COMPONENT)
        )
    }

    /// `POST /files?path=…` with the raw bytes.
    ///
    /// An empty file goes as `multipart/form-data` instead: the spec marks the
    /// body required, and an empty octet-stream body reads as "no body" to a
    /// request validator. The multipart form always has a body.
    pub async fn write_file(
        &self,
        t: &Target,
        path: &str,
        contents: &[u8],
    ) -> Result<(), SandboxError> {
        let (content_type, body) = if contents.is_empty() {
            empty_file_form(path)
        } else {
            ("application/octet-stream".to_string(), contents.to_vec())
        };
        let resp = self
            .http
            .post(Self::file_url(t, path))
            .headers(t.auth_headers(false))
            .header(CONTENT_TYPE, content_type)
            .timeout(self.request_timeout)
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error("write_file", e))?;
        tracing::trace!(sandbox = %t.sandbox, call = "write_file", status = resp.status().as_u16(), "envd call");
        if !resp.status().is_success() {
            return Err(file_error("write_file", path, resp).await);
        }
        Ok(())
    }

    /// `GET /files?path=…`: the raw bytes.
    pub async fn read_file(&self, t: &Target, path: &str) -> Result<Vec<u8>, SandboxError> {
        let resp = self
            .http
            .get(Self::file_url(t, path))
            .headers(t.auth_headers(false))
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| transport_error("read_file", e))?;
        tracing::trace!(sandbox = %t.sandbox, call = "read_file", status = resp.status().as_u16(), "envd call");
        if !resp.status().is_success() {
            return Err(file_error("read_file", path, resp).await);
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error("read_file", e))?;
        Ok(bytes.to_vec())
    }
}

/// A multipart form with one empty part named `file` (the `path` query, not
/// the part's file name, says where it goes).
fn empty_file_form(path: &str) -> (String, Vec<u8>) {
    let boundary = format!("dexter-fleet-{}", uuid::Uuid::now_v7().simple());
    let name: String = path
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c == '"' || c.is_control() { '_' } else { c })
        .collect();
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n\r\n--{boundary}--\r\n"
    );
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

/// A `/files` error. 404 and 400 are about the path (no such file, a directory),
/// so they are `Invalid`, never "sandbox lost"; 507 (disk full) is `Invalid` too.
async fn file_error(call: &str, path: &str, resp: reqwest::Response) -> SandboxError {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.unwrap_or_default();
    match status.as_u16() {
        404 => SandboxError::Invalid(format!("{call}: no such file: {path}")),
        400 | 507 => SandboxError::Invalid(format!("{call} {path}: {}", body_message(&body))),
        _ => status_error(Surface::Envd, call, status, &headers, &body),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_in_protojson_form() {
        let p = |s: &str| Event::parse(s.as_bytes()).unwrap();
        assert_eq!(
            p(r#"{"event":{"start":{"pid":12}}}"#),
            Event::Start { pid: 12 }
        );
        assert_eq!(
            p(r#"{"event":{"data":{"stdout":"aGkK"}}}"#),
            Event::Stdout(b"hi\n".to_vec())
        );
        assert_eq!(
            p(r#"{"event":{"data":{"stderr":"eA=="}}}"#),
            Event::Stderr(b"x".to_vec())
        );
        assert_eq!(p(r#"{"event":{"keepalive":{}}}"#), Event::Keepalive);
        assert_eq!(p(r#"{"event":{"somethingNew":{}}}"#), Event::Unknown);
        // exitCode omitted when 0.
        let Event::End(e) = p(r#"{"event":{"end":{"exited":true,"status":"exit status 0"}}}"#)
        else {
            panic!()
        };
        assert_eq!(e.exit_code, 0);
        let Event::End(e) = p(
            r#"{"event":{"end":{"exitCode":3,"exited":true,"status":"exit status 3","error":"exit status 3"}}}"#,
        ) else {
            panic!()
        };
        assert_eq!(e.exit_code, 3);
        assert!(Event::parse(br#"{"event":{"data":{"stdout":"!!"}}}"#).is_err());
    }

    #[test]
    fn requests_serialize_as_the_proto_says() {
        let env = BTreeMap::from([("A".to_string(), "1".to_string())]);
        let args = vec!["-c".to_string(), "echo hi".to_string()];
        let req = StartRequest {
            process: ProcessConfig {
                cmd: "/bin/sh",
                args: &args,
                envs: &env,
                cwd: None,
            },
            stdin: false,
            tag: Some("t1"),
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"process":{"cmd":"/bin/sh","args":["-c","echo hi"],"envs":{"A":"1"}},"stdin":false,"tag":"t1"}"#
        );
        let sel = Selector::Pid(4);
        assert_eq!(
            serde_json::to_string(&SendSignalRequest {
                process: &sel,
                signal: "SIGNAL_SIGKILL"
            })
            .unwrap(),
            r#"{"process":{"pid":4},"signal":"SIGNAL_SIGKILL"}"#
        );
        assert_eq!(
            serde_json::to_string(&ProcessOnly {
                process: &Selector::Tag("x".into())
            })
            .unwrap(),
            r#"{"process":{"tag":"x"}}"#
        );
    }

    #[test]
    fn user_header_is_basic_user_colon() {
        let t = Target::new("i1", "http://x".into(), Some(&Secret::new("s3cr3t-value"))).unwrap();
        let h = t.auth_headers(true);
        assert_eq!(h.get(AUTHORIZATION).unwrap(), "Basic dXNlcjo=");
        assert!(h.get("X-Access-Token").unwrap().is_sensitive());
        assert!(!format!("{h:?}").contains("s3cr3t"));
    }
}
