//! `tertulia.presence.v1.PresenceService`: decode → [`Presence`] → encode.

use tertulia_plumbing::{error as status, wire::timestamp};
use tertulia_proto::presence::v1 as pb;
use time::OffsetDateTime;
use tonic::{Request, Response, Status};

use crate::{presence::Presence, store::StoreError};

/// Largest batch of a presence query.
pub const MAX_BATCH: usize = 200;

/// The gRPC face of [`Presence`].
#[derive(Debug, Clone)]
pub struct PresenceGrpc {
    presence: Presence,
}

impl PresenceGrpc {
    /// Serves `presence`.
    #[must_use]
    pub fn new(presence: Presence) -> Self {
        Self { presence }
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Self {
        status::unavailable(&error)
    }
}

fn required(value: &str, name: &str) -> Result<(), Status> {
    if value.is_empty() {
        Err(Status::invalid_argument(format!("{name} is required")))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::presence_service_server::PresenceService for PresenceGrpc {
    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = request.into_inner();
        required(&r.user_id, "user_id")?;
        required(&r.session_id, "session_id")?;
        self.presence
            .heartbeat(&r.user_id, &r.session_id, &r.gateway_id)
            .await?;
        Ok(Response::new(pb::HeartbeatResponse {
            ttl_seconds: u32::try_from(self.presence.ttl().as_secs()).unwrap_or(u32::MAX),
        }))
    }

    async fn disconnect(
        &self,
        request: Request<pb::DisconnectRequest>,
    ) -> Result<Response<pb::DisconnectResponse>, Status> {
        let r = request.into_inner();
        required(&r.user_id, "user_id")?;
        self.presence.disconnect(&r.user_id, &r.session_id).await?;
        Ok(Response::new(pb::DisconnectResponse {}))
    }

    async fn get_presence(
        &self,
        request: Request<pb::GetPresenceRequest>,
    ) -> Result<Response<pb::GetPresenceResponse>, Status> {
        let users = request.into_inner().user_ids;
        if users.len() > MAX_BATCH
            || users
                .iter()
                .any(|u| u.is_empty() || u.contains(['.', '*', '>', ' ']))
        {
            return Err(Status::invalid_argument(format!(
                "user_ids must be 1 to {MAX_BATCH} user ids"
            )));
        }
        let presence = self.presence.get(&users).await?;
        Ok(Response::new(pb::GetPresenceResponse {
            presence: presence
                .into_iter()
                .map(|p| {
                    let status = if p.online {
                        pb::PresenceStatus::Online
                    } else {
                        pb::PresenceStatus::Offline
                    };
                    pb::Presence {
                        user_id: p.user_id,
                        status: status.into(),
                        last_seen: p
                            .last_seen_ms
                            .and_then(|ms| {
                                OffsetDateTime::from_unix_timestamp_nanos(
                                    i128::from(ms) * 1_000_000,
                                )
                                .ok()
                            })
                            .map(timestamp),
                    }
                })
                .collect(),
        }))
    }

    async fn typing(
        &self,
        _request: Request<pb::TypingRequest>,
    ) -> Result<Response<pb::TypingResponse>, Status> {
        Err(Status::unimplemented(
            "typing indicators are relayed by the gateways over core NATS",
        ))
    }
}
