//! `tertulia.catalog.v1.CatalogService` and `tertulia.catalog.v2.CatalogService`: decode →
//! [`Catalog`] → encode. Nothing else. v1 `ListVideos` is an adapter over the v2 search.

use tertulia_plumbing::wire::timestamp;
use tertulia_proto::catalog::{v1 as pb, v2 as pb2};
use tonic::{Request, Response, Status};

use crate::{
    catalog::{Catalog, SearchRequest},
    deletion::Deletion,
    domain::{Invalid, Order, Status as VideoStatus, Video, VideoChanges, Visibility},
};

/// `fn $name(&Video) -> $pkg::Video`: the wire form of a video in a package whose `Video`
/// has v1's fields (v2 keeps them; each package owns its messages).
macro_rules! video_to_wire {
    ($name:ident, $($pkg:ident)::+) => {
        /// The wire form of a video.
        #[must_use]
        pub fn $name(v: &Video) -> $($pkg)::+::Video {
            use $($pkg)::+ as wire;
            wire::Video {
                video_id: v.id.to_string(),
                owner_id: v.owner_id.to_string(),
                title: v.title.clone(),
                description: v.description.clone(),
                tags: v.tags.clone(),
                visibility: match v.visibility {
                    Visibility::Public => wire::Visibility::Public,
                    Visibility::Unlisted => wire::Visibility::Unlisted,
                    Visibility::Private => wire::Visibility::Private,
                }
                .into(),
                status: match v.status {
                    VideoStatus::AwaitingUpload => wire::VideoStatus::AwaitingUpload,
                    VideoStatus::Processing => wire::VideoStatus::Processing,
                    VideoStatus::Ready => wire::VideoStatus::Ready,
                    VideoStatus::Failed => wire::VideoStatus::Failed,
                }
                .into(),
                duration_s: v.duration_s,
                width: v.width,
                height: v.height,
                renditions: v
                    .renditions
                    .iter()
                    .map(|r| wire::Rendition {
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
    };
}

video_to_wire!(video_pb, tertulia_proto::catalog::v1);
video_to_wire!(video_v2, tertulia_proto::catalog::v2);

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
        // The v1 adapter over the v2 search: one tag at most, newest first.
        let r = request.into_inner();
        let page = self
            .catalog
            .search(
                &r.actor_id,
                SearchRequest {
                    query: r.query,
                    tags: vec![r.tag],
                    owner_id: r.owner_id,
                    order: Some(Order::Newest),
                    page_token: r.page_token,
                    limit: r.limit as usize,
                },
            )
            .await?;
        Ok(Response::new(pb::ListVideosResponse {
            videos: page.hits.iter().map(|h| video_pb(&h.video)).collect(),
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

/// The gRPC face of [`Catalog`] search, v2.
#[derive(Clone)]
pub struct CatalogV2Grpc {
    catalog: Catalog,
}

impl CatalogV2Grpc {
    /// Serves `catalog`.
    #[must_use]
    pub fn new(catalog: Catalog) -> Self {
        Self { catalog }
    }
}

#[tonic::async_trait]
impl pb2::catalog_service_server::CatalogService for CatalogV2Grpc {
    async fn search_videos(
        &self,
        request: Request<pb2::SearchVideosRequest>,
    ) -> Result<Response<pb2::SearchVideosResponse>, Status> {
        let r = request.into_inner();
        let order = match pb2::Order::try_from(r.order) {
            Ok(pb2::Order::Unspecified) => None,
            Ok(pb2::Order::Relevance) => Some(Order::Relevance),
            Ok(pb2::Order::Newest) => Some(Order::Newest),
            Err(_) => {
                return Err(crate::error::CatalogError::from(Invalid(
                    "order must be relevance or newest".into(),
                ))
                .into());
            }
        };
        let filter = r.filter.unwrap_or_default();
        let page = self
            .catalog
            .search(
                &r.actor_id,
                SearchRequest {
                    query: r.query,
                    tags: filter.tags,
                    owner_id: filter.owner_id,
                    order,
                    page_token: r.page_token,
                    limit: r.page_size as usize,
                },
            )
            .await?;
        Ok(Response::new(pb2::SearchVideosResponse {
            results: page
                .hits
                .iter()
                .map(|h| pb2::SearchResult {
                    video: Some(video_v2(&h.video)),
                    relevance: h.relevance,
                })
                .collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
            order: match page.order {
                Order::Relevance => pb2::Order::Relevance,
                Order::Newest => pb2::Order::Newest,
            }
            .into(),
        }))
    }
}
