//! `/api/v1/checks`: enqueue an ad-hoc check run (all due workflows, or one) and follow it.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use escalator_jobs::{CheckWorkflows, Scope};
use escalator_store::{CheckRun, NewCheckRun, StoreError};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{OptionalJsonBody, PathParams, numeric_id};

/// The body of `POST /api/v1/checks`; empty means "check every due workflow now".
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCheck {
    /// Check only this workflow.
    pub workflow_id: Option<Uuid>,
    /// Evaluate the SLA clock at this instant (default: now).
    pub as_of: Option<DateTime<Utc>>,
    /// Report only. Not supported by the engine's queued checks yet.
    #[serde(default)]
    pub dry_run: bool,
}

/// The answer to `POST /api/v1/checks`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckQueued {
    /// Follow it at `GET /api/v1/checks/{check_run_id}`.
    pub check_run_id: i64,
    /// "queued".
    pub status: String,
    /// "all" or "workflow:<uuid>".
    pub scope: String,
    /// The evaluation instant.
    pub as_of: DateTime<Utc>,
}

#[utoipa::path(post, path = "/api/v1/checks", tag = "checks",
    request_body(content = Option<CreateCheck>, description = "optional: empty checks every due workflow now"),
    responses(
        (status = 202, description = "recorded and queued", body = CheckQueued),
        (status = 422, description = "unknown workflow_id, or dry_run", body = ErrorBody),
        (status = 503, description = "the queue is unavailable", body = ErrorBody),
    ))]
/// `POST /api/v1/checks`: records a run and enqueues its planner job → 202.
pub async fn create(
    State(s): State<AppState>,
    OptionalJsonBody(body): OptionalJsonBody<CreateCheck>,
) -> ApiResult<(StatusCode, Json<CheckQueued>)> {
    if body.dry_run {
        // The queued engine has no report-only mode; the CLI's does, without a queue.
        return Err(ApiError::invalid(
            "dry_run",
            "dry runs are not available through the api yet; use `escalator check --dry-run`",
        ));
    }
    let scope = match body.workflow_id {
        None => Scope::All,
        Some(id) => match s.store.get_workflow(id).await {
            Ok(w) => Scope::Workflow(w.id),
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::invalid(
                    "workflow_id",
                    format!("workflow {id} not found"),
                ));
            }
            Err(e) => return Err(e.into()),
        },
    };
    let now = Utc::now();
    let as_of = body.as_of.unwrap_or(now);
    let run = s
        .store
        .create_check_run(&NewCheckRun {
            slot: None,
            requested_by: "api",
            scope: scope.to_string(),
            as_of,
            dry_run: false,
            coalesced: 1,
            now,
        })
        .await?
        .ok_or_else(|| {
            // Only scheduled slots are unique; a run without a slot is always recorded.
            ApiError::Internal("the check run was not recorded".into())
        })?;
    let job = CheckWorkflows {
        check_run_id: run.id,
        as_of,
        scope,
    };
    if let Err(e) = s.queues.push_check(&job).await {
        // Without its job the run would stay "queued" forever: close it as failed so that
        // whoever follows it learns what happened.
        let message = format!("could not enqueue the check: {e}");
        if let Err(fail) = s.store.fail_check_run(run.id, &message, Utc::now()).await {
            tracing::error!(run = run.id, error = %fail, "cannot mark the unqueued run failed");
        }
        return Err(e.into());
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(CheckQueued {
            check_run_id: run.id,
            status: run.status,
            scope: run.scope,
            as_of: run.as_of,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/checks/{id}", tag = "checks",
    params(("id" = i64, Path, description = "check run id")),
    responses(
        (status = 200, description = "the run with its status and counts", body = CheckRun),
        (status = 400, description = "not a positive integer", body = ErrorBody),
        (status = 404, description = "unknown id", body = ErrorBody),
    ))]
/// `GET /api/v1/checks/{id}`: the run with its status and counts.
pub async fn get(
    State(s): State<AppState>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<CheckRun>> {
    let id = numeric_id(&id)?;
    Ok(Json(s.store.get_check_run(id).await?))
}
