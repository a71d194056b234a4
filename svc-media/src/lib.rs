//! svc-media owns uploads, blobs, transcoding and the signed media origin. It serves
//! `tertulia.media.v1.MediaService` over gRPC and a public HTTP listener (port 8090 by
//! default) with tus uploads (`/uploads`) and the origin (`/media`), which a CDN fronts.
//!
//! An upload streams to a local partial file and through BLAKE3; the finished file is stored
//! under its hash (`originals/<hash>`, local folder or S3), so identical files are stored and
//! transcoded once. `uploaded` goes to the JetStream stream `MEDIA`; the transcoder (durable
//! consumer `transcoder`) verifies with ffprobe, makes an HLS ladder and a thumbnail with
//! ffmpeg, and publishes `processed` per rendition or `failed`. svc-catalog consumes those.
//!
//! Rooms: `uploads` (tus), `origin` (signed serving), `processing` (ffprobe/ffmpeg),
//! `housekeeping` (deletion, sweeps, orphan reconciler), `blobs`, `signing`, `store`
//! (PostgreSQL schema `media`), `events`, `grpc`, `http`, `media` (shared state), `app`.

pub mod app;
pub mod blobs;
pub mod config;
pub mod events;
pub mod grpc;
pub mod housekeeping;
pub mod http;
pub mod media;
pub mod origin;
pub mod processing;
pub mod signing;
pub mod store;
pub mod uploads;

pub use app::{App, run};
pub use config::MediaConfig;
