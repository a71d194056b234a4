//! Liveness and readiness, kept apart. Liveness says the process answers (`GET /healthz`,
//! always 200 while it serves): restart it when this fails. Readiness says it can do its work
//! (`GET /readyz`, and the gRPC health status of the server and its services): every
//! dependency probe passes and the server is not draining. Take it out of rotation when this
//! fails; never restart it for that (a PostgreSQL outage would restart every instance).
//!
//! A [`GrpcServer`](crate::grpc::GrpcServer) given a [`Readiness`] serves both routes on its
//! port (HTTP/1.1) and re-probes every [`crate::metrics::SAMPLE_EVERY`], flipping its gRPC
//! health between SERVING and NOT_SERVING, so gRPC health checks (Envoy's, balancers') see
//! readiness too.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use deadpool_postgres::Pool;

/// How long one probe may take before it counts as failed.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

type ProbeFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One dependency check.
pub type Probe = Arc<dyn Fn() -> ProbeFuture + Send + Sync>;

/// What a service needs to be ready: named probes, all of which must pass.
#[derive(Clone, Default)]
pub struct Readiness {
    probes: Vec<(&'static str, Probe)>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.probes.iter().map(|(name, _)| *name).collect();
        f.debug_struct("Readiness").field("probes", &names).finish()
    }
}

impl Readiness {
    /// Adds a probe named `name` (`postgres`, `nats`, …).
    #[must_use]
    pub fn with<F, Fut>(mut self, name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.probes
            .push((name, Arc::new(move || Box::pin(probe()) as ProbeFuture)));
        self
    }

    /// Adds a PostgreSQL probe: a connection from `pool` answers `SELECT 1`.
    #[must_use]
    pub fn postgres(self, pool: Pool) -> Self {
        self.with("postgres", move || {
            let pool = pool.clone();
            async move {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                client
                    .simple_query("SELECT 1")
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        })
    }

    /// Adds a NATS probe: the connection is up.
    #[must_use]
    pub fn nats(self, client: async_nats::Client) -> Self {
        self.with("nats", move || {
            let state = client.connection_state();
            async move {
                match state {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(format!("connection {other}")),
                }
            }
        })
    }

    /// Runs every probe at once; the failures, by name, when any fails.
    pub async fn check(&self) -> Result<(), Vec<String>> {
        let runs = self.probes.iter().map(|(name, probe)| async move {
            match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(format!("{name}: {error}")),
                Err(_) => Some(format!("{name}: no answer within {PROBE_TIMEOUT:?}")),
            }
        });
        let failures: Vec<String> = futures::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_probe_must_pass_and_failures_are_named() {
        let ready = Readiness::default().with("a", || async { Ok(()) });
        assert_eq!(ready.check().await, Ok(()));
        let not = ready
            .with("b", || async { Err("down".to_owned()) })
            .with("c", std::future::pending);
        tokio::time::pause();
        let failures = not.check().await.unwrap_err();
        assert_eq!(failures.len(), 2);
        assert_eq!(failures[0], "b: down");
        assert!(failures[1].starts_with("c: no answer"), "{failures:?}");
        assert_eq!(
            Readiness::default().check().await,
            Ok(()),
            "nothing to wait for"
        );
    }
}
