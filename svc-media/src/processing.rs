//! Processing: verify the upload with ffprobe, then an HLS ladder and a thumbnail with
//! ffmpeg.
//!
//! The work queue is JetStream: the durable consumer `transcoder` reads `uploaded` events.
//! `workers` bounds how many videos one instance transcodes at once; ffmpeg reports progress
//! and each report extends the message's ack deadline, so a stalled ffmpeg (no progress for
//! `stall_timeout_s`) is killed, and a crashed instance's video returns to the queue after
//! the ack deadline. A failed attempt is retried up to `max_attempts`, then the video is
//! `failed` with a reason its owner sees.
//!
//! Outputs are keyed by content hash: a duplicate upload is never transcoded twice. Rungs
//! are encoded smallest first and published one by one, so the video is `ready` as soon as
//! its first rendition is playable. Keyframes are forced every 2 s in every rung, so
//! segments (4 s) are aligned across renditions; no rung is larger than the source.

use std::{fmt::Write as _, path::Path, process::Stdio, time::Duration};

use async_nats::jetstream::{self, AckKind};
use prost::Message as _;
use serde::Deserialize;
use tertulia_plumbing::{
    nats::{DurableConsumer, Handled},
    shutdown::Shutdown,
};
use tertulia_proto::{events::v1 as pb, subjects};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader},
    process::Command,
};
use uuid::Uuid;

use crate::{
    blobs, events,
    media::Media,
    store::{Probe, RenditionRow, StoredVideo, Transcode},
};

/// Name of the transcoder's durable consumer on `MEDIA`.
pub const TRANSCODER_CONSUMER: &str = "transcoder";
/// Seconds between forced keyframes in every rung.
const KEYFRAME_EVERY_S: u32 = 2;
/// Target segment length (a multiple of the keyframe interval, within 2..=6 s).
const SEGMENT_S: u32 = 4;
/// The ladder: height and video bitrate of each rung.
const LADDER: &[(u32, u32)] = &[
    (240, 400_000),
    (360, 800_000),
    (480, 1_400_000),
    (720, 2_800_000),
    (1080, 5_000_000),
];
/// Audio bitrate of every rung.
const AUDIO_BITRATE: u32 = 96_000;
/// Longest pause between "still working" acks of a long transcode (shorter when the ack
/// deadline, the stall timeout, is shorter).
const PROGRESS_ACK_EVERY: Duration = Duration::from_secs(5);
/// What the owner reads when the file is not a video.
pub const NOT_A_VIDEO: &str = "the uploaded file is not a video that can be played";

/// Why processing stopped.
#[derive(Debug)]
enum Failure {
    /// The file is not a playable video: no retry helps.
    NotAVideo(String),
    /// Something that may work next time (storage, a crash, a stall).
    Transient(String),
}

fn even(n: u32) -> u32 {
    (n / 2 * 2).max(2)
}

/// The rungs for a source of `width`×`height`: every standard rung not taller than the
/// source, or one rung at the source's size when it is smaller than the smallest.
#[must_use]
pub fn ladder(width: u32, height: u32) -> Vec<RenditionRow> {
    let rung = |h: u32, bitrate: u32| {
        let h = even(h);
        let w = even(
            u32::try_from(u64::from(width) * u64::from(h) / u64::from(height.max(1)))
                .unwrap_or(width),
        );
        RenditionRow {
            name: format!("{h}p"),
            width: w,
            height: h,
            bitrate,
        }
    };
    let rungs: Vec<_> = LADDER
        .iter()
        .filter(|(h, _)| *h <= height)
        .map(|&(h, b)| rung(h, b))
        .collect();
    if rungs.is_empty() {
        vec![rung(height, LADDER[0].1)]
    } else {
        rungs
    }
}

