//! Every request the fake receives is recorded — method, path, query, headers,
//! body, arrival time, and (when it has been sent) the response status and, for
//! the control plane, the response body — so tests can assert what the client
//! really sent, and wait for a request instead of sleeping.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::Shared;

/// Largest request body the fake accepts (file uploads included).
const MAX_BODY: usize = 64 << 20;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// When it arrived.
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// In arrival order, names lowercase.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// 0 until the response head was produced (or if the client gave up first).
    pub status: u16,
    /// Control-plane responses only (envd streams are not buffered).
    pub response_body: Option<Bytes>,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A control-plane request (anything not under `/envd/`).
    pub fn is_control(&self) -> bool {
        !self.path.starts_with("/envd/")
    }

    /// The path below `/envd/{id}` for envd requests (e.g. `/process.Process/Start`).
    pub fn envd_path(&self) -> Option<&str> {
        let rest = self.path.strip_prefix("/envd/")?;
        rest.find('/').map(|i| &rest[i..])
    }

    /// The body as JSON (envelope stripped for Connect streaming requests).
    pub fn json(&self) -> Option<serde_json::Value> {
        let body = if self.header("content-type") == Some("application/connect+json")
            && self.body.len() >= 5
        {
            &self.body[5..]
        } else {
            &self.body[..]
        };
        serde_json::from_slice(body).ok()
    }

    /// Every header value and the body as one text, for leak checks.
    pub fn text(&self) -> String {
        let mut s = format!(
            "{} {}?{}\n",
            self.method,
            self.path,
            self.query.as_deref().unwrap_or("")
        );
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\n"));
        }
        s.push_str(&String::from_utf8_lossy(&self.body));
        s
    }
}

/// The recording middleware, outermost: it sees faulted and refused requests too.
pub(crate) async fn record(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "body too large").into_response(),
    };
    let rec = RecordedRequest {
        at: Instant::now(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        query: parts.uri.query().map(str::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
        status: 0,
        response_body: None,
    };
    let control = rec.is_control();
    let index = {
        let mut records = shared.records.lock().unwrap();
        records.push(rec);
        records.len() - 1
    };
    shared.recorded.notify_waiters();

    let resp = next.run(Request::from_parts(parts, Body::from(body))).await;
    let status = resp.status().as_u16();
    if control {
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_BODY)
            .await
            .unwrap_or_default();
        {
            let mut records = shared.records.lock().unwrap();
            records[index].status = status;
            records[index].response_body = Some(bytes.clone());
        }
        shared.recorded.notify_waiters();
        Response::from_parts(parts, Body::from(bytes))
    } else {
        shared.records.lock().unwrap()[index].status = status;
        shared.recorded.notify_waiters();
        resp
    }
}

/// Wait until some recorded request satisfies `pred`; `None` after `timeout`.
pub(crate) async fn wait_for(
    shared: &Shared,
    timeout: Duration,
    pred: impl Fn(&RecordedRequest) -> bool,
) -> Option<RecordedRequest> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let changed = shared.recorded.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(r) = shared.records.lock().unwrap().iter().find(|r| pred(r)) {
            return Some(r.clone());
        }
        if tokio::time::timeout_at(deadline, changed).await.is_err() {
            return None;
        }
    }
}
