//! Test fixtures: a fresh, migrated database per test on either backend. PostgreSQL tests fail
//! loudly, never skip, when the server is unreachable.

// Fixtures run only inside tests, where a panic with a message is the right way to fail.
#![allow(clippy::expect_used, clippy::unwrap_used)]

pub mod ports;
pub mod raw_queue;
pub mod redis_ns;
pub mod services;
pub mod smtp;

use std::time::{SystemTime, UNIX_EPOCH};

use escalator_store::{Store, StoreConfig};
pub use ports::free_port;
pub use redis_ns::{RedisNamespace, redis_url};
use sqlx::{Connection, Executor, PgConnection};

/// Where the test PostgreSQL server is, unless `TEST_DATABASE_URL` says otherwise. The database
/// in the URL is only used to create and drop the per-test databases.
pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Per-test databases are named with this prefix and their creation time.
const PREFIX: &str = "escalator_t_";

/// Leftovers of crashed test processes older than this are dropped by later tests.
const STALE_AFTER_SECS: u64 = 3_600;

/// The admin URL for the test server.
pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned())
}

/// A migrated database that disappears when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    /// The store connected to it.
    pub store: Store,
    /// Its URL (for child processes in end-to-end tests).
    pub url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Postgres { admin: String, name: String },
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
}

impl TestDb {
    /// A fresh PostgreSQL database. Panics with instructions when the server is unreachable:
    /// an integration test must fail, not skip.
    pub async fn postgres() -> TestDb {
        TestDb::postgres_at(&admin_url()).await
    }

    /// A fresh database on the server of `admin` (e.g. a private cluster a fault test
    /// restarts), dropped with the value like [`TestDb::postgres`]'s.
    pub async fn postgres_at(admin: &str) -> TestDb {
        let admin = admin.to_owned();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is unreachable at {}: {e}. Start it (`make services`) or set \
                 TEST_DATABASE_URL.",
                escalator_runtime::config::redact(&admin)
            )
        });
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        drop_stale(&mut conn, now).await;
        let name = format!("{PREFIX}{now}_{}", uuid::Uuid::new_v4().simple());
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .unwrap_or_else(|e| panic!("cannot create test database {name}: {e}"));
        let _ = conn.close().await;
        let url = replace_database(&admin, &name);
        let mut config = StoreConfig::new(url.clone());
        config.max_connections = 5;
        let store = Store::connect(&config)
            .await
            .expect("connect to the test database");
        store.migrate().await.expect("migrate the test database");
        TestDb {
            store,
            url,
            cleanup: Cleanup::Postgres { admin, name },
        }
    }

    /// A fresh SQLite file in a temporary directory.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("escalator.db").display());
        let store = Store::connect(&StoreConfig::new(url.clone()))
            .await
            .expect("open SQLite");
        store.migrate().await.expect("migrate SQLite");
        TestDb {
            store,
            url,
            cleanup: Cleanup::Sqlite(dir),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Cleanup::Postgres { admin, name } = &self.cleanup else {
            return;
        };
        let (admin, name) = (admin.clone(), name.clone());
        // Drop cannot await; a short-lived thread with its own runtime drops the database,
        // terminating the pool's connections (WITH (FORCE)).
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = conn.execute(sqlx::AssertSqlSafe(sql)).await;
                }
            });
        })
        .join();
    }
}

/// Drops per-test databases left by processes that crashed more than an hour ago.
async fn drop_stale(conn: &mut PgConnection, now: u64) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT datname FROM pg_database WHERE datname LIKE 'escalator\\_t\\_%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_default();
    for (name,) in names {
        let created = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|s| s.parse::<u64>().ok());
        if created.is_some_and(|t| t + STALE_AFTER_SECS < now) {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            let _ = conn.execute(sqlx::AssertSqlSafe(sql)).await;
        }
    }
}

/// A workflow on the default policy whose stage started at `started` (deadline 24 h later),
/// assigned to alice, started by bob, escalating to carol.
pub fn new_workflow(
    external_id: &str,
    started: chrono::DateTime<chrono::Utc>,
) -> escalator_store::NewWorkflow {
    escalator_store::NewWorkflow {
        external_id: external_id.into(),
        title: "Laptop".into(),
        kind: "purchase".into(),
        stage: "approval".into(),
        assignee: "alice".into(),
        initiator: "bob".into(),
        escalation_target: Some("carol".into()),
        policy_id: None,
        stage_started_at: Some(started),
        metadata: serde_json::json!({}),
    }
}

/// A queued check run of `scope` (`all`, `workflow:<id>`) at `as_of` requested by
/// `requested_by`, as `enqueue check` and the api record one.
pub async fn queued_run(
    store: &Store,
    requested_by: &'static str,
    scope: &str,
    as_of: chrono::DateTime<chrono::Utc>,
) -> escalator_store::CheckRun {
    let new = escalator_store::NewCheckRun {
        slot: None,
        requested_by,
        scope: scope.to_owned(),
        as_of,
        dry_run: false,
        coalesced: 1,
        now: as_of,
    };
    store
        .create_check_run(&new)
        .await
        .expect("create a check run")
        .expect("an unscheduled run is always created")
}

/// A check run of every workflow requested by `requested_by` at `now`, started with `batches`
/// batch jobs, as the planner leaves it. Returns its id.
pub async fn started_run(
    store: &Store,
    requested_by: &'static str,
    batches: i32,
    now: chrono::DateTime<chrono::Utc>,
) -> i64 {
    let run = queued_run(store, requested_by, "all", now).await;
    store
        .start_check_run(run.id, batches, now)
        .await
        .expect("start the check run");
    run.id
}

pub fn replace_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    match query {
        Some(q) => format!("{host}/{database}?{q}"),
        None => format!("{host}/{database}"),
    }
}

#[cfg(test)]
mod tests {
    use super::replace_database;

    #[test]
    fn replacing_the_database_keeps_host_and_options() {
        assert_eq!(
            replace_database("postgres://u@h:5432/test?sslmode=disable", "x"),
            "postgres://u@h:5432/x?sslmode=disable"
        );
        assert_eq!(replace_database("postgres://h", "x"), "postgres://h/x");
    }
}
