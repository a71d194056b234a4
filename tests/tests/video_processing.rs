//! Processing survives a stalled ffmpeg (killed, retried, then `failed` with a reason) and a
//! crashed worker (its video returns to the queue and another instance finishes it).

use std::path::{Path, PathBuf};

use serde_json::json;
use tertulia_tests::{
    Stack,
    media::{video_fixture, wait_for_video},
};

/// A stand-in for an ffmpeg that hangs: it touches `marker`, then either reports progress
/// forever (a long transcode) or says nothing (a stall).
fn hanging_ffmpeg(dir: &Path, marker: &Path, progress: bool) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).unwrap();
    let script = dir.join("ffmpeg");
    let body = if progress {
        "while :; do echo progress=continue; sleep 0.2; done"
    } else {
        "exec sleep 600"
    };
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\n{body}\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir()
        .join("tertulia-tests")
        .join(tertulia_tests::unique_name(name))
}

#[tokio::test]
async fn a_stalled_ffmpeg_is_killed_retried_and_then_the_video_fails() {
    let dir = scratch("stall");
    let marker = dir.join("started");
    let ffmpeg = hanging_ffmpeg(&dir, &marker, false);
    let stack = Stack::start_with_media(|m| {
        m.limits.ffmpeg = ffmpeg;
        m.limits.stall_timeout_s = 1;
        m.limits.max_attempts = 2;
    })
    .await;
    let alice = stack.signed_up("alice").await;
    let mut ws = stack.ws(&alice, &json!({})).await;
    let id = stack
        .upload_video(&alice, "Stalls", video_fixture(2, 320, 240))
        .await;
    let failed = wait_for_video(&mut ws, &id, "failed").await;
    assert_eq!(
        failed["failure_reason"],
        "processing failed after 2 attempts"
    );
    assert!(marker.exists(), "ffmpeg was started");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_crashed_worker_s_video_is_requeued_and_finished_by_another_instance() {
    let dir = scratch("crash");
    let marker = dir.join("started");
    let ffmpeg = hanging_ffmpeg(&dir, &marker, true);
    let stack = Stack::start_with_media(|m| {
        m.limits.ffmpeg = ffmpeg;
        m.limits.stall_timeout_s = 1;
    })
    .await;
    let alice = stack.signed_up("alice").await;
    let mut ws = stack.ws(&alice, &json!({})).await;
    let id = stack
        .upload_video(&alice, "Crashes", video_fixture(2, 320, 240))
        .await;

    // The first instance is transcoding (and reporting progress, so it keeps the job)...
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !marker.exists() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the transcoder never started"
        );
        tokio::task::yield_now().await;
    }
    // ...when it dies without acknowledging. A healthy instance picks the job up.
    stack.media_shutdown.cancel();
    stack
        .another_media(|m| m.limits.ffmpeg = "ffmpeg".into())
        .await;
    let ready = wait_for_video(&mut ws, &id, "ready").await;
    assert_eq!(ready["renditions"][0]["name"], "240p");
    let _ = std::fs::remove_dir_all(dir);
}
