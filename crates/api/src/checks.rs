//! `/api/v1/checks`: enqueue an ad-hoc check run (all due workflows, or one) and follow it,
//! or preview one (`dry_run`): the decisions a check would take, computed in the request and
//! written nowhere.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use escalator_jobs::{CheckWorkflows, Scope};
use escalator_policy::Decision;
use escalator_store::{CheckRun, NewCheckRun, StoreError};
use escalator_worker::{Engine, EngineConfig, EngineError, PolicyCache};
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
    /// Check only the workflow with this external id (instead of `workflow_id`), as
    /// `escalator enqueue check --workflow` takes either: scripts that know only their own ids
    /// looked the uuid up first.
    pub external_id: Option<String>,
    /// Evaluate the SLA clock at this instant (default: now). A real check may not be dated
    /// more than a minute ahead; a dry run may.
    pub as_of: Option<DateTime<Utc>>,
    /// Preview only: answer 200 with the decisions a check would take, write nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Dry runs only: evaluate at most this many due workflows (1–10,000; default 1,000).
    #[schema(minimum = 1, maximum = 10_000)]
    pub limit: Option<u32>,
}

/// The most workflows a dry run evaluates in one request.
pub const DRY_RUN_MAX: u32 = 10_000;

/// What a check would do: the answer to `POST /api/v1/checks` with `dry_run: true`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DryRunReport {
    /// The evaluation instant.
    pub as_of: DateTime<Utc>,
    /// "all" or "workflow:<uuid>".
    pub scope: String,
    /// Workflows due at `as_of`.
    pub due: i64,
    /// How many of them were evaluated (at most `limit`).
    pub evaluated: u64,
    /// Reminders that would be sent.
    pub remind: u64,
    /// Escalations that would happen.
    pub escalate: u64,
    /// Workflows at the end of their chain that would be marked so.
    pub exhausted: u64,
    /// Renotifications of exhausted workflows.
    pub renotify: u64,
    /// Due workflows with nothing to do yet.
    pub nothing: u64,
    /// Workflows whose policy or calendar cannot be read.
    pub unreadable: u64,
    /// The workflows that would change (at most 100), earliest deadline first.
    pub items: Vec<DryRunItem>,
}

/// One workflow a check would change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DryRunItem {
    /// The workflow.
    pub workflow_id: Uuid,
    /// Its external id.
    pub external_id: String,
    /// Its title.
    pub title: String,
    /// remind, escalate, exhausted, renotify or unreadable.
    pub action: String,
    /// The current assignee.
    pub assignee: String,
    /// Who it would go to (escalations).
    pub target: Option<String>,
    /// The level after the action.
    pub level: Option<u32>,
    /// The current deadline.
    pub due_at: DateTime<Utc>,
}

/// The most items a dry-run report lists.
const DRY_RUN_ITEMS: usize = 100;

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

#[utoipa::path(post, path = "/api/v1/checks", operation_id = "create_check", tag = "checks",
    request_body(content = Option<CreateCheck>, description = "optional: empty checks every due workflow now"),
    responses(
        (status = 202, description = "recorded and queued", body = CheckQueued),
        (status = 200, description = "dry_run: what the check would do; nothing was written", body = DryRunReport),
        (status = 422, description = "unknown workflow_id or external_id (or both given), limit out of range, or limit without dry_run", body = ErrorBody),
        (status = 503, description = "the queue is unavailable", body = ErrorBody),
    ))]
/// `POST /api/v1/checks`: records a run and enqueues its planner job → 202; with `dry_run`,
/// evaluates the due workflows in the request and answers 200 with the report.
pub async fn create(
    State(s): State<AppState>,
    OptionalJsonBody(body): OptionalJsonBody<CreateCheck>,
) -> ApiResult<Response> {
    let scope = resolve_scope(&s, body.workflow_id, body.external_id.as_deref()).await?;
    let now = Utc::now();
    let as_of = match body.as_of {
        Some(t) => escalator_store::time::check_instant("as_of", t)?,
        None => now,
    };
    if body.dry_run {
        let limit = body.limit.unwrap_or(1_000);
        if !(1..=DRY_RUN_MAX).contains(&limit) {
            return Err(ApiError::invalid(
                "limit",
                format!("must be between 1 and {DRY_RUN_MAX}"),
            ));
        }
        return Ok(Json(dry_run(&s, scope, as_of, limit).await?).into_response());
    }
    if body.limit.is_some() {
        return Err(ApiError::invalid(
            "limit",
            "only a dry run takes a limit: a real check covers every due workflow",
        ));
    }
    Ok(enqueue(&s, scope, as_of, now).await?.into_response())
}

