//! `/api/v1/notifications`: a recipient's in-app inbox, and marking a notification read.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use escalator_store::Notification;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{OptionalJsonBody, PathParams, QueryParams, numeric_id};
use crate::workflows::{MAX_LIMIT, page_limit};

/// The query of `GET /api/v1/notifications`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct InboxQuery {
    /// The user whose inbox to read (required).
    // Optional in the type so that a missing one gets the api's own 400 naming it.
    #[param(required = true, min_length = 1, pattern = r"\S")]
    pub recipient: Option<String>,
    /// Only notifications not yet read.
    #[serde(default)]
    pub unread: bool,
    /// How many, newest first: 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only notifications older than this id (`next_before` of the previous page).
    #[param(minimum = 1)]
    pub before: Option<i64>,
}

/// An inbox page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Inbox {
    /// Newest first.
    pub items: Vec<Notification>,
    /// Pass as `before` for the next (older) page; null when this page is the last.
    pub next_before: Option<i64>,
}

#[utoipa::path(get, path = "/api/v1/notifications", operation_id = "list_notifications", tag = "inbox",
    params(InboxQuery),
    responses(
        (status = 200, description = "newest first", body = Inbox),
        (status = 400, description = "recipient missing or bad parameter", body = ErrorBody),
    ))]
/// `GET /api/v1/notifications?recipient=&unread=&limit=&before=`.
pub async fn list(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<InboxQuery>,
) -> ApiResult<Json<Inbox>> {
    let recipient = q
        .recipient
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| ApiError::bad_query("recipient", "recipient is required"))?;
    escalator_store::logic::check_id("recipient", &recipient).map_err(ApiError::bad_query_from)?;
    let limit = page_limit(q.limit, MAX_LIMIT)?;
    if q.before.is_some_and(|b| b < 1) {
        return Err(ApiError::bad_query(
            "before",
            "before must be a notification id (1 or more)",
        ));
    }
    let items = s.store.inbox(&recipient, q.unread, q.before, limit).await?;
    let next_before = (items.len() == limit as usize)
        .then(|| items.last().map(|n| n.id))
        .flatten();
    Ok(Json(Inbox { items, next_before }))
}

/// The answer to marking a notification read.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MarkedRead {
    /// The notification.
    pub id: i64,
    /// False when it had been read before (the call is idempotent).
    pub newly_read: bool,
}

/// An empty request body: `{}`, or none at all.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoBody {}

#[utoipa::path(post, path = "/api/v1/notifications/{id}/read", operation_id = "mark_notification_read", tag = "inbox",
    params(("id" = i64, Path, description = "notification id", minimum = 1)),
    responses(
        (status = 200, description = "read (idempotent)", body = MarkedRead),
        (status = 400, description = "not a positive integer", body = ErrorBody),
        (status = 404, description = "unknown id", body = ErrorBody),
        (status = 413, description = "the body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "a body that is not application/json", body = ErrorBody),
        (status = 422, description = "a body with fields (it takes none)", body = ErrorBody),
    ))]
/// `POST /api/v1/notifications/{id}/read`: idempotent; 404 for an unknown id. It takes no
/// body; one with fields is refused (422), as unknown fields are everywhere (it was ignored).
pub async fn mark_read(
    State(s): State<AppState>,
    PathParams(id): PathParams<String>,
    OptionalJsonBody(_): OptionalJsonBody<NoBody>,
) -> ApiResult<Json<MarkedRead>> {
    let id = numeric_id(&id)?;
    let newly_read = s.store.mark_notification_read(id, Utc::now()).await?;
    Ok(Json(MarkedRead { id, newly_read }))
}
