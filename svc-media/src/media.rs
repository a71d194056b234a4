//! The state every part of svc-media shares.

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use tertulia_plumbing::{
    metrics::{Counter, EncodeLabelSet, Family, Histogram, Registry, exponential_buckets},
    nats::Nats,
};
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
    /// What uploads and transcoding are measured by.
    pub metrics: MediaMetrics,
    /// What the origin knows of recently served videos.
    pub contents: Arc<crate::origin::ContentCache>,
}

/// Labels of a completed upload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct UploadLabels {
    /// `true` when the content was already stored.
    deduplicated: String,
}

/// Labels of a transcoding attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TranscodeLabels {
    /// `ready`, `failed` (a verdict) or `retry` (a transient failure).
    outcome: &'static str,
}

/// svc-media's own series: `tertulia_uploads_completed_total{deduplicated}`,
/// `tertulia_upload_bytes_total`, `tertulia_transcodes_total{outcome}` and
/// `tertulia_transcode_duration_seconds` (one attempt, probe to last rung).
#[derive(Debug, Clone)]
pub struct MediaMetrics {
    uploads: Family<UploadLabels, Counter>,
    upload_bytes: Counter,
    transcodes: Family<TranscodeLabels, Counter>,
    transcode_seconds: Histogram,
}

impl MediaMetrics {
    /// The series, registered with `registry`.
    #[must_use]
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            uploads: Family::default(),
            upload_bytes: Counter::default(),
            transcodes: Family::default(),
            // 0.25 s to about 2 h.
            transcode_seconds: Histogram::new(exponential_buckets(0.25, 2.0, 15)),
        };
        // Every outcome from 0, so rates work before the first event.
        for deduplicated in ["false", "true"] {
            drop(metrics.uploads.get_or_create(&UploadLabels {
                deduplicated: deduplicated.into(),
            }));
        }
        for outcome in ["ready", "failed", "retry"] {
            drop(
                metrics
                    .transcodes
                    .get_or_create(&TranscodeLabels { outcome }),
            );
        }
        registry.register(
            "tertulia_uploads_completed",
            "Uploads whose last byte arrived and was stored",
            metrics.uploads.clone(),
        );
        registry.register(
            "tertulia_upload_bytes",
            "Bytes of completed uploads",
            metrics.upload_bytes.clone(),
        );
        registry.register(
            "tertulia_transcodes",
            "Transcoding attempts by outcome",
            metrics.transcodes.clone(),
        );
        registry.register(
            "tertulia_transcode_duration_seconds",
            "Time of one transcoding attempt",
            metrics.transcode_seconds.clone(),
        );
        metrics
    }

    /// An upload of `bytes` completed.
    pub fn upload_completed(&self, bytes: u64, deduplicated: bool) {
        self.uploads
            .get_or_create(&UploadLabels {
                deduplicated: deduplicated.to_string(),
            })
            .inc();
        self.upload_bytes.inc_by(bytes);
    }

    /// A transcoding attempt ended with `outcome` after `elapsed`.
    pub fn transcoded(&self, outcome: &'static str, elapsed: Duration) {
        self.transcodes
            .get_or_create(&TranscodeLabels { outcome })
            .inc();
        self.transcode_seconds.observe(elapsed.as_secs_f64());
    }
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
