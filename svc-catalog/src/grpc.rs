//! `tertulia.catalog.v1.CatalogService`: decode → [`Catalog`] → encode. Nothing else.

use tertulia_plumbing::wire::timestamp;
use tertulia_proto::catalog::v1 as pb;
use tonic::{Request, Response, Status};

use crate::{
    catalog::{Catalog, ListRequest},
    deletion::Deletion,
    domain::{Invalid, Status as VideoStatus, Video, VideoChanges, Visibility},
};

/// The wire form of a video.
#[must_use]
pub fn video_pb(v: &Video) -> pb::Video {
    pb::Video {
        video_id: v.id.to_string(),
        owner_id: v.owner_id.to_string(),
        title: v.title.clone(),
        description: v.description.clone(),
        tags: v.tags.clone(),
        visibility: match v.visibility {
            Visibility::Public => pb::Visibility::Public,
            Visibility::Unlisted => pb::Visibility::Unlisted,
            Visibility::Private => pb::Visibility::Private,
        }
        .into(),
        status: match v.status {
            VideoStatus::AwaitingUpload => pb::VideoStatus::AwaitingUpload,
            VideoStatus::Processing => pb::VideoStatus::Processing,
            VideoStatus::Ready => pb::VideoStatus::Ready,
            VideoStatus::Failed => pb::VideoStatus::Failed,
        }
        .into(),
        duration_s: v.duration_s,
        width: v.width,
        height: v.height,
        renditions: v
            .renditions
            .iter()
            .map(|r| pb::Rendition {
                name: r.name.clone(),
                width: r.width,
                height: r.height,
                bitrate: r.bitrate,
            })
            .collect(),
        created_at: Some(timestamp(v.created_at)),
        failure_reason: v.failure_reason.clone().unwrap_or_default(),
        content_hash: v.content_hash.clone().unwrap_or_default(),
    }
}

fn visibility(raw: i32) -> Result<Option<Visibility>, Invalid> {
    match pb::Visibility::try_from(raw) {
        Ok(pb::Visibility::Unspecified) => Ok(None),
        Ok(pb::Visibility::Public) => Ok(Some(Visibility::Public)),
        Ok(pb::Visibility::Unlisted) => Ok(Some(Visibility::Unlisted)),
        Ok(pb::Visibility::Private) => Ok(Some(Visibility::Private)),
        Err(_) => Err(Invalid(
            "visibility must be public, unlisted or private".into(),
        )),
    }
}

/// The gRPC face of [`Catalog`].
#[derive(Clone)]
pub struct CatalogGrpc {
    catalog: Catalog,
    deletion: Deletion,
}

impl CatalogGrpc {
    /// Serves `catalog`, deleting through `deletion`.
    #[must_use]
    pub fn new(catalog: Catalog, deletion: Deletion) -> Self {
        Self { catalog, deletion }
    }
}

#[tonic::async_trait]
impl pb::catalog_service_server::CatalogService for CatalogGrpc {
    async fn create_video(
        &self,
        request: Request<pb::CreateVideoRequest>,
    ) -> Result<Response<pb::CreateVideoResponse>, Status> {
        let r = request.into_inner();
        let changes = VideoChanges {
            title: Some(r.title),
            description: Some(r.description),
            tags: Some(r.tags),
            visibility: visibility(r.visibility).map_err(crate::error::CatalogError::from)?,
        };
        let video = self.catalog.create(&r.actor_id, changes).await?;
        Ok(Response::new(pb::CreateVideoResponse {
            video: Some(video_pb(&video)),
        }))
    }

    async fn get_video(
        &self,
        request: Request<pb::GetVideoRequest>,
    ) -> Result<Response<pb::GetVideoResponse>, Status> {
        let r = request.into_inner();
        let video = self.catalog.get(&r.actor_id, &r.video_id).await?;
        Ok(Response::new(pb::GetVideoResponse {
            video: Some(video_pb(&video)),
        }))
    }

    async fn list_videos(
        &self,
        request: Request<pb::ListVideosRequest>,
    ) -> Result<Response<pb::ListVideosResponse>, Status> {
        let r = request.into_inner();
        let page = self
            .catalog
            .list(
                &r.actor_id,
                ListRequest {
                    query: r.query,
                    tag: r.tag,
                    owner_id: r.owner_id,
                    page_token: r.page_token,
                    limit: r.limit as usize,
                },
            )
            .await?;
        Ok(Response::new(pb::ListVideosResponse {
            videos: page.videos.iter().map(video_pb).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    async fn update_video(
        &self,
        request: Request<pb::UpdateVideoRequest>,
    ) -> Result<Response<pb::UpdateVideoResponse>, Status> {
        let r = request.into_inner();
        let changes = VideoChanges {
            title: r.title,
            description: r.description,
            tags: r.tags.map(|t| t.tags),
            visibility: visibility(r.visibility).map_err(crate::error::CatalogError::from)?,
        };
        let video = self
            .catalog
            .update(&r.actor_id, &r.video_id, changes)
            .await?;
        Ok(Response::new(pb::UpdateVideoResponse {
            video: Some(video_pb(&video)),
        }))
    }

    async fn delete_video(
        &self,
        request: Request<pb::DeleteVideoRequest>,
    ) -> Result<Response<pb::DeleteVideoResponse>, Status> {
        let r = request.into_inner();
        self.deletion.delete(&r.actor_id, &r.video_id).await?;
        Ok(Response::new(pb::DeleteVideoResponse {}))
    }
}
