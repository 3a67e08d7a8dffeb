//! escalator's storage: one repository over PostgreSQL (production) and SQLite (`escalator
//! dev`), chosen by the `DATABASE_URL` scheme. Correctness lives in the database: conditional
//! updates, unique keys, `FOR UPDATE SKIP LOCKED` claims and append-only audit triggers.

pub mod console;
pub mod delivery;
pub mod digest;
pub mod effects;
pub mod error;
pub mod lease;
pub mod logic;
pub mod model;
mod pg;
mod rows;
pub mod seed;
mod sqlite;
pub mod time;
pub mod verify;

use chrono::{DateTime, Utc};
use escalator_policy::{Calendar, Policy};
use uuid::Uuid;

pub use console::{BeatLeaseState, MAX_SEARCH_CHARS, TITLE_SEARCH_WINDOW, WorkflowSearch};
pub use delivery::{
    DeliveryOutcome, FollowUp, HOLD_LIMIT, OutboxBacklog, ParentOutcome, RELEASE_ITEMS,
};
pub use effects::{
    Applied, BatchEffects, EffectInserts, HeldOutbox, NewAudit, NewNotification, NewOutbox,
    WorkflowChange,
};
pub use error::{Result, StoreError};
pub use lease::{Fenced, Lease};
pub use model::*;
pub use pg::PgStore;
pub use sqlite::SqliteStore;

/// The embedded PostgreSQL migrations.
pub static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/postgres");
/// The embedded SQLite migrations.
pub static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations/sqlite");

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL: the production source of truth.
    Postgres,
    /// SQLite: the embedded single-process default.
    Sqlite,
}

/// What a user written without `channels` means ([`Store::upsert_users_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoChannels {
    /// Keep the list already stored (an HR sync that does not know about channels).
    Keep,
    /// Drop it: the user is reached on the policy's channels, else by email.
    Clear,
}

/// Connection settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// `postgres://…` or `sqlite://…`.
    pub url: String,
    /// Pool size.
    pub max_connections: u32,
    /// Connections kept open even when idle (the pool caps them at `max_connections`).
    /// Long-running processes keep a few, so that a check after a quiet spell does not wait for
    /// new connections (each took ~90 ms to set up on the benchmark machine); one-shot commands
    /// keep none.
    pub min_connections: u32,
    /// How long PostgreSQL may take to give a connection before the attempt fails (the pool
    /// retries a refused one meanwhile): 10 s for services, which outlast a database
    /// restarting; a one-shot command says sooner that the database is unreachable.
    pub patience: std::time::Duration,
    /// Whether a missing SQLite file is created (`escalator migrate`, `escalator dev`). The
    /// other commands refuse it: a mistyped path made an empty database that `migrate` then
    /// turned into a healthy-looking one with nothing in it.
    pub create_missing: bool,
}

impl StoreConfig {
    /// Settings for `url` with a pool of 10 connections, none kept open when idle.
    pub fn new(url: impl Into<String>) -> Self {
        StoreConfig {
            url: url.into(),
            max_connections: 10,
            min_connections: 0,
            patience: std::time::Duration::from_secs(10),
            create_missing: true,
        }
    }

    /// The same settings, refusing to create a missing SQLite file (see `create_missing`).
    pub fn existing_only(mut self) -> Self {
        self.create_missing = false;
        self
    }

    /// The same settings, giving up on a connection after `patience` (see `patience`).
    pub fn patient_for(mut self, patience: std::time::Duration) -> Self {
        self.patience = patience;
        self
    }

    /// The same settings, keeping `n` connections open when idle (see `min_connections`).
    pub fn keeping_open(mut self, n: u32) -> Self {
        self.min_connections = n;
        self
    }

    /// The backend the URL selects, or an error naming the URL.
    pub fn backend(&self) -> Result<Backend> {
        if self.url.starts_with("postgres://") || self.url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else if self.url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else {
            // only the scheme: the rest may hold a password
            let scheme = self
                .url
                .find("://")
                .map_or("(none)", |i| &self.url[..i + 3]);
            Err(StoreError::UnsupportedUrl(scheme.to_owned()))
        }
    }
}

/// The repository: every read and write escalator makes, on either backend.
#[derive(Debug, Clone)]
pub enum Store {
    /// PostgreSQL.
    Postgres(PgStore),
    /// SQLite.
    Sqlite(SqliteStore),
}

