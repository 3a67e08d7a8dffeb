//! The beat against real PostgreSQL and Redis, driven by an injected clock: catch-up,
//! coalescing, standby and fencing, deadline wake-ups.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use escalator_beat::{Beat, BeatConfig, Schedule};
use escalator_jobs::{QueueNames, Queues};
use escalator_runtime::serve::Health;
use escalator_store::{NewWorkflow, Store};
use escalator_testkit::{RedisNamespace, TestDb, redis_url};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn queues(ns: &RedisNamespace) -> Queues {
    Queues::connect(&redis_url(), QueueNames::new(&ns.name))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is unreachable at {}: {e:?}; start it (`make services`)",
                redis_url()
            )
        })
}

fn config(holder: &str, catchup: Duration, lease: Duration) -> BeatConfig {
    BeatConfig {
        schedule: Schedule::parse("0 */15 * * * *", "UTC").unwrap(),
        catchup,
        lease_ttl: lease,
        deadline_recheck: Duration::from_secs(5),
        holder: holder.into(),
        done_retention: escalator_beat::DONE_JOB_RETENTION,
        outbox_retention: Some(escalator_beat::OUTBOX_RETENTION),
    }
}

/// The runs the beat enqueued for a passed deadline (not for a slot of its schedule).
async fn deadline_runs(store: &Store) -> Vec<escalator_store::CheckRun> {
    store
        .recent_check_runs(10)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.requested_by == "deadline")
        .collect()
}

async fn scheduled(store: &Store) -> Vec<(DateTime<Utc>, i32)> {
    let mut runs: Vec<_> = store
        .recent_check_runs(100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|r| r.slot.map(|s| (s, r.coalesced)))
        .collect();
    runs.sort();
    runs
}

/// One workflow on the default policy (warning at 22 h, deadline at 24 h) whose stage started
/// at `started`.
async fn workflow_started(store: &Store, started: DateTime<Utc>, now: DateTime<Utc>) {
    store
        .create_workflow(
            &NewWorkflow {
                external_id: format!("D-{}", started.timestamp_micros()),
                title: "Deadline".into(),
                kind: "k".into(),
                stage: "s".into(),
                assignee: "a".into(),
                initiator: "b".into(),
                escalation_target: Some("c".into()),
                policy_id: None,
                stage_started_at: Some(started),
                metadata: serde_json::json!({}),
            },
            now,
        )
        .await
        .unwrap();
}

/// A leading beat whose steps complete is healthy whether or not a slot was due. It was
/// touched only when it enqueued, so a schedule with uneven gaps (`0 */15 8-18 * * Mon-Fri`,
/// a health window from its first gap) made a working leader unhealthy overnight, and the
/// liveness probe restarted it again and again.
#[tokio::test]
async fn a_leader_between_slots_stays_healthy() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let health = Health::new(Duration::from_secs(1));
    let mut beat = Beat::new(
        db.store.clone(),
        queues(&ns).await,
        config("a", Duration::from_secs(600), Duration::from_secs(30)),
        health.clone(),
    );
    beat.step(utc("2026-11-25T12:00:00.500Z")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    assert!(!health.check().1, "silent past its window");
    // no slot is due at 12:05: the step still proves the loop alive
    beat.step(utc("2026-11-25T12:05:00Z")).await.unwrap();
    assert_eq!(scheduled(&db.store).await.len(), 1);
    assert!(health.check().1, "{:?}", health.check());
}

