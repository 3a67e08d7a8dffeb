//! `/ui/workflows`: the searchable list, one workflow's page (SLA clock, audit timeline,
//! notifications and their deliveries) and its actions — complete, hold, resume, reassign —
//! through the store's transition, exactly as the api applies them.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use chrono::Utc;
use escalator_policy::{SlaStatus, Status};
use escalator_store::{
    AuditReason, TITLE_SEARCH_WINDOW, Transition, TransitionContext, Workflow, WorkflowSearch,
};
use maud::{Markup, html};
use uuid::Uuid;

use super::layout::{Nav, action_button, at, countdown, csrf_field, opt_at, page, span};
use super::session::Session;
use super::{FormData, UiError, UiResult, done};
use crate::AppState;
use crate::auth::Scope;
use crate::workflows::{decode_cursor, encode_cursor};

/// Rows per page of the list.
const PAGE: u32 = 50;

fn parse_status(s: &str) -> Result<Status, UiError> {
    s.parse().map_err(|_| {
        UiError::bad_request(format!(
            "status {s:?}: expected pending, escalated, on_hold, completed or cancelled"
        ))
    })
}

fn parse_sla(s: &str) -> Result<SlaStatus, UiError> {
    match s {
        "ok" => Ok(SlaStatus::Ok),
        "warning" => Ok(SlaStatus::Warning),
        "breached" => Ok(SlaStatus::Breached),
        other => Err(UiError::bad_request(format!(
            "sla {other:?}: expected ok, warning or breached"
        ))),
    }
}

fn parse_id(id: &str) -> Result<Uuid, UiError> {
    Uuid::parse_str(id).map_err(|_| UiError::bad_request(format!("{id:?} is not a workflow id")))
}

/// The SLA state of a workflow now, as a coloured pill.
pub fn sla_pill(w: &Workflow, now: chrono::DateTime<Utc>) -> Markup {
    if !w.status.is_open() {
        return html! { span.pill.muted { (w.status.as_str()) } };
    }
    let sla = escalator_policy::sla_status(&w.deadlines(), now);
    html! { span class={ "pill " (sla.as_str()) } { (sla.as_str()) } }
}

/// `GET /ui/workflows?q=&status=&sla=&before=`.
pub async fn list(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    uri: Uri,
) -> UiResult {
    let query = FormData::parse_str(uri.query().unwrap_or_default());
    let now = Utc::now();
    let search = WorkflowSearch {
        text: query.filled("q").map(str::to_owned),
        status: query.filled("status").map(parse_status).transpose()?,
        sla_status: query
            .filled("sla")
            .map(parse_sla)
            .transpose()?
            .map(|sla| (sla, now)),
        after: query
            .filled("before")
            .map(decode_cursor)
            .transpose()
            .map_err(UiError::from)?,
        limit: PAGE + 1,
    };
    let mut items = s.store.search_workflows(&search).await?;
    let more = items.len() > PAGE as usize;
    items.truncate(PAGE as usize);
    // The cursor is the last row's position in the page's order (see WorkflowSearch).
    let by_deadline = search.sla_status.is_some();
    let next = more
        .then(|| {
            items
                .last()
                .map(|w| encode_cursor(if by_deadline { w.due_at } else { w.created_at }, w.id))
        })
        .flatten();
    let keep = |name: &str| query.filled(name).unwrap_or_default().to_owned();
    let next_link = next.map(|cursor| {
        let q = serde_urlencoded::to_string([
            ("q", keep("q")),
            ("status", keep("status")),
            ("sla", keep("sla")),
            ("before", cursor),
        ])
        .unwrap_or_default();
        format!("/ui/workflows?{q}")
    });
    let selected = |name: &str, value: &str| query.filled(name) == Some(value);
    let body = html! {
        h1 { "Workflows" }
        form.bar method="get" action="/ui/workflows" {
            label { "search" input type="search" name="q" value=(keep("q")) placeholder="external id, assignee or title words"; }
            label { "status" select name="status" {
                option value="" { "any" }
                @for st in ["pending", "escalated", "on_hold", "completed", "cancelled"] {
                    option value=(st) selected[selected("status", st)] { (st) }
                }
            } }
            label { "SLA" select name="sla" {
                option value="" { "any" }
                @for sla in ["ok", "warning", "breached"] {
                    option value=(sla) selected[selected("sla", sla)] { (sla) }
                }
            } }
            button type="submit" { "Filter" }
        }
        @if by_deadline {
            p.muted { "By deadline: the most overdue or soonest due first." }
        }
        @if query.filled("q").is_some() {
            p.muted { "External ids and assignees match exactly; titles match by substring among the newest "
                (TITLE_SEARCH_WINDOW) " workflows." }
        }
        div.scroll { table {
            thead { tr { th { "workflow" } th { "status" } th { "SLA" } th { "assignee" } th.hide-sm { "stage" } th { "due" } } }
            tbody {
                @for w in &items {
                    tr {
                        td { a href={ "/ui/workflows/" (w.id) } { (w.title) } br; span.muted { (w.external_id) } }
                        td { (w.status.as_str()) }
                        td { (sla_pill(w, now)) }
                        td { (w.assignee) }
                        td.hide-sm { (w.stage) }
                        td { (at(w.due_at)) br; span.muted { (countdown(w.due_at, now)) } }
                    }
                }
                @if items.is_empty() { tr { td colspan="6" .muted { "no workflow matches" } } }
            }
        } }
        p.pager {
            @if query.filled("before").is_some() { a href="/ui/workflows" { "« first page" } " " }
            @if let Some(l) = &next_link { a href=(l) rel="next" { "next page »" } }
        }
    };
    let note = super::note(&query, &session);
    Ok(page("Workflows", Nav::Workflows, Some(&session), note, body).into_response())
}

