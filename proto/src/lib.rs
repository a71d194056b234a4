//! Every protobuf package of Tertulia, generated at build time from the `.proto` files beside
//! this crate: message types (prost) and gRPC clients and servers (tonic), one Rust module per
//! versioned package (`tertulia_proto::chat::v1`). Services meet only through this crate.
//!
//! Released packages never change incompatibly; a new version is a new package served side by
//! side (see `docs/ARCHITECTURE.md`).
#![allow(
    missing_docs,
    unreachable_pub,
    clippy::pedantic,
    clippy::large_enum_variant,
    reason = "generated code is documented by the .proto comments, not rustdoc lints, and its \
              shapes follow the .proto files"
)]

/// Encoded `FileDescriptorSet` of every package, for gRPC server reflection and the
/// breaking-change check.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tertulia_descriptor.bin"));

/// `tertulia.auth.*`: users, credentials, tokens, contacts.
pub mod auth {
    /// Version 1 of the auth API.
    pub mod v1 {
        tonic::include_proto!("tertulia.auth.v1");
    }
}

/// `tertulia.chat.*`: conversations and messages.
pub mod chat {
    /// Version 1 of the chat API.
    pub mod v1 {
        tonic::include_proto!("tertulia.chat.v1");
    }
    /// Version 2: structured content and reactions (messages only; the rest stays in v1).
    pub mod v2 {
        tonic::include_proto!("tertulia.chat.v2");
    }
}

/// `tertulia.presence.*`: online state and typing.
pub mod presence {
    /// Version 1 of the presence API.
    pub mod v1 {
        tonic::include_proto!("tertulia.presence.v1");
    }
}

/// `tertulia.catalog.*`: video metadata and search.
pub mod catalog {
    /// Version 1 of the catalog API.
    pub mod v1 {
        tonic::include_proto!("tertulia.catalog.v1");
    }
    /// Version 2: search with several tags, an explicit order and relevance (search only;
    /// the rest stays in v1).
    pub mod v2 {
        tonic::include_proto!("tertulia.catalog.v2");
    }
}

/// `tertulia.media.*`: uploads, playback, media removal.
pub mod media {
    /// Version 1 of the media API.
    pub mod v1 {
        tonic::include_proto!("tertulia.media.v1");
    }
}

/// `tertulia.events.*`: JetStream and delivery payloads.
pub mod events {
    /// Version 1 of the event payloads.
    pub mod v1 {
        tonic::include_proto!("tertulia.events.v1");
    }
}

/// Subjects of the events in `tertulia.events.v1`, next to their payloads so that publishers
/// and subscribers in different services agree. All are given without a deployment
/// namespace (see `tertulia_plumbing::nats`).
pub mod subjects {
    /// The JetStream stream of chat events.
    pub const CHAT_STREAM: &str = "CHAT";
    /// Every subject of [`CHAT_STREAM`].
    pub const CHAT_STREAM_SUBJECTS: &[&str] = &["chat.v1.conv.>"];

    /// Kinds of chat events, the last token of their subject.
    pub mod chat_event {
        /// `MessageCreated`.
        pub const MESSAGE: &str = "message";
        /// `MessageUpdated`.
        pub const MESSAGE_UPDATED: &str = "message_updated";
        /// `ReactionsChanged`.
        pub const REACTIONS: &str = "reactions";
        /// `ReceiptUpdated`.
        pub const RECEIPT: &str = "receipt";
        /// `MembershipChanged`.
        pub const MEMBERSHIP: &str = "membership";
    }

    /// The JetStream stream of media events.
    pub const MEDIA_STREAM: &str = "MEDIA";
    /// Every subject of [`MEDIA_STREAM`].
    pub const MEDIA_STREAM_SUBJECTS: &[&str] = &["media.v1.video.>"];

    /// Kinds of media events, the last token of their subject.
    pub mod media_event {
        /// `UploadCompleted`.
        pub const UPLOADED: &str = "uploaded";
        /// `ProcessingFinished`.
        pub const PROCESSED: &str = "processed";
        /// `ProcessingFailed`.
        pub const FAILED: &str = "failed";
        /// `MediaDeleted`.
        pub const DELETED: &str = "deleted";
    }

    /// `media.v1.video.<video_id>.<event>`.
    #[must_use]
    pub fn media_video(video_id: &str, event: &str) -> String {
        format!("media.v1.video.{video_id}.{event}")
    }

    /// `chat.v1.conv.<conversation_id>.<event>`.
    #[must_use]
    pub fn chat_conversation(conversation_id: &str, event: &str) -> String {
        format!("chat.v1.conv.{conversation_id}.{event}")
    }

    /// The delivery subjects as one low-cardinality name (span names, dashboards).
    pub const DELIVER_TEMPLATE: &str = "deliver.{user_id}";

    /// The core NATS subject on which a user's gateways receive `Delivery` messages:
    /// `deliver.<user_id>`.
    #[must_use]
    pub fn deliver(user_id: &str) -> String {
        format!("deliver.{user_id}")
    }

    /// The group delivery subjects as one low-cardinality name.
    pub const DELIVER_CONVERSATION_TEMPLATE: &str = "deliver.conversation.{conversation_id}";

    /// The core NATS subject on which the gateways of a group's connected members receive
    /// its new messages, once per gateway instead of once per member:
    /// `deliver.conversation.<conversation_id>`. The `Delivery` names its recipients.
    #[must_use]
    pub fn deliver_conversation(conversation_id: &str) -> String {
        format!("deliver.conversation.{conversation_id}")
    }
}
