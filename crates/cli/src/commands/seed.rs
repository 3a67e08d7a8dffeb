//! `escalator seed`: the WORKLOAD.md data set, bulk-loaded (COPY on PostgreSQL) with progress.

use std::time::Instant;

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use escalator_store::seed::{SeedGenerator, SeedPlan, users};
use escalator_store::{StoreError, Workflow};
use indicatif::{ProgressBar, ProgressStyle};

/// Workflows per bulk-load transaction.
const CHUNK: usize = 50_000;

/// Arguments of `escalator seed`.
#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// Number of open workflows to create (at most 100 million).
    #[arg(long, default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    workflows: u64,
    /// RNG seed: the same seed and --now give the same data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Reference time (RFC 3339) the SLA states are computed against; default: now.
    #[arg(long, value_parser = super::parse_time)]
    now: Option<DateTime<Utc>>,
    /// Instead of the WORKLOAD distribution, spread every deadline uniformly over the next
    /// SECS seconds after --now (the deadline-latency benchmark).
    #[arg(long, value_name = "SECS")]
    due_within: Option<u64>,
}

/// Refuses a `--now` (with `--due-within`) whose seeded instants — stages started up to 72 h
/// before it, deadlines up to 24 h or `--due-within` after it — would fall outside the years
/// 1970-9999 every other write is held to (`--now 1970-01-01T00:00:00Z` wrote 1969 rows).
fn seeded_span_in_range(plan: &SeedPlan) -> anyhow::Result<()> {
    let after = match plan.due_within {
        None => chrono::Duration::hours(24),
        Some(secs) => i64::try_from(secs)
            .ok()
            .and_then(chrono::Duration::try_seconds)
            .unwrap_or(chrono::Duration::MAX)
            .max(chrono::Duration::hours(24)),
    };
    let span = plan
        .now
        .checked_sub_signed(chrono::Duration::hours(72))
        .zip(plan.now.checked_add_signed(after));
    let fits = span.is_some_and(|(first, last)| {
        escalator_store::time::check_instant("--now", first).is_ok()
            && escalator_store::time::check_instant("--now", last).is_ok()
    });
    if !fits {
        bail!(
            "--now {}: the seeded workflows would start up to 72 h before it and fall due up to {} \
             after it, outside the years 1970-9999 that escalator stores",
            plan.now.to_rfc3339(),
            if plan.due_within.is_some() {
                "--due-within"
            } else {
                "24 h"
            }
        );
    }
    Ok(())
}

/// Seeds users and workflows.
pub async fn run(database_url: &str, args: SeedArgs) -> anyhow::Result<()> {
    let plan = SeedPlan {
        workflows: args.workflows,
        seed: args.seed,
        now: args.now.unwrap_or_else(Utc::now),
        due_within: args.due_within,
    };
    seeded_span_in_range(&plan)?;
    let store = super::connect(database_url).await?;
    match store.latest_policy("default").await {
        Ok(_) => {}
        Err(StoreError::NotFound { .. }) => {
            bail!("the default policy is missing: run `escalator migrate` first")
        }
        Err(e) => return Err(e).context("cannot read the schema: has `escalator migrate` run?"),
    }
    let first = format!("seed-{}-{:07}", plan.seed, 0);
    match store.get_workflow_by_external_id(&first).await {
        Err(StoreError::NotFound { .. }) => {}
        Ok(_) => bail!(
            "this database already holds the workflows of --seed {}: use another --seed or a fresh database",
            plan.seed
        ),
        Err(e) => return Err(e.into()),
    }
    let started = Instant::now();
    store
        .upsert_users(&users())
        .await
        .context("seeding users")?;

    let bar = ProgressBar::new(plan.workflows);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} seeding [{bar:40}] {pos}/{len} workflows ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    // Generation (CPU) runs on a blocking thread while the previous chunk is being loaded.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Workflow>>(2);
    let generator = tokio::task::spawn_blocking(move || {
        let mut g = SeedGenerator::new(plan);
        while g.remaining() > 0 {
            if tx.blocking_send(g.next_chunk(CHUNK)).is_err() {
                break;
            }
        }
    });
    while let Some(chunk) = rx.recv().await {
        store
            .bulk_load(&chunk)
            .await
            .context("bulk-loading workflows")?;
        bar.inc(chunk.len() as u64);
    }
    generator.await.context("the generator thread failed")?;
    bar.finish_and_clear();
    stderr_line!("vacuuming and analyzing the loaded tables, as autovacuum would");
    store
        .settle()
        .await
        .context("vacuuming the seeded tables")?;

    let c = store.sla_counts(plan.now).await?;
    out!(
        "seeded {} workflows and {} users in {:.1}s; open workflows in the database as of {}: {} ok, {} warning, {} breached",
        plan.workflows,
        escalator_store::seed::USER_POOL,
        started.elapsed().as_secs_f64(),
        plan.now.to_rfc3339(),
        c.ok,
        c.warning,
        c.breached,
    );
    store.close().await;
    Ok(())
}
