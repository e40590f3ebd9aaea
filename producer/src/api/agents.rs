//! Agents over HTTP, as `fleet agents` and `fleet pool scale` do them: the list and
//! one record read from the fleet's agent registry in Redis; launch, pause, resume,
//! terminate and scale enqueued as lifecycle jobs on the lifecycle queue (a worker
//! runs them), answered 202 with the job's ID, which `GET /v1/jobs/{id}` and
//! `GET /v1/jobs/{id}/result?wait=S` follow.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::LOCATION;
use axum::response::{IntoResponse, Response};
use fleet_shared::job::LifecycleJob;
use fleet_shared::pool::Registry;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::openapi::ErrorBody;
use super::routes::query;
use super::{ApiError, Shared};
use crate::commands::agents::enqueue_lifecycle;

/// `GET /v1/agents` filters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AgentListQuery {
    /// Only agents of this profile.
    profile: Option<String>,
    /// Only agents in this state (`launching`, `idle`, `busy`, `paused`, …).
    state: Option<String>,
}

/// The fleet's agents, as `fleet --json agents list` prints them.
#[derive(Serialize, ToSchema)]
pub struct AgentList {
    /// Agent records, oldest first: state, profile, sandbox, holder, jobs served,
    /// active and paused seconds, …
    #[schema(value_type = Vec<Object>)]
    pub agents: Vec<Value>,
}

/// `POST /v1/agents`: launch an agent of a profile.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// Agent profile (default: `default_agent`).
    pub agent: Option<String>,
    /// A persistent agent, which jobs can address by its ID.
    #[serde(default)]
    pub persistent: bool,
}

/// `POST /v1/pool/scale`: grow or shrink a profile's pool.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    /// Agents wanted, fleet-wide, at most 1000.
    pub size: u32,
    /// Agent profile (default: `default_agent`).
    pub agent: Option<String>,
}

/// A lifecycle job enqueued, as `fleet --json agents …` prints it (without `--wait`).
#[derive(Serialize, ToSchema)]
pub struct LifecycleAccepted {
    /// The lifecycle job's ID: `GET /v1/jobs/{id}` follows it.
    pub id: String,
    /// Always `lifecycle`.
    pub queue: String,
    /// The operation in words: `launch demo (persistent)`, `scale demo to 3`.
    pub operation: String,
}

async fn registry(s: &Shared) -> Result<Registry, ApiError> {
    let conn = s.queues().await?.research.connection();
    Ok(Registry::new(conn, &s.ctx.settings.redis.key_prefix))
}

/// A JSON body (an empty body reads as `{}` where every field is optional).
fn json_body<T: serde::de::DeserializeOwned>(
    s: &Shared,
    body: Result<Bytes, BytesRejection>,
    empty_ok: bool,
) -> Result<T, ApiError> {
    let bytes = s.body(body)?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) && empty_ok {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
}

#[utoipa::path(get, path = "/v1/agents", tag = "agents", params(AgentListQuery),
    responses((status = 200, description = "the fleet's agents", body = AgentList),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
/// `GET /v1/agents`: the fleet's agents, as `fleet --json agents list`.
pub async fn list(
    State(s): State<Shared>,
    q: Result<Query<AgentListQuery>, QueryRejection>,
) -> Result<Json<AgentList>, ApiError> {
    let q = query(q)?;
    if let Some(state) = &q.state
        && fleet_shared::pool::AgentState::parse(state).is_none()
    {
        return Err(ApiError::bad_request(format!(
            "state: not an agent state: {state:?}"
        )));
    }
    let registry = registry(&s).await?;
    let agents = s
        .redis(async {
            registry
                .list(q.profile.as_deref())
                .await
                .map_err(anyhow::Error::from)
        })
        .await?;
    let agents = agents
        .iter()
        .filter(|a| {
            q.state.as_deref().is_none_or(|want| {
                serde_json::to_value(a.state)
                    .ok()
                    .as_ref()
                    .and_then(Value::as_str)
                    == Some(want)
            })
        })
        .map(|a| serde_json::to_value(a).unwrap_or(Value::Null))
        .collect();
    Ok(Json(AgentList { agents }))
}

#[utoipa::path(get, path = "/v1/agents/{agent_id}", tag = "agents",
    params(("agent_id" = String, Path, description = "the agent's ID")),
    responses((status = 200, description = "the agent's record", body = Object),
        (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
/// `GET /v1/agents/{agent_id}`: one agent's record.
pub async fn show(
    State(s): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let agent_id = agent_id(path)?;
    let registry = registry(&s).await?;
    let record = s
        .redis(async { registry.get(&agent_id).await.map_err(anyhow::Error::from) })
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no agent with ID {agent_id:?} (never launched, or terminated and forgotten)"
            ))
        })?;
    Ok(Json(serde_json::to_value(record).unwrap_or(Value::Null)))
}

