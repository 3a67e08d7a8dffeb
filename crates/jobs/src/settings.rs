//! Queue names and worker settings, with the apalis-redis workarounds made explicit: named
//! queues, short explicit heartbeats, an idempotency TTL, unique worker names.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apalis::layers::retry::HasherRng;
use apalis::layers::retry::backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use apalis::prelude::{BackoffRetryPolicy, RetryPolicy};

use crate::QueueError;
use crate::poll::PollObserver;

/// The queues of one deployment. Names are explicit (apalis would otherwise use the Rust type
/// path, which changes when code moves); a namespace separates deployments and tests sharing
/// one Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueNames {
    /// Planner jobs: `escalator:checks`.
    pub checks: String,
    /// Batch jobs: `escalator:batches`.
    pub batches: String,
    /// Delivery jobs: `escalator:deliveries`.
    pub deliveries: String,
    /// Benchmark no-op jobs: `escalator:noop`.
    pub noop: String,
}

impl QueueNames {
    /// The queues under `namespace` (`escalator` in production).
    pub fn new(namespace: &str) -> Self {
        QueueNames {
            checks: format!("{namespace}:checks"),
            batches: format!("{namespace}:batches"),
            deliveries: format!("{namespace}:deliveries"),
            noop: format!("{namespace}:noop"),
        }
    }

    /// Every queue, for gauges and status.
    pub fn all(&self) -> [&str; 4] {
        [&self.checks, &self.batches, &self.deliveries, &self.noop]
    }

    /// The queue `name` stands for: its full name (`escalator:batches`) or its short one
    /// (`batches`), as operators type it.
    pub fn resolve(&self, name: &str) -> Option<&str> {
        self.all().into_iter().find(|q| {
            *q == name
                || q.strip_suffix(name)
                    .is_some_and(|prefix| !name.is_empty() && prefix.ends_with(':'))
        })
    }
}

impl Default for QueueNames {
    fn default() -> Self {
        QueueNames::new("escalator")
    }
}

/// How one worker consumes one queue.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSettings {
    /// Prefix of the worker name; a unique suffix is added per start.
    pub name_prefix: String,
    /// The queue.
    pub queue: String,
    /// Jobs handled at once.
    pub concurrency: usize,
    /// Jobs fetched per round trip (they are then invisible to other workers until done).
    pub fetch_batch: usize,
    /// Liveness heartbeat; a worker silent for `heartbeat × missed_heartbeats` is declared dead
    /// and its jobs re-enqueued. apalis's defaults make that 5 minutes.
    pub heartbeat: Duration,
    /// See `heartbeat`.
    pub missed_heartbeats: usize,
    /// How long idempotency keys live (Redis). Without one, apalis-redis deletes the key at
    /// once and deduplication does nothing.
    pub idempotency_ttl: Duration,
    /// How often an idle worker looks for work.
    pub poll_interval: Duration,
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// Attempts before a job is dead (the handler aborts on the last one).
    pub max_attempts: usize,
    /// First retry delay.
    pub backoff_min: Duration,
    /// Longest retry delay.
    pub backoff_max: Duration,
    /// Jitter factor, 0.0–1.0.
    pub backoff_jitter: f64,
    /// Told of every poll of the queue (the process's liveness); none by default.
    pub on_poll: PollObserver,
}

impl WorkerSettings {
    /// Production defaults for `queue`.
    pub fn new(name_prefix: impl Into<String>, queue: impl Into<String>) -> Self {
        WorkerSettings {
            name_prefix: name_prefix.into(),
            queue: queue.into(),
            concurrency: 2,
            fetch_batch: 10,
            heartbeat: Duration::from_secs(10),
            missed_heartbeats: 3,
            idempotency_ttl: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_millis(200),
            attempt_timeout: Duration::from_secs(120),
            max_attempts: 5,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            backoff_jitter: 0.5,
            on_poll: PollObserver::default(),
        }
    }

    /// apalis-redis's configuration.
    ///
    /// Task leases are off. With them on (the default), each fetched task is "locked" by a
    /// script that `LREM`s it from the queue's list of waiting tasks, which the fetch has
    /// already trimmed it from, so every call scans the whole backlog for nothing: 66 µs per job
    /// with a few thousand waiting, and 60 % of Redis's CPU in the 20,000 no-op benchmark. The
    /// lease only records `locked_by`/`locked_at` in the task's metadata; nothing here reads
    /// them. What keeps a task to one worker is the fetch itself (one script moves it into that
    /// worker's in-flight set), and a dead worker's tasks are re-enqueued from that set, not from
    /// leases.
    pub fn redis_config(&self) -> apalis_redis::Config {
        apalis_redis::Config::default()
            .queue(&self.queue)
            .batch_size(self.fetch_batch.max(1))
            .heartbeat_interval(self.heartbeat)
            .missed_heartbeats(self.missed_heartbeats)
            .idempotency_ttl(Some(self.idempotency_ttl))
            .lock_tasks(false)
    }

    /// apalis-sqlite's configuration.
    pub fn sqlite_config(&self) -> apalis_sqlite::Config {
        apalis_sqlite::Config::default()
            .queue(&self.queue)
            .batch_size(self.fetch_batch.max(1))
            .heartbeat_interval(self.heartbeat)
            .missed_heartbeats(self.missed_heartbeats)
    }

    /// In-process retries (`max_attempts − 1`) with exponential backoff and jitter.
    pub fn retry_policy(
        &self,
    ) -> Result<BackoffRetryPolicy<ExponentialBackoff<HasherRng>>, QueueError> {
        let backoff = ExponentialBackoffMaker::new(
            self.backoff_min,
            self.backoff_max,
            self.backoff_jitter,
            HasherRng::default(),
        )
        .map_err(|e| QueueError::Config(format!("backoff: {e}")))?
        .make_backoff();
        Ok(RetryPolicy::retries(self.max_attempts.saturating_sub(1)).with_backoff(backoff))
    }
}

/// A worker name unique to this process start (and to each in-process restart):
/// apalis-redis refuses a name it has seen alive within the orphan window.
pub fn unique_worker_name(prefix: &str, restart: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".to_owned());
    format!(
        "{prefix}-{host}-{}-{nanos:x}-r{restart}",
        std::process::id()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_are_explicit_and_namespaced() {
        let q = QueueNames::default();
        assert_eq!(q.checks, "escalator:checks");
        assert_eq!(q.batches, "escalator:batches");
        assert_eq!(q.deliveries, "escalator:deliveries");
        assert_eq!(QueueNames::new("t1").checks, "t1:checks");
    }

    #[test]
    fn worker_names_are_unique_per_start() {
        let a = unique_worker_name("worker", 0);
        let b = unique_worker_name("worker", 0);
        assert_ne!(a, b);
        assert!(a.starts_with("worker-"));
    }

    #[test]
    fn redis_settings_carry_the_workarounds() {
        let s = WorkerSettings::new("w", "escalator:checks");
        let c = s.redis_config();
        assert_eq!(c.scheduled_jobs_set(), "escalator:checks:scheduled");
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.missed_heartbeats, 3);
        assert_eq!(c.orphaned_duration(), Duration::from_secs(30));
        assert_eq!(c.idempotency_ttl, Some(Duration::from_secs(86_400)));
        assert!(!c.lock_tasks, "leases cost a scan of the backlog per job");
        assert!(s.retry_policy().is_ok());
    }
}
