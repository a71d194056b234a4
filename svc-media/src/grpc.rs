//! `tertulia.media.v1.MediaService`: upload URLs, signed playback URLs, media removal.
//! The bytes themselves travel over HTTP (see [`crate::uploads`] and [`crate::origin`]).

use std::{collections::HashMap, time::Duration};

use tertulia_plumbing::{error as status, wire::timestamp};
use tertulia_proto::media::v1 as pb;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{housekeeping, media::Media, signing::UploadGrant};

/// The gRPC face of svc-media.
#[derive(Clone)]
pub struct MediaGrpc {
    media: Media,
}

impl MediaGrpc {
    /// Serves `media`.
    #[must_use]
    pub fn new(media: Media) -> Self {
        Self { media }
    }
}

fn id(raw: &str, what: &str) -> Result<Uuid, Status> {
    raw.parse()
        .map_err(|_| Status::invalid_argument(format!("{what} is not a valid id")))
}

/// Most videos signed in one call (a page of the largest size).
const MAX_BATCH: usize = 200;

impl MediaGrpc {
    /// Signed URLs for every video of `ids` whose file arrived, by video id.
    async fn playbacks(
        &self,
        ids: &[Uuid],
    ) -> Result<HashMap<String, pb::GetPlaybackResponse>, Status> {
        let playable = self
            .media
            .store
            .playable(ids)
            .await
            .map_err(|e| status::unavailable(&e))?;
        let expires_at = expiry(self.media.playback_ttl());
        Ok(playable
            .into_iter()
            .map(|(video_id, processed)| {
                let token = self
                    .media
                    .signer
                    .playback(video_id, expires_at.unix_timestamp());
                let url = |path: &str| {
                    format!(
                        "{}/media/{video_id}/{path}?{}",
                        self.media.public_url,
                        token.query()
                    )
                };
                let playback = pb::GetPlaybackResponse {
                    hls_url: if processed {
                        url("hls/master.m3u8")
                    } else {
                        String::new()
                    },
                    mp4_url: url("original"),
                    thumbnail_url: if processed {
                        url("thumbnail.jpg")
                    } else {
                        String::new()
                    },
                    expires_at: Some(timestamp(expires_at)),
                };
                (video_id.to_string(), playback)
            })
            .collect())
    }
}

fn expiry(ttl: Duration) -> OffsetDateTime {
    OffsetDateTime::now_utc() + ttl
}

#[tonic::async_trait]
impl pb::media_service_server::MediaService for MediaGrpc {
    async fn create_upload(
        &self,
        request: Request<pb::CreateUploadRequest>,
    ) -> Result<Response<pb::CreateUploadResponse>, Status> {
        let r = request.into_inner();
        let video_id = id(&r.video_id, "video_id")?;
        let owner_id = id(&r.owner_id, "owner_id")?;
        let expires_at = expiry(Duration::from_secs(self.media.limits.upload_ttl_s));
        let token = self.media.signer.upload(UploadGrant {
            video_id,
            owner_id,
            exp: expires_at.unix_timestamp(),
        });
        Ok(Response::new(pb::CreateUploadResponse {
            upload_url: format!("{}/uploads?token={token}", self.media.upload_url),
            expires_at: Some(timestamp(expires_at)),
            max_size: self.media.limits.max_upload_bytes,
        }))
    }

    async fn get_playback(
        &self,
        request: Request<pb::GetPlaybackRequest>,
    ) -> Result<Response<pb::GetPlaybackResponse>, Status> {
        let video_id = id(&request.into_inner().video_id, "video_id")?;
        let mut playbacks = self.playbacks(&[video_id]).await?;
        Ok(Response::new(
            playbacks.remove(&video_id.to_string()).unwrap_or_default(),
        ))
    }

    async fn get_playbacks(
        &self,
        request: Request<pb::GetPlaybacksRequest>,
    ) -> Result<Response<pb::GetPlaybacksResponse>, Status> {
        let ids = request
            .into_inner()
            .video_ids
            .iter()
            .map(|raw| id(raw, "video_ids"))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_BATCH} video_ids"
            )));
        }
        Ok(Response::new(pb::GetPlaybacksResponse {
            playbacks: self.playbacks(&ids).await?,
        }))
    }

    async fn delete_media(
        &self,
        request: Request<pb::DeleteMediaRequest>,
    ) -> Result<Response<pb::DeleteMediaResponse>, Status> {
        let video_id = id(&request.into_inner().video_id, "video_id")?;
        housekeeping::delete_media(&self.media, video_id)
            .await
            .map_err(|e| Status::unavailable(format!("media removal failed, retry: {e}")))?;
        Ok(Response::new(pb::DeleteMediaResponse {}))
    }
}
