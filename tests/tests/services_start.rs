//! Every service builds, binds an ephemeral port, answers `grpc.health.v1` SERVING and stops
//! on shutdown; a port that is taken is a clear start error.

use std::net::SocketAddr;

use tertulia_plumbing::config::GrpcServerConfig;
use tertulia_tests::{
    Stack, drop_schema, fresh_database, fresh_nats, grpc_channel, media_config,
    process::{self, exits_cleanly_within, free_port, sigterm, until_ready},
    unique_name,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

async fn assert_serving(addr: SocketAddr) {
    let mut health = HealthClient::new(grpc_channel(addr).await);
    let status = health
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving, "{addr}");
}

#[tokio::test]
async fn catalog_and_media_start_and_serve_health() {
    let stack = Stack::start().await;
    for addr in [stack.catalog, stack.media] {
        assert_serving(addr).await;
    }
}

#[tokio::test]
async fn a_taken_port_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = std::env::temp_dir().join(unique_name("taken"));
    let database = fresh_database();
    let schema = database.schema.clone();
    let mut config = media_config(&dir, database, fresh_nats());
    config.grpc = GrpcServerConfig::on(taken.local_addr().unwrap());
    let result = svc_media::App::build(config).await;
    drop_schema(&schema);
    let _ = std::fs::remove_dir_all(&dir);
    let Err(err) = result else {
        panic!("binding a taken port must fail");
    };
    assert!(err.to_string().contains("cannot bind"), "{err}");
}

