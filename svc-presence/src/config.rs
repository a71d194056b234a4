//! Configuration of svc-presence. Environment: `TERTULIA_PRESENCE_<KEY>`, nested keys joined
//! by `__` (e.g. `TERTULIA_PRESENCE_GRPC__LISTEN`), or the shared `TERTULIA_NATS__URL`.

use serde::Deserialize;
use tertulia_plumbing::config::{GrpcServerConfig, NatsConfig, UpstreamConfig};

/// Everything svc-presence reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct PresenceConfig {
    /// The gRPC listener (default port in deployments: 50053).
    pub grpc: GrpcServerConfig,
    /// NATS with JetStream (the KV buckets) and core NATS (the pushes).
    pub nats: NatsConfig,
    /// svc-auth, for the contacts a change is pushed to.
    pub auth: UpstreamConfig,
    /// svc-chat, for the conversation peers a change is pushed to.
    pub chat: UpstreamConfig,
    /// A session without a heartbeat for this long is gone, in seconds. Gateways beat at
    /// least twice per period.
    #[serde(default = "session_ttl_s")]
    pub session_ttl_s: u64,
    /// Replicas of the KV buckets (3 on a three-node cluster).
    #[serde(default = "one")]
    pub kv_replicas: usize,
}

fn session_ttl_s() -> u64 {
    60
}

fn one() -> usize {
    1
}
