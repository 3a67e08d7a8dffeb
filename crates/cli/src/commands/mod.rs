//! One module per subcommand.

pub mod api;
pub mod beat;
pub mod check;
pub mod dev;
pub mod enqueue;
pub mod jobs;
pub mod migrate;
pub mod outbox;
pub mod seed;
pub mod status;
pub mod verify;
pub mod worker;

use anyhow::Context as _;
use escalator_store::{Store, StoreConfig, redact};

/// Connects to the database named by `url`, with an error that names the variable.
pub async fn connect(url: &str) -> anyhow::Result<Store> {
    let config = StoreConfig::new(url);
    config.backend().context("DATABASE_URL")?;
    Store::connect(&config)
        .await
        .with_context(|| format!("cannot connect to DATABASE_URL={}", redact(url)))
}

/// Connects to the queue backend, with an error that names the variable.
pub async fn connect_queues(
    config: &crate::config::QueueConfig,
) -> anyhow::Result<escalator_jobs::Queues> {
    escalator_jobs::Queues::connect(
        &config.url,
        escalator_jobs::QueueNames::new(&config.namespace),
    )
    .await
    .with_context(|| format!("cannot connect to the queue at {}", redact(&config.url)))
}

/// Parses an RFC 3339 instant for `--as-of`/`--now`.
pub fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-11-25T12:00:00Z: {e}"))
}
