//! svc-presence: see the library's documentation.

fn main() -> std::process::ExitCode {
    tertulia_plumbing::run_service("svc-presence", "presence", svc_presence::run)
}
