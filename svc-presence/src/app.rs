//! Wiring: NATS and the buckets, upstream channels, the sweeper, the gRPC server.

use std::{net::SocketAddr, time::Duration};

use tertulia_plumbing::{
    StartError, client, error::chain, grpc::GrpcServer, nats, shutdown::Shutdown,
};
use tertulia_proto::presence::v1::presence_service_server::PresenceServiceServer;

use crate::{config::PresenceConfig, grpc::PresenceGrpc, presence::Presence, store::PresenceStore};

/// A built, bound svc-presence.
pub struct App {
    grpc: GrpcServer,
    presence: Presence,
}

impl App {
    /// Connects NATS, opens the buckets, binds the listener.
    pub async fn build(config: PresenceConfig) -> Result<Self, StartError> {
        let nats = nats::connect(&config.nats, "svc-presence").await?;
        let readiness = tertulia_plumbing::health::Readiness::default().nats(nats.client.clone());
        let ttl = Duration::from_secs(config.session_ttl_s.max(1));
        let store = PresenceStore::open(&nats, ttl, config.kv_replicas)
            .await
            .map_err(|e| StartError::Other(e.to_string()))?;
        let channel =
            |upstream| client::channel(upstream).map_err(|e| StartError::Other(chain(&e)));
        let presence = Presence::new(
            store,
            nats,
            channel(&config.auth)?,
            channel(&config.chat)?,
            ttl,
            Duration::from_millis(config.auth.timeout_ms),
        );
        let grpc = GrpcServer::bind(config.grpc)?
            .metrics(tertulia_plumbing::metrics::Registry::default())
            .readiness(readiness)
            .add_service(PresenceServiceServer::new(PresenceGrpc::new(
                presence.clone(),
            )));
        Ok(Self { grpc, presence })
    }

    /// The address the gRPC server is bound to.
    #[must_use]
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    /// Serves until `shutdown` trips, sweeping expired sessions every third of the TTL.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        tokio::spawn(sweep_until(self.presence.clone(), shutdown.clone()));
        self.grpc.serve(shutdown).await?;
        Ok(())
    }
}

async fn sweep_until(presence: Presence, shutdown: Shutdown) {
    let mut every = tokio::time::interval(presence.ttl() / 3);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(error) = presence.sweep().await {
            tracing::warn!(message = "Presence sweep failed.", %error);
        }
    }
}

/// Builds and runs svc-presence until `shutdown` trips.
pub async fn run(config: PresenceConfig, shutdown: Shutdown) -> Result<(), StartError> {
    App::build(config).await?.run(shutdown).await
}