/// A catch-up window shorter than a running leader's lateness (`ESCALATOR_CATCHUP=0.5`) made
/// a slot reached two seconds late count as missed, never run. Lateness within the lease runs.
#[tokio::test]
async fn a_slot_reached_a_little_late_runs_whatever_the_catch_up_window() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let mut beat = Beat::new(
        db.store.clone(),
        queues(&ns).await,
        config("a", Duration::from_millis(500), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    beat.step(utc("2026-11-25T12:00:00.200Z")).await.unwrap();
    beat.step(utc("2026-11-25T12:15:02Z")).await.unwrap();
    assert_eq!(
        scheduled(&db.store).await,
        [
            (utc("2026-11-25T12:00:00Z"), 1),
            (utc("2026-11-25T12:15:00Z"), 1)
        ]
    );
}

#[tokio::test]
async fn slots_missed_while_down_run_once_coalesced() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        config("a", Duration::from_secs(600), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    beat.step(utc("2026-11-25T12:00:00.500Z")).await.unwrap();
    beat.step(utc("2026-11-25T12:07:00Z")).await.unwrap();
    assert_eq!(
        scheduled(&db.store).await,
        [(utc("2026-11-25T12:00:00Z"), 1)]
    );
    drop(beat);

    // the beat was down from 12:07 to 12:52; a new one catches up once
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        config("b", Duration::from_secs(3_600), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    // the old lease is still held by "a": wait for it to be given up
    db.store
        .release_lease(
            &db.store
                .acquire_lease("beat", "a", Duration::from_secs(30))
                .await
                .unwrap()
                .unwrap(),
        )
        .await
        .unwrap();
    beat.step(utc("2026-11-25T12:52:00Z")).await.unwrap();
    beat.step(utc("2026-11-25T12:53:00Z")).await.unwrap();
    assert_eq!(
        scheduled(&db.store).await,
        [
            (utc("2026-11-25T12:00:00Z"), 1),
            (utc("2026-11-25T12:45:00Z"), 3)
        ]
    );
    // and then it is punctual again
    beat.step(utc("2026-11-25T13:00:01Z")).await.unwrap();
    assert_eq!(
        scheduled(&db.store).await.last(),
        Some(&(utc("2026-11-25T13:00:00Z"), 1))
    );
    // every recorded run was enqueued
    let stats = q.stats().await.unwrap();
    assert_eq!(stats[0].pending, 3);
}

/// Slots missed are counted once. A business-hours schedule whose beat came back after the
/// evening's last slot (all older than the catch-up window, so none runs) used to count the
/// same slots again on every step, every few seconds, all night: MissedTicks fired until
/// morning.
#[tokio::test]
async fn slots_missed_while_down_are_counted_once() {
    let metrics = recorder();
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        BeatConfig {
            schedule: Schedule::parse("0 */15 8-18 * * MON-FRI", "UTC").unwrap(),
            ..config("a", Duration::from_secs(3_600), Duration::from_secs(30))
        },
        Health::new(Duration::from_secs(60)),
    );
    // Wednesday 17:00 runs; the beat is then away until 20:00: 17:15 .. 18:45 are missed
    beat.step(utc("2026-11-25T17:00:00.500Z")).await.unwrap();
    for t in ["20:00:00", "20:00:05", "20:00:10", "23:30:00"] {
        beat.step(utc(&format!("2026-11-25T{t}Z"))).await.unwrap();
    }
    assert_eq!(
        scheduled(&db.store).await,
        [(utc("2026-11-25T17:00:00Z"), 1)]
    );
    let text = metrics.render();
    assert!(text.contains("escalator_missed_ticks_total 7\n"), "{text}");
    // the next morning's first slot runs, on its own
    beat.step(utc("2026-11-26T08:00:01Z")).await.unwrap();
    assert_eq!(
        scheduled(&db.store).await.last(),
        Some(&(utc("2026-11-26T08:00:00Z"), 1))
    );
    assert!(
        metrics
            .render()
            .contains("escalator_missed_ticks_total 7\n")
    );
}

/// A leader that cannot reach the database past its lease no longer reports itself leading:
/// the lease has run out, nothing is scheduled, and a lone beat's gauge stayed at 1, so the
/// NoBeatLeader alert never fired.
#[tokio::test]
async fn a_leader_cut_off_from_the_database_past_its_lease_stands_down() {
    let metrics = recorder();
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let lease = Duration::from_secs(3);
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        config("a", Duration::from_secs(600), lease),
        Health::new(Duration::from_secs(60)),
    );
    let now = Utc::now();
    beat.step(now).await.unwrap();
    assert!(metrics.render().contains("escalator_beat_leader 1\n"));
    db.store.close().await;
    // within its lease a failed renewal is retried, still leading
    tokio::time::sleep(lease / 2).await;
    assert!(beat.step(Utc::now()).await.is_err());
    assert!(metrics.render().contains("escalator_beat_leader 1\n"));
    tokio::time::sleep(lease).await;
    assert!(beat.step(Utc::now()).await.is_err());
    let text = metrics.render();
    assert!(text.contains("escalator_beat_leader 0\n"), "{text}");
    assert!(text.contains("escalator_outbox_pending 0\n"), "{text}");
    assert!(
        text.contains("escalator_outbox_overdue_seconds 0\n"),
        "{text}"
    );
}

