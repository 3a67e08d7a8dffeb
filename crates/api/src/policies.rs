//! `/api/v1/policies` and `/api/v1/calendars`: versioned escalation policies and business-hours
//! calendars, validated by escalator-policy with the offending field named in a 422.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use escalator_policy::{Calendar, CalendarSpec, Policy, PolicyError, PolicySpec, Target};
use escalator_store::{PolicyRecord, StoreError};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{JsonBody, PathParams, QueryParams};

/// A validation failure of a spec: 422 naming the field under `prefix` (`spec.levels[0]...`).
fn invalid_spec(prefix: &str, e: PolicyError) -> ApiError {
    ApiError::invalid(format!("{prefix}.{}", e.field), e.message)
}

/// The calendar `id`, or a 422 naming `field` when it does not exist.
async fn require_calendar(s: &AppState, id: &str, field: &str) -> ApiResult<Calendar> {
    match s.store.get_calendar(id).await {
        Ok(calendar) => Ok(calendar),
        Err(StoreError::NotFound { .. }) => Err(ApiError::invalid(
            field,
            format!("calendar {id:?} not found"),
        )),
        Err(e) => Err(e.into()),
    }
}

/// 422 naming the level when a level escalates to a user who does not exist or is inactive:
/// every workflow reaching it would be handed to no one who reads it.
async fn require_target_users(s: &AppState, spec: &PolicySpec) -> ApiResult<()> {
    for (i, level) in spec.levels.iter().enumerate() {
        let Target::User(id) = &level.target else {
            continue;
        };
        let field = format!("spec.levels[{i}].target");
        match s.store.get_user(id).await {
            Ok(u) if u.active => {}
            Ok(_) => {
                return Err(ApiError::invalid(
                    field,
                    format!("user {id:?} is inactive: escalations to them would reach no one"),
                ));
            }
            Err(StoreError::NotFound { .. }) => {
                return Err(ApiError::invalid(
                    field,
                    format!(
                        "user {id:?} not found: create it first (PUT /api/v1/users/{id}), or escalate to \"manager\""
                    ),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A stored policy version.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// Policy id (stable across versions).
    pub id: String,
    /// Version number, 1 for the first.
    pub version: i32,
    /// Human-readable name.
    pub name: String,
    /// The validated spec.
    #[schema(value_type = Object)]
    pub spec: PolicySpec,
    /// When this version was created.
    pub created_at: DateTime<Utc>,
}

impl From<PolicyRecord> for PolicyView {
    fn from(r: PolicyRecord) -> Self {
        PolicyView {
            spec: r.policy.spec().clone(),
            id: r.id,
            version: r.version,
            name: r.name,
            created_at: r.created_at,
        }
    }
}

/// The newest version of every policy.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Policies {
    /// By id.
    pub items: Vec<PolicyView>,
}

#[utoipa::path(get, path = "/api/v1/policies", operation_id = "list_policies", tag = "policies",
    responses((status = 200, description = "the newest version of every policy", body = Policies)))]
/// `GET /api/v1/policies`.
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Policies>> {
    let items = s.store.list_policies().await?;
    Ok(Json(Policies {
        items: items.into_iter().map(PolicyView::from).collect(),
    }))
}

/// The query of `GET /api/v1/policies/{id}`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct VersionQuery {
    /// This version instead of the newest.
    #[param(minimum = 1)]
    pub version: Option<i32>,
}

#[utoipa::path(get, path = "/api/v1/policies/{id}", operation_id = "get_policy", tag = "policies",
    params(("id" = String, Path, description = "policy id"), VersionQuery),
    responses(
        (status = 200, description = "the policy version", body = PolicyView),
        (status = 404, description = "unknown policy or version", body = ErrorBody),
    ))]
/// `GET /api/v1/policies/{id}?version=`.
pub async fn get(
    State(s): State<AppState>,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<VersionQuery>,
) -> ApiResult<Json<PolicyView>> {
    crate::extract::path_id(&id)?;
    if let Some(v) = q.version.filter(|v| *v < 1) {
        return Err(ApiError::bad_query(
            "version",
            format!("{v} is no version: versions start at 1"),
        ));
    }
    let record = match q.version {
        Some(v) => s.store.get_policy(&id, v).await?,
        None => s.store.latest_policy(&id).await?,
    };
    Ok(Json(record.into()))
}

/// The body of `POST /api/v1/policies`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPolicyVersion {
    /// Policy id; a new id starts at version 1, an existing one gets its next version.
    pub id: String,
    /// Human-readable name.
    pub name: String,
    /// The escalation policy: `sla_seconds` (level 0, the assignee); `warning`: `{"kind":
    /// "before", "seconds": N}` or `{"kind": "percent", "percent": 1-99}`, per level; `levels`,
    /// the chain: `{"target": "manager" | "user:<id>", "sla_seconds": N}` each; `after_last`:
    /// `{"kind": "stop"}` or `{"kind": "repeat", "every_seconds": N ≥ 60}`; optional
    /// `calendar_id` (business hours) and `channels` (`email`, `sms`, `slack`, `webhook`).
    #[schema(value_type = Object, example = json!({
        "sla_seconds": 86400,
        "warning": {"kind": "before", "seconds": 7200},
        "levels": [
            {"target": "manager", "sla_seconds": 28800},
            {"target": "user:carol", "sla_seconds": 28800}
        ],
        "after_last": {"kind": "repeat", "every_seconds": 3600},
        "calendar_id": null
    }))]
    pub spec: PolicySpec,
}

