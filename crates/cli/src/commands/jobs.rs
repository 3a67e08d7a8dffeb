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
        /// Most jobs per queue.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Put a dead job (or every dead job) back in its queue with its attempts reset.
    Retry {
        /// Queue name, e.g. escalator:batches.
        queue: Option<String>,
        /// Task id.
        id: Option<String>,
        /// Every dead job of every queue.
        #[arg(long, conflicts_with_all = ["queue", "id"])]
        all_dead: bool,
    },
}

/// Runs the subcommand.
pub async fn run(args: JobsArgs) -> anyhow::Result<()> {
    let queues = super::connect_queues(&QueueConfig::from_env(&ProcessEnv)?).await?;
    match args.what {
        What::Dead { limit } => {
            let dead = queues.dead_jobs(limit).await?;
            for d in &dead {
                let payload: String = d.payload.chars().take(160).collect();
                println!(
                    "{} {} {payload}\n    {}",
                    d.queue,
                    d.id,
                    d.error.as_deref().unwrap_or("")
                );
            }
            println!("{} dead job(s)", dead.len());
        }
        What::Retry {
            queue,
            id,
            all_dead,
        } => {
            let targets = match (queue, id, all_dead) {
                (_, _, true) => queues
                    .dead_jobs(10_000)
                    .await?
                    .into_iter()
                    .map(|d| (d.queue, d.id))
                    .collect(),
                (Some(q), Some(i), false) => vec![(q, i)],
                _ => bail!("give a queue and a task id (see `escalator jobs dead`), or --all-dead"),
            };
            let mut retried = 0;
            for (queue, id) in &targets {
                if queues.retry_dead(queue, id).await? {
                    retried += 1;
                } else if !all_dead {
                    bail!("{id} is not a dead job of {queue}");
                }
            }
            println!("{retried} job(s) back in their queue");
        }
    }
    Ok(())
}
