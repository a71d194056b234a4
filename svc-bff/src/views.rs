//! The JSON shapes of CONTRACT.md, built from protobuf values. REST answers and real-time
//! frames use the same views, so a message looks the same however it arrives.

use serde::Serialize;
use tertulia_proto::chat::v1 as chat;

/// RFC 3339 UTC text of a protobuf timestamp.
#[must_use]
pub fn rfc3339(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    ts.and_then(tertulia_plumbing::wire::from_timestamp)
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
}

/// A message.
#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    id: String,
    conversation_id: String,
    seq: u64,
    sender_id: String,
    client_msg_id: String,
    text: String,
    sent_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited_at: Option<String>,
    deleted: bool,
}

impl From<chat::Message> for MessageView {
    fn from(m: chat::Message) -> Self {
        Self {
            sent_at: rfc3339(m.sent_at.as_ref()),
            edited_at: rfc3339(m.edited_at.as_ref()),
            id: m.message_id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            sender_id: m.sender_id,
            client_msg_id: m.client_msg_id,
            text: m.text,
            deleted: m.deleted,
        }
    }
}

/// A conversation as the caller sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ConversationView {
    id: String,
    kind: &'static str,
    title: String,
    member_ids: Vec<String>,
    created_at: Option<String>,
    last_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_message: Option<MessageView>,
    unread: u64,
}

impl From<chat::Conversation> for ConversationView {
    fn from(c: chat::Conversation) -> Self {
        let kind = match c.kind() {
            chat::ConversationKind::Direct => "direct",
            chat::ConversationKind::Group | chat::ConversationKind::Unspecified => "group",
        };
        Self {
            created_at: rfc3339(c.created_at.as_ref()),
            last_message: c.last_message.map(MessageView::from),
            id: c.conversation_id,
            kind,
            title: c.title,
            member_ids: c.member_ids,
            last_seq: c.last_seq,
            unread: c.unread,
        }
    }
}
