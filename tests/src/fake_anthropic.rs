//! A fake Anthropic Messages API for running the real Claude Code CLI in tests:
//! `POST /v1/messages` answers in the streaming format (server-sent events:
//! `message_start`, `content_block_*`, `message_delta`, `message_stop`) or, for a
//! non-streaming request, with one JSON message. A [`Mode`] makes it fail the way the
//! real API does: 401 `authentication_error`, 429 `rate_limit_error` with
//! `retry-after`, 529 `overloaded_error`, or a model that keeps calling a tool (to
//! reach `--max-turns`). Every request is recorded, so a test can check what the model
//! was sent (the prompt, byte for byte) and when.
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
}

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub body: Value,
    /// The `x-api-key` header was present (its value is not kept).
    pub had_api_key: bool,
    pub status: u16,
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
    let (response, status) = {
        let mut shared = shared.lock().unwrap();
        let mode = shared.mode.clone().expect("a mode is set");
        let response = match mode {
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
                    answer(&[Block::Text(then)], streams)
                }
            }
            Mode::Answer(text) => answer(&[Block::Text(text)], streams),
            Mode::ToolLoop => {
                if streams {
                    answer(
                        &[
                            Block::Text("Let me look.".into()),
                            Block::ToolUse(json!({"file_path": "/etc/hostname"})),
                        ],
                        true,
                    )
                } else {
                    answer(&[Block::Text("ok".into())], false)
                }
            }
        };
        let status = response.status().as_u16();
        (response, status)
    };
    shared.lock().unwrap().requests.push(Recorded {
        at: Instant::now(),
        body,
        had_api_key: headers.contains_key("x-api-key"),
        status,
    });
    response
}

enum Block {
    Text(String),
    ToolUse(Value),
}

fn answer(blocks: &[Block], streams: bool) -> Response {
    let usage_in = json!({"input_tokens": 120, "output_tokens": 1, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
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
            "usage": {"input_tokens": 120, "output_tokens": 30},
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
    events.push(("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": 30}})));
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
