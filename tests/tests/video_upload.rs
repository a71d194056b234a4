//! Video end to end against the real services: tus upload → content-addressed storage →
//! ffprobe/ffmpeg processing → `ready` on the owner's socket → HLS playback from the signed
//! origin. Videos are generated with ffmpeg by the tests.

use serde_json::{Value, json};
use sha1::Digest as _;
use tertulia_tests::{
    Stack, assert_problem,
    media::{header, tus_create, tus_offset, tus_patch, video_fixture, wait_for_video},
};

/// Every URI line of a playlist, resolved against the playlist's URL.
fn playlist_uris(base: &str, playlist: &str) -> Vec<String> {
    let folder = &base[..base.find('?').unwrap_or(base.len())];
    let folder = &folder[..=folder.rfind('/').expect("a path")];
    playlist
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| format!("{folder}{l}"))
        .collect()
}

#[tokio::test]
async fn upload_process_and_play_over_hls() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let mut ws = stack.ws(&alice, &json!({})).await;
    let source = video_fixture(5, 640, 360);

    let video = stack
        .create_video(
            &alice,
            &json!({"title": "Test pattern", "description": "Bars and a tone", "tags": ["Test", "pattern"], "visibility": "public"}),
        )
        .await;
    assert_eq!(video["status"], "awaiting_upload");
    assert_eq!(video["tags"], json!(["test", "pattern"]));
    assert!(video["upload"]["expires_at"].is_string(), "{video}");
    let id = video["id"].as_str().unwrap().to_owned();
    let upload_url = video["upload"]["url"].as_str().unwrap();
    assert!(upload_url.starts_with(&format!("http://{}/uploads?token=", stack.media_http)));

    // What the server supports, as a tus client discovers it.
    let options = stack
        .http
        .request(reqwest::Method::OPTIONS, upload_url)
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    assert_eq!(header(&options, "tus-version"), "1.0.0");
    assert!(header(&options, "tus-extension").contains("checksum"));

    // Two PATCHes, the second with a checksum.
    let created = tus_create(&stack.http, upload_url, source.len()).await;
    assert_eq!(created.status(), 201);
    assert_eq!(header(&created, "tus-resumable"), "1.0.0");
    assert!(created.headers().contains_key("upload-expires"));
    let location = header(&created, "location");
    let half = source.len() / 2;
    let first = tus_patch(&stack.http, &location, 0, source[..half].to_vec(), None).await;
    assert_eq!(first.status(), 204);
    assert_eq!(header(&first, "upload-offset"), half.to_string());
    let digest = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        sha1::Sha1::digest(&source[half..]),
    );
    let last = tus_patch(
        &stack.http,
        &location,
        half,
        source[half..].to_vec(),
        Some(format!("sha1 {digest}")),
    )
    .await;
    assert_eq!(last.status(), 204, "{:?}", last.text().await);

    let processing = wait_for_video(&mut ws, &id, "processing").await;
    assert!(
        processing["playback"]["hls_url"].is_null(),
        "frames carry no signed URLs"
    );
    let ready = wait_for_video(&mut ws, &id, "ready").await;
    assert_eq!(ready["width"], 640);
    assert_eq!(ready["height"], 360);
    assert!(ready["duration_s"].as_f64().unwrap() > 4.0, "{ready}");

    // The catalog reaches `ready` with the first rung; wait for the whole ladder.
    let mut full = ready;
    while full["renditions"].as_array().unwrap().len() < 2 {
        full = wait_for_video(&mut ws, &id, "ready").await;
    }
    let rungs = full["renditions"].as_array().unwrap();
    assert_eq!(
        rungs
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["240p", "360p"]
    );
    for r in rungs {
        assert!(
            r["height"].as_u64().unwrap() <= 360 && r["width"].as_u64().unwrap() <= 640,
            "never larger than the source"
        );
    }

    let got: Value = stack
        .get_json(&format!("/api/v1/videos/{id}"), Some(&alice.access_token))
        .await;
    assert_eq!(got["status"], "ready");
    let hls = got["playback"]["hls_url"]
        .as_str()
        .expect("hls_url")
        .to_owned();
    assert!(hls.contains("/hls/master.m3u8?exp="), "{hls}");
    assert!(got["playback"]["expires_at"].is_string());

    assert_plays(&stack, &got, &hls, &source).await;
}

