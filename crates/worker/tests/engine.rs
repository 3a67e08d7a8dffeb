//! The engine against real PostgreSQL and Redis: attempts that fail part-way and are retried.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use escalator_jobs::{CheckWorkflows, EscalateBatch, QueueNames, Queues, Scope};
use escalator_store::Store;
use escalator_testkit::{RedisNamespace, TestDb, redis_url};
use escalator_worker::engine::{Engine, EngineConfig, Planned, PolicyCache};

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn engine(db: &TestDb, ns: &RedisNamespace) -> Engine {
    let queues = Queues::connect(&redis_url(), QueueNames::new(&ns.name))
        .await
        .unwrap_or_else(|e| panic!("Redis is unreachable at {}: {e:?}", redis_url()));
    Engine {
        store: db.store.clone(),
        queues,
        config: EngineConfig::default(),
        policies: PolicyCache::default(),
    }
}

/// A queued check run of `scope` at `as_of`, as `enqueue check` records it.
async fn new_run(store: &Store, scope: Scope, as_of: DateTime<Utc>) -> escalator_store::CheckRun {
    escalator_testkit::queued_run(store, "cli", &scope.to_string(), as_of).await
}

/// A workflow on the default policy (deadline 24 h after `started`) with a target.
async fn workflow(store: &Store, started: DateTime<Utc>) -> uuid::Uuid {
    workflow_named(store, "E-1", started).await
}

async fn workflow_named(store: &Store, external_id: &str, started: DateTime<Utc>) -> uuid::Uuid {
    store
        .create_workflow(
            &escalator_testkit::new_workflow(external_id, started),
            started,
        )
        .await
        .unwrap()
        .workflow
        .id
}

/// A single-workflow check whose round failed after its run was marked running (here: its
/// attempt timed out while another transaction held the workflow) used to be `AlreadyDone` on
/// every retry, leaving the run `running` for ever and the workflow unchecked by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_single_workflow_check_finishes_its_run() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let engine = engine(&db, &ns).await;
    let started = utc("2026-11-24T12:00:00Z");
    let id = workflow(&db.store, started).await;
    let as_of = started + chrono::Duration::hours(25);
    let run = new_run(&db.store, Scope::Workflow(id), as_of).await;
    let job = CheckWorkflows {
        check_run_id: run.id,
        as_of,
        scope: Scope::Workflow(id),
    };

    // another transaction holds the workflow: the first attempt waits on it and times out
    let Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    let mut holder = pg.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM workflows WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *holder)
        .await
        .unwrap();
    let first =
        tokio::time::timeout(Duration::from_millis(300), engine.check_workflows(&job)).await;
    assert!(
        first.is_err(),
        "the first attempt should have waited: {first:?}"
    );
    assert_eq!(
        db.store.get_check_run(run.id).await.unwrap().status,
        "running"
    );
    holder.rollback().await.unwrap();

    // the retry runs the round: the workflow is escalated once and the run finishes
    let retried = engine.check_workflows(&job).await.unwrap();
    assert!(matches!(retried, Planned::Inline(_)), "{retried:?}");
    let run = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (run.status.as_str(), run.escalated, run.batches_done),
        ("succeeded", 1, 1),
        "{run:?}"
    );
    // and a duplicate delivery of the job changes nothing
    assert_eq!(
        engine.check_workflows(&job).await.unwrap(),
        Planned::AlreadyDone
    );
    let run = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!((run.escalated, run.batches_done), (1, 1));
}

