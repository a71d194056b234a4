//! The web client: the built single-page app (`web/dist`) served as static files beside the
//! API, so a browser reaches both on one origin (no CORS, cookies never needed).
//!
//! - `/assets/*` are content-hashed by the build: cached for a year, immutable; a missing one
//!   is a 404.
//! - Every other path that is not the API's is the app's own route (`/`, `/chat/…`,
//!   `/videos/…`): a file of the build when one matches, `index.html` otherwise, never cached
//!   so a new build is picked up at the next load.
//! - `/api/*`, `/admin/*` and anything not `GET`/`HEAD` stay the API's: a problem document.

use std::path::PathBuf;

use axum::{
    extract::Request,
    http::{HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use tower::ServiceExt as _;
use tower_http::services::{ServeDir, ServeFile};

use crate::problem::ApiError;

/// Where the built web client is.
#[derive(Debug, Clone, Deserialize)]
pub struct WebConfig {
    /// The build's output folder (holds `index.html` and `assets/`).
    pub root: PathBuf,
}

/// Prefixes that belong to the API, never to the app.
const API_PREFIXES: [&str; 4] = ["/api/", "/admin/", "/.well-known/", "/metrics"];

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The fallback of the router: the app's files (when a web root is configured) or a 404
/// problem.
#[derive(Debug, Clone)]
pub struct WebClient {
    files: Option<Files>,
}

/// The build's files: the app's pages (unknown paths are `index.html`, the app routes them)
/// and its assets (unknown ones are 404: never a page cached as a script for a year).
#[derive(Debug, Clone)]
struct Files {
    pages: ServeDir<ServeFile>,
    assets: ServeDir,
}

impl WebClient {
    /// Serves the build at `config.root`; without a configuration every unknown path is a
    /// 404 problem.
    #[must_use]
    pub fn new(config: Option<&WebConfig>) -> Self {
        Self {
            files: config.map(|web| Files {
                pages: ServeDir::new(&web.root)
                    .precompressed_gzip()
                    .fallback(ServeFile::new(web.root.join("index.html"))),
                assets: ServeDir::new(&web.root).precompressed_gzip(),
            }),
        }
    }

    /// Answers a request no API route matched.
    pub async fn serve(self, request: Request) -> Response {
        let path = request.uri().path();
        let for_app = matches!(*request.method(), Method::GET | Method::HEAD)
            && !API_PREFIXES.iter().any(|prefix| path.starts_with(prefix));
        let Some(files) = self.files.filter(|_| for_app) else {
            return ApiError::not_found("no such route").into_response();
        };
        let asset = path.starts_with("/assets/");
        let Ok(mut response) = if asset {
            files.assets.oneshot(request).await
        } else {
            files.pages.oneshot(request).await
        };
        if response.status() == StatusCode::NOT_FOUND {
            return ApiError::not_found("no such file").into_response();
        }
        let cache = if asset && response.status().is_success() {
            IMMUTABLE
        } else {
            "no-cache"
        };
        let headers = response.headers_mut();
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        response.into_response()
    }
}
