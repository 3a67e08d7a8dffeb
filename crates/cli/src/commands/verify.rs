//! `escalator verify`: checks the invariants over the database; exit 1 listing violations.

use anyhow::bail;

/// Prints every violation, or a clean bill.
pub async fn run(database_url: &str) -> anyhow::Result<()> {
    let store = super::connect(database_url).await?;
    let violations = store.verify().await?;
    let counts = store.table_counts().await?;
    store.close().await;
    if violations.is_empty() {
        out!(
            "verify: ok — I1, I2, I4, I5 hold over {} workflows, {} audit rows, {} notifications, {} outbox rows",
            counts.workflows,
            counts.audit_logs,
            counts.notifications,
            counts.outbox
        );
        return Ok(());
    }
    for v in &violations {
        out!("{} {}: {}", v.invariant, v.subject, v.rule);
    }
    bail!("{} violation(s) found", violations.len())
}
