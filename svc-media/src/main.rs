//! svc-media: see the library's documentation.

fn main() -> std::process::ExitCode {
    tertulia_plumbing::run_service("svc-media", "media", svc_media::run)
}
