//! Configuration of svc-media. Environment: `TERTULIA_MEDIA_<KEY>`, nested keys joined
//! by `__` (e.g. `TERTULIA_MEDIA_GRPC__LISTEN`).

use serde::Deserialize;
use tertulia_plumbing::config::GrpcServerConfig;

/// Everything svc-media reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct MediaConfig {
    /// The gRPC listener.
    pub grpc: GrpcServerConfig,
}
