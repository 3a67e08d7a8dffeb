//! The cron schedule in a time zone, DST-safe: every local wall-clock slot maps to exactly one
//! instant. A slot that does not exist (the spring-forward gap) runs at the end of the gap; a
//! slot that exists twice (fall-back) runs at its first occurrence. So a daily `0 30 2 * * *`
//! in America/New_York runs once on both transition days.

use std::str::FromStr;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A schedule that cannot be used, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// Not a cron expression with a seconds field.
    #[error(
        "ESCALATOR_SCHEDULE={expr:?}: {reason} (expected six or seven fields with seconds first, e.g. \"0 */15 * * * *\")"
    )]
    Cron {
        /// The expression.
        expr: String,
        /// The parser's complaint.
        reason: String,
    },
    /// Not an IANA zone.
    #[error("ESCALATOR_TIMEZONE={0:?}: not an IANA time zone such as UTC or Europe/London")]
    Timezone(String),
    /// Never fires.
    #[error("ESCALATOR_SCHEDULE={0:?}: the schedule never fires")]
    Never(String),
}

/// Most candidate slots examined per lookup (a guard against pathological expressions).
const MAX_CANDIDATES: usize = 100_000;

/// A parsed cron schedule in a zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    expr: String,
    cron: cron::Schedule,
    tz: Tz,
}

/// The fields of a cron expression as its parser reads them: spaces around `,`, `-` and `/`
/// belong to the field (`0 0 9, 17 * * MON` has six fields, not seven).
fn fields(expr: &str) -> Vec<String> {
    let joins = |c: char| matches!(c, ',' | '-' | '/');
    let chars: Vec<char> = expr.trim().chars().collect();
    let mut out = String::new();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_whitespace() {
            let before = chars[..i].iter().rev().find(|c| !c.is_whitespace());
            let after = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            if before.is_some_and(|&b| joins(b)) || after.is_some_and(|&a| joins(a)) {
                continue;
            }
        }
        out.push(c);
    }
    out.split_whitespace().map(str::to_owned).collect()
}

