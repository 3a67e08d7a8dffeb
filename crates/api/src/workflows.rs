//! `/api/v1/workflows`: create (idempotent on `external_id`), get, and list with filters and
//! cursor pagination; plus the paging helpers the other lists share.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use escalator_policy::{SlaStatus, Status};
use escalator_store::{NewWorkflow, StoreError, Workflow, WorkflowFilter};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParams, QueryParams, workflow_named};

/// Largest page of a list.
pub const MAX_LIMIT: u32 = 1000;
/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;

/// The body of `POST /api/v1/workflows`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "external_id": "PO-1042",
    "title": "Laptop purchase",
    "kind": "purchase",
    "stage": "Manager Approval",
    "assignee": "alice",
    "initiator": "dave",
    "policy_id": "default",
    "stage_started_at": "2026-11-25T09:00:00Z",
    "metadata": {"amount": 1200}
}))]
pub struct CreateWorkflow {
    /// The caller's id; creating twice with the same body is a no-op.
    pub external_id: String,
    /// Short description.
    pub title: String,
    /// Free-form type, e.g. "purchase_request".
    pub kind: String,
    /// Current stage.
    pub stage: String,
    /// Who must act now.
    pub assignee: String,
    /// Who started the workflow.
    pub initiator: String,
    /// Override of the first escalation level's target.
    #[serde(default)]
    pub escalation_target: Option<String>,
    /// Policy id; None = "default".
    #[serde(default)]
    pub policy_id: Option<String>,
    /// When the stage's clock started; None = now.
    #[serde(default)]
    pub stage_started_at: Option<DateTime<Utc>>,
    /// Caller's data, kept as is; None = `{}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
}

/// A workflow as the api shows it: the row plus its SLA state now (None when not open).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowView {
    /// The row.
    #[serde(flatten)]
    pub workflow: Workflow,
    /// ok, warning or breached, for open workflows.
    pub sla_status: Option<SlaStatus>,
    /// On a create only, what will not work as the caller may expect: an escalation with no
    /// one to reach (an assignee who is no user, or has no manager, under a policy escalating
    /// to the manager; an override target who has left). The workflow is created all the same.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl WorkflowView {
    fn new(workflow: Workflow, now: DateTime<Utc>) -> Self {
        let sla_status = workflow
            .status
            .is_open()
            .then(|| escalator_policy::sla_status(&workflow.deadlines(), now));
        WorkflowView {
            workflow,
            sla_status,
            warnings: Vec::new(),
        }
    }
}

/// The workflow as JSON with its version as the ETag (for `If-Match`).
pub(crate) fn workflow_response(status: StatusCode, w: Workflow) -> Response {
    warned_response(status, w, Vec::new())
}

/// [`workflow_response`] with the create's warnings.
fn warned_response(status: StatusCode, w: Workflow, warnings: Vec<String>) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", w.version)).ok();
    let view = WorkflowView {
        warnings,
        ..WorkflowView::new(w, Utc::now())
    };
    let mut res = (status, Json(view)).into_response();
    if let Some(etag) = etag {
        res.headers_mut().insert(header::ETAG, etag);
    }
    res
}

#[utoipa::path(post, path = "/api/v1/workflows", operation_id = "create_workflow", tag = "workflows",
    request_body = CreateWorkflow,
    responses(
        (status = 201, description = "created", body = WorkflowView, headers(("ETag" = String, description = "the workflow\'s version, quoted: send it back as If-Match"))),
        (status = 200, description = "the same body was created before: the existing workflow", body = WorkflowView, headers(("ETag" = String, description = "the workflow\'s version, quoted: send it back as If-Match"))),
        (status = 409, description = "external_id exists with a different body", body = ErrorBody),
        (status = 422, description = "invalid field, unknown policy_id, or stage_started_at in the future", body = ErrorBody),
    ))]
