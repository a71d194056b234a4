//! Configuration from an optional TOML file plus environment variables.
//!
//! Sources, later ones winning:
//! 1. the TOML file named by `TERTULIA_CONFIG`, when set;
//! 2. `TERTULIA_<KEY>` variables shared by every service (e.g. `TERTULIA_NATS__URL`);
//! 3. `TERTULIA_<SERVICE>_<KEY>` variables for one service (e.g. `TERTULIA_AUTH_GRPC__LISTEN`).
//!
//! A double underscore separates nested keys: `TERTULIA_DATABASE__SCHEMA` sets
//! `database.schema`. Every service documents its own keys on its config struct.

use std::{net::SocketAddr, time::Duration};

use figment::{
    Figment,
    providers::{Env, Format, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, de::DeserializeOwned};

/// The configuration could not be read or does not match the service's struct.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(#[from] Box<figment::Error>);

/// Loads the configuration of `service` (lower case, e.g. `"auth"`) from the file and the
/// environment.
pub fn load<T: DeserializeOwned>(service: &str) -> Result<T, ConfigError> {
    figment_for(service)
        .extract()
        .map_err(|e| ConfigError(Box::new(e)))
}

/// The layered sources of [`load`], exposed so tests can merge their own values on top.
#[must_use]
pub fn figment_for(service: &str) -> Figment {
    let mut figment = Figment::new();
    if let Ok(path) = std::env::var("TERTULIA_CONFIG") {
        figment = figment.merge(Toml::file_exact(path));
    }
    let own_prefix = format!("TERTULIA_{}_", service.to_ascii_uppercase());
    figment
        .merge(
            Env::prefixed("TERTULIA_")
                // Keep one service's variables out of the shared layer.
                .filter(|key| is_shared_key(key.as_str()))
                .split("__"),
        )
        .merge(Env::prefixed(&own_prefix).split("__"))
}

/// Shared variables name a section directly (`DATABASE__URL`); service variables carry a
/// service name first (`AUTH_GRPC__LISTEN`), which has a single underscore before `__`.
fn is_shared_key(key: &str) -> bool {
    let head = key.split("__").next().unwrap_or(key);
    !head.contains('_')
}

/// The entries of a comma-separated list of URLs (`nats.url`, an upstream's `url`), trimmed,
/// empty ones skipped.
pub fn url_list(urls: &str) -> impl Iterator<Item = &str> {
    urls.split(',').map(str::trim).filter(|u| !u.is_empty())
}

/// Where and how a gRPC server listens.
#[derive(Debug, Clone, Deserialize)]
pub struct GrpcServerConfig {
    /// Address to bind; port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Upper bound for one call when the caller sets no earlier deadline, in milliseconds.
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Calls served at once by this instance; beyond it calls are shed with UNAVAILABLE.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// How long in-flight calls may take to finish after a shutdown signal, in milliseconds.
    #[serde(default = "defaults::drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// The dated lifecycle of the packages this server serves (TOML, see
    /// `tertulia_plumbing::lifecycle`); nothing is deprecated when unset.
    #[serde(default)]
    pub lifecycle_file: Option<std::path::PathBuf>,
}

impl GrpcServerConfig {
    /// A server on `listen` with the documented defaults (used by tests and examples).
    #[must_use]
    pub fn on(listen: SocketAddr) -> Self {
        Self {
            listen,
            request_timeout_ms: defaults::request_timeout_ms(),
            max_in_flight: defaults::max_in_flight(),
            drain_timeout_ms: defaults::drain_timeout_ms(),
            lifecycle_file: None,
        }
    }

    /// [`Self::request_timeout_ms`] as a duration.
    #[must_use]
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    /// [`Self::drain_timeout_ms`] as a duration.
    #[must_use]
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

/// A PostgreSQL database and the schema one service owns in it.
#[derive(Debug, Clone, Deserialize)]
pub struct PostgresConfig {
    /// Connection URL, e.g. `postgres://postgres@127.0.0.1:5432/tertulia`.
    pub url: SecretString,
    /// Schema holding this service's tables; created and migrated at start.
    pub schema: String,
    /// Connections in the pool.
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
}

/// A NATS server (with JetStream) and this deployment's namespace in it.
#[derive(Debug, Clone, Deserialize)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated, e.g. `nats://127.0.0.1:4333`.
    pub url: String,
    /// Namespace of stream names and subjects, so several deployments (or tests) share one
    /// server without meeting; `[a-z0-9_]`, empty in production.
    #[serde(default)]
    pub namespace: String,
}

/// Where a gRPC dependency lives.
#[derive(Debug, Clone, Deserialize)]
pub struct UpstreamConfig {
    /// URI such as `http://127.0.0.1:50051`.
    pub url: String,
    /// Deadline set on every call, in milliseconds.
    #[serde(default = "defaults::call_timeout_ms")]
    pub timeout_ms: u64,
}

impl UpstreamConfig {
    /// An upstream at `url` with the default deadline.
    #[must_use]
    pub fn at(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout_ms: defaults::call_timeout_ms(),
        }
    }
}

/// Default values, one function each so serde can name them.
mod defaults {
    pub(super) fn request_timeout_ms() -> u64 {
        10_000
    }
    pub(super) fn max_in_flight() -> usize {
        1024
    }
    pub(super) fn drain_timeout_ms() -> u64 {
        10_000
    }
    pub(super) fn max_connections() -> usize {
        16
    }
    pub(super) fn call_timeout_ms() -> u64 {
        5_000
    }
}

#[cfg(test)]
#[allow(
    clippy::result_large_err,
    reason = "figment::Jail's closure signature is fixed by figment"
)]
mod tests {
    use super::*;

    #[test]
    fn service_variables_stay_out_of_the_shared_layer() {
        assert!(is_shared_key("DATABASE__URL"));
        assert!(is_shared_key("LOG"));
        assert!(!is_shared_key("AUTH_GRPC__LISTEN"));
    }

    #[derive(Debug, Deserialize)]
    struct Sample {
        grpc: GrpcServerConfig,
        nats: NatsConfig,
    }

    #[test]
    fn nested_keys_split_on_double_underscore_and_service_wins() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TERTULIA_NATS__URL", "nats://shared:1");
            jail.set_env("TERTULIA_GRPC__LISTEN", "127.0.0.1:1");
            jail.set_env("TERTULIA_SAMPLE_GRPC__LISTEN", "127.0.0.1:2");
            let cfg: Sample = load("sample").map_err(|e| e.to_string())?;
            assert_eq!(cfg.nats.url, "nats://shared:1");
            assert_eq!(cfg.grpc.listen.port(), 2);
            assert_eq!(cfg.grpc.max_in_flight, 1024);
            Ok(())
        });
    }

    #[test]
    fn file_is_read_and_missing_fields_are_named() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("t.toml", "[grpc]\nlisten = \"127.0.0.1:7\"\n")?;
            jail.set_env("TERTULIA_CONFIG", "t.toml");
            let err = load::<Sample>("sample").unwrap_err().to_string();
            assert!(err.contains("nats"), "{err}");
            Ok(())
        });
    }
}
