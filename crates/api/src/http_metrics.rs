//! Requests by route, method and status, and how long they took
//! (`escalator_http_requests_total`, `escalator_http_request_duration_seconds`).
//!
//! Two layers: the inner one, inside the router, tags the response with the route template
//! that matched (`/api/v1/workflows/{id}`, never the raw path, so the series stay few); the
//! outer one, around everything, records the answer the client got, including the 408 of a
//! timeout and the 500 of a panic, whose route is then unknown.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use escalator_runtime::metrics::{HTTP_DURATION, HTTP_REQUESTS};

/// The route template a response answered, set by [`tag_route`].
#[derive(Debug, Clone)]
struct Route(String);

/// Inner layer: copies the matched route template onto the response.
pub(crate) async fn tag_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let mut res = next.run(req).await;
    if let Some(route) = route {
        res.extensions_mut().insert(Route(route));
    }
    res
}

/// Outer layer: counts the request and records its duration.
pub(crate) async fn record(req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let started = Instant::now();
    let res = next.run(req).await;
    let route = res
        .extensions()
        .get::<Route>()
        .map_or_else(|| "unmatched".to_owned(), |r| r.0.clone());
    let status = res.status().as_u16().to_string();
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

/// The method as a label: the standard ones by name, anything a client invents as "other"
/// (each would be a series of its own).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
