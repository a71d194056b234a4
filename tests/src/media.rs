//! Helpers for video tests: small videos generated with ffmpeg, a minimal tus client, and
//! waits on the owner's `video` frames.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Mutex, OnceLock},
    time::Duration,
};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::{Session, Stack, WsClient};

/// How long processing may take under a loaded test machine.
pub const PROCESSING_WAIT: Duration = Duration::from_mins(2);

/// An MP4 of `seconds` of a test pattern with a tone, `width`×`height`, generated once per
/// process with ffmpeg (H.264 + AAC).
pub fn video_fixture(seconds: u32, width: u32, height: u32) -> Vec<u8> {
    type Fixtures = Mutex<HashMap<(u32, u32, u32), Vec<u8>>>;
    static CACHE: OnceLock<Fixtures> = OnceLock::new();
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some(bytes) = cache.lock().expect("cache").get(&(seconds, width, height)) {
        return bytes.clone();
    }
    let dir = std::env::temp_dir().join("tertulia-tests").join("fixtures");
    std::fs::create_dir_all(&dir).expect("fixture folder");
    let path: PathBuf = dir.join(format!("{}.mp4", uuid::Uuid::now_v7().simple()));
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("testsrc2=size={width}x{height}:rate=25:duration={seconds}"),
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency=440:duration={seconds}"),
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-pix_fmt",
            "yuv420p",
        ])
        .args(["-c:a", "aac", "-shortest", "-movflags", "+faststart"])
        .arg(&path)
        .status()
        .expect("ffmpeg runs (make test installs it)");
    assert!(status.success(), "ffmpeg made the fixture");
    let bytes = std::fs::read(&path).expect("fixture");
    let _ = std::fs::remove_file(&path);
    cache
        .lock()
        .expect("cache")
        .insert((seconds, width, height), bytes.clone());
    bytes
}

/// A response header as text; panics naming it when it is missing.
#[must_use]
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("{name} is missing"))
        .to_str()
        .expect("ASCII")
        .to_owned()
}

/// The tus request headers every call carries.
fn tus(request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    request.header("Tus-Resumable", "1.0.0")
}

/// `POST` to a tus creation URL.
pub async fn tus_create(http: &reqwest::Client, url: &str, length: usize) -> reqwest::Response {
    tus(http.post(url))
        .header("Upload-Length", length.to_string())
        .header(
            "Upload-Metadata",
            format!(
                "filename {}",
                base64::engine::general_purpose::STANDARD.encode("clip.mp4")
            ),
        )
        .send()
        .await
        .expect("tus create")
}

/// `PATCH` `bytes` at `offset`, with an optional `Upload-Checksum`.
pub async fn tus_patch(
    http: &reqwest::Client,
    location: &str,
    offset: usize,
    bytes: Vec<u8>,
    checksum: Option<String>,
) -> reqwest::Response {
    let mut request = tus(http.patch(location))
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Offset", offset.to_string());
    if let Some(c) = checksum {
        request = request.header("Upload-Checksum", c);
    }
    request.body(bytes).send().await.expect("tus patch")
}

/// `HEAD`: the offset to resume from.
pub async fn tus_offset(http: &reqwest::Client, location: &str) -> usize {
    let response = tus(http.head(location)).send().await.expect("tus head");
    assert_eq!(response.status(), 200, "HEAD {location}");
    response.headers()["upload-offset"]
        .to_str()
        .expect("ASCII")
        .parse()
        .expect("a number")
}

/// Uploads `bytes` in one `PATCH` to a fresh upload at the creation URL `url`; returns the
/// upload's location.
pub async fn tus_upload(http: &reqwest::Client, url: &str, bytes: Vec<u8>) -> String {
    let created = tus_create(http, url, bytes.len()).await;
    assert_eq!(created.status(), 201, "tus create");
    let location = created.headers()["location"]
        .to_str()
        .expect("ASCII")
        .to_owned();
    let patched = tus_patch(http, &location, 0, bytes, None).await;
    assert_eq!(
        patched.status(),
        204,
        "tus patch: {:?}",
        patched.text().await
    );
    location
}