/// A slot's check covers the deadlines that are due at it: a deadline check was enqueued
/// beside it in the same step, doubling the planning and claiming at the busiest moments.
#[tokio::test]
async fn a_slot_with_due_deadlines_enqueues_one_check() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let slot = utc("2026-11-25T12:15:00Z");
    workflow_started(&db.store, slot - chrono::Duration::hours(23), slot).await;
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        config("a", Duration::from_secs(600), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    beat.step(slot + chrono::Duration::milliseconds(300))
        .await
        .unwrap();
    beat.step(slot + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(scheduled(&db.store).await, [(slot, 1)]);
    assert_eq!(deadline_runs(&db.store).await.len(), 0);
    assert_eq!(q.stats().await.unwrap()[0].pending, 1);
}

#[tokio::test]
async fn a_standby_beat_enqueues_nothing_and_a_zombie_leader_is_fenced_off() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    // seconds of margin either side, not hundreds of milliseconds: a loaded machine's step
    // must not outlast the lease by accident
    let lease = Duration::from_secs(4);
    let mut a = Beat::new(
        db.store.clone(),
        q.clone(),
        config("a", Duration::from_secs(600), lease),
        Health::new(Duration::from_secs(60)),
    );
    let mut b = Beat::new(
        db.store.clone(),
        q.clone(),
        config("b", Duration::from_secs(600), lease),
        Health::new(Duration::from_secs(60)),
    );
    a.step(utc("2026-11-25T12:00:01Z")).await.unwrap();
    b.step(utc("2026-11-25T12:00:01Z")).await.unwrap();
    b.step(utc("2026-11-25T12:15:01Z")).await.unwrap();
    assert_eq!(scheduled(&db.store).await.len(), 1, "the standby enqueued");

    // a freezes past its lease; b takes over and runs the next slot
    tokio::time::sleep(lease + Duration::from_millis(500)).await;
    b.step(utc("2026-11-25T12:15:02Z")).await.unwrap();
    assert_eq!(scheduled(&db.store).await.len(), 2);
    // a wakes up believing it leads: its renewal fails and it records nothing
    a.step(utc("2026-11-25T12:30:01Z")).await.unwrap();
    assert_eq!(scheduled(&db.store).await.len(), 2, "the zombie enqueued");
    b.step(utc("2026-11-25T12:30:02Z")).await.unwrap();
    let runs = scheduled(&db.store).await;
    assert_eq!(
        runs.iter().map(|r| r.0).collect::<Vec<_>>(),
        [
            utc("2026-11-25T12:00:00Z"),
            utc("2026-11-25T12:15:00Z"),
            utc("2026-11-25T12:30:00Z")
        ]
    );
}

#[tokio::test]
async fn a_passed_deadline_wakes_the_beat_between_slots() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let now = Utc::now();
    // the warning (22 h) has just passed
    workflow_started(
        &db.store,
        now - chrono::Duration::hours(22) - chrono::Duration::seconds(1),
        now,
    )
    .await;
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        config("a", Duration::from_secs(1), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    // only deadline runs: run within 30 s after a quarter hour, the second step also runs
    // that slot of the schedule (a lateness within the lease), which is not what is tested
    let pause = beat.step(now).await.unwrap();
    let runs = deadline_runs(&db.store).await;
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].slot, None);
    // while that check is in flight it polls it instead of enqueueing another
    assert!(pause <= Duration::from_millis(100), "{pause:?}");
    beat.step(now + chrono::Duration::milliseconds(200))
        .await
        .unwrap();
    assert_eq!(deadline_runs(&db.store).await.len(), 1);
}

#[tokio::test]
async fn a_deadline_check_that_never_moves_is_given_up_and_enqueued_again() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let now = Utc::now();
    workflow_started(&db.store, now - chrono::Duration::hours(23), now).await;
    // a schedule with no slot in the 8 minutes stepped through: a slot's check pushed among
    // them is a job waiting for a worker, rightly waited on instead of a new deadline check
    // (the test failed whenever they crossed a quarter hour)
    let yearly = BeatConfig {
        schedule: Schedule::parse("0 0 0 1 1 *", "UTC").unwrap(),
        ..config("a", Duration::from_secs(1), Duration::from_secs(600))
    };
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        yearly,
        Health::new(Duration::from_secs(60)),
    );
    // no worker runs here, so the check stays queued
    beat.step(now).await.unwrap();
    assert_eq!(deadline_runs(&db.store).await.len(), 1);
    let patience = escalator_beat::DEADLINE_RUN_PATIENCE;
    beat.step(now + patience).await.unwrap();
    assert_eq!(
        deadline_runs(&db.store).await.len(),
        1,
        "waited for within its patience"
    );
    // past it, its job still waits in the queue for a worker: not lost, waited for again (a
    // check every two minutes queued up while no worker ran)
    let mut later = now + patience + chrono::Duration::seconds(1);
    for _ in 0..3 {
        beat.step(later).await.unwrap();
        assert_eq!(
            deadline_runs(&db.store).await.len(),
            1,
            "a check whose job waits for a worker is not enqueued again"
        );
        later += patience + chrono::Duration::seconds(1);
    }
    // its job is gone (a flushed Redis), and its patience has run out again: enqueued again
    assert!(
        ns.flush() > 0,
        "the queued check's keys were there to delete"
    );
    assert_eq!(q.checks_and_batches_waiting().await.unwrap(), 0);
    beat.step(later).await.unwrap();
    assert_eq!(
        deadline_runs(&db.store).await.len(),
        2,
        "a check that never moved is enqueued again"
    );
    beat.step(later + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(
        deadline_runs(&db.store).await.len(),
        2,
        "and the new one is waited for in turn"
    );
}

