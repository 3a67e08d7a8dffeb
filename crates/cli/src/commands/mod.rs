//! One module per subcommand.

pub mod migrate;
pub mod seed;

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
