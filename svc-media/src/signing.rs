//! HMAC-SHA256 signatures with key ids, for two kinds of token:
//! - playback: `exp`, `kid`, `sig` query parameters over `play:<video_id>:<exp>`, so one
//!   token opens every object of the video (the whole HLS directory);
//! - upload: one opaque string binding a video, its owner and an expiry.

use std::collections::BTreeMap;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use secrecy::ExposeSecret as _;
use sha2::Sha256;
use uuid::Uuid;

use crate::config::SigningConfig;

/// Shortest accepted secret.
const MIN_KEY_BYTES: usize = 32;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No token where one is required.
    #[error("missing signature")]
    Missing,
    /// Malformed, unknown key, or wrong signature.
    #[error("invalid signature")]
    Invalid,
    /// Valid but past its expiry.
    #[error("expired signature")]
    Expired,
}

/// Signs and verifies with the configured keys.
#[derive(Clone)]
pub struct Signer {
    current: String,
    keys: BTreeMap<String, Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

/// The playback token's query parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaybackToken {
    /// Expiry, Unix seconds.
    pub exp: i64,
    /// Key id.
    pub kid: String,
    /// Signature, base64url.
    pub sig: String,
}

impl PlaybackToken {
    /// `exp=..&kid=..&sig=..`, to append to any URL of the video.
    #[must_use]
    pub fn query(&self) -> String {
        format!("exp={}&kid={}&sig={}", self.exp, self.kid, self.sig)
    }
}

/// What a valid upload token says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadGrant {
    /// The video the file belongs to.
    pub video_id: Uuid,
    /// Its owner.
    pub owner_id: Uuid,
    /// Expiry, Unix seconds.
    pub exp: i64,
}

impl Signer {
    /// Keys from configuration; refuses short secrets and a `current` that is not a key.
    pub fn new(config: &SigningConfig) -> Result<Self, String> {
        let keys: BTreeMap<String, Vec<u8>> = config
            .keys
            .iter()
            .map(|(kid, secret)| (kid.clone(), secret.expose_secret().as_bytes().to_vec()))
            .collect();
        if let Some((kid, _)) = keys.iter().find(|(_, k)| k.len() < MIN_KEY_BYTES) {
            return Err(format!(
                "signing key {kid:?} is shorter than {MIN_KEY_BYTES} bytes"
            ));
        }
        if keys.keys().any(|kid| {
            kid.is_empty()
                || !kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        }) {
            return Err("signing key ids must be non-empty [A-Za-z0-9_-]".into());
        }
        if !keys.contains_key(&config.current) {
            return Err(format!(
                "signing.current {:?} is not among signing.keys",
                config.current
            ));
        }
        Ok(Self {
            current: config.current.clone(),
            keys,
        })
    }

