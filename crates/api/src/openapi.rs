//! The OpenAPI 3.1 document of the api, generated from the handlers' annotations and served at
//! `/api/v1/openapi.json`, so clients and fuzzers (schemathesis) read the same contract the
//! router implements.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::{
    audit, checks, error, health, jobs, metrics, notifications, policies, transitions, users,
    workflows,
};

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "escalator",
        description = "Workflow SLA reminders and escalations. Errors are \
            {\"error\": {\"code\", \"message\", \"field\"}}; with tokens configured, /api/v1 \
            needs `Authorization: Bearer <token>` (read scope for GET, admin for the rest)."
    ),
    paths(
        workflows::create,
        workflows::list,
        workflows::get,
        transitions::transition,
        audit::workflow_trail,
        audit::log,
        notifications::list,
        notifications::mark_read,
        checks::create,
        checks::get,
        jobs::list,
        jobs::retry,
        policies::list,
        policies::get,
        policies::create_version,
        policies::get_calendar,
        policies::put_calendar,
        users::list,
        users::get,
        users::put,
        health::healthz,
        health::readyz,
        metrics::render,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

/// Declares the bearer scheme the `security` requirement refers to.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Swagger UI at `/docs`, reading `/api/v1/openapi.json`. Its assets are compiled into the
/// binary, so the explorer works on a machine without internet access.
pub fn explorer<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    utoipa_swagger_ui::SwaggerUi::new("/docs")
        .config(
            utoipa_swagger_ui::Config::new(["/api/v1/openapi.json"]).persist_authorization(true),
        )
        .into()
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
