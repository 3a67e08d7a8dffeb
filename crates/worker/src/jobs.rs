//! The apalis handlers: decode the envelope, run the engine under a deadline and panic guard,
//! classify failures, count outcomes. Garbage is dead-lettered and counted; the worker goes on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apalis::prelude::{Attempt, BoxDynError, Data};
use chrono::Utc;
use escalator_jobs::attempt::{self, Failure};
use escalator_jobs::{CheckWorkflows, DeliverNotifications, EscalateBatch, Incoming, Noop};
use escalator_runtime::metrics as m;
use escalator_runtime::serve::Health;

use crate::engine::{Engine, EngineError};

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct HandlerContext {
    /// The engine.
    pub engine: Engine,
    /// Attempts before a job is dead.
    pub max_attempts: usize,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// Touched on every job, for `/healthz`.
    pub health: Health,
    /// Sends the outbox; None when no email sender is configured.
    pub deliverer: Option<escalator_notify::Deliverer>,
}

/// The shared context as apalis injects it.
pub type Ctx = Arc<HandlerContext>;

fn classify(e: EngineError) -> Failure {
    let described: BoxDynError = escalator_runtime::error::with_causes(&e).into();
    if e.is_transient() {
        Failure::Transient(described)
    } else {
        Failure::Permanent(described)
    }
}

fn record(queue: &'static str, started: Instant, outcome: &Result<(), BoxDynError>, last: bool) {
    let label = match outcome {
        Ok(()) => "ok",
        Err(_) if last => "dead",
        Err(e) if e.downcast_ref::<apalis::prelude::AbortError>().is_some() => "dead",
        Err(_) => "retry",
    };
    metrics::counter!(m::JOBS, "queue" => queue, "outcome" => label).increment(1);
    metrics::histogram!(m::JOB_DURATION, "queue" => queue).record(started.elapsed().as_secs_f64());
    if label == "dead" {
        escalation_failure(queue);
    }
}

