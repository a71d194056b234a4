//! The gRPC server every service runs: bound first, then served with health, reflection and
//! one layer stack, until a shutdown signal drains it.
//!
//! The stack, outermost first:
//! 1. *timeout* (tonic's): the caller's `grpc-timeout`, capped by `request_timeout_ms`, so no
//!    call outlives the deadline its caller already gave up on.
//! 2. *trace*: a server span per call ([`crate::telemetry::GrpcTraceLayer`]), a child of the
//!    caller's `traceparent`, outside the limiter so shed calls are traced too.
//! 3. *metrics*: RED series per method ([`crate::metrics::RpcMetrics`]), also outside the
//!    limiter so shed calls count as `UNAVAILABLE`.
//! 4. *lifecycle*: deprecation notices in response metadata, `UNIMPLEMENTED` after a sunset
//!    (see [`crate::lifecycle`]); before the limiter, since refusing costs nothing.
//! 5. *in-flight limit with load shedding*: calls beyond `max_in_flight` are answered
//!    `UNAVAILABLE` at once instead of queueing, so clients retry elsewhere and memory stays
//!    bounded under overload.
//!
//! The same port answers plain HTTP/1.1 too: `GET /healthz` (liveness), `GET /readyz`
//! (readiness, see [`crate::health`]) and, with [`GrpcServer::metrics`], `GET /metrics`.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::{net::TcpListener, sync::Semaphore};
use tonic::{
    Status,
    server::NamedService,
    service::RoutesBuilder,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};
use tower::{Layer, Service};

use crate::{
    clock::{Clock, SystemClock},
    config::GrpcServerConfig,
    health::Readiness,
    lifecycle::{GrpcLifecycle, GrpcLifecycleLayer},
    metrics::{Registry, RpcMetrics, RpcMetricsLayer},
    shutdown::Shutdown,
};

/// A bound, not yet serving gRPC server.
pub struct GrpcServer {
    listener: TcpListener,
    config: GrpcServerConfig,
    lifecycle: Arc<GrpcLifecycle>,
    clock: Arc<dyn Clock>,
    routes: RoutesBuilder,
    health: HealthReporter,
    names: Vec<&'static str>,
    metrics: Option<(RpcMetrics, Arc<Registry>)>,
    readiness: Readiness,
}

