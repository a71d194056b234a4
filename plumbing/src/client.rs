//! gRPC client channels to other services, with connect timeouts and per-call deadlines.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::{config::UpstreamConfig, telemetry::Upstream};

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
/// A comma-separated URL lists several instances: calls are balanced across them on the
/// client side (and an instance that is down is skipped). Calls are traced (a client span,
/// `traceparent` in the metadata) while traces are exported.
pub fn channel(upstream: &UpstreamConfig) -> Result<Upstream, InvalidUpstream> {
    let endpoints = crate::config::url_list(&upstream.url)
        .map(|url| {
            Endpoint::from_shared(url.to_owned())
                .map(|e| {
                    e.connect_timeout(CONNECT_TIMEOUT)
                        .timeout(Duration::from_millis(upstream.timeout_ms))
                        .tcp_nodelay(true)
                        .http2_keep_alive_interval(Duration::from_secs(30))
                        .keep_alive_while_idle(true)
                })
                .map_err(|source| InvalidUpstream {
                    url: url.to_owned(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    match endpoints.as_slice() {
        [] => Err(InvalidUpstream {
            url: upstream.url.clone(),
            source: Endpoint::from_shared(String::new()).expect_err("an empty URI is invalid"),
        }),
        [one] => Ok(Upstream::new(one.connect_lazy())),
        _ => Ok(Upstream::new(Channel::balance_list(endpoints.into_iter()))),
    }
}

/// Wraps a message in a request whose deadline (`grpc-timeout`) is `deadline`, so the server
/// stops working on it when the caller stops waiting.
pub fn with_deadline<T>(message: T, deadline: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(deadline);
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_or_several_instances_and_clear_errors() {
        assert!(channel(&UpstreamConfig::at("http://127.0.0.1:50051")).is_ok());
        assert!(
            channel(&UpstreamConfig::at(
                "http://127.0.0.1:1, http://127.0.0.1:2"
            ))
            .is_ok()
        );
        let err = channel(&UpstreamConfig::at("http://a b")).unwrap_err();
        assert!(err.to_string().contains("a b"), "{err}");
        assert!(channel(&UpstreamConfig::at(" , ")).is_err());
    }
}
