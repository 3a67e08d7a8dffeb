//! The worker process: one apalis worker per queue under one monitor, on Redis or on SQLite,
//! until SIGTERM; then in-flight jobs finish within the grace period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::Monitor;
use escalator_jobs::{
    CheckWorkflows, DeliverNotifications, EscalateBatch, Noop, PollObserver, Queues, Stopped,
    WorkerSettings,
};
use escalator_jobs::{register_redis, register_sqlite, run_supervised};

use crate::engine::Engine;
use crate::jobs::{self, HandlerContext};

/// Worker process settings.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerConfig {
    /// Batch jobs handled at once per process (checks and no-ops get the same).
    pub concurrency: usize,
    /// Attempts before a job is dead.
    pub max_attempts: usize,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// How long in-flight jobs may take to finish after SIGTERM.
    pub shutdown_timeout: Duration,
    /// Idle polling period.
    pub poll_interval: Duration,
    /// Liveness heartbeat; a worker silent for three of them, or for its shutdown grace and
    /// two more, is declared dead and its jobs are re-run by the others.
    pub heartbeat: Duration,
    /// Prefix of worker names (the pod name in Kubernetes).
    pub name: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            concurrency: 2,
            max_attempts: 5,
            attempt_timeout: Duration::from_secs(120),
            shutdown_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(25),
            heartbeat: Duration::from_secs(10),
            name: "worker".into(),
        }
    }
}

/// The deliveries queue's settings: one job at a time per fetch, and an attempt timeout a
/// lease longer than the others'. A delivery job claims no new round after the attempt time
/// but finishes the claim under way, which may take a whole lease (its own deadline,
/// `jobs::deliver_notifications`); the worker's timeout outside it cut that claim off at the
/// attempt time instead, mid-send, and messages the provider had taken went unrecorded and
/// were sent again after the lease.
fn delivery_settings(
    config: &WorkerConfig,
    queue: &str,
    on_poll: &PollObserver,
    lease: Duration,
) -> WorkerSettings {
    let mut s = settings(config, queue, on_poll);
    s.fetch_batch = 1;
    s.attempt_timeout = config.attempt_timeout.saturating_add(lease);
    s
}

fn settings(config: &WorkerConfig, queue: &str, on_poll: &PollObserver) -> WorkerSettings {
    let mut s = WorkerSettings::new(&config.name, queue);
    s.on_poll = on_poll.clone();
    s.concurrency = config.concurrency.max(1);
    s.max_attempts = config.max_attempts.max(1);
    s.attempt_timeout = config.attempt_timeout;
    s.poll_interval = config.poll_interval;
    s.heartbeat = config.heartbeat;
    s.missed_heartbeats = missed_heartbeats(config.heartbeat, config.shutdown_timeout);
    s
}

/// How many heartbeats a worker may miss before its jobs are re-run by others: at least 3,
/// and enough that its shutdown grace ends first. A draining worker polls no more, and so
/// sends no heartbeat: with 3 × 10 s against a 30 s grace, another worker took a job back
/// from one still finishing it (20 s after SIGTERM, at worst) and ran it alongside.
fn missed_heartbeats(heartbeat: Duration, grace: Duration) -> usize {
    let beat = heartbeat.as_millis().max(1);
    let grace_beats = usize::try_from(grace.as_millis().div_ceil(beat)).unwrap_or(usize::MAX);
    grace_beats.saturating_add(2).max(3)
}

