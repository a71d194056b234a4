//! What every service's `main` does: a runtime, logging and traces, configuration, the
//! service's `run` until SIGINT/SIGTERM, the last spans flushed, and an exit code.

use std::{future::Future, process::ExitCode};

use serde::de::DeserializeOwned;

use crate::{config, error::chain, shutdown, telemetry};

/// How long the last spans may take to reach the collector at exit.
const TELEMETRY_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// A service could not start or failed while running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// PostgreSQL could not be reached or migrated.
    #[error(transparent)]
    Db(#[from] crate::postgres::DbError),
    /// NATS could not be reached or a stream set up.
    #[error(transparent)]
    Nats(#[from] crate::nats::NatsError),
    /// The gRPC server failed.
    #[error(transparent)]
    Grpc(#[from] crate::grpc::GrpcServerError),
    /// A listener or file failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A dependency is misconfigured or refused to start.
    #[error("{0}")]
    Other(String),
}

/// Runs `run` with the configuration of `service` (read with [`config::load`]) until a
/// signal, and maps the outcome to an exit code.
pub fn run_service<C, F, Fut>(binary: &'static str, service: &str, run: F) -> ExitCode
where
    C: DeserializeOwned,
    F: FnOnce(C, shutdown::Shutdown) -> Fut,
    Fut: Future<Output = Result<(), StartError>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{binary}: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let telemetry = telemetry::init(binary);
        let config: C = match config::load(service) {
            Ok(config) => config,
            Err(error) => {
                tracing::error!(message = "Configuration rejected.", error = %chain(&error));
                telemetry.shutdown(TELEMETRY_FLUSH).await;
                return ExitCode::from(2);
            }
        };
        let code = match run(config, shutdown::on_signal()).await {
            Ok(()) => {
                tracing::info!(message = "Stopped cleanly.", service = binary);
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(message = "Service failed.", error = %chain(&error));
                ExitCode::FAILURE
            }
        };
        // After draining: the spans of the last calls are queued and go out now.
        telemetry.shutdown(TELEMETRY_FLUSH).await;
        code
    })
}
