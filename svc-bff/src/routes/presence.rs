//! `GET /api/v1/presence?user_ids=a,b`: online status and last seen, from svc-presence.

use axum::{Json, Router, extract::State, routing::get};
use serde::{Deserialize, Serialize};
use tertulia_plumbing::client::with_deadline;
use tertulia_proto::presence::v1 as pb;

use crate::{
    app::AppState,
    extract::{ApiQuery, Caller, MAX_PAGE},
    problem::ApiError,
    views::rfc3339,
};

/// The routes of this module, relative to `/api/v1`.
pub fn router() -> Router<AppState> {
    Router::new().route("/presence", get(presence))
}

#[derive(Debug, Deserialize)]
struct PresenceQuery {
    #[serde(default)]
    user_ids: String,
}

#[derive(Debug, Serialize)]
struct PresenceView {
    user_id: String,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<String>,
}

#[derive(Debug, Serialize)]
struct PresencePage {
    presence: Vec<PresenceView>,
}

async fn presence(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(q): ApiQuery<PresenceQuery>,
) -> Result<Json<PresencePage>, ApiError> {
    let user_ids: Vec<String> = q
        .user_ids
        .split(',')
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
        .collect();
    if user_ids.is_empty() || user_ids.len() > MAX_PAGE as usize {
        return Err(ApiError::invalid_argument(format!(
            "user_ids must list 1 to {MAX_PAGE} comma-separated ids"
        )));
    }
    if let Some(bad) = user_ids
        .iter()
        .find(|id| uuid::Uuid::parse_str(id).is_err())
    {
        return Err(ApiError::invalid_argument(format!(
            "{bad:?} is not a user id"
        )));
    }
    let request = pb::GetPresenceRequest { user_ids };
    let presence = state
        .presence
        .clone()
        .get_presence(with_deadline(request, state.call_deadline))
        .await?
        .into_inner()
        .presence;
    Ok(Json(PresencePage {
        presence: presence
            .into_iter()
            .map(|p| PresenceView {
                status: if p.status() == pb::PresenceStatus::Online {
                    "online"
                } else {
                    "offline"
                },
                last_seen: rfc3339(p.last_seen.as_ref()),
                user_id: p.user_id,
            })
            .collect(),
    }))
}
