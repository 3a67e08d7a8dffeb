//! `/ui/queues`: the depth of every job queue, the dead jobs with their payload and error, and
//! the dead outbox deliveries — each with a retry button.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use chrono::Utc;
use maud::html;

use super::layout::{Nav, action_button, at, page};
use super::session::Session;
use super::{FormData, UiError, UiResult, done};
use crate::AppState;
use crate::auth::Scope;

/// How many dead jobs (per queue) and dead deliveries are listed.
const SHOWN: u32 = 50;

/// `GET /ui/queues`.
pub async fn show(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    uri: Uri,
) -> UiResult {
    let (stats, dead, outbox) = tokio::join!(
        s.queues.stats(),
        s.queues.dead_jobs(SHOWN as usize),
        s.store.list_outbox(&["dead"], SHOWN),
    );
    let (stats, dead, outbox) = (stats?, dead?, outbox?);
    let admin = session.scope == Scope::Admin;
    let body = html! {
        h1 { "Queues" }
        div.scroll { table {
            thead { tr { th { "queue" } th { "waiting" } th { "dead" } th { "done" } } }
            tbody {
                @for q in &stats {
                    tr { td { (q.queue) } td { (q.pending) } td class=[(q.dead > 0).then_some("dead")] { (q.dead) } td { (q.done) } }
                }
            }
        } }
        h2 { "Dead jobs" }
        div.scroll { table {
            thead { tr { th { "queue" } th { "job" } th { "payload" } th { "error" } th {} } }
            tbody {
                @for j in &dead {
                    tr {
                        td { (j.queue) } td { code { (j.id) } }
                        td { pre { (j.payload) } }
                        td.dead { pre { (j.error.as_deref().unwrap_or("")) } }
                        td { @if admin {
                            (action_button(&session, &format!("/ui/queues/{}/{}/retry", urlencode(&j.queue), urlencode(&j.id)), "Retry", html! {}))
                        } }
                    }
                }
                @if dead.is_empty() { tr { td colspan="5" .muted { "no dead job" } } }
            }
        } }
        h2 { "Dead deliveries (outbox)" }
        div.scroll { table {
            thead { tr { th { "#" } th { "channel" } th { "to" } th { "attempts" } th { "last error" } th { "workflow" } th {} } }
            tbody {
                @for o in &outbox {
                    tr {
                        td { (o.id) } td { (o.channel) } td { (escalator_runtime::config::host_only(&o.recipient)) } td { (o.attempts) }
                        td.dead { (o.last_error.as_deref().unwrap_or("")) br; span.muted { (at(o.next_attempt_at)) } }
                        td { @if let Some(w) = o.workflow_id { a href={ "/ui/workflows/" (w) } { "open" } } }
                        td { @if admin { (action_button(&session, &format!("/ui/outbox/{}/retry", o.id), "Retry", html! {})) } }
                    }
                }
                @if outbox.is_empty() { tr { td colspan="7" .muted { "no dead delivery" } } }
            }
        } }
    };
    let query = FormData::parse_str(uri.query().unwrap_or_default());
    Ok(page(
        "Queues",
        Nav::Queues,
        Some(&session),
        super::note(&query, &session),
        body,
    )
    .into_response())
}

/// A path segment, percent-encoded (queue names hold `:`; job ids are opaque).
fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `POST /ui/queues/{queue}/{id}/retry`: the dead job back in its queue, attempts reset.
pub async fn retry_job(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    Path((queue, id)): Path<(String, String)>,
) -> UiResult {
    if !s.queues.names().all().contains(&queue.as_str()) {
        return Err(UiError::new(
            StatusCode::NOT_FOUND,
            format!("no queue {queue:?}"),
        ));
    }
    if !s.queues.retry_dead(&queue, &id).await? {
        return Err(UiError::new(
            StatusCode::NOT_FOUND,
            format!("no dead job {id:?} in {queue} (retried already?)"),
        ));
    }
    Ok(done(
        "/ui/queues",
        &format!("job {id} is back in {queue}"),
        &session,
    ))
}

/// `POST /ui/outbox/{id}/retry`: the dead delivery back in line.
pub async fn retry_delivery(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> UiResult {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| UiError::bad_request(format!("{id:?} is not a delivery id")))?;
    if s.store.retry_dead_deliveries(Some(id), Utc::now()).await? == 0 {
        return Err(UiError::new(
            StatusCode::NOT_FOUND,
            format!("no dead delivery #{id} (retried already?)"),
        ));
    }
    Ok(done(
        "/ui/queues",
        &format!("delivery #{id} will be sent again"),
        &session,
    ))
}
