//! `/api/v1/videos/*` and `/api/v2/videos/*` (the same but for search): video metadata from svc-catalog, upload URLs and signed playback URLs
//! from svc-media. Reading videos works without a token (anonymous callers see public and
//! unlisted videos); writing needs one. The bytes never pass through the gateway: uploads
//! go to svc-media's tus endpoint, playback to its origin (or the CDN in front of it).

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{MethodRouter, get, post},
};
use serde::{Deserialize, Serialize};
use tertulia_plumbing::client::with_deadline;
use tertulia_proto::{
    catalog::{v1 as pb, v2 as pb2},
    media::v1 as media_pb,
};

use crate::{
    app::AppState,
    extract::{ApiQuery, Caller, JsonBody, MaybeCaller, page_limit},
    problem::ApiError,
    views::{PlaybackView, VideoView, rfc3339},
};

/// The routes of this module, relative to `/api/v1`.
pub fn router() -> Router<AppState> {
    routes(get(list))
}

/// The routes of this module, relative to `/api/v2`: the same but for search, whose contract
/// v2 changes (several tags, an explicit order, relevance first when there is a query).
pub fn router_v2() -> Router<AppState> {
    routes(get(search))
}

/// Every video route; `GET /videos` is `listing`.
fn routes(listing: MethodRouter<AppState>) -> Router<AppState> {
    Router::new()
        .route("/videos", listing.post(create))
        .route("/videos/{id}", get(get_one).patch(update).delete(remove))
        .route("/videos/{id}/upload", post(new_upload))
}

fn visibility(raw: Option<&str>) -> Result<pb::Visibility, ApiError> {
    match raw {
        None => Ok(pb::Visibility::Unspecified),
        Some("public") => Ok(pb::Visibility::Public),
        Some("unlisted") => Ok(pb::Visibility::Unlisted),
        Some("private") => Ok(pb::Visibility::Private),
        Some(_) => Err(ApiError::invalid_argument(
            "visibility must be \"public\", \"unlisted\" or \"private\"",
        )),
    }
}

fn video_of(v: Option<pb::Video>) -> Result<VideoView, ApiError> {
    crate::routes::answered(v, "svc-catalog answered without a video")
}

