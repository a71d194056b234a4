//! The workspace's service binaries as child processes (built by `make test` before the
//! suite): for what only a real process shows (signals, exit codes, exported telemetry).

use std::{net::SocketAddr, process::Stdio, time::Duration};

/// A service binary of this workspace, killed when dropped, its output discarded.
#[must_use]
pub fn binary(name: &str) -> tokio::process::Command {
    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_owned());
    let binary = format!("{target}/debug/{name}");
    assert!(
        std::path::Path::new(&binary).exists(),
        "{binary} is missing: `make test` builds the binaries first"
    );
    let mut command = tokio::process::Command::new(binary);
    command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    command
}

/// A loopback address with a port free right now.
#[must_use]
pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Waits (bounded) until `addr` answers `GET /readyz` with 200.
pub async fn until_ready(http: &reqwest::Client, addr: SocketAddr) {
    until_answers(http, &format!("http://{addr}/readyz")).await;
}

/// Waits (bounded) until `url` answers `GET` with 200.
pub async fn until_answers(http: &reqwest::Client, url: &str) {
    let ready = async {
        loop {
            let answer = http.get(url).send().await;
            if answer.is_ok_and(|a| a.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .unwrap_or_else(|_| panic!("{url} answers 200"));
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
}

/// Asserts `child` exits with success within `seconds`.
pub async fn exits_cleanly_within(child: &mut tokio::process::Child, seconds: u64) {
    let status = tokio::time::timeout(Duration::from_secs(seconds), child.wait())
        .await
        .expect("the process exits within its drain bound")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Service binary `name` on `nats` (its URL and namespace).
#[must_use]
pub fn on_nats(
    name: &str,
    nats: &tertulia_plumbing::config::NatsConfig,
) -> tokio::process::Command {
    let mut command = binary(name);
    command
        .env("TERTULIA_NATS__URL", &nats.url)
        .env("TERTULIA_NATS__NAMESPACE", &nats.namespace);
    command
}

/// The gateway binary listening on `listen`, on `nats`, with the suite's undated version
/// policy (v1 routes behave the same whatever the date). It calls `stack`'s services, except
/// those named in `upstreams` (`("chat", "http://…")`).
#[must_use]
pub fn gateway(
    stack: &crate::Stack,
    listen: SocketAddr,
    nats: &tertulia_plumbing::config::NatsConfig,
    upstreams: &[(&str, String)],
) -> tokio::process::Command {
    let mut command = on_nats("svc-bff", nats);
    command.env("TERTULIA_BFF_HTTP__LISTEN", listen.to_string());
    let defaults = [
        ("auth", stack.auth),
        ("chat", stack.chat),
        ("presence", stack.presence),
        ("catalog", stack.catalog),
        ("media", stack.media),
    ];
    for (name, addr) in defaults {
        command.env(upstream_key(name), format!("http://{addr}"));
    }
    // Later values of a variable replace earlier ones.
    for (name, url) in upstreams {
        command.env(upstream_key(name), url);
    }
    if let Some(policy) = &stack.bff_config.versions_file {
        command.env("TERTULIA_BFF_VERSIONS_FILE", policy);
    }
    command
}

fn upstream_key(name: &str) -> String {
    format!("TERTULIA_BFF_{}__URL", name.to_uppercase())
}
