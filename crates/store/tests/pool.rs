//! Pool settings on PostgreSQL: what a long-running process keeps open while it is idle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use escalator_store::{Store, StoreConfig};
use escalator_testkit::TestDb;
use sqlx::{Connection, PgConnection, Row};

/// Connections of escalator's pools to the test database (the counting connection itself has
/// no application name).
async fn open_connections(conn: &mut PgConnection) -> i64 {
    sqlx::query(
        "SELECT count(*) AS n FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'escalator'",
    )
    .fetch_one(conn)
    .await
    .unwrap()
    .get("n")
}

/// A check after a quiet spell must not wait for new connections: a service's pool opens the
/// connections it keeps by itself, without any query asking for them, and keeps them while
/// idle; a one-shot command's pool keeps only the one it used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_pool_opens_and_keeps_its_idle_connections() {
    let db = TestDb::postgres().await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    // the test database's own pool (used by the migration) is the baseline
    let baseline = open_connections(&mut conn).await;

    let service = Store::connect(&StoreConfig::new(db.url.clone()).keeping_open(3))
        .await
        .unwrap();
    let mut seen = 0;
    for _ in 0..100 {
        seen = open_connections(&mut conn).await - baseline;
        if seen >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 3, "connections a service pool keeps open");

    let one_shot = Store::connect(&StoreConfig::new(db.url.clone()))
        .await
        .unwrap();
    one_shot.ping().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(open_connections(&mut conn).await - baseline, 4);

    one_shot.close().await;
    service.close().await;
    assert_eq!(open_connections(&mut conn).await, baseline);
}
