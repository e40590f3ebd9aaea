//! `GET /v1/queues`: the depths of both queues (ready, running, delayed, dead), as
//! `fleet jobs --json` prints them. The dashboard's overview polls it.

use anyhow::Context as _;
use axum::Json;
use axum::extract::State;
use fleet_shared::job::QueueKind;
use serde_json::Value;

use super::openapi::ErrorBody;
use super::{ApiError, Shared};
use crate::output::counts_json;

#[utoipa::path(get, path = "/v1/queues", tag = "meta",
    responses((status = 200, description = "`{research: {ready, running, delayed, dead}, lifecycle: {...}}`", body = Object),
        (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
/// `GET /v1/queues`: how many jobs each queue holds, by state.
pub async fn depths(State(s): State<Shared>) -> Result<Json<Value>, ApiError> {
    let queues = s.queues().await?;
    let mut rows = Vec::new();
    for kind in QueueKind::ALL {
        let counts = s
            .redis(async {
                queues
                    .get(kind)
                    .counts()
                    .await
                    .with_context(|| format!("counting the {kind} queue"))
            })
            .await?;
        rows.push((kind, counts));
    }
    Ok(Json(counts_json(&rows)))
}
