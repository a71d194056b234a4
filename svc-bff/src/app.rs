//! The router, the layer stack and the server.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    serve::ListenerExt as _,
};
use tertulia_plumbing::telemetry::Upstream as Channel;
use tertulia_plumbing::{
    StartError, client, error::chain, health::Readiness, http::RequestIdV7, nats,
    shutdown::Shutdown, token::TokenVerifier,
};
use tertulia_proto::{
    auth::v1::auth_service_client::AuthServiceClient,
    catalog::v1::catalog_service_client::CatalogServiceClient,
    chat::v1::chat_service_client::ChatServiceClient,
    media::v1::media_service_client::MediaServiceClient,
    presence::v1::presence_service_client::PresenceServiceClient,
};
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{PropagateRequestIdLayer, SetRequestIdLayer},
};

use crate::{
    config::BffConfig,
    problem::ApiError,
    realtime::{RealtimeConfig, groups_of, hub::DeliveryHub, typing::TypingRelay},
    routes,
    usage::ApiUsage,
    versions::{Clock, DEFAULT_POLICY, Gate, SystemClock, VersionPolicy, lifecycle},
    web::WebClient,
};

/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler can reach: a handle on the gateway's [`Shared`] state. Every request
/// and every open connection holds one, so cloning it only counts a reference (the state
/// itself is over a kilobyte).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The clients, configuration and registries of the gateway.
#[derive(Debug)]
pub struct Shared {
    /// svc-auth.
    pub auth: AuthServiceClient<Channel>,
    /// svc-chat.
    pub chat: ChatServiceClient<Channel>,
    /// svc-chat, version 2 (structured content, reactions).
    pub chat_v2: tertulia_proto::chat::v2::chat_service_client::ChatServiceClient<Channel>,
    /// svc-presence.
    pub presence: PresenceServiceClient<Channel>,
    /// svc-catalog.
    pub catalog: CatalogServiceClient<Channel>,
    /// svc-catalog, version 2 (search with several tags and relevance).
    pub catalog_v2:
        tertulia_proto::catalog::v2::catalog_service_client::CatalogServiceClient<Channel>,
    /// svc-media.
    pub media: MediaServiceClient<Channel>,
    /// This gateway's id, in presence records.
    pub gateway_id: String,
    /// Every upstream by name, for readiness checks.
    pub upstreams: Vec<(&'static str, Channel)>,
    /// Verifies access tokens from svc-auth's published keys.
    pub verifier: TokenVerifier,
    /// Deadline set on every upstream call.
    pub call_deadline: Duration,
    /// Whether `X-Forwarded-For` names the client.
    pub trust_forwarded_for: bool,
    /// Deliveries for the users connected here.
    pub hub: Arc<DeliveryHub>,
    /// Typing indicators.
    pub typing: Arc<TypingRelay>,
    /// Real-time limits.
    pub realtime: RealtimeConfig,
    /// Trips when the gateway shuts down, so real-time sessions close with 1012.
    pub shutdown: Shutdown,
    /// Real-time sessions (WebSocket, SSE) in flight, awaited before the process exits so
    /// each gets to send its close.
    pub sessions: tokio_util::task::TaskTracker,
    /// Deprecated API calls per client.
    pub usage: Arc<ApiUsage>,
    /// The bearer token of `/admin/*`, if the admin API is on.
    pub admin_token: Option<secrecy::SecretString>,
    /// This gateway's Prometheus series (`GET /metrics`).
    pub metrics: Arc<tertulia_plumbing::metrics::Registry>,
    /// Its own dependencies (NATS), checked by `/readyz` beside the upstream services.
    pub readiness: Readiness,
    /// Permits for the presence disconnects in flight: when thousands of connections close
    /// at once (a restart, a network blip), their disconnects queue here rather than
    /// exceed svc-presence's in-flight limit and be shed.
    pub presence_disconnects: tokio::sync::Semaphore,
}

/// Presence disconnects in flight at once, per gateway.
const PRESENCE_DISCONNECTS: usize = 64;

/// A built, bound svc-bff.
pub struct App {
    listener: TcpListener,
    router: Router,
    sessions: Shutdown,
    session_tasks: tokio_util::task::TaskTracker,
    usage: Arc<ApiUsage>,
}

impl App {
    /// Binds the listener and prepares upstream channels (which connect lazily, so the BFF
    /// starts and answers 503 while a dependency is still down).
    pub async fn build(config: BffConfig) -> Result<Self, StartError> {
        Self::build_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`Self::build`] with the clock the version lifecycle reads (tests move it).
    pub async fn build_with_clock(
        config: BffConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        let policy = match &config.versions_file {
            None => VersionPolicy::parse(DEFAULT_POLICY),
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))
                .and_then(|text| VersionPolicy::parse(&text)),
        }
        .map_err(StartError::Other)?;
        let channel =
            |upstream| client::channel(upstream).map_err(|e| StartError::Other(chain(&e)));
        let auth_channel = channel(&config.auth)?;
        let nats = nats::connect(&config.nats, "svc-bff").await?;
        let chat_channel = channel(&config.chat)?;
        let presence_channel = channel(&config.presence)?;
        let catalog_channel = channel(&config.catalog)?;
        let media_channel = channel(&config.media)?;
        let usage = Arc::new(ApiUsage::open(&nats).await.map_err(StartError::Other)?);
        let mut metrics = tertulia_plumbing::metrics::Registry::default();
        let http_metrics = tertulia_plumbing::metrics::HttpMetrics::new(&mut metrics);
        usage.register_metrics(&mut metrics);
        let realtime_metrics = crate::realtime::hub::RealtimeMetrics::new(&mut metrics);
        let call_deadline = Duration::from_millis(config.auth.timeout_ms);
        let hub = DeliveryHub::connect(
            nats.clone(),
            &config.nats,
            &config.realtime,
            realtime_metrics,
            groups_of(ChatServiceClient::new(chat_channel.clone()), call_deadline),
        )
        .await
        .map_err(|e| StartError::Other(chain(&e)))?;
        let readiness = hub.probe(Readiness::default().nats(nats.client.clone()));
        let state = AppState(Arc::new(Shared {
            auth: AuthServiceClient::new(auth_channel.clone()),
            chat: ChatServiceClient::new(chat_channel.clone()),
            chat_v2: tertulia_proto::chat::v2::chat_service_client::ChatServiceClient::new(
                chat_channel.clone(),
            ),
            presence: PresenceServiceClient::new(presence_channel.clone()),
            catalog: CatalogServiceClient::new(catalog_channel.clone()),
            catalog_v2:
                tertulia_proto::catalog::v2::catalog_service_client::CatalogServiceClient::new(
                    catalog_channel.clone(),
                ),
            media: MediaServiceClient::new(media_channel.clone()),
            gateway_id: uuid::Uuid::now_v7().to_string(),
            verifier: TokenVerifier::from_auth_service(&config.tokens, auth_channel.clone()),
            upstreams: vec![
                ("svc-auth", auth_channel),
                ("svc-chat", chat_channel),
                ("svc-presence", presence_channel),
                ("svc-catalog", catalog_channel),
                ("svc-media", media_channel),
            ],
            call_deadline,
            trust_forwarded_for: config.http.trust_forwarded_for,
            hub,
            typing: Arc::new(TypingRelay::new(nats)),
            usage,
            admin_token: config.admin_token.clone(),
            metrics: Arc::new(metrics),
            readiness,
            realtime: config.realtime.clone(),
            shutdown: Shutdown::new(),
            sessions: tokio_util::task::TaskTracker::new(),
            presence_disconnects: tokio::sync::Semaphore::new(PRESENCE_DISCONNECTS),
        }));
        let sessions = state.shutdown.clone();
        let session_tasks = state.sessions.clone();
        let usage = Arc::clone(&state.usage);
        let port = if config.http.share_port {
            tertulia_plumbing::net::Port::Shared
        } else {
            tertulia_plumbing::net::Port::Own
        };
        let listener =
            tertulia_plumbing::net::listen_with(config.http.listen, port).map_err(|source| {
                StartError::Io {
                    context: format!("cannot bind HTTP listener on {}", config.http.listen),
                    source,
                }
            })?;
        Ok(Self {
            listener,
            router: router(
                state,
                config.http.max_body_bytes,
                &Arc::new(policy),
                &clock,
                WebClient::new(config.web.as_ref()),
            )
            .layer(middleware::from_fn_with_state(
                http_metrics,
                tertulia_plumbing::metrics::record_http,
            )),
            sessions,
            session_tasks,
            usage,
        })
    }

    /// The address the HTTP server is bound to.
    #[must_use]
    pub fn http_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    /// Serves until `shutdown` trips, then drains for at most [`DRAIN_TIMEOUT`].
    pub async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        tracing::info!(message = "HTTP server listening.", addr = %self.http_addr());
        // Real-time sessions end (1012) when the server starts draining, so the drain is not
        // held up by connections that would otherwise never close.
        let sessions = self.sessions;
        let session_tasks = self.session_tasks;
        let usage = self.usage;
        let flush_stop = shutdown.clone();
        let flushed = tokio::spawn(async move { usage.flush_until(flush_stop).await });
        let trip = shutdown.clone();
        tokio::spawn(async move {
            trip.cancelled().await;
            sessions.cancel();
        });
        // Without TCP_NODELAY a response written in two parts waits for the client's delayed
        // ACK (~40 ms) before its second part leaves.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::warn!(message = "Cannot set TCP_NODELAY.", %error);
            }
        });
        let serve = axum::serve(
            listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(DRAIN_TIMEOUT).await;
        };
        let drained = async {
            serve.await.map_err(|source| StartError::Io {
                context: "HTTP server failed".into(),
                source,
            })?;
            // Upgraded connections outlive the server: let each session send its close.
            session_tasks.close();
            session_tasks.wait().await;
            // The last deprecated-call counts reach the shared bucket.
            let _ = flushed.await;
            Ok::<(), StartError>(())
        };
        tokio::select! {
            result = drained => result?,
            () = deadline => tracing::warn!(message = "Drain deadline passed."),
        }
        Ok(())
    }
}

