//! `/api/v1/conversations/*`: conversations, members, messages and read positions, answered
//! by svc-chat. User ids in bodies are checked against svc-auth first, so a typo is a 404
//! rather than a member who does not exist. The conversation routes are v2's too; they answer
//! with the last message in the caller's version ([`Api`]).

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse as _, Response},
    routing::{delete, get, patch, post},
};
use serde::{Deserialize, Serialize};
use tertulia_plumbing::client::{with_affinity, with_deadline};
use tertulia_proto::chat::{v1 as pb, v2 as pb2};

use crate::{
    app::AppState,
    extract::{ApiQuery, Caller, JsonBody, page_limit},
    problem::ApiError,
    routes::answered,
    versions::Api,
    views::{ConversationView, MessageView, MessageViewV2},
};

/// The routes of this module, relative to `/api/v1`.
pub fn router() -> Router<AppState> {
    conversations_router().merge(messages_router())
}

/// Conversations, members and read positions: the same contract in every version (a
/// conversation's last message in the version's shape).
pub fn conversations_router() -> Router<AppState> {
    Router::new()
        .route("/conversations", post(create).get(list))
        .route("/conversations/{id}", get(get_one))
        .route("/conversations/{id}/members", post(add_member))
        .route(
            "/conversations/{id}/members/{user_id}",
            delete(remove_member),
        )
        .route("/conversations/{id}/read", post(mark_read))
}

/// Messages as v1 shows them (`text`); v2 shows `content` and `reactions`.
pub fn messages_router() -> Router<AppState> {
    Router::new()
        .route("/conversations/{id}/messages", post(send).get(history))
        .route(
            "/conversations/{id}/messages/{message_id}",
            patch(edit).delete(delete_message),
        )
}

/// Answers 404 naming the first id that is not a user.
async fn ensure_users_exist(state: &AppState, ids: &[String]) -> Result<(), ApiError> {
    if ids.is_empty() {
        return Ok(());
    }
    let found = crate::routes::auth::users_among(state, ids.to_vec()).await?;
    match ids
        .iter()
        .find(|id| !found.iter().any(|u| &u.user_id == *id))
    {
        Some(missing) => Err(ApiError::not_found(format!("user {missing} not found"))),
        None => Ok(()),
    }
}

fn conversation_view(c: Option<pb::Conversation>) -> Result<ConversationView, ApiError> {
    answered(c, "svc-chat answered without a conversation")
}

fn message_view(m: Option<pb::Message>) -> Result<MessageView, ApiError> {
    answered(m, "svc-chat answered without a message")
}

#[derive(Debug, Deserialize)]
struct CreateBody {
    kind: String,
    #[serde(default)]
    member_ids: Vec<String>,
    #[serde(default)]
    title: String,
}

