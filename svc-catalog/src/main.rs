//! svc-catalog: see the library's documentation.

fn main() -> std::process::ExitCode {
    tertulia_plumbing::run_service("svc-catalog", "catalog", svc_catalog::run)
}