/// The scope of a check; an unknown workflow is the caller's error.
async fn resolve_scope(
    s: &AppState,
    workflow_id: Option<Uuid>,
    external_id: Option<&str>,
) -> ApiResult<Scope> {
    let (found, field, named) = match (workflow_id, external_id) {
        (None, None) => return Ok(Scope::All),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "external_id",
                "name the workflow by workflow_id or by external_id, not both",
            ));
        }
        (Some(id), None) => (
            s.store.get_workflow(id).await,
            "workflow_id",
            id.to_string(),
        ),
        (None, Some(external)) => {
            escalator_store::logic::check_id("external_id", external)?;
            let found = s.store.get_workflow_by_external_id(external).await;
            (found, "external_id", format!("{external:?}"))
        }
    };
    match found {
        Ok(w) => Ok(Scope::Workflow(w.id)),
        Err(StoreError::NotFound { .. }) => Err(ApiError::invalid(
            field,
            format!("workflow {named} not found"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// What a check of `scope` at `as_of` would do, writing nothing (the console's preview too).
pub async fn dry_run(
    s: &AppState,
    scope: Scope,
    as_of: DateTime<Utc>,
    limit: u32,
) -> ApiResult<DryRunReport> {
    let engine = Engine {
        store: s.store.clone(),
        queues: s.queues.clone(),
        config: EngineConfig::default(),
        policies: PolicyCache::default(),
    };
    let found = engine
        .dry_run(scope, as_of, limit)
        .await
        .map_err(|e| match e {
            EngineError::Store(e) => ApiError::from(e),
            other => ApiError::Internal(Box::new(other)),
        })?;
    let mut report = DryRunReport {
        as_of,
        scope: scope.to_string(),
        due: found.total_due,
        evaluated: found.items.len() as u64,
        remind: 0,
        escalate: 0,
        exhausted: 0,
        renotify: 0,
        nothing: 0,
        unreadable: 0,
        items: Vec::new(),
    };
    for (w, decision) in found.items {
        let (action, target, level) = match decision {
            None => {
                report.unreadable += 1;
                ("unreadable", None, None)
            }
            Some(Decision::Nothing) => {
                report.nothing += 1;
                continue;
            }
            Some(Decision::Remind { level }) => {
                report.remind += 1;
                ("remind", None, Some(level))
            }
            Some(Decision::Escalate { level, target, .. }) => {
                report.escalate += 1;
                ("escalate", Some(target), Some(level))
            }
            Some(Decision::Exhausted { level, .. }) => {
                report.exhausted += 1;
                ("exhausted", None, Some(level))
            }
            Some(Decision::Renotify { level, .. }) => {
                report.renotify += 1;
                ("renotify", None, Some(level))
            }
        };
        if report.items.len() < DRY_RUN_ITEMS {
            report.items.push(DryRunItem {
                workflow_id: w.id,
                external_id: w.external_id,
                title: w.title,
                action: action.into(),
                assignee: w.assignee,
                target,
                level,
                due_at: w.due_at,
            });
        }
    }
    Ok(report)
}

/// Records a run and pushes its planner job.
pub async fn enqueue(
    s: &AppState,
    scope: Scope,
    as_of: DateTime<Utc>,
    now: DateTime<Utc>,
) -> ApiResult<(StatusCode, Json<CheckQueued>)> {
    // here, not in each caller: the console's form enqueued a check dated 2099 (every
    // workflow escalated, new deadlines 73 years out) because only the api's handler looked
    escalator_store::time::check_instant("as_of", as_of)?;
    escalator_store::logic::check_real_as_of(as_of, now)?;
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
    s.queues.push_check_or_fail_run(&s.store, &job).await?;
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

#[utoipa::path(get, path = "/api/v1/checks/{id}", operation_id = "get_check", tag = "checks",
    params(("id" = i64, Path, description = "check run id", minimum = 1)),
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