/// Audit entries and notifications a workflow's page shows at most (the newest).
const SHOWN_ROWS: u32 = 200;

/// `GET /ui/workflows/{id}`: the clock, the actions, the audit timeline and the deliveries.
pub async fn show(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    uri: Uri,
) -> UiResult {
    // the workflow's id, or its external id, as in the api's paths
    if escalator_store::logic::check_id("id", &id).is_err() {
        return Err(UiError::bad_request(format!("{id:?} is not a workflow id")));
    }
    let w = s.store.find_workflow(&id).await?;
    let id = w.id;
    // the newest rows only: a repeating policy adds some every minute to a workflow nobody acts
    // on, and the page rendered them all (100,000 table rows after a month)
    let (audit, notifications, outbox, policy) = tokio::join!(
        s.store
            .workflow_audit_page(id, escalator_store::TrailPage::Newest, SHOWN_ROWS),
        s.store.workflow_notifications(id, SHOWN_ROWS),
        s.store.workflow_outbox(id),
        s.store.get_policy(&w.policy_id, w.policy_version),
    );
    let (audit, notifications, outbox) = (audit?, notifications?, outbox?);
    // who an escalation goes to: the workflow's own target, else its policy's first level
    // (the page said "the assignee's manager" for a policy naming someone)
    let target = match (&w.escalation_target, &policy) {
        (Some(t), _) => t.clone(),
        (None, Ok(p)) => match p.policy.spec().levels.first().map(|l| &l.target) {
            Some(escalator_policy::Target::User(u)) => format!("{u} (the policy's first level)"),
            _ => "the assignee's manager (else the policy's next level)".to_owned(),
        },
        (None, Err(_)) => "as the policy says (it cannot be read)".to_owned(),
    };
    let now = Utc::now();
    let paused_now = w.paused_at.map_or(0, |p| (now - p).num_seconds().max(0));
    let body = html! {
        h1 { (w.title) " " (sla_pill(&w, now)) }
        div.scroll style="padding:.6rem .8rem" { dl {
            dt { "external id" } dd { (w.external_id) }
            dt { "kind · stage" } dd { (w.kind) " · " (w.stage) }
            dt { "status" } dd { (w.status.as_str()) }
            dt { "assignee" } dd { (w.assignee) " (initiator " (w.initiator) ")" }
            dt { "escalation target" } dd { (target) }
            dt { "policy" } dd { (w.policy_id) " v" (w.policy_version) }
            dt { "stage started" } dd { (at(w.stage_started_at)) }
            dt { "warns" } dd { (at(w.warn_at)) " (" (countdown(w.warn_at, now)) ")" }
            dt { "due" } dd { (at(w.due_at)) " (" (countdown(w.due_at, now)) ")" }
            dt { "paused" } dd {
                (span(w.paused_seconds)) " in total"
                @if let Some(p) = w.paused_at { ", on hold since " (at(p)) " (" (span(paused_now)) ")" }
            }
            dt { "level · cycle" } dd { (w.escalation_level) " · " (w.cycle) }
            dt { "reminded · escalated" } dd { (opt_at(w.reminded_at)) " · " (opt_at(w.escalated_at)) }
            dt { "next check" } dd { (opt_at(w.next_check_at)) }
            dt { "version" } dd { (w.version) }
        } }
        @if session.scope == Scope::Admin { (actions(&session, &w)) }
        h2 id="audit" { "Audit timeline" }
        @if audit.len() >= SHOWN_ROWS as usize {
            p.muted { "The newest " (SHOWN_ROWS) " entries; the whole trail, a page at a time: "
                code { "GET /api/v1/workflows/" (w.id) "/audit" } " (with an API token when tokens are set)" }
        }
        div.scroll { table {
            thead { tr { th { "when" } th { "what" } th { "who" } th { "why" } th { "level" } th { "policy" } th.hide-sm { "details" } } }
            tbody {
                @for a in &audit {
                    tr {
                        td { (at(a.created_at)) }
                        td { b { (a.action) }
                            @if let (Some(f), Some(t)) = (&a.from_assignee, &a.to_assignee) { br; (f) " → " (t) }
                            @else if let Some(t) = &a.to_assignee { br; "→ " (t) }
                        }
                        td { (a.actor) }
                        td { (a.reason)
                            @if let Some(r) = a.check_run_id { br; a href={ "/ui/checks/" (r) } { "check #" (r) } }
                            @if let Some(e) = a.elapsed_seconds { br; span.muted { (span(e)) " elapsed" } }
                        }
                        td { (a.level) " · cycle " (a.cycle) }
                        td { "v" (a.policy_version) }
                        td.hide-sm { pre { (a.details) } }
                    }
                }
            }
        } }
        h2 { "In-app notifications" }
        @if notifications.len() >= SHOWN_ROWS as usize {
            p.muted { "The newest " (SHOWN_ROWS) "." }
        }
        div.scroll { table {
            thead { tr { th { "when" } th { "to" } th { "kind" } th { "subject" } th { "read" } } }
            tbody {
                @for n in &notifications {
                    tr {
                        td { (at(n.created_at)) }
                        td { a href={ "/ui/inbox?recipient=" (n.recipient) } { (n.recipient) } " (" (n.role) ")" }
                        td { (n.kind) } td { (n.subject) } td { (opt_at(n.read_at)) }
                    }
                }
                @if notifications.is_empty() { tr { td colspan="5" .muted { "none" } } }
            }
        } }
        h2 { "Deliveries (outbox)" }
        div.scroll { table {
            thead { tr { th { "#" } th { "channel" } th { "to" } th { "status" } th { "attempts" } th { "sent / next try" } th.hide-sm { "last error" } } }
            tbody {
                @for o in &outbox {
                    tr {
                        td { (o.id) } td { (o.channel) } td { (escalator_runtime::config::host_only(&o.recipient)) }
                        td { span class={ "pill " (o.status) } { (o.status) } }
                        td { (o.attempts) }
                        td { @if let Some(t) = o.sent_at { (at(t)) } @else { (at(o.next_attempt_at)) } }
                        td.hide-sm { (o.last_error.as_deref().unwrap_or("")) }
                    }
                }
                @if outbox.is_empty() { tr { td colspan="7" .muted { "none" } } }
            }
        } }
    };
    let query = FormData::parse_str(uri.query().unwrap_or_default());
    Ok(page(
        &w.title,
        Nav::Workflows,
        Some(&session),
        super::note(&query, &session),
        body,
    )
    .into_response())
}

