//! The signed media origin: ranges, conditional requests, caching headers, signatures and
//! paths that try to leave the video's folder.

use serde_json::{Value, json};
use svc_media::signing::Signer;
use tertulia_tests::{
    Stack, assert_problem,
    media::{header, video_fixture, wait_for_video},
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A ready video and its signed URLs.
async fn ready_video(stack: &Stack) -> (String, Value, Vec<u8>) {
    let alice = stack.signed_up("alice").await;
    let mut ws = stack.ws(&alice, &json!({})).await;
    let source = video_fixture(2, 320, 240);
    let id = stack.upload_video(&alice, "Origin", source.clone()).await;
    wait_for_video(&mut ws, &id, "ready").await;
    let got: Value = stack.get_json(&format!("/api/v1/videos/{id}"), None).await;
    (id, got, source)
}

#[tokio::test]
async fn ranges_and_conditional_requests() {
    let stack = Stack::start().await;
    let (_, video, source) = ready_video(&stack).await;
    let url = video["playback"]["mp4_url"].as_str().unwrap();
    let size = source.len();

    let full = stack.fetch(url).await;
    assert_eq!(full.status(), 200);
    assert_eq!(header(&full, "accept-ranges"), "bytes");
    assert_eq!(
        header(&full, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&full, "content-length"), size.to_string());
    let etag = header(&full, "etag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let range = |r: &str| stack.http.get(url).header("Range", r.to_owned()).send();
    let part = range("bytes=0-99").await.unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(header(&part, "content-range"), format!("bytes 0-99/{size}"));
    assert_eq!(part.bytes().await.unwrap().as_ref(), &source[..100]);
    let tail = range("bytes=-10").await.unwrap();
    assert_eq!(tail.status(), 206);
    assert_eq!(tail.bytes().await.unwrap().as_ref(), &source[size - 10..]);
    let open = range(&format!("bytes={}-", size - 5)).await.unwrap();
    assert_eq!(open.bytes().await.unwrap().as_ref(), &source[size - 5..]);
    let outside = range(&format!("bytes={size}-")).await.unwrap();
    assert_eq!(outside.status(), 416);
    assert_eq!(header(&outside, "content-range"), format!("bytes */{size}"));

    let cached = stack
        .http
        .get(url)
        .header("If-None-Match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
    assert_eq!(header(&cached, "etag"), etag);
    assert!(cached.bytes().await.unwrap().is_empty());
    let stale = stack
        .http
        .get(url)
        .header("If-None-Match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), 200);

    let head = stack.http.head(url).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-length"), size.to_string());

    let thumb = stack.fetch(video["thumbnail_url"].as_str().unwrap()).await;
    assert_eq!(
        header(&thumb, "cache-control"),
        "public, max-age=31536000, immutable"
    );
}

#[tokio::test]
async fn signatures_are_required_and_expire() {
    let stack = Stack::start().await;
    let (id, video, _) = ready_video(&stack).await;
    let url = video["playback"]["hls_url"].as_str().unwrap();
    let bare = url.split('?').next().unwrap();
    assert_problem(stack.fetch(bare).await, 403, "permission_denied").await;
    let tampered = url.replace("sig=", "sig=x");
    assert_problem(stack.fetch(&tampered).await, 403, "permission_denied").await;

    // A token signed for another video opens nothing here.
    let signer = Signer::new(&stack.media_config.signing).unwrap();
    let other = signer.playback(
        uuid::Uuid::now_v7(),
        time::OffsetDateTime::now_utc().unix_timestamp() + 60,
    );
    assert_problem(
        stack.fetch(&format!("{bare}?{}", other.query())).await,
        403,
        "permission_denied",
    )
    .await;
    // An expired one neither.
    let expired = signer.playback(
        id.parse().unwrap(),
        time::OffsetDateTime::now_utc().unix_timestamp() - 1,
    );
    let body = assert_problem(
        stack.fetch(&format!("{bare}?{}", expired.query())).await,
        403,
        "permission_denied",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    // One token opens the whole directory: a segment with the master's token works.
    let token = &url[url.find('?').unwrap()..];
    let folder = &bare[..bare.rfind('/').unwrap()];
    let segment = stack
        .fetch(&format!("{folder}/240p/seg_00000.ts{token}"))
        .await;
    assert_eq!(segment.status(), 200);
}

#[tokio::test]
async fn paths_that_leave_the_video_are_refused() {
    let stack = Stack::start().await;
    let (_, video, _) = ready_video(&stack).await;
    let url = video["playback"]["hls_url"].as_str().unwrap();
    let (path, token) = url.split_once('?').unwrap();
    let base = &path[..path.rfind("/hls/").unwrap()];
    // Encoded so that no client normalises them away before they reach the server.
    for escape in [
        "hls/..%2F..%2Foriginal",
        "hls%2F..%2F..%2F..%2Fx",
        "hls/240p/..%5C..%5Cx",
        "hls/%2E%2E%2Foriginal",
    ] {
        let response = stack.fetch(&format!("{base}/{escape}?{token}")).await;
        assert_problem(response, 400, "invalid_argument").await;
    }
    // Literal dot segments, sent raw (HTTP clients resolve them before sending).
    let target = format!(
        "{}/hls/../../etc/passwd?{token}",
        &base[base.find("/media/").unwrap()..]
    );
    let mut socket = tokio::net::TcpStream::connect(stack.media_http)
        .await
        .unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_problem(
        stack.fetch(&format!("{base}/secrets.txt?{token}")).await,
        404,
        "not_found",
    )
    .await;
}
