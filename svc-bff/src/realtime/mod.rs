//! Real-time delivery to connected clients.
//!
//! - [`hub`]: one core NATS subscription to `deliver.<user_id>` per connected user on this
//!   gateway, and one per group with a member connected here, fanned into a bounded queue
//!   per connection.
//! - [`feed`]: per connection and conversation, the last `seq` delivered; resume from history,
//!   drop duplicates, put messages that arrive out of order back in order (a short wait) or
//!   fill gaps from history, so a client never sees a hole or a reordering.
//! - [`frames`]: the JSON frames of the protocol.
//! - [`typing`]: ephemeral typing indicators, relayed over core NATS and never stored.
//! - [`ws`], [`sse`], [`poll`]: the transports, all carrying the same frames with the same
//!   resume rule.
//!
//! Each transport is served under `/api/v1` and `/api/v2` ([`Api`]): the protocol is the
//! same, the message shapes are the version's (v2: `content`, `reactions` and the
//! `reactions` frame). An event is rendered at most once per version on a gateway.

pub mod feed;
pub mod frames;
pub mod hub;
pub mod poll;
pub mod queue;
pub mod sse;
pub mod typing;
pub mod ws;

use std::{collections::HashMap, time::Duration};

use axum::extract::ws::Utf8Bytes;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use tertulia_plumbing::{
    client::{retry_unavailable, with_deadline},
    telemetry,
    telemetry::Upstream as Channel,
};
use tertulia_proto::chat::v1::{self as chat_pb, chat_service_client::ChatServiceClient};
use tracing::Span;

pub use crate::versions::Api;
use crate::{app::AppState, problem::ApiError};
use feed::Feed;
use hub::Registration;

/// Limits and timers of real-time connections. Fields not given keep their defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(default = "RealtimeConfig::standard")]
pub struct RealtimeConfig {
    /// Time a new WebSocket has to send `hello`, in seconds.
    pub hello_timeout_s: u64,
    /// A connection silent for this long (no frame, no pong) is closed, in seconds.
    pub idle_timeout_s: u64,
    /// How often the server pings, in seconds.
    pub ping_interval_s: u64,
    /// Events queued per connection before it counts as too slow (close 1013).
    pub outbound_queue: usize,
    /// How long one write to a client may take before it counts as too slow, in ms.
    pub send_timeout_ms: u64,
    /// Largest client frame, in bytes (close 1009 above).
    pub max_frame_bytes: usize,
    /// Client frames per second allowed per user (all their connections on a gateway),
    /// sustained.
    pub frames_per_second: u32,
    /// Client frames allowed in a burst.
    pub frame_burst: u32,
    /// Rejected frames in a row before the connection is closed (1008).
    pub max_rejected_in_a_row: u32,
    /// Longest a long poll waits for something to answer, in seconds.
    pub poll_wait_s: u64,
    /// How long a WebSocket or SSE connection holds a message that arrives after a gap in
    /// its conversation, waiting for the missing ones, before it reads them from history, in
    /// ms (0: read at once; longer than an hour counts as an hour).
    pub reorder_wait_ms: u64,
}

impl RealtimeConfig {
    /// The documented defaults.
    #[must_use]
    pub fn standard() -> Self {
        Self {
            hello_timeout_s: 10,
            idle_timeout_s: 75,
            ping_interval_s: 25,
            outbound_queue: 256,
            send_timeout_ms: 5000,
            max_frame_bytes: 64 * 1024,
            frames_per_second: 20,
            frame_burst: 40,
            max_rejected_in_a_row: 20,
            poll_wait_s: 25,
            reorder_wait_ms: 50,
        }
    }

    /// How long a message after a gap is held back.
    #[must_use]
    pub fn reorder_wait(&self) -> Duration {
        Duration::from_millis(self.reorder_wait_ms)
    }

    fn hello_timeout(&self) -> Duration {
        Duration::from_secs(self.hello_timeout_s)
    }
    fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_s)
    }
    fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_s.max(1))
    }
    fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }
}

/// A server span for one client frame (`websocket send`, `websocket read`, ...),
/// continuing the trace the client attached to the frame. None for `hello` and `ping`, and
/// while traces are not exported.
#[must_use]
pub fn frame_span(
    transport: &'static str,
    kind: &'static str,
    user_id: &str,
    traceparent: Option<&str>,
) -> Span {
    if !telemetry::enabled() || matches!(kind, "hello" | "ping") {
        return Span::none();
    }
    let span = tracing::info_span!(
        "frame",
        otel.name = %format!("{transport} {kind}"),
        otel.kind = "server",
        network.protocol.name = transport,
        tertulia.frame.type = kind,
        enduser.id = user_id,
    );
    telemetry::follow(&span, traceparent);
    span
}

/// A span for writing one delivered event to a client (`write websocket`), a child of the
/// gateway's consumer span for the delivery.
#[must_use]
pub fn write_span(transport: &'static str, traceparent: Option<&str>) -> Span {
    if !telemetry::enabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "write",
        otel.name = %format!("write {transport}"),
        otel.kind = "producer",
        network.protocol.name = transport,
    );
    telemetry::follow(&span, traceparent);
    span
}

/// Pauses before a `ListGroups` call that svc-chat shed (at its in-flight limit) is tried
/// again. Bursts of connections (a reconnect storm, thousands of users signing on) meet the
/// limit; each connection then waits a little longer for `ready` instead of failing.
const GROUPS_RETRIES: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// The hub's way to read a connecting user's groups: svc-chat's `ListGroups`, within
/// `deadline` a call, tried again while it is shed.
#[must_use]
pub fn groups_of(chat: ChatServiceClient<Channel>, deadline: Duration) -> hub::GroupsOf {
    Box::new(move |actor_id| {
        let chat = chat.clone();
        Box::pin(async move {
            retry_unavailable(&GROUPS_RETRIES, || {
                let request = chat_pb::ListGroupsRequest {
                    actor_id: actor_id.clone(),
                };
                let mut chat = chat.clone();
                async move { chat.list_groups(with_deadline(request, deadline)).await }
            })
            .await
            .map(|groups| groups.into_inner().conversation_ids)
            .map_err(|status| format!("cannot read the user's groups: {}", status.message()))
        })
    })
}

/// Registers `user_id` with the hub and only then reads the history after `resume`: in this
/// order no event can fall between the history and the live traffic (at worst it arrives
/// twice, and the feed drops the duplicate).
pub async fn connect(
    state: &AppState,
    user_id: &str,
    (api, transport): (Api, &'static str),
    resume: &HashMap<String, u64>,
) -> Result<(Registration, Feed, Vec<Utf8Bytes>), ApiError> {
    let registration = state
        .hub
        .register(user_id, api, transport)
        .await
        .map_err(|error| {
            tracing::warn!(message = "Cannot register for deliveries.", %error);
            ApiError::unavailable("real-time delivery is unavailable, retry")
        })?;
    let mut feed = Feed::new(user_id.to_owned(), api);
    let frames = feed.resume(state, resume).await;
    Ok((registration, feed, frames))
}

/// A cursor: the last `seq` per conversation, as opaque URL-safe text.
#[must_use]
pub fn encode_cursor(positions: &HashMap<String, u64>) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(positions).expect("a map serialises"))
}

/// Reads a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Result<HashMap<String, u64>, ApiError> {
    URL_SAFE_NO_PAD
        .decode(cursor.trim())
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| ApiError::invalid_argument("cursor is not one this server issued"))
}
