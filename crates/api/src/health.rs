//! `/healthz` (the process serves requests) and `/readyz` (the database and the queue answer;
//! the queue optionally): what Kubernetes probes and load balancers ask.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use serde::Deserialize;

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::QueryParams;

/// What a probe bounded by [`PROBE_TIMEOUT`] failed with, if it failed.
fn failure<T, E: std::error::Error + 'static>(
    probe: Result<Result<T, E>, tokio::time::error::Elapsed>,
) -> Option<String> {
    match probe {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(crate::error::chain(&e)),
        Err(_) => Some("timed out".to_owned()),
    }
}

/// How long a readiness probe waits for each dependency.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations",
    responses(
        (status = 200, description = "the process answers (and, in escalator dev, its worker and beat make progress)", body = Object),
        (status = 503, description = "escalator dev only: its worker and beat made no progress for too long", body = Object),
    ))]
/// `GET /healthz`: 200 while the process answers. The api alone has no background loop whose
/// progress could stall, so answering is the liveness signal; in `escalator dev` it also
/// reports the progress of the worker and beat running beside it.
pub async fn healthz(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let mut worst = escalator_runtime::serve::Liveness::Ok;
    let mut parts = serde_json::Map::new();
    for (part, health) in &s.engine_health {
        let (liveness, silent) = health.liveness();
        // the worst part speaks for the process: stalled over stopping over ok
        worst = worst.max(liveness);
        parts.insert((*part).to_owned(), Value::String(liveness.describe(silent)));
    }
    let status = worst.status();
    let mut body = json!({ "status": worst.as_str() });
    if !parts.is_empty() {
        body["parts"] = Value::Object(parts);
    }
    (status, Json(body))
}

/// The query of `GET /readyz`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ReadyQuery {
    /// `queue`: a queue that does not answer is reported (`"status": "degraded"`) but does not
    /// make the answer 503. What Kubernetes asks: every replica shares the one Redis, so a
    /// Redis failover would otherwise take them all out of the Service at once, although
    /// everything but enqueueing a check works without it.
    pub optional: Option<String>,
}

#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations",
    params(ReadyQuery),
    responses(
        (status = 200, description = "database and queue reachable, or only an optional one failed (status degraded)", body = Object),
        (status = 400, description = "optional names something other than queue", body = ErrorBody),
        (status = 503, description = "a dependency failed; error.field names it", body = ErrorBody),
    ))]
/// `GET /readyz[?optional=queue]`: 200 when the database and the queue answer within
/// [`PROBE_TIMEOUT`], else 503 with the JSON error naming the dependency that failed. With
/// `optional=queue`, a queue failure alone answers 200 with `"status": "degraded"`.
pub async fn readyz(
    State(s): State<AppState>,
    QueryParams(q): QueryParams<ReadyQuery>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let queue_optional = match q.optional.as_deref() {
        None => false,
        Some("queue") => true,
        Some(other) => {
            return Err(ApiError::bad_query(
                "optional",
                format!(
                    "optional must be \"queue\" (the only dependency the api can serve without), not {other:?}"
                ),
            ));
        }
    };
    let (db, queue) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, s.store.ping()),
        tokio::time::timeout(PROBE_TIMEOUT, s.queues.stats()),
    );
    // each dependency: (name, its failure, whether that failure leaves the api ready)
    let dependencies = [
        ("database", failure(db), false),
        ("queue", failure(queue), queue_optional),
    ];
    let mut checks = serde_json::Map::new();
    let (mut failed, mut degraded) = (Vec::new(), false);
    for (name, error, optional) in &dependencies {
        checks.insert(
            (*name).into(),
            json!(if error.is_some() { "failed" } else { "ok" }),
        );
        if let Some(e) = error {
            tracing::warn!(dependency = name, error = %e, "not ready");
            if *optional {
                degraded = true;
            } else {
                failed.push(*name);
            }
        }
    }
    if failed.is_empty() {
        let status = if degraded { "degraded" } else { "ready" };
        return Ok((
            StatusCode::OK,
            Json(json!({ "status": status, "checks": checks })),
        ));
    }
    let field = failed.join(",");
    Ok((
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": {
                "code": "not_ready",
                "message": format!("not ready: {} unreachable", failed.join(" and ")),
                "field": field,
            },
            "checks": checks,
        })),
    ))
}
