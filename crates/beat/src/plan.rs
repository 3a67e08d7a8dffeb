//! What the beat should enqueue at an instant: pure, so that catch-up and coalescing are tested
//! with an injected clock.

use chrono::{DateTime, Duration, Utc};

use crate::schedule::Schedule;

/// The decision for the scheduled slots at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// Run one check for this slot, standing for `coalesced` slots.
    pub run: Option<(DateTime<Utc>, i32)>,
    /// Slots that will not get a run of their own (coalesced into `run`, or older than the
    /// catch-up window) and were not counted before.
    pub missed: u64,
    /// The latest slot due at `now` (run or not); with no run, every slot up to it is older
    /// than the window and never will be run.
    pub newest: Option<DateTime<Utc>>,
    /// The latest slot counted missed, by this plan or before it: pass it as the next plan's
    /// `counted`.
    pub counted: Option<DateTime<Utc>>,
}

/// Slots are remembered only this far back when coalescing (older ones are counted, not kept).
const KEEP: usize = 1_000;

/// The slots due at `now` since `last` (the latest slot that has a run; None on a fresh
/// install, which runs only the latest recent slot). Slots within `catchup` of `now` are
/// coalesced into one run of the latest; older ones are skipped. Either way every slot that
/// does not get its own run is counted missed, once: slots up to `counted` (the `counted` of
/// the previous plan, whose run could not be enqueued, say) are not counted again.
pub fn plan_slots(
    schedule: &Schedule,
    last: Option<DateTime<Utc>>,
    counted: Option<DateTime<Utc>>,
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
            newest: latest.last().copied(),
            counted,
        };
    };
    let (slots, total) = schedule.slots_between(after, now, KEEP);
    let in_window: Vec<_> = slots.iter().filter(|s| **s > window_start).collect();
    let recent = u64::try_from(in_window.len()).unwrap_or(0);
    let run = in_window
        .last()
        .map(|latest| (**latest, i32::try_from(recent).unwrap_or(i32::MAX)));
    // the slots not counted yet, less the one that runs
    let fresh = match counted {
        Some(c) if c > after => schedule.slots_between(c, now, 0).1,
        _ => total,
    };
    let runs_fresh = run.is_some_and(|(slot, _)| counted.is_none_or(|c| slot > c));
    // the run's own slot is not missed (unless a later plan coalesces it after all)
    let newest_missed = match run {
        Some(_) => slots.len().checked_sub(2).map(|i| slots[i]),
        None => slots.last().copied(),
    };
    SlotPlan {
        run,
        missed: fresh - u64::from(runs_fresh),
        newest: slots.last().copied(),
        counted: newest_missed.max(counted),
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
        let plan = plan_slots(
            &s,
            last,
            None,
            utc("2026-11-25T12:15:00.3Z"),
            Duration::hours(1),
        );
        assert_eq!(
            plan,
            SlotPlan {
                run: Some((utc("2026-11-25T12:15:00Z"), 1)),
                missed: 0,
                newest: Some(utc("2026-11-25T12:15:00Z")),
                counted: None,
            }
        );
        let early = plan_slots(
            &s,
            last,
            None,
            utc("2026-11-25T12:14:59Z"),
            Duration::hours(1),
        );
        assert_eq!(
            early,
            SlotPlan {
                run: None,
                missed: 0,
                newest: None,
                counted: None,
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
            None,
            utc("2026-11-25T12:52:00Z"),
            Duration::hours(1),
        );
        assert_eq!(
            plan,
            SlotPlan {
                run: Some((utc("2026-11-25T12:45:00Z"), 3)),
                missed: 2,
                newest: Some(utc("2026-11-25T12:45:00Z")),
                counted: Some(utc("2026-11-25T12:30:00Z")),
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
            None,
            utc("2026-11-25T12:00:00Z"),
            Duration::hours(1),
        );
        assert_eq!(plan.run, Some((utc("2026-11-25T12:00:00Z"), 4)));
        assert_eq!(plan.missed, 95);
    }

    /// Slots already counted are not counted again: a business-hours schedule whose beat was
    /// down past the evening's last slots (all older than the window, so none runs), or a run
    /// that could not be enqueued and is tried again, added the same slots on every step (every
    /// 5 s), all night.
    #[test]
    fn missed_slots_are_counted_once() {
        let s = Schedule::parse("0 */15 8-18 * * MON-FRI", "UTC").unwrap();
        let last = Some(utc("2026-11-25T17:00:00Z"));
        let at = |t: &str| plan_slots(&s, last, None, utc(t), Duration::hours(1));
        // back at 20:00: 17:15 .. 18:45 are older than the hour, none runs
        let first = at("2026-11-25T20:00:00Z");
        assert_eq!(first.run, None);
        assert_eq!(first.missed, 7);
        assert_eq!(first.newest, Some(utc("2026-11-25T18:45:00Z")));
        // the beat then takes the newest as its last slot: nothing more to count overnight
        assert_eq!(first.counted, first.newest);
        let later = plan_slots(
            &s,
            first.newest,
            first.counted,
            utc("2026-11-26T07:59:00Z"),
            Duration::hours(1),
        );
        assert_eq!((later.run, later.missed), (None, 0));
        // a coalesced run counted once, tried again (its enqueue failed): nothing new missed
        let counted = plan_slots(
            &s,
            last,
            None,
            utc("2026-11-25T17:47:00Z"),
            Duration::hours(1),
        );
        assert_eq!(counted.run, Some((utc("2026-11-25T17:45:00Z"), 3)));
        assert_eq!(counted.missed, 2);
        let again = plan_slots(
            &s,
            last,
            counted.counted,
            utc("2026-11-25T17:47:05Z"),
            Duration::hours(1),
        );
        assert_eq!((again.run, again.missed), (counted.run, 0));
        // ... and a slot that passes meanwhile is one more missed, not three
        let next = plan_slots(
            &s,
            last,
            again.counted,
            utc("2026-11-25T18:00:05Z"),
            Duration::hours(1),
        );
        assert_eq!(next.run, Some((utc("2026-11-25T18:00:00Z"), 4)));
        assert_eq!(next.missed, 1);
    }

    #[test]
    fn a_fresh_install_runs_only_the_latest_recent_slot() {
        let s = quarter_hourly();
        let plan = plan_slots(
            &s,
            None,
            None,
            utc("2026-11-25T12:20:00Z"),
            Duration::minutes(10),
        );
        assert_eq!(
            plan,
            SlotPlan {
                run: Some((utc("2026-11-25T12:15:00Z"), 1)),
                missed: 0,
                newest: Some(utc("2026-11-25T12:15:00Z")),
                counted: None,
            }
        );
        let none = plan_slots(
            &s,
            None,
            None,
            utc("2026-11-25T12:20:00Z"),
            Duration::minutes(1),
        );
        assert_eq!(
            none,
            SlotPlan {
                run: None,
                missed: 0,
                newest: None,
                counted: None,
            }
        );
    }
}
