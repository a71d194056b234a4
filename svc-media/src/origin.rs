//! The media origin: `GET`/`HEAD /media/{video_id}/{path}?exp=&kid=&sig=`.
//!
//! - `path` is `original`, `thumbnail.jpg` or `hls/...`; a path that could leave the video's
//!   folder (`..`, `.`, empty segments, backslashes) is 400 before anything else is looked at.
//! - One signature opens every object of the video; missing or expired is 403. Playlists
//!   are rewritten on the way out so every URI in them carries the same signature (relative
//!   URIs do not inherit a query string).
//! - Objects are content-addressed and never change: `Cache-Control: public,
//!   max-age=31536000, immutable`, a strong `ETag`, `If-None-Match` → 304, `Accept-Ranges`,
//!   and single `Range` requests → 206 (416 when unsatisfiable). Playlists are cached
//!   briefly (the master grows while renditions finish).

use std::{collections::HashMap, fmt::Write as _, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use futures::TryStreamExt as _;
use object_store::GetOptions;
use tertulia_plumbing::generations::Generations;
use uuid::Uuid;

use crate::{
    blobs,
    http::Problem,
    media::{Media, unix_now},
    signing::{PlaybackToken, SignatureError},
};

/// How long the origin trusts what it read of a video (its content hash) before asking the
/// database again: a row is written once and only ever deleted, and this instance forgets a
/// video it deletes at once, so the only staleness is another instance (or a request that
/// raced the delete) serving a deleted video's content, while another video shares it, for
/// up to twice this long.
const CONTENT_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// Content hashes by video, so a player's stream of range requests costs one database read
/// a second, not one each.
#[derive(Debug)]
pub struct ContentCache {
    hashes: std::sync::Mutex<Generations<Uuid, Arc<str>>>,
}

impl Default for ContentCache {
    fn default() -> Self {
        Self {
            hashes: std::sync::Mutex::new(Generations::new(CONTENT_TTL, CONTENT_MAX)),
        }
    }
}

/// Videos remembered per generation, at most.
const CONTENT_MAX: usize = 100_000;

impl ContentCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<Uuid, Arc<str>>> {
        self.hashes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets `video_id` (it was deleted here).
    pub fn forget(&self, video_id: Uuid) {
        self.lock().remove(&video_id);
    }
}

/// The content hash of `video_id`, from the cache or the database; `None` for no such video.
async fn content_of(media: &Media, video_id: Uuid) -> Result<Option<Arc<str>>, Problem> {
    if let Some(hash) = media.contents.lock().get(&video_id) {
        return Ok(Some(hash));
    }
    let Some(video) = media
        .store
        .video(video_id)
        .await
        .map_err(|e| Problem::unavailable(&e))?
    else {
        return Ok(None);
    };
    let hash: Arc<str> = video.content_hash.into();
    media.contents.lock().insert(video_id, Arc::clone(&hash));
    Ok(Some(hash))
}

/// Cache lifetime of immutable objects.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// Cache lifetime of the master playlist, which grows while renditions finish.
const MASTER_CACHE: &str = "public, max-age=10";
/// Cache lifetime of a variant playlist (complete once written, but signed per viewer).
const PLAYLIST_CACHE: &str = "public, max-age=300";

/// The origin's routes.
pub fn routes() -> Router<Media> {
    Router::new().route("/media/{video_id}/{*path}", get(serve))
}

/// Whether `path` stays inside the video's folder.
#[must_use]
pub fn is_contained(path: &str) -> bool {
    !path.is_empty()
        && !path.contains(['\\', '\0'])
        && path
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

/// The blob key behind a contained path, `None` for paths that name nothing.
fn key_for(hash: &str, path: &str) -> Option<object_store::path::Path> {
    match path {
        "original" => Some(blobs::original(hash)),
        "thumbnail.jpg" => Some(blobs::derived(hash, path)),
        p if p.starts_with("hls/") => Some(blobs::derived(hash, p)),
        _ => None,
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("m3u8") => "application/vnd.apple.mpegurl",
        Some("ts") => "video/mp2t",
        Some("jpg") => "image/jpeg",
        _ => "application/octet-stream",
    }
}

/// Appends the signature to every URI of a playlist (lines that are not tags, and
/// `URI="..."` attributes of tags).
#[must_use]
pub fn sign_playlist(playlist: &str, token: &PlaybackToken) -> String {
    let query = token.query();
    let mut out = String::with_capacity(playlist.len() + 64);
    for line in playlist.lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            out.push_str(line);
        } else if trimmed.starts_with('#') {
            match trimmed.split_once("URI=\"") {
                Some((head, rest)) => match rest.split_once('"') {
                    Some((uri, tail)) => {
                        let _ = write!(out, "{head}URI=\"{uri}?{query}\"{tail}");
                    }
                    None => out.push_str(line),
                },
                None => out.push_str(line),
            }
        } else {
            let _ = write!(out, "{trimmed}?{query}");
        }
        out.push('\n');
    }
    out
}