/// A planner attempt that pushed its batches and failed before recording their number left the
/// run queued; its retry re-cut what was still due. Once some batches had committed that gave
/// fewer slices than were running, so the run was counted finished while a batch still had
/// workflows to escalate. The plan is saved before anything is pushed, and a retry reuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_planner_counts_the_batches_the_first_attempt_pushed() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let mut engine = engine(&db, &ns).await;
    engine.config.batch_size = 2;
    let as_of = utc("2026-11-26T13:00:00Z");
    for i in 0..6 {
        let started = utc("2026-11-25T12:00:00Z") + chrono::Duration::minutes(i);
        workflow_named(&db.store, &format!("P-{i}"), started).await;
    }
    let run = new_run(&db.store, Scope::All, as_of).await;
    // the first attempt: it cut three slices and saved them, pushed their jobs, and failed
    // before starting the run; two of the pushed batches have committed since
    let cut = db.store.due_ranges(as_of, 2).await.unwrap();
    assert_eq!(cut.len(), 3, "{cut:?}");
    let plan = db.store.save_check_run_plan(run.id, &cut).await.unwrap();
    assert_eq!(plan, cut);
    let batch = |i: usize| EscalateBatch {
        check_run_id: run.id,
        as_of,
        batch_index: i32::try_from(i).unwrap(),
        slice: cut[i],
    };
    for i in 0..2 {
        engine.escalate_batch(&batch(i)).await.unwrap();
    }
    assert_eq!(db.store.count_due(as_of).await.unwrap(), 2);

    // the retry counts the three batches, so the run waits for the third
    let job = CheckWorkflows {
        check_run_id: run.id,
        as_of,
        scope: Scope::All,
    };
    let planned = engine.check_workflows(&job).await.unwrap();
    assert_eq!(planned, Planned::FannedOut { due: 2, batches: 3 });
    let r = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.batches, r.batches_done),
        ("running", 3, 2),
        "{r:?}"
    );
    engine.escalate_batch(&batch(2)).await.unwrap();
    let r = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.escalated, r.batches_done),
        ("succeeded", 6, 3),
        "{r:?}"
    );
    // a later plan never replaces the saved one
    assert_eq!(
        db.store
            .save_check_run_plan(run.id, &cut[..1])
            .await
            .unwrap(),
        cut
    );
}

/// A copy of a batch job run while another copy held the slice's rows (a job run twice, a
/// transition) claimed nothing (SKIP LOCKED passed the rows over), took its short claim for
/// a drained slice and marked the batch done: the run read `succeeded` while the first copy
/// was still writing, and stayed so had that copy then failed, its workflows untouched. It
/// now waits for the rows, and takes over those still due once the holder is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_run_twice_at_once_is_done_only_when_its_slice_is() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let engine = engine(&db, &ns).await;
    let as_of = utc("2026-11-26T13:00:00Z");
    for i in 0..3 {
        workflow_named(&db.store, &format!("T-{i}"), utc("2026-11-25T09:00:00Z")).await;
    }
    let (run, plan) = one_batch_run(&engine, &db, as_of, 3).await;
    let batch = EscalateBatch {
        check_run_id: run.id,
        as_of,
        batch_index: 0,
        slice: plan[0],
    };
    // the first copy has claimed the slice and is still deciding
    let mut first = db.store.begin_batch().await.unwrap();
    let held = first.claim_due_in(as_of, &plan[0], 100).await.unwrap();
    assert_eq!(held.len(), 3);
    let second = {
        let engine = engine.clone();
        let batch = batch.clone();
        tokio::spawn(async move { engine.escalate_batch(&batch).await })
    };
    // the second copy waits for the rows the first one holds
    wait_for_a_lock_wait(&db).await;
    let r = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.batches_done),
        ("running", 0),
        "done while the first copy writes: {r:?}"
    );
    assert!(!second.is_finished());
    // the first copy fails: the second one does the slice, and the batch is done
    first.rollback().await.unwrap();
    let outcome = second.await.unwrap().unwrap();
    assert_eq!(outcome.applied.changed.len(), 3, "{outcome:?}");
    let r = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.escalated, r.batches_done),
        ("succeeded", 3, 1),
        "{r:?}"
    );
    assert_eq!(db.store.verify().await.unwrap(), vec![]);
}

/// A check of everything due at `as_of` (`due` workflows), planned as one batch; its run and
/// its slices.
async fn one_batch_run(
    engine: &Engine,
    db: &TestDb,
    as_of: DateTime<Utc>,
    due: i64,
) -> (escalator_store::CheckRun, Vec<escalator_store::DueRange>) {
    let run = new_run(&db.store, Scope::All, as_of).await;
    let job = CheckWorkflows {
        check_run_id: run.id,
        as_of,
        scope: Scope::All,
    };
    assert_eq!(
        engine.check_workflows(&job).await.unwrap(),
        Planned::FannedOut { due, batches: 1 }
    );
    let plan = db.store.save_check_run_plan(run.id, &[]).await.unwrap();
    (run, plan)
}

