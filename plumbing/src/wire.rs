//! Conversions between the wire's well-known types and the types services use.

use time::OffsetDateTime;

/// A protobuf timestamp for `at`.
#[must_use]
pub fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: i32::try_from(at.nanosecond()).expect("nanoseconds fit in i32"),
    }
}

/// The instant of a protobuf timestamp, if it is a valid one.
#[must_use]
pub fn from_timestamp(ts: &prost_types::Timestamp) -> Option<OffsetDateTime> {
    let nanos = i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos);
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(from_timestamp(&timestamp(at)), Some(at));
    }
}
