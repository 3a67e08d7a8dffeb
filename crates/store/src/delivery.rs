//! The outbox's delivery side: claim due rows with a lease (so a crashed sender's rows come
//! back), then record each outcome — sent, retry later with backoff, or dead.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::error::Result;
use crate::model::OutboxEntry;
use crate::rows::{OUTBOX_COLUMNS, trusted};
use crate::time::sqlite_ts;
use crate::{Store, pg, sqlite};

/// What happened to one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The provider accepted it.
    Sent,
    /// A transient failure: try again at `retry_at`.
    Retry {
        /// Why it failed.
        error: String,
        /// When to try again.
        retry_at: DateTime<Utc>,
    },
    /// A permanent failure, or the last attempt: give up (visible and retryable by hand).
    Dead {
        /// Why.
        error: String,
    },
}

/// An attempt's outcome on a claimed row ($1 id, $2 status, $3 error, $4 next attempt, $5 sent
/// at, $6 the attempt count the claim returned): the count fences the write ([`Store::record_delivery`]).
const RECORD_PG: &str = "UPDATE outbox SET status = $2, last_error = $3, next_attempt_at = $4,
        sent_at = COALESCE($5, sent_at)
    WHERE id = $1 AND attempts = $6 AND status IN ('pending', 'failed')";

/// [`RECORD_PG`] on SQLite.
const RECORD_SQLITE: &str = "UPDATE outbox SET status = ?2, last_error = ?3, next_attempt_at = ?4,
        sent_at = COALESCE(?5, sent_at)
    WHERE id = ?1 AND attempts = ?6 AND status IN ('pending', 'failed')";

/// A delivery of an email to one recipient the relay deferred after another had taken the
/// message: a row of its own, written with the parent's outcome ([`Store::record_with_follow_ups`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FollowUp {
    /// The deferred address.
    pub recipient: String,
    /// The parent's payload as sent (its text rendered), naming this recipient alone in
    /// `envelope` and the parent's key in `message_key` (the Message-ID of every delivery).
    pub payload: serde_json::Value,
    /// `{parent key}:rcpt:{address}`: unique, so recording twice writes one row.
    pub idempotency_key: String,
}

/// What becomes of a row whose deferred recipients get rows of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParentOutcome {
    /// A primary recipient took it.
    Sent,
    /// The relay refused every primary recipient for good; only copies took it.
    Dead,
}

/// Packs (group, items) into consecutive chunks of whole groups holding at most `limit` items
/// each, except that a group larger than `limit` is a chunk of its own; each chunk with the
/// items it holds.
fn pack(groups: &[(String, i64)], limit: i64) -> Vec<(Vec<String>, i64)> {
    let mut chunks: Vec<(Vec<String>, i64)> = Vec::new();
    for (group, n) in groups {
        match chunks.last_mut() {
            Some((chunk, size)) if *size + n <= limit => {
                chunk.push(group.clone());
                *size += n;
            }
            _ => chunks.push((vec![group.clone()], *n)),
        }
    }
    chunks
}

fn lease_until(now: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60))
}

/// The channels whose messages are looked at again before they are sent
/// ([`Store::obsolete_deliveries`]): messages to a person about a workflow's present state.
/// Events and webhooks are facts about what happened and always go out.
pub const LOOKED_AT_AGAIN: [&str; 3] = ["email", "sms", "slack"];

/// Whether a message on `channel` is looked at again before it is sent ([`LOOKED_AT_AGAIN`]).
pub fn looked_at_again(channel: &str) -> bool {
    LOOKED_AT_AGAIN.contains(&channel)
}

/// How long a delivery waits for its run's digest decision before a sender (or the beat's
/// sweep) makes it anyway: a run whose last batch was lost finishes only when the batch is
/// re-derived.
pub const HOLD_LIMIT: std::time::Duration = std::time::Duration::from_secs(3_600);

/// What waits in the outbox at an instant ([`Store::outbox_backlog`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxBacklog {
    /// Deliveries not yet sent: pending, or failed and to be retried (a held message is not
    /// one yet).
    pub waiting: i64,
    /// Of those, the ones due: never claimed, or their claim has run out.
    pub due: i64,
    /// Since when the longest-waiting delivery has been due and not sent: the oldest due
    /// row's time, or the end of a held message's hold ([`HOLD_LIMIT`]) when that came first
    /// (every drain releases such a row, so one still held cannot be released). `None` when
    /// nothing is due.
    pub due_since: Option<DateTime<Utc>>,
}

