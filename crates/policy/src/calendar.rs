//! Business-hours calendars: weekly working windows in an IANA zone, minus holidays.
//!
//! Windows are wall-clock times, but every duration is measured in real elapsed UTC seconds,
//! so a window that spans a DST change is as long as the time that actually passes in it.

use std::collections::BTreeSet;

use chrono::{
    DateTime, Datelike, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone,
    Utc, Weekday,
};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::PolicyError;

const SECONDS_PER_DAY: u32 = 86_400;

/// The longest gap in local time we search across. Real gaps are an hour or less, except Samoa
/// skipping a whole calendar day in 2011; two days covers every zone in the tz database.
const MAX_GAP_SECONDS: i64 = 2 * SECONDS_PER_DAY as i64;

/// How many local days past its start a deadline is looked for: 1,000 years, so that the
/// longest SLA a policy takes (100 years) is found on any calendar with 17 hours of work a week
/// or more (with an hour a week, SLAs of up to ~52,000 hours, 6 years, are found). A deadline further out is never ([`DateTime::<Utc>::MAX_UTC`]), as one past the
/// end of representable time already was. Without the bound a calendar with little working time
/// (one second a week) and a long SLA walked day by day to the year 262,143: ~95 million days,
/// 1.6 s of CPU for each workflow scheduled (release build), while a check held its batch's rows.
const HORIZON_DAYS: u32 = 1_000 * 366;

/// The serialized form of a business-hours calendar, as stored in the `calendars` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarSpec {
    /// IANA zone name the windows and holidays are expressed in, e.g. `"Europe/London"`.
    pub timezone: String,
    /// Weekly working windows; at least one.
    pub windows: Vec<WindowSpec>,
    /// Local dates with no working time at all.
    #[serde(default)]
    pub holidays: Vec<NaiveDate>,
}

/// One weekly working window, in local wall-clock time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSpec {
    /// The weekday the window starts on (`"Mon"` .. `"Sun"`).
    pub day: Weekday,
    /// Start of the window, `"HH:MM"` (or `"HH:MM:SS"`).
    pub start: String,
    /// End of the window, `"HH:MM"`; `"24:00"` means the start of the next local day.
    pub end: String,
}

/// A window parsed to seconds after local midnight; `end` may be 86 400 (`"24:00"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Window {
    start: u32,
    end: u32,
}

/// A validated business-hours calendar.
#[derive(Debug, Clone, PartialEq)]
pub struct Calendar {
    /// Kept so that the calendar can be shown and stored exactly as it was given.
    spec: CalendarSpec,
    tz: Tz,
    /// Windows per weekday (indexed by `num_days_from_monday`), sorted by start, disjoint.
    windows: [Vec<Window>; 7],
    holidays: BTreeSet<NaiveDate>,
}

impl Calendar {
    /// Validates `spec`.
    ///
    /// Errors name the field: `timezone` (unknown IANA zone), `windows` (empty),
    /// `windows[i].start` / `windows[i].end` (unparsable, or start not before end) and
    /// `windows[i]` (overlaps an earlier window on the same day).
    ///
    /// Stored calendars are read through this too, so it checks only what the arithmetic
    /// needs (a zone, well-formed windows that do not overlap). A rule for writes alone (as
    /// [`Policy::stored`](crate::Policy::stored) leaves out the policy's) belongs with the api's
    /// write, or every policy on a calendar stored before the rule would fail to read.
    pub fn new(spec: CalendarSpec) -> Result<Calendar, PolicyError> {
        let tz: Tz = spec.timezone.parse().map_err(|_| {
            PolicyError::new(
                "timezone",
                format!("unknown IANA time zone {:?}", spec.timezone),
            )
        })?;
        if spec.windows.is_empty() {
            return Err(PolicyError::new(
                "windows",
                "at least one working window is required",
            ));
        }
        let mut windows: [Vec<Window>; 7] = Default::default();
        for (i, w) in spec.windows.iter().enumerate() {
            let start = parse_time_of_day(&w.start)
                .filter(|s| *s < SECONDS_PER_DAY)
                .ok_or_else(|| {
                    PolicyError::new(
                        format!("windows[{i}].start"),
                        format!("expected HH:MM between 00:00 and 23:59, got {:?}", w.start),
                    )
                })?;
            let end = parse_time_of_day(&w.end).ok_or_else(|| {
                PolicyError::new(
                    format!("windows[{i}].end"),
                    format!("expected HH:MM between 00:00 and 24:00, got {:?}", w.end),
                )
            })?;
            if start >= end {
                return Err(PolicyError::new(
                    format!("windows[{i}].end"),
                    format!("must be after start {:?}, got {:?}", w.start, w.end),
                ));
            }
            let day = &mut windows[w.day.num_days_from_monday() as usize];
            // Adjacent windows (one ends when the next starts) are fine; any shared second is not.
            if day.iter().any(|o| start < o.end && o.start < end) {
                return Err(PolicyError::new(
                    format!("windows[{i}]"),
                    format!("overlaps another window on {}", w.day),
                ));
            }
            day.push(Window { start, end });
        }
        for day in &mut windows {
            day.sort();
        }
        let holidays = spec.holidays.iter().copied().collect();
        Ok(Calendar {
            spec,
            tz,
            windows,
            holidays,
        })
    }

