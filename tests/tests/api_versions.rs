//! The version lifecycle on a running gateway, with its clock moved through every phase:
//! active (nothing said), deprecated (RFC 9745/8594 headers, `Link`s, a WebSocket
//! `deprecation` frame), sunset (308 to the v2 twin where v2 keeps the contract, 410 where it
//! changed it). v2 stays active throughout.

use std::sync::Arc;

use serde_json::{Value, json};
use svc_bff::versions::ManualClock;
use tertulia_tests::{Stack, WsClient, assert_problem, unique_name};
use time::macros::datetime;

const POLICY: &str = r#"
[v1]
deprecated_at = "2027-01-01T00:00:00Z"
sunset_at = "2027-07-01T00:00:00Z"
successor = "v2"
migration_guide = "https://docs.tertulia.dev/api/migrating-v1-to-v2"
changed_in_successor = [
  "/conversations/{id}/messages",
  "PATCH /conversations/{id}/messages/{message_id}",
  "GET /videos",
  "/ws",
]

[v2]
"#;

const ADMIN_TOKEN: &str = "operators-only-admin-token";

/// A second gateway over the stack's services, with `POLICY` and a clock the test moves.
async fn gateway(stack: &Stack, clock: Arc<ManualClock>) -> std::net::SocketAddr {
    let file = std::env::temp_dir().join(format!("{}.toml", unique_name("versions")));
    std::fs::write(&file, POLICY).unwrap();
    let mut config = stack.bff_config.clone();
    config.versions_file = Some(file.clone());
    config.admin_token = Some(ADMIN_TOKEN.to_owned().into());
    let app = svc_bff::App::build_with_clock(config, clock)
        .await
        .expect("the gateway starts");
    let _ = std::fs::remove_file(file);
    let addr = app.http_addr();
    tokio::spawn(app.run(tertulia_plumbing::shutdown::Shutdown::new()));
    addr
}