    fn mac(key: &[u8], message: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(message.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    fn sign(&self, message: &str) -> String {
        URL_SAFE_NO_PAD.encode(Self::mac(&self.keys[&self.current], message))
    }

    fn check(&self, kid: &str, message: &str, sig: &str) -> Result<(), SignatureError> {
        let key = self.keys.get(kid).ok_or(SignatureError::Invalid)?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| SignatureError::Invalid)?;
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(message.as_bytes());
        // Constant-time comparison.
        mac.verify_slice(&sig).map_err(|_| SignatureError::Invalid)
    }

    /// A playback token for every object of `video_id`, valid until `exp`.
    #[must_use]
    pub fn playback(&self, video_id: Uuid, exp: i64) -> PlaybackToken {
        PlaybackToken {
            exp,
            kid: self.current.clone(),
            sig: self.sign(&format!("play:{video_id}:{exp}")),
        }
    }

    /// Checks a playback token's parts (any may be missing) at time `now`.
    pub fn verify_playback(
        &self,
        video_id: Uuid,
        exp: Option<&str>,
        kid: Option<&str>,
        sig: Option<&str>,
        now: i64,
    ) -> Result<(), SignatureError> {
        let (Some(exp), Some(sig)) = (exp, sig) else {
            return Err(SignatureError::Missing);
        };
        let kid = kid.unwrap_or(&self.current);
        let exp: i64 = exp.parse().map_err(|_| SignatureError::Invalid)?;
        self.check(kid, &format!("play:{video_id}:{exp}"), sig)?;
        if exp <= now {
            return Err(SignatureError::Expired);
        }
        Ok(())
    }

    /// An upload token: `<video_id>.<owner_id>.<exp>.<kid>.<sig>`.
    #[must_use]
    pub fn upload(&self, grant: UploadGrant) -> String {
        let body = format!(
            "{}.{}.{}.{}",
            grant.video_id, grant.owner_id, grant.exp, self.current
        );
        let sig = self.sign(&format!("upload:{body}"));
        format!("{body}.{sig}")
    }

    /// Checks an upload token at time `now`.
    pub fn verify_upload(&self, token: &str, now: i64) -> Result<UploadGrant, SignatureError> {
        let parts: Vec<&str> = token.split('.').collect();
        let [video, owner, exp, kid, sig] = parts[..] else {
            return Err(SignatureError::Invalid);
        };
        let body = format!("{video}.{owner}.{exp}.{kid}");
        self.check(kid, &format!("upload:{body}"), sig)?;
        let grant = UploadGrant {
            video_id: video.parse().map_err(|_| SignatureError::Invalid)?,
            owner_id: owner.parse().map_err(|_| SignatureError::Invalid)?,
            exp: exp.parse().map_err(|_| SignatureError::Invalid)?,
        };
        if grant.exp <= now {
            return Err(SignatureError::Expired);
        }
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(current: &str) -> Signer {
        let keys = [("k1", "a".repeat(32)), ("k2", "b".repeat(32))]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), SecretString::from(v)))
            .collect();
        Signer::new(&SigningConfig {
            current: current.into(),
            keys,
        })
        .unwrap()
    }

    use secrecy::SecretString;

    #[test]
    fn playback_tokens_verify_until_expiry_and_across_rotation() {
        let video = Uuid::now_v7();
        let t = signer("k1").playback(video, 1000);
        let rotated = signer("k2");
        assert_eq!(
            rotated.verify_playback(video, Some("1000"), Some("k1"), Some(&t.sig), 999),
            Ok(())
        );
        assert_eq!(
            rotated.verify_playback(video, Some("1000"), Some("k1"), Some(&t.sig), 1000),
            Err(SignatureError::Expired)
        );
        assert_eq!(
            rotated.verify_playback(video, Some("1001"), Some("k1"), Some(&t.sig), 0),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            rotated.verify_playback(Uuid::now_v7(), Some("1000"), Some("k1"), Some(&t.sig), 0),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            rotated.verify_playback(video, Some("1000"), Some("k9"), Some(&t.sig), 0),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            rotated.verify_playback(video, None, None, None, 0),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn upload_tokens_bind_video_owner_and_expiry() {
        let s = signer("k1");
        let grant = UploadGrant {
            video_id: Uuid::now_v7(),
            owner_id: Uuid::now_v7(),
            exp: 50,
        };
        let token = s.upload(grant);
        assert_eq!(s.verify_upload(&token, 10), Ok(grant));
        assert_eq!(s.verify_upload(&token, 50), Err(SignatureError::Expired));
        let other = UploadGrant {
            owner_id: Uuid::now_v7(),
            ..grant
        };
        let forged = format!(
            "{}.{}",
            s.upload(other).rsplit_once('.').unwrap().0,
            token.rsplit_once('.').unwrap().1
        );
        assert_eq!(s.verify_upload(&forged, 10), Err(SignatureError::Invalid));
        assert_eq!(s.verify_upload("garbage", 10), Err(SignatureError::Invalid));
    }

    #[test]
    fn short_keys_and_unknown_current_are_refused() {
        let keys = [("k1".to_owned(), SecretString::from("short"))]
            .into_iter()
            .collect();
        assert!(
            Signer::new(&SigningConfig {
                current: "k1".into(),
                keys
            })
            .is_err()
        );
        let keys = [("k1".to_owned(), SecretString::from("a".repeat(32)))]
            .into_iter()
            .collect();
        assert!(
            Signer::new(&SigningConfig {
                current: "k2".into(),
                keys
            })
            .is_err()
        );
    }
}
