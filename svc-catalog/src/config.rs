//! Configuration of svc-catalog. Environment: `TERTULIA_CATALOG_<KEY>`, nested keys joined
//! by `__` (e.g. `TERTULIA_CATALOG_STORE=mongodb`, `TERTULIA_CATALOG_MONGODB__URL`), or the
//! shared `TERTULIA_DATABASE__URL` and `TERTULIA_NATS__URL`.

use secrecy::SecretString;
use serde::Deserialize;
use tertulia_plumbing::config::{GrpcServerConfig, NatsConfig, PostgresConfig, UpstreamConfig};

/// Everything svc-catalog reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct CatalogConfig {
    /// The gRPC listener (default port in deployments: 50054).
    pub grpc: GrpcServerConfig,
    /// Which document store holds the videos.
    #[serde(default)]
    pub store: StoreKind,
    /// The database and schema (conventionally `catalog`) of the PostgreSQL store.
    pub database: PostgresConfig,
    /// The MongoDB store, when `store = "mongodb"`.
    pub mongodb: Option<MongoConfig>,
    /// NATS with JetStream (media events in, video changes out).
    pub nats: NatsConfig,
    /// svc-media, for the delete saga.
    pub media: UpstreamConfig,
    /// Replicas of the `MEDIA` stream (3 on a three-node cluster).
    #[serde(default = "one")]
    pub stream_replicas: usize,
    /// Seconds between rounds of the delete reconciler.
    #[serde(default = "reconcile_every_s")]
    pub reconcile_every_s: u64,
}

/// The document store behind the catalog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// JSONB documents in PostgreSQL (the default).
    #[default]
    Postgres,
    /// The MongoDB adapter.
    Mongodb,
}

/// A MongoDB deployment.
#[derive(Debug, Clone, Deserialize)]
pub struct MongoConfig {
    /// Connection string, e.g. `mongodb://127.0.0.1:27017`.
    pub url: SecretString,
    /// Database holding the `videos` collection.
    #[serde(default = "catalog")]
    pub database: String,
}

fn one() -> usize {
    1
}

fn reconcile_every_s() -> u64 {
    30
}

fn catalog() -> String {
    "catalog".into()
}
