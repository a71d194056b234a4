//! Configuration of svc-bff. Environment: `TERTULIA_BFF_<KEY>`, nested keys joined by `__`
//! (e.g. `TERTULIA_BFF_HTTP__LISTEN=0.0.0.0:8080`, `TERTULIA_BFF_AUTH__URL`).

use std::net::SocketAddr;

use serde::Deserialize;
use tertulia_plumbing::{
    config::{NatsConfig, UpstreamConfig},
    token::TokenPolicy,
};

use crate::realtime::RealtimeConfig;

/// Everything svc-bff reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct BffConfig {
    /// The public HTTP listener.
    pub http: HttpConfig,
    /// svc-auth's gRPC endpoint.
    pub auth: UpstreamConfig,
    /// svc-chat's gRPC endpoint.
    pub chat: UpstreamConfig,
    /// svc-presence's gRPC endpoint.
    pub presence: UpstreamConfig,
    /// svc-catalog's gRPC endpoint.
    pub catalog: UpstreamConfig,
    /// svc-media's gRPC endpoint.
    pub media: UpstreamConfig,
    /// NATS, where deliveries for connected users arrive.
    pub nats: NatsConfig,
    /// Issuer and audience that access tokens must carry.
    #[serde(default = "TokenPolicy::standard")]
    pub tokens: TokenPolicy,
    /// Real-time connection limits and timers.
    #[serde(default = "RealtimeConfig::standard")]
    pub realtime: RealtimeConfig,
    /// The bearer token of `/admin/*` (operators); the admin API is off when unset.
    #[serde(default)]
    pub admin_token: Option<secrecy::SecretString>,
    /// The API version policy file (TOML, see `versions.toml`); the built-in one when unset.
    #[serde(default)]
    pub versions_file: Option<std::path::PathBuf>,
    /// The built web client, served at `/` (`web.root`: the build's folder); without it only
    /// the API is served.
    #[serde(default)]
    pub web: Option<crate::web::WebConfig>,
}

/// The public HTTP listener and its limits.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpConfig {
    /// Address to bind (default port in deployments: 8080); port 0 picks a free one.
    pub listen: SocketAddr,
    /// Largest JSON body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Take the client address from the first `X-Forwarded-For` entry (only behind a proxy
    /// that sets it); otherwise the peer address is used.
    #[serde(default)]
    pub trust_forwarded_for: bool,
    /// Share `listen` with other gateway processes on this machine (`SO_REUSEPORT`): the
    /// kernel spreads new connections over them. One process may hold only as many
    /// connections as its open-files limit; several serve one address past it.
    #[serde(default)]
    pub share_port: bool,
}

impl HttpConfig {
    /// A listener on `listen` with the documented defaults.
    #[must_use]
    pub fn on(listen: SocketAddr) -> Self {
        Self {
            listen,
            max_body_bytes: default_max_body_bytes(),
            trust_forwarded_for: false,
            share_port: false,
        }
    }
}

fn default_max_body_bytes() -> usize {
    1024 * 1024
}
