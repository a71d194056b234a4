//! The HTTP API, one module per area.

pub mod auth;
pub mod chat;
pub mod messages_v2;
pub mod ops;
pub mod presence;
pub mod videos;

use axum::http::StatusCode;

use crate::problem::ApiError;

/// The view of what an upstream must have answered with; 503 naming it when it did not
/// (`missing`: e.g. "svc-chat answered without a message").
pub(crate) fn answered<T, V: From<T>>(
    value: Option<T>,
    missing: &'static str,
) -> Result<V, ApiError> {
    value
        .map(V::from)
        .ok_or_else(|| ApiError::unavailable(missing))
}

/// 201 for what this call created, 200 for what already existed (idempotent creates).
pub(crate) fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}
