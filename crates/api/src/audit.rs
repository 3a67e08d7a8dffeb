//! `/api/v1/workflows/{id}/audit` and `/api/v1/audit`: the append-only audit trail, per
//! workflow and globally.

use axum::Json;
use axum::extract::State;
use escalator_store::{AuditEntry, AuditPosition, TrailPage};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{PathParams, QueryParams, workflow_named};
use crate::workflows::{
    MAX_LIMIT, bad_cursor, decode_cursor_parts, encode_cursor_parts, page_limit,
};

/// Audit rows.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Oldest first (the global log: in commit order).
    pub items: Vec<AuditEntry>,
    /// The position after this page's last row, to pass as `cursor`. The global log: absent
    /// when the page is empty (nothing more yet: ask again later with the same cursor). A
    /// workflow's trail: present only when the page is full (there may be more).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// An opaque cursor for a position in the global log.
fn encode_cursor(p: AuditPosition) -> String {
    encode_cursor_parts(p.xact, p.id)
}

/// The position a cursor stands for; 400 naming `cursor` when it is not one of ours.
fn decode_cursor(cursor: &str) -> ApiResult<AuditPosition> {
    let (xact, id) = decode_cursor_parts(cursor)?;
    let number = |s: String| {
        s.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(bad_cursor)
    };
    Ok(AuditPosition {
        xact: number(xact)?,
        id: number(id)?,
    })
}

/// The query of `GET /api/v1/workflows/{id}/audit`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TrailQuery {
    /// Only rows after this position (`next_cursor` of the previous page).
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 1000).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/workflows/{id}/audit", operation_id = "list_workflow_audit", tag = "audit",
    params(("id" = String, Path, description = "the workflow's id, or its external_id (percent-encoded)"), TrailQuery),
    responses(
        (status = 200, description = "the trail, oldest first, a page at a time", body = AuditPage),
        (status = 400, description = "bad query parameter", body = ErrorBody),
        (status = 404, description = "unknown workflow", body = ErrorBody),
    ))]
/// `GET /api/v1/workflows/{id}/audit`: the workflow's trail, oldest first, up to 1,000 rows a
/// page. It answered the whole trail at once, which a repeating policy grows by a row a minute
/// on a workflow nobody acts on.
pub async fn workflow_trail(
    State(s): State<AppState>,
    PathParams(id): PathParams<String>,
    QueryParams(q): QueryParams<TrailQuery>,
) -> ApiResult<Json<AuditPage>> {
    // 404 for an unknown workflow rather than an empty trail.
    let id = workflow_named(&s.store, &id).await?.id;
    let limit = match q.limit {
        None => MAX_LIMIT,
        given => page_limit(given, MAX_LIMIT)?,
    };
    let after = match q.cursor.as_deref() {
        Some(c) => decode_cursor(c)?.id,
        None => 0,
    };
    let items = s
        .store
        .workflow_audit_page(id, TrailPage::After(after), limit)
        .await?;
    let full = items.len() >= limit as usize;
    let next_cursor = items
        .last()
        .filter(|_| full)
        .map(|a| encode_cursor(AuditPosition { xact: 0, id: a.id }));
    Ok(Json(AuditPage { items, next_cursor }))
}

/// The query of `GET /api/v1/audit`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only rows after this position (`next_cursor` of the previous page).
    pub cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/audit", operation_id = "list_audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "a page of the global log, oldest first", body = AuditPage),
        (status = 400, description = "bad query parameter", body = ErrorBody),
    ))]
/// `GET /api/v1/audit`: the global log in commit order, cursor-paged. A row appears only once
/// no row can commit before it any more, so a reader following `next_cursor` sees every row
/// exactly once, however writers interleave.
pub async fn log(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<AuditQuery>,
) -> ApiResult<Json<AuditPage>> {
    let limit = page_limit(q.limit, MAX_LIMIT)?;
    let after = q.cursor.as_deref().map(decode_cursor).transpose()?;
    let (items, last) = s.store.list_audit(after, limit).await?;
    Ok(Json(AuditPage {
        items,
        next_cursor: last.map(encode_cursor),
    }))
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let p = AuditPosition { xact: 771, id: 42 };
        assert_eq!(decode_cursor(&encode_cursor(p)).unwrap(), p);
        for bad in [
            "nope!",
            "",
            &URL_SAFE_NO_PAD.encode("7"),
            &URL_SAFE_NO_PAD.encode("-1/2"),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
