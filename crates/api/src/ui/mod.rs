//! The web console at `/ui` (issue #10): server-rendered pages over the same store and queue
//! calls as the api — overview, workflows, inbox, queues and checks — with the api's tokens
//! kept in a cookie, CSRF-checked forms and POST-redirect-GET actions. No JavaScript.

pub mod checks;
pub mod inbox;
pub mod layout;
pub mod overview;
pub mod queues;
pub mod session;
pub mod workflows;

use std::sync::Arc;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use maud::html;

use crate::AppState;
use crate::error::ApiError;
use layout::{Nav, page};

/// The console's routes, to be nested at `/ui`. Pages need a session (a token cookie when
/// tokens are configured); actions also need an admin token; every POST a CSRF token.
pub fn router(state: &AppState) -> Router<AppState> {
    let admin = Router::new()
        .route("/workflows/{id}/{action}", post(workflows::act))
        .route("/inbox/{id}/read", post(inbox::mark_read))
        .route("/queues/{queue}/{id}/retry", post(queues::retry_job))
        .route("/outbox/{id}/retry", post(queues::retry_delivery))
        .route("/checks", post(checks::run))
        .route_layer(axum::middleware::from_fn(session::require_admin));
    let pages = Router::new()
        .route("/", get(overview::show))
        .route("/workflows", get(workflows::list))
        .route("/workflows/{id}", get(workflows::show))
        .route("/inbox", get(inbox::show))
        .route("/queues", get(queues::show))
        .route("/checks", get(checks::show))
        .route("/checks/{id}", get(checks::show_run))
        .route("/logout", post(session::logout));
    Router::new()
        .merge(admin)
        .merge(pages)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::require_session,
        ))
        .route("/login", get(session::login_form).post(session::login))
        .fallback(not_found)
        .layer(Extension(Arc::new(session::Keys::new())))
        .layer(axum::middleware::map_response(protect))
}

/// What every console response carries: no caching (pages hold CSRF tokens and personal
/// data), no framing (clickjacking of the action buttons), and a policy that runs no script
/// at all — a second wall behind the escaping — and posts forms only to this origin.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

async fn protect(mut res: Response) -> Response {
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    res
}

/// A submitted form (or query string): its fields in order.
#[derive(Debug, Clone, Default)]
pub struct FormData(Vec<(String, String)>);

impl FormData {
    /// Parses `application/x-www-form-urlencoded` bytes. Invalid UTF-8 and NUL characters
    /// (which no stored text can hold: PostgreSQL refuses them) are replaced with U+FFFD.
    pub fn parse(bytes: &[u8]) -> FormData {
        let clean = |s: std::borrow::Cow<'_, str>| {
            if s.contains('\0') {
                s.replace('\0', "\u{FFFD}")
            } else {
                s.into_owned()
            }
        };
        FormData(
            form_urlencoded::parse(bytes)
                .map(|(k, v)| (clean(k), clean(v)))
                .collect(),
        )
    }

    /// The first field of a submitted form whose value holds a NUL character (no stored text
    /// can hold one): a form is refused for it, naming the field, as the api refuses JSON.
    pub fn nul_field(bytes: &[u8]) -> Option<String> {
        form_urlencoded::parse(bytes)
            .find(|(k, v)| k.contains('\0') || v.contains('\0'))
            .map(|(k, _)| k.replace('\0', "\u{FFFD}"))
    }

    /// Parses a query string.
    pub fn parse_str(s: &str) -> FormData {
        FormData::parse(s.as_bytes())
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first non-blank value of `name`, trimmed.
    pub fn filled(&self, name: &str) -> Option<&str> {
        self.get(name).map(str::trim).filter(|v| !v.is_empty())
    }
}

/// A console page that could not be shown: an HTML error page with the status and a safe
/// message (5xx are logged with their cause and shown generically, as in the api).
#[derive(Debug)]
pub struct UiError {
    status: StatusCode,
    message: String,
}

impl UiError {
    /// An error page with this status and message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> UiError {
        UiError {
            status,
            message: message.into(),
        }
    }

    /// A 400 about a parameter.
    pub fn bad_request(message: impl Into<String>) -> UiError {
        UiError::new(StatusCode::BAD_REQUEST, message)
    }
}

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        let status = e.status();
        let message = match &e {
            // the page has no field to point at: the message names it
            ApiError::Client {
                message,
                field: Some(field),
                ..
            } if !message.contains(field.as_str()) => format!("{field}: {message}"),
            ApiError::Client { message, .. } => message.clone(),
            ApiError::Unavailable { what, source } => {
                tracing::warn!(error = %source, "console: {what} unavailable");
                format!("the {what} is unavailable; try again shortly")
            }
            ApiError::Internal(source) => {
                tracing::error!(error = %source, "console page failed");
                "internal error; the server log has the details".into()
            }
        };
        UiError { status, message }
    }
}

impl From<escalator_store::StoreError> for UiError {
    fn from(e: escalator_store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

impl From<escalator_jobs::QueueError> for UiError {
    fn from(e: escalator_jobs::QueueError) -> Self {
        ApiError::from(e).into()
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error").to_owned();
        let body = html! {
            h1 { (self.status.as_u16()) " " (title) }
            p.error role="alert" { (self.message) }
            p { a href="/ui" { "Back to the overview" } }
        };
        (self.status, page(&title, Nav::None, None, None, body)).into_response()
    }
}

/// What a console handler answers.
pub type UiResult<T = Response> = Result<T, UiError>;

/// POST-redirect-GET: back to `to` with a one-line note shown on the next page, signed for
/// the session that acted ([`note`]).
pub fn done(to: &str, note: &str, session: &session::Session) -> Response {
    let sep = if to.contains('?') { '&' } else { '?' };
    let query = serde_urlencoded::to_string([("note", note), ("sig", &note_tag(session, note))])
        .unwrap_or_default();
    Redirect::to(&format!("{to}{sep}{query}")).into_response()
}

/// The note a page shows in its status banner: only one [`done`] signed for this session. Any
/// text in `?note=` was shown there as if the console said it ("your session expired: send
/// your admin token to …" in a link).
pub fn note<'a>(query: &'a FormData, session: &session::Session) -> Option<&'a str> {
    let note = query.filled("note")?;
    let tag = query.get("sig")?;
    crate::auth::constant_time_eq(note_tag(session, note).as_bytes(), tag.as_bytes())
        .then_some(note)
}

fn note_tag(session: &session::Session, note: &str) -> String {
    use base64::Engine as _;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, session.csrf.as_bytes());
    let tag = ring::hmac::sign(&key, note.trim().as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag.as_ref()[..16])
}

async fn not_found() -> UiError {
    UiError::new(StatusCode::NOT_FOUND, "no such page")
}
