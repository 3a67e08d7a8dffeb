//! The beat's leader lease with a fencing token, kept in the database itself: a second beat
//! waits, takes over within one lease period when the leader stops renewing, and a zombie
//! leader (paused past its lease) can no longer record a check run — its epoch is stale.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::error::Result;
use crate::model::{CheckRun, NewCheckRun};
use crate::rows::CHECK_RUN_COLUMNS;
use crate::time::{sqlite_opt, sqlite_ts};
use crate::{Store, rows::trusted};

/// A held lease: who, and which epoch (the fencing token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Lease name (one per deployment: "beat").
    pub name: String,
    /// This process's identity.
    pub holder: String,
    /// Grows on every acquisition; writes are fenced on it.
    pub epoch: i64,
}

/// The outcome of recording a scheduled check under a lease.
#[derive(Debug, Clone, PartialEq)]
pub enum Fenced {
    /// Recorded: enqueue it.
    Created(Box<CheckRun>),
    /// The slot has a run already (another beat, or an earlier attempt): do not enqueue.
    DuplicateSlot,
    /// The lease was lost (expired or taken over): do not enqueue, stop acting as leader.
    NotLeader,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Takes the lease if it is free, expired, or already ours. Returns the new epoch.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let epoch: Option<i64> = match self {
            Store::Postgres(s) => sqlx::query(
                "INSERT INTO beat_leases (name, holder, epoch, expires_at)
                 VALUES ($1, $2, 1, clock_timestamp() + $3 * interval '1 millisecond')
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder,
                     epoch = beat_leases.epoch + 1, expires_at = EXCLUDED.expires_at
                 WHERE beat_leases.expires_at < clock_timestamp()
                    OR beat_leases.holder = EXCLUDED.holder
                 RETURNING epoch",
            )
            .bind(name)
            .bind(holder)
            .bind(millis(ttl) as f64)
            .fetch_optional(s.pool())
            .await?
            .map(|r| r.try_get("epoch"))
            .transpose()?,
            Store::Sqlite(s) => {
                let now = Utc::now();
                let expires = now + chrono::Duration::milliseconds(millis(ttl));
                sqlx::query(
                    "INSERT INTO beat_leases (name, holder, epoch, expires_at) VALUES (?1, ?2, 1, ?4)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                         epoch = beat_leases.epoch + 1, expires_at = excluded.expires_at
                     WHERE beat_leases.expires_at < ?3 OR beat_leases.holder = excluded.holder
                     RETURNING epoch",
                )
                .bind(name)
                .bind(holder)
                .bind(sqlite_ts(now))
                .bind(sqlite_ts(expires))
                .fetch_optional(s.pool())
                .await?
                .map(|r| r.try_get("epoch"))
                .transpose()?
            }
        };
        Ok(epoch.map(|epoch| Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            epoch,
        }))
    }

    /// Extends a held lease; false when it was lost (expired and taken, or never ours).
    pub async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let done = match self {
            Store::Postgres(s) => sqlx::query(
                "UPDATE beat_leases SET expires_at = clock_timestamp() + $4 * interval '1 millisecond'
                 WHERE name = $1 AND holder = $2 AND epoch = $3 AND expires_at > clock_timestamp()",
            )
            .bind(&lease.name)
            .bind(&lease.holder)
            .bind(lease.epoch)
            .bind(millis(ttl) as f64)
            .execute(s.pool())
            .await?
            .rows_affected(),
            Store::Sqlite(s) => {
                let now = Utc::now();
                sqlx::query(
                    "UPDATE beat_leases SET expires_at = ?5
                     WHERE name = ?1 AND holder = ?2 AND epoch = ?3 AND expires_at > ?4",
                )
                .bind(&lease.name)
                .bind(&lease.holder)
                .bind(lease.epoch)
                .bind(sqlite_ts(now))
                .bind(sqlite_ts(now + chrono::Duration::milliseconds(millis(ttl))))
                .execute(s.pool())
                .await?
                .rows_affected()
            }
        };
        Ok(done == 1)
    }

    /// Gives the lease up at once (graceful shutdown), so that a standby takes over without
    /// waiting for it to expire.
    pub async fn release_lease(&self, lease: &Lease) -> Result<()> {
        match self {
            Store::Postgres(s) => {
                sqlx::query(
                    "UPDATE beat_leases SET expires_at = clock_timestamp() - interval '1 second'
                     WHERE name = $1 AND holder = $2 AND epoch = $3",
                )
                .bind(&lease.name)
                .bind(&lease.holder)
                .bind(lease.epoch)
                .execute(s.pool())
                .await?;
            }
            Store::Sqlite(s) => {
                sqlx::query("UPDATE beat_leases SET expires_at = ?4 WHERE name = ?1 AND holder = ?2 AND epoch = ?3")
                    .bind(&lease.name)
                    .bind(&lease.holder)
                    .bind(lease.epoch)
                    .bind(sqlite_ts(Utc::now() - chrono::Duration::seconds(1)))
                    .execute(s.pool())
                    .await?;
            }
        }
        Ok(())
    }

    /// Records a check run only while `lease` is current: the lease row is locked and checked
    /// in the same transaction as the insert, so a takeover and a zombie's insert cannot
    /// interleave. The slot's UNIQUE key refuses a second run of the same slot.
    pub async fn create_check_run_fenced(
        &self,
        run: &NewCheckRun,
        lease: &Lease,
    ) -> Result<Fenced> {
        let sql = format!(
            "INSERT INTO check_runs (slot, requested_by, scope, as_of, dry_run, coalesced, created_at)
             VALUES ({}) ON CONFLICT (slot) DO NOTHING RETURNING {CHECK_RUN_COLUMNS}",
            match self {
                Store::Postgres(_) => "$1, $2, $3, $4, $5, $6, $7",
                Store::Sqlite(_) => "?1, ?2, ?3, ?4, ?5, ?6, ?7",
            }
        );
        match self {
            Store::Postgres(s) => {
                let mut tx = s.pool().begin().await?;
                let current = sqlx::query(
                    "SELECT 1 FROM beat_leases WHERE name = $1 AND holder = $2 AND epoch = $3
                       AND expires_at > clock_timestamp() FOR UPDATE",
                )
                .bind(&lease.name)
                .bind(&lease.holder)
                .bind(lease.epoch)
                .fetch_optional(&mut *tx)
                .await?;
                if current.is_none() {
                    return Ok(Fenced::NotLeader);
                }
                let row = sqlx::query(trusted(sql))
                    .bind(run.slot)
                    .bind(run.requested_by)
                    .bind(&run.scope)
                    .bind(run.as_of)
                    .bind(run.dry_run)
                    .bind(run.coalesced)
                    .bind(run.now)
                    .fetch_optional(&mut *tx)
                    .await?;
                let created = row.as_ref().map(crate::pg::check_run_row).transpose()?;
                tx.commit().await?;
                Ok(created.map_or(Fenced::DuplicateSlot, |run| Fenced::Created(Box::new(run))))
            }
            Store::Sqlite(s) => {
                let mut tx = s.pool().begin_with(crate::sqlite::BEGIN_WRITE).await?;
                let current = sqlx::query(
                    "SELECT 1 FROM beat_leases WHERE name = ?1 AND holder = ?2 AND epoch = ?3
                       AND expires_at > ?4",
                )
                .bind(&lease.name)
                .bind(&lease.holder)
                .bind(lease.epoch)
                .bind(sqlite_ts(Utc::now()))
                .fetch_optional(&mut *tx)
                .await?;
                if current.is_none() {
                    return Ok(Fenced::NotLeader);
                }
                let row = sqlx::query(trusted(sql))
                    .bind(sqlite_opt(run.slot))
                    .bind(run.requested_by)
                    .bind(&run.scope)
                    .bind(sqlite_ts(run.as_of))
                    .bind(run.dry_run)
                    .bind(run.coalesced)
                    .bind(sqlite_ts(run.now))
                    .fetch_optional(&mut *tx)
                    .await?;
                let created = row.as_ref().map(crate::sqlite::check_run_row).transpose()?;
                tx.commit().await?;
                Ok(created.map_or(Fenced::DuplicateSlot, |run| Fenced::Created(Box::new(run))))
            }
        }
    }

    /// The latest scheduled slot that has a check run.
    pub async fn last_scheduled_slot(&self) -> Result<Option<DateTime<Utc>>> {
        Ok(match self {
            Store::Postgres(s) => sqlx::query("SELECT max(slot) AS t FROM check_runs")
                .fetch_one(s.pool())
                .await?
                .try_get("t")?,
            Store::Sqlite(s) => sqlx::query("SELECT max(slot) AS t FROM check_runs")
                .fetch_one(s.pool())
                .await?
                .try_get("t")?,
        })
    }
}