/// Every service serves Prometheus text at `GET /metrics` (the gRPC services on their gRPC
/// port, over HTTP/1.1), with RED series of the calls it answered.
#[tokio::test]
async fn every_service_serves_red_metrics() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let conversation = stack.group(&alice, &[]).await;
    let sent = stack
        .post(
            &format!("/api/v2/conversations/{conversation}/messages"),
            &serde_json::json!({"client_msg_id": "m", "content": {"type": "text", "text": "hi"}}),
            Some(&alice.access_token),
        )
        .await;
    assert_eq!(sent.status(), 201);
    let missing = stack.get("/api/v2/videos/nope", None).await;
    assert_eq!(missing.status(), 404);

    let _socket = tertulia_tests::WsClient::ready_version(
        stack.bff,
        "v2",
        &alice.access_token,
        &serde_json::json!({}),
    )
    .await;
    let scrape = |addr: SocketAddr| {
        let http = stack.http.clone();
        async move {
            let answer = http
                .get(format!("http://{addr}/metrics"))
                .send()
                .await
                .unwrap();
            assert_eq!(answer.status(), 200, "{addr}");
            assert!(
                answer.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/openmetrics-text")
            );
            answer.text().await.unwrap()
        }
    };
    let chat = scrape(stack.chat).await;
    assert!(
        chat.contains(r#"grpc_server_handled_total{grpc_service="tertulia.chat.v2.ChatService",grpc_method="SendMessage",grpc_code="OK"} 1"#),
        "{chat}"
    );
    for series in [
        "grpc_server_handling_seconds_bucket",
        "# TYPE tertulia_outbox_relayed counter",
        "tertulia_outbox_lag_seconds_count",
        "tertulia_outbox_pending ",
        r#"tertulia_jetstream_consumer_pending{stream="CHAT",consumer="fanout"}"#,
        r#"tertulia_jetstream_consumer_ack_pending{stream="CHAT",consumer="fanout"}"#,
    ] {
        assert!(chat.contains(series), "{series} in {chat}");
    }
    let catalog = scrape(stack.catalog).await;
    assert!(
        catalog.contains(r#"grpc_method="GetVideo",grpc_code="NOT_FOUND"} 1"#),
        "{catalog}"
    );
    let auth = scrape(stack.auth).await;
    assert!(
        auth.contains(r#"grpc_service="tertulia.auth.v1.AuthService""#),
        "{auth}"
    );
    assert!(
        catalog
            .contains(r#"tertulia_jetstream_consumer_pending{stream="MEDIA",consumer="catalog"}"#),
        "{catalog}"
    );
    assert!(scrape(stack.presence).await.contains("# EOF"));
    let media = scrape(stack.media).await;
    for series in [
        "# TYPE tertulia_uploads_completed counter",
        "# TYPE tertulia_upload_bytes counter",
        "# TYPE tertulia_transcodes counter",
        "# TYPE tertulia_transcode_duration_seconds histogram",
        r#"tertulia_jetstream_consumer_pending{stream="MEDIA",consumer="transcoder"}"#,
    ] {
        assert!(media.contains(series), "{series} in {media}");
    }
    let bff = scrape(stack.bff).await;
    for series in [
        r#"http_server_requests_total{method="POST",route="/api/v2/conversations/{id}/messages",status="201"} 1"#,
        r#"http_server_requests_total{method="GET",route="/api/v2/videos/{id}",status="404"} 1"#,
        r#"http_server_request_duration_seconds_count{method="POST",route="/api/v2/conversations/{id}/messages"} 1"#,
        r#"tertulia_realtime_connections{transport="ws",api="v2"} 1"#,
        "tertulia_realtime_users 1",
        "# TYPE tertulia_realtime_queue_depth histogram",
        r#"tertulia_realtime_slow_consumer_disconnects_total{transport="ws",reason="queue_full"} 0"#,
    ] {
        assert!(bff.contains(series), "{series} in {bff}");
    }
    // gRPC still works on the ports that now speak HTTP/1.1 too.
    assert_serving(stack.chat).await;
}

/// The real `svc-bff` binary on SIGTERM: reports not ready, closes an open WebSocket with
/// 1012 (reconnect with resume) and exits cleanly within its drain bound.
#[tokio::test]
async fn sigterm_closes_sockets_with_1012_and_exits_within_the_drain_bound() {
    let stack = Stack::start().await;
    let alice = stack.signed_up("alice").await;
    let addr = free_port();
    let mut child = process::gateway(&stack, addr, &stack.nats, &[])
        .spawn()
        .unwrap();
    until_ready(&stack.http, addr).await;
    let mut socket = tertulia_tests::WsClient::ready_version(
        addr,
        "v2",
        &alice.access_token,
        &serde_json::json!({}),
    )
    .await;

    sigterm(&child);
    assert_eq!(
        socket.closed().await,
        Some(1012),
        "restart: reconnect with resume"
    );
    exits_cleanly_within(&mut child, 15).await;
}

/// The real `svc-presence` binary on SIGTERM: an open gRPC stream (a health watch) hears
/// NOT_SERVING, is cut at the drain deadline, and the process exits cleanly.
#[tokio::test]
async fn sigterm_drains_an_open_grpc_stream_within_the_bound() {
    let stack = Stack::start().await;
    let addr = free_port();
    let mut child = process::on_nats("svc-presence", &stack.nats)
        .env("TERTULIA_PRESENCE_GRPC__LISTEN", addr.to_string())
        .env("TERTULIA_PRESENCE_GRPC__DRAIN_TIMEOUT_MS", "500")
        .env(
            "TERTULIA_PRESENCE_AUTH__URL",
            format!("http://{}", stack.auth),
        )
        .env(
            "TERTULIA_PRESENCE_CHAT__URL",
            format!("http://{}", stack.chat),
        )
        .spawn()
        .unwrap();
    until_ready(&stack.http, addr).await;
    let mut watch = HealthClient::new(grpc_channel(addr).await)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    sigterm(&child);
    let next = watch.message().await.unwrap().unwrap().status();
    assert_eq!(next, ServingStatus::NotServing, "told before it stops");
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
        .await
        .expect("the stream is cut at the drain deadline");
    assert!(!matches!(end, Ok(Some(_))), "no more messages: {end:?}");
    exits_cleanly_within(&mut child, 10).await;
}
