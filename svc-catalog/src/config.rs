//! Configuration of svc-catalog. Environment: `TERTULIA_CATALOG_<KEY>`, nested keys joined
//! by `__` (e.g. `TERTULIA_CATALOG_GRPC__LISTEN`).

use serde::Deserialize;
use tertulia_plumbing::config::GrpcServerConfig;

/// Everything svc-catalog reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogConfig {
    /// The gRPC listener.
    pub grpc: GrpcServerConfig,
}
