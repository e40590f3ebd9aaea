//! A fake Anthropic Messages API for running the real Claude Code CLI in tests:
//! `POST /v1/messages` answers in the streaming format (server-sent events:
//! `message_start`, `content_block_*`, `message_delta`, `message_stop`) or, for a
//! non-streaming request, with one JSON message. A [`Mode`] makes it fail the way the
//! real API does: 401 `authentication_error`, 429 `rate_limit_error` with
//! `retry-after`, 529 `overloaded_error`, or a model that keeps calling a tool (to
//! reach `--max-turns`). Every request is recorded, so a test can check what the model
//! was sent (the prompt, byte for byte) and when.
//!
//! For the model gateway's tests it also: reports configurable usage (input, output and
//! cache tokens: [`FakeAnthropic::set_usage`]); accepts only given keys when told to
//! ([`FakeAnthropic::accept_only`]); limits itself to N requests per sliding minute with
//! `anthropic-ratelimit-*` headers and 429s beyond ([`Mode::Limited`]); and records the
//! key each request carried and the exact bytes it answered.
//!
//! Listens on 127.0.0.1, on a free port; point the CLI at it with `ANTHROPIC_BASE_URL`.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

/// How the fake answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// A text answer, streamed in a few deltas.
    Answer(String),
    /// 401 `authentication_error` to every request.
    Unauthorized,
    /// 429 `rate_limit_error` with `retry-after: secs` to the next `times` requests,
    /// then answers like `Answer(text)`.
    RateLimited {
        retry_after_secs: u64,
        times: u32,
        then: String,
    },
    /// 529 `overloaded_error` to every request.
    Overloaded,
    /// A model that always calls the `Read` tool (to run into `--max-turns`).
    ToolLoop,
    /// Answers like `Answer(text)` up to `per_minute` requests in any 60 s, with
    /// `anthropic-ratelimit-requests-*` headers; 429 `rate_limit_error` with
    /// `retry-after` beyond that.
    Limited { per_minute: u32, text: String },
}

/// The usage the fake reports for each answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeUsage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
}

impl Default for FakeUsage {
    fn default() -> Self {
        FakeUsage {
            input: 120,
            output: 30,
            cache_read: 0,
            cache_write: 0,
        }
    }
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub body: Value,
    /// The `x-api-key` header was present.
    pub had_api_key: bool,
    /// The `x-api-key` header's value (the gateway tests check which key arrived).
    pub api_key: Option<String>,
    pub status: u16,
    /// The exact bytes of the answer's body.
    pub response: Vec<u8>,
}

impl Recorded {
    /// The text of the first user message (the prompt).
    pub fn prompt(&self) -> Option<String> {
        let first = self.body.get("messages")?.as_array()?.first()?;
        match first.get("content")? {
            Value::String(s) => Some(s.clone()),
            Value::Array(blocks) => {
                let texts: Vec<&str> = blocks
                    .iter()
                    .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                    .filter_map(|b| b.get("text").and_then(Value::as_str))
                    .collect();
                Some(texts.join(""))
            }
            _ => None,
        }
    }

    /// How many messages the conversation held (a resumed session sends the earlier ones).
    pub fn message_count(&self) -> usize {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    }

    /// Whether the request streams (the CLI's main loop does; side requests may not).
    pub fn streams(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool) == Some(true)
    }
}

#[derive(Default)]
struct Shared {
    mode: Option<Mode>,
    requests: Vec<Recorded>,
    rate_limited: u32,
    usage: FakeUsage,
    accept: Option<Vec<String>>,
}

