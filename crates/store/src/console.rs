//! The reads the web console needs beyond the api's: a searchable workflow list, the
//! workflows about to breach, audit activity since an instant, a workflow's outbox rows and the
//! beat's lease. Every query is bounded by a LIMIT or an index range.

use chrono::{DateTime, Utc};
use escalator_policy::{SlaStatus, Status};
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use crate::error::{Result, StoreError};
use crate::model::{OutboxEntry, Workflow};
use crate::rows::{OUTBOX_COLUMNS, WORKFLOW_COLUMNS, trusted};
use crate::time::sqlite_ts;
use crate::{Store, pg, sqlite};

/// The console's workflow list query: all filters optional, combined with AND. Newest first;
/// with an SLA state, by deadline (most overdue or soonest due first), which is both what an
/// operator wants to see and what the open-deadlines index serves without a scan.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowSearch {
    /// The external id or the assignee exactly, or a case-insensitive substring of the title
    /// of one of the newest [`TITLE_SEARCH_WINDOW`] workflows.
    pub text: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only open workflows in this SLA state as of the instant given.
    pub sla_status: Option<(SlaStatus, DateTime<Utc>)>,
    /// Cursor: the position of the previous page's last row — its (created_at, id) when
    /// newest first, its (due_at, id) when `sla_status` orders the page by deadline.
    pub after: Option<(DateTime<Utc>, Uuid)>,
    /// Page size (capped at 1000).
    pub limit: u32,
}

/// How many of the newest workflows a title search reads. A substring search cannot use a
/// btree index, and a trigram index would double the cost of the engine's workflow updates
/// (measured: docs/benchmarks.md, console); external ids and assignees are matched exactly,
/// through their indexes, across all workflows.
pub const TITLE_SEARCH_WINDOW: u32 = 10_000;

/// The beat's leader lease as stored: who holds it and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BeatLeaseState {
    /// The lease's name.
    pub name: String,
    /// The holder's id.
    pub holder: String,
    /// The fencing token; grows on every takeover.
    pub epoch: i64,
    /// The lease is the holder's until then; a live beat renews it well before.
    pub expires_at: DateTime<Utc>,
}

/// The longest search text (longer than any external id, assignee or title a search finds).
pub const MAX_SEARCH_CHARS: usize = 500;

/// The text search's needles: (trimmed, trimmed and lowercased); None when empty.
fn needle(text: &Option<String>) -> Option<(String, String)> {
    text.as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| (t.to_owned(), t.to_lowercase()))
}

