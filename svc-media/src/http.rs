//! The public HTTP listener of svc-media: tus uploads under `/uploads` and the signed
//! origin under `/media`. Errors are RFC 9457 problem documents.

use axum::{
    Router,
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use tertulia_plumbing::http::RequestIdV7;
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};

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
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "storage is unavailable, retry later",
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": format!("urn:tertulia:problem:{}", self.code),
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

/// Response headers a browser may read (tus and range requests need them).
const EXPOSED: &str = "Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, \
    Tus-Checksum-Algorithm, Upload-Offset, Upload-Length, Upload-Metadata, Upload-Expires, \
    Location, ETag, Content-Range, Accept-Ranges, X-Request-Id";

/// CORS for every origin: uploads carry their own signed token and media URLs are signed,
/// so pages anywhere may use both. Only real preflights (with
/// `Access-Control-Request-Method`) are answered here; a plain `OPTIONS` is tus discovery
/// and reaches its handler.
async fn cors(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, HEAD, POST, PATCH, DELETE, OPTIONS"),
        );
        if let Some(asked) = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
        }
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("86400"),
        );
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED),
    );
    response
}

/// The router of the public listener.
pub fn router(media: Media) -> Router {
    Router::new()
        .merge(uploads::routes())
        .merge(origin::routes())
        // Outermost last: an id for every request, traced, echoed back; CORS inside.
        .layer(axum::middleware::from_fn(cors))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn(
            tertulia_plumbing::telemetry::trace_http,
        ))
        .layer(SetRequestIdLayer::x_request_id(RequestIdV7))
        .with_state(media)
}
