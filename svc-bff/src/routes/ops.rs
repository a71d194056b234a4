//! Operational endpoints: liveness, readiness, Prometheus metrics, the published signing
//! keys and the deprecated-API usage report.

use axum::{
    Json, Router,
    extract::State,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use tertulia_plumbing::client::with_deadline;
use tertulia_proto::auth::v1::GetJwksRequest;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{app::AppState, problem::ApiError};

/// `/healthz`, `/readyz`, `/metrics`, `/.well-known/jwks.json`, `/admin/api-usage`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/admin/api-usage", get(api_usage))
}

/// This gateway's series, as OpenMetrics text.
async fn metrics(State(state): State<AppState>) -> Response {
    use tertulia_plumbing::metrics::{CONTENT_TYPE, render};
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&state.metrics),
    )
        .into_response()
}

/// Equal without telling a timing observer how much of `given` was right.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// Who still calls deprecated versions, across every gateway (operators only: the
/// configured admin token). 404 when no admin token is configured.
async fn api_usage(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    use secrecy::ExposeSecret as _;
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::not_found("no such route"));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::unauthenticated("the admin token is missing"))?;
    if !same_secret(given.trim().as_bytes(), expected.expose_secret().as_bytes()) {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "permission_denied",
            "not an admin token",
        ));
    }
    let rows = state.usage.report().await.map_err(|e| {
        tracing::warn!(message = "API usage unavailable.", error = %e);
        ApiError::unavailable("usage counts are unavailable, retry later")
    })?;
    Ok(Json(serde_json::json!({ "clients": rows })))
}

/// Liveness: the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: not draining, NATS connected, every upstream reports SERVING.
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if state.shutdown.is_cancelled() {
        return Err(ApiError::unavailable("draining"));
    }
    if let Err(failures) = state.readiness.check().await {
        return Err(ApiError::unavailable(failures.join("; ")));
    }
    for (name, channel) in &state.upstreams {
        let request = with_deadline(HealthCheckRequest::default(), state.call_deadline);
        let status = HealthClient::new(channel.clone())
            .check(request)
            .await
            .map_err(|_| ApiError::unavailable(format!("{name} is not reachable")))?
            .into_inner()
            .status();
        if status != ServingStatus::Serving {
            return Err(ApiError::unavailable(format!("{name} is not serving")));
        }
    }
    Ok(Json(serde_json::json!({ "status": "ready" })))
}

/// The JWK set access tokens are verified with (RFC 7517), cacheable for five minutes.
async fn jwks(State(state): State<AppState>) -> Result<Response, ApiError> {
    let jwks = state
        .auth
        .clone()
        .get_jwks(with_deadline(GetJwksRequest {}, state.call_deadline))
        .await?
        .into_inner()
        .jwks_json;
    Ok((
        [
            (header::CONTENT_TYPE, "application/jwk-set+json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        jwks,
    )
        .into_response())
}
