//! The public HTTP listener of svc-media: tus uploads under `/uploads` and the signed
//! origin under `/media`. Errors are RFC 9457 problem documents.

use axum::{
    Router,
    http::{HeaderName, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use tertulia_plumbing::http::RequestIdV7;
use tower_http::{
    cors::{Any, CorsLayer},
    request_id::{PropagateRequestIdLayer, SetRequestIdLayer},
    trace::TraceLayer,
};

use crate::{media::Media, origin, uploads};

/// An error answer: status, stable code, human detail.
#[derive(Debug)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine code.
    pub code: &'static str,
    /// What went wrong.
    pub detail: String,
}

impl Problem {
    /// A problem.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// 503: a dependency failed; the detail stays in the log.
    pub fn unavailable(error: &dyn std::fmt::Display) -> Self {
        tracing::warn!(message = "Dependency failed.", error = %error);
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "storage is unavailable, retry later")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": format!("https://docs.tertulia.dev/problems/{}", self.code),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The router of the public listener. CORS is open: uploads carry their own signed token
/// and media URLs are signed, so browsers on any origin may use both.
pub fn router(media: Media) -> Router {
    let tus_headers = [
        "tus-resumable",
        "tus-version",
        "tus-extension",
        "tus-max-size",
        "tus-checksum-algorithm",
        "upload-offset",
        "upload-length",
        "upload-metadata",
        "upload-expires",
        "upload-checksum",
        "location",
        "etag",
        "content-range",
        "accept-ranges",
    ]
    .map(HeaderName::from_static);
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(Any)
        .expose_headers(tus_headers);
    Router::new()
        .merge(uploads::routes())
        .merge(origin::routes())
        // Outermost first: an id for every request, traced, echoed back, CORS answered.
        .layer(cors)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(RequestIdV7))
        .with_state(media)
}