/// A deadline check that failed was followed by another at the next step, several a second
/// while the planner failed at once (a bad deploy): a stream of failed runs and dead jobs.
/// The next one waits 10 s, then twice as long after each failure in a row.
#[tokio::test]
async fn failed_deadline_checks_are_followed_by_the_next_after_a_growing_pause() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let now = Utc::now();
    workflow_started(&db.store, now - chrono::Duration::hours(23), now).await;
    let yearly = BeatConfig {
        schedule: Schedule::parse("0 0 0 1 1 *", "UTC").unwrap(),
        ..config("a", Duration::from_secs(1), Duration::from_secs(600))
    };
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        yearly,
        Health::new(Duration::from_secs(60)),
    );
    let at = |seconds: f64| now + chrono::Duration::milliseconds((seconds * 1000.0) as i64);
    let fail_latest = async || {
        let runs = deadline_runs(&db.store).await;
        db.store
            .fail_check_run(runs[0].id, "its planner died", Utc::now())
            .await
            .unwrap();
    };
    beat.step(at(0.0)).await.unwrap();
    assert_eq!(deadline_runs(&db.store).await.len(), 1);
    fail_latest().await;
    beat.step(at(0.2)).await.unwrap();
    beat.step(at(9.0)).await.unwrap();
    assert_eq!(
        deadline_runs(&db.store).await.len(),
        1,
        "within the 10 s pause"
    );
    beat.step(at(10.5)).await.unwrap();
    assert_eq!(deadline_runs(&db.store).await.len(), 2);
    fail_latest().await;
    beat.step(at(10.7)).await.unwrap();
    beat.step(at(25.0)).await.unwrap();
    assert_eq!(
        deadline_runs(&db.store).await.len(),
        2,
        "within the 20 s pause after a second failure"
    );
    beat.step(at(31.0)).await.unwrap();
    assert_eq!(deadline_runs(&db.store).await.len(), 3);
}

