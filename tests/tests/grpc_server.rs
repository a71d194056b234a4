//! The gRPC server plumbing, through the services that use it: health, reflection, load
//! shedding, and the drain on shutdown.

use std::time::Duration;

use tertulia_plumbing::{config::GrpcServerConfig, shutdown::Shutdown};
use tertulia_proto::auth::v1::{GetJwksRequest, auth_service_client::AuthServiceClient};
use tertulia_tests::{Stack, auth_config, drop_schema, fresh_database, grpc_channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn health_reports_each_service_then_not_serving_on_shutdown() {
    let stack = Stack::start().await;
    let mut health = HealthClient::new(grpc_channel(stack.auth).await);
    for service in ["", "tertulia.auth.v1.AuthService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "tertulia.nope.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn shutdown_flips_health_to_not_serving_before_draining() {
    let database = fresh_database();
    let schema = database.schema.clone();
    let mut grpc = GrpcServerConfig::on("127.0.0.1:0".parse().unwrap());
    grpc.drain_timeout_ms = 300;
    let config = auth_config(grpc, database);
    let app = svc_auth::App::build(config).await.unwrap();
    let addr = app.grpc_addr();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(app.run(shutdown.clone()));

    let mut watch = HealthClient::new(grpc_channel(addr).await)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap().status();
    assert_eq!(first, ServingStatus::Serving);
    shutdown.cancel();
    let next = watch.message().await.unwrap().unwrap().status();
    assert_eq!(next, ServingStatus::NotServing);
    // The open watch stream is cut at the drain deadline; the server then returns.
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops within the drain deadline")
        .unwrap()
        .unwrap();
    drop_schema(&schema);
}

#[tokio::test]
async fn calls_beyond_the_in_flight_limit_are_shed_with_unavailable() {
    let database = fresh_database();
    let schema = database.schema.clone();
    let mut grpc = GrpcServerConfig::on("127.0.0.1:0".parse().unwrap());
    grpc.max_in_flight = 0;
    let config = auth_config(grpc, database);
    let app = svc_auth::App::build(config).await.unwrap();
    let addr = app.grpc_addr();
    let shutdown = Shutdown::new();
    tokio::spawn(app.run(shutdown.clone()));
    let err = AuthServiceClient::new(grpc_channel(addr).await)
        .get_jwks(GetJwksRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("capacity"), "{err}");
    shutdown.cancel();
    drop_schema(&schema);
}

#[tokio::test]
async fn reflection_lists_exactly_the_served_services() {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let stack = Stack::start().await;
    let mut client = ServerReflectionClient::new(grpc_channel(stack.auth).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected a service list, got {answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["tertulia.auth.v1.AuthService"]);
}

fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures::Stream<Item = T> + Send {
    futures::stream::iter([item])
}

#[tokio::test]
async fn deprecated_methods_carry_a_notice_then_fail_unimplemented_after_sunset() {
    use std::sync::Arc;
    use tertulia_plumbing::{clock::ManualClock, grpc::GrpcServer};
    use time::macros::datetime;
    use tonic_types::StatusExt as _;

    let policy = r#"
["grpc.health.v1.Health"]
deprecated_at = "2027-01-01T00:00:00Z"
sunset_at = "2027-07-01T00:00:00Z"
successor = "grpc.health.v2.Health"
migration_guide = "https://docs.tertulia.dev/api/migrating"
methods = ["Check"]
"#;
    let file =
        std::env::temp_dir().join(format!("{}.toml", tertulia_tests::unique_name("lifecycle")));
    std::fs::write(&file, policy).unwrap();
    let mut config = GrpcServerConfig::on("127.0.0.1:0".parse().unwrap());
    config.lifecycle_file = Some(file.clone());
    let clock = Arc::new(ManualClock::at(datetime!(2026-12-01 00:00 UTC)));
    let server = GrpcServer::bind(config).unwrap().with_clock(clock.clone());
    let addr = server.local_addr();
    let shutdown = Shutdown::new();
    tokio::spawn(server.serve(shutdown.clone()));
    let mut health = HealthClient::new(grpc_channel(addr).await);
    let check = || HealthCheckRequest {
        service: String::new(),
    };

    let active = health.check(check()).await.unwrap();
    assert!(active.metadata().get("deprecation").is_none());

    clock.set(datetime!(2027-03-01 00:00 UTC));
    let deprecated = health.check(check()).await.unwrap();
    let meta = deprecated.metadata();
    assert_eq!(meta.get("deprecation").unwrap(), "@1798761600");
    assert_eq!(meta.get("sunset").unwrap(), "Thu, 01 Jul 2027 00:00:00 GMT");
    assert_eq!(
        meta.get("link").unwrap(),
        "<grpc.health.v2.Health>; rel=\"successor-version\""
    );
    assert_eq!(
        deprecated.into_inner().status(),
        ServingStatus::Serving,
        "still answered"
    );

    clock.set(datetime!(2027-07-01 00:00 UTC));
    let gone = health.check(check()).await.unwrap_err();
    assert_eq!(gone.code(), tonic::Code::Unimplemented);
    assert!(
        gone.message().contains("grpc.health.v2.Health"),
        "{}",
        gone.message()
    );
    let details = gone.get_error_details();
    let info = details.error_info().expect("an ErrorInfo detail");
    assert_eq!(info.reason, "SUNSET");
    assert_eq!(info.metadata["successor"], "grpc.health.v2.Health");
    let help = details.help().expect("a Help detail");
    assert_eq!(help.links[0].url, "https://docs.tertulia.dev/api/migrating");
    // Other methods of the same service are not concerned.
    let watch = health.watch(check()).await;
    assert!(watch.is_ok(), "{watch:?}");

    shutdown.cancel();
    let _ = std::fs::remove_file(file);
}

/// Liveness and readiness are kept apart: with its NATS gone, svc-presence stays alive
/// (`/healthz` 200) but is not ready (`/readyz` 503 naming NATS, gRPC health NOT_SERVING),
/// and becomes ready again when NATS is back.
#[tokio::test]
async fn readiness_follows_dependencies_and_liveness_does_not() {
    use tertulia_plumbing::config::{NatsConfig, UpstreamConfig};
    let mut nats = tertulia_tests::TestNats::start().await;
    let config = svc_presence::PresenceConfig {
        grpc: GrpcServerConfig::on("127.0.0.1:0".parse().unwrap()),
        nats: NatsConfig {
            url: nats.url.clone(),
            namespace: tertulia_tests::unique_name("t"),
        },
        auth: UpstreamConfig::at("http://127.0.0.1:9"),
        chat: UpstreamConfig::at("http://127.0.0.1:9"),
        session_ttl_s: 30,
        kv_replicas: 1,
    };
    let app = svc_presence::App::build(config).await.unwrap();
    let addr = app.grpc_addr();
    let shutdown = Shutdown::new();
    tokio::spawn(app.run(shutdown.clone()));
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        async move {
            let answer = http
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            (status, answer.text().await.unwrap())
        }
    };
    let health = || async {
        HealthClient::new(grpc_channel(addr).await)
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status()
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await.0, 200);
    assert_eq!(health().await, ServingStatus::Serving);

    nats.kill().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let (status, body) = get("/readyz").await;
        if status == 503 || tokio::time::Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("nats"), "{body}");
    assert_eq!(get("/healthz").await.0, 200, "alive without NATS");
    // The health status follows at the next probe round (every few seconds).
    let mut watch = HealthClient::new(grpc_channel(addr).await)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut seen = watch.message().await.unwrap().unwrap().status();
    while seen == ServingStatus::Serving {
        seen = tokio::time::timeout(Duration::from_secs(15), watch.message())
            .await
            .expect("NOT_SERVING within a probe round")
            .unwrap()
            .unwrap()
            .status();
    }
    assert_eq!(seen, ServingStatus::NotServing);

    nats.restart().await;
    while seen != ServingStatus::Serving {
        seen = tokio::time::timeout(Duration::from_secs(30), watch.message())
            .await
            .expect("SERVING again once NATS is back")
            .unwrap()
            .unwrap()
            .status();
    }
    assert_eq!(get("/readyz").await.0, 200);
    shutdown.cancel();
}
