//! A fake OpenAI-compatible Chat Completions endpoint for the Dexter stand-in:
//! `POST /v1/chat/completions`, answering as JSON or, for `"stream": true`, as
//! server-sent events (`chat.completion.chunk`s, the usage in the last chunk, then
//! `data: [DONE]`). A [`Mode`] makes it fail like the real API: an HTTP status with an
//! OpenAI error body, 429 with `retry-after`, an empty answer, or no answer in time.
//! Every request body is recorded.
//!
//! For the model gateway's tests it also serves the Responses API (`POST /v1/responses`,
//! JSON or events ending in `response.completed` with the usage), reports cached input
//! tokens, sends `x-ratelimit-*` headers, accepts only given keys when told to, and
//! records each request's key, time and the exact bytes answered ([`FakeOpenAi::recorded`]).
//! Listens on 127.0.0.1, on a free port.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// Answer `You asked: <the last user message>`.
    Echo,
    /// Answer with no text.
    Empty,
    /// This status and an OpenAI error body, to every request.
    Status(u16),
    /// 429 with `retry-after: secs` to the next `times` requests, then `Echo`.
    RateLimited { retry_after_secs: u64, times: u32 },
    /// Answer after this long.
    Slow(Duration),
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub path: String,
    pub body: Value,
    /// The bearer token of `Authorization`.
    pub api_key: Option<String>,
    pub status: u16,
    /// The exact bytes of the answer's body.
    pub response: Vec<u8>,
}

/// Usage reported per answer: prompt tokens (cached ones included) and completion tokens.
pub const PROMPT_TOKENS: u64 = 100;
pub const CACHED_TOKENS: u64 = 40;
pub const COMPLETION_TOKENS: u64 = 20;

#[derive(Default)]
struct Shared {
    mode: Option<Mode>,
    requests: Vec<Value>,
    recorded: Vec<Recorded>,
    rate_limited: u32,
    accept: Option<Vec<String>>,
}

