//! Worker construction on either backend, and a supervised run with graceful shutdown.
//!
//! Each worker gets: the lenient codec, the reliable poll strategy, a unique name, explicit
//! heartbeats, a concurrency limit, in-process retries with exponential backoff and jitter, a
//! per-attempt timeout and a panic guard. Handlers must abort on their last attempt (see
//! [`attempt`](crate::attempt)): apalis-redis otherwise re-schedules failures up to 25 times.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::*;
use apalis_redis::{ConnectionManager, RedisStorage};
use apalis_sqlite::{SqlitePool, SqliteStorage};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{
    Incoming, LenientJson, QueueError, ReliableInterval, WorkerSettings, unique_worker_name,
};

/// The time after which tower drops a handler whatever it is doing: a backstop for a handler
/// that never returns, beyond anything [`attempt::guarded`](crate::attempt::guarded) allows
/// (its deadline twice when a commit is under way) plus a margin for what follows the attempt
/// (metrics, marking a run failed). It was the attempt time plus 5 s, which dropped a handler
/// waiting for a COMMIT already sent: the effects committed uncounted and, on the last
/// attempt, the job dead.
pub fn backstop(attempt_timeout: Duration) -> Duration {
    attempt_timeout * 2 + Duration::from_secs(30)
}

/// Registers a worker for `T` on a Redis queue. The handler is
/// `async fn(Incoming<T>, Attempt, Data<S>) -> Result<(), BoxDynError>`.
pub fn register_redis<T, S, H, Fut>(
    monitor: Monitor,
    conn: ConnectionManager,
    settings: &WorkerSettings,
    state: S,
    handler: H,
) -> Result<Monitor, QueueError>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static,
    S: Clone + Send + Sync + 'static,
    H: Fn(Incoming<T>, Attempt, Data<S>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxDynError>> + Send + 'static,
{
    let policy = settings.retry_policy()?;
    let settings = settings.clone();
    Ok(monitor.register(move |restart| {
        let backend = RedisStorage::<Incoming<T>>::new(conn.clone())
            .with_config(settings.redis_config())
            .with_codec(LenientJson)
            .poll_with_strategy(
                ReliableInterval::new(settings.poll_interval).observed(settings.on_poll.clone()),
            );
        WorkerBuilder::new(unique_worker_name(&settings.name_prefix, restart))
            .backend(backend)
            .data(state.clone())
            .concurrency(settings.concurrency)
            // each job on its own task: concurrent jobs use both cores instead of sharing the
            // worker's single task
            .parallelize(tokio::spawn)
            .retry(policy.clone())
            .timeout(backstop(settings.attempt_timeout))
            .catch_panic()
            .build(handler.clone())
    }))
}

/// The same worker on an apalis-sqlite queue (the embedded mode).
pub fn register_sqlite<T, S, H, Fut>(
    monitor: Monitor,
    pool: SqlitePool,
    settings: &WorkerSettings,
    state: S,
    handler: H,
) -> Result<Monitor, QueueError>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static,
    S: Clone + Send + Sync + 'static,
    H: Fn(Incoming<T>, Attempt, Data<S>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxDynError>> + Send + 'static,
{
    let policy = settings.retry_policy()?;
    let settings = settings.clone();
    Ok(monitor.register(move |restart| {
        let backend = SqliteStorage::<Incoming<T>>::new(&pool)
            .with_config(settings.sqlite_config())
            .with_codec(LenientJson)
            .poll_with_strategy(
                ReliableInterval::new(settings.poll_interval).observed(settings.on_poll.clone()),
            );
        WorkerBuilder::new(unique_worker_name(&settings.name_prefix, restart))
            .backend(backend)
            .data(state.clone())
            .concurrency(settings.concurrency)
            // each job on its own task: concurrent jobs use both cores instead of sharing the
            // worker's single task
            .parallelize(tokio::spawn)
            .retry(policy.clone())
            .timeout(backstop(settings.attempt_timeout))
            .catch_panic()
            .build(handler.clone())
    }))
}

/// How a supervised run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Shutdown was requested and every in-flight job finished in time.
    Drained,
    /// Shutdown was requested; jobs still running after the grace period were abandoned (they
    /// are re-run by orphan recovery, and their effects are idempotent).
    GraceExpired,
}

/// Runs every registered worker until `signal` resolves, then lets in-flight jobs finish for at
/// most `grace`. A worker that dies stops the others and is returned as an error, so the
/// process exits non-zero and its supervisor (Kubernetes) restarts it — apalis's own restart
/// would re-register a name apalis-redis still considers alive.
pub async fn run_supervised(
    monitor: Monitor,
    signal: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<Stopped, QueueError> {
    let fatal = Arc::new(tokio::sync::Notify::new());
    let fatal_cb = fatal.clone();
    let monitor = monitor.should_restart(move |_worker, err| {
        tracing::error!(error = %err, "a worker stopped");
        fatal_cb.notify_one();
        false
    });
    let ctx = monitor.context();
    let run = monitor.run();
    tokio::pin!(run);
    tokio::select! {
        res = &mut run => {
            // the process stops: long loops in jobs still running (the outbox drain) must
            // start nothing more, as on a signal
            escalator_runtime::shutdown::request_stop();
            res.map_err(QueueError::apalis)?;
            return Err(QueueError::Apalis("every worker exited before shutdown was requested".into()));
        }
        _ = fatal.notified() => {
            // as on a signal: a drain kept sending for its whole budget, past the grace, and
            // was cut off mid-send (what the provider took went out again after the lease)
            escalator_runtime::shutdown::request_stop();
            ctx.shutdown().map_err(QueueError::apalis)?;
            let _ = tokio::time::timeout(grace, &mut run).await;
            return Err(QueueError::Apalis("a worker failed; see the log above".into()));
        }
        _ = signal => {}
    }
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "stopping: finishing in-flight jobs"
    );
    ctx.shutdown().map_err(QueueError::apalis)?;
    match tokio::time::timeout(grace, &mut run).await {
        Ok(Ok(())) => Ok(Stopped::Drained),
        Ok(Err(e)) => Err(QueueError::apalis(e)),
        Err(_) => Ok(Stopped::GraceExpired),
    }
}