/// `POST /api/v1/workflows`: 201 when created, 200 when the same body was created before,
/// 409 naming the first differing field otherwise.
pub async fn create(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<CreateWorkflow>,
) -> ApiResult<Response> {
    let new = NewWorkflow {
        external_id: body.external_id,
        title: body.title,
        kind: body.kind,
        stage: body.stage,
        assignee: body.assignee,
        initiator: body.initiator,
        escalation_target: body.escalation_target,
        policy_id: body.policy_id,
        stage_started_at: body.stage_started_at,
        metadata: body.metadata.unwrap_or_else(|| serde_json::json!({})),
    };
    let created = match s.store.create_workflow(&new, Utc::now()).await {
        // a reference in the body, not the address: 422 naming it, as for other references
        Err(StoreError::NotFound {
            entity: "policy",
            id,
        }) => {
            return Err(ApiError::invalid(
                "policy_id",
                format!("policy {id:?} not found"),
            ));
        }
        r => r?,
    };
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let warnings = first_escalation_warnings(&s, &created.workflow).await;
    Ok(warned_response(status, created.workflow, warnings))
}

/// Whether the workflow's first escalation can reach anyone, as far as the records say now:
/// a workflow's own people need no user record, but one escalating to "the manager" of an
/// assignee who is no user (a mistyped id, or one the HR sync has not brought yet) stops
/// there, exhausted for want of a target, and its create answered 201 as if all were well.
/// Read failures leave the warnings out; they never fail the create.
async fn first_escalation_warnings(s: &AppState, w: &Workflow) -> Vec<String> {
    let mut warnings = Vec::new();
    let user = async |id: &str| match s.store.get_user(id).await {
        Ok(u) => Some(Some(u)),
        Err(StoreError::NotFound { .. }) => Some(None),
        Err(_) => None,
    };
    if let Some(target) = &w.escalation_target {
        match user(target).await {
            Some(Some(u)) if !u.active => warnings.push(format!(
                "escalation_target {target:?} is inactive: the first escalation passes them over \
                 to the policy's own first target"
            )),
            // someone who can be reached (a workflow's own people need no user record)
            _ => return warnings,
        }
    }
    let Ok(policy) = s.store.get_policy(&w.policy_id, w.policy_version).await else {
        return warnings;
    };
    let Some(first) = policy.policy.spec().levels.first() else {
        return warnings;
    };
    let why = match &first.target {
        escalator_policy::Target::User(id) => match user(id).await {
            Some(Some(u)) if !u.active => format!(
                "policy {:?} escalates first to {id:?}, who is inactive: the escalation passes \
                 them over to the next level, if any",
                w.policy_id
            ),
            _ => return warnings,
        },
        escalator_policy::Target::Manager => {
            let lacks = match user(&w.assignee).await {
                Some(None) => "is no user".to_owned(),
                Some(Some(u)) => match &u.manager_id {
                    None => "has no manager_id".to_owned(),
                    Some(m) => match user(m).await {
                        Some(None) => format!("has manager_id {m:?}, who is no user"),
                        Some(Some(boss)) if !boss.active => {
                            format!("has manager_id {m:?}, who is inactive")
                        }
                        _ => return warnings,
                    },
                },
                None => return warnings,
            };
            format!(
                "assignee {:?} {lacks}: policy {:?} escalates to the assignee's manager, so the \
                 workflow will stop at its deadline (exhausted, no_target) unless the user gets \
                 an active manager first (PUT /api/v1/users/{})",
                w.assignee, w.policy_id, w.assignee
            )
        }
    };
    warnings.push(why);
    warnings
}

#[utoipa::path(get, path = "/api/v1/workflows/{id}", operation_id = "get_workflow", tag = "workflows",
    params(("id" = String, Path, description = "the workflow's id, or its external_id (percent-encoded)")),
    responses(
        (status = 200, description = "the workflow; ETag is its version", body = WorkflowView, headers(("ETag" = String, description = "the workflow\'s version, quoted: send it back as If-Match"))),
        (status = 400, description = "an empty id, or one longer than 200 characters", body = ErrorBody),
        (status = 404, description = "unknown id", body = ErrorBody),
    ))]
