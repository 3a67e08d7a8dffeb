//! Requests by route, method and status, and how long they took
//! (`escalator_http_requests_total`, `escalator_http_request_duration_seconds`).
//!
//! A layer of the router, so it runs inside the routing: the route template that matched
//! (`/api/v1/workflows/{id}`, never the raw path, so the series stay few) is known, and the
//! layers it wraps (the timeout's 408, a panic's 500, the auth checks) have answered already.
//! A request no route matched is `unmatched`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use escalator_runtime::metrics::{HTTP_DURATION, HTTP_REQUESTS};

/// Counts the request and records its duration.
pub(crate) async fn record(req: Request, next: Next) -> Response {
    let method = method_label(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let started = Instant::now();
    let res = next.run(req).await;
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
