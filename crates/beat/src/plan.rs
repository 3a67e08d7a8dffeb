//! What the beat should enqueue at an instant: pure, so that catch-up and coalescing are tested
//! with an injected clock.

use chrono::{DateTime, Duration, Utc};

use crate::schedule::Schedule;

/// The decision for the scheduled slots at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// Run one check for this slot, standing for `coalesced` slots.
    pub run: Option<(DateTime<Utc>, i32)>,
    /// Slots that will not get a run of their own: coalesced into `run`, or older than the
    /// catch-up window.
    pub missed: u64,
}

/// Slots are remembered only this far back when coalescing (older ones are counted, not kept).
const KEEP: usize = 1_000;

/// The slots due at `now` since `last` (the latest slot that has a run; None on a fresh
/// install, which runs only the latest recent slot). Slots within `catchup` of `now` are coalesced into one run of the latest; older
/// ones are skipped. Either way every slot that does not get its own run is counted missed.
pub fn plan_slots(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    catchup: Duration,
) -> SlotPlan {
    let window_start = now - catchup;
    let Some(after) = last else {
        // A fresh install has missed nothing: it runs the latest slot if that is recent.
        let (latest, _) = schedule.slots_between(window_start, now, 1);
        return SlotPlan {
            run: latest.last().map(|slot| (*slot, 1)),
            missed: 0,
        };
    };
    let (slots, total) = schedule.slots_between(after, now, KEEP);
    let in_window: Vec<_> = slots.iter().filter(|s| **s > window_start).collect();
    let recent = u64::try_from(in_window.len()).unwrap_or(0);
    // slots beyond what was kept are all older than the kept ones
    let skipped = total - recent;
    match in_window.last() {
        Some(latest) => SlotPlan {
            run: Some((**latest, i32::try_from(recent).unwrap_or(i32::MAX))),
            missed: skipped + recent - 1,
        },
        None => SlotPlan {
            run: None,
            missed: skipped,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn quarter_hourly() -> Schedule {
        Schedule::parse("0 */15 * * * *", "UTC").unwrap()
    }

    #[test]
    fn a_punctual_beat_runs_each_slot_once() {
        let s = quarter_hourly();
        let last = Some(utc("2026-11-25T12:00:00Z"));
        let plan = plan_slots(&s, last, utc("2026-11-25T12:15:00.3Z"), Duration::hours(1));
        assert_eq!(
            plan,
            SlotPlan {
                run: Some((utc("2026-11-25T12:15:00Z"), 1)),
                missed: 0
            }
        );
        let early = plan_slots(&s, last, utc("2026-11-25T12:14:59Z"), Duration::hours(1));
        assert_eq!(
            early,
            SlotPlan {
                run: None,
                missed: 0
            }
        );
    }

    #[test]
    fn slots_missed_while_down_run_once_coalesced_and_are_counted() {
        let s = quarter_hourly();
        // down from 12:05 to 12:52: 12:15, 12:30 and 12:45 were missed
        let plan = plan_slots(
            &s,
            Some(utc("2026-11-25T12:00:00Z")),
            utc("2026-11-25T12:52:00Z"),
            Duration::hours(1),
        );
        assert_eq!(
            plan,
            SlotPlan {
                run: Some((utc("2026-11-25T12:45:00Z"), 3)),
                missed: 2
            }
        );
    }

    #[test]
    fn slots_older_than_the_catch_up_window_are_skipped_and_counted() {
        let s = quarter_hourly();
        // down for a day: only the last hour's four slots are coalesced; 92 are skipped
        let plan = plan_slots(
            &s,
            Some(utc("2026-11-24T12:00:00Z")),
            utc("2026-11-25T12:00:00Z"),
            Duration::hours(1),
        );
        assert_eq!(plan.run, Some((utc("2026-11-25T12:00:00Z"), 4)));
        assert_eq!(plan.missed, 95);
    }

    #[test]
    fn a_fresh_install_runs_only_the_latest_recent_slot() {
        let s = quarter_hourly();
        let plan = plan_slots(&s, None, utc("2026-11-25T12:20:00Z"), Duration::minutes(10));
        assert_eq!(
            plan,
            SlotPlan {
                run: Some((utc("2026-11-25T12:15:00Z"), 1)),
                missed: 0
            }
        );
        let none = plan_slots(&s, None, utc("2026-11-25T12:20:00Z"), Duration::minutes(1));
        assert_eq!(
            none,
            SlotPlan {
                run: None,
                missed: 0
            }
        );
    }
}