/// The HLS ladder, thumbnail and original of a ready video play from the origin.
async fn assert_plays(stack: &Stack, got: &Value, hls: &str, source: &[u8]) {
    // The master names both rungs, each URI signed; variants have 2..=6 s segments.
    let master = stack.fetch(hls).await;
    assert_eq!(master.status(), 200);
    assert_eq!(
        header(&master, "content-type"),
        "application/vnd.apple.mpegurl"
    );
    assert!(!header(&master, "cache-control").contains("immutable"));
    let master_text = master.text().await.unwrap();
    let variants = playlist_uris(hls, &master_text);
    assert_eq!(variants.len(), 2, "{master_text}");
    assert!(variants.iter().all(|v| v.contains("sig=")), "{master_text}");
    for variant in &variants {
        let text = stack.fetch(variant).await.text().await.unwrap();
        let target: u32 = text
            .lines()
            .find_map(|l| l.strip_prefix("#EXT-X-TARGETDURATION:"))
            .expect("a target duration")
            .parse()
            .unwrap();
        assert!((2..=6).contains(&target), "{text}");
        let segments = playlist_uris(variant, &text);
        assert!(segments.len() >= 2, "5 s in 4 s segments: {text}");
        let segment = stack.fetch(&segments[0]).await;
        assert_eq!(segment.status(), 200);
        assert_eq!(header(&segment, "content-type"), "video/mp2t");
        assert_eq!(
            header(&segment, "cache-control"),
            "public, max-age=31536000, immutable"
        );
        assert!(!segment.bytes().await.unwrap().is_empty());
    }

    // Keyframes are aligned: every rung's segments start at the same instants.
    let boundaries = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix("#EXTINF:"))
            .map(str::to_owned)
            .collect()
    };
    let a = boundaries(&stack.fetch(&variants[0]).await.text().await.unwrap());
    let b = boundaries(&stack.fetch(&variants[1]).await.text().await.unwrap());
    assert_eq!(a, b, "segment durations match across renditions");

    let thumbnail = stack
        .fetch(got["thumbnail_url"].as_str().expect("thumbnail"))
        .await;
    assert_eq!(thumbnail.status(), 200);
    assert_eq!(header(&thumbnail, "content-type"), "image/jpeg");
    let original = stack
        .fetch(got["playback"]["mp4_url"].as_str().unwrap())
        .await;
    assert_eq!(
        original.bytes().await.unwrap().as_ref(),
        source,
        "the original is stored as uploaded"
    );
}

