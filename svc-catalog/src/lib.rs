//! svc-catalog will own video metadata and search (a document store behind a trait: PostgreSQL JSONB by default, MongoDB adapter), consuming media events.
//!
//! Today it starts, binds its gRPC port and answers `grpc.health.v1` (and drains on
//! SIGTERM) so the stack, the mesh and the tests can rely on it; `tertulia.catalog.v1.CatalogService` is
//! defined in `proto/` and not served yet.

pub mod config;

pub use config::CatalogConfig;

use std::net::SocketAddr;

use tertulia_plumbing::{StartError, grpc::GrpcServer, shutdown::Shutdown};

/// A built, bound svc-catalog, ready to serve.
pub struct App {
    grpc: GrpcServer,
}

impl App {
    /// Binds the listener.
    pub async fn build(config: CatalogConfig) -> Result<Self, StartError> {
        Ok(Self {
            grpc: GrpcServer::bind(config.grpc).await?,
        })
    }

    /// The address the gRPC server is bound to.
    #[must_use]
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    /// Serves until `shutdown` trips.
    pub async fn run(self, shutdown: Shutdown) -> Result<(), StartError> {
        Ok(self.grpc.serve(shutdown).await?)
    }
}

/// Builds and runs svc-catalog until `shutdown` trips.
pub async fn run(config: CatalogConfig, shutdown: Shutdown) -> Result<(), StartError> {
    App::build(config).await?.run(shutdown).await
}
