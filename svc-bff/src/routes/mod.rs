//! The HTTP API, one module per area.

pub mod auth;
pub mod chat;
pub mod messages_v2;
pub mod ops;
pub mod presence;
pub mod videos;
