//! `tertulia-health URL [SERVICE]`: asks a gRPC server's `grpc.health.v1.Health/Check` and
//! exits 0 when it answers SERVING, 1 otherwise. Used by the local stack scripts and by
//! container health checks, where no other gRPC client is at hand.

use std::{process::ExitCode, time::Duration};

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        eprintln!("usage: tertulia-health URL [SERVICE]");
        return ExitCode::from(2);
    };
    let service = args.next().unwrap_or_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let endpoint = match tonic::transport::Endpoint::from_shared(url.clone()) {
            Ok(endpoint) => endpoint
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2)),
            Err(error) => {
                eprintln!("invalid URL {url}: {error}");
                return ExitCode::from(2);
            }
        };
        let status = match endpoint.connect().await {
            Ok(channel) => HealthClient::new(channel)
                .check(HealthCheckRequest { service })
                .await
                .map(|r| r.into_inner().status()),
            Err(error) => {
                eprintln!("{url}: {error}");
                return ExitCode::FAILURE;
            }
        };
        match status {
            Ok(ServingStatus::Serving) => ExitCode::SUCCESS,
            Ok(other) => {
                eprintln!("{url}: {}", other.as_str_name());
                ExitCode::FAILURE
            }
            Err(status) => {
                eprintln!("{url}: {status}");
                ExitCode::FAILURE
            }
        }
    })
}
