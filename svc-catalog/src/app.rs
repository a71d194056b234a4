//! Wiring: the chosen store, the `MEDIA` stream and its consumer, the delete reconciler,
//! the gRPC server.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use secrecy::ExposeSecret as _;
use tertulia_plumbing::{StartError, client, grpc::GrpcServer, nats, postgres, shutdown::Shutdown};
use tertulia_proto::{
    catalog::{
        v1::catalog_service_server::CatalogServiceServer,
        v2::catalog_service_server::CatalogServiceServer as CatalogV2ServiceServer,
    },
    subjects,
};

use crate::{
    catalog::Catalog,
    config::{CatalogConfig, StoreKind},
    deletion::Deletion,
    events,
    grpc::{CatalogGrpc, CatalogV2Grpc},
    store::{
        VideoStore,
        mongo::MongoVideos,
        postgres::{MIGRATIONS, PostgresVideos},
    },
};

/// A built, bound svc-catalog, ready to serve.
pub struct App {
    grpc: GrpcServer,
    catalog: Catalog,
    deletion: Deletion,
    nats: nats::Nats,
    reconcile_every: Duration,
    consumer_metrics: tertulia_plumbing::metrics::ConsumerMetrics,
}

/// Opens the configured store.
pub async fn open_store(config: &CatalogConfig) -> Result<Arc<dyn VideoStore>, StartError> {
    Ok(match config.store {
        StoreKind::Postgres => {
            let pool = postgres::connect(&config.database).await?;
            postgres::migrate(&pool, MIGRATIONS).await?;
            Arc::new(PostgresVideos::new(pool))
        }
        StoreKind::Mongodb => {
            let mongo = config.mongodb.as_ref().ok_or_else(|| {
                StartError::Other("store = mongodb needs a [mongodb] section".into())
            })?;
            let store = MongoVideos::connect(mongo.url.expose_secret(), &mongo.database)
                .await
                .map_err(|e| StartError::Other(e.to_string()))?;
            Arc::new(store)
        }
    })
}

impl App {
    /// Opens the store, ensures the stream, binds the listener.
    pub async fn build(config: CatalogConfig) -> Result<Self, StartError> {
        let store = open_store(&config).await?;
        let nats = nats::connect(&config.nats, "svc-catalog").await?;
        let probe = Arc::clone(&store);
        let readiness = tertulia_plumbing::health::Readiness::default()
            .with("store", move || {
                // A read of a video that cannot exist: the store answers, whatever it is.
                let store = Arc::clone(&probe);
                async move {
                    store
                        .get(uuid::Uuid::nil())
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            })
            .nats(nats.client.clone());
        nats.ensure_event_stream(
            subjects::MEDIA_STREAM,
            subjects::MEDIA_STREAM_SUBJECTS,
            config.stream_replicas,
        )
        .await?;
        let catalog = Catalog::new(store);
        let media = client::channel(&config.media).map_err(|e| StartError::Other(e.to_string()))?;
        let deletion = Deletion::new(
            catalog.clone(),
            media,
            Duration::from_millis(config.media.timeout_ms),
        );
        let mut registry = tertulia_plumbing::metrics::Registry::default();
        let consumer_metrics = tertulia_plumbing::metrics::ConsumerMetrics::new(&mut registry);
        let grpc = GrpcServer::bind(config.grpc)?
            .metrics(registry)
            .readiness(readiness)
            .add_service(CatalogServiceServer::new(CatalogGrpc::new(
                catalog.clone(),
                deletion.clone(),
            )))
            .add_service(CatalogV2ServiceServer::new(CatalogV2Grpc::new(
                catalog.clone(),
            )));
        Ok(Self {
            grpc,
            catalog,
            deletion,
            nats,
            reconcile_every: Duration::from_secs(config.reconcile_every_s.max(1)),
            consumer_metrics,
        })
    }

    /// The address the gRPC server is bound to.
    #[must_use]
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    /// The use cases, for tests that reach below the wire.
    #[must_use]
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The delete saga, for tests that drive the reconciler.
    #[must_use]
    pub fn deletion(&self) -> &Deletion {
        &self.deletion
    }

    /// Serves until `shutdown` trips, with the media consumer and the reconciler beside.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        tokio::spawn(self.consumer_metrics.watch(
            self.nats.clone(),
            subjects::MEDIA_STREAM,
            events::CATALOG_CONSUMER,
            shutdown.clone(),
        ));
        tokio::spawn(events::consume_media(
            self.catalog,
            self.nats,
            shutdown.clone(),
        ));
        tokio::spawn(
            self.deletion
                .reconcile_until(self.reconcile_every, shutdown.clone()),
        );
        self.grpc.serve(shutdown).await?;
        Ok(())
    }
}

/// Builds and runs svc-catalog until `shutdown` trips.
pub async fn run(config: CatalogConfig, shutdown: Shutdown) -> Result<(), StartError> {
    App::build(config).await?.run(shutdown).await
}