/// A check run of 2 batches started at `now`, whose batch 0 holds an escalation email for the
/// run's digest decision (batch 1 never comes). Returns its id.
async fn run_holding_an_escalation(s: &Store, now: DateTime<Utc>) -> i64 {
    use escalator_store::{BatchEffects, NewOutbox};
    let run = escalator_testkit::started_run(s, "cli", 2, now).await;
    let held = NewOutbox {
        channel: "email",
        recipient: "head@example.com".into(),
        workflow_id: None,
        payload: serde_json::json!({
            "to": ["head@example.com"], "cc": [], "subject": "Escalated", "title": "t",
            "kind": "escalation",
        }),
        idempotency_key: format!("escalate:held:{run}:email"),
    }
    .held_for_digest("head", 5);
    let mut tx = s.begin_batch().await.unwrap();
    tx.apply(
        &BatchEffects {
            check_run_id: Some(run),
            batch_index: Some(0),
            outbox: vec![held],
            ..Default::default()
        },
        now,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    run
}

#[tokio::test]
async fn the_outbox_sweep_releases_the_held_digest_rows_of_a_failed_run() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let s = &db.store;
    let now = utc("2026-11-25T12:05:00Z");
    // batch 0 of 2 holds an escalation for the run's digest decision; batch 1 never comes
    let run = run_holding_an_escalation(s, now).await;
    assert_eq!(s.outbox_backlog(now).await.unwrap().waiting, 0);
    s.fail_check_run(run, "its last batch died", now)
        .await
        .unwrap();

    let mut beat = Beat::new(
        s.clone(),
        q.clone(),
        config("a", Duration::from_secs(1), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    beat.step(now).await.unwrap();
    // the failed run's held row is now an ordinary delivery, and a delivery job is queued
    let backlog = s.outbox_backlog(now).await.unwrap();
    assert_eq!((backlog.waiting, backlog.due), (1, 1));
    let deliveries = q
        .stats()
        .await
        .unwrap()
        .into_iter()
        .find(|st| st.queue == q.names().deliveries)
        .unwrap();
    assert_eq!(deliveries.pending, 1);
}

/// A run whose jobs were lost (a Redis flushed mid-run) read `running` for six hours, and
/// what it held for its digests waited an hour. With no check or batch job waiting in the
/// queues it is failed ten minutes after it last moved, and its held messages go out.
#[tokio::test]
async fn a_run_whose_jobs_are_lost_is_failed_after_ten_minutes_and_its_held_messages_go() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let s = &db.store;
    // no slot of the schedule among the steps (one would be a job waiting)
    let now = utc("2026-11-25T12:01:00Z");
    let run = run_holding_an_escalation(s, now).await;
    let status = async || s.get_check_run(run).await.unwrap().status;
    let mut beat = Beat::new(
        s.clone(),
        q.clone(),
        config("a", Duration::from_secs(1), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    // a job of some run waits for a worker: the run may be behind it, and is waited for
    let waiting = escalator_jobs::CheckWorkflows {
        check_run_id: run + 1000,
        as_of: now,
        scope: escalator_jobs::Scope::All,
    };
    q.push_check(&waiting).await.unwrap();
    let later = now + escalator_beat::LOST_RUN + chrono::Duration::seconds(1);
    beat.step(later).await.unwrap();
    assert_eq!(status().await, "running");
    assert_eq!(
        s.outbox_backlog(later).await.unwrap().waiting,
        0,
        "still held"
    );
    // nothing waits (a flushed Redis): at the next sweep (every 10 s) it is failed, naming
    // why, and its held message released
    assert!(ns.flush() > 0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    beat.step(later).await.unwrap();
    assert_eq!(status().await, "failed");
    let error = s
        .get_check_run(run)
        .await
        .unwrap()
        .error
        .unwrap_or_default();
    assert!(
        error.starts_with("lost: no progress for 10 minutes"),
        "{error}"
    );
    assert_eq!(s.outbox_backlog(later).await.unwrap().waiting, 1);
}

/// The process-wide metrics recorder, installed once for the tests of this binary (a second
/// install fails in one process; nextest gives each test its own, `cargo test` does not).
fn recorder() -> &'static escalator_runtime::metrics::Handle {
    static HANDLE: std::sync::OnceLock<escalator_runtime::metrics::Handle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| escalator_runtime::metrics::install().expect("install the recorder"))
}

/// A slot whose job cannot be pushed (Redis down) is recorded as a failed run naming the
/// cause: it used to stay `queued` for ever, its slot taken. Then the next step proposed the
/// slot again, found its run and counted a duplicate tick: the slot never ran. Its run is
/// pushed again once Redis is back.
#[tokio::test]
async fn a_slot_that_cannot_be_enqueued_is_a_failed_run_not_a_queued_one() {
    let db = TestDb::postgres().await;
    let mut redis = escalator_testkit::services::PrivateRedis::start();
    // a beat on that Redis (started again below, as after a restart)
    let start = async |url: String| {
        let q = Queues::connect(&url, QueueNames::new("beat-down"))
            .await
            .unwrap();
        Beat::new(
            db.store.clone(),
            q,
            config("a", Duration::from_secs(600), Duration::from_secs(30)),
            Health::new(Duration::from_secs(60)),
        )
    };
    let mut beat = start(redis.url()).await;
    redis.kill();
    let err = beat.step(utc("2026-11-25T12:00:00.500Z")).await;
    assert!(err.is_err(), "{err:?}");
    let runs = db.store.recent_check_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].slot, Some(utc("2026-11-25T12:00:00Z")));
    assert_eq!(runs[0].status, "failed", "{runs:?}");
    let error = runs[0].error.clone().unwrap_or_default();
    assert!(error.contains("could not be enqueued"), "{error}");
    // the beat goes on: the slot is not recorded twice, and its run is tried again (Redis
    // still down: the step fails on that push)
    let again = beat.step(utc("2026-11-25T12:01:00Z")).await;
    assert!(
        matches!(again, Err(escalator_beat::BeatError::Queue(_))),
        "{again:?}"
    );
    let runs = db.store.recent_check_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, "failed", "{runs:?}");
    // the beat restarted meanwhile (its liveness probe fails while every step does): what it
    // kept in memory is gone, and the next leader finds the run from its error. Redis is back.
    drop(beat);
    redis.restart();
    let mut beat = start(redis.url()).await;
    // the same run is enqueued, queued again, its error gone
    let mut pushed = false;
    for _ in 0..50 {
        if beat.step(utc("2026-11-25T12:02:00Z")).await.is_ok() {
            pushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pushed, "the beat never got through to the restarted Redis");
    let runs = db.store.recent_check_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        (
            runs[0].slot,
            runs[0].status.as_str(),
            runs[0].error.as_deref()
        ),
        (Some(utc("2026-11-25T12:00:00Z")), "queued", None),
        "{runs:?}"
    );
    let q = Queues::connect(&redis.url(), QueueNames::new("beat-down"))
        .await
        .unwrap();
    let checks = q.stats().await.unwrap()[0].clone();
    assert_eq!(checks.pending, 1, "{checks:?}");
}