    /// The spec this calendar was built from.
    pub fn spec(&self) -> &CalendarSpec {
        &self.spec
    }

    /// The calendar's time zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// Seconds of work in an ordinary week (no holiday, no DST change): the sum of the
    /// windows.
    pub fn weekly_working_seconds(&self) -> i64 {
        self.windows
            .iter()
            .flatten()
            .map(|w| i64::from(w.end - w.start))
            .sum()
    }

    /// Whether `t` falls inside a working window.
    pub fn is_working(&self, t: DateTime<Utc>) -> bool {
        let date = self.local_date(t);
        // A local day's intervals lie within that day's UTC span, but a fold around midnight can
        // make an instant's local date differ from the day whose window covers it: look around.
        [date.pred_opt(), Some(date), date.succ_opt()]
            .into_iter()
            .flatten()
            .any(|d| self.intervals(d).any(|(s, e)| s <= t && t < e))
    }

    /// Business seconds in `[a, b)` (0 if `b <= a`).
    ///
    /// Fractions of a second are truncated from the total, not from each window.
    pub fn business_seconds_between(&self, a: DateTime<Utc>, b: DateTime<Utc>) -> i64 {
        if b <= a {
            return 0;
        }
        let first = self.local_date(a);
        let first = first.pred_opt().unwrap_or(first);
        let last = self.local_date(b);
        let last = last.succ_opt().unwrap_or(last);
        let mut total = TimeDelta::zero();
        let mut day = Some(first);
        while let Some(d) = day.filter(|d| *d <= last) {
            for (s, e) in self.intervals(d) {
                let (lo, hi) = (s.max(a), e.min(b));
                if lo < hi {
                    total += hi - lo;
                }
            }
            day = d.succ_opt();
        }
        total.num_seconds()
    }

    /// The earliest instant `t >= start` with `business_seconds_between(start, t) == seconds`.
    /// `seconds <= 0` returns `start`.
    ///
    /// For `seconds > 0` the result lies inside a working window or at its end, never in the
    /// idle time after it: a deadline of "8 business hours" from Friday 17:00 is Monday 17:00,
    /// not Monday 09:00 minus a weekend. Saturates at [`DateTime::<Utc>::MAX_UTC`].
    pub fn add_business_seconds(&self, start: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
        if seconds <= 0 {
            return start;
        }
        // Business time never exceeds real time, so a target past the end of representable time
        // cannot be reached; answering now also keeps `TimeDelta` construction in range.
        if seconds > (DateTime::<Utc>::MAX_UTC - start).num_seconds() {
            return DateTime::<Utc>::MAX_UTC;
        }
        let Some(mut remaining) = TimeDelta::try_seconds(seconds) else {
            return DateTime::<Utc>::MAX_UTC;
        };
        let first = self.local_date(start);
        let mut day = Some(first.pred_opt().unwrap_or(first));
        // Ends within HORIZON_DAYS; and before, every calendar has a window of at least a
        // second, which contributes time every week except on DST-gap days and holidays.
        let mut days = 0_u32;
        while let Some(d) = day {
            days += 1;
            if days > HORIZON_DAYS {
                break;
            }
            for (s, e) in self.intervals(d) {
                let lo = s.max(start);
                if lo >= e {
                    continue;
                }
                let available = e - lo;
                if available >= remaining {
                    return lo + remaining;
                }
                remaining -= available;
            }
            day = d.succ_opt();
        }
        DateTime::<Utc>::MAX_UTC
    }

