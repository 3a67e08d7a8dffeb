//! `/api/v1/jobs`: dead jobs (attempts exhausted or malformed) for an operator to inspect, and
//! putting one back in its queue.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use escalator_jobs::DeadJob;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{PathParams, QueryParams};
use crate::workflows::{MAX_LIMIT, page_limit};

/// Which jobs to list; only dead jobs are kept for inspection.
#[derive(Debug, Clone, Copy, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Attempts exhausted, or a payload that could not be decoded.
    #[default]
    Dead,
}

/// The query of `GET /api/v1/jobs`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// Only `dead` is supported (the default).
    #[serde(default)]
    pub status: JobStatus,
    /// At most this many per queue: 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A dead job.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadJobView {
    /// The queue it died in.
    pub queue: String,
    /// Its task id.
    pub id: String,
    /// The payload as text.
    pub payload: String,
    /// The last error.
    pub error: Option<String>,
}

impl From<DeadJob> for DeadJobView {
    fn from(j: DeadJob) -> Self {
        DeadJobView {
            queue: j.queue,
            id: j.id,
            payload: j.payload,
            error: j.error,
        }
    }
}

/// Dead jobs of every queue.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadJobs {
    /// Up to `limit` per queue.
    pub items: Vec<DeadJobView>,
}

#[utoipa::path(get, path = "/api/v1/jobs", operation_id = "list_jobs", tag = "jobs",
    params(JobsQuery),
    responses(
        (status = 200, description = "dead jobs of every queue", body = DeadJobs),
        (status = 400, description = "bad query parameter", body = ErrorBody),
        (status = 503, description = "the queue is unavailable", body = ErrorBody),
    ))]
/// `GET /api/v1/jobs?status=dead&limit=`.
pub async fn list(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<JobsQuery>,
) -> ApiResult<Json<DeadJobs>> {
    let JobStatus::Dead = q.status;
    let limit = page_limit(q.limit, MAX_LIMIT)?;
    let jobs = s.queues.dead_jobs(limit as usize).await?;
    Ok(Json(DeadJobs {
        items: jobs.into_iter().map(DeadJobView::from).collect(),
    }))
}

/// The answer to a retry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Retried {
    /// The queue.
    pub queue: String,
    /// The task id, now pending again with its attempts reset.
    pub id: String,
}

#[utoipa::path(post, path = "/api/v1/jobs/{queue}/{id}/retry", operation_id = "retry_job", tag = "jobs",
    params(
        ("queue" = String, Path, description = "the queue, as listed (escalator:batches) or by its short name (batches)"),
        ("id" = String, Path, description = "the task id"),
    ),
    responses(
        (status = 200, description = "back in its queue with its attempts reset", body = Retried),
        (status = 404, description = "unknown queue, or no such dead job", body = ErrorBody),
        (status = 409, description = "the dead job cannot run again (an SQLite queue row whose id apalis cannot read)", body = ErrorBody),
        (status = 503, description = "the queue is unavailable", body = ErrorBody),
    ))]
/// `POST /api/v1/jobs/{queue}/{id}/retry`: puts a dead job back. Retrying twice is a 404 the
/// second time: the job is no longer dead.
pub async fn retry(
    State(s): State<AppState>,
    PathParams((queue, id)): PathParams<(String, String)>,
) -> ApiResult<Json<Retried>> {
    // the short name (`batches`) is accepted for the namespaced one, as by the CLI
    let Some(queue) = s.queues.names().resolve(&queue).map(str::to_owned) else {
        return Err(ApiError::not_found("queue", format!("{queue:?}")).with_field("queue"));
    };
    if !s.queues.retry_dead(&queue, &id).await? {
        return Err(ApiError::client(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no dead job {id:?} in {queue}"),
        )
        .with_field("id"));
    }
    Ok(Json(Retried { queue, id }))
}
