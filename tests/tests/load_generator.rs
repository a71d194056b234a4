//! The load generator (`tertulia-load`, the binary `make bench` runs) against a real stack:
//! what it reports is what happened.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tertulia_tests::{Stack, process::binary};

/// The storm's clients held by two worker processes and spread over two gateways: every
/// client drops at once, comes back at once with `resume`, and the generator counts every
/// message stored meanwhile on every device, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_over_two_gateways_from_two_processes_loses_and_doubles_nothing() {
    let stack = Stack::start_with(|c| {
        // The generator signs its users in from a few loopback addresses within seconds.
        c.login_limits.per_address = 1000;
        c.argon2.memory_kib = 1024;
        c.argon2.iterations = 1;
    })
    .await;
    let second = stack.another_bff().await;
    let gateways = format!("http://{},http://{second}", stack.bff);
    let run = binary("tertulia-load")
        .args(["storm", "--url", &gateways, "--processes", "2"])
        .args(["--clients", "60", "--devices", "3", "--messages", "4"])
        .args(["--max-seconds", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("the storm ends within its bound")
        .expect("tertulia-load runs");
    assert!(out.status.success(), "the storm failed: {out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
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
