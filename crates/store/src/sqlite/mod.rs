//! The SQLite repository: the embedded default of `escalator dev`. Every write transaction is
//! `BEGIN IMMEDIATE`, taking SQLite's single write lock up front: concurrent batches are
//! serialised, which gives the same "never the same row twice" guarantee as SKIP LOCKED.

mod batch;
mod bulk;
mod checks;
mod rows;

/// Maps an `outbox` row (for the delivery module).
pub(crate) fn outbox_row(row: &sqlx::sqlite::SqliteRow) -> Result<crate::model::OutboxEntry> {
    rows::outbox(row)
}

/// Maps a `workflows` row selected with `WORKFLOW_COLUMNS` (for the console module).
pub(crate) fn workflow_row(row: &sqlx::sqlite::SqliteRow) -> Result<crate::model::Workflow> {
    rows::workflow(row)
}

/// Maps a `check_runs` row (for the lease module).
pub(crate) fn check_run_row(row: &sqlx::sqlite::SqliteRow) -> Result<crate::model::CheckRun> {
    rows::check_run(row)
}
mod workflows;

use std::str::FromStr;
use std::time::Duration;

use escalator_policy::{Calendar, Policy};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

pub use batch::SqliteBatch;

use crate::error::{Result, StoreError};
use crate::model::{PolicyRecord, User};
use crate::time::sqlite_ts;
use crate::{SQLITE_MIGRATOR, StoreConfig};

/// The statement that opens every write transaction.
pub(crate) const BEGIN_WRITE: &str = "BEGIN IMMEDIATE";

/// A pool of connections to one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Batch transactions running at once ([`crate::batch_slots`]).
    batch_slots: std::sync::Arc<tokio::sync::Semaphore>,
}