/// Builds and runs svc-bff until `shutdown` trips.
pub async fn run(config: BffConfig, shutdown: Shutdown) -> Result<(), StartError> {
    App::build(config).await?.run(shutdown).await
}

/// Every route, and the layers around them, outermost first:
/// 1. *request id*: reuse the client's `x-request-id` or mint a UUIDv7, before anything logs;
/// 2. *trace*: a server span per request named after its route, continuing the client's
///    `traceparent` (see `tertulia_plumbing::telemetry`);
/// 3. *propagate id*: copy it to the response, including error responses;
/// 4. *catch panic*: a bug answers a 500 problem instead of dropping the connection;
/// 5. *body limit*: JSON bodies over the configured size are refused with 413.
///
/// Inside each version prefix, the version's lifecycle layer (deprecation notices, then 308
/// or 410 after sunset) wraps every matched route.
fn router(
    state: AppState,
    max_body_bytes: usize,
    policy: &Arc<VersionPolicy>,
    clock: &Arc<dyn Clock>,
    web: WebClient,
) -> Router {
    let gate = |version| Gate {
        policy: Arc::clone(policy),
        clock: Arc::clone(clock),
        version,
        usage: Arc::clone(&state.usage),
        verifier: state.verifier.clone(),
    };
    let layers = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(RequestIdV7))
        .layer(middleware::from_fn(
            tertulia_plumbing::telemetry::trace_http,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(CatchPanicLayer::custom(panic_problem))
        .layer(DefaultBodyLimit::max(max_body_bytes));
    Router::new()
        .nest(
            "/api/v1",
            routes::auth::router()
                .merge(routes::chat::router())
                .merge(routes::presence::router())
                .merge(routes::videos::router())
                .route("/ws", axum::routing::get(crate::realtime::ws::upgrade))
                .route("/events", axum::routing::get(crate::realtime::sse::events))
                .route("/poll", axum::routing::get(crate::realtime::poll::poll))
                .route_layer(middleware::from_fn_with_state(gate("v1"), lifecycle)),
        )
        // v2 shares every route whose contract it keeps, and has its own message routes
        // (structured content, reactions) over `tertulia.chat.v2`, its own video search over
        // `tertulia.catalog.v2`, and real-time transports speaking its message shape.
        .nest(
            "/api/v2",
            routes::auth::router()
                .merge(routes::chat::conversations_router())
                .merge(routes::messages_v2::router())
                .merge(routes::presence::router())
                .merge(routes::videos::router_v2())
                .route("/ws", axum::routing::get(crate::realtime::ws::upgrade))
                .route("/events", axum::routing::get(crate::realtime::sse::events))
                .route("/poll", axum::routing::get(crate::realtime::poll::poll))
                .route_layer(middleware::from_fn_with_state(gate("v2"), lifecycle)),
        )
        .merge(routes::ops::router())
        // The web client's files, or a 404 problem (see `web`).
        .fallback(move |request| web.serve(request))
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .with_state(state)
        .layer(layers)
}

fn panic_problem(_panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!(message = "Handler panicked.");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "internal error",
    )
    .into_response()
}