/// The action forms for an admin, as the workflow's status allows.
fn actions(session: &Session, w: &Workflow) -> Markup {
    let base = format!("/ui/workflows/{}", w.id);
    let version = html! { input type="hidden" name="version" value=(w.version); };
    let comment = html! { input type="text" name="comment" placeholder="comment (optional)" aria-label="comment"; };
    html! {
        @if w.status.is_open() || w.status == Status::OnHold {
            h2 { "Actions" }
            div.actions {
                (action_button(session, &format!("{base}/complete"), "Complete", html! { (version) (comment) }))
                @if w.status.is_open() {
                    (action_button(session, &format!("{base}/hold"), "Hold", version.clone()))
                }
                @if w.status == Status::OnHold {
                    (action_button(session, &format!("{base}/resume"), "Resume", version.clone()))
                }
                form.inline method="post" action={ (base) "/reassign" } {
                    (csrf_field(session)) (version)
                    input type="text" name="to" placeholder="new assignee" aria-label="new assignee" required;
                    button type="submit" { "Reassign" }
                }
            }
        }
    }
}

/// `POST /ui/workflows/{id}/{complete|hold|resume|reassign}`: the transition, then back to
/// the workflow's page. A stale page (the workflow changed since it was shown) is a 412 page.
pub async fn act(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    Extension(form): Extension<FormData>,
    Path((id, action)): Path<(String, String)>,
) -> UiResult {
    let id = parse_id(&id)?;
    let transition = match action.as_str() {
        "complete" => Transition::Complete,
        "hold" => Transition::Hold,
        "resume" => Transition::Resume,
        "reassign" => Transition::Reassign {
            to: form
                .filled("to")
                .ok_or_else(|| UiError::bad_request("reassign needs the new assignee"))?
                .to_owned(),
        },
        other => {
            return Err(UiError::new(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}: expected complete, hold, resume or reassign"),
            ));
        }
    };
    let expected_version = form
        .filled("version")
        .map(|v| {
            v.parse::<i32>()
                .map_err(|_| UiError::bad_request(format!("version {v:?} is not a number")))
        })
        .transpose()?;
    let ctx = TransitionContext {
        actor: session.actor.clone(),
        reason: AuditReason::Manual,
        expected_version,
        comment: form.filled("comment").map(str::to_owned),
        now: Utc::now(),
        idempotency_key: None,
    };
    s.store.transition(id, &transition, &ctx).await?;
    Ok(done(
        &format!("/ui/workflows/{id}"),
        &format!("{} done", transition.action()),
        &session,
    ))
}