/// Waits until a session of the test database waits for a lock another holds.
async fn wait_for_a_lock_wait(db: &TestDb) {
    let Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    let started = std::time::Instant::now();
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE NOT l.granted AND a.datname = current_database()",
        )
        .fetch_one(pg.pool())
        .await
        .unwrap();
        if waiting > 0 {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "nobody waited for the held rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The wait for rows another transaction holds is bounded: a transaction left open (an idle
/// session, a worker cut off from the network) held every later check over its slice until
/// the attempts ran out, where the row used to be passed over and left for the next check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_held_by_a_transaction_left_open_is_left_for_the_next_check() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let engine = engine(&db, &ns).await;
    let as_of = utc("2026-11-26T13:00:00Z");
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(workflow_named(&db.store, &format!("H-{i}"), utc("2026-11-25T09:00:00Z")).await);
    }
    let Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    let mut idle = pg.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM workflows WHERE id = $1 FOR UPDATE")
        .bind(ids[1])
        .execute(&mut *idle)
        .await
        .unwrap();
    let (run, plan) = one_batch_run(&engine, &db, as_of, 3).await;
    let outcome = engine
        .escalate_batch(&EscalateBatch {
            check_run_id: run.id,
            as_of,
            batch_index: 0,
            slice: plan[0],
        })
        .await
        .unwrap();
    assert_eq!(outcome.applied.changed.len(), 2, "{outcome:?}");
    let r = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.escalated, r.batches_done),
        ("succeeded", 2, 1),
        "{r:?}"
    );
    idle.rollback().await.unwrap();
    // the held one is still due: the next check escalates it
    assert_eq!(db.store.count_due(as_of).await.unwrap(), 1);
}

/// Dead jobs are retryable (`escalator jobs retry`), yet a dead planner's job retried found
/// its run failed and did nothing, reported done; a dead batch retried did its slice and left
/// the run failed for good. The planner now runs the check, and the batch that completes the
/// run marks it succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_dead_jobs_finish_the_runs_they_failed() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let mut engine = engine(&db, &ns).await;
    engine.config.batch_size = 2;
    let as_of = utc("2026-11-26T13:00:00Z");
    for i in 0..3 {
        let started = utc("2026-11-25T09:00:00Z") + chrono::Duration::minutes(i);
        workflow_named(&db.store, &format!("R-{i}"), started).await;
    }
    let run = new_run(&db.store, Scope::All, as_of).await;
    let job = CheckWorkflows {
        check_run_id: run.id,
        as_of,
        scope: Scope::All,
    };
    // the planner died on its last attempt (as jobs::check_workflows marks it)
    let failed = "planner failed after 5 attempt(s): the database is unreachable";
    db.store
        .fail_check_run(run.id, failed, Utc::now())
        .await
        .unwrap();
    // its job retried: the check is planned after all
    assert_eq!(
        engine.check_workflows(&job).await.unwrap(),
        Planned::FannedOut { due: 3, batches: 2 }
    );
    let r = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!((r.status.as_str(), r.error.as_deref()), ("running", None));

    let plan = db.store.save_check_run_plan(run.id, &[]).await.unwrap();
    let batch = |i: usize| EscalateBatch {
        check_run_id: run.id,
        as_of,
        batch_index: i32::try_from(i).unwrap(),
        slice: plan[i],
    };
    engine.escalate_batch(&batch(0)).await.unwrap();
    // batch 1 died (as jobs::escalate_batch marks it)
    db.store
        .fail_check_run(run.id, "batch 1 dead after 5 attempt(s)", Utc::now())
        .await
        .unwrap();
    // a duplicate of the done batch changes nothing
    engine.escalate_batch(&batch(0)).await.unwrap();
    let r = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!((r.status.as_str(), r.batches_done), ("failed", 1), "{r:?}");
    // the dead batch retried: the run is complete
    engine.escalate_batch(&batch(1)).await.unwrap();
    let r = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (
            r.status.as_str(),
            r.escalated,
            r.batches_done,
            r.error.as_deref()
        ),
        ("succeeded", 3, 2, None),
        "{r:?}"
    );
    // and a planner retried once the run is done does nothing
    assert_eq!(
        engine.check_workflows(&job).await.unwrap(),
        Planned::AlreadyDone
    );
    assert_eq!(db.store.verify().await.unwrap(), vec![]);
}