pub struct FakeOpenAi {
    /// The base URL to give as `OPENAI_BASE_URL` (ends in `/v1`).
    pub base_url: String,
    shared: Arc<Mutex<Shared>>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeOpenAi {
    pub async fn start(mode: Mode) -> FakeOpenAi {
        let shared = Arc::new(Mutex::new(Shared {
            mode: Some(mode),
            ..Default::default()
        }));
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .route("/v1/responses", post(responses))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOpenAi {
            base_url,
            shared,
            server,
        }
    }

    pub fn requests(&self) -> Vec<Value> {
        self.shared.lock().unwrap().requests.clone()
    }

    /// Every request with its key, time and answer (both endpoints).
    pub fn recorded(&self) -> Vec<Recorded> {
        self.shared.lock().unwrap().recorded.clone()
    }

    /// Answer 401 to any request whose bearer token is not one of `keys`.
    pub fn accept_only(&self, keys: &[&str]) {
        self.shared.lock().unwrap().accept = Some(keys.iter().map(|k| k.to_string()).collect());
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_string)
}

/// Record the request and the exact answer, adding the rate-limit headers.
async fn record(
    shared: &Arc<Mutex<Shared>>,
    path: &str,
    body: Value,
    api_key: Option<String>,
    response: Response,
) -> Response {
    let (mut parts, answer) = response.into_parts();
    for (name, value) in [
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-limit-tokens", "1000000"),
        ("x-ratelimit-remaining-tokens", "999000"),
        ("x-ratelimit-reset-tokens", "60ms"),
    ] {
        parts.headers.insert(name, value.parse().unwrap());
    }
    let bytes = axum::body::to_bytes(answer, usize::MAX)
        .await
        .unwrap_or_default();
    shared.lock().unwrap().recorded.push(Recorded {
        at: Instant::now(),
        path: path.to_string(),
        body,
        api_key,
        status: parts.status.as_u16(),
        response: bytes.to_vec(),
    });
    Response::from_parts(parts, Body::from(bytes))
}

fn refused(shared: &Arc<Mutex<Shared>>, key: &Option<String>) -> bool {
    shared
        .lock()
        .unwrap()
        .accept
        .as_ref()
        .is_some_and(|keys| !key.as_ref().is_some_and(|k| keys.contains(k)))
}

/// `POST /v1/responses`: the text `You asked: <input>`; streamed as events ending in
/// `response.completed` (which carries the usage).
async fn responses(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let key = bearer(&headers);
    if refused(&shared, &key) {
        let r = error(401, "Incorrect API key provided");
        return record(&shared, "/v1/responses", body, key, r).await;
    }
    let input = match &body["input"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let text = format!("You asked: {input}");
    let usage = json!({"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": CACHED_TOKENS}, "output_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS});
    let done = json!({"id": "resp_fake", "object": "response", "model": body["model"], "status": "completed",
        "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
        "usage": usage});
    let response = if body["stream"] != true {
        (
            StatusCode::OK,
            [("content-type", "application/json")],
            done.to_string(),
        )
            .into_response()
    } else {
        let mut sse = String::new();
        let created = json!({"type": "response.created", "response": {"id": "resp_fake", "model": body["model"], "status": "in_progress", "usage": null}});
        sse.push_str(&format!("event: response.created\ndata: {created}\n\n"));
        for piece in text.chars().collect::<Vec<_>>().chunks(8) {
            let delta = json!({"type": "response.output_text.delta", "delta": piece.iter().collect::<String>()});
            sse.push_str(&format!(
                "event: response.output_text.delta\ndata: {delta}\n\n"
            ));
        }
        let completed = json!({"type": "response.completed", "response": done});
        sse.push_str(&format!("event: response.completed\ndata: {completed}\n\n"));
        (StatusCode::OK, [("content-type", "text/event-stream")], sse).into_response()
    };
    record(&shared, "/v1/responses", body, key, response).await
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn error(status: u16, message: &str) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "code": status.to_string()}});
    (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn completions(
    State(shared): State<Arc<Mutex<Shared>>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let key = bearer(&headers);
    if refused(&shared, &key) {
        let r = error(401, "Incorrect API key provided");
        return record(&shared, "/v1/chat/completions", body, key, r).await;
    }
    let answer = chat_answer(&shared, &body).await;
    record(&shared, "/v1/chat/completions", body, key, answer).await
}

async fn chat_answer(shared: &Arc<Mutex<Shared>>, body: &Value) -> Response {
    let body = body.clone();
    let (mode, limited) = {
        let mut s = shared.lock().unwrap();
        s.requests.push(body.clone());
        let mode = s.mode.clone().unwrap();
        let limited = match mode {
            Mode::RateLimited { times, .. } if s.rate_limited < times => {
                s.rate_limited += 1;
                true
            }
            _ => false,
        };
        (mode, limited)
    };
    let text = match mode {
        Mode::Status(status) => return error(status, &format!("fake error {status}")),
        Mode::RateLimited {
            retry_after_secs, ..
        } if limited => {
            let mut r = error(429, "Rate limit reached for requests");
            r.headers_mut()
                .insert("retry-after", retry_after_secs.to_string().parse().unwrap());
            return r;
        }
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            format!("You asked: {}", last_user_text(&body))
        }
        Mode::Empty => String::new(),
        _ => format!("You asked: {}", last_user_text(&body)),
    };
    let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS, "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS}});
    if body["stream"] != true {
        let reply = json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": usage,
        });
        return (
            StatusCode::OK,
            [("content-type", "application/json")],
            reply.to_string(),
        )
            .into_response();
    }
    let mut sse = String::new();
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(8) {
        let piece: String = piece.iter().collect();
        let chunk = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        sse.push_str(&format!("data: {chunk}\n\n"));
    }
    let last = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage});
    sse.push_str(&format!("data: {last}\n\ndata: [DONE]\n\n"));
    (StatusCode::OK, [("content-type", "text/event-stream")], sse).into_response()
}