/// 201 with a new conversation; 200 with the existing direct conversation of the same pair.
async fn create(
    State(state): State<AppState>,
    api: Api,
    caller: Caller,
    JsonBody(body): JsonBody<CreateBody>,
) -> Result<(StatusCode, Response), ApiError> {
    let kind = match body.kind.as_str() {
        "direct" => pb::ConversationKind::Direct,
        "group" => pb::ConversationKind::Group,
        _ => {
            return Err(ApiError::invalid_argument(
                "kind must be \"direct\" or \"group\"",
            ));
        }
    };
    if body.member_ids.len() > 1024 {
        return Err(ApiError::invalid_argument(
            "at most 1024 members at creation",
        ));
    }
    ensure_users_exist(&state, &body.member_ids).await?;
    let request = pb::CreateConversationRequest {
        actor_id: caller.user_id.clone(),
        kind: kind.into(),
        member_ids: body.member_ids,
        title: body.title,
    };
    let answer = state
        .chat
        .clone()
        .create_conversation(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    let status = crate::routes::created_or_ok(answer.created);
    let view = conversation_view(answer.conversation)?;
    let body = match api {
        Api::V1 => Json(view).into_response(),
        // An existing direct conversation has a last message, in v2's shape there.
        Api::V2 => Json(conversation_v2(&state, &caller.user_id, view.id()).await?).into_response(),
    };
    Ok((status, body))
}

/// One conversation of `caller_id` as v2 shows it.
async fn conversation_v2(
    state: &AppState,
    caller_id: &str,
    conversation_id: &str,
) -> Result<ConversationView<MessageViewV2>, ApiError> {
    let request = pb2::GetConversationRequest {
        actor_id: caller_id.to_owned(),
        conversation_id: conversation_id.to_owned(),
    };
    let answer = state
        .chat_v2
        .clone()
        .get_conversation(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    answered(
        answer.conversation,
        "svc-chat answered without a conversation",
    )
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<u32>,
    #[serde(default)]
    page_token: String,
}

#[derive(Debug, Serialize)]
struct ConversationPage<M> {
    conversations: Vec<ConversationView<M>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_page_token: Option<String>,
}

impl<M> ConversationPage<M> {
    fn of<C>(conversations: Vec<C>, next_page_token: String) -> Json<Self>
    where
        ConversationView<M>: From<C>,
    {
        Json(Self {
            conversations: conversations
                .into_iter()
                .map(ConversationView::from)
                .collect(),
            next_page_token: Some(next_page_token).filter(|t| !t.is_empty()),
        })
    }
}

/// The caller's conversations by latest activity, last messages in the version's shape.
async fn list(
    State(state): State<AppState>,
    api: Api,
    caller: Caller,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let (actor_id, limit) = (caller.user_id, page_limit(q.limit)?);
    let deadline = state.call_deadline;
    Ok(match api {
        Api::V1 => {
            let request = pb::ListConversationsRequest {
                actor_id,
                limit,
                page_token: q.page_token,
            };
            let mut chat = state.chat.clone();
            let answer = chat
                .list_conversations(with_deadline(request, deadline))
                .await?
                .into_inner();
            ConversationPage::<MessageView>::of(answer.conversations, answer.next_page_token)
                .into_response()
        }
        Api::V2 => {
            let request = pb2::ListConversationsRequest {
                actor_id,
                limit,
                page_token: q.page_token,
            };
            let mut chat = state.chat_v2.clone();
            let answer = chat
                .list_conversations(with_deadline(request, deadline))
                .await?
                .into_inner();
            ConversationPage::<MessageViewV2>::of(answer.conversations, answer.next_page_token)
                .into_response()
        }
    })
}

/// One conversation, its last message in the version's shape.
async fn get_one(
    State(state): State<AppState>,
    api: Api,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if api == Api::V2 {
        return Ok(Json(conversation_v2(&state, &caller.user_id, &id).await?).into_response());
    }
    let request = pb::GetConversationRequest {
        actor_id: caller.user_id,
        conversation_id: id,
    };
    let answer = state
        .chat
        .clone()
        .get_conversation(with_deadline(request, state.call_deadline))
        .await?
        .into_inner();
    Ok(Json(conversation_view(answer.conversation)?).into_response())
}

#[derive(Debug, Deserialize)]
struct MemberBody {
    user_id: String,
}

async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<MemberBody>,
) -> Result<StatusCode, ApiError> {
    ensure_users_exist(&state, std::slice::from_ref(&body.user_id)).await?;
    let request = pb::AddMemberRequest {
        actor_id: caller.user_id,
        conversation_id: id,
        user_id: body.user_id,
    };
    state
        .chat
        .clone()
        .add_member(with_deadline(request, state.call_deadline))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, user_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let request = pb::RemoveMemberRequest {
        actor_id: caller.user_id,
        conversation_id: id,
        user_id,
    };
    state
        .chat
        .clone()
        .remove_member(with_deadline(request, state.call_deadline))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct SendBody {
    client_msg_id: String,
    text: String,
}

/// Sends a message for `caller`; shared with the real-time transports.
pub async fn send_message(
    state: &AppState,
    caller_id: String,
    conversation_id: String,
    client_msg_id: String,
    text: String,
) -> Result<(MessageView, bool), ApiError> {
    // Sends into one conversation go to one svc-chat instance (it writes them from memory).
    let key = conversation_id.clone();
    let request = pb::SendMessageRequest {
        actor_id: caller_id,
        conversation_id,
        client_msg_id,
        text,
    };
    let request = with_affinity(with_deadline(request, state.call_deadline), &key);
    let mut chat = state.chat.clone();
    #[expect(
        deprecated,
        reason = "the v1 routes are the v1 adapter; they call v1 until its sunset"
    )]
    let sent = chat.send_message(request);
    let answer = sent.await?.into_inner();
    Ok((message_view(answer.message)?, answer.created))
}

