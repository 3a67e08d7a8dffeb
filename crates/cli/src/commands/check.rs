//! `escalator check --dry-run`: what a check would do now, writing nothing.

use std::collections::BTreeMap;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use escalator_jobs::{QueueNames, Queues};
use escalator_policy::Decision;
use escalator_worker::{Engine, EngineConfig, PolicyCache};

/// Arguments of `escalator check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Report only, write nothing (the only mode: real checks go through `enqueue check`).
    #[arg(long, required = true)]
    dry_run: bool,
    /// Evaluate at this instant (RFC 3339); default: now.
    #[arg(long, value_parser = super::parse_time)]
    as_of: Option<DateTime<Utc>>,
    /// Evaluate at most this many due workflows (1–10,000, as the api's dry run).
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    limit: u32,
    /// List this many of the workflows that would change.
    #[arg(long, default_value_t = 20)]
    show: usize,
}

/// Prints the decisions a check would take.
pub async fn run(database_url: &str, args: CheckArgs) -> anyhow::Result<()> {
    let store = super::connect(database_url).await?;
    // A dry run never enqueues; an embedded queue handle that is never used keeps the engine
    // whole without needing Redis.
    // (in a folder of its own, removed with the WAL and shared-memory files SQLite adds)
    let dir = std::env::temp_dir().join(format!("escalator-dry-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating the scratch folder {}", dir.display()))?;
    let queues = match Queues::connect(
        &format!("sqlite://{}", dir.join("queue.db").display()),
        QueueNames::default(),
    )
    .await
    {
        Ok(q) => q,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
    };
    let engine = Engine {
        store,
        queues,
        config: EngineConfig::default(),
        policies: PolicyCache::default(),
    };
    let as_of = args.as_of.unwrap_or_else(Utc::now);
    let report = engine
        .dry_run(escalator_jobs::Scope::All, as_of, args.limit)
        .await;
    drop(engine);
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let mut shown = 0;
    for (w, decision) in &report.items {
        let what = match decision {
            None => "unreadable policy",
            Some(Decision::Nothing) => "nothing",
            Some(Decision::Remind { .. }) => "remind",
            Some(Decision::Escalate { .. }) => "escalate",
            Some(Decision::Exhausted { .. }) => "exhausted",
            Some(Decision::Renotify { .. }) => "renotify",
        };
        *tally.entry(what).or_default() += 1;
        if what != "nothing" && shown < args.show {
            let detail = match decision {
                Some(Decision::Escalate { level, target, .. }) => {
                    format!("level {level} -> {target}")
                }
                Some(Decision::Remind { .. }) => format!("remind {}", w.assignee),
                _ => String::new(),
            };
            out!(
                "{what:<10} {} {:<40} due {} {detail}",
                w.id,
                w.external_id,
                w.due_at.to_rfc3339()
            );
            shown += 1;
        }
    }
    let summary: Vec<String> = tally.iter().map(|(k, v)| format!("{k}={v}")).collect();
    out!(
        "dry run as of {}: due={} evaluated={} {} (nothing was written)",
        as_of.to_rfc3339(),
        report.total_due,
        report.items.len(),
        summary.join(" ")
    );
    Ok(())
}