#[tokio::test]
async fn a_cut_upload_resumes_from_the_offset_the_server_reports() {
    use tokio::io::AsyncWriteExt as _;
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let mut ws = stack.ws(&alice, &json!({})).await;
    let source = video_fixture(2, 320, 240);
    let video = stack.create_video(&alice, &json!({"title": "Cut"})).await;
    let id = video["id"].as_str().unwrap();
    let created = tus_create(
        &stack.http,
        video["upload"]["url"].as_str().unwrap(),
        source.len(),
    )
    .await;
    let location = header(&created, "location");
    let path = &location[location.find("/uploads/").unwrap()..];

    // A raw connection sends half the body of a PATCH that promised all of it, then drops.
    let half = source.len() / 2;
    let mut socket = tokio::net::TcpStream::connect(stack.media_http)
        .await
        .unwrap();
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: {}\r\nTus-Resumable: 1.0.0\r\nContent-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\nContent-Length: {}\r\n\r\n",
        stack.media_http,
        source.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&source[..half]).await.unwrap();
    socket.flush().await.unwrap();
    // The bytes are on the server once HEAD reports them (bounded wait, no sleep).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while tus_offset(&stack.http, &location).await < half {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never saw the first half"
        );
        tokio::task::yield_now().await;
    }
    drop(socket);

    // Resuming at a wrong offset is refused with the right one; at the right one it finishes.
    let offset = tus_offset(&stack.http, &location).await;
    assert_eq!(offset, half);
    let wrong = tus_patch(&stack.http, &location, 0, source.clone(), None).await;
    assert_eq!(header(&wrong, "upload-offset"), half.to_string());
    assert_problem(wrong, 409, "conflict").await;
    let rest = tus_patch(
        &stack.http,
        &location,
        offset,
        source[offset..].to_vec(),
        None,
    )
    .await;
    assert_eq!(rest.status(), 204);
    assert_eq!(
        tus_offset(&stack.http, &location).await,
        source.len(),
        "a finished upload reports its full length"
    );
    wait_for_video(&mut ws, id, "ready").await;
    let got: Value = stack
        .get_json(&format!("/api/v1/videos/{id}"), Some(&alice.access_token))
        .await;
    let original = stack
        .fetch(got["playback"]["mp4_url"].as_str().unwrap())
        .await
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        original.as_ref(),
        source.as_slice(),
        "the resumed file is byte for byte the source"
    );
}

#[tokio::test]
async fn an_identical_upload_is_stored_and_transcoded_once() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;
    let mut alice_ws = stack.ws(&alice, &json!({})).await;
    let mut bob_ws = stack.ws(&bob, &json!({})).await;
    let source = video_fixture(2, 320, 240);

    let first = stack.upload_video(&alice, "First", source.clone()).await;
    let ready = wait_for_video(&mut alice_ws, &first, "ready").await;
    // Wait for the whole (one-rung) ladder: the 240p source has one rung.
    assert_eq!(ready["renditions"].as_array().unwrap().len(), 1);
    let before = stack.blob_keys().await;
    let originals = before
        .iter()
        .filter(|k| k.starts_with("originals/"))
        .count();
    assert_eq!(originals, 1, "{before:?}");
    let stamps = |metas: Vec<object_store::ObjectMeta>| {
        metas
            .into_iter()
            .map(|m| (m.location.to_string(), m.last_modified))
            .collect::<Vec<_>>()
    };
    let derived_before = stamps(stack.media_state.blobs.list("derived").await.unwrap());

    let second = stack.upload_video(&bob, "Second", source).await;
    let again = wait_for_video(&mut bob_ws, &second, "ready").await;
    assert_eq!(again["renditions"], ready["renditions"]);
    assert_eq!(
        stack.blob_keys().await,
        before,
        "no new object for the same content"
    );
    assert_eq!(
        stamps(stack.media_state.blobs.list("derived").await.unwrap()),
        derived_before,
        "nothing was transcoded again"
    );
    let got: Value = stack
        .get_json(&format!("/api/v1/videos/{second}"), None)
        .await;
    let playlist = stack
        .fetch(got["playback"]["hls_url"].as_str().unwrap())
        .await;
    assert_eq!(playlist.status(), 200);

    // Deleting one of the two keeps the shared content for the other, and the origin stops
    // serving the deleted one at once, though it had just served it (and remembers what it
    // served for a moment).
    let first_video: Value = stack
        .get_json(&format!("/api/v1/videos/{first}"), None)
        .await;
    let first_url = first_video["playback"]["mp4_url"].as_str().unwrap();
    assert_eq!(stack.fetch(first_url).await.status(), 200);
    let deleted = stack
        .delete(&format!("/api/v1/videos/{first}"), &alice.access_token)
        .await;
    assert_eq!(deleted.status(), 204);
    assert_problem(stack.fetch(first_url).await, 404, "not_found").await;
    assert_eq!(
        stack
            .fetch(got["playback"]["mp4_url"].as_str().unwrap())
            .await
            .status(),
        200,
        "the other video still plays"
    );
}