/// A slot's run recorded but never pushed (its beat killed between the two, or its insert's
/// answer lost) was taken by the next leader for a slot done: it stayed queued, and the slot's
/// check never ran. The next leader pushes it, once.
#[tokio::test]
async fn a_slot_recorded_but_never_pushed_is_pushed_by_the_next_leader() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat-unpushed");
    let slot = utc("2026-11-25T12:00:00Z");
    let run = db
        .store
        .create_check_run(&escalator_store::NewCheckRun {
            slot: Some(slot),
            requested_by: "beat",
            scope: escalator_jobs::Scope::All.to_string(),
            as_of: slot,
            dry_run: false,
            coalesced: 0,
            now: slot,
        })
        .await
        .unwrap()
        .unwrap();
    let q = queues(&ns).await;
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        config("next", Duration::from_secs(600), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    beat.step(utc("2026-11-25T12:00:40Z")).await.unwrap();
    beat.step(utc("2026-11-25T12:01:00Z")).await.unwrap();
    let checks = q.stats().await.unwrap()[0].clone();
    assert_eq!(checks.pending, 1, "{checks:?}");
    let runs = db.store.recent_check_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].id, runs[0].status.as_str()), (run.id, "queued"));
}

/// A deadline check whose push failed was recorded anew at every step: a Redis down for an
/// hour left a failed run a second. The beat now pushes that run again, as it does a slot's.
#[tokio::test]
async fn a_deadline_check_that_cannot_be_enqueued_is_pushed_again_not_recorded_again() {
    let db = TestDb::postgres().await;
    let mut redis = escalator_testkit::services::PrivateRedis::start();
    let q = Queues::connect(&redis.url(), QueueNames::new("beat-deadline-down"))
        .await
        .unwrap();
    // between slots (the 12:00 one is past a 1 s catch-up), a warning just passed
    let t = utc("2026-11-25T12:07:00Z");
    let started = t - chrono::Duration::hours(22) - chrono::Duration::seconds(1);
    workflow_started(&db.store, started, t).await;
    let mut beat = Beat::new(
        db.store.clone(),
        q,
        config("a", Duration::from_secs(1), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    redis.kill();
    // each failing step waits out the connection's retries: three are enough to count
    for s in 0..3 {
        let step = beat.step(t + chrono::Duration::seconds(s)).await;
        assert!(step.is_err(), "{step:?}");
    }
    let runs = deadline_runs(&db.store).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].status, "failed", "{runs:?}");
    redis.restart();
    let mut pushed = false;
    for s in 3..100 {
        if beat.step(t + chrono::Duration::seconds(s)).await.is_ok() {
            pushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pushed, "the beat never got through to the restarted Redis");
    let runs = deadline_runs(&db.store).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        (runs[0].status.as_str(), runs[0].error.as_deref()),
        ("queued", None),
        "{runs:?}"
    );
    let q = Queues::connect(&redis.url(), QueueNames::new("beat-deadline-down"))
        .await
        .unwrap();
    assert_eq!(q.stats().await.unwrap()[0].pending, 1);
}

/// The sweep prunes finished jobs past their retention from the queues (apalis keeps them for
/// ever): here a done job finished long ago goes, a dead one stays.
#[tokio::test]
async fn the_sweep_forgets_finished_jobs_past_their_retention() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let Queues::Redis { conn, names } = &q else {
        unreachable!()
    };
    let queue = names.batches.clone();
    let (done, dead, data, meta) = (
        format!("{queue}:done"),
        format!("{queue}:dead"),
        format!("{queue}:data"),
        format!("{queue}:meta"),
    );
    let mut c = conn.clone();
    let _: () = redis::pipe()
        .cmd("SADD")
        .arg(&done)
        .arg("old")
        .cmd("HSET")
        .arg(&data)
        .arg("old")
        .arg("{}")
        .cmd("HSET")
        .arg(format!("{meta}:old"))
        .arg("status")
        .arg("Done")
        .arg("done_at")
        .arg(1)
        .cmd("SADD")
        .arg(&dead)
        .arg("bad")
        .cmd("HSET")
        .arg(&data)
        .arg("bad")
        .arg("{}")
        .query_async(&mut c)
        .await
        .unwrap();
    let stats = |q: &Queues| {
        let q = q.clone();
        let name = queue.clone();
        async move {
            q.stats()
                .await
                .unwrap()
                .into_iter()
                .find(|s| s.queue == name)
                .unwrap()
        }
    };
    assert_eq!((stats(&q).await.done, stats(&q).await.dead), (1, 1));
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        config("a", Duration::from_secs(600), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    beat.step(utc("2026-11-25T12:07:00Z")).await.unwrap();
    assert_eq!((stats(&q).await.done, stats(&q).await.dead), (0, 1));
    let left: Vec<String> = redis::cmd("HKEYS")
        .arg(&data)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(left, ["bad"]);
}

