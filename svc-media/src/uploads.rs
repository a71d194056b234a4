//! Resumable uploads: tus 1.0 (core, creation, termination, checksum, expiration), so stock
//! tus clients work.
//!
//! - `POST /uploads?token=<upload token>` with `Upload-Length` creates an upload for the
//!   video and owner the signed token names; `Location` is its URL (carrying the token).
//! - `HEAD` answers the offset after a dropped connection; `PATCH` appends at exactly that
//!   offset (else 409); a body past the declared length is 413; `Upload-Checksum` (sha1,
//!   sha256) verifies the request's bytes (460 and nothing kept on a mismatch); `DELETE`
//!   abandons the upload.
//! - Bytes go to a local partial file, `fsync`ed before each answer, and through BLAKE3 as
//!   they arrive. When the last byte lands, the file is stored under its hash (once: an
//!   identical file already stored is not stored again), becomes the video's content, and
//!   `uploaded` is published; transcoding follows from that event.

use std::{collections::HashMap, os::unix::fs::FileExt as _, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures::StreamExt as _;
use sha1::Digest as _;
use tertulia_plumbing::clock::http_date;
use time::OffsetDateTime;
use tokio::io::AsyncReadExt as _;
use uuid::Uuid;

use crate::{
    blobs, events,
    http::Problem,
    media::{Media, unix_now},
    signing::{SignatureError, UploadGrant},
    store::{Completion, StoredVideo, Upload},
};

/// The protocol version spoken.
pub const TUS_VERSION: &str = "1.0.0";
/// Extensions offered.
pub const TUS_EXTENSIONS: &str = "creation,termination,checksum,expiration";
/// Checksum algorithms accepted in `Upload-Checksum`.
pub const TUS_CHECKSUMS: &str = "sha1,sha256";
/// How long a second writer waits for the first to finish before 423.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// 460 Checksum Mismatch, defined by the tus checksum extension.
const CHECKSUM_MISMATCH: u16 = 460;

/// The tus routes.
pub fn routes() -> Router<Media> {
    Router::new()
        .route("/uploads", post(create).options(capabilities))
        .route(
            "/uploads/{upload_id}",
            axum::routing::head(offset)
                .patch(append)
                .delete(terminate)
                .options(capabilities),
        )
        .layer(axum::middleware::map_response(tus_resumable))
}

async fn tus_resumable(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    response
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// 412 unless the client speaks our version.
#[expect(
    clippy::result_large_err,
    reason = "the error is the finished response, returned as is by every handler"
)]
fn check_version(headers: &HeaderMap) -> Result<(), Response> {
    if header_str(headers, "tus-resumable") == Some(TUS_VERSION) {
        return Ok(());
    }
    let mut response = Problem::new(
        StatusCode::PRECONDITION_FAILED,
        "invalid_argument",
        format!("Tus-Resumable: {TUS_VERSION} is required"),
    )
    .into_response();
    response
        .headers_mut()
        .insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    Err(response)
}

fn grant(media: &Media, query: &HashMap<String, String>) -> Result<UploadGrant, Problem> {
    let token = query.get("token").ok_or_else(|| {
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "the upload token is missing",
        )
    })?;
    media
        .signer
        .verify_upload(token, unix_now())
        .map_err(|e| match e {
            SignatureError::Expired => Problem::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "the upload token has expired",
            ),
            SignatureError::Missing | SignatureError::Invalid => Problem::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "the upload token is not valid",
            ),
        })
}

/// `OPTIONS`: what this server supports.
async fn capabilities(State(media): State<Media>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    headers.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    headers.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(TUS_CHECKSUMS),
    );
    headers.insert(
        "tus-max-size",
        HeaderValue::from(media.limits.max_upload_bytes),
    );
    (StatusCode::NO_CONTENT, headers).into_response()
}

