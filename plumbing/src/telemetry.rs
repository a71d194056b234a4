//! Traces: OpenTelemetry spans exported over OTLP when the standard variables ask for it, and
//! W3C `traceparent` carried across every hop, so one user action is one trace.
//!
//! Exporting is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (unless `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`). The protocol is
//! `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc`,
//! `http/protobuf` (the default) or `http/json`. The SDK reads the other standard variables
//! itself (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_HEADERS`, timeouts).
//!
//! When exporting is off no OpenTelemetry layer is installed and every span helper here
//! answers [`Span::none`] at once: the hot paths (fan-out, socket writes) pay one atomic load.
//!
//! Where the context travels, always as one W3C `traceparent` value:
//! - HTTP: the `traceparent` request header ([`trace_http`]);
//! - gRPC: the `traceparent` metadata key, injected by [`Upstream`] and read by
//!   [`GrpcTraceLayer`];
//! - NATS: the `traceparent` message header ([`nats_traceparent`], [`producer_span`],
//!   [`consumer_span`]);
//! - anything stored for later (the chat outbox) or carried in a frame: the same string,
//!   from [`current_traceparent`] and back through [`follow`].
//!
//! Span names and attributes follow the OpenTelemetry conventions: RPC spans are
//! `package.Service/Method` with `rpc.system`, `rpc.service`, `rpc.method` and
//! `rpc.grpc.status_code`; messaging spans are `{operation} {destination}` with
//! `messaging.system = nats`, `messaging.operation.type`, `messaging.destination.name`;
//! HTTP spans are `{method} {route}` with `http.request.method`, `http.route` and
//! `http.response.status_code`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator as _},
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    propagation::TraceContextPropagator,
    trace::{SdkTracerProvider, SpanData, SpanExporter},
};
use tower::{Layer, Service};
use tracing::{Instrument as _, Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{fmt, layer::SubscriberExt as _, util::SubscriberInitExt as _};

use crate::{grpc::BoxFuture, logging};

/// The header, metadata key and frame field that carry the context.
pub const TRACEPARENT: &str = "traceparent";

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (so worth creating and propagating).
#[must_use]
pub fn enabled() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Logs and (when configured) traces of one process; [`Telemetry::shutdown`] flushes them.
#[derive(Debug)]
#[must_use = "dropping the handle without shutdown may lose the last spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Installs logging and, when the environment asks for it, the OTLP trace exporter for
/// `service` (its `service.name` unless `OTEL_SERVICE_NAME` says otherwise). Must run inside
/// the Tokio runtime: exports are driven by it. Calling it twice keeps the first setup.
pub fn init(service: &'static str) -> Telemetry {
    let exporter = requested().map(|protocol| {
        let builder = opentelemetry_otlp::SpanExporter::builder();
        let built = match protocol {
            Protocol::Grpc => builder.with_tonic().build(),
            Protocol::Http => builder.with_http().build(),
        };
        (protocol, built)
    });
    let mut failure = None;
    let provider = match exporter {
        Some((_, Ok(exporter))) => Some(provider(service, exporter)),
        Some((protocol, Err(error))) => {
            failure = Some((protocol, error.to_string()));
            None
        }
        None => None,
    };
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_location(false)
            .with_threads(false)
    });
    let registry = tracing_subscriber::registry()
        .with(logging::filter())
        .with(otel);
    let installed = if logging::json() {
        registry.with(logging::json_layer()).try_init()
    } else {
        registry.with(fmt::layer().compact()).try_init()
    };
    if installed.is_err() {
        // Someone set up tracing first (a test): keep theirs, export nothing from here.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Telemetry { provider: None };
    }
    EXPORTING.store(provider.is_some(), Ordering::Relaxed);
    match (&provider, failure) {
        (Some(_), _) => tracing::info!(
            message = "Logging initialised; exporting traces over OTLP.",
            service,
            protocol = ?requested()
        ),
        (None, Some((protocol, error))) => tracing::error!(
            message =
                "Logging initialised; the OTLP trace exporter is misconfigured, traces are off.",
            service,
            ?protocol,
            error
        ),
        (None, None) => tracing::info!(message = "Logging initialised.", service),
    }
    Telemetry { provider }
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter, bounded by `timeout`.
    pub async fn shutdown(self, timeout: Duration) {
        let Some(provider) = self.provider else {
            return;
        };
        EXPORTING.store(false, Ordering::Relaxed);
        // The SDK blocks while it flushes; the export itself runs on this runtime.
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
        match flushed {
            Ok(Ok(())) => tracing::info!(message = "Traces flushed."),
            Ok(Err(error)) => tracing::warn!(message = "Traces not flushed.", %error),
            Err(error) => tracing::warn!(message = "Traces not flushed.", %error),
        }
    }
}

/// The OTLP transport the environment asks for.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Grpc,
    Http,
}