impl Schedule {
    /// Parses `expr` (seconds first) evaluated in the IANA zone `tz`.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, ScheduleError> {
        // the cron crate numbers weekdays as Quartz does (1 = Sunday, 0 refused), so the Unix
        // `1-5` meant Sunday to Thursday, silently: days of the week must be named
        let days = fields(expr).into_iter().nth(5);
        // Quartz's `#` (the nth weekday of the month) and `L` (the last) are not understood by
        // the parser, which named the part's digit as a numbered day ("SUN#2 is numeric")
        if let Some(days) = &days
            && days.contains(['#', 'L'])
        {
            return Err(ScheduleError::Cron {
                expr: expr.to_owned(),
                reason: format!(
                    "day of week {days:?}: the nth (`#`) or last (`L`) weekday of a month is not \
                     supported; name whole days (e.g. MON-FRI) and pick the dates with the day \
                     of month field (e.g. `0 0 9 8-14 * SUN` for the second Sunday)"
                ),
            });
        }
        if let Some(days) = days
            && days.split(',').any(|part| {
                // a step (`MON-FRI/2`, `*/2`) counts days, it names none
                part.split('/')
                    .next()
                    .is_some_and(|d| d.contains(|c: char| c.is_ascii_digit()))
            })
        {
            return Err(ScheduleError::Cron {
                expr: expr.to_owned(),
                reason: format!(
                    "day of week {days:?} is numeric, which cron dialects number differently \
                     (here 1 = Sunday): name the days, e.g. MON-FRI"
                ),
            });
        }
        let cron = cron::Schedule::from_str(expr.trim()).map_err(|e| ScheduleError::Cron {
            expr: expr.to_owned(),
            reason: e.to_string(),
        })?;
        let tz: Tz = tz
            .trim()
            .parse()
            .map_err(|_| ScheduleError::Timezone(tz.to_owned()))?;
        let schedule = Schedule {
            expr: expr.trim().to_owned(),
            cron,
            tz,
        };
        if schedule.next_after(Utc::now()).is_none() {
            return Err(ScheduleError::Never(expr.to_owned()));
        }
        Ok(schedule)
    }

    /// The expression.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The zone.
    pub fn timezone(&self) -> Tz {
        self.tz
    }

    /// The first slot strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Walk the wall-clock slots after `t`'s local time, map each to its instant, and take
        // the first one after `t`. A slot before that local time cannot map after `t`: repeated
        // times map to their first occurrence and skipped ones to the end of their gap.
        let start = t.with_timezone(&self.tz).naive_local();
        let naive_start = Utc.from_utc_datetime(&start);
        self.cron
            .after(&naive_start)
            .take(MAX_CANDIDATES)
            .map(|n| self.instant(n.naive_utc()))
            .find(|i| *i > t)
    }

    /// The slots in `(after, until]`, at most `limit` of them (the latest ones are kept).
    pub fn slots_between(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> (Vec<DateTime<Utc>>, u64) {
        let mut slots = std::collections::VecDeque::new();
        let mut total = 0u64;
        let mut t = after;
        while let Some(next) = self.next_after(t) {
            if next > until {
                break;
            }
            total += 1;
            slots.push_back(next);
            if slots.len() > limit {
                slots.pop_front();
            }
            t = next;
        }
        (slots.into(), total)
    }

    /// The instant of a local wall-clock time: the earliest if it repeats, the end of the gap
    /// if it does not exist.
    fn instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => d.with_timezone(&Utc),
            LocalResult::None => {
                // Gaps are at most a few hours and a whole number of minutes.
                (1..=24 * 60)
                    .map(|m| local + Duration::minutes(m))
                    .find_map(|later| match self.tz.from_local_datetime(&later) {
                        // the first wall-clock minute that exists: the end of the gap
                        LocalResult::Single(d) | LocalResult::Ambiguous(d, _) => {
                            Some(d.with_timezone(&Utc))
                        }
                        LocalResult::None => None,
                    })
                    .unwrap_or_else(|| local.and_utc())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_default_schedule_fires_every_quarter_hour() {
        let s = Schedule::parse("0 */15 * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-11-25T12:07:00Z")),
            Some(utc("2026-11-25T12:15:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-11-25T12:15:00Z")),
            Some(utc("2026-11-25T12:30:00Z"))
        );
        let (slots, total) =
            s.slots_between(utc("2026-11-25T12:00:00Z"), utc("2026-11-25T13:00:00Z"), 10);
        assert_eq!(total, 4);
        assert_eq!(slots.last(), Some(&utc("2026-11-25T13:00:00Z")));
    }

    #[test]
    fn an_nth_weekday_is_refused_for_what_it_is_and_the_suggested_form_works() {
        for expr in ["0 0 9 * * SUN#2", "0 0 9 * * FRIL", "0 0 9 * * MON,SUN#1"] {
            let e = Schedule::parse(expr, "UTC").unwrap_err().to_string();
            assert!(e.contains("nth (`#`) or last (`L`) weekday"), "{expr}: {e}");
            assert!(!e.contains("numeric"), "{expr}: {e}");
        }
        // what the error suggests: the day of month and the day of week must both match
        let s = Schedule::parse("0 0 9 8-14 * SUN", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc("2026-12-01T00:00:00Z")),
            Some(utc("2026-12-13T09:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2026-12-13T09:00:00Z")),
            Some(utc("2027-01-10T09:00:00Z"))
        );
    }

    #[test]
    fn a_daily_slot_runs_once_on_both_new_york_transition_days() {
        let s = Schedule::parse("0 30 2 * * *", "America/New_York").unwrap();
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist and runs at 03:00 EDT
        // (07:00Z). 2026-11-01: 02:00 EDT falls back to 01:00 EST; 02:30 EST happens once (07:30Z).
        let (march, n) =
            s.slots_between(utc("2026-03-06T12:00:00Z"), utc("2026-03-10T12:00:00Z"), 10);
        assert_eq!(n, 4);
        assert_eq!(
            march,
            [
                utc("2026-03-07T07:30:00Z"),
                utc("2026-03-08T07:00:00Z"),
                utc("2026-03-09T06:30:00Z"),
                utc("2026-03-10T06:30:00Z"),
            ]
        );
        let (november, n) =
            s.slots_between(utc("2026-10-30T12:00:00Z"), utc("2026-11-03T12:00:00Z"), 10);
        assert_eq!(n, 4);
        assert_eq!(
            november,
            [
                utc("2026-10-31T06:30:00Z"),
                utc("2026-11-01T07:30:00Z"),
                utc("2026-11-02T07:30:00Z"),
                utc("2026-11-03T07:30:00Z"),
            ]
        );
    }

    #[test]
    fn a_slot_in_the_repeated_hour_runs_once() {
        // 01:30 happens twice on 2026-11-01 in New York (05:30Z EDT, 06:30Z EST): once only
        let s = Schedule::parse("0 30 1 * * *", "America/New_York").unwrap();
        let (slots, n) =
            s.slots_between(utc("2026-10-31T12:00:00Z"), utc("2026-11-01T12:00:00Z"), 10);
        assert_eq!((n, slots), (1, vec![utc("2026-11-01T05:30:00Z")]));
    }

    #[test]
    fn bad_expressions_and_zones_name_the_variable() {
        let e = Schedule::parse("every 15 minutes", "UTC")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ESCALATOR_SCHEDULE="), "{e}");
        let e = Schedule::parse("0 */15 * * * *", "Mars/Olympus")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("ESCALATOR_TIMEZONE="), "{e}");
        assert!(matches!(
            Schedule::parse("0 0 0 1 1 * 2001", "UTC"),
            Err(ScheduleError::Never(_))
        ));
    }

    /// `0 0 9 * * 1-5` ran Sunday to Thursday (the cron crate's weekdays are Quartz's, 1 =
    /// Sunday); numeric weekdays are refused, named ones taken.
    #[test]
    fn weekdays_must_be_named() {
        for expr in [
            "0 0 9 * * 1-5",
            "0 0 9 * * 1",
            "0 0 9 * * 0",
            "0 0 9 * * MON,3",
            // spaces around a list or range belong to the field: still the weekdays
            "0 0 9, 17 * * 1-5",
            "0 0 9 * * 1 - 5",
        ] {
            let e = Schedule::parse(expr, "UTC").unwrap_err().to_string();
            assert!(e.contains("MON-FRI"), "{expr}: {e}");
        }
        // numbers elsewhere are fine: a month, a step
        for expr in ["0 0, 30 9 * 1 MON", "0 0 9 * * MON-FRI/2", "0 0 9 * * */2"] {
            assert!(Schedule::parse(expr, "UTC").is_ok(), "{expr}");
        }
        let weekdays = Schedule::parse("0 0 9 * * MON-FRI", "UTC").unwrap();
        // Friday 2026-12-04 09:00 is followed by Monday 2026-12-07 09:00
        assert_eq!(
            weekdays.next_after(utc("2026-12-04T09:00:00Z")),
            Some(utc("2026-12-07T09:00:00Z"))
        );
        assert!(Schedule::parse("0 */15 8-18 * * MON-FRI", "UTC").is_ok());
    }

    #[test]
    fn long_outages_keep_only_the_latest_slots_but_count_them_all() {
        let s = Schedule::parse("* * * * * *", "UTC").unwrap();
        let (slots, total) =
            s.slots_between(utc("2026-11-25T12:00:00Z"), utc("2026-11-25T12:10:00Z"), 5);
        assert_eq!(total, 600);
        assert_eq!(slots.len(), 5);
        assert_eq!(slots[4], utc("2026-11-25T12:10:00Z"));
    }
}
