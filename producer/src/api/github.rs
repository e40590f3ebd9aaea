//! `POST /webhooks/github`: GitHub's webhook deliveries.
//!
//! Outside the `/v1` bearer-token guard (GitHub signs instead): the signature
//! (`X-Hub-Signature-256`, HMAC-SHA256 of the raw body with the secret from
//! `github.webhook_secret_env`) is checked in constant time before anything else is
//! read — missing, malformed or wrong: 401 and nothing parsed. Then the delivery ID
//! (`X-GitHub-Delivery`) is claimed in Redis (`SET … NX EX github.delivery_ttl_secs`):
//! a replay is answered 200 `{"duplicate": true}` and does nothing. The delivery is
//! planned (`fleet_shared::github::webhook::plan`) and its jobs enqueued — nothing
//! else happens in the request, so it is answered in milliseconds. Jobs carry
//! idempotency keys from the repository, commit, issue and comment IDs, so a
//! redelivery with a new ID, or an edit, does not duplicate them either. If enqueuing
//! fails the claim is dropped, so GitHub's redelivery can try again.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fleet_shared::github::webhook::{Plan, PlanContext, plan, verify_signature};
use fleet_shared::job::QueueKind;
use serde_json::{Value, json};

use super::{ApiError, Shared};

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A delivery ID as GitHub sends them (a GUID): bounded, and safe in a key.
fn valid_delivery(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[utoipa::path(post, path = "/webhooks/github", tag = "github", security(()),
    params(("X-Hub-Signature-256" = String, Header, description = "HMAC-SHA256 of the body with the webhook secret"), ("X-GitHub-Event" = String, Header, description = "the event"), ("X-GitHub-Delivery" = String, Header, description = "the delivery ID")),
    request_body(content = Object, description = "a GitHub webhook delivery"),
    responses((status = 200, description = "acknowledged (jobs enqueued, or ignored)", body = Object), (status = 401, body = super::openapi::ErrorBody)))]
/// `POST /webhooks/github`: a GitHub delivery, checked against the webhook secret.
pub async fn webhook(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let settings = &s.ctx.settings;
    let secret_env = &settings.github.webhook_secret_env;
    let secret = std::env::var(secret_env).unwrap_or_default();
    if secret.is_empty() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "GitHub webhooks are not configured: set {secret_env} (github.webhook_secret_env)"
            ),
        ));
    }
    let body = s.body(body)?;
    if let Err(why) = verify_signature(
        secret.as_bytes(),
        &body,
        header(&headers, "x-hub-signature-256"),
    ) {
        tracing::warn!(reason = %why, "webhook delivery refused");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!("signature refused: {why}"),
        ));
    }
    // Verified: from here the body is GitHub's.
    let event = header(&headers, "x-github-event").unwrap_or("").to_string();
    let Some(delivery) = header(&headers, "x-github-delivery")
        .filter(|d| valid_delivery(d))
        .map(str::to_string)
    else {
        return Err(ApiError::bad_request(
            "X-GitHub-Delivery is missing or malformed",
        ));
    };
    // A ping is answered whatever its body holds.
    let payload: Value = if event == "ping" {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the payload is not JSON: {e}")))?
    };
    let queues = s.queues().await?;
    let claim = format!(
        "{}:{{github}}:delivery:{delivery}",
        settings.redis.key_prefix
    );
    let mut redis = queues.research.connection();
    let ttl = settings.github.delivery_ttl_secs;
    let first: Option<String> = s
        .redis(async {
            redis::cmd("SET")
                .arg(&claim)
                .arg(&event)
                .arg("NX")
                .arg("EX")
                .arg(ttl)
                .query_async(&mut redis)
                .await
                .map_err(anyhow::Error::from)
        })
        .await?;
    if first.is_none() {
        tracing::info!(%delivery, %event, "webhook delivery seen before; ignored");
        return Ok((
            StatusCode::OK,
            axum::Json(json!({"delivery": delivery, "duplicate": true})),
        )
            .into_response());
    }
    let ctx = PlanContext {
        github: &settings.github,
        agents: &settings.agents,
        default_agent: &settings.default_agent,
        max_query_bytes: settings.queue.max_query_bytes,
    };
    let planned = plan(&event, &payload, &ctx);
    let enqueued = async {
        let answer = match planned {
            Plan::Pong => json!({"delivery": delivery, "event": event, "pong": true}),
            Plan::Ignore(reason) => {
                json!({"delivery": delivery, "event": event, "ignored": reason})
            }
            Plan::Lifecycle(specs) => {
                let mut ids = Vec::new();
                for spec in specs {
                    let queue = match spec.queue() {
                        QueueKind::Lifecycle => &queues.lifecycle,
                        QueueKind::Research => &queues.research,
                    };
                    let (id, _) = s.redis(async { Ok(queue.enqueue(spec).await?) }).await?;
                    ids.push(id);
                }
                json!({"delivery": delivery, "event": event, "jobs": ids, "queue": "lifecycle"})
            }
            Plan::Research(spec) => {
                let (id, existing) = s
                    .redis(async { Ok(queues.research.enqueue(*spec).await?) })
                    .await?;
                json!({"delivery": delivery, "event": event, "jobs": [id], "existing": existing, "queue": "research"})
            }
        };
        Ok::<_, ApiError>(answer)
    }
    .await;
    match enqueued {
        Ok(answer) => {
            tracing::info!(%delivery, %event, answer = %answer, "webhook delivery handled");
            Ok((StatusCode::OK, axum::Json(answer)).into_response())
        }
        Err(e) => {
            // Let a redelivery try again.
            let _: Result<i64, _> = redis::cmd("DEL").arg(&claim).query_async(&mut redis).await;
            Err(e)
        }
    }
}