#[tokio::test]
async fn a_file_that_is_not_a_video_fails_with_a_reason_for_its_owner() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let mut ws = stack.ws(&alice, &json!({})).await;
    let junk: Vec<u8> = (0..50_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).to_le_bytes()[0])
        .collect();
    let id = stack.upload_video(&alice, "Not a video", junk).await;
    let failed = wait_for_video(&mut ws, &id, "failed").await;
    assert_eq!(
        failed["failure_reason"],
        "the uploaded file is not a video that can be played"
    );
    let got: Value = stack
        .get_json(&format!("/api/v1/videos/{id}"), Some(&alice.access_token))
        .await;
    assert_eq!(got["status"], "failed");
    assert!(got["failure_reason"].is_string());
    assert!(got["playback"]["hls_url"].is_null());
}

#[tokio::test]
async fn tus_rules_are_enforced() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let video = stack.create_video(&alice, &json!({"title": "Rules"})).await;
    let other = stack.create_video(&alice, &json!({"title": "Other"})).await;
    let url = video["upload"]["url"].as_str().unwrap();
    let http = &stack.http;

    // Creation: version, token, declared length and the maximum.
    let no_version = http
        .post(url)
        .header("Upload-Length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(no_version.status(), 412);
    assert_eq!(header(&no_version, "tus-version"), "1.0.0");
    let base = url.split('?').next().unwrap();
    assert_problem(tus_create(http, base, 10).await, 401, "unauthenticated").await;
    assert_problem(
        tus_create(http, &format!("{base}?token=forged"), 10).await,
        403,
        "permission_denied",
    )
    .await;
    let too_big = tus_create(http, url, (64 << 20) + 1).await;
    assert_problem(too_big, 413, "payload_too_large").await;

    let location = header(&tus_create(http, url, 10).await, "location");
    // Another video's token opens nothing here.
    let other_token = other["upload"]["url"]
        .as_str()
        .unwrap()
        .split("token=")
        .nth(1)
        .unwrap();
    let foreign = format!(
        "{}?token={other_token}",
        location.split('?').next().unwrap()
    );
    let head = http
        .head(&foreign)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);
}

#[tokio::test]
async fn tus_patches_follow_offsets_lengths_and_checksums() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let video = stack
        .create_video(&alice, &json!({"title": "Patches"}))
        .await;
    let http = &stack.http;
    let location = header(
        &tus_create(http, video["upload"]["url"].as_str().unwrap(), 10).await,
        "location",
    );
    // Offsets, lengths, content type, checksums.
    let plain = http
        .patch(&location)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_problem(plain, 415, "invalid_argument").await;
    assert_problem(
        tus_patch(http, &location, 3, b"abc".to_vec(), None).await,
        409,
        "conflict",
    )
    .await;
    assert_problem(
        tus_patch(http, &location, 0, vec![0; 11], None).await,
        413,
        "payload_too_large",
    )
    .await;
    let bad_sum = tus_patch(
        http,
        &location,
        0,
        b"abc".to_vec(),
        Some("sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
    )
    .await;
    assert_eq!(bad_sum.status(), 460);
    assert_eq!(
        tus_offset(http, &location).await,
        0,
        "nothing of a mismatched request is kept"
    );
    let unknown_sum = tus_patch(
        http,
        &location,
        0,
        b"abc".to_vec(),
        Some("crc32 AAAA".into()),
    )
    .await;
    assert_problem(unknown_sum, 400, "invalid_argument").await;
    assert_eq!(
        tus_patch(http, &location, 0, b"abc".to_vec(), None)
            .await
            .status(),
        204
    );
    assert_eq!(tus_offset(http, &location).await, 3);

    // Termination.
    let deleted = http
        .delete(&location)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = http
        .head(&location)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
}

