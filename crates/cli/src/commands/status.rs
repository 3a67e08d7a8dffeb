//! `escalator status`: queue depths, dead jobs, due workflows and recent check runs.

use chrono::Utc;
use escalator_runtime::config::ProcessEnv;

use crate::config::QueueConfig;

/// Prints the status report. Each part is printed even when the other's service cannot be
/// reached (the report is what an operator reads first in an incident: queue depths and dead
/// jobs in a database outage, the runs in a Redis one); the command then exits non-zero
/// naming what failed.
pub async fn run(database_url: &str) -> anyhow::Result<()> {
    // the queues first: they need nothing of the database, and are reported mid-upgrade too
    let queues_failed = match queue_report(database_url).await {
        Ok(()) => None,
        Err(e) => {
            out!("queues: UNREACHABLE: {e:#}");
            Some(e)
        }
    };
    let database = async {
        let store = super::connect_existing(database_url).await?;
        let store = super::require_schema(store, database_url).await?;
        database_report(&store).await
    }
    .await;
    match (database, queues_failed) {
        (Ok(()), None) => Ok(()),
        (Ok(()), Some(e)) => {
            Err(e.context("the queues could not be read (the database part is above)"))
        }
        (Err(e), None) => Err(e.context("the database could not be read (the queues are above)")),
        (Err(e), Some(queues)) => Err(e.context(format!(
            "neither the database nor the queues could be read (queues: {queues:#})"
        ))),
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
    // "is a beat leading?" comes first when no runs appear
    let leases = store.beat_leases().await?;
    if leases.is_empty() {
        out!("beat: no beat has led yet");
    }
    for l in leases {
        let left = (l.expires_at - now).num_seconds();
        let state = if left >= 0 {
            format!("leading, lease for {left} s more")
        } else {
            format!("NO LEADER: the lease expired {} s ago", -left)
        };
        out!(
            "beat: {} epoch={} holder={} ({state})",
            l.name,
            l.epoch,
            l.holder
        );
    }
    out!("recent check runs:");
    for r in store.recent_check_runs(10).await? {
        let slot = r
            .slot
            .map(|s| format!(" slot={}", s.to_rfc3339()))
            .unwrap_or_default();
        let coalesced = if r.coalesced > 1 {
            format!(" coalesced={}", r.coalesced)
        } else {
            String::new()
        };
        out!(
            "  #{:<6} {:<9} {:<8} as_of={}{slot}{coalesced} batches={}/{} checked={} reminded={} escalated={} exhausted={} renotified={} failed={}",
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
        // why it failed: the runbooks start here (NoCheckRunSucceeded)
        if let Some(error) = r.error.as_deref().filter(|_| r.status == "failed") {
            let error: String = error.chars().take(300).collect();
            out!("          error: {error}");
        }
    }
    Ok(())
}
