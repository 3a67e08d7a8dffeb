//! Request parsing at the boundary: JSON bodies, query strings and path ids become typed values
//! or a 4xx in our JSON error shape that names the field — never axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ApiResult};

/// A JSON request body that must be present.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// A JSON request body that may be absent (an empty body means `T::default()`).
#[derive(Debug)]
pub struct OptionalJsonBody<T>(pub T);

/// The query string, parsed into `T` (absent means empty).
#[derive(Debug)]
pub struct QueryParams<T>(pub T);

/// Reads the body within the body limit, refusing non-JSON content types.
async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> ApiResult<Bytes> {
    if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or_default().to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or_default().trim();
        if essence != "application/json" && !essence.ends_with("+json") {
            return Err(ApiError::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected Content-Type: application/json, got {essence:?}"),
            )
            .with_field("Content-Type"));
        }
    }
    Bytes::from_request(req, state).await.map_err(|r| {
        let status = r.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::client(
                status,
                "payload_too_large",
                format!("request body larger than {} bytes", crate::BODY_LIMIT),
            )
        } else {
            ApiError::client(StatusCode::BAD_REQUEST, "bad_request", r.body_text())
        }
    })
}

/// The name between the first pair of backticks of a serde message ("unknown field `x`").
fn quoted_name(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// The field a serde error is about: its path (which ends with the key of an unknown field),
/// plus the key of a missing or repeated field (both reported at their parent's path).
fn field_of(path: &str, message: &str) -> Option<String> {
    let path = if path == "." { "" } else { path };
    let key = if message.starts_with("missing field") || message.starts_with("duplicate field") {
        quoted_name(message)
    } else {
        None
    };
    match (path, key) {
        ("", None) => None,
        ("", Some(k)) => Some(k.to_owned()),
        (p, None) => Some(p.to_owned()),
        (p, Some(k)) => Some(format!("{p}.{k}")),
    }
}

/// Parses a JSON document into `T`, mapping syntax errors to 400 and shape errors (unknown
/// or missing fields, wrong types) to 422 naming the field. A NUL character (`\u0000`) in any
/// string is refused with 422 naming where it is, as in a query parameter: no stored text can
/// hold one.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    // only a document with the escape can hold a NUL (JSON strings cannot carry a raw one)
    if bytes.windows(6).any(|w| w == b"\\u0000")
        && let Ok(doc) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(at) = nul_at(&doc, String::new())
    {
        return Err(ApiError::invalid(at, "must not contain a NUL character"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed: Result<T, (String, serde_json::Error)> =
        match serde_path_to_error::deserialize(&mut de) {
            // Trailing characters after the document are a syntax error too.
            Ok(v) => de.end().map(|()| v).map_err(|e| (String::new(), e)),
            Err(e) => Err((e.path().to_string(), e.into_inner())),
        };
    parsed.map_err(|(path, inner)| match inner.classify() {
        serde_json::error::Category::Data => {
            let message = time_hint(json_terms(&inner.to_string()), &path);
            ApiError::Client {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                code: "invalid",
                field: field_of(&path, &message),
                message,
            }
        }
        _ => ApiError::client(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("malformed JSON: {inner}"),
        ),
    })
}

/// serde's words for a JSON object where its type names leak ("expected struct CreateWorkflow
/// with 10 elements", said of an array) in the words of the API's documents.
fn json_terms(message: &str) -> String {
    const STRUCT: &str = "expected struct ";
    let Some(at) = message.find(STRUCT) else {
        return message.to_owned();
    };
    let rest = &message[at + STRUCT.len()..];
    let name = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    let mut rest = &rest[name..];
    // " with 10 elements" (a sequence's length, meaningless for an object)
    if let Some(after) = rest.strip_prefix(" with ")
        && let Some(end) = after.find(" element")
        && after[..end].bytes().all(|b| b.is_ascii_digit())
    {
        let after = &after[end + " element".len()..];
        rest = after.strip_prefix('s').unwrap_or(after);
    }
    json_terms(&format!("{}expected a JSON object{rest}", &message[..at]))
}

/// A time that does not parse fails with chrono's words alone ("premature end of input": a
/// time without its UTC offset reads as a body cut short): say what a time looks like, or a
/// date where the field (at `path`) holds dates (a calendar's `holidays`).
fn time_hint(message: String, path: &str) -> String {
    const CHRONO: [&str; 5] = [
        "premature end of input",
        "input contains invalid characters",
        "input is out of range",
        "trailing input",
        "input is not enough for unique date and time",
    ];
    if !CHRONO.iter().any(|c| message.starts_with(c)) {
        message
    } else if path.starts_with("holidays[") {
        format!("{message}: expected a date, such as 2026-12-25")
    } else {
        format!(
            "{message}: expected an RFC 3339 time with its UTC offset, such as 2026-11-25T12:00:00Z"
        )
    }
}

/// Every request body is a JSON object. serde also reads a struct from an array of its field
/// values in order, so `["T-1", "Title", …]` created a workflow: refused before parsing.
fn object_body(bytes: &[u8]) -> ApiResult<()> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(ApiError::Client {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid",
            field: None,
            message: "the request body must be a JSON object ({\"field\": value, …})".into(),
        }),
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::client(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                "the request body is empty; expected a JSON object",
            ));
        }
        object_body(&bytes)?;
        parse_json(&bytes).map(JsonBody)
    }
}

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(T::default()));
        }
        object_body(&bytes)?;
        parse_json(&bytes).map(OptionalJsonBody)
    }
}