/// `POST /uploads`: creation.
async fn create(
    State(media): State<Media>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    check_version(&headers)?;
    let grant = grant(&media, &query).map_err(IntoResponse::into_response)?;
    let problem = |status, code, detail: &str| Problem::new(status, code, detail).into_response();
    if headers.contains_key("upload-defer-length") {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "Upload-Defer-Length is not supported: declare Upload-Length",
        ));
    }
    let length: u64 = header_str(&headers, "upload-length")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            problem(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "Upload-Length must be a non-negative integer",
            )
        })?;
    if length > media.limits.max_upload_bytes {
        return Err(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!(
                "Upload-Length is over the maximum of {} bytes",
                media.limits.max_upload_bytes
            ),
        ));
    }
    let existing = media
        .store
        .video(grant.video_id)
        .await
        .map_err(|e| Problem::unavailable(&e).into_response())?;
    if existing.is_some() {
        return Err(problem(
            StatusCode::CONFLICT,
            "already_exists",
            "the video already has its file",
        ));
    }
    if media
        .store
        .video_deleted(grant.video_id)
        .await
        .map_err(|e| Problem::unavailable(&e).into_response())?
    {
        return Err(video_deleted().into_response());
    }
    let expires_at = OffsetDateTime::from_unix_timestamp(grant.exp)
        .unwrap_or_else(|_| OffsetDateTime::now_utc());
    let upload = Upload {
        upload_id: Uuid::new_v4(),
        video_id: grant.video_id,
        owner_id: grant.owner_id,
        length,
        metadata: header_str(&headers, "upload-metadata")
            .unwrap_or_default()
            .to_owned(),
        expires_at,
        completed: false,
    };
    let path = media.partial_path(upload.upload_id);
    let io = |e: std::io::Error| Problem::unavailable(&e).into_response();
    tokio::fs::create_dir_all(path.parent().expect("partial files live in a folder"))
        .await
        .map_err(io)?;
    tokio::fs::File::create(&path).await.map_err(io)?;
    media
        .store
        .create_upload(&upload)
        .await
        .map_err(|e| Problem::unavailable(&e).into_response())?;
    tracing::info!(message = "Upload created.", upload_id = %upload.upload_id, video_id = %upload.video_id, length);
    let location = format!(
        "{}/uploads/{}?token={}",
        media.upload_url, upload.upload_id, query["token"]
    );
    let mut response = StatusCode::CREATED.into_response();
    let h = response.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("URL-safe characters"),
    );
    h.insert("upload-offset", HeaderValue::from_static("0"));
    h.insert(
        "upload-expires",
        HeaderValue::from_str(&http_date(expires_at)).expect("ASCII date"),
    );
    if length == 0 {
        // Nothing to wait for: an empty file is complete at creation.
        let hasher = blake3::Hasher::new();
        finish(&media, &upload, &hasher).await?;
    }
    Ok(response)
}

/// The upload at `upload_id` if the token grants it; 404 otherwise (a token for another
/// video learns nothing), 410 once expired.
async fn authorized(
    media: &Media,
    upload_id: &str,
    query: &HashMap<String, String>,
) -> Result<Upload, Response> {
    let grant = grant(media, query).map_err(IntoResponse::into_response)?;
    let not_found =
        || Problem::new(StatusCode::NOT_FOUND, "not_found", "no such upload").into_response();
    let id: Uuid = upload_id.parse().map_err(|_| not_found())?;
    let upload = media
        .store
        .upload(id)
        .await
        .map_err(|e| Problem::unavailable(&e).into_response())?
        .filter(|u| u.video_id == grant.video_id && u.owner_id == grant.owner_id)
        .ok_or_else(not_found)?;
    if upload.expires_at <= OffsetDateTime::now_utc() {
        return Err(
            Problem::new(StatusCode::GONE, "gone", "the upload has expired").into_response(),
        );
    }
    Ok(upload)
}

fn offset_headers(upload: &Upload, offset: u64) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("upload-offset", HeaderValue::from(offset));
    h.insert("upload-length", HeaderValue::from(upload.length));
    h.insert(
        "upload-expires",
        HeaderValue::from_str(&http_date(upload.expires_at)).expect("ASCII date"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h
}

async fn partial_len(media: &Media, upload: &Upload) -> Result<u64, Response> {
    if upload.completed {
        return Ok(upload.length);
    }
    match tokio::fs::metadata(media.partial_path(upload.upload_id)).await {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Problem::new(StatusCode::NOT_FOUND, "not_found", "no such upload").into_response())
        }
        Err(e) => Err(Problem::unavailable(&e).into_response()),
    }
}

