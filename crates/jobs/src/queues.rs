//! The producer side, shared by beat, api, CLI and the planner: push jobs, read queue depths,
//! list and retry dead jobs — on apalis-redis (production) or apalis-sqlite (embedded).
//!
//! apalis-redis 1.0's fetch script unpacks every due id of a queue at once and fails for good
//! past about 8,000: pushes here go in chunks of at most [`CHUNK`] and wait while more than
//! [`MAX_DUE`] jobs are due, so no helper can wedge a queue.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use apalis::prelude::{TaskBuilder, TaskSink};
use apalis_redis::ConnectionManager;
use apalis_sqlite::{SqlitePool, SqliteStorage};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::QueueError;
use crate::payload::{CheckWorkflows, DeliverNotifications, EscalateBatch, Noop};
use crate::settings::{QueueNames, WorkerSettings};

/// Jobs per push call.
pub const CHUNK: usize = 1_000;
/// Pushing pauses while a Redis queue has more jobs due than this.
pub const MAX_DUE: u64 = 4_000;
/// How long a push waits for a backlog to drain before giving up.
pub const BACKLOG_PATIENCE: Duration = Duration::from_secs(300);
/// Delivery jobs waiting past which a delivery request adds none. A delivery job is a nudge:
/// each drains every due outbox row it can and pushes the next while rows remain, and the
/// beat's sweep pushes one whenever rows are due and none waits. Without this cap, batches
/// pushing one request each onto a queue that no worker takes (no sender configured anywhere,
/// or the delivery workers down) filled it to [`MAX_DUE`], and then every batch waited
/// [`BACKLOG_PATIENCE`] for room after its commit, timing out and holding back escalation.
pub const MAX_QUEUED_DELIVERIES: u64 = 100;

/// How long one Redis command may take. redis-rs's default (500 ms) turned a Redis slowed by
/// a loaded machine, a fork for a snapshot or a long fetch script into errors that stop a
/// worker's poll loop and so the worker; a Redis that is gone is still noticed within seconds.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a Redis connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connection attempts a service retries (100 ms, doubling: about 6 s in all).
const SERVICE_RETRIES: usize = 6;

/// Depth of one queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Waiting to run (including scheduled retries).
    pub pending: u64,
    /// Dead: attempts exhausted or malformed; waiting for an operator.
    pub dead: u64,
    /// Finished.
    pub done: u64,
}

/// A dead job, for `escalator status` and the api.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadJob {
    /// Queue name.
    pub queue: String,
    /// Task id.
    pub id: String,
    /// The payload as text.
    pub payload: String,
    /// The last error.
    pub error: Option<String>,
}

/// Producer handles for every queue of a deployment.
#[derive(Debug, Clone)]
pub enum Queues {
    /// apalis-redis.
    Redis {
        /// The shared, reconnecting connection.
        conn: ConnectionManager,
        /// Queue names.
        names: QueueNames,
    },
    /// apalis-sqlite, in its own database file.
    Sqlite {
        /// The queue database.
        pool: SqlitePool,
        /// Queue names.
        names: QueueNames,
    },
}

fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