/// A running fake; stops when dropped.
pub struct FakeAnthropic {
    pub url: String,
    shared: Arc<Mutex<Shared>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeAnthropic {
    pub async fn start(mode: Mode) -> FakeAnthropic {
        let shared = Arc::new(Mutex::new(Shared {
            mode: Some(mode),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/v1/messages", post(messages))
            .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Anthropic endpoint");
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeAnthropic {
            url,
            shared,
            server,
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        let mut shared = self.shared.lock().unwrap();
        shared.mode = Some(mode);
        shared.rate_limited = 0;
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// The usage reported from now on.
    pub fn set_usage(&self, usage: FakeUsage) {
        self.shared.lock().unwrap().usage = usage;
    }

    /// Answer 401 `authentication_error` to any request whose `x-api-key` is not one
    /// of `keys`.
    pub fn accept_only(&self, keys: &[&str]) {
        self.shared.lock().unwrap().accept = Some(keys.iter().map(|k| k.to_string()).collect());
    }
}

impl Drop for FakeAnthropic {
    fn drop(&mut self) {
        self.server.abort();
    }
}

const MODEL: &str = "claude-sonnet-4-5-20250929";

fn error(status: u16, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"});
    (
        StatusCode::from_u16(status).unwrap(),
        [
            ("content-type", "application/json"),
            ("request-id", "req_fake"),
        ],
        body.to_string(),
    )
        .into_response()
}

async fn messages(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let streams = body.get("stream").and_then(Value::as_bool) == Some(true);
    let api_key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let now = Instant::now();
    let (response, status) = {
        let mut shared = shared.lock().unwrap();
        let mode = shared.mode.clone().expect("a mode is set");
        let usage = shared.usage;
        let refused = shared
            .accept
            .as_ref()
            .is_some_and(|keys| !api_key.as_ref().is_some_and(|k| keys.contains(k)));
        let response = match mode {
            _ if refused => error(401, "authentication_error", "invalid x-api-key"),
            Mode::Limited { per_minute, text } => {
                let window = std::time::Duration::from_secs(60);
                let recent: Vec<Instant> = shared
                    .requests
                    .iter()
                    .filter(|r| r.status != 429 && now.duration_since(r.at) < window)
                    .map(|r| r.at)
                    .collect();
                let remaining = per_minute.saturating_sub(recent.len() as u32);
                let reset_in = recent
                    .first()
                    .map_or(window, |first| window - now.duration_since(*first));
                let mut r = if remaining == 0 {
                    let mut r = error(
                        429,
                        "rate_limit_error",
                        "Number of requests has exceeded your per-minute rate limit",
                    );
                    r.headers_mut().insert(
                        "retry-after",
                        reset_in
                            .as_secs_f64()
                            .ceil()
                            .max(1.0)
                            .to_string()
                            .parse()
                            .unwrap(),
                    );
                    r
                } else {
                    answer(&[Block::Text(text)], streams, usage)
                };
                let h = r.headers_mut();
                h.insert("anthropic-ratelimit-requests-limit", per_minute.into());
                h.insert(
                    "anthropic-ratelimit-requests-remaining",
                    remaining.saturating_sub(1).into(),
                );
                r
            }
            Mode::Unauthorized => error(401, "authentication_error", "invalid x-api-key"),
            Mode::Overloaded => error(529, "overloaded_error", "Overloaded"),
            Mode::RateLimited {
                retry_after_secs,
                times,
                then,
            } => {
                if shared.rate_limited < times {
                    shared.rate_limited += 1;
                    let mut r = error(
                        429,
                        "rate_limit_error",
                        "Number of request tokens has exceeded your per-minute rate limit",
                    );
                    r.headers_mut()
                        .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
                    r
                } else {
                    answer(&[Block::Text(then)], streams, usage)
                }
            }
            Mode::Answer(text) => answer(&[Block::Text(text)], streams, usage),
            Mode::ToolLoop => {
                if streams {
                    answer(
                        &[
                            Block::Text("Let me look.".into()),
                            Block::ToolUse(json!({"file_path": "/etc/hostname"})),
                        ],
                        true,
                        usage,
                    )
                } else {
                    answer(&[Block::Text("ok".into())], false, usage)
                }
            }
        };
        let status = response.status().as_u16();
        (response, status)
    };
    let (parts, answer_body) = response.into_parts();
    let bytes = axum::body::to_bytes(answer_body, usize::MAX)
        .await
        .unwrap_or_default();
    shared.lock().unwrap().requests.push(Recorded {
        at: now,
        body,
        had_api_key: api_key.is_some(),
        api_key,
        status,
        response: bytes.to_vec(),
    });
    Response::from_parts(parts, Body::from(bytes))
}

enum Block {
    Text(String),
    ToolUse(Value),
}

fn answer(blocks: &[Block], streams: bool, usage: FakeUsage) -> Response {
    let usage_in = json!({"input_tokens": usage.input, "output_tokens": 1, "cache_creation_input_tokens": usage.cache_write, "cache_read_input_tokens": usage.cache_read});
    let stop_reason = if blocks.iter().any(|b| matches!(b, Block::ToolUse(_))) {
        "tool_use"
    } else {
        "end_turn"
    };
    let content: Vec<Value> = blocks
        .iter()
        .map(|b| match b {
            Block::Text(t) => json!({"type": "text", "text": t}),
            Block::ToolUse(input) => {
                json!({"type": "tool_use", "id": format!("toolu_{}", rand::random::<u32>()), "name": "Read", "input": input})
            }
        })
        .collect();
    if !streams {
        let message = json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": MODEL,
            "content": content, "stop_reason": stop_reason, "stop_sequence": null,
            "usage": {"input_tokens": usage.input, "output_tokens": usage.output, "cache_creation_input_tokens": usage.cache_write, "cache_read_input_tokens": usage.cache_read},
        });
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            message.to_string(),
        )
            .into_response();
    }
    let mut events: Vec<(&str, Value)> = vec![(
        "message_start",
        json!({"type": "message_start", "message": {"id": format!("msg_{}", rand::random::<u32>()), "type": "message", "role": "assistant", "model": MODEL, "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage_in}}),
    )];
    for (index, block) in content.iter().enumerate() {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = block["text"].as_str().unwrap_or_default();
                events.push(("content_block_start", json!({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})));
                // Split into a few deltas on character boundaries, as the real API streams.
                let chars: Vec<char> = text.chars().collect();
                for piece in chars.chunks(16) {
                    let piece: String = piece.iter().collect();
                    events.push(("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": piece}})));
                }
                events.push((
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                ));
            }
            _ => {
                let mut start = block.clone();
                start["input"] = json!({});
                events.push((
                    "content_block_start",
                    json!({"type": "content_block_start", "index": index, "content_block": start}),
                ));
                events.push(("content_block_delta", json!({"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": block["input"].to_string()}})));
                events.push((
                    "content_block_stop",
                    json!({"type": "content_block_stop", "index": index}),
                ));
            }
        }
    }
    events.push(("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": usage.output}})));
    events.push(("message_stop", json!({"type": "message_stop"})));
    let mut text = String::new();
    for (name, data) in events {
        text.push_str(&format!("event: {name}\ndata: {data}\n\n"));
    }
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(Body::from(text))
        .unwrap()
}