    fn local_date(&self, t: DateTime<Utc>) -> NaiveDate {
        t.with_timezone(&self.tz).date_naive()
    }

    /// The working intervals `[start, end)` of local date `date` in UTC, in order.
    ///
    /// Local-to-UTC resolution is monotone, so windows that are disjoint in local time stay
    /// disjoint (possibly empty, then skipped) in UTC, and all lie within the local day.
    fn intervals(
        &self,
        date: NaiveDate,
    ) -> impl Iterator<Item = (DateTime<Utc>, DateTime<Utc>)> + '_ {
        let windows: &[Window] = if self.holidays.contains(&date) {
            &[]
        } else {
            &self.windows[date.weekday().num_days_from_monday() as usize]
        };
        windows.iter().filter_map(move |w| {
            let s = self.resolve(date, w.start)?;
            let e = self.resolve(date, w.end)?;
            // A window swallowed by a spring-forward gap maps to an empty interval.
            (s < e).then_some((s, e))
        })
    }

    /// The UTC instant of `seconds` after local midnight of `date` (86 400 = next midnight).
    fn resolve(&self, date: NaiveDate, seconds: u32) -> Option<DateTime<Utc>> {
        let (date, seconds) = if seconds >= SECONDS_PER_DAY {
            (date.succ_opt()?, seconds - SECONDS_PER_DAY)
        } else {
            (date, seconds)
        };
        let time = NaiveTime::from_num_seconds_from_midnight_opt(seconds, 0)?;
        local_to_utc(self.tz, date.and_time(time))
    }
}

/// Converts a local wall-clock time to a UTC instant.
///
/// Unambiguous times map to their instant; times repeated by a fall-back map to the earliest;
/// times skipped by a spring-forward map to the first instant whose local time is at or after
/// the requested one, which is the transition instant itself (the end of the gap).
fn local_to_utc(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    match tz.from_local_datetime(&local) {
        MappedLocalTime::Single(t) => Some(t.with_timezone(&Utc)),
        MappedLocalTime::Ambiguous(a, b) => Some(a.min(b).with_timezone(&Utc)),
        MappedLocalTime::None => gap_end(tz, local),
    }
}

/// The instant at which the gap containing the nonexistent `local` ends.
///
/// chrono does not expose transitions, so we search for the first existing local time after
/// `local` (galloping, then bisecting to the second); that local time maps to the transition.
fn gap_end(tz: Tz, local: NaiveDateTime) -> Option<DateTime<Utc>> {
    let existing = |k: i64| {
        let shifted = local.checked_add_signed(TimeDelta::try_seconds(k)?)?;
        tz.from_local_datetime(&shifted)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
    };
    let (mut missing, mut present) = (0_i64, 1_i64);
    let mut found = loop {
        if present > 2 * MAX_GAP_SECONDS {
            return None;
        }
        if let Some(t) = existing(present) {
            break t;
        }
        missing = present;
        present *= 2;
    };
    // Invariant: `local + missing` is in the gap, `local + present` exists and maps to `found`.
    while present - missing > 1 {
        let mid = missing + (present - missing) / 2;
        match existing(mid) {
            Some(t) => {
                present = mid;
                found = t;
            }
            None => missing = mid,
        }
    }
    Some(found)
}

