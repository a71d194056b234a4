//! `GET /api/v1/poll?cursor=` (and `/api/v2/poll`): long polling, for clients that can hold
//! neither a WebSocket nor an event stream. Answers `{"events":[frames...],"cursor":"..."}` as
//! soon as there is something (or after `poll_wait_s`, 25 s by default, with no events); the
//! next poll passes the cursor back and gets everything after it, so nothing falls between two
//! polls. Without a cursor the poll starts from now.

use std::collections::HashMap;

use axum::{
    extract::State,
    http::header,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tertulia_plumbing::client::with_deadline;
use tertulia_proto::chat::v1 as pb;

use super::{Api, connect, decode_cursor, encode_cursor};
use crate::{
    app::AppState,
    extract::{ApiQuery, Caller},
    problem::ApiError,
};

/// Query of `/api/v1/poll`.
#[derive(Debug, Deserialize)]
pub struct PollQuery {
    cursor: Option<String>,
}

/// Conversations listed per poll to find ones the cursor does not know yet.
const DISCOVER: u32 = 200;

/// One long poll.
pub async fn poll(
    State(state): State<AppState>,
    api: Api,
    caller: Caller,
    ApiQuery(query): ApiQuery<PollQuery>,
) -> Result<Response, ApiError> {
    let known = query.cursor.as_deref().map(decode_cursor).transpose()?;
    let positions = discover(&state, &caller.user_id, known).await?;
    let (mut registration, mut feed, mut frames) =
        connect(&state, &caller.user_id, (api, "poll"), &positions).await?;
    if frames.is_empty() {
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_secs(state.realtime.poll_wait_s);
        while frames.is_empty() {
            tokio::select! {
                next = registration.events.recv() => {
                    let Some(next) = next else { break };
                    frames.extend(feed.live(&state, &next.event).await?);
                }
                () = tokio::time::sleep_until(deadline) => break,
                () = state.shutdown.cancelled() => break,
            }
        }
    }
    let mut cursor = positions;
    cursor.extend(feed.positions().iter().map(|(k, v)| (k.clone(), *v)));
    let events: Vec<&str> = frames
        .iter()
        .map(axum::extract::ws::Utf8Bytes::as_str)
        .collect();
    let body = format!(
        r#"{{"events":[{}],"cursor":"{}"}}"#,
        events.join(","),
        encode_cursor(&cursor)
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response())
}

/// The positions to resume from: the cursor's, plus the caller's conversations it does not
/// know (new ones since the last poll start from their beginning; on a first poll, from now).
async fn discover(
    state: &AppState,
    user_id: &str,
    known: Option<HashMap<String, u64>>,
) -> Result<HashMap<String, u64>, ApiError> {
    let first_poll = known.is_none();
    let mut positions = known.unwrap_or_default();
    let request = pb::ListConversationsRequest {
        actor_id: user_id.to_owned(),
        limit: DISCOVER,
        page_token: String::new(),
    };
    let conversations = state
        .chat
        .clone()
        .list_conversations(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .conversations;
    for c in conversations {
        positions
            .entry(c.conversation_id)
            .or_insert(if first_poll { c.last_seq } else { 0 });
    }
    Ok(positions)
}
