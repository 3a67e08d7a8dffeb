//! Migrations that rewrite existing rows, run against rows as an older build left them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{Duration, TimeZone, Utc};
use escalator_store::*;
use escalator_testkit::TestDb;

fn ctx(now: chrono::DateTime<Utc>) -> TransitionContext {
    TransitionContext {
        actor: "dave".into(),
        reason: AuditReason::Manual,
        expected_version: None,
        comment: None,
        now,
        idempotency_key: None,
    }
}

/// `20261206000018_never_is_9999` brings deadlines an older build stored past 9999 (the year
/// 262142 for a calendar with little working time) to `policy::never`, and keeps a NULL next
/// check NULL: `LEAST` alone turned it into 9999, which the `workflows` check refuses for a
/// closed or held workflow, so the migration failed and every process then refused to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn far_deadlines_become_never_and_absent_next_checks_stay_absent() {
    let db = TestDb::postgres().await;
    let s = &db.store;
    let t0 = Utc.with_ymd_and_hms(2026, 11, 24, 9, 0, 0).unwrap();
    let mut ids = Vec::new();
    for name in ["OPEN", "CLOSED", "HELD"] {
        let new = escalator_testkit::new_workflow(name, t0);
        ids.push(s.create_workflow(&new, t0).await.unwrap().workflow.id);
    }
    let later = t0 + Duration::hours(1);
    s.transition(ids[1], &Transition::Complete, &ctx(later))
        .await
        .unwrap();
    s.transition(ids[2], &Transition::Hold, &ctx(later))
        .await
        .unwrap();
    let Store::Postgres(pg) = s else {
        unreachable!()
    };
    // as an older build stored them
    sqlx::query(
        "UPDATE workflows SET warn_at = '262142-12-31 23:00:00+00',
                due_at = '262142-12-31 23:59:59+00',
                next_check_at = CASE WHEN next_check_at IS NULL THEN NULL
                                     ELSE '262142-12-31 23:00:00+00'::timestamptz END",
    )
    .execute(pg.pool())
    .await
    .unwrap();
    sqlx::raw_sql(include_str!(
        "../../../migrations/postgres/20261206000018_never_is_9999.sql"
    ))
    .execute(pg.pool())
    .await
    .unwrap();

    let never = escalator_policy::never();
    let open = s.get_workflow(ids[0]).await.unwrap();
    assert_eq!(
        (open.warn_at, open.due_at, open.next_check_at),
        (never, never, Some(never))
    );
    for id in &ids[1..] {
        let w = s.get_workflow(*id).await.unwrap();
        assert_eq!((w.warn_at, w.due_at, w.next_check_at), (never, never, None));
    }
}

/// `20261206000017_outbox_obsolete` (SQLite) rebuilds `outbox` to let it hold `obsolete`: rows
/// keep their ids and contents, and the id sequence goes on where it was (AUTOINCREMENT: an id
/// once used, even by a row since deleted, is not handed out again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuilding_the_sqlite_outbox_keeps_rows_ids_and_the_sequence() {
    let db = TestDb::sqlite().await;
    let Store::Sqlite(lite) = &db.store else {
        unreachable!()
    };
    let pool = lite.pool();
    for i in 1..=3 {
        sqlx::query(
            "INSERT INTO outbox (channel, recipient, payload, idempotency_key, status,
                                 next_attempt_at, created_at)
             VALUES ('email', ?1, '{\"n\": 1}', ?2, 'failed', '2026-12-06T10:00:00.000000Z',
                     '2026-12-06T10:00:00.000000Z')",
        )
        .bind(format!("u{i}@example.com"))
        .bind(format!("key-{i}"))
        .execute(pool)
        .await
        .unwrap();
    }
    sqlx::query("DELETE FROM outbox WHERE id = 3")
        .execute(pool)
        .await
        .unwrap();
    sqlx::raw_sql(include_str!(
        "../../../migrations/sqlite/20261206000017_outbox_obsolete.sql"
    ))
    .execute(pool)
    .await
    .unwrap();
    let rows: Vec<(i64, String, String, String)> =
        sqlx::query_as("SELECT id, recipient, idempotency_key, status FROM outbox ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            (1, "u1@example.com".into(), "key-1".into(), "failed".into()),
            (2, "u2@example.com".into(), "key-2".into(), "failed".into()),
        ]
    );
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (channel, recipient, payload, idempotency_key, next_attempt_at,
                             created_at)
         VALUES ('email', 'u4@example.com', '{}', 'key-4', '2026-12-06T10:00:00.000000Z',
                 '2026-12-06T10:00:00.000000Z')
         RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(id, 4, "the sequence went back");
    sqlx::query("UPDATE outbox SET status = 'obsolete' WHERE id = 1")
        .execute(pool)
        .await
        .unwrap();
    assert!(
        sqlx::query("UPDATE outbox SET status = 'lost' WHERE id = 2")
            .execute(pool)
            .await
            .is_err(),
        "the status check was lost"
    );
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'outbox'
           AND name NOT LIKE 'sqlite_autoindex%' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        ["outbox_pending", "outbox_sent", "outbox_workflow"]
    );
}
