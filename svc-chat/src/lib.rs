//! svc-chat will own conversations, members, messages and read positions (PostgreSQL), the outbox that publishes to the JetStream stream `CHAT`, and the fan-out to `deliver.<user_id>` subjects.
//!
//! Today it starts, binds its gRPC port and answers `grpc.health.v1` (and drains on
//! SIGTERM) so the stack, the mesh and the tests can rely on it; `tertulia.chat.v1.ChatService` is
//! defined in `proto/` and not served yet.

pub mod config;

pub use config::ChatConfig;

use tertulia_plumbing::{StartError, grpc::GrpcServer, shutdown::Shutdown};

/// A built, bound svc-chat: today its gRPC server with health only.
pub type App = GrpcServer;

/// Binds the listener.
pub async fn build(config: ChatConfig) -> Result<App, StartError> {
    Ok(GrpcServer::bind(config.grpc).await?)
}

/// Builds and runs svc-chat until `shutdown` trips.
pub async fn run(config: ChatConfig, shutdown: Shutdown) -> Result<(), StartError> {
    Ok(build(config).await?.serve(shutdown).await?)
}
