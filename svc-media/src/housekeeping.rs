//! Removing media and keeping storage tidy.
//!
//! - [`delete_media`]: step 2 of the catalog's delete saga. Cancels the video's unfinished
//!   uploads, forgets its content, and removes the content's objects when no other video
//!   uses them (content is shared by identical uploads). Idempotent.
//! - [`sweep_once`]: expired uploads and their partial files go; uploads whose `uploaded`
//!   event was not confirmed are announced again.
//! - [`reconcile_once`]: objects whose content hash no video references, older than the
//!   grace period, are removed. A referenced object is never removed: references are read
//!   from the database at the moment of the decision.

use std::collections::BTreeSet;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{events, media::Media, uploads};

/// Removes every object of `video_id` nobody else uses, and announces it.
pub async fn delete_media(media: &Media, video_id: Uuid) -> Result<(), String> {
    for upload_id in media
        .store
        .uploads_of(video_id)
        .await
        .map_err(|e| e.to_string())?
    {
        uploads::discard(media, upload_id).await?;
    }
    let deleted = media
        .store
        .delete_video(video_id)
        .await
        .map_err(|e| e.to_string())?;
    // After the row is gone, so a request that reads the database from now on cannot put it
    // back. (One that read the row just before can: then it lasts two TTLs at most, as on
    // the other instances.)
    media.contents.forget(video_id);
    if let Some((hash, others)) = deleted {
        if others == 0 {
            media
                .blobs
                .delete_content(&hash)
                .await
                .map_err(|e| e.to_string())?;
            media
                .store
                .delete_transcode(&hash)
                .await
                .map_err(|e| e.to_string())?;
        }
        tracing::info!(message = "Media deleted.", video_id = %video_id, hash = %hash, shared_with = others);
    }
    events::deleted(&media.nats, video_id).await
}

/// One sweep: expired uploads, unconfirmed announcements. Returns uploads removed.
pub async fn sweep_once(media: &Media) -> Result<usize, String> {
    sweep_at(media, OffsetDateTime::now_utc()).await
}

/// [`sweep_once`] as if it were `now` (tests look into the future instead of waiting).
pub async fn sweep_at(media: &Media, now: OffsetDateTime) -> Result<usize, String> {
    let expired = media
        .store
        .expired_uploads(now)
        .await
        .map_err(|e| e.to_string())?;
    for upload_id in &expired {
        uploads::discard(media, *upload_id).await?;
    }
    for video in media.store.unannounced().await.map_err(|e| e.to_string())? {
        uploads::announce(media, &video).await;
    }
    Ok(expired.len())
}

/// One reconciler round; returns the objects removed.
pub async fn reconcile_once(media: &Media, grace: std::time::Duration) -> Result<usize, String> {
    let cutoff = chrono_cutoff(grace);
    let mut objects = media
        .blobs
        .list("originals")
        .await
        .map_err(|e| e.to_string())?;
    objects.extend(
        media
            .blobs
            .list("derived")
            .await
            .map_err(|e| e.to_string())?,
    );
    let mut removed = 0;
    let mut forgotten = BTreeSet::new();
    for meta in objects {
        let Some(hash) = meta.location.parts().nth(1).map(|p| p.as_ref().to_owned()) else {
            continue;
        };
        if meta.last_modified.timestamp() > cutoff {
            continue;
        }
        if media
            .store
            .is_referenced(&hash)
            .await
            .map_err(|e| e.to_string())?
        {
            continue;
        }
        media
            .blobs
            .delete(&meta.location)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(message = "Orphaned object removed.", key = %meta.location);
        removed += 1;
        forgotten.insert(hash);
    }
    for hash in forgotten {
        media
            .store
            .delete_transcode(&hash)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(removed)
}

fn chrono_cutoff(grace: std::time::Duration) -> i64 {
    OffsetDateTime::now_utc().unix_timestamp() - i64::try_from(grace.as_secs()).unwrap_or(i64::MAX)
}