impl Store {
    /// A page of workflows matching `search`, newest first (cursor on (created_at, id)).
    ///
    /// With a text, the page is the newest of three index-driven candidate lists, each already
    /// filtered and limited: the external id (unique index), the assignee (its index), and the
    /// titles among the newest [`TITLE_SEARCH_WINDOW`] workflows (read newest first, stopping
    /// at the page size).
    pub async fn search_workflows(&self, search: &WorkflowSearch) -> Result<Vec<Workflow>> {
        if let Some(text) = &search.text
            && text.chars().count() > MAX_SEARCH_CHARS
        {
            // no id, assignee or title is longer; on SQLite the text becomes a regex, whose
            // compiled size a few kilobytes of letters would exceed (an error, not a result)
            return Err(StoreError::Invalid {
                field: "q",
                message: format!("at most {MAX_SEARCH_CHARS} characters"),
            });
        }
        let limit = i64::from(search.limit.clamp(1, 1000));
        let by_deadline = search.sla_status.is_some();
        let order = if by_deadline {
            " ORDER BY w.due_at, w.id LIMIT "
        } else {
            " ORDER BY w.created_at DESC, w.id DESC LIMIT "
        };
        let cursor = if by_deadline {
            " AND (w.due_at, w.id) > ("
        } else {
            " AND (w.created_at, w.id) < ("
        };
        match self {
            Store::Postgres(s) => {
                let filters = |q: &mut QueryBuilder<Postgres>| {
                    if let Some(st) = search.status {
                        q.push(" AND w.status = ").push_bind(st.as_str());
                    }
                    if let Some((sla, at)) = search.sla_status {
                        q.push(" AND w.status IN ('pending', 'escalated')");
                        match sla {
                            SlaStatus::Ok => q.push(" AND w.warn_at > ").push_bind(at),
                            SlaStatus::Warning => q
                                .push(" AND w.warn_at <= ")
                                .push_bind(at)
                                .push(" AND w.due_at > ")
                                .push_bind(at),
                            SlaStatus::Breached => q.push(" AND w.due_at <= ").push_bind(at),
                        };
                    }
                    if let Some((at, id)) = search.after {
                        q.push(cursor)
                            .push_bind(at)
                            .push(", ")
                            .push_bind(id)
                            .push(")");
                    }
                };
                let mut q: QueryBuilder<Postgres> = QueryBuilder::new(format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE true"
                ));
                if let Some((exact, lower)) = needle(&search.text) {
                    // ARRAY(...) runs once; the outer query then fetches by primary key.
                    q.push(" AND w.id = ANY(ARRAY(SELECT id FROM (SELECT w.id FROM workflows w WHERE w.external_id = ")
                        .push_bind(exact.clone());
                    filters(&mut q);
                    q.push(") e UNION ALL SELECT id FROM (SELECT w.id FROM workflows w WHERE w.assignee = ")
                        .push_bind(exact);
                    filters(&mut q);
                    q.push(order).push_bind(limit);
                    // strpos, not LIKE: the user's % and _ are plain characters.
                    q.push(format!(
                        ") a UNION ALL SELECT id FROM (SELECT w.id FROM (SELECT * FROM workflows \
                         ORDER BY created_at DESC, id DESC LIMIT {TITLE_SEARCH_WINDOW}) w \
                         WHERE strpos(lower(w.title), "
                    ))
                    .push_bind(lower)
                    .push(") > 0");
                    filters(&mut q);
                    q.push(order).push_bind(limit).push(") t))");
                } else {
                    filters(&mut q);
                }
                q.push(order).push_bind(limit);
                let rows = q.build().fetch_all(s.pool()).await?;
                rows.iter().map(pg::workflow_row).collect()
            }
            Store::Sqlite(s) => {
                let filters = |q: &mut QueryBuilder<Sqlite>| {
                    if let Some(st) = search.status {
                        q.push(" AND w.status = ").push_bind(st.as_str());
                    }
                    if let Some((sla, at)) = search.sla_status {
                        let at = sqlite_ts(at);
                        q.push(" AND w.status IN ('pending', 'escalated')");
                        match sla {
                            SlaStatus::Ok => q.push(" AND w.warn_at > ").push_bind(at),
                            SlaStatus::Warning => q
                                .push(" AND w.warn_at <= ")
                                .push_bind(at.clone())
                                .push(" AND w.due_at > ")
                                .push_bind(at),
                            SlaStatus::Breached => q.push(" AND w.due_at <= ").push_bind(at),
                        };
                    }
                    if let Some((at, id)) = search.after {
                        q.push(cursor)
                            .push_bind(sqlite_ts(at))
                            .push(", ")
                            .push_bind(id.to_string())
                            .push(")");
                    }
                };
                let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(format!(
                    "SELECT {WORKFLOW_COLUMNS} FROM workflows w WHERE 1"
                ));
                if let Some((exact, _)) = needle(&search.text) {
                    // SQLite's lower() folds only ASCII ("Über" stays "Über"): the title test is
                    // a case-insensitive REGEXP of the literal text instead
                    let pattern = format!("(?i){}", regex::escape(&exact));
                    q.push(" AND w.id IN (SELECT id FROM (SELECT w.id FROM workflows w WHERE w.external_id = ")
                        .push_bind(exact.clone());
                    filters(&mut q);
                    q.push(") e UNION ALL SELECT id FROM (SELECT w.id FROM workflows w WHERE w.assignee = ")
                        .push_bind(exact);
                    filters(&mut q);
                    q.push(order).push_bind(limit);
                    q.push(format!(
                        ") a UNION ALL SELECT id FROM (SELECT w.id FROM (SELECT * FROM workflows \
                         ORDER BY created_at DESC, id DESC LIMIT {TITLE_SEARCH_WINDOW}) w \
                         WHERE w.title REGEXP "
                    ))
                    .push_bind(pattern);
                    filters(&mut q);
                    q.push(order).push_bind(limit).push(") t)");
                } else {
                    filters(&mut q);
                }
                q.push(order).push_bind(limit);
                let rows = q.build().fetch_all(s.pool()).await?;
                rows.iter().map(sqlite::workflow_row).collect()
            }
        }
    }

    /// Open workflows that are not breached at `now` but will be by `until`, soonest first.
    pub async fn breaching_soon(
        &self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Workflow>> {
        let limit = i64::from(limit.clamp(1, 1000));
        let sql = |p: [&str; 3]| {
            trusted(format!(
                "SELECT {WORKFLOW_COLUMNS} FROM workflows w
                 WHERE w.status IN ('pending', 'escalated') AND w.due_at > {} AND w.due_at <= {}
                 ORDER BY w.due_at, w.id LIMIT {}",
                p[0], p[1], p[2]
            ))
        };
        match self {
            Store::Postgres(s) => {
                let rows = sqlx::query(sql(["$1", "$2", "$3"]))
                    .bind(now)
                    .bind(until)
                    .bind(limit)
                    .fetch_all(s.pool())
                    .await?;
                rows.iter().map(pg::workflow_row).collect()
            }
            Store::Sqlite(s) => {
                let rows = sqlx::query(sql(["?1", "?2", "?3"]))
                    .bind(sqlite_ts(now))
                    .bind(sqlite_ts(until))
                    .bind(limit)
                    .fetch_all(s.pool())
                    .await?;
                rows.iter().map(sqlite::workflow_row).collect()
            }
        }
    }

    /// How many audit rows of each of `actions` were written at or after `since`, by action
    /// name (actions without rows are left out). One index range per action.
    pub async fn audit_actions_since(
        &self,
        since: DateTime<Utc>,
        actions: &[&str],
    ) -> Result<Vec<(String, i64)>> {
        let rows = match self {
            Store::Postgres(s) => sqlx::query(
                "SELECT action, count(*) AS n FROM audit_logs
                 WHERE action = ANY($2) AND created_at >= $1 GROUP BY action ORDER BY action",
            )
            .bind(since)
            .bind(actions.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>())
            .fetch_all(s.pool())
            .await?
            .iter()
            .map(|r| Ok((r.try_get("action")?, r.try_get("n")?)))
            .collect::<Result<Vec<_>>>()?,
            Store::Sqlite(s) => sqlx::query(
                "SELECT action, count(*) AS n FROM audit_logs
                 WHERE action IN (SELECT value FROM json_each(?2)) AND created_at >= ?1
                 GROUP BY action ORDER BY action",
            )
            .bind(sqlite_ts(since))
            .bind(serde_json::to_string(actions).unwrap_or_else(|_| "[]".into()))
            .fetch_all(s.pool())
            .await?
            .iter()
            .map(|r| Ok((r.try_get("action")?, r.try_get("n")?)))
            .collect::<Result<Vec<_>>>()?,
        };
        Ok(rows)
    }

    /// A workflow's outbox rows (every channel and status), oldest first.
    pub async fn workflow_outbox(&self, id: Uuid) -> Result<Vec<OutboxEntry>> {
        let sql = |p: &str| {
            trusted(format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox WHERE workflow_id = {p} ORDER BY id LIMIT 1000"
            ))
        };
        match self {
            Store::Postgres(s) => sqlx::query(sql("$1"))
                .bind(id)
                .fetch_all(s.pool())
                .await?
                .iter()
                .map(pg::outbox_row)
                .collect(),
            Store::Sqlite(s) => sqlx::query(sql("?1"))
                .bind(id.to_string())
                .fetch_all(s.pool())
                .await?
                .iter()
                .map(sqlite::outbox_row)
                .collect(),
        }
    }

    /// The beat leases as stored (at most one per beat schedule).
    pub async fn beat_leases(&self) -> Result<Vec<BeatLeaseState>> {
        let sql = "SELECT name, holder, epoch, expires_at FROM beat_leases ORDER BY name LIMIT 100";
        let map = |name, holder, epoch, expires_at| BeatLeaseState {
            name,
            holder,
            epoch,
            expires_at,
        };
        match self {
            Store::Postgres(s) => sqlx::query(sql)
                .fetch_all(s.pool())
                .await?
                .iter()
                .map(|r| {
                    Ok(map(
                        r.try_get("name")?,
                        r.try_get("holder")?,
                        r.try_get("epoch")?,
                        r.try_get("expires_at")?,
                    ))
                })
                .collect(),
            Store::Sqlite(s) => sqlx::query(sql)
                .fetch_all(s.pool())
                .await?
                .iter()
                .map(|r| {
                    Ok(map(
                        r.try_get("name")?,
                        r.try_get("holder")?,
                        r.try_get("epoch")?,
                        r.try_get("expires_at")?,
                    ))
                })
                .collect(),
        }
    }
}
