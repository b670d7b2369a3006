//! When a request is due, by the requester's jurisdiction: GDPR (and UK
//! GDPR) one calendar month after receipt, extendable once by two more
//! months (Art. 12(3)); CCPA 45 days, extendable once by 45 more
//! (Cal. Civ. Code 1798.130(a)(2)). A month is a calendar month: the same
//! day of the next month, or its last day when the next month is shorter
//! (received 31 January, due 28 or 29 February), as the EU's rule on
//! periods (Regulation 1182/71) counts it.

use custodian_proto::dsr::v1::Jurisdiction;
use time::{Date, Duration, OffsetDateTime, util::days_in_month};

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// The due time of a request received at `receive` (microseconds).
pub fn due(jurisdiction: Jurisdiction, receive: i64) -> Option<i64> {
    match jurisdiction {
        Jurisdiction::Gdpr | Jurisdiction::UkGdpr => add_months(receive, 1),
        Jurisdiction::Ccpa => Some(receive + 45 * MICROS_PER_DAY),
        Jurisdiction::Unspecified => None,
    }
}

/// The due time after the one extension the law allows, from the first
/// due time.
pub fn extended(jurisdiction: Jurisdiction, due: i64) -> Option<i64> {
    match jurisdiction {
        Jurisdiction::Gdpr | Jurisdiction::UkGdpr => add_months(due, 2),
        Jurisdiction::Ccpa => Some(due + 45 * MICROS_PER_DAY),
        Jurisdiction::Unspecified => None,
    }
}

/// `micros` plus `months` calendar months, at the same time of day.
fn add_months(micros: i64, months: u8) -> Option<i64> {
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()?;
    let date = at.date();
    let mut month = date.month();
    let mut year = date.year();
    for _ in 0..months {
        month = month.next();
        if month == time::Month::January {
            year += 1;
        }
    }
    let day = date.day().min(days_in_month(month, year));
    let moved = Date::from_calendar_date(year, month, day).ok()?;
    let shifted = at.replace_date(moved);
    let nanos = shifted.unix_timestamp_nanos();
    i64::try_from(nanos / 1000).ok()
}

/// Whole days from `now` until `due`, rounded up; negative when late.
pub fn days_left(now: i64, due: i64) -> i64 {
    let left = Duration::microseconds(due - now);
    let days = left.whole_days();
    if left > Duration::days(days) {
        days + 1
    } else {
        days
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, m: u8, d: u8) -> i64 {
        let date = Date::from_calendar_date(y, time::Month::try_from(m).unwrap(), d).unwrap();
        (date.midnight().assume_utc().unix_timestamp_nanos() / 1000) as i64 + 3_600_000_000
    }

    #[test]
    fn gdpr_is_a_calendar_month_clamped_to_the_last_day() {
        assert_eq!(
            due(Jurisdiction::Gdpr, at(2026, 3, 15)),
            Some(at(2026, 4, 15))
        );
        assert_eq!(
            due(Jurisdiction::Gdpr, at(2026, 1, 31)),
            Some(at(2026, 2, 28))
        );
        assert_eq!(
            due(Jurisdiction::UkGdpr, at(2028, 1, 31)),
            Some(at(2028, 2, 29))
        );
        assert_eq!(
            due(Jurisdiction::Gdpr, at(2026, 12, 5)),
            Some(at(2027, 1, 5))
        );
        // Extended by two months from the first due time.
        assert_eq!(
            extended(Jurisdiction::Gdpr, at(2026, 12, 31)),
            Some(at(2027, 2, 28))
        );
    }

    #[test]
    fn ccpa_is_45_days_and_45_more() {
        assert_eq!(
            due(Jurisdiction::Ccpa, at(2026, 1, 1)),
            Some(at(2026, 2, 15))
        );
        assert_eq!(
            extended(Jurisdiction::Ccpa, at(2026, 2, 15)),
            Some(at(2026, 4, 1))
        );
        assert_eq!(due(Jurisdiction::Unspecified, at(2026, 1, 1)), None);
    }

    #[test]
    fn days_left_rounds_up_and_goes_negative() {
        let now = at(2026, 1, 1);
        assert_eq!(days_left(now, now + MICROS_PER_DAY / 2), 1);
        assert_eq!(days_left(now, now + 3 * MICROS_PER_DAY), 3);
        assert_eq!(days_left(now, now - 2 * MICROS_PER_DAY), -2);
    }
}
