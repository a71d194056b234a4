//! Wiring: database, the `MEDIA` stream, blobs, keys, the gRPC server, the public HTTP
//! listener (tus + origin), the transcoder and the sweeper.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tertulia_plumbing::{StartError, grpc::GrpcServer, nats, postgres, shutdown::Shutdown};
use tertulia_proto::{media::v1::media_service_server::MediaServiceServer, subjects};
use tokio::net::TcpListener;

use crate::{
    blobs::Blobs,
    config::MediaConfig,
    grpc::MediaGrpc,
    housekeeping, http,
    media::Media,
    processing,
    signing::Signer,
    store::{MIGRATIONS, MediaStore},
};

/// How long in-flight HTTP requests may take to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A built, bound svc-media, ready to serve.
pub struct App {
    grpc: GrpcServer,
    listener: TcpListener,
    media: Media,
    http_metrics: tertulia_plumbing::metrics::HttpMetrics,
    consumer_metrics: tertulia_plumbing::metrics::ConsumerMetrics,
}

fn other(e: impl std::fmt::Display) -> StartError {
    StartError::Other(e.to_string())
}

impl App {
    /// Connects and migrates, ensures the stream, opens blob storage, binds both listeners.
    pub async fn build(config: MediaConfig) -> Result<Self, StartError> {
        let pool = postgres::connect(&config.database).await?;
        postgres::migrate(&pool, MIGRATIONS).await?;
        let nats = nats::connect(&config.nats, "svc-media").await?;
        let readiness = tertulia_plumbing::health::Readiness::default()
            .postgres(pool.clone())
            .nats(nats.client.clone());
        nats.ensure_event_stream(
            subjects::MEDIA_STREAM,
            subjects::MEDIA_STREAM_SUBJECTS,
            config.stream_replicas,
        )
        .await?;
        let blobs = Blobs::open(&config.blobs).map_err(other)?;
        let signer = Signer::new(&config.signing).map_err(other)?;
        tokio::fs::create_dir_all(&config.work_dir)
            .await
            .map_err(|source| StartError::Io {
                context: format!("cannot create work_dir {}", config.work_dir.display()),
                source,
            })?;
        let listener = tertulia_plumbing::net::listen(config.http_listen).map_err(|source| {
            StartError::Io {
                context: format!("cannot bind HTTP listener on {}", config.http_listen),
                source,
            }
        })?;
        let own_url = format!(
            "http://{}",
            listener.local_addr().map_err(|source| StartError::Io {
                context: "HTTP listener has no address".into(),
                source,
            })?
        );
        let public_url = config
            .public_url
            .as_deref()
            .unwrap_or(&own_url)
            .trim_end_matches('/')
            .to_owned();
        let upload_url = config.upload_url.as_deref().map_or_else(
            || public_url.clone(),
            |u| u.trim_end_matches('/').to_owned(),
        );
        let mut registry = tertulia_plumbing::metrics::Registry::default();
        let http_metrics = tertulia_plumbing::metrics::HttpMetrics::new(&mut registry);
        let consumer_metrics = tertulia_plumbing::metrics::ConsumerMetrics::new(&mut registry);
        let media = Media {
            metrics: crate::media::MediaMetrics::new(&mut registry),
            store: MediaStore::new(pool),
            blobs,
            nats,
            signer,
            limits: Arc::new(config.limits),
            public_url: public_url.into(),
            upload_url: upload_url.into(),
            work_dir: Arc::new(config.work_dir),
            sessions: Arc::default(),
            contents: Arc::default(),
        };
        let grpc = GrpcServer::bind(config.grpc)?
            .metrics(registry)
            .readiness(readiness)
            .add_service(MediaServiceServer::new(MediaGrpc::new(media.clone())));
        Ok(Self {
            grpc,
            listener,
            media,
            http_metrics,
            consumer_metrics,
        })
    }

    /// The address the gRPC server is bound to.
    #[must_use]
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    /// The address of the public HTTP listener.
    #[must_use]
    pub fn http_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound listener")
    }

    /// The shared state, for tests that drive the sweeper and the reconciler.
    #[must_use]
    pub fn media(&self) -> &Media {
        &self.media
    }

    /// Serves until `shutdown` trips, with the transcoder and the sweeper beside.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        tokio::spawn(processing::run_transcoder(
            self.media.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(sweep_until(self.media.clone(), shutdown.clone()));
        tokio::spawn(self.consumer_metrics.watch(
            self.media.nats.clone(),
            tertulia_proto::subjects::MEDIA_STREAM,
            processing::TRANSCODER_CONSUMER,
            shutdown.clone(),
        ));
        let router = http::router(self.media.clone()).layer(axum::middleware::from_fn_with_state(
            self.http_metrics,
            tertulia_plumbing::metrics::record_http,
        ));
        let serve = axum::serve(self.listener, router)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let http = async {
            let deadline = async {
                shutdown.cancelled().await;
                tokio::time::sleep(DRAIN_TIMEOUT).await;
            };
            tokio::select! {
                result = serve => result.map_err(|source| StartError::Io { context: "HTTP server failed".into(), source }),
                () = deadline => Ok(()),
            }
        };
        let (http, grpc) = tokio::join!(http, self.grpc.serve(shutdown.clone()));
        http?;
        grpc?;
        Ok(())
    }
}

async fn sweep_until(media: Media, shutdown: Shutdown) {
    let mut every = tokio::time::interval(Duration::from_secs(media.limits.sweep_every_s.max(1)));
    let grace = Duration::from_secs(media.limits.orphan_grace_s);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(error) = housekeeping::sweep_once(&media).await {
            tracing::warn!(message = "Upload sweep failed.", error = %error);
        }
        if let Err(error) = housekeeping::reconcile_once(&media, grace).await {
            tracing::warn!(message = "Blob reconciler failed.", error = %error);
        }
    }
}

/// Builds and runs svc-media until `shutdown` trips.
pub async fn run(config: MediaConfig, shutdown: Shutdown) -> Result<(), StartError> {
    App::build(config).await?.run(shutdown).await
}
