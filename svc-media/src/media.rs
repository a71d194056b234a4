//! The state every part of svc-media shares.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use tertulia_plumbing::nats::Nats;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{blobs::Blobs, config::MediaLimits, signing::Signer, store::MediaStore};

/// Hashing state of an upload in progress, kept between `PATCH` requests so the file is
/// hashed once, while it streams in.
#[derive(Debug, Default)]
pub struct UploadSession {
    /// BLAKE3 over the bytes received so far (rebuilt from the partial file when missing,
    /// e.g. after a restart).
    pub hasher: Option<blake3::Hasher>,
}

/// svc-media's shared state.
#[derive(Clone)]
pub struct Media {
    /// Tables.
    pub store: MediaStore,
    /// Blobs.
    pub blobs: Blobs,
    /// NATS with JetStream.
    pub nats: Nats,
    /// Signatures.
    pub signer: Signer,
    /// Limits and timings.
    pub limits: Arc<MediaLimits>,
    /// Base URL of playback URLs.
    pub public_url: Arc<str>,
    /// Base URL of upload URLs.
    pub upload_url: Arc<str>,
    /// Local scratch space.
    pub work_dir: Arc<PathBuf>,
    /// One lock per upload in progress: one writer at a time.
    pub sessions: Arc<Mutex<HashMap<Uuid, Arc<Mutex<UploadSession>>>>>,
}

impl Media {
    /// Where the partial file of an upload lives.
    #[must_use]
    pub fn partial_path(&self, upload_id: Uuid) -> PathBuf {
        self.work_dir.join("uploads").join(upload_id.to_string())
    }

    /// The session (and its lock) of an upload.
    pub async fn session(&self, upload_id: Uuid) -> Arc<Mutex<UploadSession>> {
        Arc::clone(self.sessions.lock().await.entry(upload_id).or_default())
    }

    /// Forgets an upload's session.
    pub async fn end_session(&self, upload_id: Uuid) {
        self.sessions.lock().await.remove(&upload_id);
    }

    /// Lifetime of a playback URL.
    #[must_use]
    pub fn playback_ttl(&self) -> Duration {
        Duration::from_secs(self.limits.playback_ttl_s)
    }
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
