//! `/api/v2/conversations/{id}/messages`: messages with structured content (`text` or a
//! catalog `video`) and reactions, answered by `tertulia.chat.v2.ChatService`. A shared video
//! must be one the sender can see (404 otherwise).

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    routing::{patch, post},
};
use serde::{Deserialize, Serialize};
use tertulia_plumbing::client::{with_affinity, with_deadline};
use tertulia_proto::{catalog::v1 as catalog_pb, chat::v2 as pb};

use crate::{
    app::AppState,
    extract::{ApiQuery, Caller, JsonBody, page_limit},
    problem::ApiError,
    routes::chat::HistoryRange,
    views::MessageViewV2,
};

/// The routes of this module, relative to `/api/v2`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/conversations/{id}/messages", post(send).get(history))
        .route(
            "/conversations/{id}/messages/{message_id}",
            patch(edit).delete(crate::routes::chat::delete_message),
        )
        .route(
            "/conversations/{id}/messages/{message_id}/reactions/{emoji}",
            post(add_reaction).delete(remove_reaction),
        )
}

/// A message's content as clients write it (REST bodies and WebSocket `send` frames).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBody {
    /// `{"type":"text","text"}`.
    Text {
        /// The text.
        text: String,
    },
    /// `{"type":"video","video_id"}`: a catalog video the sender can see.
    Video {
        /// The video.
        video_id: String,
    },
}

#[derive(Debug, Deserialize)]
struct SendBody {
    client_msg_id: String,
    content: ContentBody,
}

fn view(m: Option<pb::Message>) -> Result<MessageViewV2, ApiError> {
    crate::routes::answered(m, "svc-chat answered without a message")
}

/// 201 with the stored message; 200 with the first one when `client_msg_id` repeats.
async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SendBody>,
) -> Result<(StatusCode, Json<MessageViewV2>), ApiError> {
    let (message, created) =
        send_message_v2(&state, caller.user_id, id, body.client_msg_id, body.content).await?;
    let status = crate::routes::created_or_ok(created);
    Ok((status, Json(message)))
}

/// Sends a v2 message for `sender_id`; shared with the v2 WebSocket. Returns the stored
/// message and whether this call created it (false: `client_msg_id` repeated).
pub async fn send_message_v2(
    state: &AppState,
    sender_id: String,
    conversation_id: String,
    client_msg_id: String,
    content: ContentBody,
) -> Result<(MessageViewV2, bool), ApiError> {
    let kind = match content {
        ContentBody::Text { text } => pb::content::Kind::Text(pb::Text { text }),
        ContentBody::Video { video_id } => {
            // Only a video the sender may see can be shared.
            let request = catalog_pb::GetVideoRequest {
                actor_id: sender_id.clone(),
                video_id: video_id.clone(),
            };
            state
                .catalog
                .clone()
                .get_video(with_deadline(request, state.call_deadline))
                .await
                .map_err(|status| match status.code() {
                    tonic::Code::NotFound => {
                        ApiError::not_found(format!("video {video_id} not found"))
                    }
                    _ => ApiError::from(status),
                })?;
            pb::content::Kind::Video(pb::VideoRef { video_id })
        }
    };
    // Sends into one conversation go to one svc-chat instance (it writes them from memory).
    let key = conversation_id.clone();
    let request = pb::SendMessageRequest {
        actor_id: sender_id,
        conversation_id,
        client_msg_id,
        content: Some(pb::Content { kind: Some(kind) }),
    };
    let request = with_affinity(with_deadline(request, state.call_deadline), &key);
    let answer = state
        .chat_v2
        .clone()
        .send_message(request)
        .await?
        .into_inner();
    Ok((view(answer.message)?, answer.created))
}

#[derive(Debug, Deserialize)]
struct EditBody {
    content: ContentBody,
}

/// 200 with the edited message (text only: a shared video cannot be edited, 400).
async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<EditBody>,
) -> Result<Json<MessageViewV2>, ApiError> {
    let ContentBody::Text { text } = body.content else {
        return Err(ApiError::invalid_argument("an edit's content must be text"));
    };
    let request = pb::EditMessageRequest {
        actor_id: caller.user_id,
        conversation_id: id,
        message_id,
        content: Some(pb::Content {
            kind: Some(pb::content::Kind::Text(pb::Text { text })),
        }),
    };
    let answer = state
        .chat_v2
        .clone()
        .edit_message(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    Ok(Json(view(answer.message)?))
}

#[derive(Debug, Serialize)]
struct MessagePage {
    messages: Vec<MessageViewV2>,
}

async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(range): ApiQuery<HistoryRange>,
) -> Result<Json<MessagePage>, ApiError> {
    let messages = list_messages_v2(&state, &caller.user_id, &id, range).await?;
    Ok(Json(MessagePage {
        messages: messages.into_iter().map(MessageViewV2::from).collect(),
    }))
}

/// A page of `caller_id`'s v2 view of a conversation's history; shared with the v2
/// real-time transports, which resume and fill gaps with it.
pub async fn list_messages_v2(
    state: &AppState,
    caller_id: &str,
    conversation_id: &str,
    range: HistoryRange,
) -> Result<Vec<pb::Message>, ApiError> {
    let request = pb::ListMessagesRequest {
        actor_id: caller_id.to_owned(),
        conversation_id: conversation_id.to_owned(),
        after_seq: range.after_seq,
        before_seq: range.before_seq,
        limit: page_limit(range.limit)?,
    };
    let listed = state
        .chat_v2
        .clone()
        .list_messages(with_deadline(request, state.call_deadline))
        .await?;
    Ok(listed.into_inner().messages)
}

/// 200 with the message and its reactions (adding twice changes nothing).
async fn add_reaction(
    State(state): State<AppState>,
    caller: Caller,
    Path(target): Path<(String, String, String)>,
) -> Result<Json<MessageViewV2>, ApiError> {
    react(&state, caller, target, true).await
}

/// 200 with the message and its reactions (removing what is not there changes nothing).
async fn remove_reaction(
    State(state): State<AppState>,
    caller: Caller,
    Path(target): Path<(String, String, String)>,
) -> Result<Json<MessageViewV2>, ApiError> {
    react(&state, caller, target, false).await
}

async fn react(
    state: &AppState,
    caller: Caller,
    (conversation_id, message_id, emoji): (String, String, String),
    add: bool,
) -> Result<Json<MessageViewV2>, ApiError> {
    let mut chat = state.chat_v2.clone();
    let message = if add {
        let request = pb::AddReactionRequest {
            actor_id: caller.user_id,
            conversation_id,
            message_id,
            emoji,
        };
        chat.add_reaction(with_deadline(request, state.call_deadline))
            .await?
            .into_inner()
            .message
    } else {
        let request = pb::RemoveReactionRequest {
            actor_id: caller.user_id,
            conversation_id,
            message_id,
            emoji,
        };
        chat.remove_reaction(with_deadline(request, state.call_deadline))
            .await?
            .into_inner()
            .message
    };
    Ok(Json(view(message)?))
}
