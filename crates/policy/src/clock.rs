//! Deadlines: when a level's warning and breach fall, in plain or business seconds.

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::{Calendar, Policy};

/// The two instants that drive a level: remind at `warn_at`, escalate at `due_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlines {
    /// When the warning reminder is due (never after `due_at`).
    pub warn_at: DateTime<Utc>,
    /// When the level's SLA is breached.
    pub due_at: DateTime<Utc>,
}

/// The instant that stands for "never": the last microsecond of year 9999, the latest instant
/// both storage backends keep and order alike and that RFC 3339 can write. Deadlines further
/// out (a calendar with little working time, an SLA of decades, the end of representable time)
/// are this one, so what is computed is what is stored and read back on either backend.
pub fn never() -> DateTime<Utc> {
    chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_micro_opt(23, 59, 59, 999_999))
        .map_or(DateTime::<Utc>::MAX_UTC, |t| t.and_utc())
}

/// `t`, or [`never`] if it lies beyond.
fn at_most_never(t: DateTime<Utc>) -> DateTime<Utc> {
    t.min(never())
}

/// `seconds` of plain time after `t` (none if not positive), at most [`never`]: a 24x7
/// deadline, a repetition's next time.
pub fn seconds_after(t: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    TimeDelta::try_seconds(seconds.max(0))
        .and_then(|d| t.checked_add_signed(d))
        .map_or(never(), at_most_never)
}

/// Deadlines of `level` for a stage (or level) that started at `started_at`, with
/// `paused_seconds` of (business) time spent on hold since then. `calendar` `None` is 24x7
/// (plain UTC seconds). Returns `None` if the policy has no such level.
///
/// This is the one place deadlines are computed: when a stage starts, when it resumes from hold
/// (with the accumulated pause) and when it escalates (fresh, from the escalation instant).
/// Negative `paused_seconds` (which no real pause produces) are treated as zero so that a
/// corrupt row can never pull a deadline before the stage started.
pub fn schedule(
    started_at: DateTime<Utc>,
    paused_seconds: i64,
    level: u32,
    policy: &Policy,
    calendar: Option<&Calendar>,
) -> Option<Deadlines> {
    let sla = policy.sla_seconds(level)?;
    let warn = policy.warn_offset_seconds(level)?;
    let paused = paused_seconds.max(0);
    Some(Deadlines {
        warn_at: advance(started_at, warn.saturating_add(paused), calendar),
        due_at: advance(started_at, sla.saturating_add(paused), calendar),
    })
}

/// Paused time to add when a workflow on hold since `paused_at` resumes at `now` (business
/// seconds with a calendar, so a weekend on hold does not push a Mon–Fri deadline). Never
/// negative, even if `now` is before `paused_at`.
pub fn paused_seconds(
    paused_at: DateTime<Utc>,
    now: DateTime<Utc>,
    calendar: Option<&Calendar>,
) -> i64 {
    match calendar {
        Some(calendar) => calendar.business_seconds_between(paused_at, now),
        None => (now - paused_at).num_seconds().max(0),
    }
}

/// `start` plus `seconds` of measured time, at most [`never`].
fn advance(start: DateTime<Utc>, seconds: i64, calendar: Option<&Calendar>) -> DateTime<Utc> {
    match calendar {
        Some(calendar) => at_most_never(calendar.add_business_seconds(start, seconds)),
        None => seconds_after(start, seconds),
    }
}
