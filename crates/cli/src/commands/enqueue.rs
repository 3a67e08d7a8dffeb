//! `escalator enqueue check`: record a check run and enqueue its planner job, as the beat
//! does; with `--wait`, follow it to the end and print its counts.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use escalator_jobs::{CheckWorkflows, Scope};
use escalator_runtime::config::ProcessEnv;
use escalator_store::NewCheckRun;

use crate::config::QueueConfig;

/// Arguments of `escalator enqueue`.
#[derive(Debug, clap::Args)]
pub struct EnqueueArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Enqueue a check of every due workflow (or of one).
    Check(CheckArgs),
    /// Enqueue no-op jobs (measures queue overhead; used by `make bench`).
    Noop(NoopArgs),
}

/// The longest `--timeout` (a week): longer is a mistake, and the largest values overflowed the
/// clock arithmetic into a panic.
const MAX_TIMEOUT: u64 = 7 * 24 * 3600;

#[derive(Debug, clap::Args)]
struct NoopArgs {
    /// How many.
    #[arg(long, default_value_t = 1_000)]
    count: u64,
    /// Wait until the workers have processed them all, and print the time taken.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 4; the run may still finish).
    #[arg(long, default_value_t = 300, requires = "wait", value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT))]
    timeout: u64,
}

#[derive(Debug, clap::Args)]
struct CheckArgs {
    /// Check only this workflow (its uuid, or its external id).
    #[arg(long)]
    workflow: Option<String>,
    /// Evaluate the SLA clock at this instant (RFC 3339); default: now.
    #[arg(long, value_parser = super::parse_time)]
    as_of: Option<DateTime<Utc>>,
    /// Wait for the run to finish and print its counts; exit 1 if it failed or left workflows
    /// it could not evaluate (`failed=N`; a database that goes away meanwhile is waited for).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds (exit 4; the run may still finish).
    #[arg(long, default_value_t = 300, requires = "wait", value_parser = clap::value_parser!(u64).range(1..=MAX_TIMEOUT))]
    timeout: u64,
}