/// The master playlist over the rungs finished so far.
#[must_use]
pub fn master_playlist(rungs: &[RenditionRow]) -> String {
    let mut m = String::from("#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-INDEPENDENT-SEGMENTS\n");
    for r in rungs {
        let _ = write!(
            m,
            "#EXT-X-STREAM-INF:BANDWIDTH={},RESOLUTION={}x{}\n{}/index.m3u8\n",
            r.bitrate + AUDIO_BITRATE,
            r.width,
            r.height,
            r.name
        );
    }
    m
}

/// Works the queue until `shutdown` trips.
pub async fn run_transcoder(media: Media, shutdown: Shutdown) {
    let consumer = DurableConsumer {
        stream: subjects::MEDIA_STREAM,
        name: TRANSCODER_CONSUMER,
        filter: Some("media.v1.video.*.uploaded"),
        // Progress acks keep live work; a stall is killed at `stall_timeout_s` and retried; a
        // crashed worker's video comes back after twice that.
        ack_wait: Duration::from_secs(media.limits.stall_timeout_s.max(1) * 2),
        // Attempts are counted by the handler, which publishes the verdict after the last.
        max_deliver: -1,
        concurrency: media.limits.workers.max(1),
        order_by: None,
        max_pending: media.limits.workers.max(1),
    };
    let media = &media;
    media
        .nats
        .clone()
        .consume(&consumer, &shutdown, |message| async move {
            handle(media, &message).await
        })
        .await;
}

async fn handle(media: &Media, message: &jetstream::Message) -> Handled {
    let event = match pb::UploadCompleted::decode(message.payload.as_ref()) {
        Ok(e) => e,
        Err(e) => return Handled::Poison(e.to_string()),
    };
    let Ok(video_id) = event.video_id.parse::<Uuid>() else {
        return Handled::Poison(format!("bad video id {:?}", event.video_id));
    };
    let video = match media.store.video(video_id).await {
        Ok(Some(v)) => v,
        // Deleted meanwhile: nothing to do.
        Ok(None) => return Handled::Done,
        Err(e) => return Handled::Retry(e.to_string()),
    };
    let attempt = message.info().map_or(1, |i| i.delivered);
    let max = media.limits.max_attempts.max(1);
    // Past the last attempt only the verdict is left to publish (its publish failed before).
    let started = std::time::Instant::now();
    let outcome = if attempt > max {
        Err(Failure::Transient("no attempts left".into()))
    } else {
        process(media, &video, message).await
    };
    media.metrics.transcoded(
        match &outcome {
            Ok(()) => "ready",
            Err(Failure::NotAVideo(_)) => "failed",
            Err(Failure::Transient(_)) => "retry",
        },
        started.elapsed(),
    );
    let hash = &video.content_hash;
    let reason = match outcome {
        Ok(()) => return Handled::Done,
        Err(Failure::NotAVideo(reason)) => {
            // A verdict on the content itself: an identical upload fails at once.
            let failed = Transcode {
                state: "failed".into(),
                probe: None,
                renditions: Vec::new(),
                reason: reason.clone(),
            };
            if let Err(e) = media.store.save_transcode(hash, &failed).await {
                return Handled::Retry(e.to_string());
            }
            reason
        }
        Err(Failure::Transient(error)) if attempt < max => {
            tracing::warn!(message = "Processing failed, will retry.", video_id = %video_id, attempt, error = %error);
            return Handled::Retry(error);
        }
        Err(Failure::Transient(error)) => {
            tracing::error!(message = "Processing gave up.", video_id = %video_id, attempt, error = %error);
            // Not a verdict on the content: an identical upload later gets a fresh start
            // (what this one wrote is left to the orphan reconciler).
            if let Err(e) = media.store.delete_transcode(hash).await {
                return Handled::Retry(e.to_string());
            }
            format!("processing failed after {} attempts", attempt.min(max))
        }
    };
    match events::failed(&media.nats, &video, &reason).await {
        Ok(()) => Handled::Done,
        Err(e) => Handled::Retry(e),
    }
}

