//! Time in the contract's formats, on jiff: the ISO-8601 UTC stamps of
//! meta.json (`2026-11-26T16:54:26.123456Z`), log-line stamps, and the
//! conversions readers need (microseconds, whole seconds since the epoch).

/// ISO-8601 UTC with microseconds and `Z`, e.g. `2026-11-26T16:54:26.123456Z`
/// (the contract's time format).
pub fn iso8601_utc(t: std::time::SystemTime) -> String {
    utc(t).strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// `YYYY-MM-DD HH:MM:SS.mmm` in UTC, for log lines.
pub fn log_timestamp(t: std::time::SystemTime) -> String {
    utc(t).strftime("%Y-%m-%d %H:%M:%S.%3f").to_string()
}

/// Parses an ISO-8601 timestamp with an offset (the contract's `Z` form
/// included) into microseconds since the epoch.
pub fn parse_iso8601_micros(s: &str) -> Option<i64> {
    s.trim().parse::<jiff::Timestamp>().ok().map(|t| t.as_microsecond())
}

/// The instant as a jiff timestamp (formats in UTC).
fn utc(t: std::time::SystemTime) -> jiff::Timestamp {
    jiff::Timestamp::try_from(t).unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

/// Whole seconds since the epoch of an ISO-8601 time with an offset (the
/// contract's `Z` form included; fraction optional), rounded down.
pub fn unix_seconds(s: &str) -> Option<i64> {
    parse_iso8601_micros(s).map(|us| us.div_euclid(1_000_000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn iso8601_formats_known_instants() {
        let t = UNIX_EPOCH + Duration::from_micros(1_764_164_852_123_456);
        assert_eq!(iso8601_utc(t), "2025-11-26T13:47:32.123456Z");
        assert_eq!(iso8601_utc(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&iso8601_utc(leap)[..10], "2000-02-29");
        assert_eq!(log_timestamp(t), "2025-11-26 13:47:32.123");
        assert_eq!(
            parse_iso8601_micros("2025-11-26T13:47:32.123456Z"),
            Some(1_764_164_852_123_456)
        );
        assert_eq!(parse_iso8601_micros("yesterday"), None);
    }

    #[test]
    fn unix_seconds_inverts_iso8601() {
        for secs in [0u64, 951_782_400, 1_764_164_852, 4_102_444_800] {
            let iso = iso8601_utc(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(999_999));
            assert_eq!(unix_seconds(&iso), Some(secs as i64), "{iso}");
        }
        assert_eq!(unix_seconds("2026-01-01T00:00:00Z"), Some(1_767_225_600));
        assert_eq!(unix_seconds("yesterday"), None);
        assert_eq!(unix_seconds("2026-13-01T00:00:00Z"), None);
    }
}
