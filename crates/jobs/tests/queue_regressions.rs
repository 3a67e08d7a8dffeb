//! Regression tests for the apalis 1.0 workarounds in escalator-jobs, against a real Redis
//! (one namespace per test) and a real SQLite queue file. They fail, never skip, when Redis
//! is unreachable.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::{Attempt, BoxDynError, Data, Monitor};
use chrono::Utc;
use escalator_jobs::attempt::{self, Failure};
use escalator_jobs::*;
use escalator_testkit::{RedisNamespace, redis_url};

/// A namespace of its own, removed when dropped.
struct Ns {
    names: QueueNames,
    prefix: RedisNamespace,
}

impl Ns {
    fn new() -> Self {
        let prefix = RedisNamespace::new("t");
        Ns {
            names: QueueNames::new(&prefix.name),
            prefix,
        }
    }
}

async fn redis_queues(ns: &Ns) -> Queues {
    Queues::connect(&redis_url(), ns.names.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is unreachable at {}: {e:?}. Start it (`make services`).",
                redis_url()
            )
        })
}

#[derive(Default)]
struct Counters {
    ok: AtomicUsize,
    attempts: AtomicUsize,
    malformed: AtomicUsize,
    fail: AtomicBool,
    /// Each attempt commits from just before its deadline until well after it.
    slow_commit: Option<Duration>,
}

type State = Arc<Counters>;

