//! `escalator status`: queue depths, dead jobs, due workflows and recent check runs.

use chrono::Utc;
use escalator_runtime::config::ProcessEnv;

use crate::config::QueueConfig;

/// Prints the status report. The database part is printed even when the queues cannot be
/// reached (the report is what an operator reads first in an incident); the command then
/// exits non-zero naming what failed.
pub async fn run(database_url: &str) -> anyhow::Result<()> {
    let store = super::connect_existing(database_url).await?;
    let queues_failed = match queue_report(database_url).await {
        Ok(()) => None,
        Err(e) => {
            out!("queues: UNREACHABLE: {e:#}");
            Some(e)
        }
    };
    // the queues are reported even mid-upgrade; the database part needs this build's schema
    let store = super::require_schema(store, database_url).await?;
    database_report(&store).await?;
    match queues_failed {
        Some(e) => Err(e.context("the queues could not be read (the database part is above)")),
        None => Ok(()),
    }
}

async fn queue_report(database_url: &str) -> anyhow::Result<()> {
    let queues =
        super::connect_queues_once(&QueueConfig::from_env(&ProcessEnv, database_url)?).await?;
    out!("queues ({}):", super::worker::describe(&queues));
    for q in queues.stats().await? {
        out!(
            "  {:<28} pending={:<8} dead={:<6} done={}",
            q.queue,
            q.pending,
            q.dead,
            q.done
        );
    }
    let dead = queues.dead_jobs(10).await?;
    if !dead.is_empty() {
        out!("dead jobs (up to 10 per queue):");
        for d in dead {
            let payload: String = d.payload.chars().take(120).collect();
            out!(
                "  {} {} {payload} -- {}",
                d.queue,
                d.id,
                d.error.unwrap_or_default()
            );
        }
    }
    Ok(())
}

async fn database_report(store: &escalator_store::Store) -> anyhow::Result<()> {
    let now = Utc::now();
    let c = store.sla_counts(now).await?;
    out!(
        "workflows: ok={} warning={} breached={} compliance={:.1}% due_now={} next_check={}",
        c.ok,
        c.warning,
        c.breached,
        c.compliance_ratio() * 100.0,
        store.count_due(now).await?,
        store
            .earliest_next_check()
            .await?
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "-".into())
    );
    out!("recent check runs:");
    for r in store.recent_check_runs(10).await? {
        out!(
            "  #{:<6} {:<9} {:<8} as_of={} batches={}/{} checked={} reminded={} escalated={} exhausted={} renotified={} failed={}",
            r.id,
            r.status,
            r.requested_by,
            r.as_of.to_rfc3339(),
            r.batches_done,
            r.batches,
            r.checked,
            r.reminded,
            r.escalated,
            r.exhausted,
            r.renotified,
            r.failed
        );
    }
    Ok(())
}
