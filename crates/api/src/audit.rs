//! `/api/v1/workflows/{id}/audit` and `/api/v1/audit`: the append-only audit trail, per
//! workflow and globally.

use axum::Json;
use axum::extract::State;
use escalator_store::AuditEntry;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{PathParams, QueryParams, workflow_id};
use crate::workflows::{MAX_LIMIT, page_limit};

/// Audit rows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Oldest first.
    pub items: Vec<AuditEntry>,
    /// Pass as `after` for the next page (global log only); null when this page is the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/workflows/{id}/audit", tag = "audit",
    params(("id" = Uuid, Path, description = "workflow id")),
    responses(
        (status = 200, description = "the trail, oldest first", body = AuditPage),
        (status = 404, description = "unknown workflow", body = ErrorBody),
    ))]
/// `GET /api/v1/workflows/{id}/audit`: the workflow's whole trail, oldest first.
pub async fn workflow_trail(
    State(s): State<AppState>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<AuditPage>> {
    let id = workflow_id(&id)?;
    // 404 for an unknown workflow rather than an empty trail.
    s.store.get_workflow(id).await?;
    Ok(Json(AuditPage {
        items: s.store.workflow_audit(id).await?,
        next_after: None,
    }))
}

/// The query of `GET /api/v1/audit`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only rows after this id (`next_after` of the previous page).
    pub after: Option<i64>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "a page of the global log, oldest first", body = AuditPage),
        (status = 400, description = "bad query parameter", body = ErrorBody),
    ))]
/// `GET /api/v1/audit`: the global log, oldest first, paged by row id.
pub async fn log(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = page_limit(q.limit, MAX_LIMIT)?;
    let items = s.store.list_audit(q.after.unwrap_or(0), limit).await?;
    let next_after = (items.len() == limit as usize)
        .then(|| items.last().map(|a| a.id))
        .flatten();
    Ok(Json(AuditPage { items, next_after }))
}