#[tokio::test]
async fn abandoned_uploads_expire_and_their_bytes_are_removed() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let video = stack
        .create_video(&alice, &json!({"title": "Abandoned"}))
        .await;
    let location = header(
        &tus_create(&stack.http, video["upload"]["url"].as_str().unwrap(), 100).await,
        "location",
    );
    assert_eq!(
        tus_patch(&stack.http, &location, 0, vec![7; 40], None)
            .await
            .status(),
        204
    );
    let partials = stack.media_config.work_dir.join("uploads");
    assert_eq!(std::fs::read_dir(&partials).unwrap().count(), 1);
    let now = svc_media::housekeeping::sweep_once(&stack.media_state)
        .await
        .unwrap();
    assert_eq!(now, 0, "a live upload stays");
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    let removed = svc_media::housekeeping::sweep_at(&stack.media_state, later)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert_eq!(
        std::fs::read_dir(&partials).unwrap().count(),
        0,
        "the partial file is gone"
    );
    let head = stack
        .http
        .head(&location)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 404);
}

#[tokio::test]
async fn the_s3_backend_stores_serves_and_deletes() {
    let s3 = tertulia_tests::media::TestS3::start().await;
    let stack = Stack::start_with_media(|m| m.blobs = s3.blobs()).await;
    let alice = stack.signed_up("alice").await;
    let mut ws = stack.ws(&alice, &json!({})).await;
    let source = video_fixture(2, 320, 240);
    let id = stack.upload_video(&alice, "On S3", source.clone()).await;
    wait_for_video(&mut ws, &id, "ready").await;

    let keys = s3.keys().await;
    assert!(keys.iter().any(|k| k.starts_with("originals/")), "{keys:?}");
    assert!(
        keys.iter().any(|k| k.ends_with("hls/master.m3u8")),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k.contains("/seg_")), "{keys:?}");
    let got: Value = stack.get_json(&format!("/api/v1/videos/{id}"), None).await;
    let master = stack
        .fetch(got["playback"]["hls_url"].as_str().unwrap())
        .await;
    assert_eq!(master.status(), 200);
    let original = got["playback"]["mp4_url"].as_str().unwrap();
    let part = stack
        .http
        .get(original)
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap().as_ref(), &source[10..20]);

    let deleted = stack
        .delete(&format!("/api/v1/videos/{id}"), &alice.access_token)
        .await;
    assert_eq!(deleted.status(), 204);
    assert!(s3.keys().await.is_empty(), "the bucket is empty again");
}

#[tokio::test]
async fn an_upload_to_a_deleted_video_brings_nothing_back() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let source = video_fixture(2, 320, 240);
    let video = stack
        .create_video(&alice, &json!({"title": "Short-lived"}))
        .await;
    let id = video["id"].as_str().unwrap();
    let url = video["upload"]["url"].as_str().unwrap();
    let location = header(
        &tus_create(&stack.http, url, source.len()).await,
        "location",
    );
    let half = source.len() / 2;
    let first = tus_patch(&stack.http, &location, 0, source[..half].to_vec(), None).await;
    assert_eq!(first.status(), 204);

    let deleted = stack
        .delete(&format!("/api/v1/videos/{id}"), &alice.access_token)
        .await;
    assert_eq!(deleted.status(), 204);
    // The upload in flight is gone with its bytes; the token opens nothing new.
    let rest = tus_patch(&stack.http, &location, half, source[half..].to_vec(), None).await;
    assert_problem(rest, 404, "not_found").await;
    assert_problem(
        tus_create(&stack.http, url, source.len()).await,
        410,
        "gone",
    )
    .await;
    let partials = stack.media_config.work_dir.join("uploads");
    assert_eq!(std::fs::read_dir(&partials).unwrap().count(), 0);
    assert!(stack.blob_keys().await.is_empty());
}
