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

/// Connections a long-running process (worker, api, beat) keeps open while idle: enough for
/// a check's planner and both default batch slots to start without opening one.
pub const KEPT_OPEN: u32 = 4;

/// Connects to the database named by `url` for a one-shot command, with an error that names
/// the variable.
pub async fn connect(url: &str) -> anyhow::Result<Store> {
    connect_with(StoreConfig::new(url)).await
}

/// Connects for a long-running process: [`KEPT_OPEN`] connections stay open while it is idle.
pub async fn connect_service(url: &str) -> anyhow::Result<Store> {
    connect_with(StoreConfig::new(url).keeping_open(KEPT_OPEN)).await
}

async fn connect_with(config: StoreConfig) -> anyhow::Result<Store> {
    config.backend().context("DATABASE_URL")?;
    Store::connect(&config)
        .await
        .with_context(|| format!("cannot connect to DATABASE_URL={}", redact(&config.url)))
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
