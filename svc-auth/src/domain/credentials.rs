//! Usernames, display names and passwords, validated at the edge of the domain.

use std::sync::Arc;

use argon2::{Algorithm, Argon2, Params, PasswordHash, PasswordHasher as _, PasswordVerifier as _};
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::Argon2Config;

/// A username: 3 to 32 characters of `[a-z0-9_.-]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Checks `raw` against the username rules.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let valid_chars = raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if (3..=32).contains(&raw.len()) && valid_chars {
            Ok(Self(raw.to_owned()))
        } else {
            Err("username must be 3 to 32 characters of a-z, 0-9, '_', '.' or '-'")
        }
    }

    /// The username as stored.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: 1 to 64 characters after trimming, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    /// Checks `raw`; `None` takes the username.
    pub fn parse(raw: Option<&str>, username: &Username) -> Result<Self, &'static str> {
        let name = raw.map_or(username.as_str(), str::trim);
        let len = name.chars().count();
        if (1..=64).contains(&len) && !name.chars().any(char::is_control) {
            Ok(Self(name.to_owned()))
        } else {
            Err("display_name must be 1 to 64 characters without control characters")
        }
    }

    /// The display name as stored.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password as typed: 8 to 256 Unicode scalar values. Kept secret in memory and in logs.
#[derive(Debug)]
pub struct Password(SecretString);

impl Password {
    /// Checks `raw` against the password rules.
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        if (8..=256).contains(&raw.chars().count()) {
            Ok(Self(SecretString::from(raw)))
        } else {
            Err("password must be 8 to 256 characters")
        }
    }

    fn bytes(&self) -> &[u8] {
        self.0.expose_secret().as_bytes()
    }
}

/// Hashes and verifies passwords with Argon2id. Work runs on the blocking pool: one hash is
/// tens of milliseconds of CPU and must not stall the async workers.
#[derive(Clone)]
pub struct PasswordHasher {
    argon: Arc<Argon2<'static>>,
    /// A hash of a random password, verified against for unknown users so that "no such
    /// user" takes as long as "wrong password" and usernames cannot be probed by timing.
    decoy: Arc<str>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher").finish_non_exhaustive()
    }
}

/// Hashing failed (bad parameters or a corrupt stored hash).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

impl PasswordHasher {
    /// A hasher with `config`'s cost parameters (at least OWASP's m=19 MiB, t=2, p=1).
    pub fn new(config: &Argon2Config) -> Result<Self, HashError> {
        let params = Params::new(
            config.memory_kib,
            config.iterations,
            config.parallelism,
            None,
        )
        .map_err(|e| HashError(e.to_string()))?;
        let argon = Argon2::new(Algorithm::Argon2id, argon2::Version::V0x13, params);
        let decoy = hash_with(&argon, uuid::Uuid::now_v7().to_string().as_bytes())?;
        Ok(Self {
            argon: Arc::new(argon),
            decoy: decoy.into(),
        })
    }

    /// The PHC string of `password`'s hash.
    pub async fn hash(&self, password: Password) -> Result<String, HashError> {
        let argon = Arc::clone(&self.argon);
        tokio::task::spawn_blocking(move || hash_with(&argon, password.bytes()))
            .await
            .map_err(|e| HashError(e.to_string()))?
    }

    /// Whether `password` matches `stored`; with `None` (unknown user) it spends the same time
    /// and answers false.
    pub async fn verify(&self, password: Password, stored: Option<String>) -> bool {
        let argon = Arc::clone(&self.argon);
        let known = stored.is_some();
        let hash = stored.unwrap_or_else(|| self.decoy.to_string());
        let matched = tokio::task::spawn_blocking(move || {
            argon
                .verify_password(password.bytes(), hash.as_str())
                .is_ok()
        })
        .await
        .unwrap_or(false);
        known && matched
    }
}

fn hash_with(argon: &Argon2<'_>, password: &[u8]) -> Result<String, HashError> {
    let hash: PasswordHash = argon
        .hash_password(password)
        .map_err(|e| HashError(e.to_string()))?;
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        assert!(Username::parse("alice").is_ok());
        assert!(Username::parse("a.b-c_9").is_ok());
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse(&"a".repeat(33)).is_err());
        assert!(Username::parse("Alice").is_err());
        assert!(Username::parse("al ice").is_err());
        assert!(Username::parse("al\u{e9}x").is_err());
    }

    #[test]
    fn passwords_count_characters_not_bytes() {
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("\u{e9}".repeat(256)).is_ok());
        assert!(Password::parse("x".repeat(257)).is_err());
    }

    #[test]
    fn display_names_default_to_the_username() {
        let user = Username::parse("alice").unwrap();
        assert_eq!(DisplayName::parse(None, &user).unwrap().as_str(), "alice");
        assert_eq!(
            DisplayName::parse(Some("  Alice A. "), &user)
                .unwrap()
                .as_str(),
            "Alice A."
        );
        assert!(DisplayName::parse(Some("   "), &user).is_err());
        assert!(DisplayName::parse(Some("a\u{0}b"), &user).is_err());
    }

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hasher = PasswordHasher::new(&Argon2Config::owasp()).unwrap();
        let hash = hasher
            .hash(Password::parse("correct horse".into()).unwrap())
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let ok = Password::parse("correct horse".into()).unwrap();
        assert!(hasher.verify(ok, Some(hash.clone())).await);
        let bad = Password::parse("wrong horse".into()).unwrap();
        assert!(!hasher.verify(bad, Some(hash)).await);
        let unknown = Password::parse("correct horse".into()).unwrap();
        assert!(!hasher.verify(unknown, None).await);
    }
}
