//! Calendars across DST transitions and leap days, with every expected instant worked out by
//! hand (the reasoning is in the comments) and the transitions themselves checked against
//! chrono-tz, so a wrong guess about a zone's rules fails loudly instead of silently agreeing.
#![allow(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] fns are not covered by allow-unwrap-in-tests"
)]

use chrono::{DateTime, Datelike, NaiveDate, Offset, TimeDelta, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use escalator_policy::{Calendar, CalendarSpec, Policy, WindowSpec, schedule};

const HOUR: i64 = 3_600;
const ALL_DAYS: [Weekday; 7] = [
    Weekday::Mon,
    Weekday::Tue,
    Weekday::Wed,
    Weekday::Thu,
    Weekday::Fri,
    Weekday::Sat,
    Weekday::Sun,
];

fn utc(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn calendar(zone: &str, windows: &[(Weekday, &str, &str)], holidays: &[&str]) -> Calendar {
    Calendar::new(CalendarSpec {
        timezone: zone.into(),
        windows: windows
            .iter()
            .map(|(day, start, end)| WindowSpec {
                day: *day,
                start: (*start).into(),
                end: (*end).into(),
            })
            .collect(),
        holidays: holidays.iter().map(|d| d.parse().unwrap()).collect(),
    })
    .unwrap()
}

/// A calendar that is "24x7" but expressed as wall-clock windows in `zone`.
fn round_the_clock(zone: &str) -> Calendar {
    let windows: Vec<_> = ALL_DAYS.iter().map(|d| (*d, "00:00", "24:00")).collect();
    calendar(zone, &windows, &[])
}

/// One local day with a DST transition in one zone.
struct DstDay {
    zone: &'static str,
    /// The local date whose length changes.
    date: &'static str,
    /// When the clocks change, and the UTC offsets (seconds) either side.
    transition: &'static str,
    offsets: (i32, i32),
    /// Local midnight of `date` and of the day after, as UTC instants.
    day_start: &'static str,
    next_day_start: &'static str,
    /// Real length of the local day.
    day_seconds: i64,
    /// Local wall-clock reading of `day_start + 24h`.
    deadline_local: &'static str,
    /// A window on `date` that touches the transition, and its UTC bounds (equal = empty).
    window: (&'static str, &'static str),
    window_utc: (&'static str, &'static str),
}

fn offset_at(tz: Tz, t: DateTime<Utc>) -> i32 {
    tz.offset_from_utc_datetime(&t.naive_utc())
        .fix()
        .local_minus_utc()
}

fn check(case: &DstDay) {
    let label = format!("{} {}", case.zone, case.date);
    let tz: Tz = case.zone.parse().unwrap();
    let transition = utc(case.transition);
    assert_eq!(
        (
            offset_at(tz, transition - TimeDelta::seconds(1)),
            offset_at(tz, transition)
        ),
        case.offsets,
        "{label}: transition per chrono-tz"
    );

    // A round-the-clock calendar covers every instant, so business time equals real time:
    // the local day is as long as the clocks make it, and a 24h SLA is 86 400 real seconds.
    let full = round_the_clock(case.zone);
    let (day_start, next_day_start) = (utc(case.day_start), utc(case.next_day_start));
    assert_eq!(
        full.business_seconds_between(day_start, next_day_start),
        case.day_seconds,
        "{label}: day length"
    );
    assert_eq!((next_day_start - day_start).num_seconds(), case.day_seconds);
    let due = full.add_business_seconds(day_start, 24 * HOUR);
    assert_eq!(
        due,
        day_start + TimeDelta::hours(24),
        "{label}: 24h deadline"
    );
    assert_eq!(
        due.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string(),
        case.deadline_local,
        "{label}: deadline on the wall clock"
    );
    assert!(full.is_working(transition) && full.is_working(transition - TimeDelta::seconds(1)));
    // Without a calendar the clock is plain UTC seconds, immune to DST by construction.
    let plain = schedule(day_start, 0, 0, &Policy::default_policy(), None).unwrap();
    assert_eq!(
        plain.due_at,
        day_start + TimeDelta::seconds(86_400),
        "{label}"
    );

    // A single window on that date: it contributes exactly its real elapsed UTC span.
    let date: NaiveDate = case.date.parse().unwrap();
    let one = calendar(
        case.zone,
        &[(date.weekday(), case.window.0, case.window.1)],
        &[],
    );
    let (s, e) = (utc(case.window_utc.0), utc(case.window_utc.1));
    let around = (
        day_start - TimeDelta::hours(6),
        next_day_start + TimeDelta::hours(6),
    );
    assert_eq!(
        one.business_seconds_between(around.0, around.1),
        (e - s).num_seconds(),
        "{label}: window {:?}",
        case.window
    );
    if s < e {
        assert_eq!(
            one.add_business_seconds(around.0, 1),
            s + TimeDelta::seconds(1)
        );
        assert_eq!(one.add_business_seconds(around.0, (e - s).num_seconds()), e);
        assert!(!one.is_working(s - TimeDelta::seconds(1)), "{label}");
        assert!(one.is_working(s) && !one.is_working(e), "{label}");
    }
}

/// New York, spring forward.
fn new_york_spring() -> DstDay {
    // 02:00 EST (UTC-5) = 07:00Z becomes 03:00 EDT (UTC-4). The day runs from 00:00 EST
    // (05:00Z) to 00:00 EDT on the 9th (04:00Z): 23h, and 24 real hours after midnight the wall
    // clock reads 01:00. Window 01:00–03:00: 01:00 EST = 06:00Z to 03:00 EDT = 07:00Z, 1h.
    DstDay {
        zone: "America/New_York",
        date: "2026-03-08",
        transition: "2026-03-08T07:00:00Z",
        offsets: (-5 * 3600, -4 * 3600),
        day_start: "2026-03-08T05:00:00Z",
        next_day_start: "2026-03-09T04:00:00Z",
        day_seconds: 23 * HOUR,
        deadline_local: "2026-03-09 01:00",
        window: ("01:00", "03:00"),
        window_utc: ("2026-03-08T06:00:00Z", "2026-03-08T07:00:00Z"),
    }
}

#[test]
fn new_york_springs_forward_on_2026_03_08() {
    check(&new_york_spring());
}

#[test]
fn a_new_york_window_starting_inside_the_gap_starts_at_its_end() {
    // 02:30 does not exist on 2026-03-08: the window starts at 03:00 EDT = 07:00Z and ends at
    // 04:00 EDT = 08:00Z.
    check(&DstDay {
        window: ("02:30", "04:00"),
        window_utc: ("2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"),
        ..new_york_spring()
    });
}

#[test]
fn new_york_falls_back_on_2026_11_01() {
    // 02:00 EDT (UTC-4) = 06:00Z becomes 01:00 EST (UTC-5). The day runs from 00:00 EDT
    // (04:00Z) to 00:00 EST on the 2nd (05:00Z): 25h; 24h after midnight it is 23:00 on the
    // 1st. Window 01:00–03:00: 01:00 happens twice, the earliest is EDT = 05:00Z; 03:00 EST =
    // 08:00Z: 3h.
    check(&DstDay {
        zone: "America/New_York",
        date: "2026-11-01",
        transition: "2026-11-01T06:00:00Z",
        offsets: (-4 * 3600, -5 * 3600),
        day_start: "2026-11-01T04:00:00Z",
        next_day_start: "2026-11-02T05:00:00Z",
        day_seconds: 25 * HOUR,
        deadline_local: "2026-11-01 23:00",
        window: ("01:00", "03:00"),
        window_utc: ("2026-11-01T05:00:00Z", "2026-11-01T08:00:00Z"),
    });
}

/// London, spring forward.
fn london_spring() -> DstDay {
    // 01:00 GMT = 01:00Z becomes 02:00 BST (UTC+1). Day: 00:00Z to 00:00 BST on the 30th =
    // 23:00Z, 23h. Window 00:30–01:30: 00:30Z, and 01:30 is in the gap so it ends at the gap's
    // end, 01:00Z: 30 minutes.
    DstDay {
        zone: "Europe/London",
        date: "2026-03-29",
        transition: "2026-03-29T01:00:00Z",
        offsets: (0, 3600),
        day_start: "2026-03-29T00:00:00Z",
        next_day_start: "2026-03-29T23:00:00Z",
        day_seconds: 23 * HOUR,
        deadline_local: "2026-03-30 01:00",
        window: ("00:30", "01:30"),
        window_utc: ("2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z"),
    }
}

#[test]
fn london_springs_forward_on_2026_03_29() {
    check(&london_spring());
}

#[test]
fn a_london_window_entirely_inside_the_gap_contributes_nothing() {
    // 01:00–02:00 on 2026-03-29 never happens: both ends resolve to 01:00Z.
    check(&DstDay {
        window: ("01:00", "02:00"),
        window_utc: ("2026-03-29T01:00:00Z", "2026-03-29T01:00:00Z"),
        ..london_spring()
    });
}

#[test]
fn london_falls_back_on_2026_10_25() {
    // 02:00 BST = 01:00Z becomes 01:00 GMT. Day: 00:00 BST = 24th 23:00Z to 26th 00:00Z, 25h.
    // Window 01:00–02:00: first 01:00 is BST = 00:00Z; 02:00 GMT = 02:00Z: 2h.
    check(&DstDay {
        zone: "Europe/London",
        date: "2026-10-25",
        transition: "2026-10-25T01:00:00Z",
        offsets: (3600, 0),
        day_start: "2026-10-24T23:00:00Z",
        next_day_start: "2026-10-26T00:00:00Z",
        day_seconds: 25 * HOUR,
        deadline_local: "2026-10-25 23:00",
        window: ("01:00", "02:00"),
        window_utc: ("2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z"),
    });
}

#[test]
fn lord_howe_falls_back_half_an_hour_on_2026_04_05() {
    // 02:00 at UTC+11 = 4th 15:00Z becomes 01:30 at UTC+10:30. Day: 00:00 (+11) = 4th 13:00Z
    // to 6th 00:00 (+10:30) = 5th 13:30Z: 24.5h. Window 01:00–02:00: 01:00 (+11, before the
    // repeated half hour) = 4th 14:00Z; 02:00 (+10:30) = 15:30Z: 1.5h.
    check(&DstDay {
        zone: "Australia/Lord_Howe",
        date: "2026-04-05",
        transition: "2026-04-04T15:00:00Z",
        offsets: (11 * 3600, 10 * 3600 + 1800),
        day_start: "2026-04-04T13:00:00Z",
        next_day_start: "2026-04-05T13:30:00Z",
        day_seconds: 24 * HOUR + 1800,
        deadline_local: "2026-04-05 23:30",
        window: ("01:00", "02:00"),
        window_utc: ("2026-04-04T14:00:00Z", "2026-04-04T15:30:00Z"),
    });
}

#[test]
fn lord_howe_springs_forward_half_an_hour_on_2026_10_04() {
    // 02:00 at UTC+10:30 = 3rd 15:30Z becomes 02:30 at UTC+11. Day: 00:00 (+10:30) = 3rd
    // 13:30Z to 5th 00:00 (+11) = 4th 13:00Z: 23.5h. Window 02:00–03:00: 02:00 is in the gap,
    // so 15:30Z; 03:00 (+11) = 16:00Z: 30 minutes.
    check(&DstDay {
        zone: "Australia/Lord_Howe",
        date: "2026-10-04",
        transition: "2026-10-03T15:30:00Z",
        offsets: (10 * 3600 + 1800, 11 * 3600),
        day_start: "2026-10-03T13:30:00Z",
        next_day_start: "2026-10-04T13:00:00Z",
        day_seconds: 23 * HOUR + 1800,
        deadline_local: "2026-10-05 00:30",
        window: ("02:00", "03:00"),
        window_utc: ("2026-10-03T15:30:00Z", "2026-10-03T16:00:00Z"),
    });
}

#[test]
fn chatham_falls_back_at_03_45_on_2026_04_05() {
    // 03:45 at UTC+13:45 = 4th 14:00Z becomes 02:45 at UTC+12:45. Day: 00:00 (+13:45) = 4th
    // 10:15Z to 6th 00:00 (+12:45) = 5th 11:15Z: 25h. Window 02:00–04:00: 02:00 (+13:45) = 4th
    // 12:15Z; 04:00 (+12:45) = 15:15Z: 3h.
    check(&DstDay {
        zone: "Pacific/Chatham",
        date: "2026-04-05",
        transition: "2026-04-04T14:00:00Z",
        offsets: (13 * 3600 + 2700, 12 * 3600 + 2700),
        day_start: "2026-04-04T10:15:00Z",
        next_day_start: "2026-04-05T11:15:00Z",
        day_seconds: 25 * HOUR,
        deadline_local: "2026-04-05 23:00",
        window: ("02:00", "04:00"),
        window_utc: ("2026-04-04T12:15:00Z", "2026-04-04T15:15:00Z"),
    });
}

#[test]
fn chatham_springs_forward_at_02_45_on_2026_09_27() {
    // 02:45 at UTC+12:45 = 26th 14:00Z becomes 03:45 at UTC+13:45. Day: 00:00 (+12:45) = 26th
    // 11:15Z to 28th 00:00 (+13:45) = 27th 10:15Z: 23h. Window 03:00–04:00: 03:00 is in the
    // gap, so 14:00Z; 04:00 (+13:45) = 14:15Z: 15 minutes.
    check(&DstDay {
        zone: "Pacific/Chatham",
        date: "2026-09-27",
        transition: "2026-09-26T14:00:00Z",
        offsets: (12 * 3600 + 2700, 13 * 3600 + 2700),
        day_start: "2026-09-26T11:15:00Z",
        next_day_start: "2026-09-27T10:15:00Z",
        day_seconds: 23 * HOUR,
        deadline_local: "2026-09-28 01:00",
        window: ("03:00", "04:00"),
        window_utc: ("2026-09-26T14:00:00Z", "2026-09-26T14:15:00Z"),
    });
}

#[test]
fn santiago_falls_back_at_midnight_on_2026_04_05() {
    // Midnight starting the 5th at UTC-3 = 03:00Z becomes 23:00 on the 4th at UTC-4, so the
    // 4th is the long day: 00:00 (-3) = 4th 03:00Z to 5th 00:00 (-4) = 04:00Z, 25h. Window
    // Saturday 22:00–24:00: 22:00 (-3) = 5th 01:00Z; 24:00 is 00:00 on the 5th, which exists
    // only after the repeated hour, (-4) = 04:00Z: 3h.
    check(&DstDay {
        zone: "America/Santiago",
        date: "2026-04-04",
        transition: "2026-04-05T03:00:00Z",
        offsets: (-3 * 3600, -4 * 3600),
        day_start: "2026-04-04T03:00:00Z",
        next_day_start: "2026-04-05T04:00:00Z",
        day_seconds: 25 * HOUR,
        deadline_local: "2026-04-04 23:00",
        window: ("22:00", "24:00"),
        window_utc: ("2026-04-05T01:00:00Z", "2026-04-05T04:00:00Z"),
    });
}

#[test]
fn santiago_springs_forward_at_midnight_on_2026_09_06() {
    // Midnight starting the 6th at UTC-4 = 04:00Z becomes 01:00 at UTC-3: local midnight does
    // not exist, so the day (and a window starting 00:00) starts at 01:00 = 04:00Z, and ends at
    // 7th 00:00 (-3) = 03:00Z: 23h. Window 00:00–08:00: 04:00Z to 08:00 (-3) = 11:00Z: 7h.
    check(&DstDay {
        zone: "America/Santiago",
        date: "2026-09-06",
        transition: "2026-09-06T04:00:00Z",
        offsets: (-4 * 3600, -3 * 3600),
        day_start: "2026-09-06T04:00:00Z",
        next_day_start: "2026-09-07T03:00:00Z",
        day_seconds: 23 * HOUR,
        deadline_local: "2026-09-07 01:00",
        window: ("00:00", "08:00"),
        window_utc: ("2026-09-06T04:00:00Z", "2026-09-06T11:00:00Z"),
    });
}

#[test]
fn a_santiago_window_ending_at_a_missing_midnight_ends_at_the_gap() {
    // Saturday 2026-09-05 20:00–24:00: 20:00 (-4) = 6th 00:00Z; "24:00" is the missing midnight
    // of the 6th, resolved to the end of the gap, 04:00Z: the full 4h.
    let saturday = calendar("America/Santiago", &[(Weekday::Sat, "20:00", "24:00")], &[]);
    let (s, e) = (utc("2026-09-06T00:00:00Z"), utc("2026-09-06T04:00:00Z"));
    assert_eq!(
        saturday.business_seconds_between(s - TimeDelta::days(1), e + TimeDelta::days(1)),
        4 * HOUR
    );
    assert_eq!(
        saturday.add_business_seconds(s - TimeDelta::hours(3), 4 * HOUR),
        e
    );
}

#[test]
fn troll_jumps_two_hours_forward_on_2026_03_29() {
    // Troll switches between UTC+0 and UTC+2. 01:00 (+0) = 01:00Z becomes 03:00 (+2). Day:
    // 00:00Z to 30th 00:00 (+2) = 29th 22:00Z: only 22h. Window 00:00–02:00: 00:00Z, and 02:00
    // is in the two-hour gap, so it ends at 01:00Z: 1h.
    check(&DstDay {
        zone: "Antarctica/Troll",
        date: "2026-03-29",
        transition: "2026-03-29T01:00:00Z",
        offsets: (0, 2 * 3600),
        day_start: "2026-03-29T00:00:00Z",
        next_day_start: "2026-03-29T22:00:00Z",
        day_seconds: 22 * HOUR,
        deadline_local: "2026-03-30 02:00",
        window: ("00:00", "02:00"),
        window_utc: ("2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z"),
    });
}

#[test]
fn troll_falls_two_hours_back_on_2026_10_25() {
    // 03:00 (+2) = 01:00Z becomes 01:00 (+0). Day: 00:00 (+2) = 24th 22:00Z to 26th 00:00Z:
    // 26h. Window 01:00–03:00: earliest 01:00 is (+2) = 24th 23:00Z; 03:00 (+0) = 03:00Z: 4h.
    check(&DstDay {
        zone: "Antarctica/Troll",
        date: "2026-10-25",
        transition: "2026-10-25T01:00:00Z",
        offsets: (2 * 3600, 0),
        day_start: "2026-10-24T22:00:00Z",
        next_day_start: "2026-10-26T00:00:00Z",
        day_seconds: 26 * HOUR,
        deadline_local: "2026-10-25 22:00",
        window: ("01:00", "03:00"),
        window_utc: ("2026-10-24T23:00:00Z", "2026-10-25T03:00:00Z"),
    });
}

fn weekdays(zone: &str, start: &str, end: &str, holidays: &[&str]) -> Calendar {
    let windows: Vec<_> = ALL_DAYS[..5].iter().map(|d| (*d, start, end)).collect();
    calendar(zone, &windows, holidays)
}

#[test]
fn office_hours_follow_the_wall_clock_across_a_weekend_transition() {
    // New York Mon–Fri 09:00–17:00. Friday 2026-03-06 16:00 EST = 21:00Z; one hour remains on
    // Friday, then the clocks change on Sunday, so Monday 09:00 is EDT = 13:00Z and the second
    // hour ends at 10:00 EDT = 14:00Z.
    let office = weekdays("America/New_York", "09:00", "17:00", &[]);
    let friday = utc("2026-03-06T21:00:00Z");
    assert_eq!(
        office.add_business_seconds(friday, 2 * HOUR),
        utc("2026-03-09T14:00:00Z")
    );
    assert_eq!(
        office.business_seconds_between(friday, utc("2026-03-09T14:00:00Z")),
        2 * HOUR
    );
}

#[test]
fn eight_business_hours_from_friday_evening_land_on_monday_evening_in_a_leap_february() {
    // London is on GMT in February, so local time is UTC. 2028-02-25 is a Friday and 2028 is a
    // leap year: Monday is the 28th, Tuesday the 29th.
    assert_eq!(
        NaiveDate::from_ymd_opt(2028, 2, 25).map(|d| d.weekday()),
        Some(Weekday::Fri)
    );
    assert!(NaiveDate::from_ymd_opt(2028, 2, 29).is_some());
    let office = weekdays("Europe/London", "09:00", "17:00", &[]);
    let friday_close = utc("2028-02-25T17:00:00Z");
    // Friday's window is over, the weekend does not count: all 8h are Monday's.
    assert_eq!(
        office.add_business_seconds(friday_close, 8 * HOUR),
        utc("2028-02-28T17:00:00Z")
    );
    // The next 8h are the leap day itself.
    assert_eq!(
        office.add_business_seconds(friday_close, 16 * HOUR),
        utc("2028-02-29T17:00:00Z")
    );
}

#[test]
fn a_holiday_on_the_leap_day_is_skipped() {
    let office = weekdays("Europe/London", "09:00", "17:00", &["2028-02-29"]);
    let friday_close = utc("2028-02-25T17:00:00Z");
    assert_eq!(
        office.add_business_seconds(friday_close, 8 * HOUR),
        utc("2028-02-28T17:00:00Z")
    );
    // Monday, then no Tuesday 29th, then Wednesday 1 March.
    assert_eq!(
        office.add_business_seconds(friday_close, 16 * HOUR),
        utc("2028-03-01T17:00:00Z")
    );
    assert!(!office.is_working(utc("2028-02-29T12:00:00Z")));
    assert_eq!(
        office.business_seconds_between(utc("2028-02-28T00:00:00Z"), utc("2028-03-02T00:00:00Z")),
        16 * HOUR
    );
}

#[test]
fn a_24h_sla_without_a_calendar_spans_the_leap_day() {
    let started = utc("2028-02-28T12:00:00Z");
    let deadlines = schedule(started, 0, 0, &Policy::default_policy(), None).unwrap();
    assert_eq!(deadlines.due_at, utc("2028-02-29T12:00:00Z"));
    assert_eq!(deadlines.warn_at, utc("2028-02-29T10:00:00Z"));
}
