//! gRPC client channels to other services, with connect timeouts and per-call deadlines.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::config::UpstreamConfig;

/// How long establishing a connection may take before the call fails `UNAVAILABLE`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The upstream URL is not a valid URI.
#[derive(Debug, thiserror::Error)]
#[error("invalid upstream URL {url:?}")]
pub struct InvalidUpstream {
    url: String,
    #[source]
    source: tonic::transport::Error,
}

/// A lazily connecting channel: the service starts even while the upstream is down and
/// calls fail `UNAVAILABLE` until it is back. Every call carries the configured deadline.
pub fn channel(upstream: &UpstreamConfig) -> Result<Channel, InvalidUpstream> {
    let endpoint =
        Endpoint::from_shared(upstream.url.clone()).map_err(|source| InvalidUpstream {
            url: upstream.url.clone(),
            source,
        })?;
    Ok(endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(Duration::from_millis(upstream.timeout_ms))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Wraps a message in a request whose deadline (`grpc-timeout`) is `deadline`, so the server
/// stops working on it when the caller stops waiting.
pub fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}
