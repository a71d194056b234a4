//! Configuration of svc-chat. Environment: `TERTULIA_CHAT_<KEY>`, nested keys joined
//! by `__` (e.g. `TERTULIA_CHAT_GRPC__LISTEN`).

use serde::Deserialize;
use tertulia_plumbing::config::GrpcServerConfig;

/// Everything svc-chat reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatConfig {
    /// The gRPC listener.
    pub grpc: GrpcServerConfig,
}
