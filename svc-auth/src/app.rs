//! Wiring: pool and migrations, keys, the gRPC server.

use std::{net::SocketAddr, time::Duration};

use tertulia_plumbing::{StartError, grpc::GrpcServer, postgres, shutdown::Shutdown};
use tertulia_proto::auth::v1::auth_service_server::AuthServiceServer;

use crate::{accounts::Accounts, config::AuthConfig, grpc::AuthGrpc, store::AuthStore};

/// A built, bound svc-auth, ready to serve.
pub struct App {
    grpc: GrpcServer,
    accounts: Accounts,
}

impl App {
    /// Connects and migrates the database, loads signing keys and binds the listener.
    pub async fn build(config: AuthConfig) -> Result<Self, StartError> {
        let pool = postgres::connect(&config.database).await?;
        postgres::migrate(&pool, crate::store::MIGRATIONS).await?;
        let readiness = tertulia_plumbing::health::Readiness::default().postgres(pool.clone());
        let accounts = Accounts::build(AuthStore::new(pool), &config)
            .await
            .map_err(|e| StartError::Other(tertulia_plumbing::error::chain(&e)))?;
        let grpc = GrpcServer::bind(config.grpc.clone())?
            .metrics(tertulia_plumbing::metrics::Registry::default())
            .readiness(readiness)
            .add_service(AuthServiceServer::new(AuthGrpc::new(accounts.clone())));
        Ok(Self { grpc, accounts })
    }

    /// The address the gRPC server is bound to.
    #[must_use]
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    /// The use cases, for tests that reach below the wire.
    #[must_use]
    pub fn accounts(&self) -> &Accounts {
        &self.accounts
    }

    /// Serves until `shutdown` trips, sweeping stale rows in the background.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        tokio::spawn(sweep_until(self.accounts.clone(), shutdown.clone()));
        self.grpc.serve(shutdown).await?;
        Ok(())
    }
}

/// How often stale throttle windows and expired refresh tokens are deleted.
const SWEEP_EVERY: Duration = Duration::from_mins(5);

/// Keeps the throttle and token tables from growing without bound. A failed sweep is logged
/// and tried again next time; nothing depends on it for correctness.
async fn sweep_until(accounts: Accounts, shutdown: Shutdown) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        match accounts.sweep().await {
            Ok(deleted) => tracing::debug!(message = "Swept stale rows.", deleted),
            Err(error) => tracing::warn!(message = "Sweep failed.", error = %error),
        }
    }
}

/// Builds and runs svc-auth until `shutdown` trips.
pub async fn run(config: AuthConfig, shutdown: Shutdown) -> Result<(), StartError> {
    App::build(config).await?.run(shutdown).await
}
