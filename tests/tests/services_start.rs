//! Every service builds, binds an ephemeral port, answers `grpc.health.v1` SERVING and stops
//! on shutdown; a port that is taken is a clear start error.

use std::net::SocketAddr;

use tertulia_plumbing::{config::GrpcServerConfig, shutdown::Shutdown};
use tertulia_tests::grpc_channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn grpc() -> GrpcServerConfig {
    GrpcServerConfig::on(SocketAddr::from(([127, 0, 0, 1], 0)))
}

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
    let shutdown = Shutdown::new();
    let catalog = svc_catalog::build(svc_catalog::CatalogConfig { grpc: grpc() })
        .await
        .unwrap();
    let media = svc_media::build(svc_media::MediaConfig { grpc: grpc() })
        .await
        .unwrap();
    let addrs = [catalog.local_addr(), media.local_addr()];
    let servers = [
        tokio::spawn(catalog.serve(shutdown.clone())),
        tokio::spawn(media.serve(shutdown.clone())),
    ];
    for addr in addrs {
        assert_serving(addr).await;
    }
    shutdown.cancel();
    for server in servers {
        server.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_taken_port_is_a_clear_start_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = svc_media::MediaConfig {
        grpc: GrpcServerConfig::on(taken.local_addr().unwrap()),
    };
    let Err(err) = svc_media::build(config).await else {
        panic!("binding a taken port must fail");
    };
    assert!(err.to_string().contains("cannot bind"), "{err}");
}