/// `HEAD`: the offset to resume from.
async fn offset(
    State(media): State<Media>,
    Path(upload_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    check_version(&headers)?;
    let upload = authorized(&media, &upload_id, &query).await?;
    let offset = partial_len(&media, &upload).await?;
    Ok((StatusCode::OK, offset_headers(&upload, offset)).into_response())
}

/// `DELETE`: termination.
async fn terminate(
    State(media): State<Media>,
    Path(upload_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    check_version(&headers)?;
    let upload = authorized(&media, &upload_id, &query).await?;
    if upload.completed {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "already_exists",
            "the upload is complete; delete the video instead",
        )
        .into_response());
    }
    discard(&media, upload.upload_id)
        .await
        .map_err(|e| Problem::unavailable(&e).into_response())?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Forgets an unfinished upload and its partial file.
pub async fn discard(media: &Media, upload_id: Uuid) -> Result<(), String> {
    let session = media.session(upload_id).await;
    let _writer = session.lock().await;
    match tokio::fs::remove_file(media.partial_path(upload_id)).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.to_string()),
    }
    media
        .store
        .delete_upload(upload_id)
        .await
        .map_err(|e| e.to_string())?;
    media.end_session(upload_id).await;
    Ok(())
}

/// A request's checksum, checked over exactly the bytes of that request.
enum Checksum {
    Sha1(sha1::Sha1, Vec<u8>),
    Sha256(sha2::Sha256, Vec<u8>),
}

impl Checksum {
    fn parse(value: &str) -> Result<Self, Problem> {
        let bad = |d: &str| Problem::new(StatusCode::BAD_REQUEST, "invalid_argument", d);
        let (algorithm, digest) = value
            .split_once(' ')
            .ok_or_else(|| bad("Upload-Checksum must be '<algorithm> <base64 digest>'"))?;
        let expected = STANDARD
            .decode(digest.trim())
            .map_err(|_| bad("the Upload-Checksum digest is not base64"))?;
        match algorithm {
            "sha1" => Ok(Self::Sha1(sha1::Sha1::new(), expected)),
            "sha256" => Ok(Self::Sha256(sha2::Sha256::new(), expected)),
            _ => Err(bad(&format!(
                "checksum algorithm {algorithm:?} is not supported (use {TUS_CHECKSUMS})"
            ))),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha1(h, _) => h.update(bytes),
            Self::Sha256(h, _) => h.update(bytes),
        }
    }

    fn matches(self) -> bool {
        match self {
            Self::Sha1(h, expected) => h.finalize().as_slice() == expected.as_slice(),
            Self::Sha256(h, expected) => h.finalize().as_slice() == expected.as_slice(),
        }
    }
}

/// BLAKE3 over the partial file, when the in-memory state is missing or behind.
async fn rehash(file: &mut tokio::fs::File, len: u64) -> std::io::Result<blake3::Hasher> {
    use tokio::io::AsyncSeekExt as _;
    let mut hasher = blake3::Hasher::new();
    file.seek(std::io::SeekFrom::Start(0)).await?;
    let mut reader = file.take(len);
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher)
}

/// A `PATCH`'s claimed offset and checksum, after its content type is checked.
fn patch_headers(headers: &HeaderMap) -> Result<(u64, Option<Checksum>), Problem> {
    if header_str(headers, "content-type") != Some("application/offset+octet-stream") {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_argument",
            "Content-Type must be application/offset+octet-stream",
        ));
    }
    let claimed: u64 = header_str(headers, "upload-offset")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "Upload-Offset must be a non-negative integer",
            )
        })?;
    let checksum = header_str(headers, "upload-checksum")
        .map(Checksum::parse)
        .transpose()?;
    Ok((claimed, checksum))
}

