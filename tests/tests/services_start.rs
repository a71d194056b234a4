//! Every service builds, binds an ephemeral port, answers `grpc.health.v1` SERVING and stops
//! on shutdown; a port that is taken is a clear start error.

use std::net::SocketAddr;

use tertulia_plumbing::config::GrpcServerConfig;
use tertulia_tests::{
    Stack, drop_schema, fresh_database, fresh_nats, grpc_channel, media_config, unique_name,
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
