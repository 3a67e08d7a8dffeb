//! Who is using the console and whether a form really came from it. The api's tokens are
//! presented once in a login form and kept in an HttpOnly, SameSite=Strict cookie; every POST
//! carries a CSRF token derived by HMAC from that cookie's secret (or from a per-process key
//! when authentication is off), so a page on another site can neither read nor forge it.

use std::sync::Arc;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maud::html;
use ring::hmac;

use super::layout::{Nav, page};
use super::{FormData, UiError};
use crate::AppState;
use crate::auth::Scope;

/// The cookie holding the token (base64url of the secret: secrets may contain `;`).
pub const COOKIE: &str = "escalator_console";

/// What the CSRF MAC is computed over; versioned so the scheme can change.
const CSRF_MESSAGE: &[u8] = b"escalator console csrf v1";

/// The signed-in user of one request.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token's name ("console" when authentication is off); the actor of changes.
    pub actor: String,
    /// What the token may do.
    pub scope: Scope,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    /// Whether a token cookie identified the user (false when authentication is off).
    pub signed_in: bool,
}

/// The per-process key for CSRF tokens when no token is configured.
#[derive(Debug)]
pub struct Keys {
    anonymous: hmac::Key,
}

impl Keys {
    /// A fresh random key.
    pub fn new() -> Keys {
        let seed = [
            uuid::Uuid::new_v4().into_bytes(),
            uuid::Uuid::new_v4().into_bytes(),
        ]
        .concat();
        Keys {
            anonymous: hmac::Key::new(hmac::HMAC_SHA256, &seed),
        }
    }

    fn key_for(&self, secret: Option<&str>) -> hmac::Key {
        match secret {
            Some(s) => hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes()),
            None => self.anonymous.clone(),
        }
    }

    /// The CSRF token of a session holding `secret` (None: authentication off).
    pub fn csrf(&self, secret: Option<&str>) -> String {
        URL_SAFE_NO_PAD.encode(hmac::sign(&self.key_for(secret), CSRF_MESSAGE).as_ref())
    }

    /// Whether `presented` is the CSRF token of that session (constant time).
    fn csrf_ok(&self, secret: Option<&str>, presented: &str) -> bool {
        URL_SAFE_NO_PAD
            .decode(presented)
            .is_ok_and(|tag| hmac::verify(&self.key_for(secret), CSRF_MESSAGE, &tag).is_ok())
    }
}

impl Default for Keys {
    fn default() -> Self {
        Keys::new()
    }
}

