//! Timestamps as the database stores them (microseconds since the Unix epoch,
//! an integer both backends and the `Any` driver understand) and as the
//! contracts carry them.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

pub fn to_timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_before_and_after_the_epoch() {
        assert_eq!(to_timestamp(1_500_000).seconds, 1);
        assert_eq!(to_timestamp(1_500_000).nanos, 500_000_000);
        assert_eq!(to_timestamp(-1).seconds, -1);
        assert_eq!(to_timestamp(-1).nanos, 999_999_000);
    }
}