/// Adds signed media URLs to the videos that have a file: one call for all of them.
async fn with_playback(state: &AppState, videos: &mut [VideoView]) -> Result<(), ApiError> {
    let video_ids: Vec<String> = videos
        .iter()
        .filter(|v| v.has_media())
        .map(|v| v.id().to_owned())
        .collect();
    if video_ids.is_empty() {
        return Ok(());
    }
    let request = media_pb::GetPlaybacksRequest { video_ids };
    let mut playbacks = state
        .media
        .clone()
        .get_playbacks(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .playbacks;
    let some = |s: String| Some(s).filter(|s| !s.is_empty());
    for video in videos {
        let Some(p) = playbacks.remove(video.id()) else {
            continue;
        };
        video.thumbnail_url = some(p.thumbnail_url);
        video.playback = PlaybackView {
            hls_url: some(p.hls_url),
            mp4_url: some(p.mp4_url),
            expires_at: rfc3339(p.expires_at.as_ref()),
        };
    }
    Ok(())
}

/// One video with its signed media URLs.
async fn signed(state: &AppState, video: VideoView) -> Result<VideoView, ApiError> {
    let mut one = [video];
    with_playback(state, &mut one).await?;
    let [video] = one;
    Ok(video)
}

#[derive(Debug, Serialize)]
struct UploadView {
    url: String,
    expires_at: Option<String>,
    max_size: u64,
}

#[derive(Debug, Serialize)]
struct CreatedVideo {
    #[serde(flatten)]
    video: VideoView,
    upload: UploadView,
}

async fn upload_for(
    state: &AppState,
    video_id: String,
    owner_id: String,
) -> Result<UploadView, ApiError> {
    let request = media_pb::CreateUploadRequest { video_id, owner_id };
    let u = state
        .media
        .clone()
        .create_upload(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    Ok(UploadView {
        url: u.upload_url,
        expires_at: rfc3339(u.expires_at.as_ref()),
        max_size: u.max_size,
    })
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    #[serde(default)]
    title: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    tags: Vec<String>,
    visibility: Option<String>,
}

/// 201: the video, awaiting its file, and a tus upload URL for it.
async fn create(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Json<CreatedVideo>), ApiError> {
    let request = pb::CreateVideoRequest {
        actor_id: caller.user_id.clone(),
        title: body.title,
        description: body.description,
        tags: body.tags,
        visibility: visibility(body.visibility.as_deref())?.into(),
    };
    let answer = state
        .catalog
        .clone()
        .create_video(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    let video = answer
        .video
        .ok_or_else(|| ApiError::unavailable("svc-catalog answered without a video"))?;
    let upload = match upload_for(&state, video.video_id.clone(), caller.user_id.clone()).await {
        Ok(upload) => upload,
        Err(error) => {
            // No upload URL, no use for the video: take it back so a retry starts clean.
            let undo = pb::DeleteVideoRequest {
                actor_id: caller.user_id,
                video_id: video.video_id,
            };
            if let Err(status) = state
                .catalog
                .clone()
                .delete_video(with_deadline(undo, state.call_deadline))
                .await
            {
                tracing::warn!(message = "Video without an upload URL left behind.", error = %status);
            }
            return Err(error);
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(CreatedVideo {
            video: VideoView::from(video),
            upload,
        }),
    ))
}

/// A fresh upload URL for a video still awaiting its file (owner only).
async fn new_upload(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UploadView>, ApiError> {
    let request = pb::GetVideoRequest {
        actor_id: caller.user_id.clone(),
        video_id: id.clone(),
    };
    let video = state
        .catalog
        .clone()
        .get_video(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .video
        .ok_or_else(|| ApiError::unavailable("svc-catalog answered without a video"))?;
    if video.owner_id != caller.user_id {
        return Err(ApiError::from(tonic::Status::permission_denied(
            "only the video's owner may upload its file",
        )));
    }
    if video.status() != pb::VideoStatus::AwaitingUpload {
        return Err(ApiError::from(tonic::Status::failed_precondition(
            "the video already has its file",
        )));
    }
    Ok(Json(upload_for(&state, id, caller.user_id).await?))
}

async fn get_one(
    State(state): State<AppState>,
    caller: MaybeCaller,
    Path(id): Path<String>,
) -> Result<Json<VideoView>, ApiError> {
    let request = pb::GetVideoRequest {
        actor_id: caller.actor_id(),
        video_id: id.clone(),
    };
    let answer = state
        .catalog
        .clone()
        .get_video(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    Ok(Json(signed(&state, video_of(answer.video)?).await?))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    query: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    owner_id: String,
    #[serde(default)]
    page_token: String,
    limit: Option<u32>,
}

#[derive(Debug, Serialize)]
struct VideoPage {
    videos: Vec<VideoView>,
    /// v2 only: the order applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

impl VideoPage {
    /// A page of `videos`, each with signed URLs when it has a file.
    async fn signed(
        state: &AppState,
        mut videos: Vec<VideoView>,
        order: Option<&'static str>,
        next_page_token: String,
    ) -> Result<Json<Self>, ApiError> {
        with_playback(state, &mut videos).await?;
        Ok(Json(Self {
            videos,
            order,
            next_page_token: Some(next_page_token).filter(|t| !t.is_empty()),
        }))
    }
}

async fn list(
    State(state): State<AppState>,
    caller: MaybeCaller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<VideoPage>, ApiError> {
    let request = pb::ListVideosRequest {
        actor_id: caller.actor_id(),
        query: q.query,
        tag: q.tag,
        owner_id: q.owner_id,
        page_token: q.page_token,
        limit: page_limit(q.limit)?,
    };
    #[expect(
        deprecated,
        reason = "GET /api/v1/videos is v1's contract until its sunset; v2 uses SearchVideos"
    )]
    let answer = state
        .catalog
        .clone()
        .list_videos(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    let videos = answer.videos.into_iter().map(VideoView::from).collect();
    VideoPage::signed(&state, videos, None, answer.next_page_token).await
}

/// `GET /api/v2/videos` parameters: v1's `tag` became `tags` (comma-separated, all must
/// match) and `order` is new; anything else is refused, so a v1 parameter left behind is
/// noticed rather than ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchQuery {
    #[serde(default)]
    query: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    owner_id: String,
    order: Option<String>,
    #[serde(default)]
    page_token: String,
    limit: Option<u32>,
}

async fn search(
    State(state): State<AppState>,
    caller: MaybeCaller,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<VideoPage>, ApiError> {
    let order = match q.order.as_deref() {
        None => pb2::Order::Unspecified,
        Some("relevance") => pb2::Order::Relevance,
        Some("newest") => pb2::Order::Newest,
        Some(_) => {
            return Err(ApiError::invalid_argument(
                "order must be \"relevance\" or \"newest\"",
            ));
        }
    };
    let request = pb2::SearchVideosRequest {
        actor_id: caller.actor_id(),
        query: q.query,
        filter: Some(pb2::Filter {
            tags: q.tags.split(',').map(str::to_owned).collect(),
            owner_id: q.owner_id,
        }),
        order: order.into(),
        page_size: page_limit(q.limit)?,
        page_token: q.page_token,
    };
    let answer = state
        .catalog_v2
        .clone()
        .search_videos(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    let order = match answer.order() {
        pb2::Order::Relevance => "relevance",
        pb2::Order::Newest | pb2::Order::Unspecified => "newest",
    };
    let videos = answer
        .results
        .into_iter()
        .filter_map(|r| r.video.map(VideoView::from))
        .collect();
    VideoPage::signed(&state, videos, Some(order), answer.next_page_token).await
}

#[derive(Debug, Deserialize)]
struct UpdateBody {
    title: Option<String>,
    description: Option<String>,
    tags: Option<Vec<String>>,
    visibility: Option<String>,
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> Result<Json<VideoView>, ApiError> {
    let request = pb::UpdateVideoRequest {
        actor_id: caller.user_id,
        video_id: id.clone(),
        title: body.title,
        description: body.description,
        tags: body.tags.map(|tags| pb::TagList { tags }),
        visibility: visibility(body.visibility.as_deref())?.into(),
    };
    let answer = state
        .catalog
        .clone()
        .update_video(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    Ok(Json(signed(&state, video_of(answer.video)?).await?))
}

/// 204: the video is gone for everyone; its media is removed now or by the reconciler.
async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let request = pb::DeleteVideoRequest {
        actor_id: caller.user_id,
        video_id: id,
    };
    state
        .catalog
        .clone()
        .delete_video(with_deadline(request, state.call_deadline))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
