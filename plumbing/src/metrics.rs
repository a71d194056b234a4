//! Prometheus metrics: each service instance owns one [`Registry`] (never a global one, so
//! several instances in one process, as in tests, keep their own series) and serves it as
//! OpenMetrics text at `GET /metrics`: the gRPC services on their gRPC port (HTTP/1.1 beside
//! HTTP/2), the HTTP services on their HTTP port.
//!
//! Shared series (the names on-call dashboards for gRPC and HTTP services already know):
//! - [`RpcMetrics`]: `grpc_server_handled_total{grpc_service, grpc_method, grpc_code}` and
//!   `grpc_server_handling_seconds{grpc_service, grpc_method}` (a histogram), recorded by a
//!   layer of [`crate::grpc::GrpcServer`]. A streaming call is timed to its first response.
//! - [`HttpMetrics`]: `http_server_requests_total{method, route, status}` and
//!   `http_server_request_duration_seconds{method, route}`, by matched route pattern (never the
//!   raw path, whose ids would make a series per resource).
//!
//! - [`ConsumerMetrics`]: `tertulia_jetstream_consumer_pending{stream, consumer}` (messages not
//!   yet delivered) and `tertulia_jetstream_consumer_ack_pending` (delivered, not yet acked),
//!   sampled every [`SAMPLE_EVERY`].
//!
//! Each service adds its own `tertulia_*` series to the same registry.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use axum::{
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
pub use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tower::{Layer, Service};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry's series as OpenMetrics text.
#[must_use]
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String cannot fail");
    text
}

/// `GET /metrics` for an axum router whose state is the registry.
pub async fn serve(State(registry): State<Arc<Registry>>) -> Response {
    (
        [(http::header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&registry),
    )
        .into_response()
}

/// How often sampled gauges are refreshed.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `sample` every [`SAMPLE_EVERY`] until `shutdown` trips (for gauges read from
/// elsewhere: a database count, a broker's consumer state).
pub async fn sample_until<F, Fut>(shutdown: crate::shutdown::Shutdown, mut sample: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => sample().await,
        }
    }
}

/// Labels of a JetStream consumer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ConsumerLabels {
    stream: String,
    consumer: String,
}

/// Backlog gauges of durable JetStream consumers.
#[derive(Debug, Clone, Default)]
pub struct ConsumerMetrics {
    pending: Family<ConsumerLabels, Gauge>,
    ack_pending: Family<ConsumerLabels, Gauge>,
}

impl ConsumerMetrics {
    /// The gauges, registered with `registry`.
    #[must_use]
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "tertulia_jetstream_consumer_pending",
            "Messages of the stream not yet delivered to the consumer",
            metrics.pending.clone(),
        );
        registry.register(
            "tertulia_jetstream_consumer_ack_pending",
            "Messages delivered to the consumer and not yet acknowledged",
            metrics.ack_pending.clone(),
        );
        metrics
    }

    /// Samples `consumer` of `stream` (names without namespace) until `shutdown` trips. A
    /// failed sample keeps the last values and logs at debug: the consumer may not exist yet.
    pub async fn watch(
        self,
        nats: crate::nats::Nats,
        stream: &'static str,
        consumer: &'static str,
        shutdown: crate::shutdown::Shutdown,
    ) {
        let labels = ConsumerLabels {
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
        };
        // The series exist from the start, at 0 until the first sample.
        drop(self.pending.get_or_create(&labels));
        drop(self.ack_pending.get_or_create(&labels));
        sample_until(shutdown, || async {
            match nats.consumer_backlog(stream, consumer).await {
                Ok((pending, ack_pending)) => {
                    self.pending
                        .get_or_create(&labels)
                        .set(i64::try_from(pending).unwrap_or(i64::MAX));
                    self.ack_pending
                        .get_or_create(&labels)
                        .set(i64::try_from(ack_pending).unwrap_or(i64::MAX));
                }
                Err(error) => {
                    tracing::debug!(message = "Consumer state not sampled.", stream, consumer, %error);
                }
            }
        })
        .await;
    }
}

/// A histogram family's constructor.
type Buckets = fn() -> Histogram;

/// A histogram with latency buckets from 0.5 ms to about 16 s.
#[must_use]
pub fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Labels of a handled call (the names dashboards for gRPC servers use).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
#[expect(
    clippy::struct_field_names,
    reason = "the label names are the convention"
)]
struct RpcCall {
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
}

/// Labels of a timed call.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RpcMethod {
    grpc_service: String,
    grpc_method: String,
}

