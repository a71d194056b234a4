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

/// A conversation as the caller sees it, its last message in the version's shape (`M`).
#[derive(Debug, Clone, Serialize)]
pub struct ConversationView<M = MessageView> {
    id: String,
    kind: &'static str,
    title: String,
    member_ids: Vec<String>,
    created_at: Option<String>,
    last_seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_message: Option<M>,
    unread: u64,
}

impl<M> ConversationView<M> {
    /// Its id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// `impl From<$pkg::Conversation> for ConversationView<$view>`, for each chat package whose
/// `Conversation` has v1's fields (v2 keeps them; only its message differs).
macro_rules! conversation_view_from {
    ($view:ty, $($pkg:ident)::+) => {
        impl From<$($pkg)::+::Conversation> for ConversationView<$view> {
            fn from(c: $($pkg)::+::Conversation) -> Self {
                use $($pkg)::+::ConversationKind;
                let kind = match c.kind() {
                    ConversationKind::Direct => "direct",
                    ConversationKind::Group | ConversationKind::Unspecified => "group",
                };
                Self {
                    created_at: rfc3339(c.created_at.as_ref()),
                    last_message: c.last_message.map(<$view>::from),
                    id: c.conversation_id,
                    kind,
                    title: c.title,
                    member_ids: c.member_ids,
                    last_seq: c.last_seq,
                    unread: c.unread,
                }
            }
        }
    };
}

conversation_view_from!(MessageView, tertulia_proto::chat::v1);
conversation_view_from!(MessageViewV2, tertulia_proto::chat::v2);

/// One rung of a video's HLS ladder.
#[derive(Debug, Clone, Serialize)]
pub struct RenditionView {
    name: String,
    width: u32,
    height: u32,
    bitrate: u32,
}

/// Signed, expiring media URLs of a video.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlaybackView {
    /// The HLS master playlist, once a rendition is playable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hls_url: Option<String>,
    /// The original file, progressive (byte ranges supported).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mp4_url: Option<String>,
    /// When these URLs stop working.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A video (CONTRACT.md, "Video").
#[derive(Debug, Clone, Serialize)]
pub struct VideoView {
    id: String,
    owner_id: String,
    title: String,
    description: String,
    tags: Vec<String>,
    visibility: &'static str,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    duration_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    renditions: Vec<RenditionView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failure_reason: Option<String>,
    /// Signed thumbnail URL, once processed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thumbnail_url: Option<String>,
    /// Signed playback URLs (empty until the file arrives).
    pub playback: PlaybackView,
    created_at: Option<String>,
}

/// `impl From<$pkg::Video> for VideoView`, for each catalog package whose `Video` has v1's
/// fields (v2 keeps them; each package owns its messages).
macro_rules! video_view_from {
    ($($pkg:ident)::+) => {
        impl From<$($pkg)::+::Video> for VideoView {
            fn from(v: $($pkg)::+::Video) -> Self {
                use $($pkg)::+::{VideoStatus, Visibility};
                Self {
                    visibility: match v.visibility() {
                        Visibility::Public => "public",
                        Visibility::Unlisted => "unlisted",
                        Visibility::Private | Visibility::Unspecified => "private",
                    },
                    status: match v.status() {
                        VideoStatus::AwaitingUpload | VideoStatus::Unspecified => "awaiting_upload",
                        VideoStatus::Processing => "processing",
                        VideoStatus::Ready => "ready",
                        VideoStatus::Failed => "failed",
                    },
                    created_at: rfc3339(v.created_at.as_ref()),
                    id: v.video_id,
                    owner_id: v.owner_id,
                    title: v.title,
                    description: v.description,
                    tags: v.tags,
                    duration_s: v.duration_s,
                    width: v.width,
                    height: v.height,
                    renditions: v
                        .renditions
                        .into_iter()
                        .map(|r| RenditionView {
                            name: r.name,
                            width: r.width,
                            height: r.height,
                            bitrate: r.bitrate,
                        })
                        .collect(),
                    failure_reason: Some(v.failure_reason).filter(|r| !r.is_empty()),
                    thumbnail_url: None,
                    playback: PlaybackView::default(),
                }
            }
        }
    };
}

video_view_from!(tertulia_proto::catalog::v1);
video_view_from!(tertulia_proto::catalog::v2);

impl VideoView {
    /// Whether the video has a file whose URLs are worth signing.
    #[must_use]
    pub fn has_media(&self) -> bool {
        matches!(self.status, "processing" | "ready")
    }

    /// Its id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// A message as v2 shows it: structured content and reactions.
#[derive(Debug, Clone, Serialize)]
pub struct MessageViewV2 {
    id: String,
    conversation_id: String,
    seq: u64,
    sender_id: String,
    client_msg_id: String,
    content: serde_json::Value,
    reactions: Vec<serde_json::Value>,
    sent_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited_at: Option<String>,
    deleted: bool,
}

impl MessageViewV2 {
    /// Its conversation.
    #[must_use]
    pub fn conversation_id(&self) -> &str {
        &self.conversation_id
    }
}

impl From<tertulia_proto::chat::v2::Message> for MessageViewV2 {
    fn from(m: tertulia_proto::chat::v2::Message) -> Self {
        use tertulia_proto::chat::v2::content::Kind;
        let content = match m.content.and_then(|c| c.kind) {
            Some(Kind::Video(v)) => serde_json::json!({"type": "video", "video_id": v.video_id}),
            Some(Kind::Text(t)) => serde_json::json!({"type": "text", "text": t.text}),
            None => serde_json::json!({"type": "text", "text": ""}),
        };
        Self {
            sent_at: rfc3339(m.sent_at.as_ref()),
            edited_at: rfc3339(m.edited_at.as_ref()),
            id: m.message_id,
            conversation_id: m.conversation_id,
            seq: m.seq,
            sender_id: m.sender_id,
            client_msg_id: m.client_msg_id,
            content,
            reactions: m
                .reactions
                .into_iter()
                .map(|r| serde_json::json!({"emoji": r.emoji, "user_ids": r.user_ids}))
                .collect(),
            deleted: m.deleted,
        }
    }
}
