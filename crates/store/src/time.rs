//! Timestamp handling shared by the backends: microsecond precision everywhere (PostgreSQL's),
//! and SQLite's fixed-width text form whose text order is time order.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

/// `t` truncated to whole microseconds, so that what is written is what is read back.
pub fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// SQLite's stored form: `2026-11-25T12:00:00.000000Z` — always the same width, so comparing
/// the text compares the instants.
pub fn sqlite_ts(t: DateTime<Utc>) -> String {
    micros(t).to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// [`sqlite_ts`] for optional values.
pub fn sqlite_opt(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(sqlite_ts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn sqlite_timestamps_have_one_width_and_sort_as_time() {
        let a = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let b = a + chrono::Duration::nanoseconds(1_500);
        assert_eq!(sqlite_ts(a), "2026-01-02T03:04:05.000000Z");
        assert_eq!(sqlite_ts(b), "2026-01-02T03:04:05.000001Z");
        assert!(sqlite_ts(a) < sqlite_ts(b));
    }
}