/// RED series of a gRPC server.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    handled: Family<RpcCall, Counter>,
    handling: Family<RpcMethod, Histogram, Buckets>,
}

impl RpcMetrics {
    /// The series, registered with `registry`.
    #[must_use]
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            handled: Family::default(),
            handling: Family::new_with_constructor(latency),
        };
        registry.register(
            "grpc_server_handled",
            "gRPC calls completed, by method and status code",
            metrics.handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Time to answer a gRPC call (to the first response of a stream)",
            metrics.handling.clone(),
        );
        metrics
    }

    fn observe(&self, path: &str, code: i32, seconds: f64) {
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("unknown", "unknown"));
        let method = RpcMethod {
            grpc_service: service.to_owned(),
            grpc_method: method.to_owned(),
        };
        self.handling.get_or_create(&method).observe(seconds);
        self.handled
            .get_or_create(&RpcCall {
                grpc_service: method.grpc_service,
                grpc_method: method.grpc_method,
                grpc_code: code_name(code),
            })
            .inc();
    }
}

/// The canonical name of a gRPC status code.
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("UNKNOWN")
}

/// Records [`RpcMetrics`] for every gRPC call (other requests on the port pass untouched).
#[derive(Debug, Clone)]
pub struct RpcMetricsLayer {
    metrics: RpcMetrics,
}

impl RpcMetricsLayer {
    /// The layer recording into `metrics`.
    #[must_use]
    pub fn new(metrics: RpcMetrics) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct RpcMetricsService<S> {
    inner: S,
    metrics: RpcMetrics,
}

impl<S, B, RB> Service<http::Request<B>> for RpcMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        let call = self.inner.call(request);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let result = call.await;
            if grpc {
                let code = result
                    .as_ref()
                    .map_or(2, |r| crate::telemetry::grpc_status(r.headers()));
                metrics.observe(&path, code, started.elapsed().as_secs_f64());
            }
            result
        })
    }
}

/// Labels of an answered HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpAnswer {
    method: String,
    route: String,
    status: u16,
}

/// Labels of a timed HTTP request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpRoute {
    method: String,
    route: String,
}

/// RED series of an HTTP server, by matched route.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<HttpAnswer, Counter>,
    duration: Family<HttpRoute, Histogram, Buckets>,
}

impl HttpMetrics {
    /// The series, registered with `registry`.
    #[must_use]
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(latency),
        };
        registry.register(
            "http_server_requests",
            "HTTP requests answered, by method, route pattern and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_server_request_duration_seconds",
            "Time to answer an HTTP request (to its response head)",
            metrics.duration.clone(),
        );
        metrics
    }
}

/// axum middleware recording [`HttpMetrics`] (install with `from_fn_with_state`). Requests
/// that match no route count under `route="unmatched"`.
pub async fn record_http(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let timed = HttpRoute { method, route };
    metrics
        .duration
        .get_or_create(&timed)
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&HttpAnswer {
            method: timed.method,
            route: timed.route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct Labels {
        route: String,
    }

    #[test]
    fn families_render_as_openmetrics() {
        let mut registry = Registry::with_prefix("tertulia");
        let calls = Family::<Labels, Counter>::default();
        registry.register("calls", "Calls", calls.clone());
        calls
            .get_or_create(&Labels {
                route: "/ws".into(),
            })
            .inc();
        let text = render(&registry);
        assert!(
            text.contains("tertulia_calls_total{route=\"/ws\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn rpc_calls_are_named_by_service_method_and_code() {
        let mut registry = Registry::default();
        let metrics = RpcMetrics::new(&mut registry);
        metrics.observe("/tertulia.chat.v1.ChatService/SendMessage", 0, 0.002);
        metrics.observe("/tertulia.chat.v1.ChatService/SendMessage", 5, 0.001);
        metrics.observe("/odd", 99, 0.001);
        let text = render(&registry);
        for series in [
            r#"grpc_server_handled_total{grpc_service="tertulia.chat.v1.ChatService",grpc_method="SendMessage",grpc_code="OK"} 1"#,
            r#"grpc_server_handled_total{grpc_service="tertulia.chat.v1.ChatService",grpc_method="SendMessage",grpc_code="NOT_FOUND"} 1"#,
            r#"grpc_server_handling_seconds_count{grpc_service="tertulia.chat.v1.ChatService",grpc_method="SendMessage"} 2"#,
            r#"grpc_code="UNKNOWN""#,
        ] {
            assert!(text.contains(series), "{series} in {text}");
        }
    }
}
