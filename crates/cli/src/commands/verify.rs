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
            "verify: ok — I1 to I5 hold over {} workflows, {} audit rows, {} notifications, {} outbox rows",
            counts.workflows,
            counts.audit_logs,
            counts.notifications,
            counts.outbox
        );
        return Ok(());
    }
    // the verdict is the exit status: a reader that stops early (`| head`) must not turn it
    // into success, so a closed output ends the listing, not the failure
    for v in &violations {
        use std::io::Write as _;
        if writeln!(
            std::io::stdout(),
            "{} {}: {}",
            v.invariant,
            v.subject,
            v.rule
        )
        .is_err()
        {
            break;
        }
    }
    bail!("{} violation(s) found", violations.len())
}
