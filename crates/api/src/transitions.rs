//! `POST /api/v1/workflows/{id}/{action}`: complete, cancel, hold, resume, reassign and advance
//! under optimistic concurrency (`expected_version` or `If-Match`; 412 when stale).

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use chrono::Utc;
use escalator_store::{AuditReason, Transition, TransitionContext};
use serde::Deserialize;

use crate::AppState;
use crate::auth::Actor;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{OptionalJsonBody, PathParams, workflow_named};
use crate::workflows::{WorkflowView, workflow_response};

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

/// The versions an `If-Match` header names: `3`, `"3"` or `W/"3"`, or a list of them (`"3",
/// "4"`, as HTTP allows: any of them); `*` (any version of a workflow that exists, as HTTP
/// defines it) names none. `*` and lists were refused with 400.
pub fn if_match(headers: &HeaderMap) -> ApiResult<Option<Vec<i32>>> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            "If-Match",
            "expected the workflow's version, e.g. \"3\" (a version, a list of them, or *)",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s == "*" {
        return Ok(None);
    }
    let versions = s
        .split(',')
        .map(|tag| {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            let bare = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(tag);
            bare.parse::<i32>().map_err(|_| bad())
        })
        .collect::<ApiResult<Vec<i32>>>()?;
    Ok(Some(versions))
}

/// The one version a transition is to find: the body's `expected_version`, or the header's
/// (of a list, the one `found` — the workflow as the path's lookup read it — is at: the
/// store's conditional write still refuses it if it moves on meanwhile). None: any version.
/// Under an idempotency key (`keyed`) a list the workflow has moved past is left to the
/// store, which answers a replay of the request before it compares versions (and refuses the
/// listed one otherwise, as here).
fn expected_version(
    found: &escalator_store::Workflow,
    header: Option<Vec<i32>>,
    body: Option<i32>,
    keyed: bool,
) -> ApiResult<Option<i32>> {
    let Some(listed) = header else {
        return Ok(body);
    };
    if let Some(b) = body {
        if !listed.contains(&b) {
            return Err(ApiError::bad_request(
                "expected_version",
                format!("expected_version {b} disagrees with If-Match {listed:?}"),
            ));
        }
        return Ok(Some(b));
    }
    if let [one] = listed[..] {
        return Ok(Some(one));
    }
    let (id, now) = (found.id, found.version);
    if listed.contains(&now) {
        Ok(Some(now))
    } else if keyed {
        Ok(listed.first().copied())
    } else {
        Err(ApiError::client(
            StatusCode::PRECONDITION_FAILED,
            "version_conflict",
            format!("workflow {id} is at version {now}, none of {listed:?}"),
        )
        .with_field("If-Match"))
    }
}

/// The `Idempotency-Key` header: the caller's name for this request, 1 to 200 visible
/// characters; 400 naming the header otherwise.
fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    const NAME: &str = "Idempotency-Key";
    let Some(raw) = headers.get(NAME) else {
        return Ok(None);
    };
    let key = raw
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 200 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            ApiError::bad_request(NAME, "must be 1 to 200 visible ASCII characters, no spaces")
        })?;
    Ok(Some(key.to_owned()))
}

#[utoipa::path(post, path = "/api/v1/workflows/{id}/{action}", operation_id = "transition_workflow", tag = "workflows",
    params(
        ("id" = String, Path, description = "the workflow's id, or its external_id (percent-encoded)"),
        ("action" = Action, Path, description = "the transition"),
        ("If-Match" = Option<String>, Header, description = "the version the change applies to, e.g. \"3\", or a list of them (any); * or none: any"),
        ("Idempotency-Key" = Option<String>, Header, description = "your name for this request (1 to 200 visible ASCII characters): sent again with the same request on the same workflow — a retry whose answer was lost — it is answered with the workflow as it is, and nothing is applied twice; 422 naming it on a different request"),
    ),
    request_body(content = Option<TransitionBody>, description = "optional"),
    responses(
        (status = 200, description = "the workflow after the change", body = WorkflowView, headers(("ETag" = String, description = "the workflow\'s version, quoted: send it back as If-Match"))),
        (status = 404, description = "unknown workflow or action", body = ErrorBody),
        (status = 409, description = "not allowed from the current status", body = ErrorBody),
        (status = 412, description = "the workflow is not at the expected version", body = ErrorBody),
        (status = 400, description = "a malformed If-Match or Idempotency-Key", body = ErrorBody),
        (status = 422, description = "a field missing or not applicable to the action, or an Idempotency-Key used for another request", body = ErrorBody),
    ))]
/// `POST /api/v1/workflows/{id}/{complete|cancel|hold|resume|reassign|advance}`.
pub async fn transition(
    State(s): State<AppState>,
    PathParams((id, action)): PathParams<(String, String)>,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    OptionalJsonBody(body): OptionalJsonBody<TransitionBody>,
) -> ApiResult<Response> {
    let found = workflow_named(&s.store, &id).await?;
    let id = found.id;
    let transition = transition_of(Action::parse(&action)?, &body)?;
    let from_header = if_match(&headers)?;
    let header_named = from_header.is_some();
    let key = idempotency_key(&headers)?;
    let expected_version =
        expected_version(&found, from_header, body.expected_version, key.is_some())?;
    let ctx = TransitionContext {
        actor: actor.0,
        reason: AuditReason::Api,
        expected_version,
        comment: body.comment,
        now: Utc::now(),
        idempotency_key: key,
    };
    let w = match s.store.transition(id, &transition, &ctx).await {
        // a stale version named by the header is the header's fault, not a body field's
        Err(e @ escalator_store::StoreError::VersionConflict { .. })
            if header_named && body.expected_version.is_none() =>
        {
            return Err(ApiError::from(e).with_field("If-Match"));
        }
        done => done?,
    };
    Ok(workflow_response(StatusCode::OK, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn if_match_accepts_plain_quoted_and_weak_versions() {
        for v in ["3", "\"3\"", "W/\"3\""] {
            let mut h = HeaderMap::new();
            h.insert(header::IF_MATCH, HeaderValue::from_static(v));
            assert_eq!(if_match(&h).unwrap(), Some(vec![3]), "{v}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::IF_MATCH, HeaderValue::from_static("*"));
        assert_eq!(if_match(&h).unwrap(), None);
        h.insert(
            header::IF_MATCH,
            HeaderValue::from_static("\"3\", W/\"4\",5"),
        );
        assert_eq!(if_match(&h).unwrap(), Some(vec![3, 4, 5]));
        for bad in ["\"3\", \"four\"", "three", "", "\"3"] {
            h.insert(header::IF_MATCH, HeaderValue::from_static(bad));
            assert!(if_match(&h).is_err(), "{bad}");
        }
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
