//! svc-catalog will own video metadata and search (a document store behind a trait: PostgreSQL JSONB by default, MongoDB adapter), consuming media events.
//!
//! Today it starts, binds its gRPC port and answers `grpc.health.v1` (and drains on
//! SIGTERM) so the stack, the mesh and the tests can rely on it; `tertulia.catalog.v1.CatalogService` is
//! defined in `proto/` and not served yet.

pub mod config;

pub use config::CatalogConfig;

use tertulia_plumbing::{StartError, grpc::GrpcServer, shutdown::Shutdown};

/// A built, bound svc-catalog: today its gRPC server with health only.
pub type App = GrpcServer;

/// Binds the listener.
pub async fn build(config: CatalogConfig) -> Result<App, StartError> {
    Ok(GrpcServer::bind(config.grpc).await?)
}

/// Builds and runs svc-catalog until `shutdown` trips.
pub async fn run(config: CatalogConfig, shutdown: Shutdown) -> Result<(), StartError> {
    Ok(build(config).await?.serve(shutdown).await?)
}
