//! What svc-catalog consumes and publishes.
//!
//! - Consumes the JetStream stream `MEDIA` (`media.v1.video.<id>.<event>`) with the durable
//!   consumer `catalog`: uploads move a video to `processing`, renditions to `ready`,
//!   failures to `failed`. Handling is idempotent (a redelivered or late event changes
//!   nothing, see [`Video::on_media`]).
//! - Publishes each change to the owner's live connections: a `Delivery { video_changed }`
//!   on the core NATS subject `deliver.<owner_id>`, which gateways already listen on.

use std::time::Duration;

use prost::Message as _;
use tertulia_plumbing::{
    nats::{DurableConsumer, Handled, Nats},
    shutdown::Shutdown,
    telemetry,
};
use tertulia_proto::{
    events::v1::{self as pb, delivery::Event},
    subjects::{self, media_event},
};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::{
    catalog::Catalog,
    domain::{MediaEvent, Rendition, Video},
    error::CatalogError,
    grpc::video_pb,
    store::StoreError,
};

/// Name of the catalog's durable consumer on `MEDIA`.
pub const CATALOG_CONSUMER: &str = "catalog";

/// Applies media events to the catalog until `shutdown` trips.
pub async fn consume_media(catalog: Catalog, nats: Nats, shutdown: Shutdown) {
    let consumer = DurableConsumer {
        stream: subjects::MEDIA_STREAM,
        name: CATALOG_CONSUMER,
        filter: None,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        concurrency: 4,
        order_by: None,
        max_pending: 256,
    };
    let (catalog, nats) = (&catalog, &nats);
    nats.consume(&consumer, &shutdown, |message| async move {
        let (id, event) = match decode(&message.subject, &message.payload) {
            Ok(Some(decoded)) => decoded,
            Ok(None) => return Handled::Done,
            Err(reason) => return Handled::Poison(reason),
        };
        match catalog.on_media(id, event).await {
            Ok(Some(video)) => {
                announce(nats, &video).await;
                Handled::Done
            }
            Ok(None) => Handled::Done,
            Err(CatalogError::Store(StoreError::Unavailable(e))) => Handled::Retry(e),
            Err(e) => Handled::Retry(e.to_string()),
        }
    })
    .await;
}

/// Tells the owner's live connections that their video changed. Best effort: the state is
/// stored, and clients read it again after a reconnect.
pub async fn announce(nats: &Nats, video: &Video) {
    let delivery = pb::Delivery {
        event: Some(Event::VideoChanged(pb::VideoChanged {
            video: Some(video_pb(video)),
        })),
    };
    let subject = nats.subject(&subjects::deliver(&video.owner_id.to_string()));
    let span = telemetry::producer_span(subjects::DELIVER_TEMPLATE, &subject);
    let payload = delivery.encode_to_vec().into();
    let published = match telemetry::nats_headers(&span) {
        Some(headers) => {
            nats.client
                .publish_with_headers(subject, headers, payload)
                .instrument(span)
                .await
        }
        None => nats.client.publish(subject, payload).await,
    };
    if let Err(error) = published {
        tracing::warn!(message = "Video change not announced.", video_id = %video.id, error = %error);
    }
}

fn rendition(r: &tertulia_proto::catalog::v1::Rendition) -> Rendition {
    Rendition {
        name: r.name.clone(),
        width: r.width,
        height: r.height,
        bitrate: r.bitrate,
    }
}

/// The video and what happened to it; `None` for events the catalog does not act on.
fn decode(subject: &str, payload: &[u8]) -> Result<Option<(Uuid, MediaEvent)>, String> {
    let mut tokens = subject.rsplit('.');
    let kind = tokens.next().unwrap_or_default();
    let id: Uuid = tokens
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("bad video id in {subject}: {e}"))?;
    let event = match kind {
        media_event::UPLOADED => {
            let e = pb::UploadCompleted::decode(payload).map_err(|e| e.to_string())?;
            MediaEvent::Uploaded {
                content_hash: e.content_hash,
            }
        }
        media_event::PROCESSED => {
            let e = pb::ProcessingFinished::decode(payload).map_err(|e| e.to_string())?;
            MediaEvent::Processed {
                duration_s: e.duration_s,
                width: e.width,
                height: e.height,
                renditions: e.renditions.iter().map(rendition).collect(),
            }
        }
        media_event::FAILED => {
            let e = pb::ProcessingFailed::decode(payload).map_err(|e| e.to_string())?;
            MediaEvent::Failed { reason: e.reason }
        }
        _ => return Ok(None),
    };
    Ok(Some((id, event)))
}