async fn process(
    media: &Media,
    video: &StoredVideo,
    message: &jetstream::Message,
) -> Result<(), Failure> {
    let transient = |e: &dyn std::fmt::Display| Failure::Transient(e.to_string());
    let hash = &video.content_hash;
    match media
        .store
        .transcode(hash)
        .await
        .map_err(|e| transient(&e))?
    {
        Some(t) if t.state == "done" => {
            // The same content was processed for another video: nothing to transcode.
            let probe = t
                .probe
                .ok_or_else(|| Failure::Transient("done without a probe".into()))?;
            return events::processed(&media.nats, video, &probe, &t.renditions, true)
                .await
                .map_err(|e| transient(&e));
        }
        Some(t) if t.state == "failed" => return Err(Failure::NotAVideo(t.reason)),
        _ => {}
    }
    let work = media
        .work_dir
        .join("transcode")
        .join(format!("{hash}-{}", Uuid::new_v4()));
    tokio::fs::create_dir_all(&work)
        .await
        .map_err(|e| transient(&e))?;
    let result = transcode(media, video, message, &work).await;
    tokio::fs::remove_dir_all(&work).await.ok();
    result?;
    // Deleted while transcoding: what was just written belongs to nobody.
    if !media
        .store
        .is_referenced(hash)
        .await
        .map_err(|e| transient(&e))?
    {
        media
            .blobs
            .delete_content(hash)
            .await
            .map_err(|e| transient(&e))?;
        media
            .store
            .delete_transcode(hash)
            .await
            .map_err(|e| transient(&e))?;
    }
    Ok(())
}

async fn transcode(
    media: &Media,
    video: &StoredVideo,
    message: &jetstream::Message,
    work: &Path,
) -> Result<(), Failure> {
    let transient = |e: &dyn std::fmt::Display| Failure::Transient(e.to_string());
    let hash = &video.content_hash;
    let input = work.join("input");
    media
        .blobs
        .fetch_to(&blobs::original(hash), &input)
        .await
        .map_err(|e| transient(&e))?;
    let probe = probe(media, &input).await?;
    let mut state = Transcode {
        state: "running".into(),
        probe: Some(probe),
        renditions: Vec::new(),
        reason: String::new(),
    };
    media
        .store
        .save_transcode(hash, &state)
        .await
        .map_err(|e| transient(&e))?;

    let thumbnail = work.join("thumbnail.jpg");
    let at = (probe.duration_s / 2.0).min(1.0);
    let thumb_height = even(probe.height.min(360));
    let args: Vec<String> = [
        "-ss",
        &format!("{at:.3}"),
        "-i",
        path_str(&input)?,
        "-frames:v",
        "1",
        "-vf",
        &format!("scale=-2:{thumb_height}"),
        "-q:v",
        "3",
        path_str(&thumbnail)?,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    ffmpeg(media, &args, message).await?;
    media
        .blobs
        .put_file(&blobs::derived(hash, "thumbnail.jpg"), &thumbnail)
        .await
        .map_err(|e| transient(&e))?;

    let rungs = ladder(probe.width, probe.height);
    let last = rungs.len() - 1;
    for (i, rung) in rungs.into_iter().enumerate() {
        let dir = work.join(&rung.name);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| transient(&e))?;
        ffmpeg(
            media,
            &rung_args(&input, &dir, &rung, probe.has_audio)?,
            message,
        )
        .await?;
        upload_rung(media, hash, &rung.name, &dir).await?;
        state.renditions.push(rung);
        media
            .blobs
            .put_bytes(
                &blobs::derived(hash, "hls/master.m3u8"),
                master_playlist(&state.renditions).into_bytes(),
            )
            .await
            .map_err(|e| transient(&e))?;
        if i == last {
            state.state = "done".into();
        }
        media
            .store
            .save_transcode(hash, &state)
            .await
            .map_err(|e| transient(&e))?;
        events::processed(&media.nats, video, &probe, &state.renditions, i == last)
            .await
            .map_err(|e| transient(&e))?;
    }
    Ok(())
}

