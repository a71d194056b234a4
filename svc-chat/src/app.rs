//! Wiring: pool and migrations, the `CHAT` stream, the outbox relay, the fan-out consumer,
//! the gRPC server.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tertulia_plumbing::{
    StartError, config::PostgresConfig, grpc::GrpcServer, metrics::ConsumerMetrics, nats, postgres,
    shutdown::Shutdown,
};
use tertulia_proto::{
    chat::{
        v1::chat_service_server::ChatServiceServer,
        v2::chat_service_server::ChatServiceServer as ChatV2ServiceServer,
    },
    subjects,
};
use tokio::sync::{Notify, mpsc};

use crate::{
    config::ChatConfig,
    conversations::Conversations,
    events::{self, Committing, FANOUT_CONSUMER, FanOut, OutboxRelay, RelayMetrics},
    grpc::ChatGrpc,
    grpc_v2::ChatV2Grpc,
    store::{self, ChatStore, MIGRATIONS},
};

/// How often published outbox rows older than an hour are deleted.
const PURGE_EVERY: Duration = Duration::from_mins(10);

/// A built, bound svc-chat, ready to serve.
pub struct App {
    grpc: GrpcServer,
    relay: OutboxRelay,
    /// What sends hand over to the relay in memory.
    handed: mpsc::Receiver<Committing>,
    fanout: FanOut,
    store: ChatStore,
    chat: Conversations,
    nats: nats::Nats,
    consumer_metrics: ConsumerMetrics,
}

impl App {
    /// Connects and migrates the database, ensures the stream, binds the listener.
    pub async fn build(config: ChatConfig) -> Result<Self, StartError> {
        let pool = postgres::connect(&config.database).await?;
        postgres::migrate(&pool, MIGRATIONS).await?;
        let nats = nats::connect(&config.nats, "svc-chat").await?;
        let readiness = tertulia_plumbing::health::Readiness::default()
            .postgres(pool.clone())
            .nats(nats.client.clone());
        nats.ensure_event_stream(
            subjects::CHAT_STREAM,
            subjects::CHAT_STREAM_SUBJECTS,
            config.stream_replicas,
        )
        .await?;
        let batches = PostgresConfig {
            max_connections: store::BATCH_CONNECTIONS,
            ..config.database.clone()
        };
        let batches = postgres::connect_planned(&batches, postgres::Plans::Generic).await?;
        let wake = Arc::new(Notify::new());
        let (handoff, handed) = events::handoff(Arc::clone(&wake));
        let store = ChatStore::new(pool, batches, handoff);
        let mut registry = tertulia_plumbing::metrics::Registry::default();
        let relay_metrics = RelayMetrics::new(&mut registry);
        let consumer_metrics = ConsumerMetrics::new(&mut registry);
        let relay = OutboxRelay::new(store.clone(), nats.clone(), relay_metrics, wake);
        let chat = Conversations::new(store.clone(), relay.waker(), config.max_text_chars);
        let grpc = GrpcServer::bind(config.grpc)?
            .metrics(registry)
            .readiness(readiness)
            .add_service(ChatServiceServer::new(ChatGrpc::new(chat.clone())))
            .add_service(ChatV2ServiceServer::new(ChatV2Grpc::new(chat.clone())));
        Ok(Self {
            grpc,
            fanout: FanOut::new(store.clone(), nats.clone()),
            nats,
            relay,
            handed,
            consumer_metrics,
            store,
            chat,
        })
    }

    /// The address the gRPC server is bound to.
    #[must_use]
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    /// The use cases, for tests that reach below the wire.
    #[must_use]
    pub fn conversations(&self) -> &Conversations {
        &self.chat
    }

    /// The store, for tests that inspect the outbox.
    #[must_use]
    pub fn store(&self) -> &ChatStore {
        &self.store
    }

    /// Serves until `shutdown` trips, with the relay, the fan-out and the purge running
    /// beside the server; returns once what the handoff published is marked.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        let handoff = tokio::spawn(
            self.relay
                .clone()
                .publish_handed(self.handed, shutdown.clone()),
        );
        tokio::spawn(self.relay.clone().sample_pending(shutdown.clone()));
        tokio::spawn(self.relay.run(shutdown.clone()));
        tokio::spawn(self.consumer_metrics.watch(
            self.nats,
            subjects::CHAT_STREAM,
            FANOUT_CONSUMER,
            shutdown.clone(),
        ));
        tokio::spawn(self.fanout.run(shutdown.clone()));
        tokio::spawn(purge_until(self.store, shutdown.clone()));
        let served = self.grpc.serve(shutdown).await;
        handoff.await.ok();
        served?;
        Ok(())
    }
}

/// Keeps the outbox small: published rows are JetStream's now.
async fn purge_until(store: ChatStore, shutdown: Shutdown) {
    let mut every = tokio::time::interval(PURGE_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(error) = store.purge_published().await {
            tracing::warn!(message = "Outbox purge failed.", error = %error);
        }
    }
}

/// Builds and runs svc-chat until `shutdown` trips.
pub async fn run(config: ChatConfig, shutdown: Shutdown) -> Result<(), StartError> {
    App::build(config).await?.run(shutdown).await
}