/// Runs the checks, batches and no-op workers until `shutdown` resolves.
pub async fn run(
    engine: Engine,
    config: WorkerConfig,
    deliverer: Option<escalator_notify::Deliverer>,
    health: escalator_runtime::serve::Health,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<Stopped, escalator_jobs::QueueError> {
    let delivering = deliverer.is_some();
    let lease = deliverer.as_ref().map(|d| d.lease).unwrap_or_default();
    // every poll of every queue proves the worker alive: an idle worker stays healthy, a
    // stalled poll loop does not
    let on_poll = {
        let health = health.clone();
        PollObserver::new(move || health.touch())
    };
    let ctx = Arc::new(HandlerContext {
        engine: engine.clone(),
        max_attempts: config.max_attempts.max(1),
        attempt_timeout: config.attempt_timeout,
        health,
        deliverer,
    });
    let names = engine.queues.names().clone();
    // Few, long planner jobs: fetch one at a time so that another worker can take the next.
    let mut checks = settings(&config, &names.checks, &on_poll);
    checks.fetch_batch = 1;
    let mut batches = settings(&config, &names.batches, &on_poll);
    batches.fetch_batch = config.concurrency.max(1);
    let noop = settings(&config, &names.noop, &on_poll);
    let deliveries = delivery_settings(&config, &names.deliveries, &on_poll, lease);
    let monitor = Monitor::new();
    let monitor = match &engine.queues {
        Queues::Redis { conn, .. } => {
            let m = register_redis::<CheckWorkflows, _, _, _>(
                monitor,
                conn.clone(),
                &checks,
                ctx.clone(),
                jobs::check_workflows,
            )?;
            let m = register_redis::<EscalateBatch, _, _, _>(
                m,
                conn.clone(),
                &batches,
                ctx.clone(),
                jobs::escalate_batch,
            )?;
            let m =
                register_redis::<Noop, _, _, _>(m, conn.clone(), &noop, ctx.clone(), jobs::noop)?;
            if delivering {
                register_redis::<DeliverNotifications, _, _, _>(
                    m,
                    conn.clone(),
                    &deliveries,
                    ctx.clone(),
                    jobs::deliver_notifications,
                )?
            } else {
                m
            }
        }
        Queues::Sqlite { pool, .. } => {
            let m = register_sqlite::<CheckWorkflows, _, _, _>(
                monitor,
                pool.clone(),
                &checks,
                ctx.clone(),
                jobs::check_workflows,
            )?;
            let m = register_sqlite::<EscalateBatch, _, _, _>(
                m,
                pool.clone(),
                &batches,
                ctx.clone(),
                jobs::escalate_batch,
            )?;
            let m =
                register_sqlite::<Noop, _, _, _>(m, pool.clone(), &noop, ctx.clone(), jobs::noop)?;
            if delivering {
                register_sqlite::<DeliverNotifications, _, _, _>(
                    m,
                    pool.clone(),
                    &deliveries,
                    ctx.clone(),
                    jobs::deliver_notifications,
                )?
            } else {
                m
            }
        }
    };
    if !delivering {
        tracing::warn!(
            "no email sender configured (ESCALATOR_SMTP_URL): notifications stay in the outbox"
        );
    }
    let taken: Vec<&str> = names
        .all()
        .into_iter()
        .filter(|q| delivering || *q != names.deliveries)
        .collect();
    tracing::info!(
        concurrency = config.concurrency,
        max_attempts = config.max_attempts,
        queues = ?taken,
        "worker started"
    );
    run_supervised(monitor, shutdown, config.shutdown_timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worker's timeout around a delivery attempt outlasts the handler's own deadline
    /// (attempt time + lease), which stops claiming in time and lets the claim under way end.
    #[test]
    fn a_delivery_attempt_may_finish_the_claim_under_way() {
        let config = WorkerConfig::default();
        let lease = escalator_notify::lease_for(Some(Duration::from_secs(30)), None);
        let on_poll = PollObserver::new(|| {});
        let d = delivery_settings(&config, "escalator:deliveries", &on_poll, lease);
        assert_eq!(d.attempt_timeout, config.attempt_timeout + lease);
        assert_eq!(d.fetch_batch, 1);
        let batches = settings(&config, "escalator:batches", &on_poll);
        assert_eq!(batches.attempt_timeout, config.attempt_timeout);
    }

    /// A worker's jobs are not re-run by others while its shutdown grace lasts (a draining
    /// worker sends no heartbeat): its silence must outlast the grace by a heartbeat, counted
    /// from a heartbeat just before the SIGTERM.
    #[test]
    fn a_draining_worker_is_not_declared_dead_before_its_grace_ends() {
        for (heartbeat, grace) in [(10, 30), (1, 30), (10, 5), (1, 1), (7, 60), (10, 0)] {
            let (heartbeat, grace) = (Duration::from_secs(heartbeat), Duration::from_secs(grace));
            let config = WorkerConfig {
                heartbeat,
                shutdown_timeout: grace,
                ..WorkerConfig::default()
            };
            let s = settings(&config, "escalator:batches", &PollObserver::new(|| {}));
            let window = heartbeat * u32::try_from(s.missed_heartbeats).unwrap();
            assert!(s.missed_heartbeats >= 3, "{heartbeat:?} {grace:?}");
            assert!(
                window > grace + heartbeat,
                "{heartbeat:?} {grace:?}: {window:?}"
            );
        }
        // the defaults: 10 s × 5
        let s = settings(
            &WorkerConfig::default(),
            "escalator:batches",
            &PollObserver::new(|| {}),
        );
        assert_eq!(s.missed_heartbeats, 5);
    }
}
