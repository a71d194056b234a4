//! svc-chat: see the library's documentation.

fn main() -> std::process::ExitCode {
    tertulia_plumbing::run_service("svc-chat", "chat", svc_chat::run)
}
