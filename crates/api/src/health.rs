//! `/healthz` (the process serves requests) and `/readyz` (the database and the queue answer):
//! what Kubernetes probes and load balancers ask.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ErrorBody;

/// How long a readiness probe waits for each dependency.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "the process answers", body = Object)))]
/// `GET /healthz`: 200 while the process answers. The api has no background loop whose
/// progress could stall, so answering is the liveness signal.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "database and queue reachable", body = Object),
        (status = 503, description = "a dependency failed; error.field names it", body = ErrorBody),
    ))]
/// `GET /readyz`: 200 when the database and the queue answer within [`PROBE_TIMEOUT`], else
/// 503 with the JSON error naming the dependency that failed.
pub async fn readyz(State(s): State<AppState>) -> (StatusCode, Json<Value>) {
    let (db, queue) = tokio::join!(
        tokio::time::timeout(PROBE_TIMEOUT, s.store.ping()),
        tokio::time::timeout(PROBE_TIMEOUT, s.queues.stats()),
    );
    let db = match db {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(crate::error::chain(&e)),
        Err(_) => Some("timed out".to_owned()),
    };
    let queue = match queue {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(crate::error::chain(&e)),
        Err(_) => Some("timed out".to_owned()),
    };
    let state = |e: &Option<String>| if e.is_some() { "failed" } else { "ok" };
    let checks = json!({ "database": state(&db), "queue": state(&queue) });
    let failed: Vec<&str> = [("database", &db), ("queue", &queue)]
        .into_iter()
        .filter_map(|(name, e)| e.as_ref().map(|_| name))
        .collect();
    if failed.is_empty() {
        return (
            StatusCode::OK,
            Json(json!({ "status": "ready", "checks": checks })),
        );
    }
    for (name, e) in [("database", &db), ("queue", &queue)] {
        if let Some(e) = e {
            tracing::warn!(dependency = name, error = %e, "not ready");
        }
    }
    let field = failed.join(",");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({
            "error": {
                "code": "not_ready",
                "message": format!("not ready: {} unreachable", failed.join(" and ")),
                "field": field,
            },
            "checks": checks,
        })),
    )
}