/// 201 with the stored message; 200 with the first one when `client_msg_id` repeats.
async fn send(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SendBody>,
) -> Result<(StatusCode, Json<MessageView>), ApiError> {
    let (message, created) =
        send_message(&state, caller.user_id, id, body.client_msg_id, body.text).await?;
    let status = crate::routes::created_or_ok(created);
    Ok((status, Json(message)))
}

/// Which part of a conversation's history: the query of both versions' history routes, and
/// what the real-time transports ask for when they catch up.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct HistoryRange {
    /// Only messages after this `seq`.
    pub after_seq: Option<u64>,
    /// Only messages before this `seq`.
    pub before_seq: Option<u64>,
    /// At most this many (checked by [`page_limit`]).
    pub limit: Option<u32>,
}

impl HistoryRange {
    /// Up to `limit` messages after `seq`.
    #[must_use]
    pub fn after(seq: u64, limit: u32) -> Self {
        Self {
            after_seq: Some(seq),
            before_seq: None,
            limit: Some(limit),
        }
    }
}

#[derive(Debug, Serialize)]
struct MessagePage {
    messages: Vec<MessageView>,
}

/// A page of `caller_id`'s view of a conversation's history; shared with the real-time
/// transports, which resume and fill gaps with it.
pub async fn list_messages(
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
    let mut chat = state.chat.clone();
    #[expect(
        deprecated,
        reason = "the v1 routes are the v1 adapter; they call v1 until its sunset"
    )]
    let listed = chat.list_messages(with_deadline(request, state.call_deadline));
    Ok(listed.await?.into_inner().messages)
}

async fn history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiQuery(range): ApiQuery<HistoryRange>,
) -> Result<Json<MessagePage>, ApiError> {
    let messages = list_messages(&state, &caller.user_id, &id, range).await?;
    Ok(Json(MessagePage {
        messages: messages.into_iter().map(MessageView::from).collect(),
    }))
}

#[derive(Debug, Deserialize)]
struct EditBody {
    text: String,
}

async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<EditBody>,
) -> Result<Json<MessageView>, ApiError> {
    let request = pb::EditMessageRequest {
        actor_id: caller.user_id,
        conversation_id: id,
        message_id,
        text: body.text,
    };
    let mut chat = state.chat.clone();
    #[expect(
        deprecated,
        reason = "the v1 routes are the v1 adapter; they call v1 until its sunset"
    )]
    let edited = chat.edit_message(with_deadline(request, state.call_deadline));
    let answer = edited.await?.into_inner();
    Ok(Json(message_view(answer.message)?))
}

/// 204: the message is a tombstone now (the same contract in v1 and v2).
pub(crate) async fn delete_message(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, message_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let request = pb::DeleteMessageRequest {
        actor_id: caller.user_id,
        conversation_id: id,
        message_id,
    };
    state
        .chat
        .clone()
        .delete_message(with_deadline(request, state.call_deadline))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct ReadBody {
    seq: u64,
}

/// Moves `caller_id`'s read position; shared with the real-time transports.
pub async fn mark_read_for(
    state: &AppState,
    caller_id: &str,
    conversation_id: String,
    seq: u64,
) -> Result<(), ApiError> {
    let request = pb::MarkReadRequest {
        actor_id: caller_id.to_owned(),
        conversation_id,
        seq,
    };
    state
        .chat
        .clone()
        .mark_read(with_deadline(request, state.call_deadline))
        .await?;
    Ok(())
}

async fn mark_read(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ReadBody>,
) -> Result<StatusCode, ApiError> {
    mark_read_for(&state, &caller.user_id, id, body.seq).await?;
    Ok(StatusCode::NO_CONTENT)
}
