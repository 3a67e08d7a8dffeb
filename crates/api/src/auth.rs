//! Bearer-token authentication for `/api/v1`: named tokens with a read or admin scope. Reads
//! (GET, HEAD) need any token, everything else an admin token; with no token configured the
//! api is open (the CLI refuses to expose such an api beyond loopback).

use std::fmt;
use std::str::FromStr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// GET and HEAD only.
    Read,
    /// Everything.
    Admin,
}

impl FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("scope {other:?}: expected read or admin")),
        }
    }
}

/// One configured token.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    /// Who uses it; recorded as the actor of the changes it makes.
    pub name: String,
    /// The secret.
    pub secret: String,
    /// What it may do.
    pub scope: Scope,
}

// Hand-written so the secret never reaches a log line.
impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("name", &self.name)
            .field("secret", &"***")
            .field("scope", &self.scope)
            .finish()
    }
}

/// Tokens shorter than this are refused: they could be guessed.
pub const MIN_SECRET_LEN: usize = 16;

/// The configured tokens; empty means authentication is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens(Vec<ApiToken>);

impl Tokens {
    /// No authentication.
    pub fn none() -> Self {
        Tokens(Vec::new())
    }

    /// These tokens.
    pub fn new(tokens: Vec<ApiToken>) -> Self {
        Tokens(tokens)
    }

    /// Whether authentication is off.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses `name:secret:scope` entries separated by commas (the secret may contain `:`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut tokens: Vec<ApiToken> = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let shape = || "expected name:token:scope entries, e.g. ci:s3cr3t-of-16+chars:admin";
            let (name, rest) = entry.split_once(':').ok_or_else(shape)?;
            let (secret, scope) = rest.rsplit_once(':').ok_or_else(shape)?;
            // the word after the last `:` is named only when it looks like a mistyped scope
            // (a short word of letters): a token without its scope would have its secret's
            // tail printed
            let scope: Scope = scope.parse().map_err(|e: String| {
                if scope.len() <= 8 && scope.bytes().all(|b| b.is_ascii_alphabetic()) {
                    format!("the token of {name:?}: {e}")
                } else {
                    format!("the token of {name:?} does not end in :read or :admin")
                }
            })?;
            if name.is_empty() {
                return Err("a token has an empty name".into());
            }
            if secret.chars().count() < MIN_SECRET_LEN {
                return Err(format!(
                    "the token of {name:?} is shorter than {MIN_SECRET_LEN} characters"
                ));
            }
            // the deployment's placeholder Secret: long enough, and published
            if secret.to_ascii_uppercase().contains("REPLACE-ME") {
                return Err(format!(
                    "the token of {name:?} is a placeholder (REPLACE-ME…): set a secret of your own"
                ));
            }
            if tokens.iter().any(|t| t.name == name || t.secret == secret) {
                return Err(format!("{name:?} is configured twice (name or token)"));
            }
            tokens.push(ApiToken {
                name: name.to_owned(),
                secret: secret.to_owned(),
                scope,
            });
        }
        Ok(Tokens(tokens))
    }

    /// The token matching `presented`, compared in constant time against every token.
    pub(crate) fn find(&self, presented: &str) -> Option<&ApiToken> {
        let mut found = None;
        for t in &self.0 {
            if constant_time_eq(t.secret.as_bytes(), presented.as_bytes()) {
                found = Some(t);
            }
        }
        found
    }
}

/// Equality whose time does not depend on where the inputs differ (only on their lengths).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who made the request: the token's name, or "api" when authentication is off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

fn unauthorized(message: &str) -> Response {
    let mut res = ApiError::client(StatusCode::UNAUTHORIZED, "unauthorized", message)
        .with_field("Authorization")
        .into_response();
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    res
}