/// The outbox kept every message ever sent. The sweep deletes delivered messages past their
/// retention, and nothing else; with the retention off it deletes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_deletes_delivered_messages_past_their_retention() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    let now = utc("2026-11-25T12:07:00Z");
    let day = chrono::Duration::days(1);
    for (key, status, sent) in [
        ("old-sent", "sent", Some(now - day * 31)),
        ("new-sent", "sent", Some(now - day * 29)),
        ("old-dead", "dead", None),
        ("old-failed", "failed", None),
    ] {
        sqlx::query(
            "INSERT INTO outbox (channel, recipient, payload, idempotency_key, status, sent_at,
                 created_at)
             VALUES ('email', 'a@example.com', '{}', $1, $2, $3, $4)",
        )
        .bind(key)
        .bind(status)
        .bind(sent)
        .bind(now - day * 40)
        .execute(pg.pool())
        .await
        .unwrap();
    }
    let keys = || async {
        let mut k: Vec<String> = sqlx::query_scalar("SELECT idempotency_key FROM outbox")
            .fetch_all(pg.pool())
            .await
            .unwrap();
        k.sort();
        k
    };
    // retention off: nothing goes
    let mut off = config("a", Duration::from_secs(600), Duration::from_secs(30));
    off.outbox_retention = None;
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        off,
        Health::new(Duration::from_secs(60)),
    );
    beat.step(now).await.unwrap();
    assert_eq!(
        keys().await,
        ["new-sent", "old-dead", "old-failed", "old-sent"]
    );
    drop(beat);

    // the default 30 days (the same holder takes its lease back): the message sent 31 days
    // ago goes, the rest stay
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        config("a", Duration::from_secs(600), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    beat.step(now + chrono::Duration::seconds(1)).await.unwrap();
    assert_eq!(keys().await, ["new-sent", "old-dead", "old-failed"]);
}

