//! The one error type of the api and its JSON shape: `{"error": {"code", "message", "field"?}}`.
//! 4xx carry a safe message and the offending field; 5xx log the whole chain and return a
//! generic body, so no internal detail (SQL, hostnames) ever reaches a client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use escalator_jobs::QueueError;
use escalator_store::StoreError;
use serde::Serialize;

/// Everything a handler can answer with instead of its result.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A 4xx: the client can fix the request.
    #[error("{message}")]
    Client {
        /// HTTP status (4xx).
        status: StatusCode,
        /// Stable machine-readable code, e.g. `not_found`.
        code: &'static str,
        /// Human-readable explanation, safe to show.
        message: String,
        /// The request field (body key, query parameter, path segment or header) at fault.
        field: Option<String>,
    },
    /// A dependency is down: 503, with a message naming it but no detail.
    #[error("{what} unavailable")]
    Unavailable {
        /// "database" or "queue".
        what: &'static str,
        /// The cause, logged only.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bug or unexpected failure: 500, logged with its chain.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A 4xx error.
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Client {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// A 400 about one field.
    pub fn bad_request(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::client(StatusCode::BAD_REQUEST, "bad_request", message).with_field(field)
    }

    /// A 400 about one query parameter: `bad_query`, whatever found it (the parser, a range
    /// or a length check), so a client can tell its query from its path or headers.
    pub fn bad_query(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::client(StatusCode::BAD_REQUEST, "bad_query", message).with_field(field)
    }

    /// A 400 for an invalid value in the path (a bad address, not a bad body).
    pub fn bad_request_from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid { field, message } => ApiError::bad_request(field, message),
            other => other.into(),
        }
    }

    /// A 400 for an invalid value in the query.
    pub fn bad_query_from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid { field, message } => ApiError::bad_query(field, message),
            other => other.into(),
        }
    }

    /// A 422 about one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::client(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message).with_field(field)
    }

    /// A 404 for an entity.
    pub fn not_found(entity: &str, id: impl std::fmt::Display) -> Self {
        ApiError::client(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{entity} {id} not found"),
        )
    }

    /// Names the field at fault (4xx only; ignored otherwise).
    pub fn with_field(mut self, name: impl Into<String>) -> Self {
        if let ApiError::Client { field, .. } = &mut self {
            *field = Some(name.into());
        }
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Client { status, .. } => *status,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { entity, id } => ApiError::not_found(entity, id),
            StoreError::VersionConflict { .. } => ApiError::client(
                StatusCode::PRECONDITION_FAILED,
                "version_conflict",
                e.to_string(),
            )
            .with_field("expected_version"),
            StoreError::ExternalIdConflict { field, .. } => {
                ApiError::client(StatusCode::CONFLICT, "external_id_conflict", e.to_string())
                    .with_field(field)
            }
            StoreError::Invalid { field, ref message } => ApiError::invalid(field, message.clone()),
            StoreError::InvalidSpec(e) => ApiError::invalid(format!("spec.{}", e.field), e.message),
            StoreError::InvalidTransition { .. } => {
                ApiError::client(StatusCode::CONFLICT, "invalid_transition", e.to_string())
            }
            e if e.is_transient() => ApiError::Unavailable {
                what: "database",
                source: Box::new(e),
            },
            e => ApiError::Internal(Box::new(e)),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Redis(_)
            | QueueError::Sqlite(_)
            | QueueError::Backlogged { .. }
            | QueueError::TimedOut(_) => ApiError::Unavailable {
                what: "queue",
                source: Box::new(e),
            },
            QueueError::Unretryable { .. } => {
                ApiError::client(StatusCode::CONFLICT, "unretryable", e.to_string())
                    .with_field("id")
            }
            e => ApiError::Internal(Box::new(e)),
        }
    }
}

/// The error body every non-2xx answer carries (the OpenAPI schema of [`Body`]).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `invalid`, `version_conflict`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The body key, query parameter, path segment or header at fault, when there is one.
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

/// The `{"error": ...}` JSON response for a status, code, message and field.
pub fn error_response(
    status: StatusCode,
    code: &str,
    message: &str,
    field: Option<&str>,
) -> Response {
    let body = Body {
        error: Detail {
            code,
            message,
            field,
        },
    };
    (status, axum::Json(body)).into_response()
}

/// The error chain as one line, for logs.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Client {
                status,
                code,
                message,
                field,
            } => error_response(*status, code, message, field.as_deref()),
            ApiError::Unavailable { what, source } => {
                tracing::warn!(error = %chain(source.as_ref()), "{what} unavailable");
                error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    &format!("the {what} is unavailable; retry later"),
                    None,
                )
            }
            ApiError::Internal(source) => {
                tracing::error!(error = %chain(source.as_ref()), "request failed");
                error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the server log has the details",
                    None,
                )
            }
        }
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;
