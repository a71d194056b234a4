//! `GET /api/v1/events` and `/api/v2/events`: Server-Sent Events for clients that cannot hold a
//! WebSocket. The same frames as the WebSocket, one per event (`data:` is the frame's JSON);
//! every event carries an `id:` cursor, so a reconnecting client's `Last-Event-ID` resumes
//! exactly where it left off. `?resume=` (a JSON object of last seen `seq` per conversation, or
//! a cursor) resumes the first connection. Sending uses the REST calls.

use std::{collections::HashMap, convert::Infallible, time::Duration};

use axum::{
    extract::State,
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt as _};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument as _;

use super::{Api, connect, decode_cursor, encode_cursor, feed::Feed, frames};
use crate::{
    app::AppState,
    extract::{ApiQuery, Caller},
    problem::ApiError,
};

/// Events buffered for one SSE client before it counts as too slow.
const SSE_BUFFER: usize = 64;

/// Query of `/api/v1/events`.
#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    resume: Option<String>,
}

/// Reads a `resume` parameter: a JSON object, or a cursor.
fn parse_resume(raw: &str) -> Result<HashMap<String, u64>, ApiError> {
    if raw.trim_start().starts_with('{') {
        serde_json::from_str(raw).map_err(|e| ApiError::invalid_argument(format!("resume: {e}")))
    } else {
        decode_cursor(raw)
    }
}

/// Opens the event stream.
pub async fn events(
    State(state): State<AppState>,
    api: Api,
    caller: Caller,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let resume = match (last_event_id, query.resume.as_deref()) {
        (Some(id), _) => decode_cursor(id)?,
        (None, Some(raw)) => parse_resume(raw)?,
        (None, None) => HashMap::new(),
    };
    let (mut registration, feed, backlog) =
        connect(&state, &caller.user_id, (api, "sse"), &resume).await?;
    let (tx, rx) = mpsc::channel(SSE_BUFFER);
    let send_timeout = Duration::from_millis(state.realtime.send_timeout_ms);
    let keep_alive = Duration::from_secs(state.realtime.ping_interval_s.max(1));
    let sessions = state.sessions.clone();
    sessions.spawn(async move {
        let session_id = uuid::Uuid::now_v7().to_string();
        let ready = Event::default().data(frames::ready(&caller.user_id, &session_id).as_str());
        let mut pending = vec![ready];
        pending.extend(backlog.iter().map(|f| event(f.as_str(), &feed)));
        let shutdown = state.shutdown.clone();
        let mut feed = feed.holding_gaps(state.realtime.reorder_wait());
        loop {
            for event in pending.drain(..) {
                // A client that does not take events in time is dropped; it resumes.
                match tokio::time::timeout(send_timeout, tx.send(event)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        state.hub.metrics().slow_consumer("sse", "send_timeout");
                        return;
                    }
                }
            }
            tokio::select! {
                next = registration.events.recv() => {
                    let Some(next) = next else { return };
                    let span = super::write_span("sse", next.traceparent.as_deref());
                    let Ok(frames) = feed.live(&state, &next.event).instrument(span).await else { return };
                    pending.extend(frames.iter().map(|f| event(f.as_str(), &feed)));
                }
                () = tertulia_plumbing::clock::until(feed.held_until()) => {
                    let Ok(frames) = feed.release(&state).await else { return };
                    pending.extend(frames.iter().map(|f| event(f.as_str(), &feed)));
                }
                () = registration.too_slow.cancelled() => return,
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx).map(Ok)).keep_alive(KeepAlive::new().interval(keep_alive)))
}

/// One SSE event: the frame as data, the cursor after it as id.
fn event(frame: &str, feed: &Feed) -> Event {
    Event::default()
        .data(frame)
        .id(encode_cursor(feed.positions()))
}