/// The sweep fails a run that has not moved for six hours (its jobs lost, or dead unrecorded):
/// it read `running` for ever, to `status`, the api and `enqueue check --wait`.
#[tokio::test]
async fn the_sweep_fails_runs_that_stopped_moving_for_hours() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let now = utc("2026-11-25T12:07:00Z");
    let lost = escalator_testkit::queued_run(
        &db.store,
        "cli",
        "all",
        now - escalator_beat::STALE_RUN - chrono::Duration::minutes(1),
    )
    .await;
    let young = escalator_testkit::queued_run(
        &db.store,
        "cli",
        "all",
        now - escalator_beat::STALE_RUN + chrono::Duration::minutes(1),
    )
    .await;
    let mut beat = Beat::new(
        db.store.clone(),
        q.clone(),
        config("a", Duration::from_secs(600), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    beat.step(now).await.unwrap();
    let status = |id| {
        let store = db.store.clone();
        async move { store.get_check_run(id).await.unwrap().status }
    };
    assert_eq!(status(lost.id).await, "failed");
    assert_eq!(status(young.id).await, "queued");
}

/// A Redis that accepts and never answers (frozen, partitioned) held a step for about 30 s
/// against a 15 s lease: two beats took turns leading, and a slot's run was left failed and
/// never pushed again. A push is now bounded by a third of the lease: the step ends within
/// the lease, marks the run unpushed, keeps leading, and pushes that run once Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_cannot_make_a_step_outlast_its_lease() {
    let db = TestDb::postgres().await;
    let redis = escalator_testkit::services::PrivateRedis::start();
    let q = Queues::connect(&redis.url(), QueueNames::new("beat-frozen"))
        .await
        .unwrap();
    let lease = Duration::from_secs(6);
    let mut beat = Beat::new(
        db.store.clone(),
        q,
        config("a", Duration::from_secs(600), lease),
        Health::new(Duration::from_secs(60)),
    );
    let slot = utc("2026-11-25T12:00:00Z");
    redis.freeze();
    let step = tokio::time::timeout(lease, beat.step(slot + chrono::Duration::milliseconds(500)))
        .await
        .expect("a step outlasted the lease while Redis was frozen");
    assert!(
        matches!(step, Err(escalator_beat::BeatError::Queue(_))),
        "{step:?}"
    );
    let runs = db.store.recent_check_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        (runs[0].slot, runs[0].status.as_str()),
        (Some(slot), "failed")
    );
    let error = runs[0].error.clone().unwrap_or_default();
    assert!(error.contains("did not answer"), "{error}");
    // a standby finds the lease held: the frozen queue did not cost the leader its lease
    let standby_q = Queues::connect(&redis_url(), QueueNames::new("beat-frozen-standby"))
        .await
        .unwrap();
    let mut standby = Beat::new(
        db.store.clone(),
        standby_q,
        config("b", Duration::from_secs(600), lease),
        Health::new(Duration::from_secs(60)),
    );
    standby
        .step(slot + chrono::Duration::seconds(1))
        .await
        .unwrap();
    // Redis answers again: the same run is pushed, by the same leader
    redis.thaw();
    let mut pushed = false;
    for s in 2..60 {
        if beat.step(slot + chrono::Duration::seconds(s)).await.is_ok() {
            pushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pushed, "the beat never got through to the thawed Redis");
    let runs = db.store.recent_check_runs(10).await.unwrap();
    assert_eq!(runs.len(), 1, "only the leader recorded, once: {runs:?}");
    assert_eq!(
        (runs[0].status.as_str(), runs[0].error.as_deref()),
        ("queued", None),
        "{runs:?}"
    );
    let Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    let (holder, epoch): (String, i64) =
        sqlx::query_as("SELECT holder, epoch FROM beat_leases WHERE name = 'beat'")
            .fetch_one(pg.pool())
            .await
            .unwrap();
    assert_eq!((holder.as_str(), epoch), ("a", 1));
}

/// One check run recorded for a slot a day ahead (a beat whose clock ran fast) stopped the
/// schedule of every beat until that day, silently: scheduling after it found no slot due.
#[tokio::test]
async fn a_slot_recorded_in_the_future_does_not_stop_the_schedule() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("beat");
    let q = queues(&ns).await;
    let now = utc("2026-11-25T12:00:00.500Z");
    let future = utc("2026-11-26T12:00:00Z");
    db.store
        .create_check_run(&escalator_store::NewCheckRun {
            slot: Some(future),
            requested_by: "beat",
            scope: "all".into(),
            as_of: future,
            dry_run: false,
            coalesced: 1,
            now: future,
        })
        .await
        .unwrap()
        .unwrap();
    let mut beat = Beat::new(
        db.store.clone(),
        q,
        config("a", Duration::from_secs(600), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    beat.step(now).await.unwrap();
    let slots: Vec<_> = scheduled(&db.store)
        .await
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert!(
        slots.contains(&utc("2026-11-25T12:00:00Z")),
        "the 12:00 slot was not run: {slots:?}"
    );
}

/// A beat whose every step failed said so only in its log: it kept `escalator_beat_leader 1`
/// and its health for two slot periods. Failed steps are counted by what failed
/// (BeatStepsFailing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_steps_are_counted_by_what_failed() {
    let metrics = recorder();
    escalator_runtime::metrics::start_at_zero(escalator_runtime::metrics::Emitter::Beat);
    let db = TestDb::postgres().await;
    let mut redis = escalator_testkit::services::PrivateRedis::start();
    let q = Queues::connect(&redis.url(), QueueNames::new("beat-failing"))
        .await
        .unwrap();
    // the latest slot is within the hour: each step tries to push its run
    let beat = Beat::new(
        db.store.clone(),
        q,
        config("a", Duration::from_secs(3_600), Duration::from_secs(30)),
        Health::new(Duration::from_secs(60)),
    );
    let count = |cause: &str| -> f64 {
        let prefix = format!("escalator_beat_step_failures_total{{cause=\"{cause}\"}} ");
        metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(|v| v.trim().parse().unwrap()))
            .unwrap_or(-1.0)
    };
    assert_eq!((count("queue"), count("database")), (0.0, 0.0));
    redis.kill();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(beat.run(async {
        let _ = stopped.await;
    }));
    let mut counted = false;
    for _ in 0..300 {
        if count("queue") >= 2.0 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    assert!(counted, "{}", metrics.render());
    assert_eq!(count("database"), 0.0);
}