/// A planner retried after its batches had all committed finishes the run itself (its start
/// finds every batch done). It marked the run succeeded but left the run's escalation emails
/// held for digests until a delivery drain or the beat's sweep happened by: it now decides
/// them, as the batch finishing a run does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_its_planner_finishes_has_its_held_emails_decided() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let mut engine = engine(&db, &ns).await;
    engine.config.batch_size = 2;
    let user = |id: &str| escalator_store::User {
        id: id.into(),
        display_name: id.into(),
        email: Some(format!("{id}@example.com")),
        phone: None,
        slack: None,
        manager_id: None,
        active: true,
        channels: None,
    };
    db.store
        .upsert_users(&[user("alice"), user("bob"), user("carol")])
        .await
        .unwrap();
    let as_of = utc("2026-11-26T13:00:00Z");
    for i in 0..3 {
        let started = utc("2026-11-25T09:00:00Z") + chrono::Duration::minutes(i);
        workflow_named(&db.store, &format!("P-{i}"), started).await;
    }
    let run = new_run(&db.store, Scope::All, as_of).await;
    // the first attempt cut and saved its plan, pushed the batches and died before it
    // started the run; the batches ran
    let cut = db.store.due_ranges(as_of, 2).await.unwrap();
    let plan = db.store.save_check_run_plan(run.id, &cut).await.unwrap();
    assert_eq!(plan.len(), 2);
    for (i, slice) in plan.iter().enumerate() {
        engine
            .escalate_batch(&EscalateBatch {
                check_run_id: run.id,
                as_of,
                batch_index: i32::try_from(i).unwrap(),
                slice: *slice,
            })
            .await
            .unwrap();
    }
    let Store::Postgres(pg) = &db.store else {
        unreachable!()
    };
    let held = async || -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox_held WHERE check_run_id = $1")
            .bind(run.id)
            .fetch_one(pg.pool())
            .await
            .unwrap()
    };
    assert_eq!(
        held().await,
        3,
        "the three escalation emails wait for the run's end"
    );
    // the planner's retry finds every batch done and finishes the run
    let job = CheckWorkflows {
        check_run_id: run.id,
        as_of,
        scope: Scope::All,
    };
    engine.check_workflows(&job).await.unwrap();
    let r = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!((r.status.as_str(), r.escalated), ("succeeded", 3), "{r:?}");
    assert_eq!(held().await, 0, "the finished run's emails are still held");
    let emails: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE check_run_id = $1 AND recipient = 'carol@example.com'",
    )
    .bind(run.id)
    .fetch_one(pg.pool())
    .await
    .unwrap();
    assert_eq!(emails, 3);
    assert_eq!(db.store.verify().await.unwrap(), vec![]);
}

/// Workflows sharing one deadline (snapped to the start of business hours, imported in bulk)
/// were one slice, since slices were cut by instant only: one batch job took them all, round
/// after round, while the other workers idled. They are now cut by id as well, into as many
/// batches as their number calls for, which run side by side and escalate each one once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workflows_sharing_one_deadline_are_spread_over_batches() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let mut engine = engine(&db, &ns).await;
    engine.config.batch_size = 10;
    let started = utc("2026-11-25T09:00:00Z");
    for i in 0..30 {
        workflow_named(&db.store, &format!("S-{i}"), started).await;
    }
    let as_of = utc("2026-11-26T13:00:00Z");
    let run = new_run(&db.store, Scope::All, as_of).await;
    let job = CheckWorkflows {
        check_run_id: run.id,
        as_of,
        scope: Scope::All,
    };
    let planned = engine.check_workflows(&job).await.unwrap();
    assert_eq!(
        planned,
        Planned::FannedOut {
            due: 30,
            batches: 3
        }
    );
    let plan = db.store.save_check_run_plan(run.id, &[]).await.unwrap();
    let batches: Vec<EscalateBatch> = plan
        .iter()
        .enumerate()
        .map(|(i, r)| EscalateBatch {
            check_run_id: run.id,
            as_of,
            batch_index: i32::try_from(i).unwrap(),
            slice: *r,
        })
        .collect();
    // the three side by side, as three worker slots would run them
    let handles: Vec<_> = batches
        .into_iter()
        .map(|b| {
            let engine = engine.clone();
            tokio::spawn(async move { engine.escalate_batch(&b).await })
        })
        .collect();
    for h in handles {
        let outcome = h.await.unwrap().unwrap();
        assert_eq!(outcome.applied.changed.len(), 10, "{outcome:?}");
    }
    let r = db.store.get_check_run(run.id).await.unwrap();
    assert_eq!(
        (r.status.as_str(), r.escalated, r.batches, r.batches_done),
        ("succeeded", 30, 3, 3),
        "{r:?}"
    );
    assert_eq!(db.store.verify().await.unwrap(), vec![]);
}