/// The secret in the request's console cookie, if any.
fn cookie_secret(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .and_then(|(_, v)| URL_SAFE_NO_PAD.decode(v).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
}

/// A page on another origin posting here: refused even before the CSRF token is looked at
/// ([`crate::auth::foreign_origin`]). A request without `Origin` (old browsers, scripts) is
/// left to the CSRF token.
fn foreign_origin(req: &Request) -> bool {
    crate::auth::foreign_origin(req.headers())
}

fn forbidden(message: &str) -> Response {
    UiError::new(StatusCode::FORBIDDEN, message).into_response()
}

/// Where to send an anonymous visitor: the login form, remembering the page they wanted.
fn to_login(req: &Request) -> Response {
    let wanted = req
        .extensions()
        .get::<OriginalUri>()
        .map(|u| u.0.to_string())
        .unwrap_or_else(|| "/ui".into());
    let next = if *req.method() == Method::GET {
        wanted
    } else {
        "/ui".into()
    };
    let query = serde_urlencoded::to_string([("next", next.as_str())]).unwrap_or_default();
    Redirect::to(&format!("/ui/login?{query}")).into_response()
}

/// Middleware for every console page but the login form: identifies the session from the
/// cookie (or redirects to the login form), and on POST reads the form, refuses it without
/// the session's CSRF token, and hands it to the handler as [`FormData`].
pub async fn require_session(
    State(state): State<AppState>,
    Extension(keys): Extension<Arc<Keys>>,
    req: Request,
    next: Next,
) -> Response {
    let (secret, session) = if state.tokens.is_empty() {
        let session = Session {
            actor: "console".into(),
            scope: Scope::Admin,
            csrf: keys.csrf(None),
            signed_in: false,
        };
        (None, session)
    } else {
        let Some(secret) = cookie_secret(&req) else {
            return to_login(&req);
        };
        let Some(token) = state.tokens.find(&secret) else {
            // A token removed from the configuration: sign out rather than loop.
            let mut res = to_login(&req);
            res.headers_mut()
                .insert(header::SET_COOKIE, HeaderValue::from_static(CLEAR_COOKIE));
            return res;
        };
        let session = Session {
            actor: token.name.clone(),
            scope: token.scope,
            csrf: keys.csrf(Some(&secret)),
            signed_in: true,
        };
        (Some(secret), session)
    };
    let (mut parts, body) = req.into_parts();
    let mut form = FormData::default();
    let mut bytes = Bytes::new();
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        if foreign_origin(&Request::from_parts(parts.clone(), Body::empty())) {
            return forbidden("this form was posted from another site");
        }
        bytes = match axum::body::to_bytes(body, crate::BODY_LIMIT).await {
            Ok(b) => b,
            Err(_) => {
                return UiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large")
                    .into_response();
            }
        };
        form = FormData::parse(&bytes);
        let presented = form.get("csrf").unwrap_or_default();
        if !keys.csrf_ok(secret.as_deref(), presented) {
            return forbidden(
                "the form's security token is missing or stale: reload the page and try again",
            );
        }
        // refused, not stored with a replacement character, as the api refuses it
        if let Some(field) = FormData::nul_field(&bytes) {
            return UiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("{field}: must not contain a NUL character"),
            )
            .into_response();
        }
    }
    parts.extensions.insert(session);
    parts.extensions.insert(form);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Middleware for the console's actions: an admin token is needed (read tokens only look).
pub async fn require_admin(
    Extension(session): Extension<Session>,
    req: Request,
    next: Next,
) -> Response {
    if session.scope < Scope::Admin {
        return forbidden(&format!(
            "token {:?} has read scope; this action needs an admin token",
            session.actor
        ));
    }
    next.run(req).await
}

/// Clears the cookie.
const CLEAR_COOKIE: &str = "escalator_console=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0";

/// Only console paths are followed after login (no open redirect), made of what a Location
/// header can carry: a control character in `next` (a crafted link's `%0A`) answered the
/// login with a bare 500 that still set the cookie. Dot segments are refused, encoded or not:
/// the browser resolves `/ui/../api/v1/…` out of the console before following it.
fn safe_next(next: Option<&str>) -> String {
    let console = |n: &str| {
        let path = n.split(['?', '#']).next().unwrap_or_default();
        (path == "/ui" || path.starts_with("/ui/"))
            && !path.contains("/.")
            && !path.to_ascii_lowercase().contains("%2e")
            && !n.contains('\\')
            && n.bytes().all(|b| b.is_ascii_graphic())
    };
    match next {
        Some(n) if console(n) => n.into(),
        _ => "/ui".into(),
    }
}

/// Whether the login form was posted over HTTPS (its page's origin, or a TLS-terminating
/// proxy's `X-Forwarded-Proto`): the cookie, which holds the token itself, is then `Secure`
/// and never goes out over plain HTTP. Over plain HTTP (a local try-out) a `Secure` cookie
/// would be dropped by the browser, and signing in would fail.
fn posted_over_https(headers: &axum::http::HeaderMap) -> bool {
    let value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    value("origin").starts_with("https://")
        || value("x-forwarded-proto")
            .split(',')
            .next()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"))
}

