//! `tertulia.chat.v2.ChatService`: structured content and reactions, over the same
//! [`Conversations`] as v1. Decode → use case → encode; nothing else.

use tertulia_proto::chat::v2 as pb;
use tonic::{Request, Response, Status};

use crate::{
    conversations::Conversations,
    domain::Content,
    events::{conversation_v2_pb, message_v2_pb},
};

/// The v2 gRPC face of [`Conversations`].
#[derive(Debug, Clone)]
pub struct ChatV2Grpc {
    chat: Conversations,
}

impl ChatV2Grpc {
    /// Serves `chat`.
    #[must_use]
    pub fn new(chat: Conversations) -> Self {
        Self { chat }
    }
}

fn content(c: Option<pb::Content>) -> Result<Content, Status> {
    match c.and_then(|c| c.kind) {
        Some(pb::content::Kind::Text(t)) => Ok(Content::Text(t.text)),
        Some(pb::content::Kind::Video(v)) => v
            .video_id
            .parse()
            .map(Content::Video)
            .map_err(|_| Status::invalid_argument("content.video.video_id is not a video id")),
        None => Err(Status::invalid_argument(
            "content must be text or a video reference",
        )),
    }
}

#[tonic::async_trait]
impl pb::chat_service_server::ChatService for ChatV2Grpc {
    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationResponse>, Status> {
        let r = request.into_inner();
        let conversation = self.chat.get(&r.actor_id, &r.conversation_id).await?;
        Ok(Response::new(pb::GetConversationResponse {
            conversation: Some(conversation_v2_pb(&conversation)),
        }))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let r = request.into_inner();
        let page = self.chat.list(&r.actor_id, r.limit, &r.page_token).await?;
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: page.conversations.iter().map(conversation_v2_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let r = request.into_inner();
        let content = content(r.content)?;
        let (message, created) = self
            .chat
            .send_content(&r.actor_id, &r.conversation_id, &r.client_msg_id, content)
            .await?;
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(message_v2_pb(&message)),
            created,
        }))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let r = request.into_inner();
        let messages = self
            .chat
            .history_with_reactions(
                &r.actor_id,
                &r.conversation_id,
                r.after_seq,
                r.before_seq,
                r.limit,
            )
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: messages.iter().map(message_v2_pb).collect(),
        }))
    }

    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::EditMessageResponse>, Status> {
        let r = request.into_inner();
        let Content::Text(text) = content(r.content)? else {
            return Err(Status::invalid_argument("an edit's content must be text"));
        };
        let message = self
            .chat
            .edit_with_reactions(&r.actor_id, &r.conversation_id, &r.message_id, &text)
            .await?;
        Ok(Response::new(pb::EditMessageResponse {
            message: Some(message_v2_pb(&message)),
        }))
    }

    async fn add_reaction(
        &self,
        request: Request<pb::AddReactionRequest>,
    ) -> Result<Response<pb::AddReactionResponse>, Status> {
        let r = request.into_inner();
        let message = self
            .chat
            .react(
                &r.actor_id,
                &r.conversation_id,
                &r.message_id,
                &r.emoji,
                true,
            )
            .await?;
        Ok(Response::new(pb::AddReactionResponse {
            message: Some(message_v2_pb(&message)),
        }))
    }

    async fn remove_reaction(
        &self,
        request: Request<pb::RemoveReactionRequest>,
    ) -> Result<Response<pb::RemoveReactionResponse>, Status> {
        let r = request.into_inner();
        let message = self
            .chat
            .react(
                &r.actor_id,
                &r.conversation_id,
                &r.message_id,
                &r.emoji,
                false,
            )
            .await?;
        Ok(Response::new(pb::RemoveReactionResponse {
            message: Some(message_v2_pb(&message)),
        }))
    }
}
