//! A fake OpenAI-compatible Chat Completions endpoint for the Dexter stand-in:
//! `POST /v1/chat/completions`, answering as JSON or, for `"stream": true`, as
//! server-sent events (`chat.completion.chunk`s, the usage in the last chunk, then
//! `data: [DONE]`). A [`Mode`] makes it fail like the real API: an HTTP status with an
//! OpenAI error body, 429 with `retry-after`, an empty answer, or no answer in time.
//! Every request body is recorded. Listens on 127.0.0.1, on a free port.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
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

#[derive(Default)]
struct Shared {
    mode: Option<Mode>,
    requests: Vec<Value>,
    rate_limited: u32,
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

async fn completions(State(shared): State<Arc<Mutex<Shared>>>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
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
    let usage = json!({"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120});
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