async fn handler(job: Incoming<Noop>, at: Attempt, state: Data<State>) -> Result<(), BoxDynError> {
    let _job = match job {
        Incoming::Job(j) => j,
        Incoming::Malformed { raw, error } => {
            state.malformed.fetch_add(1, Ordering::SeqCst);
            return Err(attempt::malformed(&raw, &error));
        }
    };
    state.attempts.fetch_add(1, Ordering::SeqCst);
    if let Some(limit) = state.slow_commit {
        attempt::guarded(limit, async {
            tokio::time::sleep(limit.mul_f64(0.95)).await;
            attempt::committing(tokio::time::sleep(limit.mul_f64(0.85))).await;
            Ok(())
        })
        .await
        .map_err(|f| attempt::verdict(&at, 3, f))?;
    }
    if state.fail.load(Ordering::SeqCst) {
        return Err(attempt::verdict(
            &at,
            3,
            Failure::Transient("always failing".into()),
        ));
    }
    state.ok.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

fn settings(queue: &str) -> WorkerSettings {
    let mut s = WorkerSettings::new("test", queue);
    s.max_attempts = 3;
    s.backoff_min = Duration::from_millis(10);
    s.backoff_max = Duration::from_millis(50);
    s.poll_interval = Duration::from_millis(50);
    s.fetch_batch = 50;
    s
}

/// Runs a noop worker in the background until the returned sender fires.
fn spawn_worker(
    queues: &Queues,
    s: WorkerSettings,
    state: State,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<Stopped, QueueError>>,
) {
    let monitor = match queues {
        Queues::Redis { conn, .. } => {
            register_redis::<Noop, _, _, _>(Monitor::new(), conn.clone(), &s, state, handler)
                .unwrap()
        }
        Queues::Sqlite { pool, .. } => {
            register_sqlite::<Noop, _, _, _>(Monitor::new(), pool.clone(), &s, state, handler)
                .unwrap()
        }
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_supervised(
        monitor,
        async move {
            let _ = rx.await;
        },
        Duration::from_secs(10),
    ));
    (tx, task)
}

async fn wait_until(what: &str, limit: Duration, mut f: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn noop_stats(queues: &Queues) -> QueueStats {
    let name = queues.names().noop.clone();
    queues
        .stats()
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.queue == name)
        .unwrap()
}

/// Pushes a payload that is not JSON straight into a Redis queue, as a buggy producer would.
async fn push_garbage(queue: &str) -> String {
    escalator_testkit::raw_queue::push_raw(&redis_url(), queue, "not json at all").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_keeps_polling_between_heartbeats() {
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    let state = State::default();
    let mut s = settings(&ns.names.noop);
    // Only polling can wake this worker: its heartbeat is far away.
    s.heartbeat = Duration::from_secs(60);
    let (stop, task) = spawn_worker(&queues, s, state.clone());
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    queues.push_noops(1).await.unwrap();
    wait_until(
        "the job pushed to an idle worker",
        Duration::from_secs(10),
        async || state.ok.load(Ordering::SeqCst) == 1,
    )
    .await;
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap().unwrap(), Stopped::Drained);
}

#[tokio::test]
async fn pushing_the_same_check_twice_enqueues_it_once() {
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    let job = CheckWorkflows {
        check_run_id: 42,
        as_of: Utc::now(),
        scope: Scope::All,
    };
    queues.push_check(&job).await.unwrap();
    queues.push_check(&job).await.unwrap();
    let batches: Vec<EscalateBatch> = (0..3)
        .map(|i| EscalateBatch {
            check_run_id: 42,
            as_of: job.as_of,
            batch_index: i,
            slice: Default::default(),
        })
        .collect();
    queues.push_batches(&batches).await.unwrap();
    queues.push_batches(&batches).await.unwrap();
    let stats = queues.stats().await.unwrap();
    assert_eq!(stats[0].pending, 1, "{stats:?}");
    assert_eq!(stats[1].pending, 3, "{stats:?}");
    // the key expires (a TTL of 0 would have deleted it at once and deduplicated nothing)
    let client = redis::Client::open(redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:checks*idempot*", ns.prefix))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "no idempotency key stored");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 3_600, "idempotency key ttl {ttl}");
}

/// A database restored from a backup hands out check run ids again while Redis still holds
/// the keys of the runs that had them: a new run (another `as_of`) is not a duplicate.
#[tokio::test]
async fn a_run_id_handed_out_again_after_a_restore_is_not_taken_for_a_duplicate() {
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    let before = CheckWorkflows {
        check_run_id: 7,
        as_of: Utc::now() - chrono::Duration::hours(2),
        scope: Scope::All,
    };
    let after = CheckWorkflows {
        as_of: Utc::now(),
        ..before.clone()
    };
    queues.push_check(&before).await.unwrap();
    queues.push_check(&after).await.unwrap();
    let batch = |job: &CheckWorkflows| EscalateBatch {
        check_run_id: job.check_run_id,
        as_of: job.as_of,
        batch_index: 0,
        slice: Default::default(),
    };
    queues.push_batches(&[batch(&before)]).await.unwrap();
    queues.push_batches(&[batch(&after)]).await.unwrap();
    let stats = queues.stats().await.unwrap();
    assert_eq!((stats[0].pending, stats[1].pending), (2, 2), "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dead_lettered_and_the_worker_goes_on() {
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    let state = State::default();
    let (stop, task) = spawn_worker(&queues, settings(&ns.names.noop), state.clone());
    let id = push_garbage(&ns.names.noop).await;
    queues.push_noops(5).await.unwrap();
    wait_until(
        "the jobs after the garbage",
        Duration::from_secs(20),
        async || state.ok.load(Ordering::SeqCst) == 5 && noop_stats(&queues).await.dead == 1,
    )
    .await;
    assert_eq!(state.malformed.load(Ordering::SeqCst), 1);
    let dead = queues.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].id.as_str(), dead[0].payload.as_str()),
        (id.as_str(), "not json at all")
    );
    assert!(
        dead[0].error.as_deref().unwrap_or("").contains("malformed"),
        "{dead:?}"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_dead_after_exactly_its_attempts_and_can_be_retried() {
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    let state = State::default();
    state.fail.store(true, Ordering::SeqCst);
    let (stop, task) = spawn_worker(&queues, settings(&ns.names.noop), state.clone());
    queues.push_noops(1).await.unwrap();
    wait_until("the job to die", Duration::from_secs(30), async || {
        noop_stats(&queues).await.dead == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // three attempts, not apalis-redis's twenty-five
    assert_eq!(state.attempts.load(Ordering::SeqCst), 3);
    state.fail.store(false, Ordering::SeqCst);
    let dead = queues.dead_jobs(10).await.unwrap();
    assert!(
        queues
            .retry_dead(&dead[0].queue, &dead[0].id)
            .await
            .unwrap()
    );
    assert!(
        !queues
            .retry_dead(&dead[0].queue, &dead[0].id)
            .await
            .unwrap(),
        "retried twice"
    );
    wait_until("the retried job", Duration::from_secs(20), async || {
        state.ok.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(noop_stats(&queues).await.dead, 0);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// An attempt whose deadline passed while it committed waits for the commit (`guarded`), but
/// the worker's own timeout, 5 s past the deadline, dropped it mid-commit all the same: the
/// effects committed, uncounted, and the job was tried again (dead on its last attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_committing_past_its_deadline_is_not_cut_off() {
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    // committing from 7.6 s to 14.4 s: past the old cut (8 + 5 s), within guarded's 16 s
    let limit = Duration::from_secs(8);
    assert!(backstop(limit) > limit * 2);
    let state = Arc::new(Counters {
        slow_commit: Some(limit),
        ..Counters::default()
    });
    let mut s = settings(&ns.names.noop);
    s.attempt_timeout = limit;
    let (stop, task) = spawn_worker(&queues, s, state.clone());
    queues.push_noops(1).await.unwrap();
    wait_until("the job to finish", Duration::from_secs(40), async || {
        state.ok.load(Ordering::SeqCst) == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(state.attempts.load(Ordering::SeqCst), 1, "tried again");
    let stats = noop_stats(&queues).await;
    assert_eq!((stats.dead, stats.pending), (0, 0), "{stats:?}");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Pushers waiting for room in a backlogged queue (planners of runs started together) saw it
/// together and each pushed a chunk, past what apalis-redis's fetch can take (it wedges at
/// about 8,000 due). The look at the backlog and the push are one step now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushers_waiting_for_room_never_overfill_a_queue_together() {
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    queues.push_noops(2_900).await.unwrap();
    let pushes: Vec<_> = (0..8)
        .map(|_| {
            let queues = queues.clone();
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(8), queues.push_noops(1_000)).await
            })
        })
        .collect();
    let mut pushed = 0;
    for p in pushes {
        if let Ok(done) = p.await.unwrap() {
            done.unwrap();
            pushed += 1;
        }
    }
    // no worker takes any: one chunk had room, the others waited for it
    assert_eq!(pushed, 1);
    let stats = noop_stats(&queues).await;
    assert_eq!(stats.pending, 3_900, "{stats:?}");
    assert!(stats.pending <= MAX_DUE);
}

/// A push cancelled while it held its queue's push lock (its caller's timeout, a client gone)
/// left the lock to expire: every other pusher of that queue waited 10 s. The lock releases
/// itself when dropped. A Redis answering in 0.5 s makes the push slow enough to cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_cancelled_while_it_holds_the_lock_releases_it() {
    let ns = Ns::new();
    let slow = Queues::connect(
        &slow_redis(Duration::from_millis(500)).await,
        ns.names.clone(),
    )
    .await
    .unwrap();
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let lock = format!("{}:push-lock", ns.names.noop);
    let mut held = async || -> bool {
        redis::cmd("EXISTS")
            .arg(&lock)
            .query_async::<i64>(&mut conn)
            .await
            .unwrap()
            == 1
    };
    let push = tokio::spawn(async move { slow.push_noops(1).await });
    wait_until(
        "the push to take its lock",
        Duration::from_secs(10),
        async || held().await,
    )
    .await;
    // the lock's reply reaches the pusher 0.5 s after Redis set it; then it looks at the
    // backlog and pushes, 0.5 s each: cancel it in the middle
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert!(
        held().await,
        "the push let its lock go before it was cancelled"
    );
    push.abort();
    assert!(push.await.unwrap_err().is_cancelled());
    // released through the slow Redis (0.5 s), well before the lock's 10 s expiry
    wait_until(
        "the cancelled push's lock to be released",
        Duration::from_secs(4),
        async || !held().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_jobs_pushed_through_the_helpers_are_all_processed() {
    // apalis-redis 1.0's fetch fails for good once ~8,000 jobs are due at once; the helpers
    // push in bounded chunks and wait for room.
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    let state = State::default();
    let (stop, task) = spawn_worker(&queues, settings(&ns.names.noop), state.clone());
    queues.push_noops(20_000).await.unwrap();
    wait_until("20,000 jobs", Duration::from_secs(180), async || {
        noop_stats(&queues).await.done == 20_000
    })
    .await;
    assert_eq!(state.ok.load(Ordering::SeqCst), 20_000);
    assert_eq!(noop_stats(&queues).await.dead, 0);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_in_the_same_process_registers_again() {
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    let state = State::default();
    for round in 1..=2 {
        let (stop, task) = spawn_worker(&queues, settings(&ns.names.noop), state.clone());
        queues.push_noops(1).await.unwrap();
        wait_until("a job", Duration::from_secs(10), async || {
            state.ok.load(Ordering::SeqCst) == round
        })
        .await;
        stop.send(()).unwrap();
        assert_eq!(task.await.unwrap().unwrap(), Stopped::Drained);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_queue_runs_the_same_worker_and_dead_letters_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let queues = Queues::connect(&url, QueueNames::default()).await.unwrap();
    let state = State::default();
    state.fail.store(true, Ordering::SeqCst);
    let (stop, task) = spawn_worker(&queues, settings("escalator:noop"), state.clone());
    queues.push_noops(1).await.unwrap();
    wait_until("the job to die", Duration::from_secs(30), async || {
        noop_stats(&queues).await.dead == 1
    })
    .await;
    assert_eq!(state.attempts.load(Ordering::SeqCst), 3);
    state.fail.store(false, Ordering::SeqCst);
    queues.push_noops(100).await.unwrap();
    wait_until("100 jobs", Duration::from_secs(30), async || {
        state.ok.load(Ordering::SeqCst) == 100
    })
    .await;
    let check = CheckWorkflows {
        check_run_id: 1,
        as_of: Utc::now(),
        scope: Scope::All,
    };
    queues.push_check(&check).await.unwrap();
    queues.push_check(&check).await.unwrap();
    assert_eq!(queues.stats().await.unwrap()[0].pending, 1);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A worker that fails for good (here apalis-sqlite cannot decode a queue row's id) stops the
/// process; the process was not marked stopping, so long loops inside running jobs (the outbox
/// drain) went on starting sends for their whole budget, past the grace period, and were cut
/// off mid-send. It is marked stopping as on a signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_fails_for_good_marks_the_process_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let queues = Queues::connect(&url, QueueNames::default()).await.unwrap();
    queues.push_noops(1).await.unwrap();
    let Queues::Sqlite { pool, .. } = &queues else {
        unreachable!()
    };
    let bad = sqlx::query("UPDATE Jobs SET id = 'NOT-A-ULID'")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(bad.rows_affected(), 1);
    assert!(!escalator_runtime::shutdown::stopping());
    let (_stop, task) = spawn_worker(&queues, settings("escalator:noop"), State::default());
    let ended = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the worker kept running on an undecodable queue")
        .unwrap();
    assert!(ended.is_err(), "{ended:?}");
    assert!(escalator_runtime::shutdown::stopping());
}

/// A queue row apalis-sqlite cannot read (a hand-edited id) stopped the worker at every start:
/// opening the queue makes it a dead job, listed and refused a retry, and the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_sqlite_queue_row_is_made_dead_when_the_queue_opens() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("queue.db").display());
    let first = Queues::connect(&url, QueueNames::default()).await.unwrap();
    first.push_noops(1).await.unwrap();
    let Queues::Sqlite { pool, .. } = &first else {
        unreachable!()
    };
    sqlx::query("UPDATE Jobs SET id = 'NOT-A-ULID'")
        .execute(pool)
        .await
        .unwrap();
    first.push_noops(3).await.unwrap();
    // a lower-case ULID is one apalis reads: left alone
    sqlx::query("UPDATE Jobs SET id = lower(id) WHERE rowid = (SELECT max(rowid) FROM Jobs)")
        .execute(pool)
        .await
        .unwrap();
    let queues = Queues::connect(&url, QueueNames::default()).await.unwrap();
    let state = State::default();
    let (stop, task) = spawn_worker(&queues, settings("escalator:noop"), state.clone());
    wait_until("the readable jobs", Duration::from_secs(30), async || {
        state.ok.load(Ordering::SeqCst) == 3
    })
    .await;
    let dead = queues.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].id, "NOT-A-ULID");
    assert!(
        dead[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("unreadable queue row"),
        "{dead:?}"
    );
    let refused = queues.retry_dead(&dead[0].queue, &dead[0].id).await;
    let Err(e @ escalator_jobs::QueueError::Unretryable { .. }) = refused else {
        panic!("{refused:?}")
    };
    assert!(e.to_string().contains("not a ULID"), "{e}");
    // a mistyped id that is no job at all is not found, not refused for its form
    assert!(!queues.retry_dead(&dead[0].queue, "123").await.unwrap());
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A proxy in front of the test Redis that holds every reply for `delay`: a Redis slowed down
/// (a loaded machine, a fork for a snapshot), not gone. Returns its URL.
async fn slow_redis(delay: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = redis_url();
    let rest = url.trim_start_matches("redis://");
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let (addr, path) = rest.split_once('/').unwrap_or((rest, ""));
    let upstream = addr.to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            let (mut client_rx, mut client_tx) = client.into_split();
            let (mut server_rx, mut server_tx) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut client_rx, &mut server_tx).await;
            });
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_rx.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    if client_tx.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    format!("redis://127.0.0.1:{port}/{path}")
}

/// redis-rs gives up on a reply after 500 ms by default, and a worker whose poll fails stops:
/// a Redis answering in 0.8 s stopped every worker. The queues wait up to
/// `RESPONSE_TIMEOUT` (5 s) for a reply, so a slow Redis is slow, not an outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_slows_the_worker_down_and_stops_nothing() {
    let ns = Ns::new();
    let fast = redis_queues(&ns).await;
    let slow = Queues::connect(
        &slow_redis(Duration::from_millis(800)).await,
        ns.names.clone(),
    )
    .await
    .unwrap();
    assert_eq!(noop_stats(&slow).await.pending, 0);
    let state = State::default();
    let (stop, task) = spawn_worker(&slow, settings(&ns.names.noop), state.clone());
    fast.push_noops(3).await.unwrap();
    wait_until(
        "three jobs through a Redis answering in 0.8 s",
        Duration::from_secs(60),
        async || state.ok.load(Ordering::SeqCst) == 3 || task.is_finished(),
    )
    .await;
    assert!(!task.is_finished(), "the worker stopped: {:?}", task.await);
    stop.send(()).unwrap();
    assert_eq!(task.await.unwrap().unwrap(), Stopped::Drained);
}

/// apalis keeps every finished job's payload and metadata for ever: Redis grew with every job
/// run. `prune_done` forgets done jobs past their retention, and only those: dead jobs (kept
/// for operators), jobs waiting, and recent done jobs stay. Both backends.
async fn finished_jobs_are_pruned_after_their_retention(queues: &Queues, names: &QueueNames) {
    let state = State::default();
    let (stop, task) = spawn_worker(queues, settings(&names.noop), state.clone());
    queues.push_noops(3).await.unwrap();
    wait_until("three jobs done", Duration::from_secs(30), async || {
        noop_stats(queues).await.done == 3
    })
    .await;
    state.fail.store(true, Ordering::SeqCst);
    queues.push_noops(1).await.unwrap();
    wait_until("a dead job", Duration::from_secs(30), async || {
        noop_stats(queues).await.dead == 1
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    queues.push_noops(1).await.unwrap(); // waits: no worker runs now

    // within the retention nothing goes
    assert_eq!(
        queues
            .prune_done(Duration::from_secs(3_600), 100)
            .await
            .unwrap(),
        0
    );
    assert_eq!(noop_stats(queues).await.done, 3);
    // past it, the done ones go, and nothing else
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let finished = queues.finished(&names.noop).await.unwrap();
    assert_eq!(finished, 3);
    assert_eq!(queues.prune_done(Duration::ZERO, 100).await.unwrap(), 3);
    // finished jobs are still counted once pruned (`enqueue noop --wait` counts them)
    assert_eq!(queues.finished(&names.noop).await.unwrap(), 3);
    let stats = noop_stats(queues).await;
    assert_eq!(
        (stats.done, stats.dead, stats.pending),
        (0, 1, 1),
        "{stats:?}"
    );
    let dead = queues.dead_jobs(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    // the job that failed, as it was pushed: a no-op of the no-op queue
    assert!(dead[0].queue.ends_with("noop"), "{dead:?}");
    let payload: serde_json::Value = serde_json::from_str(&dead[0].payload).unwrap();
    assert!(payload.get("n").is_some_and(|n| n.is_u64()), "{dead:?}");
    assert_eq!(queues.prune_done(Duration::ZERO, 100).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_pruned_after_their_retention_on_redis() {
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    finished_jobs_are_pruned_after_their_retention(&queues, &ns.names).await;
    // the pruned jobs' payloads and metadata are gone from Redis too
    let c = apalis_redis::Config::default().queue(&ns.names.noop);
    let Queues::Redis { conn, .. } = &queues else {
        unreachable!()
    };
    let payloads: u64 = redis::cmd("HLEN")
        .arg(c.job_data_hash())
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!(payloads, 2, "the dead and the waiting job's payloads only");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_are_pruned_after_their_retention_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let names = QueueNames::default();
    let queues = Queues::connect(
        &format!("sqlite://{}", dir.path().join("queue.db").display()),
        names.clone(),
    )
    .await
    .unwrap();
    finished_jobs_are_pruned_after_their_retention(&queues, &names).await;
}

/// Delivery requests onto a queue no worker takes (no sender configured anywhere, delivery
/// workers down) stop adding jobs at [`MAX_QUEUED_DELIVERIES`], at once: they used to fill the
/// queue to `MAX_DUE` and then wait `BACKLOG_PATIENCE` for room after every batch's commit, so
/// each batch with effects timed out and escalation stalled.
async fn delivery_requests_stop_at_a_cap_and_never_wait(queues: &Queues, names: &QueueNames) {
    let job = DeliverNotifications::default();
    let started = Instant::now();
    let mut pushed = 0;
    for _ in 0..MAX_QUEUED_DELIVERIES + 50 {
        if queues.push_delivery(&job).await.unwrap() {
            pushed += 1;
        }
    }
    assert_eq!(pushed, MAX_QUEUED_DELIVERIES);
    let deliveries = queues
        .stats()
        .await
        .unwrap()
        .into_iter()
        .find(|q| q.queue == names.deliveries)
        .unwrap();
    assert_eq!(deliveries.pending, MAX_QUEUED_DELIVERIES);
    // 150 requests are a few round trips each, never a wait for room
    assert!(
        started.elapsed() < BACKLOG_PATIENCE / 10,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_requests_stop_at_a_cap_and_never_wait_on_redis() {
    let ns = Ns::new();
    let queues = redis_queues(&ns).await;
    delivery_requests_stop_at_a_cap_and_never_wait(&queues, &ns.names).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_requests_stop_at_a_cap_and_never_wait_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let names = QueueNames::default();
    let queues = Queues::connect(
        &format!("sqlite://{}", dir.path().join("queue.db").display()),
        names.clone(),
    )
    .await
    .unwrap();
    delivery_requests_stop_at_a_cap_and_never_wait(&queues, &names).await;
}