/// `PATCH`: appends the body at `Upload-Offset`.
async fn append(
    State(media): State<Media>,
    Path(upload_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Response> {
    check_version(&headers)?;
    let problem = |status, code, detail: String| Problem::new(status, code, detail).into_response();
    let (claimed, mut checksum) = patch_headers(&headers).map_err(IntoResponse::into_response)?;
    let upload = authorized(&media, &upload_id, &query).await?;
    let session = media.session(upload.upload_id).await;
    let Ok(mut guard) = tokio::time::timeout(LOCK_WAIT, session.lock()).await else {
        return Err(problem(
            StatusCode::LOCKED,
            "conflict",
            "another request is writing this upload".into(),
        ));
    };
    let current = partial_len(&media, &upload).await?;
    let wrong_offset = || {
        let mut r = problem(
            StatusCode::CONFLICT,
            "conflict",
            format!("Upload-Offset must be {current}, the upload's offset"),
        );
        r.headers_mut()
            .insert("upload-offset", HeaderValue::from(current));
        r
    };
    if claimed != current {
        return Err(wrong_offset());
    }
    if upload.completed {
        // A client that lost the final answer may send the empty last PATCH again.
        return Ok((StatusCode::NO_CONTENT, offset_headers(&upload, current)).into_response());
    }
    let declared: Option<u64> = header_str(&headers, "content-length").and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| current + n > upload.length) {
        return Err(too_long(&upload));
    }
    let io = |e: std::io::Error| Problem::unavailable(&e).into_response();
    let path = media.partial_path(upload.upload_id);
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .await
        .map_err(io)?;
    let hasher = match guard.hasher.take() {
        Some(h) if h.count() == current => h,
        _ => rehash(&mut file, current).await.map_err(io)?,
    };
    let before = hasher.clone();
    let Received {
        offset,
        hasher,
        interrupted,
        over,
    } = receive(
        &file,
        body,
        current,
        upload.length,
        hasher,
        checksum.as_mut(),
    )
    .await
    .map_err(io)?;
    let rejected = if over {
        Some(too_long(&upload))
    } else if let Some(c) = checksum.take() {
        if interrupted || !c.matches() {
            Some(problem(
                StatusCode::from_u16(CHECKSUM_MISMATCH).expect("valid status"),
                "invalid_argument",
                "Upload-Checksum does not match the bytes received; nothing was kept".into(),
            ))
        } else {
            None
        }
    } else {
        None
    };
    if let Some(response) = rejected {
        // Nothing of a rejected request is kept.
        file.set_len(current).await.map_err(io)?;
        file.sync_data().await.map_err(io)?;
        guard.hasher = Some(before);
        return Err(response);
    }
    // Acknowledged bytes are on disk.
    file.sync_data().await.map_err(io)?;
    guard.hasher = Some(hasher.clone());
    drop(guard);
    if offset == upload.length {
        finish(&media, &upload, &hasher).await?;
    }
    Ok((StatusCode::NO_CONTENT, offset_headers(&upload, offset)).into_response())
}

/// What one `PATCH` body left in the partial file.
struct Received {
    /// The offset after it.
    offset: u64,
    /// BLAKE3 over everything up to `offset`.
    hasher: blake3::Hasher,
    /// The client went away before the end of the body.
    interrupted: bool,
    /// The body went past the declared length (the excess was not written).
    over: bool,
}

/// Most received bytes held before they go to the disk in one write: a body arrives in
/// chunks of a few KiB to a few hundred, and each write is a round trip to the blocking pool.
const WRITE_BATCH: usize = 1 << 20;

/// Writes a body's chunks at increasing offsets, a batch at a time on the blocking pool while
/// the next batch arrives.
struct BatchWriter {
    file: Arc<std::fs::File>,
    writing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    batch: Vec<bytes::Bytes>,
    len: usize,
    at: u64,
}

impl BatchWriter {
    fn new(file: std::fs::File, at: u64) -> Self {
        Self {
            file: Arc::new(file),
            writing: None,
            batch: Vec::new(),
            len: 0,
            at,
        }
    }

    /// Adds a chunk; starts writing when a batch is full.
    async fn push(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        self.len += chunk.len();
        self.batch.push(chunk);
        if self.len >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Starts writing what is held (after the previous write finished).
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        self.wait().await?;
        let (file, chunks, mut at) = (
            Arc::clone(&self.file),
            std::mem::take(&mut self.batch),
            self.at,
        );
        self.at += self.len as u64;
        self.len = 0;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            for chunk in chunks {
                file.write_all_at(&chunk, at)?;
                at += chunk.len() as u64;
            }
            Ok(())
        }));
        Ok(())
    }

    async fn wait(&mut self) -> std::io::Result<()> {
        match self.writing.take() {
            Some(write) => write.await.map_err(std::io::Error::other)?,
            None => Ok(()),
        }
    }

    /// Writes everything held and waits for it.
    async fn finish(mut self) -> std::io::Result<()> {
        self.flush().await?;
        self.wait().await
    }
}

