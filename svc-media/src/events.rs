//! What svc-media publishes: the JetStream stream `MEDIA`, subjects
//! `media.v1.video.<video_id>.<event>` (`uploaded`, `processed`, `failed`, `deleted`),
//! payloads from `tertulia.events.v1`, each with a deterministic `Nats-Msg-Id` so a
//! re-publish (after a crash, by the sweeper) is dropped by the server. svc-media also
//! consumes its own `uploaded` events: they are the transcoding work queue.

use async_nats::HeaderMap;
use prost::Message;
use tertulia_plumbing::{nats::Nats, telemetry};
use tertulia_proto::{events::v1 as pb, subjects};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::store::{RenditionRow, StoredVideo};

/// Publishes one event and waits for JetStream's ack, in a producer span of the current trace
/// (the upload or the transcode that caused it).
pub async fn publish(
    nats: &Nats,
    video_id: Uuid,
    kind: &str,
    event_id: &str,
    payload: &impl Message,
) -> Result<(), String> {
    let subject = nats.subject(&subjects::media_video(&video_id.to_string(), kind));
    let span = telemetry::producer_span(subjects::MEDIA_STREAM, &subject);
    span.record("messaging.message.id", event_id);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", event_id);
    telemetry::inject_nats(&span, &mut headers);
    async {
        nats.jetstream
            .publish_with_headers(subject, headers, payload.encode_to_vec().into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    }
    .instrument(span)
    .await?;
    Ok(())
}

/// `uploaded`: the file of `video` is stored.
pub async fn uploaded(nats: &Nats, video: &StoredVideo) -> Result<(), String> {
    let event_id = format!("{}.uploaded", video.video_id);
    let payload = pb::UploadCompleted {
        event_id: event_id.clone(),
        video_id: video.video_id.to_string(),
        owner_id: video.owner_id.to_string(),
        content_hash: video.content_hash.clone(),
        size_bytes: video.size,
    };
    publish(
        nats,
        video.video_id,
        subjects::media_event::UPLOADED,
        &event_id,
        &payload,
    )
    .await
}

/// `processed`: the renditions playable so far.
pub async fn processed(
    nats: &Nats,
    video: &StoredVideo,
    probe: &crate::store::Probe,
    renditions: &[RenditionRow],
    complete: bool,
) -> Result<(), String> {
    let event_id = format!(
        "{}.processed.{}.{complete}",
        video.video_id,
        renditions.len()
    );
    let payload = pb::ProcessingFinished {
        event_id: event_id.clone(),
        video_id: video.video_id.to_string(),
        owner_id: video.owner_id.to_string(),
        duration_s: probe.duration_s,
        width: probe.width,
        height: probe.height,
        renditions: renditions
            .iter()
            .map(|r| tertulia_proto::catalog::v1::Rendition {
                name: r.name.clone(),
                width: r.width,
                height: r.height,
                bitrate: r.bitrate,
            })
            .collect(),
        complete,
    };
    publish(
        nats,
        video.video_id,
        subjects::media_event::PROCESSED,
        &event_id,
        &payload,
    )
    .await
}

/// `failed`: processing gave up, with a reason the owner sees.
pub async fn failed(nats: &Nats, video: &StoredVideo, reason: &str) -> Result<(), String> {
    let event_id = format!("{}.failed", video.video_id);
    let payload = pb::ProcessingFailed {
        event_id: event_id.clone(),
        video_id: video.video_id.to_string(),
        owner_id: video.owner_id.to_string(),
        reason: reason.to_owned(),
    };
    publish(
        nats,
        video.video_id,
        subjects::media_event::FAILED,
        &event_id,
        &payload,
    )
    .await
}

/// `deleted`: every object of the video is gone.
pub async fn deleted(nats: &Nats, video_id: Uuid) -> Result<(), String> {
    let event_id = format!("{video_id}.deleted");
    let payload = pb::MediaDeleted {
        event_id: event_id.clone(),
        video_id: video_id.to_string(),
    };
    publish(
        nats,
        video_id,
        subjects::media_event::DELETED,
        &event_id,
        &payload,
    )
    .await
}