/// A single byte range of an object of `size` bytes. `Ok(None)`: serve the whole object
/// (no header, several ranges, or a header that does not parse, which RFC 9110 says to
/// ignore). `Err(())`: unsatisfiable.
fn parse_range(header: Option<&str>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((start, end)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let Ok(suffix) = end.parse::<u64>() else {
            return Ok(None);
        };
        if suffix == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(suffix), size - 1)
    } else {
        let Ok(first) = start.parse::<u64>() else {
            return Ok(None);
        };
        let last = if end.is_empty() {
            size.saturating_sub(1)
        } else {
            match end.parse::<u64>() {
                Ok(l) if l >= first => l.min(size.saturating_sub(1)),
                _ => return Ok(None),
            }
        };
        if first >= size {
            return Err(());
        }
        (first, last)
    };
    Ok(Some(range))
}

fn etag_matches(if_none_match: Option<&str>, etag: &str) -> bool {
    if_none_match.is_some_and(|v| {
        v.split(',')
            .map(|t| t.trim().trim_start_matches("W/"))
            .any(|t| t == "*" || t == etag)
    })
}

fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not_found", "no such media")
}

/// Whether `path` names an HLS playlist.
#[must_use]
pub fn is_playlist(path: &str) -> bool {
    std::path::Path::new(path)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("m3u8"))
}

async fn serve(
    State(media): State<Media>,
    Path((video_id, path)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    if !is_contained(&path) {
        return Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "the path leaves the video's folder",
        ));
    }
    let video_id: Uuid = video_id.parse().map_err(|_| not_found())?;
    let q = |k: &str| query.get(k).map(String::as_str);
    media
        .signer
        .verify_playback(video_id, q("exp"), q("kid"), q("sig"), unix_now())
        .map_err(|e| {
            let detail = match e {
                SignatureError::Missing => "the media URL is not signed",
                SignatureError::Expired => "the media URL has expired",
                SignatureError::Invalid => "the media URL's signature is not valid",
            };
            Problem::new(StatusCode::FORBIDDEN, "permission_denied", detail)
        })?;
    let content = content_of(&media, video_id).await?.ok_or_else(not_found)?;
    let key = key_for(&content, &path).ok_or_else(not_found)?;
    let head = method == Method::HEAD;
    if is_playlist(&path) {
        // The signature was just verified, so its parts are present and well formed.
        let token = PlaybackToken {
            exp: q("exp").and_then(|e| e.parse().ok()).unwrap_or_default(),
            kid: q("kid").unwrap_or_default().to_owned(),
            sig: q("sig").unwrap_or_default().to_owned(),
        };
        serve_playlist(&media, &key, &path, &token, head).await
    } else {
        serve_object(&media, &key, &path, &headers, head).await
    }
}

/// A playlist, rewritten so that every URI in it carries the caller's signature.
async fn serve_playlist(
    media: &Media,
    key: &object_store::path::Path,
    path: &str,
    token: &PlaybackToken,
    head: bool,
) -> Result<Response, Problem> {
    let object = media
        .blobs
        .get(key, GetOptions::default())
        .await
        .map_err(|e| Problem::unavailable(&e))?
        .ok_or_else(not_found)?;
    let bytes = object.bytes().await.map_err(|e| Problem::unavailable(&e))?;
    let body = sign_playlist(&String::from_utf8_lossy(&bytes), token);
    let cache = if path.ends_with("master.m3u8") {
        MASTER_CACHE
    } else {
        PLAYLIST_CACHE
    };
    let length = body.len();
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type(path)),
            (header::CACHE_CONTROL, cache),
        ],
        if head { String::new() } else { body },
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok(response)
}

