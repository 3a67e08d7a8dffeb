//! `GET /ui`: the state of the whole system at a glance — open workflows by SLA state, the
//! ones breaching within the hour, the last day's escalations and reminders, the last check
//! runs and what the store and queues tell of the worker and the beat.

use axum::Extension;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use escalator_store::CheckRun;
use maud::{Markup, html};

use super::layout::{Nav, at, countdown, opt_at, page, span};
use super::session::Session;
use super::{FormData, UiResult};
use crate::AppState;

/// How many workflows the "breaching within the hour" table shows.
const SOON: u32 = 25;
/// How many check runs are listed.
const RUNS: u32 = 10;

/// How long the overview's two aggregate counts are kept ([`counts`]).
const COUNTS_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// The overview's counts that read every open workflow and the day's audit rows, as last read.
#[derive(Debug, Clone)]
pub struct CachedCounts {
    read_at: std::time::Instant,
    sla: escalator_store::SlaCounts,
    activity: Vec<(String, i64)>,
}

/// The open workflows by SLA state and the day's escalations and reminders, read at most
/// every [`COUNTS_TTL`] per replica (as `/metrics` reads its fleet gauges): each `GET /ui`
/// scanned them, and a read token looping on the page (dashboards and exporters hold such
/// tokens) kept PostgreSQL busy at a million open workflows. Concurrent requests wait for
/// one read.
async fn counts(
    s: &AppState,
    now: chrono::DateTime<Utc>,
) -> Result<(escalator_store::SlaCounts, Vec<(String, i64)>), escalator_store::StoreError> {
    let mut cached = s.overview.lock().await;
    if let Some(c) = cached.as_ref().filter(|c| c.read_at.elapsed() < COUNTS_TTL) {
        return Ok((c.sla, c.activity.clone()));
    }
    let (sla, activity) = tokio::join!(
        s.store.sla_counts(now),
        s.store
            .audit_actions_since(now - Duration::hours(24), &["escalate", "remind"]),
    );
    let (sla, activity) = (sla?, activity?);
    *cached = Some(CachedCounts {
        read_at: std::time::Instant::now(),
        sla,
        activity: activity.clone(),
    });
    Ok((sla, activity))
}

/// How long a run took, when it has finished.
pub fn run_duration(r: &CheckRun) -> Option<String> {
    let end = r.finished_at?;
    let start = r.started_at.unwrap_or(r.created_at);
    let ms = (end - start).num_milliseconds();
    Some(if ms < 10_000 {
        format!("{:.2} s", ms as f64 / 1000.0)
    } else {
        span(ms / 1000)
    })
}

/// The check runs table (also on the Checks page).
pub fn runs_table(runs: &[CheckRun]) -> Markup {
    html! {
        div.scroll { table {
            thead { tr {
                th { "run" } th { "status" } th { "by" } th.hide-sm { "scope" } th { "as of" }
                th { "checked" } th { "reminded" } th { "escalated" }
                th.hide-sm { "exhausted" } th.hide-sm { "renotified" } th { "failed" } th { "took" }
            } }
            tbody {
                @for r in runs {
                    tr {
                        td { a href={ "/ui/checks/" (r.id) } { "#" (r.id) } }
                        td { span class={ "pill " (r.status) } { (r.status) } @if r.dry_run { " dry" } }
                        td { (r.requested_by) }
                        td.hide-sm { (r.scope) }
                        td { (at(r.as_of)) }
                        td { (r.checked) } td { (r.reminded) } td { (r.escalated) }
                        td.hide-sm { (r.exhausted) } td.hide-sm { (r.renotified) } td { (r.failed) }
                        td { (run_duration(r).unwrap_or_else(|| "—".into())) }
                    }
                }
                @if runs.is_empty() { tr { td colspan="10" .muted { "no check has run yet" } } }
            }
        } }
    }
}

/// `GET /ui`.
pub async fn show(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    uri: axum::http::Uri,
) -> UiResult<Response> {
    let now = Utc::now();
    let (counted, soon, runs, leases, queues) = tokio::join!(
        counts(&s, now),
        s.store.breaching_soon(now, now + Duration::hours(1), SOON),
        s.store.recent_check_runs(RUNS),
        s.store.beat_leases(),
        s.queues.stats(),
    );
    let (counts, activity) = counted?;
    let (ok, warning, breached) = (counts.ok, counts.warning, counts.breached);
    let (soon, runs, leases) = (soon?, runs?, leases?);
    if let Err(e) = &queues {
        tracing::warn!(error = %e, "console: cannot read queue depths");
    }
    let count_of = |action: &str| {
        activity
            .iter()
            .find(|(a, _)| a == action)
            .map_or(0, |(_, n)| *n)
    };
    let last_finished = runs.iter().filter_map(|r| r.finished_at).max();
    let compliance = counts.compliance_ratio() * 100.0;
    let body = html! {
        h1 { "Overview" }
        div.cards {
            div.card { b.ok { (ok) } span { "open, on time" } }
            div.card { b.warning { (warning) } span { "open, warning" } }
            div.card { b.breached { (breached) } span { "open, breached" } }
            div.card { b { (format!("{compliance:.1} %")) } span { "SLA compliance (open, never escalated, not breached)" } }
            div.card { b { (count_of("escalate")) } span { "escalations, last 24 h" } }
            div.card { b { (count_of("remind")) } span { "reminders, last 24 h" } }
        }
        h2 { "Breaching within the hour" }
        div.scroll { table {
            thead { tr { th { "workflow" } th { "assignee" } th { "level" } th { "due" } th { "breaches" } } }
            tbody {
                @for w in &soon {
                    tr {
                        td { a href={ "/ui/workflows/" (w.id) } { (w.title) } br; span.muted { (w.external_id) } }
                        td { (w.assignee) }
                        td { (w.escalation_level) }
                        td { (at(w.due_at)) }
                        td.warning { (countdown(w.due_at, now)) }
                    }
                }
                @if soon.is_empty() { tr { td colspan="5" .muted { "nothing breaches within the hour" } } }
            }
        } }
        @if soon.len() as u32 == SOON { p.muted { "the " (SOON) " soonest are shown" } }
        h2 { "Last check runs" }
        (runs_table(&runs))
        h2 { "Worker and beat" }
        dl {
            dt { "last finished check" }
            dd { (opt_at(last_finished)) @if let Some(t) = last_finished { " (" (countdown(t, now)) ")" } }
            @for l in &leases {
                dt { "beat lease " (l.name) }
                dd {
                    (l.holder) ", epoch " (l.epoch) ", "
                    @if l.expires_at > now { span.ok { "held until " (at(l.expires_at)) } }
                    @else { span.breached { "expired " (countdown(l.expires_at, now)) " — no beat is leading" } }
                }
            }
            @if leases.is_empty() { dt { "beat lease" } dd.muted { "no beat has run against this database" } }
            dt { "queues" }
            dd {
                @match &queues {
                    Ok(stats) => {
                        @for q in stats { (q.queue) ": " (q.pending) " waiting, " (q.dead) " dead" br; }
                    }
                    Err(_) => { span.breached { "the queue is unavailable" } }
                }
            }
        }
    };
    let note = uri.query().map(FormData::parse_str);
    let note = note.as_ref().and_then(|f| super::note(f, &session));
    Ok(page("Overview", Nav::Overview, Some(&session), note, body).into_response())
}