/// Runs `step` (a planner or a batch: safe to run again) until the database answers it:
/// while the database is away (unreachable, out of connections, or read-only after a
/// failover: [`StoreError::is_outage`](escalator_store::StoreError::is_outage)), the attempt
/// pauses, asks until the database answers, and runs `step` again. It gives up, with the
/// database's last error, shortly before the attempt's deadline (`ESCALATOR_JOB_TIMEOUT`) or
/// as soon as the worker is stopping (the job is then retried, here or by another worker). An
/// attempt used to fail as soon as its connection did (the pool's 10 s), so five of them
/// lasted about a minute: a managed database's failover of two or three minutes killed every
/// check and batch job and paged EscalationJobFailing, though retrying later would have done
/// it. Now each attempt rides out most of its deadline of outage, five of them about ten
/// minutes. A statement the database refused (a conflict, bad data) ends the attempt at once.
async fn through_outages<T, F, Fut>(
    ctx: &HandlerContext,
    what: &'static str,
    mut step: F,
) -> Result<T, EngineError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EngineError>>,
{
    let give_up = Instant::now() + ctx.attempt_timeout.saturating_sub(OUTAGE_MARGIN);
    let mut pause = OUTAGE_PAUSE_MIN;
    loop {
        let e = match step().await {
            Err(EngineError::Store(e)) if e.is_outage() => e,
            other => return other,
        };
        tracing::warn!(
            error = %escalator_runtime::error::with_causes(&e),
            "{what}: the database is away; this attempt waits for it"
        );
        // a pause before every new try, also when the database answers a ping at once (a
        // standby answers, read-only; a busy pool): never a tight loop
        loop {
            let resume_at = Instant::now() + pause;
            if resume_at >= give_up || escalator_runtime::shutdown::stopping() {
                return Err(EngineError::Store(e));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(OUTAGE_PAUSE_MAX);
            if ctx.engine.store.ping().await.is_ok() {
                break;
            }
        }
        tracing::info!("{what}: the database answers; running the attempt again");
    }
}

/// The first and the longest pause between tries while the database is away.
const OUTAGE_PAUSE_MIN: Duration = Duration::from_millis(500);
const OUTAGE_PAUSE_MAX: Duration = Duration::from_secs(4);
/// How long before the attempt's deadline the wait gives up, so that the attempt fails naming
/// the database (not "attempt timed out", which the runbooks read as a hung statement).
const OUTAGE_MARGIN: Duration = Duration::from_secs(15);

/// Counts an escalation job that failed for good (dead or malformed): the planner's or a
/// batch's. A retry is not a failure yet: it is `escalator_jobs_total{outcome="retry"}`, and
/// counted here it paged EscalationJobFailing through a database failover whose retries all
/// succeeded (EscalationJobsRetrying warns when retries go on). Deliveries and no-op jobs
/// have their own outcomes in `escalator_jobs_total` and `escalator_notifications_total`;
/// counted here they paged EscalationJobFailing for a mail relay's hiccup.
fn escalation_failure(queue: &'static str) {
    if matches!(queue, "checks" | "batches") {
        metrics::counter!(m::FAILURES, "queue" => queue).increment(1);
    }
}

fn malformed(queue: &'static str, raw: &str, error: &str) -> Result<(), BoxDynError> {
    tracing::error!(queue, error, payload = raw, "malformed job dead-lettered");
    metrics::counter!(m::JOBS, "queue" => queue, "outcome" => "malformed").increment(1);
    escalation_failure(queue);
    Err(attempt::malformed(raw, error))
}

/// Gives a run whose job died a final status, so that waiters and dashboards see the failure.
async fn fail_run(ctx: &HandlerContext, check_run_id: i64, why: &str) {
    if let Err(e) = ctx
        .engine
        .store
        .fail_check_run(check_run_id, why, Utc::now())
        .await
    {
        tracing::error!(check_run_id, error = %e, "cannot mark the check run failed");
    }
}

/// `escalator:checks`: plan a check run.
pub async fn check_workflows(
    job: Incoming<CheckWorkflows>,
    at: Attempt,
    ctx: Data<Ctx>,
) -> Result<(), BoxDynError> {
    ctx.health.touch();
    let job = match job {
        Incoming::Job(j) => j,
        Incoming::Malformed { raw, error } => return malformed("checks", &raw, &error),
    };
    let started = Instant::now();
    let result = attempt::guarded(ctx.attempt_timeout, async {
        through_outages(&ctx, "check job", || ctx.engine.check_workflows(&job))
            .await
            .map_err(classify)
    })
    .await;
    let last = attempt::is_last(&at, ctx.max_attempts);
    let outcome = match result {
        Ok(planned) => {
            tracing::debug!(check_run_id = job.check_run_id, ?planned, "check job done");
            Ok(())
        }
        Err(failure) => {
            let err = attempt::verdict(&at, ctx.max_attempts, failure);
            tracing::warn!(check_run_id = job.check_run_id, attempt = at.current(), error = %err, "check job failed");
            if err.downcast_ref::<apalis::prelude::AbortError>().is_some() {
                // Give the run a final status so that waiters and dashboards see the failure.
                let msg = format!("planner failed after {} attempt(s): {err}", at.current());
                fail_run(&ctx, job.check_run_id, &msg).await;
            }
            Err(err)
        }
    };
    record("checks", started, &outcome, last);
    outcome
}

/// `escalator:batches`: one batch of a run.
pub async fn escalate_batch(
    job: Incoming<EscalateBatch>,
    at: Attempt,
    ctx: Data<Ctx>,
) -> Result<(), BoxDynError> {
    ctx.health.touch();
    let job = match job {
        Incoming::Job(j) => j,
        Incoming::Malformed { raw, error } => return malformed("batches", &raw, &error),
    };
    let started = Instant::now();
    let result = attempt::guarded(ctx.attempt_timeout, async {
        through_outages(&ctx, "batch", || ctx.engine.escalate_batch(&job))
            .await
            .map_err(classify)
    })
    .await;
    let last = attempt::is_last(&at, ctx.max_attempts);
    let outcome = match result {
        Ok(_) => Ok(()),
        Err(failure) => {
            let err = attempt::verdict(&at, ctx.max_attempts, failure);
            tracing::warn!(
                check_run_id = job.check_run_id,
                batch = job.batch_index,
                attempt = at.current(),
                error = %err,
                "batch failed"
            );
            // Nothing is lost when a batch dies: its workflows stay due and the next check
            // claims them again. The run is marked failed, naming the batch, so that waiters
            // (`enqueue check --wait`, the beat) and dashboards do not wait for it for ever;
            // the other batches still commit and count.
            if err.downcast_ref::<apalis::prelude::AbortError>().is_some() {
                let msg = format!(
                    "batch {} dead after {} attempt(s): {err}; its workflows stay due for the \
                     next check",
                    job.batch_index,
                    at.current()
                );
                fail_run(&ctx, job.check_run_id, &msg).await;
            }
            Err(err)
        }
    };
    record("batches", started, &outcome, last);
    outcome
}

/// `escalator:noop`: the queue-overhead benchmark's job.
pub async fn noop(job: Incoming<Noop>, _at: Attempt, ctx: Data<Ctx>) -> Result<(), BoxDynError> {
    ctx.health.touch();
    match job {
        Incoming::Job(_) => {
            metrics::counter!(m::JOBS, "queue" => "noop", "outcome" => "ok").increment(1);
            Ok(())
        }
        Incoming::Malformed { raw, error } => malformed("noop", &raw, &error),
    }
}

/// `escalator:deliveries`: drain the outbox. Safe to run any number of times at once: rows are
/// claimed under a lease, and each outcome is recorded per row.
pub async fn deliver_notifications(
    job: Incoming<DeliverNotifications>,
    at: Attempt,
    ctx: Data<Ctx>,
) -> Result<(), BoxDynError> {
    ctx.health.touch();
    if let Incoming::Malformed { raw, error } = job {
        return malformed("deliveries", &raw, &error);
    }
    let Some(deliverer) = ctx.deliverer.clone() else {
        return Ok(());
    };
    let started = Instant::now();
    // no new claim after the attempt's own time; the claim under way may take its whole lease
    // and is never cut off mid-send (a message the provider took would go unrecorded and be
    // sent again after the lease)
    let budget = ctx.attempt_timeout;
    let deadline = budget.saturating_add(deliverer.lease);
    let result = attempt::guarded(deadline, async move {
        deliverer
            .drain_within(50, 40, budget)
            .await
            .map_err(|e| classify(EngineError::Store(e)))
    })
    .await;
    let last = attempt::is_last(&at, ctx.max_attempts);
    let outcome = match result {
        Ok(report) => {
            if report.sent + report.retried + report.dead > 0 {
                tracing::info!(
                    sent = report.sent,
                    retried = report.retried,
                    dead = report.dead,
                    "outbox drained"
                );
            }
            if report.more {
                // a large run's outbox outlasts one job: the next job goes on at once
                let next = DeliverNotifications { check_run_id: None };
                if let Err(e) = ctx.engine.queues.push_delivery(&next).await {
                    tracing::warn!(error = %e, "could not enqueue more delivery; the sweep will");
                }
            }
            Ok(())
        }
        Err(failure) => Err(attempt::verdict(&at, ctx.max_attempts, failure)),
    };
    record("deliveries", started, &outcome, last);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `record` leaves in a fresh registry for one attempt's outcome.
    fn rendered(queue: &'static str, outcome: Result<(), BoxDynError>, last: bool) -> String {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || record(queue, Instant::now(), &outcome, last));
        handle.render()
    }

    #[test]
    fn a_retried_escalation_job_is_not_an_escalation_failure() {
        let text = rendered("batches", Err("database unreachable".into()), false);
        assert!(
            text.contains("escalator_jobs_total{queue=\"batches\",outcome=\"retry\"} 1"),
            "{text}"
        );
        assert!(!text.contains(m::FAILURES), "{text}");
    }

    #[test]
    fn an_escalation_job_that_dies_is_an_escalation_failure() {
        for queue in ["checks", "batches"] {
            let text = rendered(queue, Err("database unreachable".into()), true);
            let dead = format!("escalator_jobs_total{{queue=\"{queue}\",outcome=\"dead\"}} 1");
            assert!(text.contains(&dead), "{text}");
            let failed = format!("{}{{queue=\"{queue}\"}} 1", m::FAILURES);
            assert!(text.contains(&failed), "{text}");
        }
        // a delivery's death is the notifications' business, not the escalations'
        let text = rendered("deliveries", Err("relay refused".into()), true);
        assert!(!text.contains(m::FAILURES), "{text}");
        let ok = rendered("batches", Ok(()), false);
        assert!(!ok.contains(m::FAILURES), "{ok}");
    }
}