fn requested() -> Option<Protocol> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let off = |name: &str, value: &str| var(name).is_some_and(|v| v.eq_ignore_ascii_case(value));
    if off("OTEL_SDK_DISABLED", "true") || off("OTEL_TRACES_EXPORTER", "none") {
        return None;
    }
    var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
    let protocol =
        var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
    Some(match protocol.as_deref() {
        Some("grpc") => Protocol::Grpc,
        _ => Protocol::Http,
    })
}

fn provider(
    service: &'static str,
    exporter: opentelemetry_otlp::SpanExporter,
) -> SdkTracerProvider {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let exporter = OnRuntime {
        exporter: Arc::new(exporter),
        runtime: tokio::runtime::Handle::current(),
    };
    SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build()
}

/// Runs exports on the service's Tokio runtime: the SDK's batch processor calls the exporter
/// from its own thread, where the gRPC and HTTP clients would find no reactor.
#[derive(Debug)]
struct OnRuntime<E> {
    exporter: Arc<E>,
    runtime: tokio::runtime::Handle,
}

impl<E: SpanExporter + 'static> SpanExporter for OnRuntime<E> {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let exporter = Arc::clone(&self.exporter);
        let export = self
            .runtime
            .spawn(async move { exporter.export(batch).await });
        async move {
            export
                .await
                .unwrap_or_else(|e| Err(OTelSdkError::InternalFailure(e.to_string())))
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.exporter.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.exporter.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once while the provider is built, before any export shares the exporter.
        if let Some(exporter) = Arc::get_mut(&mut self.exporter) {
            exporter.set_resource(resource);
        }
    }
}

/// One `traceparent` value as a propagation carrier.
#[derive(Default)]
struct Carrier(Option<String>);

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

/// The `traceparent` of `span`, when spans are exported and it has one.
#[must_use]
pub fn traceparent(span: &Span) -> Option<String> {
    if !enabled() || span.is_none() {
        return None;
    }
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Carrier::default();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0
}

/// The `traceparent` of the current span (to store with work done later, or to send on).
#[must_use]
pub fn current_traceparent() -> Option<String> {
    traceparent(&Span::current())
}

/// The remote context a `traceparent` value names, if it is well formed.
fn remote(traceparent: Option<&str>) -> Option<Context> {
    let carrier = Carrier(Some(traceparent?.trim().to_owned()));
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_valid().then_some(context)
}

/// Makes `span` a child of the context `traceparent` names (a malformed value is ignored:
/// the span starts a trace of its own). Call it before the span is first entered.
pub fn follow(span: &Span, traceparent: Option<&str>) {
    if span.is_none() {
        return;
    }
    if let Some(context) = remote(traceparent) {
        let _ = span.set_parent(context);
    }
}

/// A span created only while spans are exported.
fn span_if(make: impl FnOnce() -> Span) -> Span {
    if enabled() { make() } else { Span::none() }
}

/// A producer span for publishing to `destination` (a subject), named after `target`, a
/// low-cardinality name of the destination (a stream, or a subject template).
#[must_use]
pub fn producer_span(target: &str, destination: &str) -> Span {
    span_if(|| {
        tracing::info_span!(
            "messaging",
            otel.name = %format!("send {target}"),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.operation.name = "send",
            messaging.destination.name = destination,
            messaging.message.id = Empty,
        )
    })
}

/// A consumer span for a message from `destination` that carried `traceparent`: the
/// producer's span is both its parent (one trace across the broker) and a link (the
/// messaging conventions' producer-consumer relation). `group` is the consumer's name.
#[must_use]
pub fn consumer_span(
    target: &str,
    destination: &str,
    group: &str,
    traceparent: Option<&str>,
) -> Span {
    let span = span_if(|| {
        tracing::info_span!(
            "messaging",
            otel.name = %format!("process {target}"),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.operation.name = "process",
            messaging.destination.name = destination,
            messaging.consumer.group.name = group,
            otel.status_code = Empty,
        )
    });
    if span.is_none() {
        return span;
    }
    if let Some(producer) = remote(traceparent) {
        let link = producer.span().span_context().clone();
        let _ = span.set_parent(producer);
        span.add_link(link);
    }
    span
}

/// The `traceparent` header of a NATS message, if any.
#[must_use]
pub fn nats_traceparent(headers: Option<&async_nats::HeaderMap>) -> Option<&str> {
    headers?
        .get(TRACEPARENT)
        .map(async_nats::HeaderValue::as_str)
}

/// Headers carrying the `traceparent` of `span`, or `None` when it has none: publish without
/// headers then, so untraced messages stay as small as before.
#[must_use]
pub fn nats_headers(span: &Span) -> Option<async_nats::HeaderMap> {
    let value = traceparent(span)?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(TRACEPARENT, value.as_str());
    Some(headers)
}

/// Adds the `traceparent` of `span` to NATS headers (nothing when it has none).
pub fn inject_nats(span: &Span, headers: &mut async_nats::HeaderMap) {
    if let Some(value) = traceparent(span) {
        headers.insert(TRACEPARENT, value.as_str());
    }
}

