//! Access tokens (short-lived EdDSA JWTs) and refresh tokens (opaque, rotated on every use).

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::EncodePrivateKey as _;
use jsonwebtoken::{EncodingKey, Header};
use sha2::{Digest as _, Sha256};
use tertulia_plumbing::token::{ACCESS_TOKEN_ALGORITHM, ACCESS_TOKEN_TYPE, AccessClaims};
use time::OffsetDateTime;

/// An Ed25519 key pair that signs access tokens, named by its key id.
#[derive(Clone)]
pub struct SigningKey {
    /// Key id, carried in every token's header (`kid`).
    pub kid: String,
    /// PKCS#8 DER of the private key, as stored.
    pub private_der: Vec<u8>,
    /// The 32-byte public key, as published.
    pub public_raw: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// A fresh key from the operating system's randomness.
    #[must_use]
    pub fn generate() -> Self {
        let seed: [u8; 32] = rand::random();
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let private_der = key
            .to_pkcs8_der()
            .expect("an Ed25519 key always encodes as PKCS#8")
            .as_bytes()
            .to_vec();
        Self {
            kid: uuid::Uuid::now_v7().simple().to_string(),
            private_der,
            public_raw: key.verifying_key().to_bytes().to_vec(),
        }
    }

    /// This key as a public JWK (RFC 8037 OKP).
    #[must_use]
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(&self.public_raw),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

/// The JWK set document publishing `keys`.
#[must_use]
pub fn jwks_json(keys: &[SigningKey]) -> String {
    let keys: Vec<_> = keys.iter().map(SigningKey::public_jwk).collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// Mints access tokens with one signing key.
#[derive(Clone)]
pub struct AccessTokenIssuer {
    kid: String,
    key: EncodingKey,
    issuer: String,
    audience: String,
    ttl: time::Duration,
}

impl std::fmt::Debug for AccessTokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessTokenIssuer")
            .field("kid", &self.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Signing failed: the stored key is unusable.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign access token")]
pub struct SignError(#[source] jsonwebtoken::errors::Error);

impl AccessTokenIssuer {
    /// An issuer signing with `key`, stamping `issuer`/`audience`, valid for `ttl`.
    #[must_use]
    pub fn new(key: &SigningKey, issuer: String, audience: String, ttl: time::Duration) -> Self {
        Self {
            kid: key.kid.clone(),
            key: EncodingKey::from_ed_der(&key.private_der),
            issuer,
            audience,
            ttl,
        }
    }

    /// Seconds an access token lives.
    #[must_use]
    pub fn ttl_seconds(&self) -> u32 {
        u32::try_from(self.ttl.whole_seconds()).unwrap_or(u32::MAX)
    }

    /// A signed access token for `user_id`, issued now.
    pub fn issue(&self, user_id: &str) -> Result<String, SignError> {
        self.issue_at(user_id, OffsetDateTime::now_utc())
    }

    /// A signed access token for `user_id`, issued at `now` (tests mint expired ones).
    pub fn issue_at(&self, user_id: &str, now: OffsetDateTime) -> Result<String, SignError> {
        let mut header = Header::new(ACCESS_TOKEN_ALGORITHM);
        header.typ = Some(ACCESS_TOKEN_TYPE.to_owned());
        header.kid = Some(self.kid.clone());
        let claims = AccessClaims {
            sub: user_id.to_owned(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            iat: now.unix_timestamp(),
            exp: (now + self.ttl).unix_timestamp(),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(SignError)
    }
}

/// An opaque refresh token: 256 random bits, shown to the client once; only its SHA-256 is
/// stored.
#[derive(Debug)]
pub struct RefreshToken {
    /// What the client holds.
    pub token: String,
    /// What the database holds.
    pub hash: Vec<u8>,
}

impl RefreshToken {
    /// A new random token.
    #[must_use]
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let hash = Self::hash_of(&token);
        Self { token, hash }
    }

    /// The stored form of a presented token.
    #[must_use]
    pub fn hash_of(token: &str) -> Vec<u8> {
        Sha256::digest(token.as_bytes()).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use tertulia_plumbing::token::{TokenError, TokenPolicy, TokenVerifier};

    use super::*;

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "tertulia-auth".into(),
            audience: "tertulia".into(),
        }
    }

    fn issuer(key: &SigningKey) -> AccessTokenIssuer {
        AccessTokenIssuer::new(
            key,
            "tertulia-auth".into(),
            "tertulia".into(),
            time::Duration::minutes(15),
        )
    }

    #[tokio::test]
    async fn issued_tokens_verify_from_the_published_key_set() {
        let key = SigningKey::generate();
        let verifier =
            TokenVerifier::from_jwks(&policy(), &jwks_json(std::slice::from_ref(&key))).unwrap();
        let token = issuer(&key).issue("user-1").unwrap();
        let claims = verifier.verify(&token).await.unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.exp - claims.iat, 900);
    }

    #[tokio::test]
    async fn expired_foreign_and_wrong_audience_tokens_fail() {
        let key = SigningKey::generate();
        let verifier =
            TokenVerifier::from_jwks(&policy(), &jwks_json(std::slice::from_ref(&key))).unwrap();
        let old = issuer(&key)
            .issue_at("u", OffsetDateTime::now_utc() - time::Duration::hours(1))
            .unwrap();
        assert!(matches!(
            verifier.verify(&old).await,
            Err(TokenError::Expired)
        ));

        let stranger = SigningKey::generate();
        let forged = issuer(&SigningKey {
            kid: key.kid.clone(),
            ..stranger
        })
        .issue("u")
        .unwrap();
        assert!(matches!(
            verifier.verify(&forged).await,
            Err(TokenError::Invalid)
        ));

        let other_aud = AccessTokenIssuer::new(
            &key,
            "tertulia-auth".into(),
            "someone-else".into(),
            time::Duration::minutes(5),
        )
        .issue("u")
        .unwrap();
        assert!(matches!(
            verifier.verify(&other_aud).await,
            Err(TokenError::Invalid)
        ));
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_hashed() {
        let a = RefreshToken::generate();
        let b = RefreshToken::generate();
        assert_ne!(a.token, b.token);
        assert_eq!(a.hash, RefreshToken::hash_of(&a.token));
        assert_eq!(a.hash.len(), 32);
    }
}
