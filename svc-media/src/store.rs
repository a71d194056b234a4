//! svc-media's tables (schema `media`): uploads in progress, which content each video has,
//! and what processing made of each content hash.

use deadpool_postgres::Pool;
use serde::{Deserialize, Serialize};
use tertulia_plumbing::postgres::{DbError, Migration};
use time::OffsetDateTime;
use tokio_postgres::types::Json;
use uuid::Uuid;

/// Schema migrations, applied in order at start.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "uploads, videos, transcodes",
        sql: r"
CREATE TABLE uploads (
    upload_id uuid PRIMARY KEY,
    video_id uuid NOT NULL,
    owner_id uuid NOT NULL,
    length bigint NOT NULL CHECK (length >= 0),
    metadata text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    -- The last byte landed; kept until expiry so a client that lost the final answer
    -- learns from HEAD that it is done.
    completed boolean NOT NULL DEFAULT false
);
CREATE INDEX uploads_video ON uploads (video_id);
CREATE INDEX uploads_expiry ON uploads (expires_at);
-- One row per video whose file arrived; the file is the blob named by content_hash.
CREATE TABLE videos (
    video_id uuid PRIMARY KEY,
    owner_id uuid NOT NULL,
    content_hash text NOT NULL,
    size bigint NOT NULL,
    uploaded_at timestamptz NOT NULL DEFAULT now(),
    -- The UploadCompleted event reached JetStream; the sweeper re-publishes until then.
    announced boolean NOT NULL DEFAULT false
);
CREATE INDEX videos_content ON videos (content_hash);
CREATE INDEX videos_unannounced ON videos (uploaded_at) WHERE NOT announced;
-- What processing made of a content hash, shared by every video with that content.
CREATE TABLE transcodes (
    content_hash text PRIMARY KEY,
    state text NOT NULL CHECK (state IN ('running', 'done', 'failed')),
    probe jsonb,
    renditions jsonb NOT NULL DEFAULT '[]',
    reason text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);
",
    },
    Migration {
        version: 2,
        name: "deleted videos",
        sql: r"
-- Videos whose media was removed: an upload still in flight for one must not bring its
-- content back (it would belong to nobody).
CREATE TABLE deleted_videos (
    video_id uuid PRIMARY KEY,
    deleted_at timestamptz NOT NULL DEFAULT now()
);
",
    },
];

/// How the last byte of an upload was received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    /// The file is now the video's content.
    Completed,
    /// The video already had its content (another upload finished first).
    AlreadyHasContent,
    /// The video was deleted meanwhile.
    VideoDeleted,
}

/// An upload in progress.
#[derive(Debug, Clone)]
pub struct Upload {
    /// Its id (in its URL).
    pub upload_id: Uuid,
    /// The video it fills.
    pub video_id: Uuid,
    /// Who may write it.
    pub owner_id: Uuid,
    /// Declared `Upload-Length`.
    pub length: u64,
    /// Raw `Upload-Metadata`.
    pub metadata: String,
    /// When it is abandoned.
    pub expires_at: OffsetDateTime,
    /// Whether the last byte landed.
    pub completed: bool,
}

/// A video whose file arrived.
#[derive(Debug, Clone)]
pub struct StoredVideo {
    /// The video.
    pub video_id: Uuid,
    /// Its owner.
    pub owner_id: Uuid,
    /// BLAKE3 of its file.
    pub content_hash: String,
    /// Bytes.
    pub size: u64,
}

/// What ffprobe found.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Seconds.
    pub duration_s: f64,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Whether there is an audio stream to carry over.
    pub has_audio: bool,
}

/// One finished rung.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenditionRow {
    /// e.g. `360p`.
    pub name: String,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
    /// Bits per second.
    pub bitrate: u32,
}

/// Processing state of a content hash.
#[derive(Debug, Clone)]
pub struct Transcode {
    /// `running`, `done` or `failed`.
    pub state: String,
    /// The probe, once done.
    pub probe: Option<Probe>,
    /// Rungs finished so far.
    pub renditions: Vec<RenditionRow>,
    /// Why it failed.
    pub reason: String,
}

