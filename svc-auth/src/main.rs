//! svc-auth: see the library's documentation.

fn main() -> std::process::ExitCode {
    tertulia_plumbing::run_service("svc-auth", "auth", svc_auth::run)
}
