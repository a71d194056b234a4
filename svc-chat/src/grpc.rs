//! `tertulia.chat.v1.ChatService`: decode → [`Conversations`] → encode. Nothing else.

use tertulia_proto::chat::v1 as pb;
use tonic::{Request, Response, Status};

use crate::{
    conversations::Conversations,
    domain::ConversationKind,
    events::{conversation_pb, message_pb},
};

/// The gRPC face of [`Conversations`].
#[derive(Debug, Clone)]
pub struct ChatGrpc {
    chat: Conversations,
}

impl ChatGrpc {
    /// Serves `chat`.
    #[must_use]
    pub fn new(chat: Conversations) -> Self {
        Self { chat }
    }
}

#[tonic::async_trait]
impl pb::chat_service_server::ChatService for ChatGrpc {
    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::CreateConversationResponse>, Status> {
        let r = request.into_inner();
        let kind = match r.kind() {
            pb::ConversationKind::Direct => ConversationKind::Direct,
            pb::ConversationKind::Group => ConversationKind::Group,
            pb::ConversationKind::Unspecified => {
                return Err(Status::invalid_argument("kind must be direct or group"));
            }
        };
        let (conversation, created) = self
            .chat
            .create(&r.actor_id, kind, &r.member_ids, &r.title)
            .await?;
        Ok(Response::new(pb::CreateConversationResponse {
            conversation: Some(conversation_pb(&conversation)),
            created,
        }))
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::GetConversationResponse>, Status> {
        let r = request.into_inner();
        let conversation = self.chat.get(&r.actor_id, &r.conversation_id).await?;
        Ok(Response::new(pb::GetConversationResponse {
            conversation: Some(conversation_pb(&conversation)),
        }))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let r = request.into_inner();
        let page = self.chat.list(&r.actor_id, r.limit, &r.page_token).await?;
        Ok(Response::new(pb::ListConversationsResponse {
            conversations: page.conversations.iter().map(conversation_pb).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn add_member(
        &self,
        request: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::AddMemberResponse>, Status> {
        let r = request.into_inner();
        self.chat
            .add_member(&r.actor_id, &r.conversation_id, &r.user_id)
            .await?;
        Ok(Response::new(pb::AddMemberResponse {}))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let r = request.into_inner();
        self.chat
            .remove_member(&r.actor_id, &r.conversation_id, &r.user_id)
            .await?;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let r = request.into_inner();
        let (message, created) = self
            .chat
            .send(&r.actor_id, &r.conversation_id, &r.client_msg_id, &r.text)
            .await?;
        Ok(Response::new(pb::SendMessageResponse {
            message: Some(message_pb(&message)),
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
            .history(
                &r.actor_id,
                &r.conversation_id,
                r.after_seq,
                r.before_seq,
                r.limit,
            )
            .await?;
        Ok(Response::new(pb::ListMessagesResponse {
            messages: messages.iter().map(message_pb).collect(),
        }))
    }

    async fn edit_message(
        &self,
        request: Request<pb::EditMessageRequest>,
    ) -> Result<Response<pb::EditMessageResponse>, Status> {
        let r = request.into_inner();
        let message = self
            .chat
            .edit(&r.actor_id, &r.conversation_id, &r.message_id, &r.text)
            .await?;
        Ok(Response::new(pb::EditMessageResponse {
            message: Some(message_pb(&message)),
        }))
    }

    async fn delete_message(
        &self,
        request: Request<pb::DeleteMessageRequest>,
    ) -> Result<Response<pb::DeleteMessageResponse>, Status> {
        let r = request.into_inner();
        self.chat
            .delete(&r.actor_id, &r.conversation_id, &r.message_id)
            .await?;
        Ok(Response::new(pb::DeleteMessageResponse {}))
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let r = request.into_inner();
        let read_seq = self
            .chat
            .mark_read(&r.actor_id, &r.conversation_id, r.seq)
            .await?;
        Ok(Response::new(pb::MarkReadResponse { read_seq }))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let members = self
            .chat
            .members(&request.into_inner().conversation_id)
            .await?;
        Ok(Response::new(pb::ListMembersResponse {
            member_ids: members.iter().map(ToString::to_string).collect(),
        }))
    }

    async fn list_groups(
        &self,
        request: Request<pb::ListGroupsRequest>,
    ) -> Result<Response<pb::ListGroupsResponse>, Status> {
        let groups = self.chat.groups(&request.into_inner().actor_id).await?;
        Ok(Response::new(pb::ListGroupsResponse {
            conversation_ids: groups.iter().map(ToString::to_string).collect(),
        }))
    }
}