fn link_values(response: &reqwest::Response) -> Vec<String> {
    response
        .headers()
        .get_all("link")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn v1_goes_from_active_to_deprecated_to_sunset_while_v2_stays() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;
    let conversation = stack.group(&alice, &[&bob]).await;
    let clock = Arc::new(ManualClock::at(datetime!(2026-12-01 00:00 UTC)));
    let gw = gateway(&stack, clock.clone()).await;
    let get = |path: String| {
        stack
            .http
            .get(format!("http://{gw}{path}"))
            .bearer_auth(&alice.access_token)
            .send()
    };

    // Active: nothing said.
    let active = get("/api/v1/conversations".into()).await.unwrap();
    assert_eq!(active.status(), 200);
    assert!(active.headers().get("deprecation").is_none());

    // Deprecated: served, with the notice.
    clock.set(datetime!(2027-03-01 00:00 UTC));
    let deprecated = get("/api/v1/conversations".into()).await.unwrap();
    assert_eq!(deprecated.status(), 200);
    assert_eq!(deprecated.headers()["deprecation"], "@1798761600");
    assert_eq!(
        deprecated.headers()["sunset"],
        "Thu, 01 Jul 2027 00:00:00 GMT"
    );
    let links = link_values(&deprecated);
    assert!(
        links.contains(&"</api/v2>; rel=\"successor-version\"".to_owned()),
        "{links:?}"
    );
    assert!(
        links
            .iter()
            .any(|l| l.contains("migrating-v1-to-v2") && l.contains("rel=\"deprecation\"")),
        "{links:?}"
    );
    let errors_too = get("/api/v1/conversations/nope".into()).await.unwrap();
    assert!(
        errors_too.headers().contains_key("deprecation"),
        "error answers carry the notice too"
    );
    let mut ws = WsClient::ready(gw, &alice.access_token, &json!({})).await;
    let notice = ws.frame().await;
    assert_eq!(notice["type"], "deprecation", "{notice}");
    assert_eq!(notice["version"], "v1");
    assert_eq!(notice["successor"], "/api/v2");
    assert_eq!(notice["sunset_at"], "2027-07-01T00:00:00Z");
    let v2 = get("/api/v2/conversations".into()).await.unwrap();
    assert_eq!(v2.status(), 200);
    assert!(v2.headers().get("deprecation").is_none(), "v2 is active");

    // Sunset: kept routes move to their v2 twin, changed ones are gone.
    clock.set(datetime!(2027-07-01 00:00 UTC));
    let moved = get(format!("/api/v1/conversations/{conversation}?x=1"))
        .await
        .unwrap();
    assert_eq!(moved.status(), 308);
    assert_eq!(
        moved.headers()["location"],
        format!("/api/v2/conversations/{conversation}?x=1")
    );
    let twin: Value = get(format!("/api/v2/conversations/{conversation}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(twin["id"], conversation);
    let gone = get(format!("/api/v1/conversations/{conversation}/messages"))
        .await
        .unwrap();
    assert!(
        link_values(&gone)
            .iter()
            .any(|l| l.contains("successor-version"))
    );
    let body = assert_problem(gone, 410, "gone").await;
    assert!(
        body["detail"].as_str().unwrap().contains("/api/v2"),
        "{body}"
    );
    let ws_gone = stack
        .http
        .get(format!("http://{gw}/api/v1/ws"))
        .send()
        .await
        .unwrap();
    assert_problem(ws_gone, 410, "gone").await;
    // A POST follows 308 with its method and body.
    let login = stack
        .http
        .post(format!("http://{gw}/api/v1/auth/login"))
        .json(&json!({"username": "alice", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 308);
    assert_eq!(login.headers()["location"], "/api/v2/auth/login");
    sunset_is_per_method(&stack, gw, &conversation).await;
}

/// After sunset, a route whose methods differ in v2 answers per method: a message's DELETE
/// (kept) moves, its PATCH (changed) is gone; video search is gone, the rest of videos moves.
async fn sunset_is_per_method(stack: &Stack, gw: std::net::SocketAddr, conversation: &str) {
    let call = |method: reqwest::Method, path: String| {
        stack
            .http
            .request(method, format!("http://{gw}{path}"))
            .send()
    };
    let message =
        format!("/conversations/{conversation}/messages/0190f0f0-0000-7000-8000-000000000000");
    let deleted = call(reqwest::Method::DELETE, format!("/api/v1{message}"))
        .await
        .unwrap();
    assert_eq!(deleted.status(), 308);
    assert_eq!(deleted.headers()["location"], format!("/api/v2{message}"));
    let edited = call(reqwest::Method::PATCH, format!("/api/v1{message}"))
        .await
        .unwrap();
    assert_problem(edited, 410, "gone").await;
    let searched = call(reqwest::Method::GET, "/api/v1/videos?tag=x".into())
        .await
        .unwrap();
    assert_problem(searched, 410, "gone").await;
    let created = call(reqwest::Method::POST, "/api/v1/videos".into())
        .await
        .unwrap();
    assert_eq!(created.status(), 308);
    assert_eq!(created.headers()["location"], "/api/v2/videos");
    let one = call(reqwest::Method::GET, "/api/v1/videos/some-id".into())
        .await
        .unwrap();
    assert_eq!(one.headers()["location"], "/api/v2/videos/some-id");
    // Unknown routes are still plain 404s.
    let unknown = call(reqwest::Method::GET, "/api/v1/nothing-here".into())
        .await
        .unwrap();
    assert_problem(unknown, 404, "not_found").await;
}

#[tokio::test]
async fn an_inconsistent_policy_stops_the_gateway_from_starting() {
    let stack = Stack::start().await;
    let file = std::env::temp_dir().join(format!("{}.toml", unique_name("versions")));
    std::fs::write(
        &file,
        "[v1]\ndeprecated_at = \"2027-02-01T00:00:00Z\"\nsunset_at = \"2027-01-01T00:00:00Z\"\n",
    )
    .unwrap();
    let mut config = stack.bff_config.clone();
    config.versions_file = Some(file);
    let Err(error) = svc_bff::App::build(config).await else {
        panic!("a sunset before its deprecation must be refused");
    };
    assert!(
        error.to_string().contains("before its deprecation"),
        "{error}"
    );
}

#[tokio::test]
async fn deprecated_calls_are_counted_per_client_across_gateways() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let bob = stack.signed_up("bob").await;
    let clock = Arc::new(ManualClock::at(datetime!(2027-03-01 12:00 UTC)));
    let (one, two) = (
        gateway(&stack, clock.clone()).await,
        gateway(&stack, clock.clone()).await,
    );
    let call = |gw: std::net::SocketAddr,
                path: &'static str,
                token: Option<String>,
                agent: &'static str| {
        let mut request = stack
            .http
            .get(format!("http://{gw}{path}"))
            .header("User-Agent", agent);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };
    for gw in [one, two, one] {
        let r = call(
            gw,
            "/api/v1/conversations",
            Some(alice.access_token.clone()),
            "ios-app/3.1",
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 200);
    }
    call(
        two,
        "/api/v1/conversations",
        Some(bob.access_token.clone()),
        "web/1.0",
    )
    .await
    .unwrap();
    call(one, "/api/v1/me", None, "curl/8").await.unwrap();
    call(
        one,
        "/api/v2/conversations",
        Some(bob.access_token.clone()),
        "web/2.0",
    )
    .await
    .unwrap();

    let admin = |gw: std::net::SocketAddr, token: Option<&str>| {
        let mut request = stack.http.get(format!("http://{gw}/admin/api-usage"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        request.send()
    };
    assert_problem(admin(one, None).await.unwrap(), 401, "unauthenticated").await;
    assert_problem(
        admin(one, Some("guess")).await.unwrap(),
        403,
        "permission_denied",
    )
    .await;
    assert_problem(stack.get("/admin/api-usage", None).await, 404, "not_found").await;

    // Gateway two's counts reach the shared bucket when it flushes (every few seconds, and
    // before it answers a report itself).
    let _ = admin(two, Some(ADMIN_TOKEN)).await.unwrap();
    let report: Value = admin(one, Some(ADMIN_TOKEN))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let clients = report["clients"].as_array().unwrap();
    let row = |subject: &str, agent: &str| {
        clients
            .iter()
            .find(|c| c["subject"] == subject && c["user_agent"] == agent)
            .unwrap_or_else(|| panic!("no row for {subject} {agent}: {report}"))
    };
    let alices = row(&alice.user_id, "ios-app/3.1");
    assert_eq!(alices["calls"], 3, "both gateways counted: {report}");
    assert_eq!(alices["version"], "v1");
    assert_eq!(alices["route"], "/conversations");
    assert_eq!(alices["last_seen"], "2027-03-01T12:00:00Z");
    assert_eq!(row(&bob.user_id, "web/1.0")["calls"], 1);
    assert_eq!(row("anonymous", "curl/8")["route"], "/me");
    assert!(
        clients.iter().all(|c| c["version"] == "v1"),
        "v2 calls are not deprecated: {report}"
    );
    assert_eq!(clients[0]["calls"], 3, "most calls first");

    deprecated_calls_are_metrics(&stack, one, &alice.user_id).await;
}

/// Each gateway's own series, by version, route and User-Agent (no subjects).
async fn deprecated_calls_are_metrics(stack: &Stack, one: std::net::SocketAddr, alice: &str) {
    let metrics = stack
        .http
        .get(format!("http://{one}/metrics"))
        .send()
        .await
        .unwrap();
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let metrics = metrics.text().await.unwrap();
    for series in [
        r#"tertulia_api_deprecated_calls_total{version="v1",route="/conversations",user_agent="ios-app/3.1"} 2"#,
        r#"tertulia_api_deprecated_calls_total{version="v1",route="/me",user_agent="curl/8"} 1"#,
        r#"tertulia_api_deprecated_last_seen_seconds{version="v1",route="/me",user_agent="curl/8"} 1803902400"#,
    ] {
        assert!(metrics.contains(series), "{series} in {metrics}");
    }
    assert!(
        !metrics.contains("web/"),
        "gateway one saw no web call on v1"
    );
    assert!(!metrics.contains(alice), "no subjects in metrics");
}