/// Parses `"HH:MM"` or `"HH:MM:SS"` to seconds after midnight; `"24:00"` is 86 400.
fn parse_time_of_day(s: &str) -> Option<u32> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return None;
    }
    let mut total = 0;
    for (part, (max, scale)) in parts.iter().zip([(24, 3600), (59, 60), (59, 1)]) {
        // Exactly two digits, so "9:00", "+9:00" and "09:00 " are rejected rather than guessed.
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let value: u32 = part.parse().ok().filter(|v| *v <= max)?;
        total += value * scale;
    }
    (total <= SECONDS_PER_DAY).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(day: Weekday, start: &str, end: &str) -> WindowSpec {
        WindowSpec {
            day,
            start: start.into(),
            end: end.into(),
        }
    }

    fn spec(windows: Vec<WindowSpec>) -> CalendarSpec {
        CalendarSpec {
            timezone: "Europe/London".into(),
            windows,
            holidays: vec![],
        }
    }

    fn field_of(spec: CalendarSpec) -> String {
        Calendar::new(spec)
            .expect_err("spec should be rejected")
            .field
    }

    /// One second of work a week and the longest SLA a policy takes: the deadline lies past
    /// the horizon, so it is never, found in ~366,000 days of work instead of ~95 million.
    #[test]
    fn a_deadline_beyond_the_horizon_is_never() {
        let thin = Calendar::new(spec(vec![window(Weekday::Mon, "09:00", "09:00:01")])).unwrap();
        let start = Utc.with_ymd_and_hms(2026, 1, 5, 8, 0, 0).unwrap();
        assert_eq!(
            thin.add_business_seconds(start, crate::MAX_DURATION_SECONDS),
            DateTime::<Utc>::MAX_UTC
        );
        // past the horizon means never, even where a (far) date exists: 53,000 Mondays, ~1,016 years
        assert_eq!(
            thin.add_business_seconds(start, 53_000),
            DateTime::<Utc>::MAX_UTC
        );
        // within the horizon it is found as before: the 100th Monday's second
        let due = thin.add_business_seconds(start, 100);
        assert_eq!(due, Utc.with_ymd_and_hms(2027, 11, 29, 9, 0, 1).unwrap());
        assert_eq!(thin.business_seconds_between(start, due), 100);
        // and an ordinary SLA on an ordinary calendar is unchanged
        let office = Calendar::new(spec(vec![window(Weekday::Mon, "09:00", "17:00")])).unwrap();
        assert_eq!(
            office.add_business_seconds(start, 9 * 3_600),
            Utc.with_ymd_and_hms(2026, 1, 12, 10, 0, 0).unwrap()
        );
        // as is the longest SLA on a working week of eight hours a day: ~420 years out
        let week: Vec<_> = [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ]
        .into_iter()
        .map(|d| window(d, "09:00", "17:00"))
        .collect();
        let week = Calendar::new(spec(week)).unwrap();
        let due = week.add_business_seconds(start, crate::MAX_DURATION_SECONDS);
        assert!(due.year() > 2400 && due.year() < 2500, "{due}");
    }

    #[test]
    fn times_of_day_parse_strictly() {
        assert_eq!(parse_time_of_day("00:00"), Some(0));
        assert_eq!(parse_time_of_day("09:30"), Some(34_200));
        assert_eq!(parse_time_of_day("17:30:15"), Some(63_015));
        assert_eq!(parse_time_of_day("24:00"), Some(86_400));
        for bad in [
            "24:01",
            "9:00",
            "09:60",
            "25:00",
            "09:00:60",
            "09",
            "",
            "ab:cd",
            "09:00:00:00",
        ] {
            assert_eq!(parse_time_of_day(bad), None, "{bad}");
        }
    }

    #[test]
    fn an_unknown_timezone_is_rejected() {
        let spec = CalendarSpec {
            timezone: "Mars/Olympus_Mons".into(),
            ..spec(vec![window(Weekday::Mon, "09:00", "17:00")])
        };
        assert_eq!(field_of(spec), "timezone");
    }

    #[test]
    fn a_calendar_without_windows_is_rejected() {
        assert_eq!(field_of(spec(vec![])), "windows");
    }

    #[test]
    fn an_unparsable_start_is_rejected_with_its_index() {
        let spec = spec(vec![
            window(Weekday::Mon, "09:00", "17:00"),
            window(Weekday::Tue, "9am", "17:00"),
        ]);
        assert_eq!(field_of(spec), "windows[1].start");
    }

    #[test]
    fn a_start_of_24_00_is_rejected() {
        let spec = spec(vec![window(Weekday::Mon, "24:00", "24:00")]);
        assert_eq!(field_of(spec), "windows[0].start");
    }

    #[test]
    fn an_unparsable_end_is_rejected_with_its_index() {
        let spec = spec(vec![window(Weekday::Mon, "09:00", "25:00")]);
        assert_eq!(field_of(spec), "windows[0].end");
    }

    #[test]
    fn an_end_not_after_the_start_is_rejected() {
        for (start, end) in [("17:00", "09:00"), ("09:00", "09:00")] {
            let spec = spec(vec![window(Weekday::Mon, start, end)]);
            assert_eq!(field_of(spec), "windows[0].end");
        }
    }

    #[test]
    fn overlapping_windows_on_the_same_day_are_rejected() {
        let spec = spec(vec![
            window(Weekday::Mon, "09:00", "12:00"),
            window(Weekday::Tue, "11:00", "13:00"),
            window(Weekday::Mon, "11:59", "13:00"),
        ]);
        assert_eq!(field_of(spec), "windows[2]");
    }

    #[test]
    fn adjacent_windows_and_the_same_hours_on_other_days_are_fine() {
        let calendar = Calendar::new(spec(vec![
            window(Weekday::Mon, "13:00", "17:00"),
            window(Weekday::Mon, "09:00", "13:00"),
            window(Weekday::Tue, "09:00", "13:00"),
        ]))
        .unwrap();
        // Monday 2026-06-01 09:00 BST = 08:00Z; the two windows join into one 8h stretch.
        let monday = Utc.with_ymd_and_hms(2026, 6, 1, 8, 0, 0).unwrap();
        assert_eq!(
            calendar.add_business_seconds(monday, 8 * 3600),
            Utc.with_ymd_and_hms(2026, 6, 1, 16, 0, 0).unwrap()
        );
    }

    #[test]
    fn a_calendar_spec_round_trips_through_json() {
        let spec = CalendarSpec {
            timezone: "America/New_York".into(),
            windows: vec![
                window(Weekday::Mon, "09:00", "17:30"),
                window(Weekday::Sat, "20:00", "24:00"),
            ],
            holidays: vec![NaiveDate::from_ymd_opt(2026, 12, 25).unwrap()],
        };
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "timezone": "America/New_York",
                "windows": [
                    {"day": "Mon", "start": "09:00", "end": "17:30"},
                    {"day": "Sat", "start": "20:00", "end": "24:00"}
                ],
                "holidays": ["2026-12-25"]
            })
        );
        assert_eq!(serde_json::from_value::<CalendarSpec>(json).unwrap(), spec);
        let calendar = Calendar::new(spec.clone()).unwrap();
        assert_eq!(calendar.spec(), &spec);
        assert_eq!(calendar.timezone(), chrono_tz::America::New_York);
    }

    #[test]
    fn holidays_default_to_none_and_unknown_fields_are_rejected() {
        let spec: CalendarSpec = serde_json::from_str(
            r#"{"timezone": "UTC", "windows": [{"day": "Mon", "start": "09:00", "end": "17:00"}]}"#,
        )
        .unwrap();
        assert!(spec.holidays.is_empty());
        for json in [
            r#"{"timezone": "UTC", "windows": [], "zone": "UTC"}"#,
            r#"{"timezone": "UTC", "windows": [{"day": "Mon", "start": "09:00", "end": "17:00", "tz": "UTC"}]}"#,
        ] {
            let err = serde_json::from_str::<CalendarSpec>(json).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
    }

    #[test]
    fn a_nonexistent_local_time_resolves_to_the_end_of_the_gap() {
        // New York springs forward at 2026-03-08 02:00 EST (07:00Z) to 03:00 EDT.
        let tz = chrono_tz::America::New_York;
        let local = NaiveDate::from_ymd_opt(2026, 3, 8)
            .unwrap()
            .and_hms_opt(2, 30, 0)
            .unwrap();
        assert_eq!(
            local_to_utc(tz, local),
            Some(Utc.with_ymd_and_hms(2026, 3, 8, 7, 0, 0).unwrap())
        );
        // An ambiguous local time resolves to its first occurrence (EDT, UTC-4).
        let local = NaiveDate::from_ymd_opt(2026, 11, 1)
            .unwrap()
            .and_hms_opt(1, 30, 0)
            .unwrap();
        assert_eq!(
            local_to_utc(tz, local),
            Some(Utc.with_ymd_and_hms(2026, 11, 1, 5, 30, 0).unwrap())
        );
    }

    #[test]
    fn samoa_skipping_a_whole_day_is_still_resolved() {
        // Pacific/Apia jumped from 2011-12-29 24:00 (UTC-10) to 2011-12-31 00:00 (UTC+14):
        // December 30 never happened there, so its noon resolves to 2011-12-30T10:00Z.
        let local = NaiveDate::from_ymd_opt(2011, 12, 30)
            .unwrap()
            .and_hms_opt(12, 0, 0)
            .unwrap();
        assert_eq!(
            local_to_utc(chrono_tz::Pacific::Apia, local),
            Some(Utc.with_ymd_and_hms(2011, 12, 30, 10, 0, 0).unwrap())
        );
    }
}
