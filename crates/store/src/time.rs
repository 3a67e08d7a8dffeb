//! Timestamp handling shared by the backends: microsecond precision everywhere (PostgreSQL's),
//! and SQLite's fixed-width text form whose text order is time order.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

/// `t` truncated to whole microseconds, so that what is written is what is read back.
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// SQLite's stored form: `2026-11-25T12:00:00.000000Z` — always the same width, so comparing
/// the text compares the instants. Instants after the end of year 9999 are stored as [`LATEST`]:
/// a deadline that is never (`DateTime::<Utc>::MAX_UTC`, year 262143) would be written
/// `+262143-…`, which sorts before every four-digit year, and so be due at every check.
pub fn sqlite_ts(t: DateTime<Utc>) -> String {
    if chrono::Datelike::year(&t) > 9999 {
        return LATEST.to_owned();
    }
    micros(t).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// [`sqlite_ts`] for optional values.
pub fn sqlite_opt(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(sqlite_ts)
}

/// The earliest instant accepted from callers.
pub const EARLIEST: &str = "1970-01-01T00:00:00Z";
/// The latest instant accepted from callers.
pub const LATEST: &str = "9999-12-31T23:59:59.999999Z";

/// Checks an instant given by a caller: from 1970 to the end of year 9999, the range both
/// backends store and order alike (SQLite's text form needs a four-digit year; PostgreSQL
/// refuses years past 294276 or before 4713 BC). Returns it at microsecond precision, as it
/// will be read back.
pub fn check_instant(field: &'static str, t: DateTime<Utc>) -> crate::Result<DateTime<Utc>> {
    let year = chrono::Datelike::year(&t);
    if (1970..=9999).contains(&year) {
        Ok(micros(t))
    } else {
        Err(crate::StoreError::Invalid {
            field,
            message: format!("must be between {EARLIEST} and {LATEST}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn a_deadline_that_is_never_sorts_after_every_instant() {
        let never = sqlite_ts(DateTime::<Utc>::MAX_UTC);
        assert_eq!(never, LATEST);
        let late = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
        assert!(sqlite_ts(late) <= never && sqlite_ts(Utc::now()) < never);
    }

    #[test]
    fn sqlite_timestamps_have_one_width_and_sort_as_time() {
        let a = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let b = a + chrono::Duration::nanoseconds(1_500);
        assert_eq!(sqlite_ts(a), "2026-01-02T03:04:05.000000Z");
        assert_eq!(sqlite_ts(b), "2026-01-02T03:04:05.000001Z");
        assert!(sqlite_ts(a) < sqlite_ts(b));
    }

    #[test]
    fn instants_outside_the_four_digit_years_are_refused_naming_the_field() {
        let far = Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap();
        let err = check_instant("as_of", far).unwrap_err();
        assert!(err.to_string().contains("as_of"), "{err}");
        let early = Utc.with_ymd_and_hms(1969, 12, 31, 23, 59, 59).unwrap();
        assert!(check_instant("stage_started_at", early).is_err());
        let fine = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
            + chrono::Duration::nanoseconds(1_234_567);
        assert_eq!(
            check_instant("as_of", fine).unwrap(),
            Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
                + chrono::Duration::microseconds(1_234)
        );
    }
}