/// Runs the subcommand.
pub async fn run(database_url: &str, args: EnqueueArgs) -> anyhow::Result<()> {
    let args = match args.what {
        What::Check(a) => a,
        What::Noop(a) => return noops(database_url, a).await,
    };
    let queue_config = QueueConfig::from_env(&ProcessEnv, database_url)?;
    // input first: a refused --as-of is exit 1 whether or not the services answer (it was
    // checked after connecting, so a script saw exit 3, "unreachable", and retried it)
    let now = Utc::now();
    let as_of = args.as_of.unwrap_or(now);
    escalator_store::logic::check_real_as_of(as_of, now).map_err(|e| match e {
        escalator_store::StoreError::Invalid { message, .. } => {
            anyhow::anyhow!("--as-of {} {message}", as_of.to_rfc3339())
        }
        other => other.into(),
    })?;
    let store = super::connect(database_url).await?;
    let scope = match &args.workflow {
        None => Scope::All,
        Some(w) => Scope::Workflow(
            store
                .find_workflow(w)
                .await
                .with_context(|| format!("--workflow {w}"))?
                .id,
        ),
    };
    let queues = super::connect_queues_once(&queue_config).await?;
    // --wait reports enqueue -> finished, as the benchmark defines a tick
    let started = Instant::now();
    let now = Utc::now();
    let as_of = args.as_of.unwrap_or(now);
    let run = store
        .create_check_run(&NewCheckRun {
            slot: None,
            requested_by: "cli",
            scope: scope.to_string(),
            as_of,
            dry_run: false,
            coalesced: 1,
            now,
        })
        .await?
        .context("the check run was not created")?;
    let job = CheckWorkflows {
        check_run_id: run.id,
        as_of,
        scope,
    };
    // with --wait, a backlogged checks queue is waited for no longer than --timeout (it was
    // the queue's own five minutes): exit 4, as for a run still running
    let patience = if args.wait {
        Duration::from_secs(args.timeout)
    } else {
        escalator_jobs::BACKLOG_PATIENCE
    };
    let push = queues.push_check_or_fail_run_within(&store, &job, patience);
    tokio::pin!(push);
    // a push waits for a backlogged checks queue (no worker running, or all busy) for up to
    // its patience: said once, so that a script's log shows why the command sits there
    let pushed = tokio::select! {
        pushed = &mut push => pushed,
        () = tokio::time::sleep(PUSH_QUIET) => {
            // a full queue or a Redis slow to answer: this side cannot tell them apart
            stderr_line!(
                "check run {}: not enqueued yet: the checks queue is full (are workers running? \
                 `escalator status` shows the queues) or Redis is slow to answer; trying for up \
                 to {}s",
                run.id,
                patience.as_secs()
            );
            push.await
        }
    };
    if let Err(e) = pushed {
        let why = escalator_runtime::error::with_causes(&e);
        if args.wait
            && matches!(
                e,
                escalator_jobs::QueueError::Backlogged { .. }
                    | escalator_jobs::QueueError::TimedOut(_)
            )
        {
            stderr_line!(
                "error: check run {} not enqueued within --timeout {}s (marked failed): {why}",
                run.id,
                args.timeout
            );
            std::process::exit(super::EXIT_TIMED_OUT);
        }
        // the error itself kept as the cause: `main` reads an unreachable Redis off it (exit
        // 3); as text it was exit 1, "failed", for a Redis blip
        let landed = if e.is_timeout() {
            "; Redis did not answer in time: if the job went in after all, the run may still \
             start (`escalator status` shows it)"
        } else {
            ""
        };
        return Err(anyhow::Error::new(e).context(format!(
            "enqueueing check run {} (marked failed){landed}",
            run.id
        )));
    }
    if !args.wait {
        out!(
            "check_run_id={} as_of={} scope={scope} status=queued",
            run.id,
            as_of.to_rfc3339()
        );
        return Ok(());
    }
    let deadline = Duration::from_secs(args.timeout);
    let mut last_report = Instant::now();
    let mut unread: Option<String> = None;
    loop {
        // a database blip (a restart, a failover) while waiting is not a failed check: exit 1
        // says the run failed, and it ended the wait at the first error
        let r = match store.get_check_run(run.id).await {
            Ok(r) => {
                if unread.take().is_some() {
                    stderr_line!("check run {}: the database answers again", run.id);
                }
                r
            }
            Err(e) => {
                let why = escalator_runtime::error::with_causes(&e);
                if started.elapsed() > deadline {
                    stderr_line!(
                        "error: check run {} could not be read when --timeout {}s ran out: \
                         {why}; see `escalator status` once the database answers",
                        run.id,
                        args.timeout
                    );
                    std::process::exit(super::EXIT_TIMED_OUT);
                }
                if unread.is_none() {
                    stderr_line!(
                        "check run {}: cannot read it ({why}); trying again until --timeout",
                        run.id
                    );
                }
                unread = Some(why);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if r.status == "succeeded" || r.status == "failed" {
            // seconds: enqueue -> finished as the database recorded them (the benchmark's
            // definition); waited: what this process observed, polling included
            let seconds = r
                .finished_at
                .map(|f| (f - r.created_at).num_microseconds().unwrap_or(0) as f64 / 1e6)
                .unwrap_or(0.0);
            let line = format!(
                "check_run_id={} status={} checked={} reminded={} escalated={} exhausted={} renotified={} failed={} seconds={seconds:.3} waited={:.3}",
                r.id,
                r.status,
                r.checked,
                r.reminded,
                r.escalated,
                r.exhausted,
                r.renotified,
                r.failed,
                started.elapsed().as_secs_f64()
            );
            if r.status == "failed" {
                // the verdict is the exit status: a reader gone before the line (`| true`)
                // must not turn a failed run into success, as it did
                use std::io::Write as _;
                let _ = writeln!(std::io::stdout(), "{line}");
                bail!("check run {} failed: {}", r.id, r.error.unwrap_or_default());
            }
            out!("{line}");
            if r.failed > 0 {
                // a run that finished with workflows it could not evaluate is no success for a
                // script: they were set aside, unescalated
                bail!(
                    "check run {}: {} workflow(s) could not be evaluated (their policy or \
                     calendar could not be read, or the database refused their effects); they \
                     are set aside and checked again later; the worker's log names them",
                    r.id,
                    r.failed
                );
            }
            return Ok(());
        }
        if started.elapsed() > deadline {
            let hint = if r.status == "queued" {
                "no worker has started it: is a worker running on this queue namespace?"
            } else if matches!(
                escalator_jobs::within(Duration::from_secs(2), queues.checks_and_batches_waiting())
                    .await,
                Ok(0)
            ) {
                "no check or batch job waits in the queues, so its jobs are running or were lost \
                 (a Redis flushed or failed over): see `escalator status`; a run with no progress \
                 for 10 minutes and nothing waiting is marked failed by the beat, and the next \
                 check handles its workflows"
            } else {
                "a batch may be retrying or dead: see `escalator status` and `escalator jobs dead`"
            };
            stderr_line!(
                "error: check run {} still {} after {}s (batches done {}/{}); {hint}",
                r.id,
                r.status,
                args.timeout,
                r.batches_done,
                r.batches
            );
            std::process::exit(super::EXIT_TIMED_OUT);
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            last_report = Instant::now();
            stderr_line!(
                "check run {}: {} after {:.0}s, batches done {}/{}",
                r.id,
                r.status,
                started.elapsed().as_secs_f64(),
                r.batches_done,
                r.batches
            );
        }
        // Poll often at first (short runs), then back off to spare the database (2 ms made
        // up to a thousand queries in a run's first two seconds)
        let waited = started.elapsed();
        let pause = if waited < Duration::from_secs(2) {
            20
        } else {
            100
        };
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// How often `--wait` says how a long run is going (on stderr; stdout keeps the one result line).
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How long a push may wait for room in a backlogged queue before the command says so.
const PUSH_QUIET: Duration = Duration::from_secs(2);

/// Pushes no-op jobs; with --wait, follows the queue until all are done.
async fn noops(database_url: &str, args: NoopArgs) -> anyhow::Result<()> {
    let queues =
        super::connect_queues_once(&QueueConfig::from_env(&ProcessEnv, database_url)?).await?;
    let noop_queue = queues.names().noop.clone();
    let done_before = done_count(&queues, &noop_queue).await?;
    let started = Instant::now();
    queues
        .push_noops(args.count)
        .await
        .context("enqueueing no-op jobs")?;
    if !args.wait {
        out!("enqueued {} no-op jobs on {noop_queue}", args.count);
        return Ok(());
    }
    let deadline = Duration::from_secs(args.timeout);
    loop {
        let done = done_count(&queues, &noop_queue)
            .await?
            .saturating_sub(done_before);
        if done >= args.count {
            out!(
                "system=escalator noop_jobs={} seconds={:.3}",
                args.count,
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() > deadline {
            stderr_line!(
                "error: {done} of {} no-op jobs done after {}s; is a worker running?",
                args.count,
                args.timeout
            );
            std::process::exit(super::EXIT_TIMED_OUT);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn done_count(queues: &escalator_jobs::Queues, queue: &str) -> anyhow::Result<u64> {
    // finished jobs including those the beat has pruned since: this never goes down
    Ok(queues.finished(queue).await?)
}
