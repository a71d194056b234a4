//! svc-media will own uploads (tus), blobs, transcoding with ffmpeg and the signed media origin, publishing to the JetStream stream `MEDIA`.
//!
//! Today it starts, binds its gRPC port and answers `grpc.health.v1` (and drains on
//! SIGTERM) so the stack, the mesh and the tests can rely on it; `tertulia.media.v1.MediaService` is
//! defined in `proto/` and not served yet.

pub mod config;

pub use config::MediaConfig;

use tertulia_plumbing::{StartError, grpc::GrpcServer, shutdown::Shutdown};

/// A built, bound svc-media: today its gRPC server with health only.
pub type App = GrpcServer;

/// Binds the listener.
pub async fn build(config: MediaConfig) -> Result<App, StartError> {
    Ok(GrpcServer::bind(config.grpc).await?)
}

/// Builds and runs svc-media until `shutdown` trips.
pub async fn run(config: MediaConfig, shutdown: Shutdown) -> Result<(), StartError> {
    Ok(build(config).await?.serve(shutdown).await?)
}