impl SqliteStore {
    /// Opens the database file in WAL mode with foreign keys on, creating it if missing when
    /// `config.create_missing`.
    pub async fn connect(config: &StoreConfig) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(&config.url)?;
        let file = options.get_filename();
        // by the URL: sqlx names an in-memory database `file:sqlx-in-memory-N`
        let in_memory = config.url.contains(":memory:") || config.url.contains("mode=memory");
        if !config.create_missing && !in_memory && !file.exists() {
            return Err(StoreError::Invalid {
                field: "DATABASE_URL",
                message: format!(
                    "there is no SQLite database at {} (`escalator migrate` creates one; \
                     `escalator dev` keeps its own in escalator-dev.db)",
                    file.display()
                ),
            });
        }
        let options = options
            .create_if_missing(config.create_missing)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(30))
            // SQLite's lower() folds only ASCII: title searches match case-insensitively
            // through REGEXP (the regex crate's Unicode case folding) instead
            .with_regexp();
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .min_connections(config.min_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(SqliteStore {
            batch_slots: crate::batch_slots(pool.options().get_max_connections()),
            pool,
        })
    }

    /// The pool, for crates that need raw access (apalis-sqlite, verification queries).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) async fn migrate(&self) -> Result<()> {
        SQLITE_MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
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
        let malformed = |source| StoreError::Json {
            context: "users",
            source,
        };
        let json = serde_json::to_string(users).map_err(malformed)?;
        let ids = serde_json::to_string(&users.iter().map(|u| &u.id).collect::<Vec<_>>())
            .map_err(malformed)?;
        let now = sqlite_ts(now);
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        // Foreign keys are checked per row in SQLite; deferring them to COMMIT lets a batch name
        // managers that appear later in the same batch.
        sqlx::query("PRAGMA defer_foreign_keys = ON")
            .execute(&mut *tx)
            .await?;
        let before: Vec<crate::logic::UserBefore> = sqlx::query_as(
            "SELECT id, manager_id, active FROM users WHERE id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO users (id, display_name, email, phone, slack, manager_id, active,
                 channels, created_at, updated_at)
             SELECT value->>'id', value->>'display_name', value->>'email', value->>'phone',
                 value->>'slack', value->>'manager_id', value->>'active',
                 CASE WHEN json_type(value->'channels') = 'array' THEN value->'channels' END,
                 ?2, ?2
             FROM json_each(?1) WHERE true
             ON CONFLICT (id) DO UPDATE SET display_name = excluded.display_name,
                 email = excluded.email, phone = excluded.phone, slack = excluded.slack,
                 manager_id = excluded.manager_id, active = excluded.active,
                 channels = CASE WHEN ?3 THEN COALESCE(excluded.channels, users.channels)
                                 ELSE excluded.channels END,
                 updated_at = excluded.updated_at",
        )
        .bind(json)
        .bind(&now)
        .bind(no_channels == crate::NoChannels::Keep)
        .execute(&mut *tx)
        .await?;
        // the write lock taken at BEGIN keeps concurrent writes from closing a cycle together
        let circular: Option<String> = sqlx::query_scalar(crate::logic::MANAGER_CYCLE_SQLITE)
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
        let back = (!back.is_empty())
            .then(|| serde_json::to_string(&back).map_err(malformed))
            .transpose()?;
        let mut rearmed = 0;
        if !given.is_empty() || back.is_some() {
            let given = serde_json::to_string(&given).map_err(malformed)?;
            rearmed += sqlx::query(crate::logic::REARM_EXHAUSTED_SQLITE)
                .bind(&given)
                .bind(&now)
                .bind(back.as_deref().unwrap_or("[]"))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        if let Some(back) = back {
            rearmed += sqlx::query(crate::logic::REARM_TARGETS_SQLITE)
                .bind(&back)
                .bind(&now)
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
            "SELECT id, display_name, email, phone, slack, manager_id, active, channels FROM users WHERE id = ?1",
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
             WHERE ?1 IS NULL OR id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(after)
        .bind(i64::from(limit.min(1000)))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::user).collect()
    }

    pub(crate) async fn put_calendar(&self, id: &str, calendar: &Calendar) -> Result<()> {
        let spec = serde_json::to_string(calendar.spec()).map_err(|source| StoreError::Json {
            context: "calendar",
            source,
        })?;
        // one writer at a time: the policies measured on it are read and checked inside the
        // write, so a policy version written at the same moment is seen or waits
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        let policies = policies_on_calendar(&mut *tx, id).await?;
        crate::logic::check_calendar_keeps(calendar, &policies, chrono::Utc::now())?;
        let now = sqlite_ts(chrono::Utc::now());
        sqlx::query(
            "INSERT INTO calendars (id, timezone, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)
             ON CONFLICT (id) DO UPDATE SET timezone = excluded.timezone, spec = excluded.spec,
                 updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(&calendar.spec().timezone)
        .bind(spec)
        .bind(now)
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
        let spec = serde_json::to_string(policy.spec()).map_err(|source| StoreError::Json {
            context: "policy",
            source,
        })?;
        let mut tx = self.pool.begin_with(BEGIN_WRITE).await?;
        if let Some(calendar_id) = policy.spec().calendar_id.as_deref() {
            // inside the write: a calendar edited at the same moment is seen or waits
            let calendar = get_calendar(&mut *tx, calendar_id).await?;
            crate::logic::check_reachable(policy, &calendar, chrono::Utc::now())?;
        }
        if unless_same {
            // inside the write transaction: one writer at a time decides
            let latest = sqlx::query(
                "SELECT id, version, name, spec, created_at FROM escalation_policies
                 WHERE id = ?1 ORDER BY version DESC LIMIT 1",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = latest {
                let record = rows::policy(&row)?;
                if record.name == name && record.policy.spec() == policy.spec() {
                    return Ok((record, false));
                }
            }
        }
        let row = sqlx::query(
            "INSERT INTO escalation_policies (id, version, name, calendar_id, spec, created_at)
             SELECT ?1, COALESCE(MAX(version), 0) + 1, ?2, ?3, ?4, ?5
             FROM escalation_policies WHERE id = ?1
             RETURNING id, version, name, spec, created_at",
        )
        .bind(id)
        .bind(name)
        .bind(policy.spec().calendar_id.as_deref())
        .bind(spec)
        .bind(sqlite_ts(chrono::Utc::now()))
        .fetch_one(&mut *tx)
        .await?;
        let record = rows::policy(&row)?;
        tx.commit().await?;
        Ok((record, true))
    }

    pub(crate) async fn get_policy(&self, id: &str, version: Option<i32>) -> Result<PolicyRecord> {
        get_policy(&self.pool, id, version).await
    }

    pub(crate) async fn list_policies(&self) -> Result<Vec<PolicyRecord>> {
        let rows = sqlx::query(
            "SELECT p.id, p.version, p.name, p.spec, p.created_at FROM escalation_policies p
             WHERE p.version = (SELECT MAX(version) FROM escalation_policies q WHERE q.id = p.id)
             ORDER BY p.id",
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
    E: sqlx::SqliteExecutor<'e>,
{
    let rows = sqlx::query(
        "SELECT id, version, name, spec, created_at FROM escalation_policies
         WHERE calendar_id = ?1 ORDER BY id, version",
    )
    .bind(calendar_id)
    .fetch_all(exec)
    .await?;
    rows.iter().map(rows::policy).collect()
}

/// One policy version (`None` = newest), on any executor.
pub(crate) async fn get_policy<'e, E>(
    exec: E,
    id: &str,
    version: Option<i32>,
) -> Result<PolicyRecord>
where
    E: sqlx::SqliteExecutor<'e>,
{
    let row = sqlx::query(
        "SELECT id, version, name, spec, created_at FROM escalation_policies
         WHERE id = ?1 AND (?2 IS NULL OR version = ?2) ORDER BY version DESC LIMIT 1",
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
    E: sqlx::SqliteExecutor<'e>,
{
    let row = sqlx::query("SELECT spec FROM calendars WHERE id = ?1")
        .bind(id)
        .fetch_optional(exec)
        .await?
        .ok_or_else(|| StoreError::NotFound {
            entity: "calendar",
            id: id.to_owned(),
        })?;
    crate::logic::calendar_from_json(id, row.try_get("spec")?)
}