fn path_str(path: &Path) -> Result<&str, Failure> {
    path.to_str()
        .ok_or_else(|| Failure::Transient(format!("work path {} is not UTF-8", path.display())))
}

fn rung_args(
    input: &Path,
    dir: &Path,
    rung: &RenditionRow,
    audio: bool,
) -> Result<Vec<String>, Failure> {
    let mut args: Vec<String> = vec![
        "-i".into(),
        path_str(input)?.into(),
        "-map".into(),
        "0:v:0".into(),
    ];
    if audio {
        args.extend(["-map".into(), "0:a:0".into()]);
    }
    args.extend(
        [
            "-vf",
            &format!("scale={}:{}", rung.width, rung.height),
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "main",
            "-pix_fmt",
            "yuv420p",
            "-b:v",
            &rung.bitrate.to_string(),
            "-maxrate",
            &(rung.bitrate / 10 * 12).to_string(),
            "-bufsize",
            &(rung.bitrate * 2).to_string(),
            // Keyframes at the same instants in every rung, and only there.
            "-sc_threshold",
            "0",
            "-force_key_frames",
            &format!("expr:gte(t,n_forced*{KEYFRAME_EVERY_S})"),
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    if audio {
        args.extend(
            [
                "-c:a",
                "aac",
                "-b:a",
                &AUDIO_BITRATE.to_string(),
                "-ac",
                "2",
            ]
            .iter()
            .map(|s| (*s).to_owned()),
        );
    }
    args.extend(
        [
            "-f",
            "hls",
            "-hls_time",
            &SEGMENT_S.to_string(),
            "-hls_playlist_type",
            "vod",
            "-hls_flags",
            "independent_segments",
            "-hls_segment_filename",
            path_str(&dir.join("seg_%05d.ts"))?,
            path_str(&dir.join("index.m3u8"))?,
        ]
        .iter()
        .map(|s| (*s).to_owned()),
    );
    Ok(args)
}

/// Segments first, the playlist last: a playlist never names a missing segment.
async fn upload_rung(media: &Media, hash: &str, name: &str, dir: &Path) -> Result<(), Failure> {
    let transient = |e: &dyn std::fmt::Display| Failure::Transient(e.to_string());
    let mut entries = tokio::fs::read_dir(dir).await.map_err(|e| transient(&e))?;
    let mut files = Vec::new();
    while let Some(entry) = entries.next_entry().await.map_err(|e| transient(&e))? {
        files.push(entry.file_name().to_string_lossy().into_owned());
    }
    // Playlists sort last.
    files.sort_by_key(|f| (crate::origin::is_playlist(f), f.clone()));
    for file in files {
        media
            .blobs
            .put_file(
                &blobs::derived(hash, &format!("hls/{name}/{file}")),
                &dir.join(&file),
            )
            .await
            .map_err(|e| transient(&e))?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct FfprobeOutput {
    #[serde(default)]
    streams: Vec<FfprobeStream>,
    format: Option<FfprobeFormat>,
}

#[derive(Deserialize)]
struct FfprobeStream {
    codec_type: Option<String>,
    width: Option<u32>,
    height: Option<u32>,
    duration: Option<String>,
}

#[derive(Deserialize)]
struct FfprobeFormat {
    format_name: Option<String>,
    duration: Option<String>,
}

async fn probe(media: &Media, input: &Path) -> Result<Probe, Failure> {
    let output = Command::new(&media.limits.ffprobe)
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_format",
            "-show_streams",
        ])
        .arg(input)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(
        Duration::from_secs(media.limits.stall_timeout_s.max(1)),
        output,
    )
    .await
    .map_err(|_| Failure::Transient("ffprobe timed out".into()))?
    .map_err(|e| Failure::Transient(format!("cannot run ffprobe: {e}")))?;
    let not_a_video = || Failure::NotAVideo(NOT_A_VIDEO.into());
    if !output.status.success() {
        return Err(not_a_video());
    }
    let parsed: FfprobeOutput =
        serde_json::from_slice(&output.stdout).map_err(|_| not_a_video())?;
    let format = parsed.format.ok_or_else(not_a_video)?;
    let format_name = format.format_name.unwrap_or_default();
    // Still images decode as a one-frame "video"; they are not videos.
    if format_name == "image2" || format_name.ends_with("_pipe") || format_name == "gif" {
        return Err(not_a_video());
    }
    let stream = parsed
        .streams
        .iter()
        .find(|s| s.codec_type.as_deref() == Some("video"))
        .ok_or_else(not_a_video)?;
    let duration_s = format
        .duration
        .or_else(|| stream.duration.clone())
        .and_then(|d| d.parse::<f64>().ok())
        .filter(|d| d.is_finite() && *d > 0.0)
        .ok_or_else(not_a_video)?;
    let (Some(width), Some(height)) = (stream.width, stream.height) else {
        return Err(not_a_video());
    };
    if width < 2 || height < 2 {
        return Err(not_a_video());
    }
    Ok(Probe {
        duration_s,
        width,
        height,
        has_audio: parsed
            .streams
            .iter()
            .any(|s| s.codec_type.as_deref() == Some("audio")),
    })
}

/// Runs ffmpeg, killing it when it reports no progress for `stall_timeout_s`, and telling
/// JetStream the work is alive while it does.
async fn ffmpeg(
    media: &Media,
    args: &[String],
    message: &jetstream::Message,
) -> Result<(), Failure> {
    let stall = Duration::from_secs(media.limits.stall_timeout_s.max(1));
    let mut child = Command::new(&media.limits.ffmpeg)
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostats",
            "-progress",
            "pipe:1",
            "-y",
        ])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Failure::Transient(format!("cannot run ffmpeg: {e}")))?;
    let mut stderr = child.stderr.take().expect("piped");
    let errors = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.ok();
        text
    });
    let mut progress = BufReader::new(child.stdout.take().expect("piped")).lines();
    // Well inside the ack deadline (= the stall timeout), so live work is never redelivered.
    let ack_every = PROGRESS_ACK_EVERY.min(stall / 3);
    let mut last_ack = tokio::time::Instant::now();
    loop {
        match tokio::time::timeout(stall, progress.next_line()).await {
            Err(_) => {
                child.kill().await.ok();
                return Err(Failure::Transient(format!(
                    "ffmpeg stalled for {}s",
                    stall.as_secs()
                )));
            }
            Ok(Ok(Some(_))) => {
                if last_ack.elapsed() >= ack_every {
                    message.ack_with(AckKind::Progress).await.ok();
                    last_ack = tokio::time::Instant::now();
                }
            }
            Ok(Ok(None) | Err(_)) => break,
        }
    }
    let status = tokio::time::timeout(stall, child.wait())
        .await
        .map_err(|_| Failure::Transient("ffmpeg did not exit".into()))?
        .map_err(|e| Failure::Transient(e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        let text = errors.await.unwrap_or_default();
        let tail: String = text.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
        Err(Failure::Transient(format!(
            "ffmpeg failed ({status}): {tail}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ladder_never_exceeds_the_source() {
        let names = |w, h| {
            ladder(w, h)
                .into_iter()
                .map(|r| (r.name, r.width, r.height))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(640, 360),
            [("240p".into(), 426, 240), ("360p".into(), 640, 360)]
        );
        assert_eq!(names(1920, 1080).len(), 5);
        assert_eq!(names(160, 120), [("120p".into(), 160, 120)]);
        assert_eq!(names(1280, 719).last().unwrap().0, "480p");
    }

    #[test]
    fn master_lists_every_finished_rung() {
        let m = master_playlist(&ladder(640, 360));
        assert!(m.starts_with("#EXTM3U"));
        assert!(m.contains("RESOLUTION=426x240\n240p/index.m3u8"));
        assert!(m.contains("360p/index.m3u8"));
    }
}
