//! Property tests of business time: random weekly calendars in DST zones, random instants
//! biased towards each zone's transitions.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns are not covered by allow-unwrap-in-tests"
)]

use chrono::{DateTime, NaiveDate, TimeDelta, Utc, Weekday};
use escalator_policy::{
    AfterLast, Calendar, CalendarSpec, LevelSpec, Policy, PolicySpec, Target, Warning, WindowSpec,
    paused_seconds, schedule,
};
use proptest::prelude::*;

const DAY: i64 = 86_400;

/// Zones with unusual transitions, each with its 2026 transition instants (see calendar_days.rs).
const ZONES: [(&str, [&str; 2]); 6] = [
    (
        "America/New_York",
        ["2026-03-08T07:00:00Z", "2026-11-01T06:00:00Z"],
    ),
    (
        "Europe/London",
        ["2026-03-29T01:00:00Z", "2026-10-25T01:00:00Z"],
    ),
    (
        "Australia/Lord_Howe",
        ["2026-04-04T15:00:00Z", "2026-10-03T15:30:00Z"],
    ),
    (
        "Pacific/Chatham",
        ["2026-04-04T14:00:00Z", "2026-09-26T14:00:00Z"],
    ),
    (
        "America/Santiago",
        ["2026-04-05T03:00:00Z", "2026-09-06T04:00:00Z"],
    ),
    (
        "Antarctica/Troll",
        ["2026-03-29T01:00:00Z", "2026-10-25T01:00:00Z"],
    ),
];

const WEEK: [Weekday; 7] = [
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
    Weekday::Sun,
];

fn hh_mm(quarters: u32) -> String {
    format!("{:02}:{:02}", quarters / 4, quarters % 4 * 15)
}

/// A calendar in one of [`ZONES`] with up to two windows a day on a quarter-hour grid (so
/// boundaries land on 00:00, 02:45, 24:00 and every other transition time) and a few holidays.
fn calendars() -> impl Strategy<Value = (usize, Calendar)> {
    let days = prop::collection::vec(prop::collection::vec(0_u32..=96, 0..=4), 7);
    let holidays = prop::collection::vec(0_i64..365, 0..=3);
    (0..ZONES.len(), days, holidays).prop_map(|(zone, days, holidays)| {
        let mut windows = Vec::new();
        for (day, mut bounds) in WEEK.into_iter().zip(days) {
            bounds.sort_unstable();
            bounds.dedup();
            for pair in bounds.chunks_exact(2) {
                windows.push(WindowSpec {
                    day,
                    start: hh_mm(pair[0]),
                    end: hh_mm(pair[1]),
                });
            }
        }
        if windows.is_empty() {
            windows.push(WindowSpec {
                day: Weekday::Mon,
                start: "09:00".into(),
                end: "17:00".into(),
            });
        }
        let new_year = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let spec = CalendarSpec {
            timezone: ZONES[zone].0.into(),
            windows,
            holidays: holidays
                .into_iter()
                .map(|d| new_year + TimeDelta::days(d))
                .collect(),
        };
        (zone, Calendar::new(spec).unwrap())
    })
}

/// An instant in 2026: uniformly, or within two days of one of the zone's transitions.
fn instant(zone: usize, pick: usize, near: i64, anywhere: i64) -> DateTime<Utc> {
    match ZONES[zone].1.get(pick) {
        Some(transition) => transition.parse::<DateTime<Utc>>().unwrap() + TimeDelta::seconds(near),
        None => {
            "2026-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap() + TimeDelta::seconds(anywhere)
        }
    }
}

/// Offsets for [`instant`]. Half of them are whole quarter-hours, so that starts and deadlines
/// land exactly on window boundaries and transitions, where off-by-one mistakes live.
fn starts() -> impl Strategy<Value = (usize, i64, i64)> {
    (
        0_usize..3,
        seconds(-2 * DAY..2 * DAY),
        seconds(0..365 * DAY),
    )
}

/// Seconds in `range`, half of them rounded to a quarter-hour.
fn seconds(range: std::ops::Range<i64>) -> impl Strategy<Value = i64> {
    (range, any::<bool>()).prop_map(|(s, round)| if round { s - s.rem_euclid(900) } else { s })
}

