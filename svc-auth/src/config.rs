//! Configuration of svc-auth. Environment: `TERTULIA_AUTH_<KEY>` (nested keys joined by
//! `__`, e.g. `TERTULIA_AUTH_TOKENS__ACCESS_TTL_S`), or the shared `TERTULIA_DATABASE__URL`.

use serde::Deserialize;
use tertulia_plumbing::{
    config::{GrpcServerConfig, PostgresConfig},
    token,
};

/// Everything svc-auth reads at start.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthConfig {
    /// The gRPC listener (default port in deployments: 50051).
    pub grpc: GrpcServerConfig,
    /// The database and the schema svc-auth owns (conventionally `auth`).
    pub database: PostgresConfig,
    /// Token lifetimes and claims.
    #[serde(default = "TokenConfig::standard")]
    pub tokens: TokenConfig,
    /// Password hashing cost.
    #[serde(default = "Argon2Config::owasp")]
    pub argon2: Argon2Config,
    /// Login attempt limits.
    #[serde(default = "LoginLimits::standard")]
    pub login_limits: LoginLimits,
}

/// Token lifetimes and the claims every verifier expects.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenConfig {
    /// `iss` of access tokens.
    pub issuer: String,
    /// `aud` of access tokens.
    pub audience: String,
    /// Access-token lifetime in seconds (short: they cannot be revoked).
    pub access_ttl_s: u32,
    /// Refresh-token lifetime in seconds; each rotation starts a new one.
    pub refresh_ttl_s: u32,
}

impl TokenConfig {
    /// Issuer `tertulia-auth`, audience `tertulia`, 15-minute access and 30-day refresh tokens.
    #[must_use]
    pub fn standard() -> Self {
        Self {
            issuer: token::DEFAULT_ISSUER.into(),
            audience: token::DEFAULT_AUDIENCE.into(),
            access_ttl_s: 15 * 60,
            refresh_ttl_s: 30 * 24 * 3600,
        }
    }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Deserialize)]
pub struct Argon2Config {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Argon2Config {
    /// OWASP's minimum for Argon2id: m = 19 MiB, t = 2, p = 1.
    #[must_use]
    pub fn owasp() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// How many login attempts a username, and a client address, may make per window. Attempts
/// are counted before the password is checked, so the limit also caps hashing work.
#[derive(Debug, Clone, Deserialize)]
pub struct LoginLimits {
    /// Attempts per username per window.
    pub per_username: u32,
    /// Attempts per client address per window.
    pub per_address: u32,
    /// Window length in seconds.
    pub window_s: u32,
}

impl LoginLimits {
    /// 10 per username and 50 per address per minute.
    #[must_use]
    pub fn standard() -> Self {
        Self {
            per_username: 10,
            per_address: 50,
            window_s: 60,
        }
    }
}
