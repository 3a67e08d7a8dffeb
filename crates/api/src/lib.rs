//! escalator's HTTP API (DESIGN §8): workflows and their transitions, the audit log, the
//! in-app inbox, ad-hoc checks, dead jobs, policies, calendars and users, health probes and
//! the fleet-wide Prometheus endpoint, behind optional bearer tokens. [`router`] is the whole
//! api; the binary only binds and serves it.

pub mod audit;
pub mod auth;
pub mod checks;
pub mod error;
pub mod extract;
pub mod health;
mod http_metrics;
pub mod jobs;
pub mod metrics;
pub mod notifications;
pub mod openapi;
pub mod policies;
pub mod transitions;
pub mod ui;
pub mod users;
pub mod workflows;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use escalator_jobs::Queues;
use escalator_store::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::{Actor, ApiToken, Scope, Tokens};
pub use error::{ApiError, ApiResult};

/// Request bodies larger than this are refused with 413: every body the api takes is small.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Requests running longer than this are answered 408 and abandoned, unless
/// [`AppState::with_request_timeout`] (`ESCALATOR_API_TIMEOUT`) says otherwise.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every handler needs. Cheap to clone: each field is a handle.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The job queues (checks are enqueued, depths read for readiness and metrics).
    pub queues: Queues,
    /// The accepted bearer tokens; empty means no authentication.
    pub tokens: Tokens,
    /// This process's metrics registry; None leaves the metrics endpoints answering 503
    /// (the recorder is process-global, so only the binary may install it).
    pub metrics: Option<PrometheusHandle>,
    /// The last time the fleet-wide gauges were read, shared by all scrapes.
    fleet: Arc<metrics::FleetCache>,
    /// The console overview's counts, as last read ([`ui::overview`]).
    pub(crate) overview: Arc<tokio::sync::Mutex<Option<ui::overview::CachedCounts>>>,
    /// Requests running longer are answered 408 and abandoned.
    pub request_timeout: Duration,
    /// The only hosts requests may name besides localhost (DNS rebinding): without tokens,
    /// all requests; with tokens, those of the data and console routes. None: any.
    pub(crate) local_only: Option<Arc<Vec<String>>>,
    /// The progress of each part running beside the api in this process (`escalator dev`: the
    /// worker, the beat), which `/healthz` then reports; none for the api alone.
    pub(crate) engine_health: Vec<(&'static str, escalator_runtime::serve::Health)>,
}

impl AppState {
    /// The state of an api over these dependencies.
    pub fn new(
        store: Store,
        queues: Queues,
        tokens: Tokens,
        metrics: Option<PrometheusHandle>,
    ) -> Self {
        AppState {
            store,
            queues,
            tokens,
            metrics,
            fleet: Arc::new(metrics::FleetCache::default()),
            overview: Arc::default(),
            request_timeout: REQUEST_TIMEOUT,
            local_only: None,
            engine_health: Vec::new(),
        }
    }

    /// The same state reporting, on `/healthz`, the progress of `part` running in this
    /// process (`escalator dev`'s worker and beat): a stalled one answered "ok" for as long as
    /// the api did.
    pub fn with_engine_health(
        mut self,
        part: &'static str,
        health: escalator_runtime::serve::Health,
    ) -> Self {
        self.engine_health.push((part, health));
        self
    }

    /// The same state answering only to `localhost`, `127.0.0.1`, `[::1]` and `also` (host
    /// names, lower case: a proxy or tunnel in front that keeps the public Host) while it has
    /// no tokens: for an api listening on loopback, which a web page could otherwise reach
    /// through DNS rebinding ([`auth::guard_unauthenticated`]).
    /// With tokens, the same holds for the data and console routes (`ESCALATOR_API_ALLOWED_HOSTS`
    /// given: a page reaching the api by DNS rebinding could use a token it knows).
    pub fn answering_only_to_localhost(mut self, also: Vec<String>) -> Self {
        self.local_only = Some(Arc::new(also));
        self
    }

