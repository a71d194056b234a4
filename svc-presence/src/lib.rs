//! svc-presence will own who is online on which gateway, last seen and typing indicators (NATS KV with TTL, core NATS).
//!
//! Today it starts, binds its gRPC port and answers `grpc.health.v1` (and drains on
//! SIGTERM) so the stack, the mesh and the tests can rely on it; `tertulia.presence.v1.PresenceService` is
//! defined in `proto/` and not served yet.

pub mod config;

pub use config::PresenceConfig;

use tertulia_plumbing::{StartError, grpc::GrpcServer, shutdown::Shutdown};

/// A built, bound svc-presence: today its gRPC server with health only.
pub type App = GrpcServer;

/// Binds the listener.
pub async fn build(config: PresenceConfig) -> Result<App, StartError> {
    Ok(GrpcServer::bind(config.grpc).await?)
}

/// Builds and runs svc-presence until `shutdown` trips.
pub async fn run(config: PresenceConfig, shutdown: Shutdown) -> Result<(), StartError> {
    Ok(build(config).await?.serve(shutdown).await?)
}
