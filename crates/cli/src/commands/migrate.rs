//! `escalator migrate`: applies the embedded migrations of the selected backend.

use anyhow::Context as _;

/// Runs the migrations and reports the backend.
pub async fn run(database_url: &str) -> anyhow::Result<()> {
    let store = super::connect_any_schema(database_url).await?;
    super::refuse_a_queue_file(&store, database_url).await?;
    // what this run brings, so that it says so (a fresh database read "up to date" as if
    // nothing had been applied)
    let missing = store
        .missing_migrations()
        .await
        .context("reading the schema version")?;
    store.migrate().await.context("migration failed")?;
    match (missing.first(), missing.last()) {
        (Some(first), Some(last)) => tracing::info!(
            backend = ?store.backend(),
            applied = missing.len(),
            from = first,
            to = last,
            "migrations applied; the database schema is up to date"
        ),
        _ => {
            tracing::info!(backend = ?store.backend(), "database schema already up to date; nothing to apply")
        }
    }
    store.close().await;
    Ok(())
}