fn agent_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = raw.trim().to_string();
    if id.is_empty() {
        return Err(ApiError::bad_request("the agent ID is empty"));
    }
    Ok(id)
}

/// Enqueue a lifecycle job: 202, its ID, `Location` of its record.
async fn accept(s: &Shared, job: LifecycleJob) -> Result<Response, ApiError> {
    // Checked before Redis is asked (same checks as the CLI).
    crate::commands::agents::lifecycle_spec(&s.ctx, job.clone())
        .map_err(|e| ApiError::bad_request(e.message))?;
    let (id, operation) = s.redis(enqueue_lifecycle(&s.ctx, job)).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(LOCATION, format!("/v1/jobs/{id}"))],
        Json(json!({"id": id, "queue": "lifecycle", "operation": operation})),
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/agents", tag = "agents", request_body = LaunchRequest,
    responses((status = 202, description = "the launch job, as `fleet --json agents launch`", body = LifecycleAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
/// `POST /v1/agents`: launch an agent (a `launch` lifecycle job).
pub async fn launch(
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: LaunchRequest = json_body(&s, body, true)?;
    let agent = req
        .agent
        .unwrap_or_else(|| s.ctx.settings.default_agent.clone());
    accept(
        &s,
        LifecycleJob::Launch {
            agent,
            persistent: req.persistent,
        },
    )
    .await
}

macro_rules! agent_action {
    ($name:ident, $variant:ident, $path:literal, $doc:literal) => {
        #[utoipa::path(post, path = $path, tag = "agents",
            params(("agent_id" = String, Path, description = "the agent's ID")),
            responses((status = 202, description = "the lifecycle job", body = LifecycleAccepted),
                (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
        #[doc = $doc]
        pub async fn $name(
            State(s): State<Shared>,
            path: Result<Path<String>, PathRejection>,
        ) -> Result<Response, ApiError> {
            let agent_id = agent_id(path)?;
            accept(&s, LifecycleJob::$variant { agent_id }).await
        }
    };
}

agent_action!(
    pause,
    Pause,
    "/v1/agents/{agent_id}/pause",
    "`POST /v1/agents/{agent_id}/pause`: pause an agent (its sandbox keeps its state)."
);
agent_action!(
    resume,
    Resume,
    "/v1/agents/{agent_id}/resume",
    "`POST /v1/agents/{agent_id}/resume`: resume a paused agent."
);
agent_action!(
    terminate,
    Terminate,
    "/v1/agents/{agent_id}/terminate",
    "`POST /v1/agents/{agent_id}/terminate`: terminate an agent and its sandbox."
);

#[utoipa::path(post, path = "/v1/pool/scale", tag = "agents", request_body = ScaleRequest,
    responses((status = 202, description = "the scale job, as `fleet --json pool scale`", body = LifecycleAccepted),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
/// `POST /v1/pool/scale`: grow or shrink a profile's pool, fleet-wide.
pub async fn scale(
    State(s): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ScaleRequest = json_body(&s, body, false)?;
    let agent = req
        .agent
        .unwrap_or_else(|| s.ctx.settings.default_agent.clone());
    accept(
        &s,
        LifecycleJob::Scale {
            agent,
            size: req.size,
        },
    )
    .await
}