/// The path (`a.b[0]`) of the first string, or key, in `v` that holds a NUL character.
fn nul_at(v: &serde_json::Value, at: String) -> Option<String> {
    let child = |key: &str| {
        if at.is_empty() {
            key.to_owned()
        } else {
            format!("{at}.{key}")
        }
    };
    match v {
        serde_json::Value::String(text) => text.contains('\0').then_some(at),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_at(item, format!("{at}[{i}]"))),
        serde_json::Value::Object(fields) => fields.iter().find_map(|(key, value)| {
            if key.contains('\0') {
                Some(child(&key.replace('\0', "\\u0000")))
            } else {
                nul_at(value, child(key))
            }
        }),
        _ => None,
    }
}

/// Parses a query string into `T`, naming the parameter at fault.
/// A NUL character is refused in any parameter: no stored text can hold one (PostgreSQL
/// rejects it), so it can only be bad input.
pub fn parse_query<T: DeserializeOwned>(query: &str) -> ApiResult<T> {
    if let Some((name, _)) =
        form_urlencoded::parse(query.as_bytes()).find(|(_, value)| value.contains('\0'))
    {
        return Err(ApiError::bad_query(
            name.into_owned(),
            "must not contain a NUL character",
        ));
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let mut message = time_hint(e.inner().to_string(), &path);
        // a `+` in a query string reads as a space: `due_before=…T00:00:00+01:00` arrived as
        // "…T00:00:00 01:00" and was refused with no word of why
        let spaced = form_urlencoded::parse(query.as_bytes())
            .any(|(name, value)| name == path.as_str() && value.contains(' '));
        if spaced && message.contains("RFC 3339") {
            message.push_str(" (a + in a query string reads as a space: write it %2B)");
        }
        ApiError::Client {
            status: StatusCode::BAD_REQUEST,
            code: "bad_query",
            field: field_of(&path, &message),
            message,
        }
    })
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or_default()).map(QueryParams)
    }
}

/// Path parameters; a malformed path (e.g. invalid percent-encoding) is a 400 in our shape.
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // a NUL can only arrive percent-encoded; no stored text can hold one
        if parts.uri.path().contains("%00") {
            return Err(ApiError::bad_request(
                "path",
                "must not contain a NUL character",
            ));
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(PathParams(v)),
            // A 5xx rejection means the route and the extractor disagree: a bug, not input.
            Err(r) if r.status().is_server_error() => Err(ApiError::Internal(r.body_text().into())),
            Err(r) => Err(ApiError::bad_request("path", r.body_text())),
        }
    }
}

/// The workflow a path names: its id, or else its `external_id` (a caller keeps its own ids,
/// and had to store ours as well to act on a workflow it created; a uuid that is no workflow's
/// id is looked up as an external id, since callers often use uuids as their own ids). 400
/// naming `id` when it is empty or longer than an identifier can be, 404 when nothing has it.
pub async fn workflow_named(
    store: &escalator_store::Store,
    raw: &str,
) -> ApiResult<escalator_store::Workflow> {
    path_id(raw)?;
    Ok(store.find_workflow(raw).await?)
}

/// An id in the path: 400 naming `id` when no identifier could be it (empty, or longer than
/// any that is stored), as a write says, rather than a 404 for what cannot exist.
pub fn path_id(id: &str) -> ApiResult<()> {
    escalator_store::logic::check_id("id", id).map_err(ApiError::bad_request_from)
}

