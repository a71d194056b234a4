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
use tertulia_plumbing::client::with_deadline;
use tertulia_proto::{catalog::v1 as catalog_pb, chat::v2 as pb};

use crate::{
    app::AppState,
    extract::{ApiQuery, Caller, JsonBody, page_limit},
    problem::ApiError,
    routes::chat::HistoryQuery,
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

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ContentBody {
    Text { text: String },
    Video { video_id: String },
}

#[derive(Debug, Deserialize)]
struct SendBody {
    client_msg_id: String,
    content: ContentBody,
}

fn view(m: Option<pb::Message>) -> Result<MessageViewV2, ApiError> {
    m.map(MessageViewV2::from)
        .ok_or_else(|| ApiError::unavailable("svc-chat answered without a message"))
}

/// 201 with the stored message; 200 with the first one when `client_msg_id` repeats.
async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SendBody>,
) -> Result<(StatusCode, Json<MessageViewV2>), ApiError> {
    let kind = match body.content {
        ContentBody::Text { text } => pb::content::Kind::Text(pb::Text { text }),
        ContentBody::Video { video_id } => {
            // Only a video the sender may see can be shared.
            let request = catalog_pb::GetVideoRequest {
                actor_id: caller.user_id.clone(),
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
    let request = pb::SendMessageRequest {
        actor_id: caller.user_id,
        conversation_id: id,
        client_msg_id: body.client_msg_id,
        content: Some(pb::Content { kind: Some(kind) }),
    };
    let answer = state
        .chat_v2
        .clone()
        .send_message(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    let status = if answer.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(answer.message)?)))
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
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<MessagePage>, ApiError> {
    let request = pb::ListMessagesRequest {
        actor_id: caller.user_id,
        conversation_id: id,
        after_seq: q.after_seq,
        before_seq: q.before_seq,
        limit: page_limit(q.limit)?,
    };
    let messages = state
        .chat_v2
        .clone()
        .list_messages(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .messages;
    Ok(Json(MessagePage {
        messages: messages.into_iter().map(MessageViewV2::from).collect(),
    }))
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