fn login_page(status: StatusCode, next: &str, error: Option<&str>) -> Response {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        form.bar method="post" action="/ui/login" {
            input type="hidden" name="next" value=(next);
            label { "API token" input type="password" name="token" autocomplete="current-password" required autofocus; }
            button type="submit" { "Sign in" }
        }
        p.muted { "Use a token configured in ESCALATOR_API_TOKENS. Read tokens can look; admin tokens can also act." }
    };
    (status, page("Sign in", Nav::None, None, None, body)).into_response()
}

/// `GET /ui/login`: the login form (straight to the overview when authentication is off).
pub async fn login_form(State(state): State<AppState>, req: Request) -> Response {
    if state.tokens.is_empty() {
        return Redirect::to("/ui").into_response();
    }
    let next = req
        .uri()
        .query()
        .map(FormData::parse_str)
        .and_then(|f| f.get("next").map(str::to_owned));
    login_page(StatusCode::OK, &safe_next(next.as_deref()), None)
}

/// `POST /ui/login`: checks the token and sets the cookie; 401 with the form again otherwise.
pub async fn login(State(state): State<AppState>, req: Request) -> Response {
    if foreign_origin(&req) {
        return forbidden("this form was posted from another site");
    }
    let secure = if posted_over_https(req.headers()) {
        "; Secure"
    } else {
        ""
    };
    let Ok(bytes) = axum::body::to_bytes(req.into_body(), crate::BODY_LIMIT).await else {
        return UiError::new(StatusCode::PAYLOAD_TOO_LARGE, "the form is too large")
            .into_response();
    };
    let form = FormData::parse(&bytes);
    let next = safe_next(form.get("next"));
    let presented = form.get("token").unwrap_or_default().trim();
    if state.tokens.find(presented).is_none() {
        return login_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That token is not accepted here."),
        );
    }
    let cookie = format!(
        "{COOKIE}={}; Path=/ui; HttpOnly; SameSite=Strict{secure}",
        URL_SAFE_NO_PAD.encode(presented)
    );
    let mut res = Redirect::to(&next).into_response();
    match HeaderValue::from_str(&cookie) {
        Ok(v) => {
            res.headers_mut().insert(header::SET_COOKIE, v);
            res
        }
        Err(_) => UiError::new(
            StatusCode::BAD_REQUEST,
            "that token cannot be kept in a cookie",
        )
        .into_response(),
    }
}

/// `POST /ui/logout`: clears the cookie.
pub async fn logout() -> Response {
    let mut res = Redirect::to("/ui/login").into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, HeaderValue::from_static(CLEAR_COOKIE));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csrf_tokens_belong_to_one_secret() {
        let keys = Keys::new();
        let a = keys.csrf(Some("0123456789abcdef"));
        assert!(keys.csrf_ok(Some("0123456789abcdef"), &a));
        assert!(!keys.csrf_ok(Some("fedcba9876543210"), &a));
        assert!(!keys.csrf_ok(None, &a));
        assert!(!keys.csrf_ok(Some("0123456789abcdef"), "garbage!"));
        let anon = keys.csrf(None);
        assert!(keys.csrf_ok(None, &anon));
        assert!(!Keys::new().csrf_ok(None, &anon));
    }

    #[test]
    fn only_console_paths_are_followed_after_login() {
        assert_eq!(safe_next(Some("/ui/workflows?q=a")), "/ui/workflows?q=a");
        assert_eq!(safe_next(Some("https://evil.example")), "/ui");
        assert_eq!(safe_next(Some("//evil.example")), "/ui");
        assert_eq!(safe_next(None), "/ui");
        assert_eq!(safe_next(Some("/ui?page=2")), "/ui?page=2");
        for out_of_the_console in [
            "/ui/../api/v1/workflows",
            "/ui/./../metrics",
            "/ui/%2e%2e/api/v1/workflows",
            "/ui/%2E./metrics",
            "/uiother",
        ] {
            assert_eq!(
                safe_next(Some(out_of_the_console)),
                "/ui",
                "{out_of_the_console}"
            );
        }
    }
}