/// `GET /api/v1/workflows/{id}`.
pub async fn get(
    State(s): State<AppState>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Response> {
    Ok(workflow_response(
        StatusCode::OK,
        workflow_named(&s.store, &id).await?,
    ))
}

/// The query of `GET /api/v1/workflows`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this assignee.
    pub assignee: Option<String>,
    /// Only open workflows in this SLA state now.
    pub sla_status: Option<SlaStatus>,
    /// Only open workflows (pending or escalated; not on hold, whose clock is paused) due
    /// before this instant (RFC 3339).
    pub due_before: Option<DateTime<Utc>>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

/// A page of workflows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkflowPage {
    /// The items, oldest first.
    pub items: Vec<WorkflowView>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// An opaque cursor of two parts (a position in a list ordered by both).
pub fn encode_cursor_parts(
    first: impl std::fmt::Display,
    second: impl std::fmt::Display,
) -> String {
    URL_SAFE_NO_PAD.encode(format!("{first}/{second}"))
}

/// The 400 for a cursor this api did not hand out.
pub fn bad_cursor() -> ApiError {
    ApiError::bad_query("cursor", "not a cursor returned by this api")
}

/// The two parts of a cursor made by [`encode_cursor_parts`]; [`bad_cursor`] otherwise.
pub fn decode_cursor_parts(cursor: &str) -> ApiResult<(String, String)> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad_cursor())?;
    let raw = String::from_utf8(raw).map_err(|_| bad_cursor())?;
    let (first, second) = raw.split_once('/').ok_or_else(bad_cursor)?;
    Ok((first.to_owned(), second.to_owned()))
}

/// An opaque cursor for the position after (created_at, id).
pub fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    encode_cursor_parts(created_at.timestamp_micros(), id)
}

/// The position a cursor stands for; 400 naming `cursor` when it is not one of ours.
pub fn decode_cursor(cursor: &str) -> ApiResult<(DateTime<Utc>, Uuid)> {
    let bad = bad_cursor;
    let (micros, id) = decode_cursor_parts(cursor)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    escalator_store::time::check_instant("cursor", at).map_err(|_| bad())?;
    Ok((at, Uuid::parse_str(&id).map_err(|_| bad())?))
}

/// Checks `limit` against 1..=max.
pub fn page_limit(limit: Option<u32>, max: u32) -> ApiResult<u32> {
    match limit {
        None => Ok(DEFAULT_LIMIT.min(max)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_query(
            "limit",
            format!("limit {n} is not between 1 and {max}"),
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/workflows", operation_id = "list_workflows", tag = "workflows",
    params(ListQuery),
    responses(
        (status = 200, description = "a page, oldest first", body = WorkflowPage),
        (status = 400, description = "bad query parameter", body = ErrorBody),
    ))]
/// `GET /api/v1/workflows`: filtered, oldest first, cursor-paginated.
pub async fn list(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<ListQuery>,
) -> ApiResult<Json<WorkflowPage>> {
    let limit = page_limit(q.limit, MAX_LIMIT)?;
    if let Some(assignee) = &q.assignee {
        escalator_store::logic::check_id("assignee", assignee).map_err(ApiError::bad_query_from)?;
    }
    let now = Utc::now();
    // One row more than asked tells whether another page exists (the store caps at 1000,
    // where a full page is taken to mean "maybe more").
    let fetch = (limit + 1).min(MAX_LIMIT);
    let filter = WorkflowFilter {
        status: q.status,
        assignee: q.assignee,
        sla_status: q.sla_status.map(|sla| (sla, now)),
        due_before: q
            .due_before
            .map(|t| escalator_store::time::check_instant("due_before", t))
            .transpose()
            .map_err(ApiError::bad_query_from)?,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
        limit: fetch,
    };
    let mut items = s.store.list_workflows(&filter).await?;
    let more = items.len() > limit as usize || (fetch == limit && items.len() == limit as usize);
    items.truncate(limit as usize);
    let next_cursor = if more {
        items.last().map(|w| encode_cursor(w.created_at, w.id))
    } else {
        None
    };
    Ok(Json(WorkflowPage {
        items: items
            .into_iter()
            .map(|w| WorkflowView::new(w, now))
            .collect(),
        next_cursor,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let at = DateTime::from_timestamp_micros(1_764_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        assert_eq!(decode_cursor(&encode_cursor(at, id)).unwrap(), (at, id));
        assert!(decode_cursor("nope!").is_err());
        assert!(decode_cursor(&URL_SAFE_NO_PAD.encode("1/zz")).is_err());
    }
}
