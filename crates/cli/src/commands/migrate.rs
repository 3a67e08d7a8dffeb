//! `escalator migrate`: applies the embedded migrations of the selected backend.

use anyhow::Context as _;

/// Runs the migrations and says which database they went to. `given` is false when neither
/// `--database-url` nor `DATABASE_URL` was set: a deploy step that lost the variable migrated
/// a new `./escalator.db`, exited 0, and the services failed one step later on the real one.
pub async fn run(database_url: &str, given: bool) -> anyhow::Result<()> {
    let database = escalator_runtime::config::redact(database_url);
    if !given {
        stderr_line!(
            "warning: DATABASE_URL is not set: migrating the default, {database} (set \
             DATABASE_URL or --database-url to migrate another)"
        );
    }
    let store = super::connect_any_schema(database_url).await?;
    super::refuse_a_queue_file(&store, database_url).await?;
    // what this run brings, so that it says so (a fresh database read "up to date" as if
    // nothing had been applied)
    let missing = store
        .missing_migrations()
        .await
        .context("reading the schema version")?;
    let newer = store
        .newer_migrations()
        .await
        .context("reading the schema version")?;
    if let (true, Some(newest)) = (missing.is_empty(), newer.last()) {
        // a rollback: the previous release's migrate Job refused a schema its successor had
        // upgraded (sqlx: "migration was previously applied but is missing"), and the
        // documented deploy waits for the Job before it rolls out the roles. Migrations are
        // additive, and the roles accept a newer schema, so there is nothing to do.
        tracing::warn!(
            %database,
            newer = newer.len(),
            newest,
            "the database schema is newer than this build (a rollback?): every migration of \
             this build is applied; nothing to apply"
        );
        store.close().await;
        return Ok(());
    }
    store.migrate().await.context("migration failed")?;
    match (missing.first(), missing.last()) {
        (Some(first), Some(last)) => tracing::info!(
            %database,
            applied = missing.len(),
            from = first,
            to = last,
            "migrations applied; the database schema is up to date"
        ),
        _ => {
            tracing::info!(%database, "database schema already up to date; nothing to apply")
        }
    }
    store.close().await;
    Ok(())
}
