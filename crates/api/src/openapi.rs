//! The OpenAPI 3.1 document of the api, generated from the handlers' annotations and served at
//! `/api/v1/openapi.json`, so clients and fuzzers (schemathesis) read the same contract the
//! router implements.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
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
    // Enums used only as path or query parameters are not collected on their own.
    components(schemas(error::ErrorBody, error::ErrorDetail, transitions::Action, jobs::JobStatus)),
    modifiers(&BearerAuth, &CommonResponses),
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

/// Adds the answers every operation can give to each one that does not document them itself:
/// the router's own refusals (malformed request, timeout), the token check on `/api/v1` and
/// the body checks on operations that take one — so that a client (or schemathesis) finds
/// every status the api can send in the document.
#[derive(Debug)]
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let open = !path.starts_with("/api/v1/")
                || path == "/api/v1/metrics/prometheus"
                || path == "/api/v1/openapi.json";
            for (reads, op) in [
                (true, item.get.as_mut()),
                (false, item.post.as_mut()),
                (false, item.put.as_mut()),
                (false, item.delete.as_mut()),
                (false, item.patch.as_mut()),
            ] {
                let Some(op) = op else { continue };
                if open {
                    // no token needed: an empty list overrides the document's bearer
                    // requirement, which these operations were shown to have
                    op.security = Some(Vec::new());
                }
                let has_body = op.request_body.is_some();
                let responses = &mut op.responses.responses;
                let mut add = |code: &str, description: &str| {
                    responses.entry(code.to_owned()).or_insert_with(|| {
                        RefOr::T(
                            ResponseBuilder::new()
                                .description(description)
                                .content(
                                    "application/json",
                                    Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                                )
                                .build(),
                        )
                    });
                };
                add(
                    "400",
                    "malformed request: a path or query parameter of the wrong type or range",
                );
                add(
                    "408",
                    "the request ran longer than ESCALATOR_API_TIMEOUT and was abandoned",
                );
                if !open {
                    add(
                        "503",
                        "the database or the queue cannot be reached (or a lock wait gave up): \
                         retry later",
                    );
                    add("401", "no bearer token, or an unknown one");
                    if !reads {
                        add(
                            "403",
                            "a read-scoped token cannot change anything; without tokens, a \
                             write from a page of another site",
                        );
                    }
                }
                if has_body {
                    add("413", "the body is larger than 64 KiB");
                    add("415", "the body is not application/json");
                    add(
                        "422",
                        "a field is missing, unknown, of the wrong type or invalid (named in `field`)",
                    );
                }
            }
        }
    }
}

/// Swagger UI at `/docs`, reading `/api/v1/openapi.json`. Its assets are compiled into the
/// binary, so the explorer works on a machine without internet access. A token typed into
/// it lasts as long as the tab (it was kept in the browser's storage for good), and no other
/// site may frame it.
pub fn explorer<S: Clone + Send + Sync + 'static>() -> axum::Router<S> {
    let ui: axum::Router<S> = utoipa_swagger_ui::SwaggerUi::new("/docs")
        .config(utoipa_swagger_ui::Config::new(["/api/v1/openapi.json"]))
        .into();
    ui.layer(axum::middleware::map_response(
        |mut res: axum::response::Response| async move {
            let headers = res.headers_mut();
            headers.insert(
                axum::http::header::X_FRAME_OPTIONS,
                axum::http::HeaderValue::from_static("DENY"),
            );
            headers.insert(
                axum::http::header::CONTENT_SECURITY_POLICY,
                axum::http::HeaderValue::from_static("frame-ancestors 'none'"),
            );
            res
        },
    ))
}

/// `GET /api/v1/openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