    /// The same state with the Host check it needs ([`AppState::answering_only_to_localhost`]):
    /// without tokens on loopback always, and with any listener whenever `allowed`
    /// (`ESCALATOR_API_ALLOWED_HOSTS`) names hosts. `escalator api` and `escalator dev` alike.
    pub fn guarding_hosts(self, loopback: bool, allowed: Vec<String>) -> Self {
        if (self.tokens.is_empty() && loopback) || !allowed.is_empty() {
            self.answering_only_to_localhost(allowed)
        } else {
            self
        }
    }

    /// The same state with another request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }
}

/// The whole api. `/healthz`, `/readyz`, the metrics endpoints, the OpenAPI document and its
/// interactive explorer at `/docs` are open; every other `/api/v1` route goes through
/// [`auth::require_token`].
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// [`router`] with `extra` routes merged in, behind the same middleware (request ids, body
/// limit, timeout, panic handler) but no token check of their own.
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    let timeout = state.request_timeout;
    let v1 = Router::new()
        .route("/workflows", post(workflows::create).get(workflows::list))
        .route("/workflows/{id}", get(workflows::get))
        .route("/workflows/{id}/audit", get(audit::workflow_trail))
        .route("/workflows/{id}/{action}", post(transitions::transition))
        .route("/audit", get(audit::log))
        .route("/notifications", get(notifications::list))
        .route("/notifications/{id}/read", post(notifications::mark_read))
        .route("/checks", post(checks::create))
        .route("/checks/{id}", get(checks::get))
        .route("/jobs", get(jobs::list))
        .route(
            "/policies",
            get(policies::list).post(policies::create_version),
        )
        .route("/policies/{id}", get(policies::get))
        .route(
            "/calendars/{id}",
            get(policies::get_calendar).put(policies::put_calendar),
        )
        .route("/users", get(users::list))
        .route("/users/{id}", get(users::get).put(users::put))
        .route("/jobs/{queue}/{id}/retry", post(jobs::retry))
        // route_layer covers only the routes above: metrics and the OpenAPI document stay
        // open so Prometheus and API explorers need no token.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .route("/metrics/prometheus", get(metrics::render))
        .route("/openapi.json", get(openapi::document));
    Router::new()
        .nest("/api/v1", v1)
        .nest("/ui", ui::router(&state))
        .route(
            "/ui/",
            get(|| async { axum::response::Redirect::permanent("/ui") }),
        )
        .merge(openapi::explorer())
        .merge(extra)
        .route("/metrics", get(metrics::render))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard_unauthenticated,
        ))
        .with_state(state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::custom(on_panic))
                .layer(HandleErrorLayer::new(move |err| {
                    on_layer_error(err, timeout)
                }))
                .timeout(timeout),
        )
        .layer(axum::middleware::from_fn(http_metrics::record))
}

/// A handler that panicked: 500 in our error shape (the panic is a bug, logged with its
/// message) instead of a dropped connection.
fn on_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %message, "handler panicked");
    error::error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; the server log has the details",
        None,
    )
}

/// Errors of the middleware stack itself: the request timeout becomes a 408 in our shape.
async fn on_layer_error(err: tower::BoxError, timeout: Duration) -> Response {
    if err.is::<tower::timeout::error::Elapsed>() {
        return error::error_response(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            &format!(
                "the request took longer than {} s and was abandoned",
                timeout.as_secs_f64()
            ),
            None,
        );
    }
    tracing::error!(error = %err, "middleware failed");
    error::error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error; the server log has the details",
        None,
    )
}

/// The span of one request, carrying the request id so every log line of it can be found.
fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
}

async fn not_found() -> Response {
    error::error_response(StatusCode::NOT_FOUND, "not_found", "no such route", None)
}

async fn method_not_allowed() -> Response {
    error::error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method",
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn json(res: Response) -> (StatusCode, serde_json::Value) {
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn timeouts_and_panics_answer_in_the_error_shape() {
        let elapsed: tower::BoxError = Box::new(tower::timeout::error::Elapsed::new());
        let (status, body) = json(on_layer_error(elapsed, REQUEST_TIMEOUT).await).await;
        assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
        assert_eq!(body["error"]["code"], "timeout");
        let (status, body) = json(on_panic(Box::new("boom"))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body["error"]["code"], "internal");
        assert!(!body.to_string().contains("boom"));
    }
}
