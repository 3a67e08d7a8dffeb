//! `escalator migrate`: applies the embedded migrations of the selected backend.

use anyhow::Context as _;

/// Runs the migrations and reports the backend.
pub async fn run(database_url: &str) -> anyhow::Result<()> {
    let store = super::connect_any_schema(database_url).await?;
    store.migrate().await.context("migration failed")?;
    tracing::info!(backend = ?store.backend(), "database schema is up to date");
    store.close().await;
    Ok(())
}