/// The tables.
#[derive(Clone)]
pub struct MediaStore {
    pool: Pool,
}

fn unsigned(n: i64) -> u64 {
    n.unsigned_abs()
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl MediaStore {
    /// A store over a migrated pool.
    #[must_use]
    pub fn new(pool: Pool) -> Self {
        Self { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.pool.get().await?)
    }

    /// Records a new upload.
    pub async fn create_upload(&self, upload: &Upload) -> Result<(), DbError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO uploads (upload_id, video_id, owner_id, length, metadata, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &upload.upload_id,
                    &upload.video_id,
                    &upload.owner_id,
                    &signed(upload.length),
                    &upload.metadata,
                    &upload.expires_at,
                ],
            )
            .await?;
        Ok(())
    }

    /// An upload by id.
    pub async fn upload(&self, upload_id: Uuid) -> Result<Option<Upload>, DbError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT upload_id, video_id, owner_id, length, metadata, expires_at, completed
                 FROM uploads WHERE upload_id = $1",
                &[&upload_id],
            )
            .await?;
        Ok(row.map(|r| Upload {
            upload_id: r.get(0),
            video_id: r.get(1),
            owner_id: r.get(2),
            length: unsigned(r.get(3)),
            metadata: r.get(4),
            expires_at: r.get(5),
            completed: r.get(6),
        }))
    }

    /// Forgets an upload.
    pub async fn delete_upload(&self, upload_id: Uuid) -> Result<(), DbError> {
        self.client()
            .await?
            .execute("DELETE FROM uploads WHERE upload_id = $1", &[&upload_id])
            .await?;
        Ok(())
    }

    /// Uploads of a video (to cancel them when it is deleted).
    pub async fn uploads_of(&self, video_id: Uuid) -> Result<Vec<Uuid>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT upload_id FROM uploads WHERE video_id = $1",
                &[&video_id],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Uploads past their expiry.
    pub async fn expired_uploads(&self, now: OffsetDateTime) -> Result<Vec<Uuid>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT upload_id FROM uploads WHERE expires_at <= $1 LIMIT 500",
                &[&now],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// The last byte landed: the upload becomes the video's content, in one transaction.
    pub async fn complete_upload(
        &self,
        upload: &Upload,
        hash: &str,
    ) -> Result<Completion, DbError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if Self::is_deleted(&tx, upload.video_id).await? {
            return Ok(Completion::VideoDeleted);
        }
        let inserted = tx
            .execute(
                "INSERT INTO videos (video_id, owner_id, content_hash, size) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (video_id) DO NOTHING",
                &[&upload.video_id, &upload.owner_id, &hash, &signed(upload.length)],
            )
            .await?;
        tx.execute(
            "UPDATE uploads SET completed = true WHERE upload_id = $1",
            &[&upload.upload_id],
        )
        .await?;
        tx.commit().await?;
        Ok(if inserted == 1 {
            Completion::Completed
        } else {
            Completion::AlreadyHasContent
        })
    }

    async fn is_deleted(
        client: &impl deadpool_postgres::GenericClient,
        video_id: Uuid,
    ) -> Result<bool, DbError> {
        Ok(client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM deleted_videos WHERE video_id = $1)",
                &[&video_id],
            )
            .await?
            .get(0))
    }

    /// Whether the video's media was deleted (no upload may fill it any more).
    pub async fn video_deleted(&self, video_id: Uuid) -> Result<bool, DbError> {
        Self::is_deleted(&self.client().await?, video_id).await
    }

    /// A video's content (asked on every media request, so the statement is prepared once
    /// per connection).
    pub async fn video(&self, video_id: Uuid) -> Result<Option<StoredVideo>, DbError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT video_id, owner_id, content_hash, size FROM videos WHERE video_id = $1",
            )
            .await?;
        let row = client.query_opt(&statement, &[&video_id]).await?;
        Ok(row.map(|r| StoredVideo {
            video_id: r.get(0),
            owner_id: r.get(1),
            content_hash: r.get(2),
            size: unsigned(r.get(3)),
        }))
    }

    /// Of `video_ids`, those whose file arrived, and whether a rendition of it plays yet: one
    /// query for a whole page of videos.
    pub async fn playable(&self, video_ids: &[Uuid]) -> Result<Vec<(Uuid, bool)>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT v.video_id,
                        EXISTS (SELECT 1 FROM transcodes t
                                WHERE t.content_hash = v.content_hash
                                  AND jsonb_array_length(t.renditions) > 0) AS processed
                 FROM videos v WHERE v.video_id = ANY($1)",
                &[&video_ids],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Marks the upload event as published.
    pub async fn mark_announced(&self, video_id: Uuid) -> Result<(), DbError> {
        self.client()
            .await?
            .execute(
                "UPDATE videos SET announced = true WHERE video_id = $1",
                &[&video_id],
            )
            .await?;
        Ok(())
    }

    /// Videos whose upload event is not known to be published.
    pub async fn unannounced(&self) -> Result<Vec<StoredVideo>, DbError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT video_id, owner_id, content_hash, size FROM videos WHERE NOT announced
                 ORDER BY uploaded_at LIMIT 500",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| StoredVideo {
                video_id: r.get(0),
                owner_id: r.get(1),
                content_hash: r.get(2),
                size: unsigned(r.get(3)),
            })
            .collect())
    }

    /// Forgets a video's content and remembers that it is deleted; returns its content hash
    /// and how many other videos still use that content.
    pub async fn delete_video(&self, video_id: Uuid) -> Result<Option<(String, i64)>, DbError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO deleted_videos (video_id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&video_id],
            )
            .await?;
        let Some(row) = client
            .query_opt(
                "DELETE FROM videos WHERE video_id = $1 RETURNING content_hash",
                &[&video_id],
            )
            .await?
        else {
            return Ok(None);
        };
        let hash: String = row.get(0);
        let users: i64 = client
            .query_one(
                "SELECT count(*) FROM videos WHERE content_hash = $1",
                &[&hash],
            )
            .await?
            .get(0);
        Ok(Some((hash, users)))
    }

    /// Whether any video uses `hash`.
    pub async fn is_referenced(&self, hash: &str) -> Result<bool, DbError> {
        Ok(self
            .client()
            .await?
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM videos WHERE content_hash = $1)",
                &[&hash],
            )
            .await?
            .get(0))
    }

    /// Processing state of `hash`.
    pub async fn transcode(&self, hash: &str) -> Result<Option<Transcode>, DbError> {
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT state, probe, renditions, reason FROM transcodes WHERE content_hash = $1",
                &[&hash],
            )
            .await?;
        Ok(row.map(|r| Transcode {
            state: r.get(0),
            probe: r.get::<_, Option<Json<Probe>>>(1).map(|j| j.0),
            renditions: r.get::<_, Json<Vec<RenditionRow>>>(2).0,
            reason: r.get(3),
        }))
    }

    /// Records progress or the outcome of processing `hash`.
    pub async fn save_transcode(&self, hash: &str, t: &Transcode) -> Result<(), DbError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO transcodes (content_hash, state, probe, renditions, reason)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (content_hash) DO UPDATE SET state = $2, probe = $3, renditions = $4,
                     reason = $5, updated_at = now()",
                &[
                    &hash,
                    &t.state,
                    &t.probe.map(Json),
                    &Json(&t.renditions),
                    &t.reason,
                ],
            )
            .await?;
        Ok(())
    }

    /// Forgets the processing of `hash` (its objects are gone).
    pub async fn delete_transcode(&self, hash: &str) -> Result<(), DbError> {
        self.client()
            .await?
            .execute("DELETE FROM transcodes WHERE content_hash = $1", &[&hash])
            .await?;
        Ok(())
    }
}