impl Stack {
    /// `POST /api/v1/videos` as `owner`; returns the created video with its `upload`.
    pub async fn create_video(&self, owner: &Session, body: &Value) -> Value {
        let response = self
            .post("/api/v1/videos", body, Some(&owner.access_token))
            .await;
        assert_eq!(response.status(), 201, "create video");
        response.json().await.expect("JSON")
    }

    /// Creates a public video for `owner` and uploads `bytes` to it; returns its id.
    pub async fn upload_video(&self, owner: &Session, title: &str, bytes: Vec<u8>) -> String {
        let video = self
            .create_video(owner, &json!({"title": title, "visibility": "public"}))
            .await;
        tus_upload(
            &self.http,
            video["upload"]["url"].as_str().expect("upload URL"),
            bytes,
        )
        .await;
        video["id"].as_str().expect("id").to_owned()
    }

    /// `GET` an absolute URL (the media origin).
    pub async fn fetch(&self, url: &str) -> reqwest::Response {
        self.http.get(url).send().await.expect("GET")
    }

    /// Keys of every blob this stack's svc-media stores.
    pub async fn blob_keys(&self) -> Vec<String> {
        let blobs = &self.media_state.blobs;
        let mut keys: Vec<String> = blobs
            .list("originals")
            .await
            .expect("list")
            .into_iter()
            .chain(blobs.list("derived").await.expect("list"))
            .map(|m| m.location.to_string())
            .collect();
        keys.sort();
        keys
    }
}

/// Waits on the owner's socket for a `video` frame of `video_id` with `status`; returns the
/// video. Frames of other states pass by (each must be a known state).
pub async fn wait_for_video(ws: &mut WsClient, video_id: &str, status: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PROCESSING_WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let frame = ws
            .next_text_within(left)
            .await
            .expect("the socket stays open");
        if frame["type"] != "video" || frame["video"]["id"] != video_id {
            continue;
        }
        let seen = frame["video"]["status"]
            .as_str()
            .expect("status")
            .to_owned();
        assert!(
            ["awaiting_upload", "processing", "ready", "failed"].contains(&seen.as_str()),
            "{frame}"
        );
        if seen == status {
            return frame["video"].clone();
        }
        assert!(
            !(seen == "failed" && status != "failed"),
            "processing failed: {frame}"
        );
    }
}

/// An S3-compatible server of the test's own (moto in server mode) with one bucket.
pub struct TestS3 {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    /// The bucket created for the test.
    pub bucket: String,
    _child: tokio::process::Child,
}

impl TestS3 {
    /// Starts moto on a free port, waits until it says it is serving, creates a bucket.
    pub async fn start() -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().expect("an address").port()
        };
        let binary = std::env::var("TERTULIA_MOTO_SERVER_BIN").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../.tools/venv/bin/moto_server"
            )
            .to_owned()
        });
        let args: Vec<std::ffi::OsString> = ["-H", "127.0.0.1", "-p", &port.to_string()]
            .iter()
            .map(Into::into)
            .collect();
        let child =
            crate::spawn_until_logged(&binary, &args, "Running on", Duration::from_mins(1)).await;
        let endpoint = format!("http://127.0.0.1:{port}");
        let bucket = format!("tertulia-{}", uuid::Uuid::now_v7().simple());
        let created = reqwest::Client::new()
            .put(format!("{endpoint}/{bucket}"))
            .send()
            .await
            .expect("bucket creation");
        assert!(
            created.status().is_success(),
            "bucket: {}",
            created.status()
        );
        Self {
            endpoint,
            bucket,
            _child: child,
        }
    }

    /// svc-media's blob configuration for this server.
    #[must_use]
    pub fn blobs(&self) -> svc_media::config::BlobConfig {
        svc_media::config::BlobConfig::S3 {
            bucket: self.bucket.clone(),
            endpoint: Some(self.endpoint.clone()),
            region: "us-east-1".into(),
            access_key_id: "testing".into(),
            secret_access_key: "testing".to_owned().into(),
        }
    }

    /// Keys in the bucket, read over the S3 API itself.
    pub async fn keys(&self) -> Vec<String> {
        let listing = reqwest::get(format!("{}/{}?list-type=2", self.endpoint, self.bucket))
            .await
            .expect("list")
            .text()
            .await
            .expect("XML");
        let mut keys: Vec<String> = listing
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_owned()))
            .collect();
        keys.sort();
        keys
    }
}
