//! Configuration of svc-media. Environment: `TERTULIA_MEDIA_<KEY>`, nested keys joined by
//! `__` (e.g. `TERTULIA_MEDIA_BLOBS__KIND=s3`, `TERTULIA_MEDIA_SIGNING__KEYS__k1=...`), or the
//! shared `TERTULIA_DATABASE__URL` and `TERTULIA_NATS__URL`.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use secrecy::SecretString;
use serde::Deserialize;
use tertulia_plumbing::config::{GrpcServerConfig, NatsConfig, PostgresConfig};

/// Everything svc-media reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct MediaConfig {
    /// The gRPC listener (default port in deployments: 50055).
    pub grpc: GrpcServerConfig,
    /// The public HTTP listener: tus uploads and the media origin (default port 8090).
    pub http_listen: SocketAddr,
    /// Base URL under which clients reach the origin: a CDN in production. Playback URLs
    /// start with it. Unset: the listener's own address (development).
    pub public_url: Option<String>,
    /// Base URL of the tus endpoint; the origin's `public_url` when unset (uploads bypass
    /// the CDN in production: point this at the origin itself).
    pub upload_url: Option<String>,
    /// The database and the schema svc-media owns (conventionally `media`).
    pub database: PostgresConfig,
    /// NATS with JetStream.
    pub nats: NatsConfig,
    /// Replicas of the `MEDIA` stream (3 on a three-node cluster).
    #[serde(default = "one")]
    pub stream_replicas: usize,
    /// Where blobs live.
    pub blobs: BlobConfig,
    /// Local folder for partial uploads and transcoder scratch space (always local disk).
    pub work_dir: PathBuf,
    /// HMAC keys for upload tokens and playback URLs.
    pub signing: SigningConfig,
    /// Uploads and transcoding.
    #[serde(default)]
    pub limits: MediaLimits,
}

/// Blob storage backends.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BlobConfig {
    /// A local folder (the default for development).
    Fs {
        /// The folder (created when missing).
        root: PathBuf,
    },
    /// S3-compatible object storage.
    S3 {
        /// Bucket (must exist).
        bucket: String,
        /// Endpoint URL for S3-compatible servers; AWS when unset.
        endpoint: Option<String>,
        /// Region.
        #[serde(default = "us_east_1")]
        region: String,
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: SecretString,
    },
}

/// Keys for signing; every key in `keys` verifies, `current` signs (rotate by adding a key,
/// switching `current`, and dropping the old one after the longest URL lifetime).
#[derive(Debug, Clone, Deserialize)]
pub struct SigningConfig {
    /// Key id that signs new tokens.
    pub current: String,
    /// Key id → secret (at least 32 bytes).
    pub keys: BTreeMap<String, SecretString>,
}

/// Limits and timings of uploads and processing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MediaLimits {
    /// Largest `Upload-Length` accepted at creation, in bytes.
    pub max_upload_bytes: u64,
    /// Seconds an upload URL (and an unfinished upload) lives.
    pub upload_ttl_s: u64,
    /// Seconds a playback URL lives.
    pub playback_ttl_s: u64,
    /// Videos transcoded at once by this instance.
    pub workers: usize,
    /// Seconds without ffmpeg progress before it is killed (and JetStream redelivers).
    pub stall_timeout_s: u64,
    /// Attempts at processing one upload before it is `failed`.
    pub max_attempts: i64,
    /// Seconds between sweeps (expired uploads, unannounced uploads, orphaned blobs).
    pub sweep_every_s: u64,
    /// Age in seconds below which an unreferenced blob is left alone by the reconciler
    /// (it may belong to an upload finishing right now).
    pub orphan_grace_s: u64,
    /// The ffmpeg binary.
    pub ffmpeg: PathBuf,
    /// The ffprobe binary.
    pub ffprobe: PathBuf,
}

impl Default for MediaLimits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 4 << 30,
            upload_ttl_s: 24 * 3600,
            playback_ttl_s: 6 * 3600,
            workers: 2,
            stall_timeout_s: 60,
            max_attempts: 3,
            sweep_every_s: 60,
            orphan_grace_s: 3600,
            ffmpeg: "ffmpeg".into(),
            ffprobe: "ffprobe".into(),
        }
    }
}

fn one() -> usize {
    1
}

fn us_east_1() -> String {
    "us-east-1".into()
}
