//! svc-media will own uploads (tus), blobs, transcoding with ffmpeg and the signed media origin, publishing to the JetStream stream `MEDIA`.
//!
//! Today it starts, binds its gRPC port and answers `grpc.health.v1` (and drains on
//! SIGTERM) so the stack, the mesh and the tests can rely on it; `tertulia.media.v1.MediaService` is
//! defined in `proto/` and not served yet.

pub mod config;

pub use config::MediaConfig;

use std::net::SocketAddr;

use tertulia_plumbing::{StartError, grpc::GrpcServer, shutdown::Shutdown};

/// A built, bound svc-media, ready to serve.
pub struct App {
    grpc: GrpcServer,
}

impl App {
    /// Binds the listener.
    pub async fn build(config: MediaConfig) -> Result<Self, StartError> {
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

/// Builds and runs svc-media until `shutdown` trips.
pub async fn run(config: MediaConfig, shutdown: Shutdown) -> Result<(), StartError> {
    App::build(config).await?.run(shutdown).await
}