/// Parses a numeric id (check runs, notifications) from the path: 400 naming `id` otherwise.
pub fn numeric_id(raw: &str) -> ApiResult<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_request("id", format!("{raw:?} is not a positive integer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        title: String,
        n: Option<i32>,
    }

    fn field(e: ApiError) -> (StatusCode, Option<String>) {
        match e {
            ApiError::Client { status, field, .. } => (status, field),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn serde_type_names_become_json_objects() {
        assert_eq!(
            json_terms(
                "invalid length 0, expected struct CreateWorkflow with 10 elements at line 1 column 2"
            ),
            "invalid length 0, expected a JSON object at line 1 column 2"
        );
        assert_eq!(
            json_terms("invalid type: integer `5`, expected struct Level"),
            "invalid type: integer `5`, expected a JSON object"
        );
        assert_eq!(
            json_terms("expected struct A with 1 element, or expected struct B_2"),
            "expected a JSON object, or expected a JSON object"
        );
        assert_eq!(json_terms("missing field `title`"), "missing field `title`");
        assert!(
            time_hint("premature end of input at line 1 column 9".into(), "as_of")
                .contains("RFC 3339")
        );
        // a calendar's holidays are dates: the time's hint sent users to what is refused too
        let holiday = time_hint("trailing input at line 1 column 9".into(), "holidays[0]");
        assert!(
            holiday.ends_with("expected a date, such as 2026-12-25"),
            "{holiday}"
        );
        assert_eq!(
            time_hint("missing field `as_of`".into(), "as_of"),
            "missing field `as_of`"
        );
        assert!(object_body(b"  {}").is_ok());
        for not_an_object in [&b"[]"[..], b"[\"T-1\"]", b"\"x\"", b"3", b"null"] {
            let e = object_body(not_an_object).unwrap_err();
            assert_eq!(field(e).0, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }

    #[test]
    fn json_errors_name_the_field() {
        let e = parse_json::<Body>(br#"{"title":"x","colour":1}"#).unwrap_err();
        assert_eq!(
            field(e),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("colour".into()))
        );
        let e = parse_json::<Body>(br#"{"n":1}"#).unwrap_err();
        assert_eq!(
            field(e),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("title".into()))
        );
        let e = parse_json::<Body>(br#"{"title":"x","n":"two"}"#).unwrap_err();
        assert_eq!(
            field(e),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("n".into()))
        );
        // a key given twice: which one was meant is unknowable, so it is named and refused
        let e = parse_json::<Body>(br#"{"title":"x","n":1,"title":"y"}"#).unwrap_err();
        assert_eq!(
            field(e),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("title".into()))
        );
        let e = parse_json::<Body>(br#"{"title":"#).unwrap_err();
        assert_eq!(field(e).0, StatusCode::BAD_REQUEST);
        let e = parse_json::<Body>(br#"{"title":"x"} trailing"#).unwrap_err();
        assert_eq!(field(e).0, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn query_errors_name_the_parameter() {
        let e = parse_query::<Body>("title=x&n=lots").unwrap_err();
        assert_eq!(field(e), (StatusCode::BAD_REQUEST, Some("n".into())));
        let e = parse_query::<Body>("title=x&bogus=1").unwrap_err();
        assert_eq!(field(e), (StatusCode::BAD_REQUEST, Some("bogus".into())));
        // found by fuzzing: a NUL reached PostgreSQL and came back as a 500
        let e = parse_query::<Body>("title=a%00b&n=1").unwrap_err();
        assert_eq!(field(e), (StatusCode::BAD_REQUEST, Some("title".into())));
    }

    #[test]
    fn a_nul_anywhere_in_a_body_is_refused_naming_where() {
        // found by fuzzing: `PUT /users/{id}` with a NUL in `manager_id` was a 500
        let e = parse_json::<Body>(br#"{"title": "a\u0000b", "n": 1}"#).unwrap_err();
        assert_eq!(
            field(e),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("title".into()))
        );
        let e = parse_json::<serde_json::Value>(br#"{"a": {"b": ["ok", "x\u0000"]}}"#).unwrap_err();
        assert_eq!(
            field(e),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("a.b[1]".into()))
        );
        let e = parse_json::<serde_json::Value>(br#"{"k\u0000": 1}"#).unwrap_err();
        assert_eq!(
            field(e),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("k\\u0000".into()))
        );
        // an escaped backslash before "u0000" is text, not a NUL
        let ok = parse_json::<Body>(br#"{"title": "a\\u0000", "n": 1}"#).unwrap();
        assert_eq!(ok.title, "a\\u0000");
    }
}