/// A batch transaction: claim due workflows, then apply their effects, then commit. Dropping it
/// without committing rolls everything back (and releases the row locks).
#[derive(Debug)]
pub enum BatchTx {
    /// PostgreSQL.
    Postgres(pg::PgBatch),
    /// SQLite.
    Sqlite(sqlite::SqliteBatch),
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Store::Postgres($s) => $body,
            Store::Sqlite($s) => $body,
        }
    };
}

macro_rules! dispatch_tx {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            BatchTx::Postgres($s) => $body,
            BatchTx::Sqlite($s) => $body,
        }
    };
}

impl Store {
    /// Connects to the database the URL names (creating a SQLite file if missing). Does not
    /// migrate.
    pub async fn connect(config: &StoreConfig) -> Result<Store> {
        Ok(match config.backend()? {
            Backend::Postgres => Store::Postgres(PgStore::connect(config).await?),
            Backend::Sqlite => Store::Sqlite(SqliteStore::connect(config).await?),
        })
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        match self {
            Store::Postgres(_) => Backend::Postgres,
            Store::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<()> {
        dispatch!(self, s => s.migrate().await)
    }

    /// Whether this SQLite file holds apalis-sqlite's job queues (a `Jobs` table) instead of
    /// escalator's data: the queue file (`FILE.queue`) given as the database, an easy slip
    /// that read as a schema to migrate, and `migrate` then failed on apalis' own migrations.
    pub async fn holds_job_queues(&self) -> bool {
        match self {
            Store::Postgres(_) => false,
            Store::Sqlite(s) => sqlx::query_scalar::<_, bool>(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'Jobs'",
            )
            .fetch_one(s.pool())
            .await
            .unwrap_or(false),
        }
    }

    /// The migration versions the database records as applied, and this build's migrator for
    /// its backend.
    async fn applied_migrations(&self) -> Result<(Vec<i64>, &'static sqlx::migrate::Migrator)> {
        // the versions recorded as applied, none when the bookkeeping table does not exist
        macro_rules! applied {
            ($pool:expr, $table_exists:literal) => {{
                let exists: bool = sqlx::query_scalar($table_exists).fetch_one($pool).await?;
                if exists {
                    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all($pool)
                        .await?
                } else {
                    Vec::<i64>::new()
                }
            }};
        }
        Ok(match self {
            Store::Postgres(s) => (
                applied!(
                    s.pool(),
                    "SELECT to_regclass('_sqlx_migrations') IS NOT NULL"
                ),
                &PG_MIGRATOR,
            ),
            Store::Sqlite(s) => (
                applied!(
                    s.pool(),
                    "SELECT count(*) > 0 FROM sqlite_master
                     WHERE type = 'table' AND name = '_sqlx_migrations'"
                ),
                &SQLITE_MIGRATOR,
            ),
        })
    }

    /// The migrations of this build that the database has not applied, oldest first: empty
    /// when its schema is up to date (a newer schema, applied by a newer build, is fine).
    pub async fn missing_migrations(&self) -> Result<Vec<i64>> {
        let (applied, migrator) = self.applied_migrations().await?;
        Ok(migrator
            .iter()
            .filter(|m| m.migration_type.is_up_migration() && !applied.contains(&m.version))
            .map(|m| m.version)
            .collect())
    }

    /// The migrations the database has applied that this build does not know, oldest first:
    /// a newer build's, when this one is a rollback.
    pub async fn newer_migrations(&self) -> Result<Vec<i64>> {
        let (mut applied, migrator) = self.applied_migrations().await?;
        applied.retain(|v| !migrator.iter().any(|m| m.version == *v));
        applied.sort_unstable();
        Ok(applied)
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }

    /// A cheap round trip, for readiness probes.
    pub async fn ping(&self) -> Result<()> {
        dispatch!(self, s => s.ping().await)
    }

    /// Inserts or updates users (by id), in one statement. A write whose managers would make
    /// the chain circular is refused whole ([`StoreError::Invalid`] naming `manager_id`); one
    /// that gives users a manager makes their workflows exhausted for want of one due again.
    /// A user without `channels` keeps the list already stored.
    pub async fn upsert_users(&self, users: &[User]) -> Result<()> {
        self.upsert_users_with(users, NoChannels::Keep).await
    }

    /// [`Store::upsert_users`], saying what a user without `channels` means: keep the stored
    /// list, or drop it (reached on the policy's channels again). Dropping it in the same
    /// statement, not a second one: a concurrent write's list is never lost between the two.
    pub async fn upsert_users_with(&self, users: &[User], no_channels: NoChannels) -> Result<()> {
        for u in users {
            if u.manager_id.as_deref() == Some(u.id.as_str()) {
                return Err(logic::manager_cycle(&u.id));
            }
            if let Some(channels) = &u.channels {
                logic::validate_channels(channels).map_err(|message| StoreError::Invalid {
                    field: "channels",
                    message: format!("user {}: {message}", u.id),
                })?;
            }
        }
        // one transaction: the upsert, the cycle check, and the re-arming of workflows
        // exhausted for want of a manager or of a `user:` target (logic::REARM_EXHAUSTED_PG,
        // logic::REARM_TARGETS_PG)
        let now = time::micros(Utc::now());
        let rearmed = dispatch!(self, s => s.upsert_users(users, no_channels, now).await)?;
        if rearmed > 0 {
            tracing::info!(
                rearmed,
                "exhausted workflows due again: someone to escalate them to is active now"
            );
        }
        Ok(())
    }

    /// One user.
    pub async fn get_user(&self, id: &str) -> Result<User> {
        dispatch!(self, s => s.get_user(id).await)
    }

    /// The users with these ids (in any order; unknown ids are left out), in one query.
    pub async fn users_by_id(&self, ids: &[String]) -> Result<Vec<User>> {
        dispatch!(self, s => s.users_by_id(ids).await)
    }

    /// Users ordered by id, after `after`.
    pub async fn list_users(&self, after: Option<&str>, limit: u32) -> Result<Vec<User>> {
        dispatch!(self, s => s.list_users(after, limit).await)
    }

    /// Creates or replaces a calendar.
    pub async fn put_calendar(&self, id: &str, calendar: &Calendar) -> Result<()> {
        dispatch!(self, s => s.put_calendar(id, calendar).await)
    }

    /// One calendar, validated.
    pub async fn get_calendar(&self, id: &str) -> Result<Calendar> {
        dispatch!(self, s => s.get_calendar(id).await)
    }

    /// Stores `policy` as the next version of policy `id` (1 if new).
    pub async fn create_policy_version(
        &self,
        id: &str,
        name: &str,
        policy: &Policy,
    ) -> Result<PolicyRecord> {
        let (record, _) =
            dispatch!(self, s => s.create_policy_version(id, name, policy, false).await)?;
        Ok(record)
    }

    /// [`Store::create_policy_version`], unless the latest version already has this name and
    /// spec: then that version, and `false`. A client retrying a post, or a sync job posting
    /// its policies every few minutes, made a new identical version each time. Decided inside
    /// the write, so two identical posts at once make one version.
    pub async fn create_policy_version_unless_same(
        &self,
        id: &str,
        name: &str,
        policy: &Policy,
    ) -> Result<(PolicyRecord, bool)> {
        dispatch!(self, s => s.create_policy_version(id, name, policy, true).await)
    }

    /// One policy version.
    pub async fn get_policy(&self, id: &str, version: i32) -> Result<PolicyRecord> {
        dispatch!(self, s => s.get_policy(id, Some(version)).await)
    }

    /// The newest version of a policy.
    pub async fn latest_policy(&self, id: &str) -> Result<PolicyRecord> {
        dispatch!(self, s => s.get_policy(id, None).await)
    }

    /// The newest version of every policy.
    pub async fn list_policies(&self) -> Result<Vec<PolicyRecord>> {
        dispatch!(self, s => s.list_policies().await)
    }

    /// Every version of every policy measured on calendar `calendar_id`, by id and version:
    /// running workflows stay on the version they started with, so old versions count too.
    pub async fn policies_on_calendar(&self, calendar_id: &str) -> Result<Vec<PolicyRecord>> {
        dispatch!(self, s => s.policies_on_calendar(calendar_id).await)
    }

    /// Opens a workflow on the latest version of its policy. Idempotent on `external_id`: the
    /// same body returns the existing workflow (`created: false`), a different body is an
    /// `ExternalIdConflict`.
    pub async fn create_workflow(&self, new: &NewWorkflow, now: DateTime<Utc>) -> Result<Created> {
        logic::validate_new(new)?;
        dispatch!(self, s => s.create_workflow(new, time::micros(now)).await)
    }

    /// One workflow.
    pub async fn get_workflow(&self, id: Uuid) -> Result<Workflow> {
        dispatch!(self, s => s.get_workflow(id).await)
    }

    /// One workflow by the caller's id.
    pub async fn get_workflow_by_external_id(&self, external_id: &str) -> Result<Workflow> {
        dispatch!(self, s => s.get_workflow_by_external_id(external_id).await)
    }

    /// The workflow `w` names: its uuid, or else its external id (`enqueue check --workflow`,
    /// the console's check forms). Callers often use uuids (or hex digests, which parse as
    /// uuids) as their own ids, so a uuid that is no workflow's id is looked up as an external
    /// id before "not found".
    pub async fn find_workflow(&self, w: &str) -> Result<Workflow> {
        if let Ok(id) = Uuid::parse_str(w) {
            match self.get_workflow(id).await {
                Err(StoreError::NotFound { .. }) => {}
                found => return found,
            }
        }
        self.get_workflow_by_external_id(w).await
    }

    /// A page of workflows, oldest first, with cursor pagination on (created_at, id).
    pub async fn list_workflows(&self, filter: &WorkflowFilter) -> Result<Vec<Workflow>> {
        dispatch!(self, s => s.list_workflows(filter).await)
    }

    /// Applies a transition and writes its audit row in the same transaction.
    pub async fn transition(
        &self,
        id: Uuid,
        transition: &Transition,
        ctx: &TransitionContext,
    ) -> Result<Workflow> {
        let mut ctx = ctx.clone();
        ctx.now = time::micros(ctx.now);
        dispatch!(self, s => s.transition(id, transition, &ctx).await)
    }

    /// A workflow's whole audit trail, oldest first: for tools and tests. A repeating policy
    /// adds a row a minute to a workflow nobody acts on, so readers serving people page it
    /// ([`Store::workflow_audit_page`]).
    pub async fn workflow_audit(&self, id: Uuid) -> Result<Vec<AuditEntry>> {
        self.workflow_audit_page(id, TrailPage::After(0), u32::MAX)
            .await
    }

    /// At most `limit` rows of a workflow's audit trail, oldest first: those after an audit
    /// row id, or the newest.
    pub async fn workflow_audit_page(
        &self,
        id: Uuid,
        page: TrailPage,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        dispatch!(self, s => s.workflow_audit_page(id, page, limit).await)
    }

    /// A page of the global audit log after `after` (from its start when None), in commit
    /// order, with the position of its last row. Only rows no later commit can fall behind are
    /// returned: on PostgreSQL, those of transactions older than every one still running
    /// (an id is taken at INSERT but visible only at COMMIT, so paging by id alone passed over
    /// rows that committed late); SQLite commits one writer at a time, in id order.
    pub async fn list_audit(
        &self,
        after: Option<AuditPosition>,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, Option<AuditPosition>)> {
        dispatch!(self, s => s.list_audit(after, limit).await)
    }

    /// Records a check run. Returns None when the slot already has one (UNIQUE slot: I3).
    pub async fn create_check_run(&self, run: &NewCheckRun) -> Result<Option<CheckRun>> {
        dispatch!(self, s => s.create_check_run(run).await)
    }

    /// One check run.
    pub async fn get_check_run(&self, id: i64) -> Result<CheckRun> {
        dispatch!(self, s => s.get_check_run(id).await)
    }

    /// The check run of scheduled slot `slot`, if it has one.
    pub async fn slot_check_run(&self, slot: DateTime<Utc>) -> Result<Option<CheckRun>> {
        let slot = time::micros(slot);
        dispatch!(self, s => s.slot_check_run(slot).await)
    }

    /// The newest check runs.
    pub async fn recent_check_runs(&self, limit: u32) -> Result<Vec<CheckRun>> {
        dispatch!(self, s => s.recent_check_runs(limit).await)
    }

    /// Marks a queued run as planned: `batches` batch jobs will report to it (a run with no
    /// batch succeeds at once). A run that was planned already keeps its batch count, so a
    /// planner job that runs twice cannot change it. Returns the run as it now stands.
    pub async fn start_check_run(
        &self,
        id: i64,
        batches: i32,
        now: DateTime<Utc>,
    ) -> Result<CheckRun> {
        dispatch!(self, s => s.start_check_run(id, batches, now).await)
    }

    /// Marks a run failed with a message.
    pub async fn fail_check_run(&self, id: i64, error: &str, now: DateTime<Utc>) -> Result<()> {
        dispatch!(self, s => s.fail_check_run(id, error, now).await)
    }

    /// Marks run `id` failed with `error` if no worker has started it: for a run whose job
    /// could not be pushed. A push that timed out may have landed unseen, and a worker may have
    /// started the run meanwhile: failing that one left it `running` with nothing to move it
    /// once its job, pushed again under the same key, was dropped as a duplicate.
    pub async fn fail_unstarted_check_run(
        &self,
        id: i64,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        match self {
            Store::Postgres(s) => {
                sqlx::query(
                    "UPDATE check_runs SET status = 'failed', error = $2, finished_at = $3
                     WHERE id = $1 AND status = 'queued' AND started_at IS NULL",
                )
                .bind(id)
                .bind(error)
                .bind(now)
                .execute(s.pool())
                .await?;
            }
            Store::Sqlite(s) => {
                sqlx::query(
                    "UPDATE check_runs SET status = 'failed', error = ?2, finished_at = ?3
                     WHERE id = ?1 AND status = 'queued' AND started_at IS NULL",
                )
                .bind(id)
                .bind(error)
                .bind(time::sqlite_ts(now))
                .execute(s.pool())
                .await?;
            }
        }
        Ok(())
    }

    /// Puts a failed run back in progress (its planner job retried after it died): `queued`
    /// when it never started, `running` otherwise, its error cleared. False when it was not
    /// failed.
    pub async fn reopen_check_run(&self, id: i64, now: DateTime<Utc>) -> Result<bool> {
        let now = time::micros(now);
        dispatch!(self, s => s.reopen_check_run(id, now).await)
    }

    /// Marks failed, a hundred at most, the runs still queued or running that have not moved
    /// (started, committed a batch, been reopened) for `patience`: their jobs were lost (a Redis
    /// failover) or died without recording it, and they read `running` for ever. Their
    /// workflows stay due for the next check; should their jobs run after all, the run is
    /// reopened (its planner) or completed (its last batch). Returns their ids.
    pub async fn fail_stale_check_runs(
        &self,
        now: DateTime<Utc>,
        patience: chrono::Duration,
    ) -> Result<Vec<i64>> {
        let error = format!(
            "no progress for {} minutes: its jobs were lost or died without recording it; the \
             workflows it had not handled stay due for the next check",
            patience.num_minutes()
        );
        self.fail_unmoved_check_runs(now, patience, &error).await
    }

    /// The runs of [`Store::fail_stale_check_runs`], failed with `error`.
    async fn fail_unmoved_check_runs(
        &self,
        now: DateTime<Utc>,
        patience: chrono::Duration,
        error: &str,
    ) -> Result<Vec<i64>> {
        let now = time::micros(now);
        dispatch!(self, s => s.fail_stale_check_runs(now, now - patience, error).await)
    }

    /// Deletes up to `limit` check runs that finished before `before` having done nothing (a
    /// succeeded run without a slot, every counter zero, named by no audit row), with their
    /// batch rows; returns how many. Deadline checks run whenever a deadline passes, most of
    /// them finding nothing left to do: kept for ever they were ~200,000 rows a day with a
    /// large fleet. Runs with effects stay (the audit trail names them), as do slots' (I3).
    pub async fn prune_empty_check_runs(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        const CANDIDATES: &str = "SELECT id FROM check_runs r
             WHERE status = 'succeeded' AND slot IS NULL AND reminded = 0 AND escalated = 0
               AND exhausted = 0 AND renotified = 0 AND failed = 0 AND finished_at < {before}
               AND NOT EXISTS (SELECT 1 FROM audit_logs a WHERE a.check_run_id = r.id)
               {more}
             ORDER BY id LIMIT {limit}";
        let limit = i64::from(limit);
        match self {
            Store::Postgres(s) => {
                let candidates = CANDIDATES
                    .replace("{before}", "$1")
                    .replace("{more}", "")
                    .replace("{limit}", "$2");
                let mut tx = s.pool().begin().await?;
                let ids: Vec<i64> = sqlx::query_scalar(rows::trusted(candidates))
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM check_run_batches WHERE check_run_id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                let deleted = sqlx::query("DELETE FROM check_runs WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                tx.commit().await?;
                Ok(deleted)
            }
            Store::Sqlite(s) => {
                // SQLite keeps its foreign keys: a run any row names would fail the delete
                let candidates = CANDIDATES
                    .replace("{before}", "?1")
                    .replace(
                        "{more}",
                        "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.check_run_id = r.id)
                         AND NOT EXISTS (SELECT 1 FROM outbox_held h WHERE h.check_run_id = r.id)",
                    )
                    .replace("{limit}", "?2");
                let mut tx = s.pool().begin_with(sqlite::BEGIN_WRITE).await?;
                let ids: Vec<i64> = sqlx::query_scalar(rows::trusted(candidates))
                    .bind(time::sqlite_ts(before))
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
                let ids = serde_json::to_string(&ids).map_err(|source| StoreError::Json {
                    context: "check run ids",
                    source,
                })?;
                sqlx::query(
                    "DELETE FROM check_run_batches
                     WHERE check_run_id IN (SELECT value FROM json_each(?1))",
                )
                .bind(&ids)
                .execute(&mut *tx)
                .await?;
                let deleted = sqlx::query(
                    "DELETE FROM check_runs WHERE id IN (SELECT value FROM json_each(?1))",
                )
                .bind(&ids)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                Ok(deleted)
            }
        }
    }

    /// [`Store::fail_stale_check_runs`] for a caller that has seen no check or batch job waiting
    /// in the queues: the runs that have not moved for `patience` have lost their jobs (a
    /// Redis flushed or failed over), and are failed saying so. What they held for their
    /// digests is then released by the outbox sweep, instead of an hour later.
    pub async fn fail_lost_check_runs(
        &self,
        now: DateTime<Utc>,
        patience: chrono::Duration,
    ) -> Result<Vec<i64>> {
        let error = format!(
            "lost: no progress for {} minutes, and no check or batch job waits in the queues \
             (a Redis flushed or failed over?); the workflows it had not handled stay due for \
             the next check",
            patience.num_minutes()
        );
        self.fail_unmoved_check_runs(now, patience, &error).await
    }

    /// Up to `limit` open workflows due at `as_of`, oldest deadline first — what a claim would
    /// take — read without locking or claiming them (dry runs): a concurrent batch's claim still
    /// sees every one of them.
    pub async fn peek_due(&self, as_of: DateTime<Utc>, limit: u32) -> Result<Vec<DueWorkflow>> {
        dispatch!(self, s => s.peek_due(as_of, limit).await)
    }

    /// Workflow `id` if it is open and due at `as_of`, read as [`Store::peek_due`] reads.
    pub async fn peek_one(&self, id: Uuid, as_of: DateTime<Utc>) -> Result<Option<DueWorkflow>> {
        dispatch!(self, s => s.peek_one(id, as_of).await)
    }

    /// How many open workflows are due at `as_of` (an index range count).
    pub async fn count_due(&self, as_of: DateTime<Utc>) -> Result<i64> {
        dispatch!(self, s => s.count_due(as_of).await)
    }

    /// Cuts the workflows due at `as_of` into consecutive ranges of `per_range` each (in
    /// `(next_check_at, id)` order, so workflows sharing one instant are cut too), covering all
    /// of them. Empty when none is due.
    pub async fn due_ranges(&self, as_of: DateTime<Utc>, per_range: u32) -> Result<Vec<DueRange>> {
        let starts = dispatch!(self, s => s.due_range_starts(as_of, per_range.max(1)).await)?;
        Ok(starts
            .iter()
            .enumerate()
            .map(|(i, _)| {
                let from = if i == 0 { None } else { starts.get(i) };
                let until = starts.get(i + 1);
                DueRange {
                    from: from.map(|b| b.0),
                    from_id: from.map(|b| b.1),
                    until: until.map(|b| b.0),
                    until_id: until.map(|b| b.1),
                }
            })
            .collect())
    }

    /// Saves `plan`, the slices run `id` is cut into, unless the run has one already, and
    /// returns the run's plan: the one saved first wins, so a retried or duplicate planner
    /// pushes and counts exactly the batches the first one did.
    pub async fn save_check_run_plan(&self, id: i64, plan: &[DueRange]) -> Result<Vec<DueRange>> {
        let malformed = |source| StoreError::Json {
            context: "check_runs.plan",
            source,
        };
        let json = serde_json::to_string(plan).map_err(malformed)?;
        // one statement: the first plan stays (COALESCE), and the stored one comes back
        let stored: Option<String> =
            match self {
                Store::Postgres(s) => {
                    sqlx::query_scalar(
                        "UPDATE check_runs SET plan = COALESCE(plan, $2::jsonb) WHERE id = $1
                     RETURNING plan::text",
                    )
                    .bind(id)
                    .bind(&json)
                    .fetch_optional(s.pool())
                    .await?
                }
                Store::Sqlite(s) => sqlx::query_scalar(
                    "UPDATE check_runs SET plan = COALESCE(plan, ?2) WHERE id = ?1 RETURNING plan",
                )
                .bind(id)
                .bind(&json)
                .fetch_optional(s.pool())
                .await?,
            };
        match stored {
            Some(text) => serde_json::from_str(&text).map_err(malformed),
            None => Err(StoreError::NotFound {
                entity: "check run",
                id: id.to_string(),
            }),
        }
    }

    /// The earliest `next_check_at` among open workflows.
    pub async fn earliest_next_check(&self) -> Result<Option<DateTime<Utc>>> {
        dispatch!(self, s => s.earliest_next_check().await)
    }

    /// Open workflows by SLA state as of `as_of`, and how many are within their SLA.
    pub async fn sla_counts(&self, as_of: DateTime<Utc>) -> Result<SlaCounts> {
        dispatch!(self, s => s.sla_counts(as_of).await)
    }

    /// After a bulk load: vacuums and analyzes the loaded tables, as autovacuum would soon
    /// after, so that the first check neither runs beside autovacuum nor pays for setting
    /// every fresh row's visibility hints.
    pub async fn settle(&self) -> Result<()> {
        match self {
            Store::Postgres(s) => {
                sqlx::query("VACUUM (ANALYZE) workflows, audit_logs, users")
                    .execute(s.pool())
                    .await?;
            }
            Store::Sqlite(s) => {
                sqlx::query("ANALYZE").execute(s.pool()).await?;
            }
        }
        Ok(())
    }

    /// Starts a batch transaction.
    pub async fn begin_batch(&self) -> Result<BatchTx> {
        Ok(match self {
            Store::Postgres(s) => BatchTx::Postgres(s.begin_batch().await?),
            Store::Sqlite(s) => BatchTx::Sqlite(s.begin_batch().await?),
        })
    }

    /// A recipient's in-app notifications, newest first; with `before`, only those older than
    /// that notification id (the next page after one that ended there).
    pub async fn inbox(
        &self,
        recipient: &str,
        unread_only: bool,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Notification>> {
        dispatch!(self, s => s.inbox(recipient, unread_only, before, limit).await)
    }

    /// Marks a notification read; false if it was read already.
    pub async fn mark_notification_read(&self, id: i64, now: DateTime<Utc>) -> Result<bool> {
        dispatch!(self, s => s.mark_notification_read(id, now).await)
    }

    /// A workflow's newest `limit` in-app notifications, oldest first.
    pub async fn workflow_notifications(&self, id: Uuid, limit: u32) -> Result<Vec<Notification>> {
        dispatch!(self, s => s.workflow_notifications(id, limit).await)
    }

    /// Outbox rows of these statuses (every status when empty), oldest first.
    pub async fn list_outbox(&self, statuses: &[&str], limit: u32) -> Result<Vec<OutboxEntry>> {
        dispatch!(self, s => s.list_outbox(statuses, limit).await)
    }

    /// Row counts of the main tables, for verification and tests.
    pub async fn table_counts(&self) -> Result<TableCounts> {
        dispatch!(self, s => s.table_counts().await)
    }

    /// Bulk-loads seeded workflows and their `create` audit rows (COPY on PostgreSQL).
    pub async fn bulk_load(&self, workflows: &[Workflow]) -> Result<()> {
        dispatch!(self, s => s.bulk_load(workflows).await)
    }
}

/// How many batch transactions a pool of `max_connections` runs at once: all but two. A batch
/// round holds its transaction's connection while it reads a policy or a calendar through the
/// pool; with as many rounds as connections (`ESCALATOR_WORKER_CONCURRENCY` above the pool's
/// 10), every one waited for a second connection until the pool's timeout, and failed. Rounds
/// beyond this wait for a slot holding no connection, so one is always left for those reads.
pub(crate) fn batch_slots(max_connections: u32) -> std::sync::Arc<tokio::sync::Semaphore> {
    let slots = usize::try_from(max_connections.saturating_sub(2).max(1)).unwrap_or(1);
    std::sync::Arc::new(tokio::sync::Semaphore::new(slots))
}

/// Which rows of a workflow's audit trail a page holds ([`Store::workflow_audit_page`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailPage {
    /// Those after this audit row id, oldest first (0: from the start).
    After(i64),
    /// The newest.
    Newest,
}

impl BatchTx {
    /// Claims up to `limit` open workflows due at `as_of`, oldest deadline first. On PostgreSQL
    /// the rows stay locked (`FOR UPDATE SKIP LOCKED`) so concurrent batches never see them.
    pub async fn claim_due(
        &mut self,
        as_of: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<DueWorkflow>> {
        self.claim_due_in(as_of, &DueRange::default(), limit).await
    }

    /// [`BatchTx::claim_due`] restricted to a range of `next_check_at`.
    pub async fn claim_due_in(
        &mut self,
        as_of: DateTime<Utc>,
        range: &DueRange,
        limit: u32,
    ) -> Result<Vec<DueWorkflow>> {
        dispatch_tx!(self, t => t.claim_due(as_of, range, limit).await)
    }

    /// [`BatchTx::claim_due_in`] that waits, up to `patience`, for rows other transactions
    /// hold rather than passing them over (on SQLite, where no other writer holds any, the same
    /// claim); None when they were held longer. For a transaction that holds no workflow yet.
    pub async fn claim_due_waiting_in(
        &mut self,
        as_of: DateTime<Utc>,
        range: &DueRange,
        limit: u32,
        patience: std::time::Duration,
    ) -> Result<Option<Vec<DueWorkflow>>> {
        match self {
            BatchTx::Postgres(t) => t.claim_due_waiting(as_of, range, limit, patience).await,
            BatchTx::Sqlite(t) => t.claim_due(as_of, range, limit).await.map(Some),
        }
    }

    /// Whether `range` holds workflows due at `as_of` besides the `claimed` this transaction
    /// took: rows another transaction holds, which a claim passes over, still count until it
    /// commits. A short claim alone does not prove a slice drained.
    pub async fn others_due_in(
        &mut self,
        as_of: DateTime<Utc>,
        range: &DueRange,
        claimed: usize,
    ) -> Result<bool> {
        dispatch_tx!(self, t => t.others_due(as_of, range, claimed).await)
    }

    /// Claims one workflow if it is open and due at `as_of` (single-workflow checks).
    pub async fn claim_one(
        &mut self,
        id: Uuid,
        as_of: DateTime<Utc>,
    ) -> Result<Option<DueWorkflow>> {
        dispatch_tx!(self, t => t.claim_one(id, as_of).await)
    }

    /// Applies a batch's effects set-wise: one UPDATE for all state changes (conditional on
    /// version and open status), then one multi-row INSERT each for audit rows, notifications
    /// and outbox rows of the workflows whose change applied, then the check-run counters.
    /// Idempotent: a notification or outbox row whose key exists already is skipped.
    pub async fn apply(&mut self, effects: &BatchEffects, now: DateTime<Utc>) -> Result<Applied> {
        self.apply_with(effects, now, EffectInserts::Idempotent)
            .await
    }

    /// [`BatchTx::apply`] with the insert mode chosen: with [`EffectInserts::Fresh`], the
    /// engine's fast path, a notification or outbox key that exists already fails the statement
    /// ([`StoreError::is_duplicate_key`]) and leaves the transaction to be rolled back.
    pub async fn apply_with(
        &mut self,
        effects: &BatchEffects,
        now: DateTime<Utc>,
        inserts: EffectInserts,
    ) -> Result<Applied> {
        let now = time::micros(now);
        dispatch_tx!(self, t => t.apply(effects, now, inserts).await)
    }

    /// Version `version` of policy `id`, read in this transaction: on SQLite a round holds the
    /// only write lock, and reading through the pool waited for a connection that writers
    /// blocked on that lock were holding (every write stalled for the busy timeout).
    pub async fn policy(&mut self, id: &str, version: i32) -> Result<PolicyRecord> {
        dispatch_tx!(self, t => t.policy(id, version).await)
    }

    /// Calendar `id`, read in this transaction (see [`BatchTx::policy`]).
    pub async fn calendar(&mut self, id: &str) -> Result<Calendar> {
        dispatch_tx!(self, t => t.calendar(id).await)
    }

    /// The users with these ids (in any order; unknown ids are left out), in one query.
    pub async fn users(&mut self, ids: &[String]) -> Result<Vec<User>> {
        dispatch_tx!(self, t => t.users(ids).await)
    }

    /// Decides the digests of `groups` (`"{user}:{channel}"`) of run `run` now: their held
    /// deliveries become outbox rows (or digests); with `limit`, only that many of them, the
    /// oldest (a slice of one group too large for a transaction). Returns the outbox rows
    /// written.
    pub async fn release_held(
        &mut self,
        run: i64,
        groups: &[String],
        limit: Option<i64>,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let now = time::micros(now);
        dispatch_tx!(self, t => t.release_held(run, groups, limit, now).await)
    }

    /// Commits.
    pub async fn commit(self) -> Result<()> {
        dispatch_tx!(self, t => t.commit().await)
    }

    /// Rolls back now. Dropping the transaction also rolls it back, but only once its
    /// connection is next used: until then its row locks stay, and a `SKIP LOCKED` claim made
    /// meanwhile on another connection would pass the claimed rows over.
    pub async fn rollback(self) -> Result<()> {
        dispatch_tx!(self, t => t.rollback().await)
    }
}

/// Row counts of the main tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// workflows
    pub workflows: i64,
    /// audit_logs
    pub audit_logs: i64,
    /// notifications
    pub notifications: i64,
    /// outbox
    pub outbox: i64,
    /// check_runs
    pub check_runs: i64,
}
