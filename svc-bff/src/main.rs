//! svc-bff: see the library's documentation.

fn main() -> std::process::ExitCode {
    tertulia_plumbing::run_service("svc-bff", "bff", svc_bff::run)
}