/// The client for the Redis at `url`, and the settings of its connection manager, which
/// retries a lost connection `retries` times (100 ms, doubling).
fn redis_client(
    url: &str,
    retries: usize,
) -> Result<(redis::Client, redis::aio::ConnectionManagerConfig), QueueError> {
    // Nagle's algorithm off (redis-rs leaves it on): a push or a fetch must not wait for the
    // server's delayed ACK
    let info = redis::IntoConnectionInfo::into_connection_info(url)
        .map_err(|e| QueueError::Config(format!("REDIS_URL: {e}")))?
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_number_of_retries(retries)
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    Ok((redis::Client::open(info)?, config))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// How the error of a run whose job could not be pushed begins
/// ([`Queues::push_check_or_fail_run`]): a beat taking the lease recognises its slot's run by it
/// and pushes that run again.
pub const UNQUEUED: &str = "the check could not be enqueued";

impl Queues {
    /// Connects to `redis://…` or opens (creating, migrating) `sqlite://…`, for a long-running
    /// service: a Redis that is down or restarting is retried for several seconds, at start-up
    /// and on every reconnection.
    pub async fn connect(url: &str, names: QueueNames) -> Result<Queues, QueueError> {
        Queues::connect_with(url, names, SERVICE_RETRIES).await
    }

    /// [`Queues::connect`] for a one-shot command (`status`, `enqueue`, `jobs`): an unreachable
    /// Redis is reported at once instead of after the services' retries.
    pub async fn connect_once(url: &str, names: QueueNames) -> Result<Queues, QueueError> {
        Queues::connect_with(url, names, 0).await
    }

    async fn connect_with(
        url: &str,
        names: QueueNames,
        retries: usize,
    ) -> Result<Queues, QueueError> {
        if is_redis(url) {
            let (client, config) = redis_client(url, retries)?;
            let mut conn = client
                .get_connection_manager_with_config(config)
                .await
                .map_err(|e| QueueError::Connect(e.to_string()))?;
            refuse_evicting_redis(&mut conn).await?;
            Ok(Queues::Redis { conn, names })
        } else if url.starts_with("sqlite:") {
            let options: apalis_sqlite::SqliteConnectOptions = url
                .parse()
                .map_err(|e: sqlx::Error| QueueError::Config(e.to_string()))?;
            let options = options
                .create_if_missing(true)
                .busy_timeout(Duration::from_secs(30));
            let pool = apalis_sqlite::SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await?;
            // Two processes opening a fresh queue file at once (a worker and `escalator enqueue`)
            // race on apalis-sqlite's migrations; the loser retries once the winner is done.
            let mut attempt = 0;
            loop {
                match SqliteStorage::<()>::setup(&pool).await {
                    Ok(()) => break,
                    Err(e) if attempt < 5 => {
                        attempt += 1;
                        tracing::debug!(error = %e, attempt, "queue setup raced; retrying");
                        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                    }
                    Err(e) => return Err(QueueError::apalis(e)),
                }
            }
            // where prune_done counts what it removed (Queues::finished)
            sqlx::query(SQLITE_PRUNED).execute(&pool).await?;
            let unreadable = sqlx::query(SQLITE_UNREADABLE).execute(&pool).await?;
            if unreadable.rows_affected() > 0 {
                tracing::warn!(
                    queue_url = url,
                    rows = unreadable.rows_affected(),
                    "queue rows whose id is not a ULID were made dead jobs (`escalator jobs \
                     dead` lists them): apalis-sqlite cannot read them, and one stopped every \
                     worker"
                );
            }
            Ok(Queues::Sqlite { pool, names })
        } else {
            Err(QueueError::UnsupportedUrl(url.to_owned()))
        }
    }

    /// [`Queues::connect`] for a Redis that is unreachable now: connects on first use, and
    /// again after each failure, as a connected one reconnects. For the api, which serves
    /// everything but enqueueing without a queue: a replica (re)started during a Redis outage
    /// exited instead, and crash-looped until Redis was back. (The check that Redis does not
    /// evict keys is left to the workers and the beat, which refuse to start on one.)
    pub fn connect_lazily(url: &str, names: QueueNames) -> Result<Queues, QueueError> {
        if !is_redis(url) {
            return Err(QueueError::UnsupportedUrl(url.to_owned()));
        }
        let (client, config) = redis_client(url, SERVICE_RETRIES)?;
        let conn = redis::aio::ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| QueueError::Connect(e.to_string()))?;
        Ok(Queues::Redis { conn, names })
    }

    /// The queue names.
    pub fn names(&self) -> &QueueNames {
        match self {
            Queues::Redis { names, .. } | Queues::Sqlite { names, .. } => names,
        }
    }

    /// Enqueues a planner job. Keyed by its run and its `as_of`, so pushing the same run twice
    /// enqueues once. (Keyed by the run id alone, a database restored from a backup hands out
    /// ids again that Redis still holds keys for, for a day: every new run was dropped as a
    /// duplicate and stayed `queued`.)
    pub async fn push_check(&self, job: &CheckWorkflows) -> Result<(), QueueError> {
        self.push_check_within(job, BACKLOG_PATIENCE).await
    }

    /// [`Queues::push_check`] that waits at most `patience` for a backlogged checks queue.
    pub async fn push_check_within(
        &self,
        job: &CheckWorkflows,
        patience: Duration,
    ) -> Result<(), QueueError> {
        let key = format!(
            "check:{}:{}",
            job.check_run_id,
            job.as_of.timestamp_micros()
        );
        let queue = self.names().checks.clone();
        self.push_within(&queue, vec![(Some(key), job.clone())], patience)
            .await
    }

    /// Pushes the job of check run `job.check_run_id`, as beat, api and CLI enqueue a check. If
    /// the push fails, the run is marked failed naming why — nothing would ever run it, and it
    /// would read `queued` for ever (to the CheckRunsStale alert, "no worker is running") — and
    /// the push's error is returned. The workflows stay due for the next check.
    pub async fn push_check_or_fail_run(
        &self,
        store: &escalator_store::Store,
        job: &CheckWorkflows,
    ) -> Result<(), QueueError> {
        self.push_check_or_fail_run_within(store, job, BACKLOG_PATIENCE)
            .await
    }

    /// [`Queues::push_check_or_fail_run`] that waits at most `patience` for a backlogged
    /// checks queue (`enqueue check --wait --timeout`).
    pub async fn push_check_or_fail_run_within(
        &self,
        store: &escalator_store::Store,
        job: &CheckWorkflows,
        patience: Duration,
    ) -> Result<(), QueueError> {
        // bounded as a whole: each Redis call has its response timeout, but a Redis that
        // accepts and never answers cost several of them and their reconnections (about 30 s
        // a push), and a beat's step outlasted its lease; a push that did land unseen is
        // pushed again under the same key
        let bound = patience.saturating_add(Duration::from_secs(1));
        let pushed = crate::error::within(bound, self.push_check_within(job, patience)).await;
        let Err(e) = pushed else {
            return Ok(());
        };
        // with its causes: the error alone reads "redis", not what Redis said (out of memory,
        // a read-only replica after a failover)
        let why = format!("{UNQUEUED}: {}", escalator_runtime::error::with_causes(&e));
        if let Err(f) = store
            .fail_unstarted_check_run(job.check_run_id, &why, chrono::Utc::now())
            .await
        {
            tracing::error!(check_run_id = job.check_run_id, error = %f, "cannot mark the unqueued run failed");
        }
        Err(e)
    }

    /// Enqueues a run's batch jobs, keyed by (run, `as_of`, index): a planner that runs twice
    /// pushes each batch once.
    pub async fn push_batches(&self, jobs: &[EscalateBatch]) -> Result<(), QueueError> {
        self.push_batches_within(jobs, BACKLOG_PATIENCE).await
    }

    /// [`Queues::push_batches`] that waits at most `patience` for a backlogged batches queue:
    /// a planner gives up before its attempt's deadline, so that its run's error names the
    /// backlog (it read "attempt timed out").
    pub async fn push_batches_within(
        &self,
        jobs: &[EscalateBatch],
        patience: Duration,
    ) -> Result<(), QueueError> {
        let keyed = jobs
            .iter()
            .map(|j| {
                (
                    Some(format!(
                        "batch:{}:{}:{}",
                        j.check_run_id,
                        j.as_of.timestamp_micros(),
                        j.batch_index
                    )),
                    j.clone(),
                )
            })
            .collect();
        let queue = self.names().batches.clone();
        self.push_within(&queue, keyed, patience).await
    }

    /// Enqueues a delivery job, unless [`MAX_QUEUED_DELIVERIES`] are waiting already: returns
    /// whether it did. Never waits for room.
    pub async fn push_delivery(&self, job: &DeliverNotifications) -> Result<bool, QueueError> {
        if self.deliveries_waiting().await? >= MAX_QUEUED_DELIVERIES {
            return Ok(false);
        }
        let queue = self.names().deliveries.clone();
        self.push(&queue, vec![(None, job.clone())]).await?;
        Ok(true)
    }

    /// Delivery jobs waiting: on Redis those a fetch can take now, on SQLite also those
    /// running or waiting for a retry.
    pub async fn deliveries_waiting(&self) -> Result<u64, QueueError> {
        let queue = &self.names().deliveries;
        match self {
            Queues::Redis { conn, .. } => due_jobs(&mut conn.clone(), queue).await,
            Queues::Sqlite { pool, .. } => Ok(sqlite_stats(pool, queue).await?.pending),
        }
    }

    /// Check and batch jobs waiting for a worker to take them, scheduled retries included
    /// (not those a worker is running): while there are some, a check run that has not moved
    /// waits for a worker; it is not lost.
    pub async fn checks_and_batches_waiting(&self) -> Result<u64, QueueError> {
        let names = self.names();
        let mut waiting = 0;
        for queue in [&names.checks, &names.batches] {
            waiting += match self {
                // the scheduled set and the list fetched from: running jobs are elsewhere
                Queues::Redis { conn, .. } => redis_stats(&mut conn.clone(), queue).await?.pending,
                Queues::Sqlite { pool, .. } => {
                    let n: i64 = sqlx::query_scalar(SQLITE_WAITING)
                        .bind(queue)
                        .fetch_one(pool)
                        .await?;
                    u64::try_from(n).unwrap_or(0)
                }
            };
        }
        Ok(waiting)
    }

    /// Enqueues `n` no-op jobs (the queue-overhead benchmark), in bounded chunks.
    pub async fn push_noops(&self, n: u64) -> Result<(), QueueError> {
        let queue = self.names().noop.clone();
        let mut next = 0;
        while next < n {
            let end = (next + CHUNK as u64).min(n);
            self.push(&queue, (next..end).map(|n| (None, Noop { n })).collect())
                .await?;
            next = end;
        }
        Ok(())
    }

    /// Pushes jobs in bounded chunks, each with its idempotency key if it has one.
    async fn push<T>(&self, queue: &str, jobs: Vec<(Option<String>, T)>) -> Result<(), QueueError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static,
    {
        self.push_within(queue, jobs, BACKLOG_PATIENCE).await
    }

    /// [`Queues::push`] that waits at most `patience` for a backlog to drain.
    async fn push_within<T>(
        &self,
        queue: &str,
        jobs: Vec<(Option<String>, T)>,
        patience: Duration,
    ) -> Result<(), QueueError>
    where
        T: Serialize + DeserializeOwned + Clone + Send + Sync + Unpin + 'static,
    {
        for chunk in jobs.chunks(CHUNK) {
            match self {
                Queues::Redis { conn, .. } => {
                    let mut conn = conn.clone();
                    let config = WorkerSettings::new("producer", queue).redis_config();
                    let tasks = chunk
                        .iter()
                        .map(|(key, job)| {
                            let builder = TaskBuilder::new(serde_json::to_vec(job)?);
                            Ok(match key {
                                Some(k) => builder.idempotency_key(k).build(),
                                None => builder.build(),
                            })
                        })
                        .collect::<Result<Vec<_>, QueueError>>()?;
                    // held from here to the end of the push (a cancelled push releases it
                    // when dropped)
                    let lock = wait_for_room(&mut conn, queue, chunk.len(), patience).await?;
                    // Redis's own error kept: a connection dropped or timed out mid-push is an
                    // outage to its callers (`enqueue` exits 3), not a refused job
                    let pushed = apalis_redis::queries::push_tasks(&mut conn, &config, &tasks)
                        .await
                        .map_err(|e| match e {
                            apalis_redis::Error::Database(r) => QueueError::Redis(r),
                            other => QueueError::apalis(other),
                        });
                    lock.release(&mut conn).await;
                    pushed?;
                }
                Queues::Sqlite { pool, .. } => {
                    let config = WorkerSettings::new("producer", queue).sqlite_config();
                    let mut storage = SqliteStorage::<T>::new(pool).with_config(config);
                    for (key, job) in chunk {
                        let builder = TaskBuilder::new(job.clone());
                        let task = match key {
                            Some(k) => builder.idempotency_key(k).build(),
                            None => builder.build(),
                        };
                        storage.push_task(task).await.map_err(QueueError::apalis)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Depth of every queue.
    pub async fn stats(&self) -> Result<Vec<QueueStats>, QueueError> {
        let mut out = Vec::new();
        for queue in self.names().all() {
            out.push(match self {
                Queues::Redis { conn, .. } => redis_stats(&mut conn.clone(), queue).await?,
                Queues::Sqlite { pool, .. } => sqlite_stats(pool, queue).await?,
            });
        }
        Ok(out)
    }

    /// Forgets finished (done) jobs that finished more than `older_than` ago, about `sample`
    /// per queue per call: returns how many. apalis keeps every finished job's payload and
    /// metadata for ever (its own vacuum is unsafe on Redis: it also takes jobs waiting for a
    /// retry), so without this Redis grows with every job run. Dead jobs are kept for
    /// operators to read and retry. On Redis the candidates are a random sample of the done
    /// set, so repeated calls reach every old job; each is checked and removed atomically.
    pub async fn prune_done(&self, older_than: Duration, sample: usize) -> Result<u64, QueueError> {
        let cutoff = unix_now().saturating_sub(older_than.as_secs());
        let mut pruned = 0;
        for queue in self.names().all() {
            pruned += match self {
                Queues::Redis { conn, .. } => {
                    let c = apalis_redis::Config::default().queue(queue);
                    let n: u64 = redis::Script::new(PRUNE_DONE)
                        .key(c.done_jobs_set())
                        .key(c.job_data_hash())
                        .key(c.job_meta_hash())
                        .key(pruned_key(queue))
                        .arg(sample.max(1))
                        .arg(cutoff)
                        .invoke_async(&mut conn.clone())
                        .await?;
                    n
                }
                Queues::Sqlite { pool, .. } => {
                    let mut tx = pool.begin().await?;
                    let n = sqlx::query(
                        "DELETE FROM Jobs WHERE id IN (SELECT id FROM Jobs WHERE job_type = ?1
                             AND status = 'Done' AND done_at < ?2 LIMIT ?3)",
                    )
                    .bind(queue)
                    .bind(i64::try_from(cutoff).unwrap_or(i64::MAX))
                    .bind(i64::try_from(sample.max(1)).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    sqlx::query(
                        "INSERT INTO escalator_pruned (job_type, n) VALUES (?1, ?2)
                         ON CONFLICT (job_type) DO UPDATE SET n = n + excluded.n",
                    )
                    .bind(queue)
                    .bind(i64::try_from(n).unwrap_or(i64::MAX))
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    n
                }
            };
        }
        Ok(pruned)
    }

    /// Jobs of `queue` that finished successfully since it was created: its done jobs and
    /// those pruned ([`Queues::prune_done`]). Unlike the done count, it never goes down.
    pub async fn finished(&self, queue: &str) -> Result<u64, QueueError> {
        match self {
            Queues::Redis { conn, .. } => {
                let c = apalis_redis::Config::default().queue(queue);
                let (done, pruned): (u64, Option<u64>) = redis::pipe()
                    .cmd("SCARD")
                    .arg(c.done_jobs_set())
                    .cmd("GET")
                    .arg(pruned_key(queue))
                    .query_async(&mut conn.clone())
                    .await?;
                Ok(done + pruned.unwrap_or(0))
            }
            Queues::Sqlite { pool, .. } => {
                let n: i64 = sqlx::query_scalar(
                    "SELECT (SELECT count(*) FROM Jobs WHERE job_type = ?1 AND status = 'Done')
                          + COALESCE((SELECT n FROM escalator_pruned WHERE job_type = ?1), 0)",
                )
                .bind(queue)
                .fetch_one(pool)
                .await?;
                Ok(u64::try_from(n).unwrap_or(0))
            }
        }
    }

    /// Up to `limit` dead jobs of every queue.
    pub async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, QueueError> {
        let mut out = Vec::new();
        for queue in self.names().all() {
            match self {
                Queues::Redis { conn, .. } => {
                    out.extend(redis_dead(&mut conn.clone(), queue, limit).await?)
                }
                Queues::Sqlite { pool, .. } => out.extend(sqlite_dead(pool, queue, limit).await?),
            }
        }
        Ok(out)
    }

    /// Puts a dead job back in its queue with its attempts reset. False if it was not dead.
    pub async fn retry_dead(&self, queue: &str, id: &str) -> Result<bool, QueueError> {
        match self {
            Queues::Redis { conn, .. } => redis_retry(&mut conn.clone(), queue, id).await,
            Queues::Sqlite { pool, .. } => {
                if !sqlite_readable_id(id) {
                    // only a dead job that exists is refused for its id: a mistyped one is
                    // not found (it was refused, sending the operator to delete its row)
                    let exists: Option<i64> =
                        sqlx::query_scalar("SELECT 1 FROM Jobs WHERE id = ?1 AND job_type = ?2")
                            .bind(id)
                            .bind(queue)
                            .fetch_optional(pool)
                            .await?;
                    return match exists {
                        Some(_) => Err(QueueError::Unretryable { id: id.to_owned() }),
                        None => Ok(false),
                    };
                }
                let done = sqlx::query(
                    "UPDATE Jobs SET status = 'Pending', attempts = 0, run_at = strftime('%s','now'),
                         lock_by = NULL, lock_at = NULL, done_at = NULL, last_result = NULL
                     WHERE id = ?1 AND job_type = ?2 AND (status = 'Killed'
                         OR (status = 'Failed' AND attempts >= max_attempts)
                         OR (status = 'Running' AND done_at IS NOT NULL))",
                )
                .bind(id)
                .bind(queue)
                .execute(pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }
        }
    }
}

/// Refuses a Redis that may evict keys under memory pressure: apalis keeps jobs, their data and
/// idempotency keys as ordinary keys, and an evicted one is a silently lost or doubled job.
/// (Servers that forbid CONFIG — some managed offerings — are trusted as configured.)
async fn refuse_evicting_redis(conn: &mut ConnectionManager) -> Result<(), QueueError> {
    let reply: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(conn)
        .await;
    match reply {
        Ok(kv) => match kv.get(1) {
            Some(policy) if policy != "noeviction" => Err(QueueError::Config(format!(
                "Redis maxmemory-policy is {policy:?}: it may evict queued jobs. Set \
                 `maxmemory-policy noeviction` (CONFIG SET maxmemory-policy noeviction, or in \
                 redis.conf) for the escalator queues"
            ))),
            _ => Ok(()),
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot read Redis maxmemory-policy; assuming noeviction");
            Ok(())
        }
    }
}

/// Waits until `queue` has room for `incoming` more due jobs, and returns holding the queue's
/// push lock: the look and the push that follows are one step for every pusher of every
/// process. Planners that waited for room together used to see it together and each push a
/// chunk, past what apalis-redis's fetch can take (about 8,000 due: the queue wedges).
async fn wait_for_room(
    conn: &mut ConnectionManager,
    queue: &str,
    incoming: usize,
    patience: Duration,
) -> Result<PushLock, QueueError> {
    let started = Instant::now();
    loop {
        // the backlog as seen under the lock, or None while another pusher holds it
        let seen = match PushLock::take(conn, queue).await? {
            Some(lock) => match due_jobs(conn, queue).await {
                Ok(due) if due + incoming as u64 <= MAX_DUE => return Ok(lock),
                Ok(due) => {
                    lock.release(conn).await;
                    Some(due)
                }
                Err(e) => {
                    lock.release(conn).await;
                    return Err(e);
                }
            },
            None => None,
        };
        if started.elapsed() > patience {
            let due = match seen {
                Some(due) => due,
                None => due_jobs(conn, queue).await?,
            };
            return Err(QueueError::Backlogged {
                queue: queue.to_owned(),
                due,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A queue's push lock in Redis (`<queue>:push-lock`), held from the look at its backlog to
/// the end of the push; it expires by itself after [`PUSH_LOCK_TTL`] should its holder die.
/// Dropped unreleased (a push cancelled by its caller's timeout, a client gone, shutdown), it
/// releases itself from a task of its own: other pushers would wait out the TTL.
struct PushLock {
    key: String,
    token: String,
    /// Taken by [`PushLock::release`]; still here on drop means the lock is still held.
    conn: Option<ConnectionManager>,
}

impl std::fmt::Debug for PushLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushLock")
            .field("key", &self.key)
            .field("held", &self.conn.is_some())
            .finish()
    }
}

/// How long a push lock outlives a holder that never releases it.
const PUSH_LOCK_TTL: Duration = Duration::from_secs(10);

impl PushLock {
    /// The lock, or None while another pusher holds it.
    async fn take(
        conn: &mut ConnectionManager,
        queue: &str,
    ) -> Result<Option<PushLock>, QueueError> {
        // armed before the SET: a push cancelled while it waits for the reply releases what
        // it may have taken (the token keeps it from deleting anyone else's)
        let mut lock = PushLock {
            key: format!("{queue}:push-lock"),
            token: uuid::Uuid::new_v4().to_string(),
            conn: Some(conn.clone()),
        };
        let taken: Option<String> = redis::cmd("SET")
            .arg(&lock.key)
            .arg(&lock.token)
            .arg("NX")
            .arg("PX")
            .arg(u64::try_from(PUSH_LOCK_TTL.as_millis()).unwrap_or(10_000))
            .query_async(conn)
            .await?;
        if taken.is_none() {
            // another pusher's: nothing of ours to release
            lock.conn = None;
            return Ok(None);
        }
        Ok(Some(lock))
    }

    /// Releases the lock if it is still this holder's (an expired one may be another's now).
    /// A failure only leaves it to expire. Cancelled meanwhile, the drop releases it again.
    async fn release(mut self, conn: &mut ConnectionManager) {
        unlock(conn, &self.key, &self.token).await;
        self.conn = None;
    }
}

impl Drop for PushLock {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        // outside a runtime (never, in practice) it is left to expire
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (key, token) = (
                std::mem::take(&mut self.key),
                std::mem::take(&mut self.token),
            );
            runtime.spawn(async move { unlock(&mut conn, &key, &token).await });
        }
    }
}

/// Deletes push lock `key` if it still holds `token`.
async fn unlock(conn: &mut ConnectionManager, key: &str, token: &str) {
    let released: redis::RedisResult<i64> = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             return redis.call('DEL', KEYS[1]) else return 0 end",
    )
    .key(key)
    .arg(token)
    .invoke_async(conn)
    .await;
    if let Err(e) = released {
        tracing::warn!(key = %key, error = %e, "cannot release a push lock; it expires by itself");
    }
}

/// Jobs of a Redis `queue` that a fetch can take now: due scheduled ones and waiting ones.
async fn due_jobs(conn: &mut ConnectionManager, queue: &str) -> Result<u64, QueueError> {
    let config = apalis_redis::Config::default().queue(queue);
    let (due, active): (u64, u64) = redis::pipe()
        .cmd("ZCOUNT")
        .arg(config.scheduled_jobs_set())
        .arg("-inf")
        .arg(unix_now() + 1)
        .cmd("LLEN")
        .arg(config.active_jobs_list())
        .query_async(conn)
        .await?;
    Ok(due + active)
}

async fn redis_stats(conn: &mut ConnectionManager, queue: &str) -> Result<QueueStats, QueueError> {
    let c = apalis_redis::Config::default().queue(queue);
    let (scheduled, active, dead, done): (u64, u64, u64, u64) = redis::pipe()
        .cmd("ZCARD")
        .arg(c.scheduled_jobs_set())
        .cmd("LLEN")
        .arg(c.active_jobs_list())
        .cmd("SCARD")
        .arg(c.dead_jobs_set())
        .cmd("SCARD")
        .arg(c.done_jobs_set())
        .query_async(conn)
        .await?;
    Ok(QueueStats {
        queue: queue.to_owned(),
        pending: scheduled + active,
        dead,
        done,
    })
}

async fn redis_dead(
    conn: &mut ConnectionManager,
    queue: &str,
    limit: usize,
) -> Result<Vec<DeadJob>, QueueError> {
    let c = apalis_redis::Config::default().queue(queue);
    let ids: Vec<String> = redis::cmd("SRANDMEMBER")
        .arg(c.dead_jobs_set())
        .arg(limit)
        .query_async(conn)
        .await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let payload: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(c.job_data_hash())
            .arg(&id)
            .query_async(conn)
            .await?;
        let error: Option<String> = redis::cmd("HGET")
            .arg(format!("{}:{id}", c.job_meta_hash()))
            .arg("result")
            .query_async(conn)
            .await?;
        out.push(DeadJob {
            queue: queue.to_owned(),
            payload: payload
                .map(|p| String::from_utf8_lossy(&p).into_owned())
                .unwrap_or_default(),
            error,
            id,
        });
    }
    Ok(out)
}

/// Removes the done tasks among a sample of the done set that finished before ARGV[2] (unix
/// seconds): their id, payload, result and metadata.
const PRUNE_DONE: &str = r#"
local ids = redis.call('SRANDMEMBER', KEYS[1], tonumber(ARGV[1]))
local pruned = 0
for _, id in ipairs(ids) do
  local meta = KEYS[3] .. ':' .. id
  local done_at = tonumber(redis.call('HGET', meta, 'done_at') or '')
  if done_at == nil or done_at < tonumber(ARGV[2]) then
    redis.call('SREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('HDEL', KEYS[3] .. ':result', id)
    redis.call('DEL', meta)
    pruned = pruned + 1
  end
end
if pruned > 0 then redis.call('INCRBY', KEYS[4], pruned) end
return pruned
"#;

/// Where the jobs pruned from `queue` are counted, so that finished jobs can still be counted
/// after pruning ([`Queues::finished`]).
fn pruned_key(queue: &str) -> String {
    format!("{queue}:escalator-pruned")
}

/// Makes dead jobs of the queue rows apalis-sqlite cannot read: an id that is not a ULID (26
/// Crockford base32 characters, either case) or no attempt count. Its fetch fails on such a
/// row, and a failed fetch stops the worker; the row stayed pending, so a hand-edited queue
/// file stopped `escalator dev` at every start.
const SQLITE_UNREADABLE: &str = "UPDATE Jobs SET status = 'Killed', done_at = strftime('%s', 'now'),
     last_result = '{\"Err\": \"escalator: unreadable queue row (its id is not a ULID, or it has no attempts): made dead instead of stopping every worker\"}'
 WHERE status IN ('Pending', 'Queued', 'Running') AND done_at IS NULL
   AND (id IS NULL OR length(CAST(id AS BLOB)) <> 26
        OR upper(id) GLOB '*[^0123456789ABCDEFGHJKMNPQRSTVWXYZ]*' OR attempts IS NULL)";

/// Whether apalis-sqlite can read `id` as a task id (see [`SQLITE_UNREADABLE`]).
fn sqlite_readable_id(id: &str) -> bool {
    id.len() == 26
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b.is_ascii_alphabetic() && !b"ILOUilou".contains(&b)))
}

/// The same count on SQLite, in a table of the queue database (created on connecting).
const SQLITE_PRUNED: &str = "CREATE TABLE IF NOT EXISTS escalator_pruned
    (job_type TEXT PRIMARY KEY, n INTEGER NOT NULL)";

/// Moves one dead task back to the scheduled set with attempts reset, atomically.
const RETRY_DEAD: &str = r#"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 0 then return -1 end
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
local meta = KEYS[3] .. ':' .. ARGV[1]
redis.call('HDEL', meta, 'result', 'done_at', 'locked_at', 'locked_by')
redis.call('HSET', meta, 'status', 'Pending', 'attempts', 0)
redis.call('ZADD', KEYS[4], tonumber(ARGV[2]), ARGV[1])
return 1
"#;

async fn redis_retry(
    conn: &mut ConnectionManager,
    queue: &str,
    id: &str,
) -> Result<bool, QueueError> {
    let c = apalis_redis::Config::default().queue(queue);
    let res: i64 = redis::Script::new(RETRY_DEAD)
        .key(c.dead_jobs_set())
        .key(c.job_data_hash())
        .key(c.job_meta_hash())
        .key(c.scheduled_jobs_set())
        .arg(id)
        .arg(unix_now())
        .invoke_async(conn)
        .await?;
    Ok(res == 1)
}

const SQLITE_STATS: &str = "SELECT
  COALESCE(SUM(CASE WHEN status IN ('Pending', 'Queued') OR (status = 'Running' AND done_at IS NULL)
      OR (status = 'Failed' AND attempts < max_attempts) THEN 1 ELSE 0 END), 0),
  COALESCE(SUM(CASE WHEN status = 'Killed' OR (status = 'Failed' AND attempts >= max_attempts)
      OR (status = 'Running' AND done_at IS NOT NULL) THEN 1 ELSE 0 END), 0),
  COALESCE(SUM(CASE WHEN status = 'Done' THEN 1 ELSE 0 END), 0)
FROM Jobs WHERE job_type = ?1";

/// [`SQLITE_STATS`]'s pending without the running jobs: those waiting for a worker.
const SQLITE_WAITING: &str = "SELECT count(*) FROM Jobs WHERE job_type = ?1
  AND (status IN ('Pending', 'Queued') OR (status = 'Failed' AND attempts < max_attempts))";

async fn sqlite_stats(pool: &SqlitePool, queue: &str) -> Result<QueueStats, QueueError> {
    let (pending, dead, done): (i64, i64, i64) = sqlx::query_as(SQLITE_STATS)
        .bind(queue)
        .fetch_one(pool)
        .await?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(QueueStats {
        queue: queue.to_owned(),
        pending: n(pending),
        dead: n(dead),
        done: n(done),
    })
}

async fn sqlite_dead(
    pool: &SqlitePool,
    queue: &str,
    limit: usize,
) -> Result<Vec<DeadJob>, QueueError> {
    let rows: Vec<(String, Vec<u8>, Option<String>)> = sqlx::query_as(
        "SELECT id, job, CAST(last_result AS TEXT) FROM Jobs WHERE job_type = ?1 AND (status = 'Killed'
             OR (status = 'Failed' AND attempts >= max_attempts)
             OR (status = 'Running' AND done_at IS NOT NULL))
         LIMIT ?2",
    )
    .bind(queue)
    .bind(i64::try_from(limit).unwrap_or(100))
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, job, error)| DeadJob {
            queue: queue.to_owned(),
            id,
            payload: String::from_utf8_lossy(&job).into_owned(),
            error,
        })
        .collect())
}
