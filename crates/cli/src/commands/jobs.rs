//! `escalator jobs`: dead jobs — list them, and put them back in their queue.

use anyhow::bail;
use escalator_runtime::config::ProcessEnv;

use crate::config::QueueConfig;

/// Arguments of `escalator jobs`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// List dead jobs (attempts exhausted, or malformed payloads) of every queue.
    Dead {
        /// Most jobs per queue (1 or more).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Put a dead job (or every dead job) back in its queue with its attempts reset.
    Retry {
        /// Queue name, e.g. escalator:batches.
        #[arg(required_unless_present = "all_dead")]
        queue: Option<String>,
        /// Task id.
        #[arg(required_unless_present = "all_dead")]
        id: Option<String>,
        /// Every dead job of every queue.
        #[arg(long, conflicts_with_all = ["queue", "id"])]
        all_dead: bool,
    },
}

/// Runs the subcommand.
pub async fn run(database_url: &str, args: JobsArgs) -> anyhow::Result<()> {
    let queues =
        super::connect_queues_once(&QueueConfig::from_env(&ProcessEnv, database_url)?).await?;
    match args.what {
        What::Dead { limit } => {
            let dead = queues
                .dead_jobs(usize::try_from(limit).unwrap_or(usize::MAX))
                .await?;
            for d in &dead {
                let payload: String = d.payload.chars().take(160).collect();
                out!(
                    "{} {} {payload}\n    {}",
                    d.queue,
                    d.id,
                    d.error.as_deref().unwrap_or("")
                );
            }
            out!("{} dead job(s)", dead.len());
        }
        What::Retry {
            queue,
            id,
            all_dead,
        } => {
            let retried = match (queue, id, all_dead) {
                (_, _, true) => retry_all(&queues).await?,
                (Some(q), Some(i), false) => {
                    // the short name (`batches`) is accepted for the namespaced one
                    let Some(queue) = queues.names().resolve(&q) else {
                        let names = queues.names().all();
                        bail!("unknown queue {q:?}: expected one of {}", names.join(", "));
                    };
                    if !queues.retry_dead(queue, &i).await? {
                        bail!("{i} is not a dead job of {queue} (see `escalator jobs dead`)");
                    }
                    1
                }
                _ => bail!("give a queue and a task id (see `escalator jobs dead`), or --all-dead"),
            };
            out!("{retried} job(s) back in their queue");
        }
    }
    Ok(())
}

/// Dead jobs are read in rounds of [`ROUND`] per queue (Redis hands out a random subset of a
/// larger set); rounds go on until one finds fewer than a full round.
const ROUND: usize = 10_000;

async fn retry_all(queues: &escalator_jobs::Queues) -> anyhow::Result<usize> {
    let mut retried = 0;
    loop {
        let dead = queues.dead_jobs(ROUND).await?;
        let mut per_queue = std::collections::HashMap::<&str, usize>::new();
        for d in &dead {
            *per_queue.entry(d.queue.as_str()).or_default() += 1;
        }
        let mut this_round = 0;
        for d in &dead {
            match queues.retry_dead(&d.queue, &d.id).await {
                Ok(true) => this_round += 1,
                Ok(false) => {}
                // stays dead, said each time: it must not stop the others going back
                Err(e @ escalator_jobs::QueueError::Unretryable { .. }) => {
                    stderr_line!("skipped: {e}");
                }
                Err(e) => return Err(e.into()),
            }
        }
        retried += this_round;
        if this_round == 0 || per_queue.values().all(|n| *n < ROUND) {
            return Ok(retried);
        }
        stderr_line!("{retried} dead job(s) back in their queue so far");
    }
}
