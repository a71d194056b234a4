//! The delete saga. Step 1 tombstones the catalog entry (from then on the video is gone for
//! every reader); step 2 asks svc-media to remove every object of the video; step 3 forgets
//! the entry. A step that fails is retried by the reconciler, which walks tombstones until
//! each saga has finished: a crash between steps leaves a tombstone, never a half-visible
//! video or an unowned object.

use std::time::Duration;

use tertulia_plumbing::telemetry::Upstream as Channel;
use tertulia_plumbing::{client::with_deadline, shutdown::Shutdown};
use tertulia_proto::media::v1::{DeleteMediaRequest, media_service_client::MediaServiceClient};

use crate::{catalog::Catalog, domain::Video, error::CatalogError};

/// Tombstones handled per reconciler round.
const BATCH: usize = 100;

/// Runs delete sagas.
#[derive(Clone)]
pub struct Deletion {
    catalog: Catalog,
    media: MediaServiceClient<Channel>,
    deadline: Duration,
}

impl Deletion {
    /// Sagas over `catalog`, removing media through `media`.
    #[must_use]
    pub fn new(catalog: Catalog, media: Channel, deadline: Duration) -> Self {
        Self {
            catalog,
            media: MediaServiceClient::new(media),
            deadline,
        }
    }

    /// Deletes a video for its owner: tombstone, then media removal. The caller's answer
    /// depends only on the tombstone; the rest finishes now or in the reconciler.
    pub async fn delete(&self, actor_id: &str, id: &str) -> Result<(), CatalogError> {
        let video = self.catalog.tombstone(actor_id, id).await?;
        if let Err(error) = self.finish(&video).await {
            tracing::warn!(message = "Media removal deferred to the reconciler.", video_id = %video.id, error = %error);
        }
        Ok(())
    }

    /// Steps 2 and 3 for one tombstoned video.
    async fn finish(&self, video: &Video) -> Result<(), String> {
        self.media
            .clone()
            .delete_media(with_deadline(
                DeleteMediaRequest {
                    video_id: video.id.to_string(),
                },
                self.deadline,
            ))
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        self.catalog
            .store()
            .remove(video.id)
            .await
            .map_err(|e| e.to_string())
    }

    /// One reconciler round: finishes every saga it finds. Returns how many finished.
    pub async fn reconcile_once(&self) -> Result<usize, CatalogError> {
        let mut finished = 0;
        for video in self.catalog.store().tombstoned(BATCH).await? {
            match self.finish(&video).await {
                Ok(()) => finished += 1,
                Err(error) => {
                    tracing::warn!(message = "Media removal failed, will retry.", video_id = %video.id, error = %error);
                }
            }
        }
        Ok(finished)
    }

    /// Reconciles every `every` until `shutdown` trips.
    pub async fn reconcile_until(self, every: Duration, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.reconcile_once().await {
                tracing::warn!(message = "Delete reconciler round failed.", error = %error);
            }
        }
    }
}
