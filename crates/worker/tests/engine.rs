//! The engine against real PostgreSQL and Redis: attempts that fail part-way and are retried.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use escalator_jobs::{CheckWorkflows, QueueNames, Queues, Scope};
use escalator_store::{NewCheckRun, NewWorkflow, Store};
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

/// A workflow on the default policy (deadline 24 h after `started`) with a target.
async fn workflow(store: &Store, started: DateTime<Utc>) -> uuid::Uuid {
    store
        .create_workflow(
            &NewWorkflow {
                external_id: "E-1".into(),
                title: "Laptop".into(),
                kind: "purchase".into(),
                stage: "approval".into(),
                assignee: "alice".into(),
                initiator: "bob".into(),
                escalation_target: Some("carol".into()),
                policy_id: None,
                stage_started_at: Some(started),
                metadata: serde_json::json!({}),
            },
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
    let run = db
        .store
        .create_check_run(&NewCheckRun {
            slot: None,
            requested_by: "cli",
            scope: Scope::Workflow(id).to_string(),
            as_of,
            dry_run: false,
            coalesced: 1,
            now: as_of,
        })
        .await
        .unwrap()
        .unwrap();
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
