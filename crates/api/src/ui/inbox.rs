//! `/ui/inbox`: one person's in-app notifications, newest first, and marking one read.

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::Uri;
use axum::response::IntoResponse;
use chrono::Utc;
use maud::html;

use super::layout::{Nav, action_button, at, page};
use super::session::Session;
use super::{FormData, UiError, UiResult, done};
use crate::AppState;
use crate::auth::Scope;

/// How many notifications the page lists.
const SHOWN: u32 = 100;

/// `GET /ui/inbox?recipient=&unread=1`.
pub async fn show(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    uri: Uri,
) -> UiResult {
    let query = FormData::parse_str(uri.query().unwrap_or_default());
    let recipient = query.filled("recipient").map(str::to_owned);
    let unread = query.filled("unread").is_some();
    let items = match &recipient {
        Some(r) => s.store.inbox(r, unread, None, SHOWN).await?,
        None => Vec::new(),
    };
    let body = html! {
        h1 { "Inbox" @if let Some(r) = &recipient { " of " (r) } }
        form.bar method="get" action="/ui/inbox" {
            label { "person (user id)" input type="text" name="recipient" value=(recipient.as_deref().unwrap_or_default()) required; }
            label { "only unread" input type="checkbox" name="unread" value="1" checked[unread]; }
            button type="submit" { "Show" }
        }
        @if recipient.is_some() {
            div.scroll { table {
                thead { tr { th { "when" } th { "kind" } th { "subject" } th.hide-sm { "message" } th { "workflow" } th { "read" } } }
                tbody {
                    @for n in &items {
                        tr {
                            td { (at(n.created_at)) }
                            td { (n.kind) " (" (n.role) ")" }
                            td { @if n.read_at.is_none() { b { (n.subject) } } @else { (n.subject) } }
                            td.hide-sm { (n.body) }
                            td { a href={ "/ui/workflows/" (n.workflow_id) } { "open" } }
                            td {
                                @if let Some(t) = n.read_at { (at(t)) }
                                @else if session.scope == Scope::Admin {
                                    (action_button(&session, &format!("/ui/inbox/{}/read", n.id), "Mark read",
                                        html! { input type="hidden" name="recipient" value=(n.recipient); }))
                                } @else { "unread" }
                            }
                        }
                    }
                    @if items.is_empty() { tr { td colspan="6" .muted { "no notification" } } }
                }
            } }
        }
    };
    Ok(page(
        "Inbox",
        Nav::Inbox,
        Some(&session),
        super::note(&query, &session),
        body,
    )
    .into_response())
}

/// `POST /ui/inbox/{id}/read`: idempotent; back to the inbox it was clicked in.
pub async fn mark_read(
    State(s): State<AppState>,
    Extension(session): Extension<Session>,
    Extension(form): Extension<FormData>,
    Path(id): Path<String>,
) -> UiResult {
    let id: i64 = id
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| UiError::bad_request(format!("{id:?} is not a notification id")))?;
    s.store.mark_notification_read(id, Utc::now()).await?;
    let back = match form.filled("recipient") {
        Some(r) => format!(
            "/ui/inbox?{}",
            serde_urlencoded::to_string([("recipient", r)]).unwrap_or_default()
        ),
        None => "/ui/inbox".into(),
    };
    Ok(done(&back, "marked read", &session))
}
