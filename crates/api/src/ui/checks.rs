//! `/ui/checks`: preview a check (a dry run, computed in the request and written nowhere),
//! run one for real and watch it until it finishes, and the recent runs.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use chrono::{DateTime, NaiveDateTime, Utc};
use escalator_jobs::Scope as CheckScope;
use escalator_store::StoreError;
use maud::{Markup, html};

use super::layout::{Nav, at, csrf_field, opt_at, page};
use super::overview::{run_duration, runs_table};
use super::session::Session;
use super::{FormData, UiError, UiResult, done};
use crate::AppState;
use crate::auth::Scope;
use crate::checks::{DryRunReport, dry_run, enqueue};

/// How many workflows a preview evaluates.
const PREVIEW_LIMIT: u32 = 1_000;
/// How many recent runs are listed.
const RUNS: u32 = 20;

/// An instant typed in a form: RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` taken as UTC.
fn parse_instant(s: &str) -> Result<DateTime<Utc>, UiError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
    .map(|n| n.and_utc())
    .ok_or_else(|| {
        UiError::bad_request(format!(
            "as of {s:?}: expected a time such as 2026-11-25T12:00:00Z"
        ))
    })
}

/// The scope and instant a check form asks for; an unknown workflow is the user's error.
async fn target(s: &AppState, form: &FormData) -> Result<(CheckScope, DateTime<Utc>), UiError> {
    let as_of = form
        .filled("as_of")
        .map(parse_instant)
        .transpose()?
        .map(|t| escalator_store::time::check_instant("as_of", t))
        .transpose()?
        .unwrap_or_else(Utc::now);
    let scope = match form.filled("workflow_id") {
        None => CheckScope::All,
        // a workflow's id or its external id, as `enqueue check --workflow` and the api's
        // checks take: the console shows external ids, and only the uuid was taken
        Some(raw) => {
            if raw.contains('\0') || raw.chars().count() > escalator_store::logic::MAX_ID_CHARS {
                return Err(UiError::bad_request(format!(
                    "workflow {raw:?} is neither a workflow's id nor an external id"
                )));
            }
            match s.store.find_workflow(raw).await {
                Ok(w) => CheckScope::Workflow(w.id),
                Err(StoreError::NotFound { .. }) => {
                    return Err(UiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("no workflow has the id or external id {raw:?}"),
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    Ok((scope, as_of))
}

fn report(r: &DryRunReport) -> Markup {
    html! {
        h2 id="preview" { "Preview: what a check would do (nothing was written)" }
        p { "scope " (r.scope) ", as of " (at(r.as_of)) ": " (r.due) " due, " (r.evaluated) " evaluated" }
        div.cards {
            div.card { b { (r.remind) } span { "reminders" } }
            div.card { b { (r.escalate) } span { "escalations" } }
            div.card { b { (r.exhausted) } span { "chains exhausted" } }
            div.card { b { (r.renotify) } span { "renotifications" } }
            div.card { b { (r.nothing) } span { "nothing to do yet" } }
            div.card { b { (r.unreadable) } span { "unreadable policy" } }
        }
        div.scroll { table {
            thead { tr { th { "workflow" } th { "would" } th { "assignee" } th { "to" } th { "level" } th { "due" } } }
            tbody {
                @for i in &r.items {
                    tr {
                        td { a href={ "/ui/workflows/" (i.workflow_id) } { (i.title) } br; span.muted { (i.external_id) } }
                        td { b { (i.action) } }
                        td { (i.assignee) }
                        td { (i.target.as_deref().unwrap_or("")) }
                        td { @if let Some(l) = i.level { (l) } }
                        td { (at(i.due_at)) }
                    }
                }
                @if r.items.is_empty() { tr { td colspan="6" .muted { "no workflow would change" } } }
            }
        } }
    }
}

/// `GET /ui/checks[?preview=1&workflow_id=&as_of=]`: the forms, the preview when asked for
/// (admins only, as `POST /api/v1/checks` with `dry_run` is: it evaluates up to a thousand
/// workflows), and the recent runs.
pub async fn show(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    uri: Uri,
) -> UiResult {
    let query = FormData::parse_str(uri.query().unwrap_or_default());
    let preview = if query.filled("preview").is_some() {
        if session.scope < Scope::Admin {
            return Err(UiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "token {:?} has read scope; a dry run needs an admin token, as in the api",
                    session.actor
                ),
            ));
        }
        let (scope, as_of) = target(&s, &query).await?;
        Some(dry_run(&s, scope, as_of, PREVIEW_LIMIT).await?)
    } else {
        None
    };
    let runs = s.store.recent_check_runs(RUNS).await?;
    let value = |name: &str| query.filled(name).unwrap_or_default().to_owned();
    let body = html! {
        h1 { "Checks" }
        @if session.scope == Scope::Admin {
            form.bar method="get" action="/ui/checks" {
                input type="hidden" name="preview" value="1";
                label { "workflow: id or external id (empty: all due)" input type="text" name="workflow_id" value=(value("workflow_id")); }
                label { "as of (empty: now)" input type="text" name="as_of" value=(value("as_of")) placeholder="2026-11-25T12:00:00Z"; }
                button type="submit" { "Preview (dry run)" }
            }
            form.bar method="post" action="/ui/checks" {
                (csrf_field(&session))
                label { "workflow: id or external id (empty: all due)" input type="text" name="workflow_id" value=(value("workflow_id")); }
                label { "as of (empty: now)" input type="text" name="as_of" value=(value("as_of")) placeholder="2026-11-25T12:00:00Z"; }
                button type="submit" { "Run check" }
            }
        }
        @if let Some(r) = &preview { (report(r)) }
        h2 { "Recent runs" }
        (runs_table(&runs))
    };
    Ok(page(
        "Checks",
        Nav::Checks,
        Some(&session),
        super::note(&query, &session),
        body,
    )
    .into_response())
}

/// `POST /ui/checks`: records and enqueues a run, then shows it.
pub async fn run(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    Extension(form): Extension<FormData>,
) -> UiResult {
    let (scope, as_of) = target(&s, &form).await?;
    let (_, queued) = enqueue(&s, scope, as_of, Utc::now()).await?;
    Ok(done(
        &format!("/ui/checks/{}", queued.0.check_run_id),
        "check queued",
        &session,
    ))
}

/// `GET /ui/checks/{id}`: one run; the page reloads itself every 2 s until the run ends.
pub async fn show_run(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    uri: Uri,
) -> UiResult {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| UiError::bad_request(format!("{id:?} is not a check run id")))?;
    let r = s.store.get_check_run(id).await?;
    let running = r.finished_at.is_none();
    let body = html! {
        @if running { meta http-equiv="refresh" content="2"; }
        h1 { "Check run #" (r.id) " " span class={ "pill " (r.status) } { (r.status) } }
        div.scroll style="padding:.6rem .8rem" { dl {
            dt { "requested by" } dd { (r.requested_by) }
            dt { "scope" } dd { (r.scope) }
            dt { "as of" } dd { (at(r.as_of)) }
            dt { "batches" } dd { (r.batches_done) " of " (r.batches) " done" }
            dt { "checked" } dd { (r.checked) }
            dt { "reminded" } dd { (r.reminded) }
            dt { "escalated" } dd { (r.escalated) }
            dt { "exhausted · renotified" } dd { (r.exhausted) " · " (r.renotified) }
            dt { "failed" } dd { (r.failed) }
            dt { "queued · started · finished" } dd { (at(r.created_at)) " · " (opt_at(r.started_at)) " · " (opt_at(r.finished_at)) }
            dt { "took" } dd { (run_duration(&r).unwrap_or_else(|| "still running".into())) }
            @if let Some(e) = &r.error { dt { "error" } dd.failed { (e) } }
        } }
        @if running { p.muted { "This page refreshes every 2 s until the run finishes (a worker must be running)." } }
        p { a href="/ui/checks" { "All checks" } }
    };
    let query = FormData::parse_str(uri.query().unwrap_or_default());
    Ok(page(
        &format!("Check #{id}"),
        Nav::Checks,
        Some(&session),
        super::note(&query, &session),
        body,
    )
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_read_as_rfc3339_or_utc_wall_time() {
        let t = parse_instant("2026-11-25T12:00:00Z").unwrap();
        assert_eq!(parse_instant("2026-11-25T12:00").unwrap(), t);
        assert_eq!(parse_instant("2026-11-25T13:00:00+01:00").unwrap(), t);
        assert!(parse_instant("tomorrow").is_err());
    }
}
