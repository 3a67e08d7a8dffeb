//! `/api/v1/workflows` and `/api/v1/audit`: create (idempotent on `external_id`), get, list with
//! filters and cursor pagination, transitions under optimistic concurrency, audit trails.

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use escalator_policy::{SlaStatus, Status};
use escalator_store::{
    AuditEntry, AuditReason, NewWorkflow, Transition, TransitionContext, Workflow, WorkflowFilter,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::AppState;
use crate::auth::Actor;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, OptionalJsonBody, PathParams, QueryParams, workflow_id};

/// Largest page of a list.
pub const MAX_LIMIT: u32 = 1000;
/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;

/// The body of `POST /api/v1/workflows`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
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
        }
    }
}

/// The workflow as JSON with its version as the ETag (for `If-Match`).
fn workflow_response(status: StatusCode, w: Workflow) -> Response {
    let etag = HeaderValue::from_str(&format!("\"{}\"", w.version)).ok();
    let mut res = (status, Json(WorkflowView::new(w, Utc::now()))).into_response();
    if let Some(etag) = etag {
        res.headers_mut().insert(header::ETAG, etag);
    }
    res
}

#[utoipa::path(post, path = "/api/v1/workflows", tag = "workflows",
    request_body = CreateWorkflow,
    responses(
        (status = 201, description = "created", body = WorkflowView),
        (status = 200, description = "the same body was created before: the existing workflow", body = WorkflowView),
        (status = 409, description = "external_id exists with a different body", body = ErrorBody),
        (status = 422, description = "invalid field", body = ErrorBody),
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
    let created = s.store.create_workflow(&new, Utc::now()).await?;
    let status = if created.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(workflow_response(status, created.workflow))
}

#[utoipa::path(get, path = "/api/v1/workflows/{id}", tag = "workflows",
    params(("id" = Uuid, Path, description = "workflow id")),
    responses(
        (status = 200, description = "the workflow; ETag is its version", body = WorkflowView),
        (status = 400, description = "not a UUID", body = ErrorBody),
        (status = 404, description = "unknown id", body = ErrorBody),
    ))]
