//! The one place internal failures become `tonic::Status`.
//!
//! Each service has its own error enum, classified by what the caller can do about it, and an
//! exhaustive `From<Error> for Status`. Those impls use these helpers so that every service
//! answers internal failures the same way: the chain is logged with its source, the caller
//! gets a generic message and never a driver's text.

use std::{error::Error as StdError, fmt::Write as _, time::Duration};

use tonic::{Code, Status, metadata::MetadataValue};

/// Metadata key carrying how many seconds a rate-limited caller should wait.
pub const RETRY_AFTER: &str = "retry-after";

/// Logs `error` with its whole source chain and answers `INTERNAL` with a generic message.
#[must_use]
pub fn internal(error: &(dyn StdError + 'static)) -> Status {
    tracing::error!(message = "Internal error.", error = %chain(error));
    Status::internal("internal error")
}

/// Logs `error` and answers `UNAVAILABLE`: a dependency is down, retrying later may work.
#[must_use]
pub fn unavailable(error: &(dyn StdError + 'static)) -> Status {
    tracing::warn!(message = "Dependency unavailable.", error = %chain(error));
    Status::unavailable("a dependency is unavailable, retry later")
}

/// `RESOURCE_EXHAUSTED` with a `retry-after` entry, for rate limits.
#[must_use]
pub fn rate_limited(message: impl Into<String>, retry_after: Duration) -> Status {
    let mut status = Status::new(Code::ResourceExhausted, message);
    let secs = retry_after.as_secs().max(1);
    status
        .metadata_mut()
        .insert(RETRY_AFTER, MetadataValue::from(secs));
    status
}

/// The `retry-after` seconds of a status, if it carries one.
#[must_use]
pub fn retry_after(status: &Status) -> Option<u64> {
    status
        .metadata()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `error: source: source ...` on one line.
#[must_use]
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let _ = write!(out, ": {e}");
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn internal_hides_the_cause_from_the_caller() {
        let err = Outer(std::io::Error::other("password=hunter2"));
        assert_eq!(chain(&err), "outer: password=hunter2");
        let status = internal(&err);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("hunter2"));
    }

    #[test]
    fn rate_limited_carries_retry_after() {
        let status = rate_limited("slow down", Duration::from_millis(1500));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(retry_after(&status), Some(1));
    }
}
