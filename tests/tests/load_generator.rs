//! The load generator (`tertulia-load`, the binary `make bench` runs) against a real stack:
//! what it reports is what happened.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tertulia_tests::{Stack, process::binary};

/// Runs `tertulia-load` with `args` (bounded) and returns its JSON report.
async fn report_of(args: &[&str]) -> Value {
    let run = binary("tertulia-load")
        .args(args)
        .args(["--max-seconds", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the run ends within its bound")
        .expect("tertulia-load runs");
    assert!(out.status.success(), "the run failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// Users the generator makes and signs in from a few loopback addresses within seconds.
fn quick_sign_ins(c: &mut svc_auth::config::AuthConfig) {
    c.login_limits.per_address = 1000;
    c.argon2.memory_kib = 1024;
    c.argon2.iterations = 1;
}

/// A capacity run larger than one process holds: its clients are held by two worker
/// processes, on a gateway port that two svc-bff instances share (`http.share_port`), as
/// past one process's open-files limit. Every connection is up and still open after the
/// hold; a gateway that does not share the port cannot take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capacity_run_from_two_processes_fills_a_port_two_gateways_share() {
    let stack = Stack::start_tuned(quick_sign_ins, |b| b.http.share_port = true).await;
    assert_eq!(stack.another_bff_on(stack.bff).await, stack.bff);
    let mut alone = stack.bff_config.clone();
    alone.http.listen = stack.bff;
    alone.http.share_port = false;
    let refused = svc_bff::App::build(alone)
        .await
        .err()
        .expect("the port is taken");
    assert!(
        refused.to_string().contains("cannot bind HTTP listener"),
        "{refused}"
    );
    let url = format!("http://{}", stack.bff);
    // Both gateways are in this test's process: its memory stands for theirs.
    let pid = std::process::id().to_string();
    let report = report_of(&[
        "capacity",
        "--url",
        &url,
        "--processes",
        "2",
        "--connections",
        "120",
        "--users",
        "40",
        "--hold",
        "0.2",
        "--gateway-pid",
        &pid,
    ])
    .await;
    assert_eq!(report["connected"], 120, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["still_open_after_hold"], 120, "{report}");
    assert_eq!(report["processes"], 2, "{report}");
    assert_eq!(report["users"], 40, "{report}");
    assert!(
        report["gateway_rss_per_connection_bytes"].is_number(),
        "{report}"
    );
}

/// The storm's clients held by two worker processes and spread over two gateways: every
/// client drops at once, comes back at once with `resume`, and the generator counts every
/// message stored meanwhile on every device, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_over_two_gateways_from_two_processes_loses_and_doubles_nothing() {
    let stack = Stack::start_with(quick_sign_ins).await;
    let second = stack.another_bff().await;
    let gateways = format!("http://{},http://{second}", stack.bff);
    let report = report_of(&[
        "storm",
        "--url",
        &gateways,
        "--processes",
        "2",
        "--clients",
        "60",
        "--devices",
        "3",
        "--messages",
        "4",
    ])
    .await;
    assert_eq!(report["clients"], 60, "{report}");
    assert_eq!(report["conversations"], 2, "{report}");
    assert_eq!(report["messages_while_away"], 8, "{report}");
    assert_eq!(report["gateways"], 2, "{report}");
    assert_eq!(report["processes"], 2, "{report}");
    // 8 messages, each due on 10 members × 3 devices.
    assert_eq!(report["delivered_after_reconnect"], 240, "{report}");
    assert_eq!(report["missing"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["reconnect_failures"], 0, "{report}");
}
