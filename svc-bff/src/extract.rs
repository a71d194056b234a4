//! Extractors that turn bad input into problem documents instead of axum's plain-text
//! rejections, and that authenticate the caller.

use std::net::SocketAddr;

use axum::{
    extract::{
        ConnectInfo, FromRequest, FromRequestParts, Query, Request, rejection::JsonRejection,
    },
    http::{StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;
use tertulia_plumbing::token::TokenError;

use crate::{app::AppState, problem::ApiError};

/// A JSON body; malformed JSON, a wrong content type or an oversized body is a problem.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_problem(&rejection)),
        }
    }
}

fn json_problem(rejection: &JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(_) => {
            ApiError::invalid_argument(format!("malformed JSON: {}", rejection.body_text()))
        }
        JsonRejection::JsonDataError(_) => ApiError::invalid_argument(rejection.body_text()),
        _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body is too large",
        ),
        _ => ApiError::invalid_argument(rejection.body_text()),
    }
}

/// Query parameters; unparsable ones are a 400 problem.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| Self(v))
            .map_err(|r| ApiError::invalid_argument(r.body_text()))
    }
}

/// The authenticated caller, from a verified `Authorization: Bearer` access token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's subject.
    pub user_id: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?;
        match state.verifier.verify(token).await {
            Ok(claims) => {
                // The request's span names who asked (support finds traces by user).
                tracing::Span::current().record("enduser.id", claims.sub.as_str());
                Ok(Self {
                    user_id: claims.sub,
                })
            }
            Err(TokenError::KeysUnavailable(status)) => {
                tracing::warn!(message = "Cannot fetch signing keys.", error = %status);
                Err(ApiError::unavailable(
                    "cannot verify tokens right now, retry later",
                ))
            }
            Err(e) => Err(ApiError::unauthenticated(e.to_string())),
        }
    }
}

/// The caller when a token is given, anonymous when none is (a bad token is still 401).
#[derive(Debug, Clone)]
pub struct MaybeCaller(pub Option<Caller>);

impl FromRequestParts<AppState> for MaybeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if parts.headers.contains_key(header::AUTHORIZATION) {
            Caller::from_request_parts(parts, state)
                .await
                .map(|c| Self(Some(c)))
        } else {
            Ok(Self(None))
        }
    }
}

impl MaybeCaller {
    /// The caller's id, empty when anonymous (as the gRPC services expect).
    #[must_use]
    pub fn actor_id(&self) -> String {
        self.0
            .as_ref()
            .map(|c| c.user_id.clone())
            .unwrap_or_default()
    }
}

fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthenticated("missing Authorization: Bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| ApiError::unauthenticated("malformed Authorization header"))?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthenticated(
            "Authorization must use the Bearer scheme",
        ));
    }
    Ok(token.trim())
}

/// The end user's address: the peer, or the first `X-Forwarded-For` hop when configured.
#[derive(Debug, Clone)]
pub struct ClientAddress(pub String);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if state.trust_forwarded_for
            && let Some(first) = parts
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
        {
            return Ok(Self(first.trim().to_owned()));
        }
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(addr)| addr.ip().to_string())
            .unwrap_or_default();
        Ok(Self(peer))
    }
}

/// Largest page a list call returns.
pub const MAX_PAGE: u32 = 200;
/// Page size when the caller names none.
pub const DEFAULT_PAGE: u32 = 50;

/// Checks an optional page size against 1..=200.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE),
        Some(n @ 1..=MAX_PAGE) => Ok(n),
        Some(_) => Err(ApiError::invalid_argument(format!(
            "limit must be 1 to {MAX_PAGE}"
        ))),
    }
}