proptest! {
    #[test]
    fn business_time_never_runs_backwards(
        (zone, calendar) in calendars(),
        (pick, near, anywhere) in starts(),
        d1 in seconds(0..4 * DAY),
        d2 in seconds(0..4 * DAY),
        s1 in seconds(0..3 * DAY),
        s2 in seconds(0..3 * DAY),
    ) {
        let start = instant(zone, pick, near, anywhere);
        let t1 = start + TimeDelta::seconds(d1);
        let t2 = t1 + TimeDelta::seconds(d2);
        prop_assert!(
            calendar.business_seconds_between(start, t1)
                <= calendar.business_seconds_between(start, t2)
        );
        let (lo, hi) = (s1.min(s2), s1.max(s2));
        prop_assert!(
            calendar.add_business_seconds(start, lo) <= calendar.add_business_seconds(start, hi)
        );
    }

    #[test]
    fn adding_business_time_and_measuring_it_round_trip(
        (zone, calendar) in calendars(),
        (pick, near, anywhere) in starts(),
        seconds in seconds(0..3 * DAY),
    ) {
        let start = instant(zone, pick, near, anywhere);
        let due = calendar.add_business_seconds(start, seconds);
        prop_assert!(due >= start);
        prop_assert_eq!(calendar.business_seconds_between(start, due), seconds);
        // ...and `due` is the earliest such instant.
        if seconds > 0 {
            prop_assert_eq!(
                calendar.business_seconds_between(start, due - TimeDelta::seconds(1)),
                seconds - 1
            );
        }
    }

    #[test]
    fn paused_time_never_counts(
        (zone, calendar) in calendars(),
        (pick, near, anywhere) in starts(),
        sla in seconds(60..3 * DAY).prop_map(|s| s.max(60)),
        pause_after in seconds(0..4 * DAY),
        pause_for in seconds(0..4 * DAY),
    ) {
        let start = instant(zone, pick, near, anywhere);
        let policy = Policy::new(PolicySpec {
            sla_seconds: sla,
            warning: Warning::Percent { percent: 80 },
            levels: vec![LevelSpec { target: Target::Manager, sla_seconds: sla }],
            after_last: AfterLast::Stop,
            calendar_id: Some("random".into()),
            channels: None,
        })
        .unwrap();
        let paused_at = start + TimeDelta::seconds(pause_after);
        let resumed_at = paused_at + TimeDelta::seconds(pause_for);
        let paused = paused_seconds(paused_at, resumed_at, Some(&calendar));
        prop_assert_eq!(paused, calendar.business_seconds_between(paused_at, resumed_at));

        let deadlines = schedule(start, paused, 0, &policy, Some(&calendar)).unwrap();
        prop_assert!(deadlines.warn_at <= deadlines.due_at);
        prop_assert_eq!(
            calendar.business_seconds_between(start, deadlines.due_at),
            sla + paused
        );
        // A pause inside the stage extends it by exactly the business time on hold: the working
        // time outside the pause is the SLA.
        if resumed_at <= deadlines.due_at {
            prop_assert_eq!(
                calendar.business_seconds_between(start, paused_at)
                    + calendar.business_seconds_between(resumed_at, deadlines.due_at),
                sla
            );
        }
        // 24x7: the pause is plain elapsed time.
        let plain = schedule(start, paused_seconds(paused_at, resumed_at, None), 0, &policy, None)
            .unwrap();
        prop_assert_eq!(plain.due_at, start + TimeDelta::seconds(sla + pause_for));
    }

    #[test]
    fn business_deadlines_fall_inside_working_windows(
        (zone, calendar) in calendars(),
        (pick, near, anywhere) in starts(),
        seconds in seconds(1..3 * DAY).prop_map(|s| s.max(1)),
    ) {
        let start = instant(zone, pick, near, anywhere);
        let due = calendar.add_business_seconds(start, seconds);
        prop_assert!(calendar.is_working(due - TimeDelta::seconds(1)));
    }

    #[test]
    fn is_working_agrees_with_measured_business_time(
        (zone, calendar) in calendars(),
        (pick, near, anywhere) in starts(),
    ) {
        let t = instant(zone, pick, near, anywhere);
        let counted = calendar.business_seconds_between(t, t + TimeDelta::seconds(1));
        prop_assert_eq!(calendar.is_working(t), counted == 1);
    }
}
