//! `escalator outbox`: see and retry deliveries — the dead ones above all.

use anyhow::bail;
use chrono::Utc;

/// Arguments of `escalator outbox`.
#[derive(Debug, clap::Args)]
pub struct OutboxArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// List deliveries waiting to be sent (new, or failed and waiting for a retry), oldest first.
    List {
        /// Only dead deliveries (attempts exhausted or refused for good).
        #[arg(long)]
        dead: bool,
        /// Most rows to show (1 or more).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Put a dead delivery (or all of them) back in line, attempts reset.
    Retry {
        /// The outbox row id.
        #[arg(required_unless_present = "all_dead")]
        id: Option<i64>,
        /// Every dead delivery.
        #[arg(long, conflicts_with = "id")]
        all_dead: bool,
    },
}

/// Runs the subcommand.
pub async fn run(database_url: &str, args: OutboxArgs) -> anyhow::Result<()> {
    let store = super::connect(database_url).await?;
    match args.what {
        What::List { dead, limit } => {
            // waiting means both never tried (pending) and waiting for a retry (failed, with
            // the last error)
            let (status, statuses): (_, &[&str]) = if dead {
                ("dead", &["dead"])
            } else {
                ("waiting", &["pending", "failed"])
            };
            let rows = store.list_outbox(statuses, limit).await?;
            for r in &rows {
                out!(
                    "#{:<8} {:<6} {:<7} {:<30} attempts={} next={} {}",
                    r.id,
                    r.channel,
                    r.status,
                    r.recipient,
                    r.attempts,
                    r.next_attempt_at.to_rfc3339(),
                    r.last_error.as_deref().unwrap_or("")
                );
            }
            let now = Utc::now();
            let backlog = store.outbox_backlog(now).await?;
            let overdue = match backlog.due_since {
                Some(t) if now - t >= chrono::Duration::seconds(60) => format!(
                    " (the longest-waiting since {}, {:.0} s ago)",
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    backlog.overdue_seconds(now)
                ),
                _ => String::new(),
            };
            out!(
                "{} {status} shown; {} waiting to be sent, {} due now{overdue}",
                rows.len(),
                backlog.waiting,
                backlog.due
            );
        }
        What::Retry { id, all_dead } => {
            if id.is_none() && !all_dead {
                bail!("give an outbox id, or --all-dead");
            }
            let n = store.retry_dead_deliveries(id, Utc::now()).await?;
            if n == 0 && id.is_some() {
                bail!(
                    "outbox row {} is not dead (or does not exist)",
                    id.unwrap_or_default()
                );
            }
            out!("{n} delivery(ies) queued again");
        }
    }
    Ok(())
}
