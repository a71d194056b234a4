//! Configuration of svc-presence. Environment: `TERTULIA_PRESENCE_<KEY>`, nested keys joined
//! by `__` (e.g. `TERTULIA_PRESENCE_GRPC__LISTEN`).

use serde::Deserialize;
use tertulia_plumbing::config::GrpcServerConfig;

/// Everything svc-presence reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct PresenceConfig {
    /// The gRPC listener.
    pub grpc: GrpcServerConfig,
}