/// Middleware: checks the bearer token against the scope the method needs and records the
/// [`Actor`] in the request extensions.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if state.tokens.is_empty() {
        req.extensions_mut().insert(Actor("api".into()));
        req.extensions_mut().insert(Scope::Admin);
        return next.run(req).await;
    }
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return unauthorized("missing Authorization: Bearer <token>");
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = presented.and_then(|p| state.tokens.find(p)) else {
        return unauthorized("invalid bearer token");
    };
    let needed = if matches!(*req.method(), Method::GET | Method::HEAD) {
        Scope::Read
    } else {
        Scope::Admin
    };
    if token.scope < needed {
        return ApiError::client(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "token {:?} has read scope; this request needs admin",
                token.name
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Actor(token.name.clone()));
    req.extensions_mut().insert(token.scope);
    next.run(req).await
}

/// Whether the request comes from a page of another origin: its `Origin` does not name the
/// host the request was sent to (`Host`, or `X-Forwarded-Host` when a reverse proxy rewrote
/// it). No `Origin` (scripts, old browsers) is not foreign.
pub(crate) fn foreign_origin(headers: &HeaderMap) -> bool {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let Some(origin) = header(header::ORIGIN) else {
        return false;
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    let forwarded = header(header::HeaderName::from_static("x-forwarded-host"))
        .and_then(|v| v.split(',').next())
        .map(str::trim);
    let host = header(header::HOST);
    !(host.is_some_and(|h| h.eq_ignore_ascii_case(origin_host))
        || forwarded.is_some_and(|h| h.eq_ignore_ascii_case(origin_host)))
}

/// Middleware for an api without tokens (`escalator dev`, a loopback api): anybody who can
/// reach it may use it, and a web page in the user's browser can reach it too. A page of another
/// site could write to it with a "simple" request (a POST without a JSON content type needs no
/// CORS preflight), and one reaching it through DNS rebinding could read it as well. So, with
/// no tokens, writes from another site's page are refused (`Sec-Fetch-Site`, `Origin`) and, on
/// loopback ([`AppState::answering_only_to_localhost`]), any request naming another host.
/// Scripts (curl, the CLI) send neither header and are not affected.
///
/// With tokens, an api given `ESCALATOR_API_ALLOWED_HOSTS` answers its data and console routes
/// only to those hosts and local ones: a page reaching it by DNS rebinding could otherwise use
/// a token it knows (docker-compose's published default one). Probes and metrics answer to
/// any Host (the kubelet names the pod's address).
pub async fn guard_unauthenticated(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if !state.tokens.is_empty() {
        if let Some(allowed) = state.local_only.as_deref().filter(|_| host_guarded(&req))
            && let Some(host) = foreign_host(req.headers(), allowed)
        {
            let why = format!(
                "this api answers only to localhost and ESCALATOR_API_ALLOWED_HOSTS, not to \
                 Host {host:?} (a page of another site reaching it by DNS rebinding could use a \
                 token it knows); add the name to ESCALATOR_API_ALLOWED_HOSTS if it is yours"
            );
            return ApiError::client(StatusCode::FORBIDDEN, "forbidden", why).into_response();
        }
        return next.run(req).await;
    }
    let local_only = state.local_only.as_deref().filter(|_| host_guarded(&req));
    match refused_without_tokens(req.method(), req.headers(), local_only) {
        Some(why) => ApiError::client(StatusCode::FORBIDDEN, "forbidden", why).into_response(),
        None => next.run(req).await,
    }
}

fn refused_without_tokens(
    method: &Method,
    headers: &HeaderMap,
    local_only: Option<&Vec<String>>,
) -> Option<String> {
    if let Some(also) = local_only
        && let Some(host) = foreign_host(headers, also)
    {
        return Some(format!(
            "this api has no tokens and answers only to localhost, not to Host {host:?} \
             (a page of another site reaching it by DNS rebinding); behind a proxy or \
             tunnel that keeps this name, add it to ESCALATOR_API_ALLOWED_HOSTS, or set \
             ESCALATOR_API_TOKENS"
        ));
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let site = headers
        .get(header::HeaderName::from_static("sec-fetch-site"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
        return Some(format!(
            "a write from a page of another site (Sec-Fetch-Site: {site}) is refused by an \
             api without tokens"
        ));
    }
    if foreign_origin(headers) {
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        return Some(format!(
            "a write from a page of {origin:?} is refused by an api without tokens: it takes \
             writes from its own pages and from scripts"
        ));
    }
    None
}

/// Whether the Host of this request is checked: the data and console routes. Probes and
/// metrics answer to any (the kubelet names the pod's address, and they hold nothing a page
/// could use).
fn host_guarded(req: &Request) -> bool {
    let path = req.uri().path();
    !matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/api/v1/metrics/prometheus"
    )
}

/// The request's Host when it is neither local nor one of `also`.
fn foreign_host(headers: &HeaderMap, also: &[String]) -> Option<String> {
    let host = String::from_utf8_lossy(headers.get(header::HOST)?.as_bytes()).into_owned();
    (!is_local_host(&host) && !also.contains(&host_name(&host))).then_some(host)
}

/// `localhost`, a `*.localhost` name, a 127.0.0.0/8 address or `[::1]` (or its IPv4-mapped
/// form), with or without a port or a trailing dot.
fn is_local_host(host: &str) -> bool {
    let name = host_name(host);
    name == "localhost"
        || name.ends_with(".localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| match ip {
            std::net::IpAddr::V6(v6) => {
                v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
            v4 => v4.is_loopback(),
        })
}

/// The name of a Host header: without its port, brackets or trailing dot, in lower case.
fn host_name(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_names_are_local_hosts() {
        for local in [
            "localhost",
            "LOCALHOST:5000",
            "app.localhost:8080",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "[::1]:5000",
            "[::1]",
            "localhost.:5000",
            "[::ffff:127.0.0.1]:5000",
        ] {
            assert!(is_local_host(local), "{local}");
        }
        for foreign in [
            "evil.example",
            "evil.example:5000",
            "localhost.evil.example",
            "10.0.0.1:5000",
            "[::2]:5000",
            "",
            "127.0.0.1.evil.example",
        ] {
            assert!(!is_local_host(foreign), "{foreign}");
        }
    }

    #[test]
    fn tokens_parse_names_secrets_and_scopes() {
        let t = Tokens::parse("ci:0123456789abcdef:admin, grafana:ab:cd:0123456789abcdef:read")
            .unwrap();
        assert_eq!(t.0.len(), 2);
        assert_eq!(t.0[1].secret, "ab:cd:0123456789abcdef");
        assert_eq!(t.0[1].scope, Scope::Read);
        assert_eq!(
            t.find("0123456789abcdef").map(|t| t.name.as_str()),
            Some("ci")
        );
        assert!(t.find("0123456789abcdeX").is_none());
        assert!(Tokens::parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_token_lists_are_refused_with_a_reason() {
        assert!(
            Tokens::parse("ci")
                .unwrap_err()
                .contains("name:token:scope")
        );
        assert!(
            Tokens::parse("ci:short:admin")
                .unwrap_err()
                .contains("shorter")
        );
        assert!(
            Tokens::parse("ci:0123456789abcdef:root")
                .unwrap_err()
                .contains("scope \"root\"")
        );
        // a secret with a `:` and no scope: its tail is not printed as the scope
        for secret_tail in ["ci:Zx81:kP0-9mQwLrT5vY2n", "ci:Zx81Ab:kP0-9mQw"] {
            let e = Tokens::parse(secret_tail).unwrap_err();
            assert!(!e.contains("kP0"), "{e}");
            assert!(e.contains(":read or :admin"), "{e}");
        }
        assert!(
            Tokens::parse("a:0123456789abcdef:read,a:fedcba9876543210:admin")
                .unwrap_err()
                .contains("twice")
        );
        // the placeholder Secret's token is long enough, and published in the repository
        assert!(
            Tokens::parse("ops:REPLACE-ME-admin-token-0000:admin")
                .unwrap_err()
                .contains("placeholder")
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let t = Tokens::parse("ci:0123456789abcdef:admin").unwrap();
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }
}