/// A check that runs late (a backlog of jobs, a worker outage) escalated what had breached by
/// its `as_of` and dated the new level's SLA from that `as_of` too: eleven days late, the new
/// assignee got a deadline already past and was escalated over at the next check. The new
/// level's clock starts when the escalation is made; what is due is still judged at `as_of`, so
/// a second check at the same `as_of` finds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_check_gives_the_new_assignee_the_whole_sla() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let engine = engine(&db, &ns).await;
    let started = Utc::now() - chrono::Duration::days(11);
    let id = workflow(&db.store, started).await;
    let as_of = started + chrono::Duration::hours(25);

    let before = Utc::now();
    let run = new_run(&db.store, Scope::Workflow(id), as_of).await;
    let job = CheckWorkflows {
        check_run_id: run.id,
        as_of,
        scope: Scope::Workflow(id),
    };
    engine.check_workflows(&job).await.unwrap();
    let after = Utc::now();

    let w = db.store.get_workflow(id).await.unwrap();
    assert_eq!((w.assignee.as_str(), w.escalation_level), ("carol", 1));
    let escalated_at = w.escalated_at.expect("escalated_at is recorded");
    assert!(
        before <= escalated_at && escalated_at <= after,
        "escalated at {escalated_at}, the check ran between {before} and {after}"
    );
    assert_eq!(w.due_at, escalated_at + chrono::Duration::hours(24));
    assert_eq!(w.warn_at, escalated_at + chrono::Duration::hours(22));
    assert_eq!(w.next_check_at, Some(w.warn_at));
    let audit = db.store.workflow_audit(id).await.unwrap();
    let escalation = audit.iter().find(|a| a.action == "escalate").unwrap();
    assert_eq!(
        escalation.details["new_due_at"],
        serde_json::json!(w.due_at),
        "{escalation:?}"
    );

    // the same as_of again: nothing is due
    let again = new_run(&db.store, Scope::All, as_of).await;
    engine
        .check_workflows(&CheckWorkflows {
            check_run_id: again.id,
            as_of,
            scope: Scope::All,
        })
        .await
        .unwrap();
    let again = db.store.get_check_run(again.id).await.unwrap();
    assert_eq!(
        (again.status.as_str(), again.escalated, again.reminded),
        ("succeeded", 0, 0),
        "{again:?}"
    );
    assert_eq!(db.store.get_workflow(id).await.unwrap().version, w.version);
}

/// A planner facing a backlogged batches queue waited the queue's own five minutes, past its
/// attempt's deadline (two minutes), so its run's error read "attempt timed out" and never
/// named the backlog. It waits `push_patience` (half the attempt) and fails naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planner_facing_a_backlog_fails_naming_it_before_its_deadline() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let mut engine = engine(&db, &ns).await;
    engine.config.push_patience = Duration::from_millis(500);
    let names = QueueNames::new(&ns.name);
    let backlog = Queues::connect(
        &redis_url(),
        QueueNames {
            noop: names.batches.clone(),
            ..names
        },
    )
    .await
    .unwrap();
    backlog.push_noops(escalator_jobs::MAX_DUE).await.unwrap();
    let as_of = utc("2026-11-26T13:00:00Z");
    workflow(&db.store, utc("2026-11-25T09:00:00Z")).await;
    let run = new_run(&db.store, Scope::All, as_of).await;
    let e = engine
        .check_workflows(&CheckWorkflows {
            check_run_id: run.id,
            as_of,
            scope: Scope::All,
        })
        .await
        .unwrap_err();
    let text = escalator_runtime::error::with_causes(&e);
    assert!(text.contains("jobs due after waiting"), "{text}");
    assert!(text.contains(":batches"), "{text}");
}

