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
    reason = "generated code is documented by the .proto comments, not rustdoc lints"
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