/// Failures starting or running the server.
#[derive(Debug, thiserror::Error)]
pub enum GrpcServerError {
    /// The listen address could not be bound.
    #[error("cannot bind gRPC listener on {addr}")]
    Bind {
        /// The address from the configuration.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// The embedded descriptor set is unusable (a build defect).
    #[error("cannot build the reflection service")]
    Reflection(#[source] tonic_reflection::server::Error),
    /// The transport failed while serving.
    #[error("gRPC transport failed")]
    Transport(#[from] tonic::transport::Error),
    /// The lifecycle policy file is unreadable or inconsistent.
    #[error("{0}")]
    Lifecycle(String),
}

impl GrpcServer {
    /// Binds the configured address (port 0 picks a free one), with a listen queue of
    /// [`crate::net::BACKLOG`]; within the runtime.
    pub fn bind(config: GrpcServerConfig) -> Result<Self, GrpcServerError> {
        let listener =
            crate::net::listen(config.listen).map_err(|source| GrpcServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let lifecycle = match &config.lifecycle_file {
            None => GrpcLifecycle::default(),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| GrpcLifecycle::parse(&text))
                .map_err(GrpcServerError::Lifecycle)?,
        };
        let (health, _) = tonic_health::server::health_reporter();
        Ok(Self {
            listener,
            config,
            lifecycle: Arc::new(lifecycle),
            clock: Arc::new(SystemClock),
            routes: RoutesBuilder::default(),
            health,
            names: Vec::new(),
            metrics: None,
            readiness: Readiness::default(),
        })
    }

    /// What the server needs to be ready (its dependencies); it is probed at start and every
    /// few seconds, and drives `/readyz` and the gRPC health status.
    #[must_use]
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = readiness;
        self
    }

    /// Records RED series per method into `registry` (which holds the service's own series
    /// too) and serves it at `GET /metrics` on this port.
    #[must_use]
    pub fn metrics(mut self, mut registry: Registry) -> Self {
        let rpc = RpcMetrics::new(&mut registry);
        self.metrics = Some((rpc, Arc::new(registry)));
        self
    }

    /// Reads the lifecycle's dates from `clock` instead of the system clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The address actually bound.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Adds a tonic service; it is reported SERVING by health while the server runs.
    #[must_use]
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Serves until `shutdown` trips, then reports NOT_SERVING, stops accepting and gives
    /// in-flight calls `drain_timeout_ms` to finish.
    pub async fn serve(self, shutdown: Shutdown) -> Result<(), GrpcServerError> {
        let Self {
            listener,
            config,
            lifecycle,
            clock,
            mut routes,
            health,
            names,
            metrics,
            readiness,
        } = self;
        let addr = listener
            .local_addr()
            .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
        let health_service = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        let first = readiness.check().await;
        if let Err(failures) = &first {
            tracing::warn!(message = "Not ready.", ?failures);
        }
        set_health(&health, &names, first.is_ok()).await;
        tokio::spawn(watch_readiness(
            readiness.clone(),
            health.clone(),
            names.clone(),
            shutdown.clone(),
            first.is_ok(),
        ));

        routes.add_service(health_service);
        // Reflection lists only what this server serves, never every package in the set.
        if !names.is_empty() {
            let mut reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tertulia_proto::FILE_DESCRIPTOR_SET);
            for name in &names {
                reflection = reflection.with_service_name(*name);
            }
            let reflection = reflection.build_v1().map_err(GrpcServerError::Reflection)?;
            routes.add_service(reflection);
        }

        let mut routes = routes.routes();
        let probes = (readiness, shutdown.clone());
        let mut http_routes = std::mem::take(routes.axum_router_mut())
            .route(
                "/healthz",
                axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
            )
            .route("/readyz", axum::routing::get(readyz).with_state(probes));
        let rpc_metrics = metrics.map(|(rpc, registry)| {
            http_routes = std::mem::take(&mut http_routes).route(
                "/metrics",
                axum::routing::get(crate::metrics::serve).with_state(registry),
            );
            RpcMetricsLayer::new(rpc)
        });
        *routes.axum_router_mut() = http_routes;
        let stack = tower::ServiceBuilder::new()
            .layer(crate::telemetry::GrpcTraceLayer)
            .option_layer(rpc_metrics.clone())
            .layer(GrpcLifecycleLayer::new(lifecycle, clock))
            .layer(InFlightLimitLayer::new(config.max_in_flight));
        let server = Server::builder()
            .timeout(config.request_timeout())
            // HTTP/1.1 for probes and Prometheus; gRPC stays HTTP/2.
            .accept_http1(true)
            .layer(stack)
            .add_routes(routes);

        let signal = {
            let shutdown = shutdown.clone();
            let health = health.clone();
            async move {
                shutdown.cancelled().await;
                // Balancers watching health stop routing here before we stop accepting.
                for name in names {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
            }
        };
        tracing::info!(message = "gRPC server listening.", addr = %addr);
        // TCP_NODELAY: gRPC frames are small and latency-bound; Nagle plus delayed ACKs would add
        // ~40 ms to calls whose response is written in parts.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let serve = server.serve_with_incoming_shutdown(incoming, signal);
        let drain_deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(config.drain_timeout()).await;
        };
        tokio::select! {
            result = serve => result?,
            () = drain_deadline => {
                tracing::warn!(message = "Drain deadline passed, dropping remaining calls.");
            }
        }
        tracing::info!(message = "gRPC server stopped.", addr = %addr);
        Ok(())
    }
}

/// Reports every service (and the server, `""`) SERVING or NOT_SERVING.
async fn set_health(health: &HealthReporter, names: &[&'static str], ready: bool) {
    let status = if ready {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    for name in names {
        health.set_service_status(*name, status).await;
    }
    health.set_service_status("", status).await;
}

/// Re-probes readiness until `shutdown` trips (which reports NOT_SERVING for good).
async fn watch_readiness(
    readiness: Readiness,
    health: HealthReporter,
    names: Vec<&'static str>,
    shutdown: Shutdown,
    mut ready: bool,
) {
    let mut every = tokio::time::interval(crate::metrics::SAMPLE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = readiness.check().await;
        if shutdown.is_cancelled() {
            return;
        }
        // Only changes are reported: health watchers see each transition once.
        match (&now, ready) {
            (Err(failures), true) => tracing::warn!(message = "No longer ready.", ?failures),
            (Ok(()), false) => tracing::info!(message = "Ready again."),
            _ => continue,
        }
        ready = now.is_ok();
        set_health(&health, &names, ready).await;
    }
}

/// `GET /readyz`: 200 when every probe passes, 503 naming the failures, or while draining.
async fn readyz(
    axum::extract::State((readiness, shutdown)): axum::extract::State<(Readiness, Shutdown)>,
) -> (http::StatusCode, axum::Json<serde_json::Value>) {
    if shutdown.is_cancelled() {
        let body = serde_json::json!({"status": "draining"});
        return (http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(body));
    }
    match readiness.check().await {
        Ok(()) => (
            http::StatusCode::OK,
            axum::Json(serde_json::json!({"status": "ready"})),
        ),
        Err(failures) => (
            http::StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "not_ready", "failures": failures})),
        ),
    }
}

/// Answers `UNAVAILABLE` at once when `max` calls are already in flight.
#[derive(Debug, Clone)]
pub struct InFlightLimitLayer {
    permits: Arc<Semaphore>,
}

impl InFlightLimitLayer {
    /// A limit of `max` concurrent calls shared by every connection.
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
        }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InFlightLimit {
            inner,
            permits: Arc::clone(&self.permits),
        }
    }
}

/// See [`InFlightLimitLayer`]. The permit is held until the response head is produced; for
/// server streams that is when the stream starts, which bounds setup work, not stream count.
#[derive(Debug, Clone)]
pub struct InFlightLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

/// A boxed, sendable future (what the layers here return).
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B> Service<http::Request<B>> for InFlightLimit<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() {
            let call = self.inner.call(request);
            Box::pin(async move {
                let response = call.await;
                drop(permit);
                response
            })
        } else {
            let status = Status::unavailable("server at capacity, retry");
            Box::pin(std::future::ready(Ok(status.into_http())))
        }
    }
}
