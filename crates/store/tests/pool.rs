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
    // a query through the pool (a readiness ping has a connection of its own)
    one_shot.earliest_next_check().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(open_connections(&mut conn).await - baseline, 4);

    one_shot.close().await;
    service.close().await;
    // a backend leaves pg_stat_activity once it has handled the goodbye, just after close()
    let closed = std::time::Instant::now();
    while open_connections(&mut conn).await != baseline {
        assert!(
            closed.elapsed() < Duration::from_secs(10),
            "closed pools left {} connections open",
            open_connections(&mut conn).await - baseline
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A lock wait past `lock_timeout` and a write refused by a read-only transaction (a failover
/// leaving the address on a standby for a while) were permanent errors: a batch meeting one
/// died on its first attempt instead of being retried after its backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_timeout_and_a_read_only_database_are_worth_a_retry() {
    let db = TestDb::postgres().await;
    let escalator_store::Store::Postgres(pg) = &db.store else {
        panic!("PostgreSQL expected")
    };
    let mut holder = PgConnection::connect(&db.url).await.unwrap();
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await
        .unwrap();
    let mut waiter = pg.pool().acquire().await.unwrap();
    sqlx::query("SET lock_timeout = '50ms'")
        .execute(&mut *waiter)
        .await
        .unwrap();
    let e = sqlx::query("SELECT count(*) FROM users")
        .execute(&mut *waiter)
        .await
        .unwrap_err();
    let e = escalator_store::StoreError::from(e);
    assert!(e.is_transient(), "{e:?}");
    tx.rollback().await.unwrap();
    sqlx::query("RESET lock_timeout")
        .execute(&mut *waiter)
        .await
        .unwrap();

    sqlx::query("SET default_transaction_read_only = on")
        .execute(&mut *waiter)
        .await
        .unwrap();
    let e = sqlx::query("DELETE FROM users")
        .execute(&mut *waiter)
        .await
        .unwrap_err();
    let e = escalator_store::StoreError::from(e);
    assert!(e.is_transient(), "{e:?}");
    // a refusal stays a refusal
    sqlx::query("RESET default_transaction_read_only")
        .execute(&mut *waiter)
        .await
        .unwrap();
    let e = sqlx::query("INSERT INTO users (id) VALUES (NULL)")
        .execute(&mut *waiter)
        .await
        .unwrap_err();
    assert!(!escalator_store::StoreError::from(e).is_transient());
    drop(waiter);
}

/// A batch round holds its transaction's connection while it reads a policy or a calendar
/// through the pool. With as many rounds at once as the pool has connections (a worker
/// concurrency above 10), each waited for a second connection until the pool's timeout, and
/// every batch failed. Batch transactions now leave two connections to the rest: one beyond
/// that waits, holding none, for a transaction to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_transactions_always_leave_a_connection_for_their_reads() {
    let db = TestDb::postgres().await;
    let mut config = StoreConfig::new(db.url.clone()).patient_for(Duration::from_secs(2));
    config.max_connections = 2;
    let store = Store::connect(&config).await.unwrap();
    let first = store.begin_batch().await.unwrap();
    let second = {
        let store = store.clone();
        tokio::spawn(async move { store.begin_batch().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "a second batch took the pool's last connections"
    );
    // the first round reads its policy and its users through the pool meanwhile
    let read = tokio::time::timeout(Duration::from_secs(1), store.get_policy("default", 1))
        .await
        .expect("the read waited for a connection");
    assert_eq!(read.unwrap().version, 1);
    first.commit().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(2), second)
        .await
        .expect("the second batch never started")
        .unwrap()
        .unwrap();
    second.rollback().await.unwrap();
    store.close().await;
}

/// A store told not to create a missing SQLite file names the file it did not find, and an
/// in-memory database (which has no file; sqlx names it `file:sqlx-in-memory-N`) still opens.
#[tokio::test]
async fn an_existing_only_store_refuses_a_missing_file_and_opens_memory() {
    let missing = std::env::temp_dir().join(format!("escalator-typo-{}.db", uuid::Uuid::new_v4()));
    let e = Store::connect(
        &StoreConfig::new(format!("sqlite://{}", missing.display())).existing_only(),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "there is no SQLite database at {}",
            missing.display()
        )),
        "{e}"
    );
    assert!(!missing.exists());
    let memory = Store::connect(&StoreConfig::new("sqlite::memory:").existing_only())
        .await
        .unwrap();
    memory.ping().await.unwrap();
}