/// A run that only found workflows with no one left to escalate to, or renotified them after
/// their chain, read "checked=1 reminded=0 escalated=0", as if it had done nothing: it counts
/// both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_counts_the_workflows_it_exhausted_and_renotified() {
    use escalator_policy::{AfterLast, Policy};
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let engine = engine(&db, &ns).await;
    let mut spec = Policy::default_policy().spec().clone();
    spec.after_last = AfterLast::Repeat { every_seconds: 600 };
    db.store
        .create_policy_version("nagging", "Nagging", &Policy::new(spec).unwrap())
        .await
        .unwrap();
    // on time (a late check starts the renotification clock when it runs)
    let now = Utc::now();
    let started = now - chrono::Duration::hours(25);
    // no escalation target, and an assignee without a manager: no one to escalate to
    let mut new = escalator_testkit::new_workflow("NO-ONE", started);
    new.escalation_target = None;
    new.policy_id = Some("nagging".into());
    let id = db
        .store
        .create_workflow(&new, started)
        .await
        .unwrap()
        .workflow
        .id;
    let mut counts = Vec::new();
    for as_of in [now, now + chrono::Duration::minutes(11)] {
        let run = new_run(&db.store, Scope::Workflow(id), as_of).await;
        let job = CheckWorkflows {
            check_run_id: run.id,
            as_of,
            scope: Scope::Workflow(id),
        };
        engine.check_workflows(&job).await.unwrap();
        let r = db.store.get_check_run(run.id).await.unwrap();
        assert_eq!(r.status, "succeeded", "{r:?}");
        counts.push((r.checked, r.escalated, r.exhausted, r.renotified));
    }
    assert_eq!(counts, [(1, 0, 1, 0), (1, 0, 0, 1)]);
}

/// A message still in the outbox when everyone it reaches has been deactivated since (they
/// left while the relay was down) is not sent; the others go out. Both backends' delivery
/// query is the store's (conformance of the SQL); this runs the real check and send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_someone_deactivated_since_is_not_sent() {
    let db = TestDb::postgres().await;
    let ns = RedisNamespace::new("engine");
    let engine = engine(&db, &ns).await;
    let user = |id: &str, active: bool| escalator_store::User {
        id: id.into(),
        display_name: id.into(),
        email: Some(format!("{id}@example.com")),
        phone: None,
        slack: None,
        manager_id: None,
        active,
        channels: None,
    };
    db.store
        .upsert_users(&[user("alice", true), user("dave", true), user("bob", true)])
        .await
        .unwrap();
    // two workflows in their warning window: reminders to alice and to dave
    let started = utc("2026-11-25T09:00:00Z");
    let mut ids = Vec::new();
    for (name, assignee) in [("LEFT", "alice"), ("STAYED", "dave")] {
        let mut new = escalator_testkit::new_workflow(name, started);
        new.assignee = assignee.into();
        ids.push(
            db.store
                .create_workflow(&new, started)
                .await
                .unwrap()
                .workflow
                .id,
        );
    }
    let as_of = utc("2026-11-26T08:00:00Z");
    let (run, plan) = one_batch_run(&engine, &db, as_of, 2).await;
    for (i, slice) in plan.iter().enumerate() {
        engine
            .escalate_batch(&EscalateBatch {
                check_run_id: run.id,
                as_of,
                batch_index: i32::try_from(i).unwrap(),
                slice: *slice,
            })
            .await
            .unwrap();
    }
    let rows = db.store.list_outbox(&[], 10).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(row.payload["kind"], "reminder", "{row:?}");
        let to = if row.workflow_id == Some(ids[0]) {
            "alice"
        } else {
            "dave"
        };
        assert_eq!(row.payload["user_ids"], serde_json::json!([to]), "{row:?}");
    }
    // alice leaves before the relay takes anything
    db.store
        .upsert_users(&[user("alice", false)])
        .await
        .unwrap();
    let (port, received) = escalator_testkit::smtp::smtp_sink(None).await;
    let deliverer = escalator_notify::Deliverer {
        store: db.store.clone(),
        mailer: Some(
            escalator_notify::Mailer::smtp(
                &format!("smtp://127.0.0.1:{port}"),
                "escalator <e@example.com>",
            )
            .unwrap(),
        ),
        http: None,
        templates: Default::default(),
        max_attempts: 3,
        lease: Duration::from_secs(60),
    };
    let report = deliverer.drain(10, 10).await.unwrap();
    assert_eq!((report.sent, report.obsolete, report.dead), (1, 1, 0));
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("To: dave@example.com"), "{}", got[0]);
    let rows = db.store.list_outbox(&[], 10).await.unwrap();
    let left = rows.iter().find(|r| r.workflow_id == Some(ids[0])).unwrap();
    assert_eq!(
        (left.status.as_str(), left.last_error.as_deref()),
        (
            "obsolete",
            Some("not sent: its recipients were deactivated since")
        )
    );
    assert_eq!(db.store.verify().await.unwrap(), vec![]);
}