/// Appends a body at `offset`, hashing as it goes, never past `length`. Bytes that arrive
/// back to back are written in batches of up to [`WRITE_BATCH`]; whenever the client pauses,
/// what arrived goes to the disk, so `HEAD` soon reports it. Everything received is written
/// before this returns.
async fn receive(
    file: &tokio::fs::File,
    body: Body,
    mut offset: u64,
    length: u64,
    mut hasher: blake3::Hasher,
    mut checksum: Option<&mut Checksum>,
) -> std::io::Result<Received> {
    use futures::FutureExt as _;
    let mut writer = BatchWriter::new(file.try_clone().await?.into_std().await, offset);
    let mut stream = body.into_data_stream();
    let (mut interrupted, mut over) = (false, false);
    loop {
        let next = if let Some(next) = stream.next().now_or_never() {
            next
        } else {
            // The client paused: what arrived goes to the disk meanwhile.
            writer.flush().await?;
            stream.next().await
        };
        let chunk = match next {
            None => break,
            // The client went away: what arrived is kept, and HEAD tells where to resume.
            Some(Err(_)) => {
                interrupted = true;
                break;
            }
            Some(Ok(chunk)) if offset + chunk.len() as u64 > length => {
                over = true;
                break;
            }
            Some(Ok(chunk)) => chunk,
        };
        hasher.update(&chunk);
        if let Some(c) = checksum.as_deref_mut() {
            c.update(&chunk);
        }
        offset += chunk.len() as u64;
        writer.push(chunk).await?;
    }
    writer.finish().await?;
    Ok(Received {
        offset,
        hasher,
        interrupted,
        over,
    })
}

fn video_deleted() -> Problem {
    Problem::new(StatusCode::GONE, "gone", "the video was deleted")
}

fn too_long(upload: &Upload) -> Response {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the body goes past the declared Upload-Length of {} bytes",
            upload.length
        ),
    )
    .into_response()
}

/// The last byte landed: store the file under its hash (unless that content is stored
/// already), make it the video's content, announce it. Safe to run again after a failure.
async fn finish(media: &Media, upload: &Upload, hasher: &blake3::Hasher) -> Result<(), Response> {
    let unavailable = |e: &dyn std::fmt::Display| Problem::unavailable(e).into_response();
    let hash = hasher.finalize().to_hex().to_string();
    let key = blobs::original(&hash);
    let path = media.partial_path(upload.upload_id);
    let store_blob = async || -> Result<bool, crate::blobs::BlobError> {
        if media.blobs.head(&key).await?.is_some() {
            return Ok(false);
        }
        media.blobs.put_file(&key, &path).await?;
        Ok(true)
    };
    let stored = store_blob().await.map_err(|e| unavailable(&e))?;
    let completion = media
        .store
        .complete_upload(upload, &hash)
        .await
        .map_err(|e| unavailable(&e))?;
    if completion == Completion::Completed {
        // The blob may have existed before this upload referenced it, so a reconciler round
        // may have removed it meanwhile: make sure it is there while the partial file is.
        store_blob().await.map_err(|e| unavailable(&e))?;
    }
    // Otherwise a blob stored above belongs to nobody; the reconciler removes it.
    tokio::fs::remove_file(&path).await.ok();
    media.end_session(upload.upload_id).await;
    match completion {
        Completion::Completed => {}
        Completion::AlreadyHasContent => {
            return Err(Problem::new(
                StatusCode::CONFLICT,
                "already_exists",
                "the video already has its file",
            )
            .into_response());
        }
        Completion::VideoDeleted => return Err(video_deleted().into_response()),
    }
    tracing::info!(message = "Upload complete.", video_id = %upload.video_id, hash = %hash, deduplicated = !stored);
    media.metrics.upload_completed(upload.length, !stored);
    let video = StoredVideo {
        video_id: upload.video_id,
        owner_id: upload.owner_id,
        content_hash: hash,
        size: upload.length,
    };
    announce(media, &video).await;
    Ok(())
}

/// Publishes `uploaded`; the sweeper publishes again until this succeeds once.
pub async fn announce(media: &Media, video: &StoredVideo) {
    match events::uploaded(&media.nats, video).await {
        Ok(()) => {
            if let Err(e) = media.store.mark_announced(video.video_id).await {
                tracing::warn!(message = "Upload announced but not marked.", video_id = %video.video_id, error = %e);
            }
        }
        Err(e) => {
            tracing::warn!(message = "Upload not announced yet; the sweeper retries.", video_id = %video.video_id, error = %e);
        }
    }
}