#[utoipa::path(post, path = "/api/v1/policies", operation_id = "create_policy", tag = "policies",
    request_body = NewPolicyVersion,
    responses(
        (status = 201, description = "the new version (running workflows keep theirs)", body = PolicyView),
        (status = 200, description = "the latest version already has this name and spec: that version (a retried or repeated post makes no new one)", body = PolicyView),
        (status = 422, description = "invalid spec, unknown calendar, an SLA the calendar cannot reach within 1,000 years, or a level's user unknown or inactive; field names the value", body = ErrorBody),
    ))]
/// `POST /api/v1/policies`: stores the next version of a policy. Versions are immutable;
/// workflows stay on the version they were created with. Posting what the latest version
/// already holds answers it with 200 and stores nothing.
pub async fn create_version(
    State(s): State<AppState>,
    JsonBody(body): JsonBody<NewPolicyVersion>,
) -> ApiResult<(StatusCode, Json<PolicyView>)> {
    escalator_store::logic::check_new_id("id", &body.id)?;
    if body.name.trim().is_empty() {
        return Err(ApiError::invalid("name", "must not be empty"));
    }
    escalator_policy::check_targets(&body.spec).map_err(|e| invalid_spec("spec", e))?;
    let policy = Policy::new(body.spec).map_err(|e| invalid_spec("spec", e))?;
    // what the latest version already holds is answered before the checks against other
    // records: a sync job re-posting its unchanged policies got 422 once a `user:` target had
    // been deactivated, while the very version it posted stayed in force
    match s.store.latest_policy(&body.id).await {
        Ok(latest) if latest.name == body.name && latest.policy.spec() == policy.spec() => {
            return Ok((StatusCode::OK, Json(latest.into())));
        }
        Ok(_) | Err(StoreError::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(id) = &policy.spec().calendar_id {
        require_calendar(&s, id, "spec.calendar_id").await?;
    }
    require_target_users(&s, policy.spec()).await?;
    // whether its calendar reaches every SLA of it is checked inside the write, under the
    // calendar's lock (422 naming the level's `spec.….sla_seconds`)
    let (record, created) = s
        .store
        .create_policy_version_unless_same(&body.id, &body.name, &policy)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record.into())))
}

/// A calendar.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CalendarView {
    /// Calendar id, referenced by policies' `calendar_id`.
    pub id: String,
    /// `timezone`, `windows`, `holidays`.
    #[schema(value_type = Object)]
    pub spec: CalendarSpec,
}

#[utoipa::path(get, path = "/api/v1/calendars/{id}", operation_id = "get_calendar", tag = "calendars",
    params(("id" = String, Path, description = "calendar id")),
    responses(
        (status = 200, description = "the calendar", body = CalendarView),
        (status = 404, description = "unknown calendar", body = ErrorBody),
    ))]
/// `GET /api/v1/calendars/{id}`.
pub async fn get_calendar(
    State(s): State<AppState>,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<CalendarView>> {
    crate::extract::path_id(&id)?;
    let calendar = s.store.get_calendar(&id).await?;
    Ok(Json(CalendarView {
        spec: calendar.spec().clone(),
        id,
    }))
}

#[utoipa::path(put, path = "/api/v1/calendars/{id}", operation_id = "put_calendar", tag = "calendars",
    params(("id" = String, Path, description = "calendar id")),
    request_body(content = Object, description = "`timezone` (IANA), `windows` [{day, start, end}], `holidays` [date]"),
    responses(
        (status = 200, description = "created or replaced", body = CalendarView),
        (status = 422, description = "invalid calendar (e.g. unknown timezone), or too little working time for an SLA of a policy measured on it; field names the value", body = ErrorBody),
    ))]
/// `PUT /api/v1/calendars/{id}`: creates or replaces a calendar.
pub async fn put_calendar(
    State(s): State<AppState>,
    PathParams(id): PathParams<String>,
    JsonBody(spec): JsonBody<CalendarSpec>,
) -> ApiResult<Json<CalendarView>> {
    crate::extract::path_id(&id)?;
    let calendar = Calendar::new(spec).map_err(|e| ApiError::invalid(e.field, e.message))?;
    // a calendar with less working time must still reach every SLA measured on it, or the
    // workflows that start a level on it would wait for ever: the write checks it against the
    // policies on it, under the calendar's lock (422 naming `windows`)
    s.store.put_calendar(&id, &calendar).await?;
    Ok(Json(CalendarView {
        spec: calendar.spec().clone(),
        id,
    }))
}
