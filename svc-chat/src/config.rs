//! Configuration of svc-chat. Environment: `TERTULIA_CHAT_<KEY>`, nested keys joined by `__`
//! (e.g. `TERTULIA_CHAT_GRPC__LISTEN`), or the shared `TERTULIA_DATABASE__URL` and
//! `TERTULIA_NATS__URL`.

use serde::Deserialize;
use tertulia_plumbing::config::{GrpcServerConfig, NatsConfig, PostgresConfig};

/// Everything svc-chat reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatConfig {
    /// The gRPC listener (default port in deployments: 50052).
    pub grpc: GrpcServerConfig,
    /// The database and the schema svc-chat owns (conventionally `chat`).
    pub database: PostgresConfig,
    /// NATS with JetStream.
    pub nats: NatsConfig,
    /// Replicas of the `CHAT` stream (3 on a three-node cluster).
    #[serde(default = "one")]
    pub stream_replicas: usize,
    /// Longest message text, in Unicode scalar values.
    #[serde(default = "max_text_chars")]
    pub max_text_chars: usize,
}

fn one() -> usize {
    1
}

fn max_text_chars() -> usize {
    4000
}