impl OutboxBacklog {
    /// Seconds since [`OutboxBacklog::due_since`] at `now` (0 when nothing is due): what the
    /// `escalator_outbox_overdue_seconds` gauge reports.
    pub fn overdue_seconds(&self, now: DateTime<Utc>) -> f64 {
        self.due_since
            .map(|t| ((now - t).num_milliseconds().max(0) as f64) / 1000.0)
            .unwrap_or(0.0)
    }
}

/// Held deliveries decided per transaction (about: whole groups are packed up to this many
/// items; a larger group goes in even slices of at most this many, each its own digest) when a
/// run's held deliveries are released. Bounds the
/// rows one transaction reads and writes, and the worker's memory.
pub const RELEASE_ITEMS: i64 = 500;

impl Store {
    /// Of the claimed deliveries `ids`, marks `obsolete` (never to be sent) those to people
    /// whose workflow has moved on since they were written: it is completed or cancelled, or
    /// escalated (its level is not the message's), moved to another stage (its cycle is not the
    /// message's) or reassigned (its assignee is not the message's holder) since. A reminder
    /// that "will be escalated", an "escalated to you" or a "still overdue" must not reach
    /// anyone after the workflow was closed or moved on because a relay was down or a sender
    /// died mid-lease (I4). Nor does any
    /// message whose every recipient has been deactivated since (one who left the company
    /// while a relay was down); an email with someone still active among its recipients goes
    /// out whole; nor a "still overdue" message with a newer one to the same recipient and
    /// channel waiting or sent. Reminders written
    /// before they carried `cycle` and `assignee_id` are judged by their level alone. Events and
    /// webhooks are facts and always go out; digests (no workflow) too. Returns the ids marked. Bounded by the claim:
    /// checking the whole due backlog before each claim of 16 would read it again and again.
    pub async fn obsolete_deliveries(&self, ids: &[i64]) -> Result<Vec<i64>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // (escalated, moved to another stage, reassigned) since the message `o` was written:
        // its level, cycle and holder (`holder_id`: the assignee once its change was made, the
        // target for an escalation). Reminders written before messages named their holder
        // name it `assignee_id`; other messages written before that are not judged by these.
        let pg_moved = [
            "w.escalation_level::text <> o.payload->>'level'",
            "w.cycle::text <> COALESCE(o.payload->>'cycle', w.cycle::text)",
            "w.assignee <> COALESCE(o.payload->>'holder_id', o.payload->>'assignee_id', w.assignee)",
        ];
        let sqlite_moved = [
            "w.escalation_level <> json_extract(o.payload, '$.level')",
            "w.cycle <> COALESCE(json_extract(o.payload, '$.cycle'), w.cycle)",
            "w.assignee <> COALESCE(json_extract(o.payload, '$.holder_id'),
                                    json_extract(o.payload, '$.assignee_id'), w.assignee)",
        ];
        // every person the message reaches (`user_ids`, written since messages carry it) has
        // been deactivated since: someone who left gets nothing more
        let pg_gone = "(jsonb_typeof(o.payload->'user_ids') = 'array'
              AND jsonb_array_length(o.payload->'user_ids') > 0
              AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(o.payload->'user_ids') AS r(id)
                              JOIN users u ON u.id = r.id WHERE u.active))";
        let sqlite_gone = "(json_type(o.payload, '$.user_ids') = 'array'
              AND json_array_length(o.payload, '$.user_ids') > 0
              AND NOT EXISTS (SELECT 1 FROM json_each(o.payload, '$.user_ids') AS r
                              JOIN users u ON u.id = r.value WHERE u.active))";
        // a "still overdue" notice that failed before (a repeating chain whose relay was down)
        // with a newer one to the same recipient on the same channel waiting or sent: the
        // newer says it, once; each waited, and a 60 s repeat through a 50-minute outage sent
        // fifty at once. Only one that failed before: on a first try, a sender running behind
        // by more than the repeat would find a newer one every time and send none; and the
        // look at the workflow's other rows is then made only in an outage
        let superseded = |o_kind: &str, n_kind: &str| {
            format!(
                "({o_kind} = 'exhausted' AND o.attempts > 1 AND EXISTS (
                    SELECT 1 FROM outbox n
                    WHERE n.workflow_id = o.workflow_id AND n.channel = o.channel
                      AND n.recipient = o.recipient AND n.id > o.id
                      AND n.status IN ('pending', 'failed', 'sent')
                      AND {n_kind} = 'exhausted'))"
            )
        };
        let pg_superseded = superseded("o.payload->>'kind'", "n.payload->>'kind'");
        let sqlite_superseded = superseded(
            "json_extract(o.payload, '$.kind')",
            "json_extract(n.payload, '$.kind')",
        );
        let why = |[escalated, staged, _]: [&str; 3], gone: &str, superseded: &str| {
            format!(
                "CASE WHEN w.status IN ('completed', 'cancelled')
                      THEN 'not sent: the workflow is ' || w.status || ' since'
                      WHEN {gone} THEN 'not sent: its recipients were deactivated since'
                      WHEN {superseded}
                      THEN 'not sent: a newer still-overdue notice to the same recipient replaces it'
                      WHEN {escalated} THEN 'not sent: the workflow was escalated since'
                      WHEN {staged} THEN 'not sent: the workflow moved to another stage since'
                      ELSE 'not sent: the workflow was reassigned since' END"
            )
        };
        let stale = |moved: [&str; 3], gone: &str, superseded: &str, kind: &str, holder: &str| {
            format!(
                "(w.status IN ('completed', 'cancelled') OR {gone} OR {superseded}
                  OR (({kind} = 'reminder' OR {holder} IS NOT NULL) AND ({} OR {} OR {})))",
                moved[0], moved[1], moved[2]
            )
        };
        let channels = LOOKED_AT_AGAIN
            .iter()
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = match self {
            Store::Postgres(s) => {
                let sql = format!(
                    "UPDATE outbox SET status = 'obsolete', last_error = stale.why
                     FROM (SELECT o.id, {why} AS why
                           FROM outbox o JOIN workflows w ON w.id = o.workflow_id
                           WHERE o.id = ANY($1) AND o.status IN ('pending', 'failed')
                             AND o.channel IN ({channels})
                             AND {stale}
                           FOR UPDATE OF o) AS stale
                     WHERE outbox.id = stale.id
                     RETURNING outbox.id",
                    why = why(pg_moved, pg_gone, &pg_superseded),
                    channels = channels,
                    stale = stale(
                        pg_moved,
                        pg_gone,
                        &pg_superseded,
                        "o.payload->>'kind'",
                        "o.payload->>'holder_id'"
                    ),
                );
                sqlx::query_scalar::<_, i64>(trusted(sql))
                    .bind(ids)
                    .fetch_all(s.pool())
                    .await?
            }
            Store::Sqlite(s) => {
                let sql = format!(
                    "UPDATE outbox SET status = 'obsolete',
                         last_error = (SELECT {why} FROM outbox o JOIN workflows w
                                       ON w.id = o.workflow_id WHERE o.id = outbox.id)
                     WHERE id IN (SELECT o.id
                                  FROM outbox o JOIN workflows w ON w.id = o.workflow_id
                                  WHERE o.id IN (SELECT value FROM json_each(?1))
                                    AND o.status IN ('pending', 'failed')
                                    AND o.channel IN ({channels})
                                    AND {stale})
                     RETURNING id",
                    why = why(sqlite_moved, sqlite_gone, &sqlite_superseded),
                    channels = channels,
                    stale = stale(
                        sqlite_moved,
                        sqlite_gone,
                        &sqlite_superseded,
                        "json_extract(o.payload, '$.kind')",
                        "json_extract(o.payload, '$.holder_id')"
                    ),
                );
                let ids = format!(
                    "[{}]",
                    ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
                );
                let mut tx = s.pool().begin_with(sqlite::BEGIN_WRITE).await?;
                let rows = sqlx::query_scalar::<_, i64>(trusted(sql))
                    .bind(ids)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                rows
            }
        };
        Ok(rows)
    }

    /// Claims up to `limit` deliveries that are due at `now`: each gets `attempts + 1` and is
    /// hidden from other senders until `now + lease`. A sender that dies mid-send loses
    /// nothing: its rows are due again when the lease runs out.
    pub async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<OutboxEntry>> {
        let until = lease_until(now, lease);
        let sql = format!(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = {p3}
             WHERE id IN (SELECT id FROM outbox
                          WHERE status IN ('pending', 'failed') AND next_attempt_at <= {p1}
                          ORDER BY next_attempt_at LIMIT {p2} {lock})
             RETURNING {OUTBOX_COLUMNS}",
            p1 = if matches!(self, Store::Postgres(_)) {
                "$1"
            } else {
                "?1"
            },
            p2 = if matches!(self, Store::Postgres(_)) {
                "$2"
            } else {
                "?2"
            },
            p3 = if matches!(self, Store::Postgres(_)) {
                "$3"
            } else {
                "?3"
            },
            lock = if matches!(self, Store::Postgres(_)) {
                "FOR UPDATE SKIP LOCKED"
            } else {
                ""
            },
        );
        match self {
            Store::Postgres(s) => {
                let rows = sqlx::query(trusted(sql))
                    .bind(now)
                    .bind(i64::from(limit))
                    .bind(until)
                    .fetch_all(s.pool())
                    .await?;
                rows.iter().map(pg::outbox_row).collect()
            }
            Store::Sqlite(s) => {
                let mut tx = s.pool().begin_with(sqlite::BEGIN_WRITE).await?;
                let rows = sqlx::query(trusted(sql))
                    .bind(sqlite_ts(now))
                    .bind(i64::from(limit))
                    .bind(sqlite_ts(until))
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                rows.iter().map(sqlite::outbox_row).collect()
            }
        }
    }

    /// Records the outcome of an attempt on a claimed row, `attempts` being the row's count as
    /// the claim returned it. The count fences the write: a sender whose lease ran out while it
    /// was sending (and whose row another sender has claimed since, raising the count) records
    /// nothing, and neither does one whose row was finished meanwhile — a late retry or dead
    /// outcome never overwrites `sent`. Returns whether the outcome was recorded.
    pub async fn record_delivery(
        &self,
        id: i64,
        attempts: i32,
        outcome: &DeliveryOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let (status, error, next, sent) = match outcome {
            DeliveryOutcome::Sent => ("sent", None, now, Some(now)),
            DeliveryOutcome::Retry { error, retry_at } => {
                ("failed", Some(error.as_str()), *retry_at, None)
            }
            DeliveryOutcome::Dead { error } => ("dead", Some(error.as_str()), now, None),
        };
        let recorded = match self {
            Store::Postgres(s) => sqlx::query(RECORD_PG)
                .bind(id)
                .bind(status)
                .bind(error)
                .bind(next)
                .bind(sent)
                .bind(attempts)
                .execute(s.pool())
                .await?
                .rows_affected(),
            Store::Sqlite(s) => sqlx::query(RECORD_SQLITE)
                .bind(id)
                .bind(status)
                .bind(error)
                .bind(sqlite_ts(next))
                .bind(sent.map(sqlite_ts))
                .bind(attempts)
                .execute(s.pool())
                .await?
                .rows_affected(),
        };
        Ok(recorded == 1)
    }

    /// Hands back claimed rows that were never tried (the sender is stopping): due again at
    /// `now`, their claim undone (`attempts` back by one), each only if that claim still holds
    /// it (`attempts` as claimed, still waiting). Returns how many went back.
    pub async fn unclaim_deliveries(
        &self,
        claims: &[(i64, i32)],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        if claims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = claims.iter().map(|c| c.0).collect();
        let attempts: Vec<i32> = claims.iter().map(|c| c.1).collect();
        let done = match self {
            Store::Postgres(s) => sqlx::query(
                "UPDATE outbox o SET attempts = o.attempts - 1, next_attempt_at = $3
                     FROM UNNEST($1::bigint[], $2::int[]) AS c(id, attempts)
                     WHERE o.id = c.id AND o.attempts = c.attempts
                       AND o.status IN ('pending', 'failed')",
            )
            .bind(&ids)
            .bind(&attempts)
            .bind(now)
            .execute(s.pool())
            .await?
            .rows_affected(),
            Store::Sqlite(s) => {
                let pairs = serde_json::to_string(&claims).unwrap_or_else(|_| "[]".into());
                sqlx::query(
                    "UPDATE outbox SET attempts = attempts - 1, next_attempt_at = ?2
                     WHERE status IN ('pending', 'failed') AND EXISTS (
                         SELECT 1 FROM json_each(?1) AS c
                         WHERE json_extract(c.value, '$[0]') = outbox.id
                           AND json_extract(c.value, '$[1]') = outbox.attempts)",
                )
                .bind(pairs)
                .bind(sqlite_ts(now))
                .execute(s.pool())
                .await?
                .rows_affected()
            }
        };
        Ok(done)
    }

    /// Records a claimed row `sent`, or `dead` when only copies took it (`parent`; fenced by
    /// `attempts`, as [`Store::record_delivery`]), with `note` as its last error (who was
    /// deferred), and in the same transaction writes one pending row per deferred recipient
    /// (`follow_ups`), due at `due`, carrying the parent's channel, workflow and run. Nothing is
    /// written unless the outcome is: a claim that lost its row (lease run out) writes no
    /// follow-up, and a follow-up's unique key makes a second recording write none. Returns
    /// whether the outcome was recorded.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_with_follow_ups(
        &self,
        id: i64,
        attempts: i32,
        parent: ParentOutcome,
        note: &str,
        follow_ups: &[FollowUp],
        due: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let recipients: Vec<&str> = follow_ups.iter().map(|f| f.recipient.as_str()).collect();
        let keys: Vec<&str> = follow_ups
            .iter()
            .map(|f| f.idempotency_key.as_str())
            .collect();
        let (status, sent_at) = match parent {
            ParentOutcome::Sent => ("sent", Some(now)),
            ParentOutcome::Dead => ("dead", None),
        };
        match self {
            Store::Postgres(s) => {
                let mut tx = s.pool().begin().await?;
                let recorded = sqlx::query(RECORD_PG)
                    .bind(id)
                    .bind(status)
                    .bind(note)
                    .bind(now)
                    .bind(sent_at)
                    .bind(attempts)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if recorded {
                    let payloads: Vec<&serde_json::Value> =
                        follow_ups.iter().map(|f| &f.payload).collect();
                    sqlx::query(
                        "INSERT INTO outbox (channel, recipient, workflow_id, check_run_id,
                             payload, idempotency_key, next_attempt_at, created_at)
                         SELECT o.channel, f.recipient, o.workflow_id, o.check_run_id,
                             f.payload, f.idempotency_key, $5, $6
                         FROM outbox o,
                              UNNEST($2::text[], $3::jsonb[], $4::text[])
                                  AS f (recipient, payload, idempotency_key)
                         WHERE o.id = $1
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(&recipients)
                    .bind(&payloads)
                    .bind(&keys)
                    .bind(due)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(recorded)
            }
            Store::Sqlite(s) => {
                let rows: Vec<serde_json::Value> = follow_ups
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "recipient": f.recipient,
                            "payload": f.payload.to_string(),
                            "idempotency_key": f.idempotency_key,
                        })
                    })
                    .collect();
                let rows = serde_json::Value::Array(rows).to_string();
                let mut tx = s.pool().begin_with(sqlite::BEGIN_WRITE).await?;
                let recorded = sqlx::query(RECORD_SQLITE)
                    .bind(id)
                    .bind(status)
                    .bind(note)
                    .bind(sqlite_ts(now))
                    .bind(sent_at.map(sqlite_ts))
                    .bind(attempts)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if recorded {
                    sqlx::query(
                        "INSERT INTO outbox (channel, recipient, workflow_id, check_run_id,
                             payload, idempotency_key, next_attempt_at, created_at)
                         SELECT o.channel, f.value->>'recipient', o.workflow_id, o.check_run_id,
                             f.value->>'payload', f.value->>'idempotency_key', ?3, ?4
                         FROM outbox o, json_each(?2) AS f
                         WHERE o.id = ?1
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(id)
                    .bind(rows)
                    .bind(sqlite_ts(due))
                    .bind(sqlite_ts(now))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(recorded)
            }
        }
    }

    /// Releases held deliveries left behind: their run finished (the worker that finished it
    /// releases them right after, unless it crashed first), failed, or they have waited
    /// longer than `stale_after` (a run stuck behind a lost batch). Returns the outbox rows
    /// written.
    pub async fn release_stale_held(
        &self,
        now: DateTime<Utc>,
        stale_after: Duration,
    ) -> Result<u64> {
        let before =
            now - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::hours(1));
        let runs: Vec<i64> = match self {
            Store::Postgres(s) => {
                sqlx::query_scalar(
                    "SELECT DISTINCT h.check_run_id FROM outbox_held h
                 JOIN check_runs r ON r.id = h.check_run_id
                 WHERE r.status IN ('succeeded', 'failed') OR h.created_at < $1",
                )
                .bind(before)
                .fetch_all(s.pool())
                .await?
            }
            Store::Sqlite(s) => {
                sqlx::query_scalar(
                    "SELECT DISTINCT h.check_run_id FROM outbox_held h
                 JOIN check_runs r ON r.id = h.check_run_id
                 WHERE r.status IN ('succeeded', 'failed') OR h.created_at < ?1",
                )
                .bind(sqlite_ts(before))
                .fetch_all(s.pool())
                .await?
            }
        };
        // one run that cannot be released (a held row that no longer decodes, say) holds up
        // neither the others nor the caller: a drain returned its error before claiming, and
        // no delivery of any kind went out while it stayed
        let mut written = 0;
        for run in runs {
            match self.release_run_held(run, now).await {
                Ok(n) => written += n,
                Err(e) if e.is_outage() => return Err(e),
                Err(e) => tracing::error!(
                    check_run_id = run,
                    error = %e,
                    "the held deliveries of a run cannot be released; the other runs' are"
                ),
            }
        }
        Ok(written)
    }

    /// Decides the digests of run `run`: its held deliveries become outbox rows or digests,
    /// about [`RELEASE_ITEMS`] per transaction (a group is decided whole, in one transaction,
    /// so exactly once; a larger one in even slices, each decided whole). Called by the worker right after the transaction that
    /// finishes the run; the delivery drains and the beat's outbox sweep call it for any run
    /// left with held rows. Returns the outbox rows written.
    pub async fn release_run_held(&self, run: i64, now: DateTime<Utc>) -> Result<u64> {
        let groups: Vec<(String, i64)> = match self {
            Store::Postgres(s) => {
                sqlx::query_as(
                    "SELECT group_key, count(*) FROM outbox_held WHERE check_run_id = $1
                     GROUP BY group_key ORDER BY group_key",
                )
                .bind(run)
                .fetch_all(s.pool())
                .await?
            }
            Store::Sqlite(s) => {
                sqlx::query_as(
                    "SELECT group_key, count(*) FROM outbox_held WHERE check_run_id = ?1
                     GROUP BY group_key ORDER BY group_key",
                )
                .bind(run)
                .fetch_all(s.pool())
                .await?
            }
        };
        let mut written = 0;
        for (chunk, size) in pack(&groups, RELEASE_ITEMS) {
            // one group larger than a transaction should hold (thousands of escalations to
            // one person in a run: a bulk import, a fixed `user:` level) goes in even slices,
            // each its own digest; whole, it was read, coalesced and written at once, and the
            // worker's memory grew with it (209 MB at 15,000 rows)
            let slices = if size > RELEASE_ITEMS {
                (size + RELEASE_ITEMS - 1) / RELEASE_ITEMS
            } else {
                1
            };
            let limit = (slices > 1).then(|| (size + slices - 1) / slices);
            for _ in 0..slices {
                let mut tx = self.begin_batch().await?;
                written += tx.release_held(run, &chunk, limit, now).await?;
                tx.commit().await?;
            }
        }
        Ok(written)
    }

    /// Deletes up to `limit` delivered messages sent before `before`, oldest first, so that the
    /// outbox does not grow with every message ever sent (the beat's sweep, after
    /// `ESCALATOR_OUTBOX_RETENTION`). Pending, failed and dead rows are kept whatever their
    /// age; in-app notifications and the audit log are not touched. Returns how many.
    pub async fn prune_sent_deliveries(&self, before: DateTime<Utc>, limit: u32) -> Result<u64> {
        Ok(match self {
            Store::Postgres(s) => sqlx::query(
                "DELETE FROM outbox WHERE id IN (
                     SELECT id FROM outbox WHERE status = 'sent' AND sent_at < $1
                     ORDER BY sent_at LIMIT $2)",
            )
            .bind(before)
            .bind(i64::from(limit))
            .execute(s.pool())
            .await?
            .rows_affected(),
            Store::Sqlite(s) => sqlx::query(
                "DELETE FROM outbox WHERE id IN (
                     SELECT id FROM outbox WHERE status = 'sent' AND sent_at < ?1
                     ORDER BY sent_at LIMIT ?2)",
            )
            .bind(sqlite_ts(before))
            .bind(i64::from(limit))
            .execute(s.pool())
            .await?
            .rows_affected(),
        })
    }

    /// Puts dead deliveries back in line (`escalator outbox retry`). Returns how many.
    pub async fn retry_dead_deliveries(&self, id: Option<i64>, now: DateTime<Utc>) -> Result<u64> {
        let done = match self {
            Store::Postgres(s) => sqlx::query(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = $2
                 WHERE status = 'dead' AND ($1::bigint IS NULL OR id = $1)",
            )
            .bind(id)
            .bind(now)
            .execute(s.pool())
            .await?
            .rows_affected(),
            Store::Sqlite(s) => sqlx::query(
                "UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = ?2
                 WHERE status = 'dead' AND (?1 IS NULL OR id = ?1)",
            )
            .bind(id)
            .bind(sqlite_ts(now))
            .execute(s.pool())
            .await?
            .rows_affected(),
        };
        Ok(done)
    }

    /// What waits in the outbox at `now`: deliveries not yet sent, those due, and since when
    /// the longest-waiting one has been due ([`OutboxBacklog`]).
    pub async fn outbox_backlog(&self, now: DateTime<Utc>) -> Result<OutboxBacklog> {
        let (waiting, due, oldest_due, held_since): (i64, i64, Option<_>, Option<_>) = match self {
            Store::Postgres(s) => {
                let row = sqlx::query(
                    "SELECT count(*) AS waiting,
                            count(*) FILTER (WHERE next_attempt_at <= $1) AS due,
                            min(next_attempt_at) FILTER (WHERE next_attempt_at <= $1) AS oldest_due,
                            (SELECT min(created_at) FROM outbox_held) AS held_since
                     FROM outbox WHERE status IN ('pending', 'failed')",
                )
                .bind(now)
                .fetch_one(s.pool())
                .await?;
                (
                    row.try_get("waiting")?,
                    row.try_get("due")?,
                    row.try_get("oldest_due")?,
                    row.try_get("held_since")?,
                )
            }
            Store::Sqlite(s) => {
                let row = sqlx::query(
                    "SELECT count(*) AS waiting, coalesce(sum(next_attempt_at <= ?1), 0) AS due,
                            min(CASE WHEN next_attempt_at <= ?1 THEN next_attempt_at END) AS oldest_due,
                            (SELECT min(created_at) FROM outbox_held) AS held_since
                     FROM outbox WHERE status IN ('pending', 'failed')",
                )
                .bind(sqlite_ts(now))
                .fetch_one(s.pool())
                .await?;
                (
                    row.try_get("waiting")?,
                    row.try_get("due")?,
                    row.try_get("oldest_due")?,
                    row.try_get("held_since")?,
                )
            }
        };
        // a held message is due when its hold ends, should its run never release it
        let held_due = held_since
            .and_then(|t: DateTime<Utc>| chrono::Duration::from_std(HOLD_LIMIT).ok().map(|h| t + h))
            .filter(|t| *t <= now);
        Ok(OutboxBacklog {
            waiting,
            due,
            due_since: [oldest_due, held_due].into_iter().flatten().min(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::pack;

    fn groups(sizes: &[i64]) -> Vec<(String, i64)> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("g{i}"), *n))
            .collect()
    }

    #[test]
    fn groups_are_packed_whole_up_to_the_limit_and_a_big_one_goes_alone() {
        let chunks = pack(&groups(&[3, 4, 2, 9, 1, 1]), 8);
        let names: Vec<&Vec<String>> = chunks.iter().map(|(c, _)| c).collect();
        assert_eq!(
            names,
            [
                &vec!["g0", "g1"],
                &vec!["g2"],
                &vec!["g3"],
                &vec!["g4", "g5"]
            ]
        );
        let sizes: Vec<i64> = chunks.iter().map(|(_, n)| *n).collect();
        assert_eq!(sizes, [7, 2, 9, 2]);
        assert!(pack(&[], 8).is_empty());
    }
}
