//! The PostgreSQL repository: the production source of truth.

mod batch;
mod bulk;
mod checks;
mod nodelay;
mod rows;

/// Maps an `outbox` row (for the delivery module).
pub(crate) fn outbox_row(row: &sqlx::postgres::PgRow) -> Result<crate::model::OutboxEntry> {
    rows::outbox(row)
}

/// Maps a `workflows` row selected with `WORKFLOW_COLUMNS` (for the console module).
pub(crate) fn workflow_row(row: &sqlx::postgres::PgRow) -> Result<crate::model::Workflow> {
    rows::workflow(row)
}

/// Maps a `check_runs` row (for the lease module).
pub(crate) fn check_run_row(row: &sqlx::postgres::PgRow) -> Result<crate::model::CheckRun> {
    rows::check_run(row)
}
mod workflows;

use std::str::FromStr;
use std::time::Duration;

use escalator_policy::{Calendar, Policy};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};

pub use batch::PgBatch;

use crate::error::{Result, StoreError};
use crate::model::{PolicyRecord, User};
use crate::{PG_MIGRATOR, StoreConfig};

/// A pool of PostgreSQL connections.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    /// The readiness probe's own connection ([`PgStore::ping`]), opened on first use.
    probe: std::sync::Arc<tokio::sync::Mutex<Option<sqlx::PgConnection>>>,
    /// Batch transactions running at once ([`crate::batch_slots`]).
    batch_slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl PgStore {
    /// Connects (lazily verified by the first query's round trip).
    pub async fn connect(config: &StoreConfig) -> Result<Self> {
        let options = PgConnectOptions::from_str(&config.url)?.application_name("escalator");
        let pool = PgPoolOptions::new()
            .after_connect(|_, _| {
                Box::pin(async {
                    nodelay::tcp_nodelay_all();
                    Ok(())
                })
            })
            .max_connections(config.max_connections)
            .min_connections(config.min_connections)
            .acquire_timeout(config.patience)
            .connect_with(options.clone())
            .await;
        match pool {
            Ok(pool) => Ok(PgStore::from_pool(pool)),
            // the pool retries a refused connection until its timeout and then says only that
            // it timed out: one more attempt outside it names the cause (refused, unknown host,
            // authentication) — bounded, since a host that drops packets would hold it for
            // the system's TCP timeout
            Err(sqlx::Error::PoolTimedOut) => {
                use sqlx::ConnectOptions as _;
                match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
                    Ok(Err(cause)) => Err(cause.into()),
                    Ok(Ok(_)) | Err(_) => Err(sqlx::Error::PoolTimedOut.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore {
            batch_slots: crate::batch_slots(pool.options().get_max_connections()),
            probe: Default::default(),
            pool,
        }
    }

    /// The pool, for crates that need raw access (apalis-postgres, verification queries).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) async fn migrate(&self) -> Result<()> {
        PG_MIGRATOR.run(&self.pool).await?;
        // Audit rows carrying transaction ids this cluster has not reached come from another
        // one (a dump restored here): the global log would hide them until it got there, and
        // sort this cluster's rows before them. They are cleared, sorting first (migration 20).
        let cleared = sqlx::query(
            "UPDATE audit_logs SET xact_id = NULL
             WHERE xact_id IS NOT NULL AND EXISTS (
               SELECT 1 FROM audit_logs
               WHERE COALESCE(xact_id, '0'::xid8) >= pg_snapshot_xmax(pg_current_snapshot()))",
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        if cleared > 0 {
            tracing::warn!(
                rows = cleared,
                "audit rows written by another PostgreSQL cluster (a restored dump): their \
                 transaction ids cleared, so the global log shows them first"
            );
        }
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
        if let Some(probe) = self.probe.lock().await.take() {
            let _ = sqlx::Connection::close(probe).await;
        }
    }

    /// A round trip on a connection of its own, outside the pool: a pool whose every
    /// connection is busy (a burst of requests) must not make each api replica look unready at
    /// once and empty the Service, which would turn slow answers into none. The connection is
    /// kept between probes; one that fails, or whose probe was cancelled mid-way, is replaced.
    pub(crate) async fn ping(&self) -> Result<()> {
        use sqlx::ConnectOptions as _;
        if self.pool.is_closed() {
            return Err(sqlx::Error::PoolClosed.into());
        }
        let mut slot = self.probe.lock().await;
        // taken out while in use: a probe cancelled by its timeout drops it mid-protocol
        if let Some(mut kept) = slot.take()
            && sqlx::query("SELECT 1").execute(&mut kept).await.is_ok()
        {
            *slot = Some(kept);
            return Ok(());
        }
        // none yet, or the kept one broke (a database restart): one fresh attempt
        let mut fresh = self.pool.connect_options().connect().await?;
        sqlx::query("SELECT 1").execute(&mut fresh).await?;
        *slot = Some(fresh);
        Ok(())
    }

    /// The write of [`crate::Store::upsert_users`]; returns how many exhausted workflows it
    /// made due again.
    pub(crate) async fn upsert_users(
        &self,
        users: &[User],
        no_channels: crate::NoChannels,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64> {
        if users.is_empty() {
            return Ok(0);
        }
        let json = serde_json::to_value(users).map_err(|source| StoreError::Json {
            context: "users",
            source,
        })?;
        // User writes run one at a time (a transaction-scoped advisory lock), so
        // two concurrent writes cannot each pass the cycle check below and close a cycle
        // together (a → b and b → a); and never beside a batch round, which takes the lock
        // shared (`begin_batch`), so the re-arm below sees every exhaustion it could undo.
        let mut tx = self.pool.begin().await?;
        // Bounded: while a user write waits for the lock, every new round queues behind it,
        // and its re-arm could wait on a workflow a forgotten transaction holds. Past the
        // bound it fails as unavailable (the api's 503), and the rounds go on.
        sqlx::query(USER_WRITES_PATIENCE).execute(&mut *tx).await?;
        sqlx::query(USER_WRITES_LOCK).execute(&mut *tx).await?;
        let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
        let before: Vec<crate::logic::UserBefore> =
            sqlx::query_as("SELECT id, manager_id, active FROM users WHERE id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await?;
        // Parents first would be needed for the manager FK if it were checked row by row; a
        // single statement checks it at the end, so any order within the batch works.
        sqlx::query(
            "INSERT INTO users (id, display_name, email, phone, slack, manager_id, active,
                 channels)
             SELECT id, display_name, email, phone, slack, manager_id, active, channels::text
             FROM jsonb_to_recordset($1) AS u(id text, display_name text, email text,
                  phone text, slack text, manager_id text, active boolean, channels jsonb)
             ON CONFLICT (id) DO UPDATE SET display_name = EXCLUDED.display_name,
                 email = EXCLUDED.email, phone = EXCLUDED.phone, slack = EXCLUDED.slack,
                 manager_id = EXCLUDED.manager_id, active = EXCLUDED.active,
                 channels = CASE WHEN $2 THEN COALESCE(EXCLUDED.channels, users.channels)
                                 ELSE EXCLUDED.channels END,
                 updated_at = now()",
        )
        .bind(json)
        .bind(no_channels == crate::NoChannels::Keep)
        .execute(&mut *tx)
        .await?;
        let circular: Option<String> = sqlx::query_scalar(crate::logic::MANAGER_CYCLE_PG)
            .bind(&ids)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(id) = circular {
            tx.rollback().await?;
            return Err(crate::logic::manager_cycle(&id));
        }
        // only what the write changed moves exhausted workflows on (not an HR sync's rewrite)
        let given = crate::logic::given_a_manager(users, &before);
        let back = crate::logic::reactivated(users, &before);
        let mut rearmed = 0;
        if !given.is_empty() || !back.is_empty() {
            rearmed += sqlx::query(crate::logic::REARM_EXHAUSTED_PG)
                .bind(&given)
                .bind(now)
                .bind(&back)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if !back.is_empty() {
            rearmed += sqlx::query(crate::logic::REARM_TARGETS_PG)
                .bind(&back)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(rearmed)
    }

    pub(crate) async fn users_by_id(&self, ids: &[String]) -> Result<Vec<User>> {
        batch::users_by_id(&self.pool, ids).await
    }

    pub(crate) async fn get_user(&self, id: &str) -> Result<User> {
        let row = sqlx::query(
            "SELECT id, display_name, email, phone, slack, manager_id, active, channels FROM users WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            entity: "user",
            id: id.to_owned(),
        })?;
        rows::user(&row)
    }

    pub(crate) async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<User>> {
        let rows = sqlx::query(
            "SELECT id, display_name, email, phone, slack, manager_id, active, channels FROM users
             WHERE $1::text IS NULL OR id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit.min(1000)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::user).collect()
    }

    pub(crate) async fn put_calendar(&self, id: &str, calendar: &Calendar) -> Result<()> {
        let spec = serde_json::to_value(calendar.spec()).map_err(|source| StoreError::Json {
            context: "calendar",
            source,
        })?;
        // under the calendar's lock, which a policy version written on it takes too: the
        // policies measured on it are read and checked inside the write
        let mut tx = self.pool.begin().await?;
        sqlx::query(CALENDAR_LOCK)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let policies = policies_on_calendar(&mut *tx, id).await?;
        crate::logic::check_calendar_keeps(calendar, &policies, chrono::Utc::now())?;
        sqlx::query(
            "INSERT INTO calendars (id, timezone, spec) VALUES ($1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET timezone = EXCLUDED.timezone, spec = EXCLUDED.spec,
                 updated_at = now()",
        )
        .bind(id)
        .bind(&calendar.spec().timezone)
        .bind(spec)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn get_calendar(&self, id: &str) -> Result<Calendar> {
        get_calendar(&self.pool, id).await
    }

    pub(crate) async fn create_policy_version(
        &self,
        id: &str,
        name: &str,
        policy: &Policy,
        unless_same: bool,
    ) -> Result<(PolicyRecord, bool)> {
        let spec = serde_json::to_value(policy.spec()).map_err(|source| StoreError::Json {
            context: "policy",
            source,
        })?;
        // Two concurrent creators race for the same version; the primary key makes one fail
        // instead of both succeeding, and the loser tries again with the next version (or,
        // `unless_same`, finds the winner's identical one).
        let mut attempt = 0;
        loop {
            let mut tx = self.pool.begin().await?;
            if let Some(calendar_id) = policy.spec().calendar_id.as_deref() {
                // under the calendar's lock, which the calendar's writes take too: each sees
                // the other's result, and neither leaves a deadline that never comes
                sqlx::query(CALENDAR_LOCK)
                    .bind(calendar_id)
                    .execute(&mut *tx)
                    .await?;
                let calendar = get_calendar(&mut *tx, calendar_id).await?;
                crate::logic::check_reachable(policy, &calendar, chrono::Utc::now())?;
            }
            let inserted = sqlx::query(
                "WITH latest AS (SELECT version, name, spec FROM escalation_policies
                                 WHERE id = $1 ORDER BY version DESC LIMIT 1)
                 INSERT INTO escalation_policies (id, version, name, calendar_id, spec)
                 SELECT $1, COALESCE((SELECT version FROM latest), 0) + 1, $2, $3, $4
                 WHERE NOT ($5 AND EXISTS (SELECT 1 FROM latest WHERE name = $2 AND spec = $4))
                 RETURNING id, version, name, spec, created_at",
            )
            .bind(id)
            .bind(name)
            .bind(policy.spec().calendar_id.as_deref())
            .bind(&spec)
            .bind(unless_same)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from);
            match inserted {
                Ok(Some(row)) => {
                    let record = rows::policy(&row)?;
                    tx.commit().await?;
                    return Ok((record, true));
                }
                Ok(None) => {
                    // the version compared, read in this transaction: the latest one read
                    // after it could be another post's, committed meanwhile
                    let row = sqlx::query(
                        "SELECT id, version, name, spec, created_at FROM escalation_policies
                         WHERE id = $1 AND name = $2 AND spec = $3
                         ORDER BY version DESC LIMIT 1",
                    )
                    .bind(id)
                    .bind(name)
                    .bind(&spec)
                    .fetch_one(&mut *tx)
                    .await?;
                    let record = rows::policy(&row)?;
                    tx.commit().await?;
                    return Ok((record, false));
                }
                // the transaction is rolled back as it is dropped
                Err(e) if attempt < 10 && e.is_duplicate_key() => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    pub(crate) async fn get_policy(&self, id: &str, version: Option<i32>) -> Result<PolicyRecord> {
        get_policy(&self.pool, id, version).await
    }

    pub(crate) async fn list_policies(&self) -> Result<Vec<PolicyRecord>> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (id) id, version, name, spec, created_at
             FROM escalation_policies ORDER BY id, version DESC",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::policy).collect()
    }

    pub(crate) async fn policies_on_calendar(
        &self,
        calendar_id: &str,
    ) -> Result<Vec<PolicyRecord>> {
        policies_on_calendar(&self.pool, calendar_id).await
    }
}

/// Every policy version measured on calendar `calendar_id`, on any executor.
async fn policies_on_calendar<'e, E>(exec: E, calendar_id: &str) -> Result<Vec<PolicyRecord>>
where
    E: sqlx::PgExecutor<'e>,
{
    let rows = sqlx::query(
        "SELECT id, version, name, spec, created_at FROM escalation_policies
         WHERE calendar_id = $1 ORDER BY id, version",
    )
    .bind(calendar_id)
    .fetch_all(exec)
    .await?;
    rows.iter().map(rows::policy).collect()
}

/// The lock of one calendar's id, for its transaction: taken by the calendar's writes and by
/// the policy versions written on it, so that each checks reachability against the other's
/// result.
const CALENDAR_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('escalator:calendar:' || $1))";

/// How long a user write waits for a lock (see `upsert_users`).
const USER_WRITES_PATIENCE: &str = "SET LOCAL lock_timeout = '10s'";

/// The lock a user write holds for its transaction (exclusive); batch rounds take it shared.
pub(crate) const USER_WRITES_LOCK: &str =
    "SELECT pg_advisory_xact_lock(hashtext('escalator:users:managers'))";

/// One policy version (`None` = newest), on any executor (pool or transaction).
pub(crate) async fn get_policy<'e, E>(
    exec: E,
    id: &str,
    version: Option<i32>,
) -> Result<PolicyRecord>
where
    E: sqlx::PgExecutor<'e>,
{
    let row = sqlx::query(
        "SELECT id, version, name, spec, created_at FROM escalation_policies
         WHERE id = $1 AND ($2::int IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
    )
    .bind(id)
    .bind(version)
    .fetch_optional(exec)
    .await?
    .ok_or_else(|| StoreError::NotFound {
        entity: "policy",
        id: match version {
            Some(v) => format!("{id} v{v}"),
            None => id.to_owned(),
        },
    })?;
    rows::policy(&row)
}

/// One calendar, validated.
pub(crate) async fn get_calendar<'e, E>(exec: E, id: &str) -> Result<Calendar>
where
    E: sqlx::PgExecutor<'e>,
{
    let row = sqlx::query("SELECT spec FROM calendars WHERE id = $1")
        .bind(id)
        .fetch_optional(exec)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            entity: "calendar",
            id: id.to_owned(),
        })?;
    crate::logic::calendar_from_json(id, row.try_get("spec")?)
}
