//! Calendar days in the configured IANA time zone (DESIGN §5.3): the unit of the daily delta.
//!
//! A day is stored as a `u32` count of days from the Common Era (chrono's
//! `num_days_from_ce`), so that days sort numerically in store keys. DST days are 23 or 25
//! hours long; that falls out of converting instants to local dates in the zone.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

/// The zone used when none is configured: the Repository publishes on UK calendar days.
pub const DEFAULT_TIME_ZONE: &str = "Europe/London";

/// The calendar day (in `tz`) of an instant given in Unix milliseconds.
pub fn day_of_millis(tz: Tz, unix_ms: i64) -> u32 {
    let utc = DateTime::<Utc>::from_timestamp_millis(unix_ms).unwrap_or(DateTime::<Utc>::MIN_UTC);
    utc.with_timezone(&tz).date_naive().num_days_from_ce() as u32
}

/// The date of a stored day number.
pub fn date_of_day(day: u32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day as i32).expect("valid day number")
}

/// The stored day number of a date.
pub fn day_of_date(date: NaiveDate) -> u32 {
    date.num_days_from_ce() as u32
}

/// Start of `date` in `tz` as Unix milliseconds (midnight, or the first instant after it when
/// midnight does not exist in the zone).
pub fn start_of_day_millis(tz: Tz, date: NaiveDate) -> i64 {
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight");
    match tz.from_local_datetime(&midnight) {
        chrono::LocalResult::Single(t) => t.timestamp_millis(),
        chrono::LocalResult::Ambiguous(a, _) => a.timestamp_millis(),
        chrono::LocalResult::None => tz
            .from_local_datetime(&(midnight + chrono::Duration::hours(1)))
            .earliest()
            .expect("an hour after a DST gap exists")
            .timestamp_millis(),
    }
}

/// Parse an IANA zone name with an error that says what was wrong.
pub fn parse_time_zone(name: &str) -> anyhow::Result<Tz> {
    name.parse::<Tz>()
        .map_err(|_| anyhow::anyhow!("unknown IANA time zone {name:?} (e.g. Europe/London)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis()
    }

    #[test]
    fn london_days_follow_local_midnight_in_summer_and_winter() {
        let tz: Tz = DEFAULT_TIME_ZONE.parse().unwrap();
        // BST: 23:30 UTC on 1 July is 00:30 on 2 July in London.
        let d = date_of_day(day_of_millis(tz, ms("2026-07-01T23:30:00Z")));
        assert_eq!(d, NaiveDate::from_ymd_opt(2026, 7, 2).unwrap());
        // GMT: 23:30 UTC on 1 December is still 1 December.
        let d = date_of_day(day_of_millis(tz, ms("2026-12-01T23:30:00Z")));
        assert_eq!(d, NaiveDate::from_ymd_opt(2026, 12, 1).unwrap());
    }

    #[test]
    fn dst_days_are_23_and_25_hours() {
        let tz: Tz = DEFAULT_TIME_ZONE.parse().unwrap();
        let len = |y, m, d| {
            let a = NaiveDate::from_ymd_opt(y, m, d).unwrap();
            let b = a.succ_opt().unwrap();
            (start_of_day_millis(tz, b) - start_of_day_millis(tz, a)) / 3_600_000
        };
        assert_eq!(len(2026, 3, 29), 23);
        assert_eq!(len(2026, 10, 25), 25);
        assert_eq!(len(2026, 6, 1), 24);
    }

    #[test]
    fn day_numbers_round_trip_and_sort() {
        let a = NaiveDate::from_ymd_opt(2026, 12, 31).unwrap();
        let b = NaiveDate::from_ymd_opt(2027, 1, 1).unwrap();
        assert_eq!(date_of_day(day_of_date(a)), a);
        assert!(day_of_date(a) < day_of_date(b));
        assert!(parse_time_zone("Mars/Olympus").is_err());
    }
}
