//! Local verification of access tokens.
//!
//! `svc-auth` signs short-lived access tokens (EdDSA JWTs, RFC 9068 `typ: at+jwt`) and
//! publishes its public keys as a JWK set. Every other service verifies tokens here, without a
//! call to `svc-auth` per request: keys are fetched once and again only when a token names a
//! key id not seen yet (rotation), at most once per [`REFRESH_COOLDOWN`].

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use crate::telemetry::Upstream as Channel;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind, jwk::JwkSet};
use serde::{Deserialize, Serialize};
use tertulia_proto::auth::v1::{GetJwksRequest, auth_service_client::AuthServiceClient};
use tokio::sync::Mutex;

/// The `typ` header of access tokens (RFC 9068), so an ID or refresh token never passes.
pub const ACCESS_TOKEN_TYPE: &str = "at+jwt";
/// The only algorithm accepted: pinned, never read from the token.
pub const ACCESS_TOKEN_ALGORITHM: Algorithm = Algorithm::EdDSA;
/// Minimum time between two key-set fetches triggered by unknown key ids.
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(30);
/// Clock skew tolerated on `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u64 = 30;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The user id.
    pub sub: String,
    /// Who issued it (`svc-auth`'s configured issuer).
    pub iss: String,
    /// Who it is for (the platform's configured audience).
    pub aud: String,
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Issued at, Unix seconds.
    pub iat: i64,
    /// Unique token id.
    pub jti: String,
}

/// `iss` of access tokens unless configured otherwise.
pub const DEFAULT_ISSUER: &str = "tertulia-auth";
/// `aud` of access tokens unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = "tertulia";

/// What the issuer and audience of accepted tokens must be.
#[derive(Debug, Clone, Deserialize)]
pub struct TokenPolicy {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud`.
    pub audience: String,
}

impl TokenPolicy {
    /// [`DEFAULT_ISSUER`] and [`DEFAULT_AUDIENCE`].
    #[must_use]
    pub fn standard() -> Self {
        Self {
            issuer: DEFAULT_ISSUER.to_owned(),
            audience: DEFAULT_AUDIENCE.to_owned(),
        }
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT, or not one of ours (bad header, wrong `typ`, wrong or no `alg`, no `kid`).
    #[error("malformed access token")]
    Malformed,
    /// Past its `exp`.
    #[error("access token expired")]
    Expired,
    /// Signature, issuer, audience or claims do not check out.
    #[error("invalid access token")]
    Invalid,
    /// Its key id is not in the published key set.
    #[error("access token signed with an unknown key")]
    UnknownKey,
    /// The key set could not be fetched.
    #[error("signing keys unavailable")]
    KeysUnavailable(#[source] tonic::Status),
    /// The published key set is unreadable.
    #[error("published key set is invalid: {0}")]
    BadKeySet(String),
}

/// Verifies access tokens against a cached JWK set.
#[derive(Debug, Clone)]
pub struct TokenVerifier {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    validation: Validation,
    keys: RwLock<HashMap<String, DecodingKey>>,
    source: Option<AuthServiceClient<Channel>>,
    /// Serialises refreshes and remembers the last one, for the cooldown.
    last_refresh: Mutex<Option<Instant>>,
}

impl TokenVerifier {
    /// A verifier that fetches keys from `svc-auth` over `channel`.
    #[must_use]
    pub fn from_auth_service(policy: &TokenPolicy, channel: Channel) -> Self {
        Self::build(
            policy,
            Some(AuthServiceClient::new(channel)),
            HashMap::new(),
        )
    }

    /// A verifier with a fixed key set (a JWKS JSON document), for tests and tools.
    pub fn from_jwks(policy: &TokenPolicy, jwks_json: &str) -> Result<Self, TokenError> {
        Ok(Self::build(policy, None, parse_jwks(jwks_json)?))
    }

    fn build(
        policy: &TokenPolicy,
        source: Option<AuthServiceClient<Channel>>,
        keys: HashMap<String, DecodingKey>,
    ) -> Self {
        let mut validation = Validation::new(ACCESS_TOKEN_ALGORITHM);
        validation.set_issuer(&[&policy.issuer]);
        validation.set_audience(&[&policy.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            inner: Arc::new(Inner {
                validation,
                keys: RwLock::new(keys),
                source,
                last_refresh: Mutex::new(None),
            }),
        }
    }

    /// Checks `token` and returns its claims.
    pub async fn verify(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != ACCESS_TOKEN_ALGORITHM || header.typ.as_deref() != Some(ACCESS_TOKEN_TYPE)
        {
            return Err(TokenError::Malformed);
        }
        let kid = header.kid.ok_or(TokenError::Malformed)?;
        if let Some(result) = self.verify_with_known_key(token, &kid) {
            return result;
        }
        self.refresh_keys().await?;
        self.verify_with_known_key(token, &kid)
            .unwrap_or(Err(TokenError::UnknownKey))
    }

    /// `None` when `kid` is not cached.
    fn verify_with_known_key(
        &self,
        token: &str,
        kid: &str,
    ) -> Option<Result<AccessClaims, TokenError>> {
        let keys = self
            .inner
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = keys.get(kid)?;
        Some(
            jsonwebtoken::decode::<AccessClaims>(token, key, &self.inner.validation)
                .map(|data| data.claims)
                .map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => TokenError::Expired,
                    ErrorKind::InvalidToken
                    | ErrorKind::Base64(_)
                    | ErrorKind::Json(_)
                    | ErrorKind::Utf8(_)
                    | ErrorKind::InvalidAlgorithm => TokenError::Malformed,
                    _ => TokenError::Invalid,
                }),
        )
    }

    /// Fetches the key set unless another fetch happened within the cooldown.
    async fn refresh_keys(&self) -> Result<(), TokenError> {
        let Some(source) = &self.inner.source else {
            return Ok(());
        };
        let mut last = self.inner.last_refresh.lock().await;
        if last.is_some_and(|at| at.elapsed() < REFRESH_COOLDOWN) {
            return Ok(());
        }
        let jwks = source
            .clone()
            .get_jwks(GetJwksRequest {})
            .await
            .map_err(TokenError::KeysUnavailable)?
            .into_inner()
            .jwks_json;
        let keys = parse_jwks(&jwks)?;
        tracing::info!(message = "Signing keys refreshed.", keys = keys.len());
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        *last = Some(Instant::now());
        Ok(())
    }
}

/// Reads the Ed25519 keys of a JWK set, by key id.
fn parse_jwks(json: &str) -> Result<HashMap<String, DecodingKey>, TokenError> {
    let set: JwkSet =
        serde_json::from_str(json).map_err(|e| TokenError::BadKeySet(e.to_string()))?;
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            Some(
                DecodingKey::from_jwk(jwk)
                    .map(|key| (kid, key))
                    .map_err(|e| TokenError::BadKeySet(e.to_string())),
            )
        })
        .collect()
}