/// A span for a gRPC call of `path` (`/package.Service/Method`), `kind` `server` or
/// `client`.
fn rpc_span(kind: &'static str, path: &str) -> Span {
    let name = path.trim_start_matches('/');
    let (service, method) = name.split_once('/').unwrap_or((name, ""));
    tracing::info_span!(
        "rpc",
        otel.name = name,
        otel.kind = kind,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        otel.status_code = Empty,
    )
}

/// Which end of a call a span stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// Runs `call` inside `span` and records its gRPC status when it answers. Which codes are
/// errors depends on the side (the RPC conventions: a server owns only the codes that mean
/// it failed); a call with no response is `UNKNOWN` to a server, `UNAVAILABLE` to a client.
fn in_rpc_span<F, B, E>(span: Span, side: Side, call: F) -> BoxFuture<Result<http::Response<B>, E>>
where
    F: std::future::Future<Output = Result<http::Response<B>, E>> + Send + 'static,
{
    let recorded = span.clone();
    Box::pin(
        async move {
            let result = call.await;
            if !recorded.is_none() {
                let no_response = if side == Side::Server { 2 } else { 14 };
                let code = result
                    .as_ref()
                    .map_or(no_response, |r| grpc_status(r.headers()));
                recorded.record("rpc.grpc.status_code", code);
                let failed = match side {
                    Side::Server => matches!(code, 2 | 4 | 12 | 13 | 14 | 15),
                    Side::Client => code != 0,
                };
                if failed {
                    recorded.record("otel.status_code", "ERROR");
                }
            }
            result
        }
        .instrument(span),
    )
}

/// The gRPC status of a response head: a failure is "trailers only" with the status in the
/// headers; a success puts it in the trailers, after the body (OK).
pub(crate) fn grpc_status(headers: &http::HeaderMap) -> i32 {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn is_grpc<B>(request: &http::Request<B>) -> bool {
    request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A server span per gRPC call, a child of the caller's `traceparent` metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer;

impl<S> Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcTrace { inner }
    }
}

/// See [`GrpcTraceLayer`].
#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
}

impl<S, B, RB> Service<http::Request<B>> for GrpcTrace<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let span = if enabled() && is_grpc(&request) {
            let span = rpc_span("server", request.uri().path());
            follow(&span, header(request.headers(), TRACEPARENT));
            span
        } else {
            Span::none()
        };
        let call = span.in_scope(|| self.inner.call(request));
        // A call that fails below gRPC (no response) counts as UNKNOWN on the server side.
        in_rpc_span(span, Side::Server, call)
    }
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A channel to another service that traces each call: a client span, its `traceparent` in
/// the request metadata, the status recorded. Clones share the connection.
#[derive(Debug, Clone)]
pub struct Upstream {
    route: crate::client::Route,
}

impl Upstream {
    /// Traces calls that go where `route` sends them.
    #[must_use]
    pub(crate) fn new(route: crate::client::Route) -> Self {
        Self { route }
    }
}

impl Service<http::Request<tonic::body::Body>> for Upstream {
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.route.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let span = span_if(|| rpc_span("client", request.uri().path()));
        if let Some(value) = traceparent(&span).and_then(|v| http::HeaderValue::try_from(v).ok()) {
            request.headers_mut().insert(TRACEPARENT, value);
        }
        let call = self.route.call(request);
        // A transport failure (no response) is UNAVAILABLE to the caller.
        in_rpc_span(span, Side::Client, call)
    }
}

/// Axum middleware: a server span per HTTP request named after its route pattern, a child of
/// the request's `traceparent` header. It carries the request id (`x-request-id`) and, once
/// a handler authenticates the caller, `enduser.id`.
pub async fn trace_http(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if !enabled() {
        return next.run(request).await;
    }
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "http",
        otel.name = %route.as_deref().map_or_else(|| method.clone(), |r| format!("{method} {r}")),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route.as_deref(),
        url.path = request.uri().path(),
        "http.request.header.x-request-id" = header(request.headers(), "x-request-id"),
        enduser.id = Empty,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    follow(&span, header(request.headers(), TRACEPARENT));
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_traceparents_name_a_parent() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = remote(Some(good)).expect("a valid traceparent");
        let span = context.span();
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(
            remote(Some(
                "00-00000000000000000000000000000000-b7ad6b7169203331-01"
            ))
            .is_none()
        );
        assert!(remote(Some("garbage")).is_none());
        assert!(remote(None).is_none());
    }

    #[test]
    fn nothing_is_traced_while_export_is_off() {
        assert!(!enabled());
        assert!(producer_span("CHAT", "chat.v1.conv.x.message").is_none());
        assert!(consumer_span("CHAT", "x", "fanout", None).is_none());
        assert!(current_traceparent().is_none());
    }
}
