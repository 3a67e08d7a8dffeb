//! escalator's notification delivery: senders per channel, and the loop that drains the
//! outbox — each row sent once per idempotency key, failures retried with backoff, permanent
//! ones dead and visible.

pub mod deliver;
pub mod email;
pub mod http;
pub mod template;

pub use deliver::{Deliverer, DeliveryReport, MIN_LEASE, lease_for, retry_delay};
pub use email::Mailer;
pub use http::{
    HttpChannels, HttpConfig, SLACK_USER_WEBHOOKS, SendGridConfig, TwilioConfig, WebhookConfig,
};
pub use template::Templates;

/// How a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotifyError {
    /// Worth retrying: timeouts, connection failures, 4xx-temporary and 5xx from providers.
    #[error("transient: {0}")]
    Transient(String),
    /// Transient, and the provider said when to come back (HTTP 429/503 with Retry-After).
    #[error("transient: {error} (retry after {} s)", after.as_secs())]
    Throttled {
        /// What the provider answered.
        error: String,
        /// Its Retry-After.
        after: std::time::Duration,
    },
    /// Retrying cannot help: invalid address, rejected message.
    #[error("permanent: {0}")]
    Permanent(String),
    /// A sender is misconfigured.
    #[error("{0}")]
    Config(String),
}
