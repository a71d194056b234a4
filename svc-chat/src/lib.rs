//! svc-chat owns conversations, members, messages, reactions and read positions (PostgreSQL
//! schema `chat`). It serves `tertulia.chat.v1.ChatService` and, beside it over the same
//! core, `tertulia.chat.v2.ChatService` (structured content, reactions) over gRPC.
//!
//! The message path: a send checks membership, dedupes on `(conversation, sender,
//! client_msg_id)`, takes the next gap-free `seq` and inserts the message and an outbox row in
//! one transaction; the commit is the sender's ack. The outbox relay publishes committed rows
//! to the JetStream stream `CHAT` (`chat.v1.conv.<id>.<event>`, `Nats-Msg-Id` = event id) and
//! marks them after the publish ack: a send's rows as its transaction hands them over in
//! memory at the commit, any other row once claimed from the table. The fan-out consumer (durable, explicit ack) reads
//! `CHAT` and publishes each event once per member to the core NATS subject
//! `deliver.<user_id>`, where gateways listen.
//!
//! Rooms: `domain/` (rules), `store/` (tables, outbox), `conversations` (use cases),
//! `events` (encoding, relay, fan-out), `grpc` (protobuf translation), `app` (wiring).

pub mod app;
pub mod config;
pub mod conversations;
pub mod domain;
pub mod error;
pub mod events;
pub mod grpc;
pub mod grpc_v2;
pub mod store;

pub use app::{App, run};
pub use config::ChatConfig;