/// An immutable object, whole or one range of it, or 304 when the client has it.
async fn serve_object(
    media: &Media,
    key: &object_store::path::Path,
    path: &str,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, Problem> {
    let opened = media
        .blobs
        .open_object(key)
        .await
        .map_err(|e| Problem::unavailable(&e))?
        .ok_or_else(not_found)?;
    let size = opened.size;
    let etag = format!("\"{}\"", opened.etag);
    let mut base = HeaderMap::new();
    base.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).map_err(|_| not_found())?,
    );
    base.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    base.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    base.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    let header_str = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if etag_matches(header_str(header::IF_NONE_MATCH), &etag) {
        return Ok((StatusCode::NOT_MODIFIED, base).into_response());
    }
    let Ok(range) = parse_range(header_str(header::RANGE), size) else {
        base.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{size}")).expect("ASCII"),
        );
        base.remove(header::CACHE_CONTROL);
        let mut response = Problem::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "invalid_argument",
            format!("the range is outside the object's {size} bytes"),
        )
        .into_response();
        response.headers_mut().extend(base);
        return Ok(response);
    };
    let (status, first, last) = match range {
        Some((first, last)) => (StatusCode::PARTIAL_CONTENT, first, last),
        None => (StatusCode::OK, 0, size.saturating_sub(1)),
    };
    let length = if size == 0 { 0 } else { last - first + 1 };
    base.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if status == StatusCode::PARTIAL_CONTENT {
        base.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {first}-{last}/{size}")).expect("ASCII"),
        );
    }
    if head || length == 0 {
        return Ok((status, base).into_response());
    }
    let stream = media
        .blobs
        .read(opened, first..last + 1)
        .await
        .map_err(|e| Problem::unavailable(&e))?
        .map_err(std::io::Error::other);
    Ok((status, base, Body::from_stream(stream)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment() {
        assert!(is_contained("hls/360p/seg_00001.ts"));
        assert!(is_contained("original"));
        for bad in [
            "",
            "../x",
            "hls/../../etc/passwd",
            "hls//x",
            "./original",
            "hls\\..\\x",
            "hls/.",
        ] {
            assert!(!is_contained(bad), "{bad}");
        }
    }

    #[test]
    fn a_deleted_video_is_forgotten() {
        let cache = ContentCache::default();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        cache.lock().insert(a, "hash-a".into());
        cache.lock().insert(b, "hash-b".into());
        cache.forget(b);
        assert_eq!(cache.lock().get(&a).as_deref(), Some("hash-a"));
        assert_eq!(
            cache.lock().get(&b),
            None,
            "a deleted video is asked for again"
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-3"), 10), Ok(Some((0, 3))));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(parse_range(Some("bytes=-4"), 10), Ok(Some((6, 9))));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=-0"), 10), Err(()));
        assert_eq!(parse_range(Some("bytes=0-1,4-5"), 10), Ok(None));
        assert_eq!(parse_range(Some("items=0-1"), 10), Ok(None));
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Ok(None));
    }

    #[test]
    fn playlists_carry_the_signature() {
        let token = PlaybackToken {
            exp: 9,
            kid: "k".into(),
            sig: "s".into(),
        };
        let signed = sign_playlist(
            "#EXTM3U\n#EXT-X-KEY:METHOD=AES-128,URI=\"key.bin\"\n#EXTINF:4.0,\nseg_00000.ts\n",
            &token,
        );
        assert!(signed.contains("\nseg_00000.ts?exp=9&kid=k&sig=s\n"));
        assert!(signed.contains("URI=\"key.bin?exp=9&kid=k&sig=s\""));
        assert!(signed.starts_with("#EXTM3U\n"));
    }
}