/// `GET /api/v1/workflows/{id}`.
pub async fn get(
    State(s): State<AppState>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Response> {
    let id = workflow_id(&id)?;
    Ok(workflow_response(
        StatusCode::OK,
        s.store.get_workflow(id).await?,
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
    /// Only workflows due before this instant (RFC 3339).
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

/// An opaque cursor for the position after (created_at, id).
pub fn encode_cursor(created_at: DateTime<Utc>, id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}/{id}", created_at.timestamp_micros()))
}

/// The position a cursor stands for; 400 naming `cursor` when it is not one of ours.
pub fn decode_cursor(cursor: &str) -> ApiResult<(DateTime<Utc>, Uuid)> {
    let bad = || ApiError::bad_request("cursor", "not a cursor returned by this api");
    let raw = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let raw = String::from_utf8(raw).map_err(|_| bad())?;
    let (micros, id) = raw.split_once('/').ok_or_else(bad)?;
    let micros: i64 = micros.parse().map_err(|_| bad())?;
    let at = DateTime::from_timestamp_micros(micros).ok_or_else(bad)?;
    Ok((at, Uuid::parse_str(id).map_err(|_| bad())?))
}

/// Checks `limit` against 1..=max.
pub fn page_limit(limit: Option<u32>, max: u32) -> ApiResult<u32> {
    match limit {
        None => Ok(DEFAULT_LIMIT.min(max)),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::bad_request(
            "limit",
            format!("limit {n} is not between 1 and {max}"),
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/workflows", tag = "workflows",
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
    let now = Utc::now();
    // One row more than asked tells whether another page exists (the store caps at 1000,
    // where a full page is taken to mean "maybe more").
    let fetch = (limit + 1).min(MAX_LIMIT);
    let filter = WorkflowFilter {
        status: q.status,
        assignee: q.assignee,
        sla_status: q.sla_status.map(|sla| (sla, now)),
        due_before: q.due_before,
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

/// The body of `POST /api/v1/workflows/{id}/{action}`; every field is optional, and the
/// action-specific ones are refused on other actions.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionBody {
    /// Refuse with 412 unless the workflow is at this version (or use `If-Match`).
    pub expected_version: Option<i32>,
    /// Stored in the audit row.
    pub comment: Option<String>,
    /// reassign: the new assignee (required).
    pub to: Option<String>,
    /// advance: the new stage (required).
    pub stage: Option<String>,
    /// advance: the new stage's assignee (default: unchanged).
    pub assignee: Option<String>,
}

fn refuse_extra(action: &str, field: &'static str, present: bool) -> ApiResult<()> {
    if present {
        Err(ApiError::invalid(
            field,
            format!("{field} does not apply to {action}"),
        ))
    } else {
        Ok(())
    }
}

/// The transitions `POST /api/v1/workflows/{id}/{action}` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Stop the clock for good: the stage was approved or finished.
    Complete,
    /// Stop the clock for good: abandoned.
    Cancel,
    /// Pause the clock.
    Hold,
    /// Restart a held clock.
    Resume,
    /// Hand the workflow to `to`; the deadlines stay.
    Reassign,
    /// Move to `stage` (and optionally `assignee`): a new SLA cycle.
    Advance,
}

impl Action {
    /// The action a path segment names; 404 naming the known ones otherwise.
    pub fn parse(s: &str) -> ApiResult<Action> {
        Ok(match s {
            "complete" => Action::Complete,
            "cancel" => Action::Cancel,
            "hold" => Action::Hold,
            "resume" => Action::Resume,
            "reassign" => Action::Reassign,
            "advance" => Action::Advance,
            other => {
                return Err(ApiError::client(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!(
                        "no action {other:?}: expected complete, cancel, hold, resume, reassign or advance"
                    ),
                )
                .with_field("action"));
            }
        })
    }
}

/// The transition an action and body ask for, refusing fields that belong to other actions.
fn transition_of(action: Action, b: &TransitionBody) -> ApiResult<Transition> {
    let name = format!("{action:?}").to_lowercase();
    let required = |v: &Option<String>, field: &'static str| {
        v.clone()
            .ok_or_else(|| ApiError::invalid(field, format!("{name} needs {field}")))
    };
    if action != Action::Reassign {
        refuse_extra(&name, "to", b.to.is_some())?;
    }
    if action != Action::Advance {
        refuse_extra(&name, "stage", b.stage.is_some())?;
        refuse_extra(&name, "assignee", b.assignee.is_some())?;
    }
    Ok(match action {
        Action::Complete => Transition::Complete,
        Action::Cancel => Transition::Cancel,
        Action::Hold => Transition::Hold,
        Action::Resume => Transition::Resume,
        Action::Reassign => Transition::Reassign {
            to: required(&b.to, "to")?,
        },
        Action::Advance => Transition::Advance {
            stage: required(&b.stage, "stage")?,
            assignee: b.assignee.clone(),
        },
    })
}

/// The version an `If-Match` header names: `3`, `"3"` or `W/"3"`.
pub fn if_match(headers: &HeaderMap) -> ApiResult<Option<i32>> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || ApiError::bad_request("If-Match", "expected the workflow's version, e.g. \"3\"");
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s.strip_prefix("W/").unwrap_or(s).trim_matches('"');
    s.parse().map(Some).map_err(|_| bad())
}

#[utoipa::path(post, path = "/api/v1/workflows/{id}/{action}", tag = "workflows",
    params(
        ("id" = Uuid, Path, description = "workflow id"),
        ("action" = Action, Path, description = "the transition"),
        ("If-Match" = Option<String>, Header, description = "the version the change applies to, e.g. \"3\""),
    ),
    request_body(content = Option<TransitionBody>, description = "optional"),
    responses(
        (status = 200, description = "the workflow after the change", body = WorkflowView),
        (status = 404, description = "unknown workflow or action", body = ErrorBody),
        (status = 409, description = "not allowed from the current status", body = ErrorBody),
        (status = 412, description = "the workflow is not at the expected version", body = ErrorBody),
        (status = 422, description = "a field missing or not applicable to the action", body = ErrorBody),
    ))]
/// `POST /api/v1/workflows/{id}/{complete|cancel|hold|resume|reassign|advance}`.
pub async fn transition(
    State(s): State<AppState>,
    PathParams((id, action)): PathParams<(String, String)>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<TransitionBody>,
) -> ApiResult<Response> {
    let id = workflow_id(&id)?;
    let transition = transition_of(Action::parse(&action)?, &body)?;
    let expected_version = match (if_match(&headers)?, body.expected_version) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::bad_request(
                "expected_version",
                format!("expected_version {b} disagrees with If-Match {h}"),
            ));
        }
        (h, b) => h.or(b),
    };
    let ctx = TransitionContext {
        actor: actor.0,
        reason: AuditReason::Api,
        expected_version,
        comment: body.comment,
        now: Utc::now(),
    };
    let w = s.store.transition(id, &transition, &ctx).await?;
    Ok(workflow_response(StatusCode::OK, w))
}

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
pub async fn audit(
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
pub async fn audit_log(
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

    #[test]
    fn if_match_accepts_plain_quoted_and_weak_versions() {
        for v in ["3", "\"3\"", "W/\"3\""] {
            let mut h = HeaderMap::new();
            h.insert(header::IF_MATCH, HeaderValue::from_static(v));
            assert_eq!(if_match(&h).unwrap(), Some(3), "{v}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert!(if_match(&h).is_err());
    }

    #[test]
    fn actions_take_only_their_own_fields() {
        let b = TransitionBody {
            to: Some("x".into()),
            ..TransitionBody::default()
        };
        assert!(transition_of(Action::Complete, &b).is_err());
        assert!(transition_of(Action::Reassign, &b).is_ok());
        assert!(transition_of(Action::Advance, &TransitionBody::default()).is_err());
        assert!(Action::parse("explode").is_err());
    }
}
