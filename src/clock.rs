//! The relay's one notion of "now" as stored in the outbox and compared by the
//! publisher: Unix microseconds. A leaf: it knows nothing of the modules above it.

use time::OffsetDateTime;

/// Now as Unix microseconds.
pub(crate) fn now_micros() -> i64 {
    micros(OffsetDateTime::now_utc())
}

/// A time as Unix microseconds (saturating far outside the years anyone stores).
pub(crate) fn micros(t: OffsetDateTime) -> i64 {
    i64::try_from(t.unix_timestamp_nanos() / 1_000).unwrap_or(i64::MAX)
}

/// Unix microseconds back to a time; `None` outside the representable range.
pub(crate) fn from_micros(us: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn microseconds_round_trip() {
        let t = time::macros::datetime!(2026-11-30 12:34:56.789012 UTC);
        assert_eq!(from_micros(micros(t)), Some(t));
        assert_eq!(micros(OffsetDateTime::UNIX_EPOCH), 0);
    }
}
