//! The one error type of the crate: a validation failure that names the offending field.

/// Validation error naming the field.
///
/// `field` uses the path of the offending value in the spec (`"levels[1].target"`), so that the
/// API can return it to the caller as-is in a 4xx body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// Path of the invalid value, e.g. `"windows[0].end"`.
    pub field: String,
    /// Human-readable reason, safe to show to the caller.
    pub message: String,
}

impl PolicyError {
    /// An error for `field` with `message`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
