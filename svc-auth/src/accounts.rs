//! The use cases of svc-auth: each validates with the domain rules, talks to the store once or
//! twice, and returns domain values. `grpc.rs` only translates to and from protobuf.

use std::time::Duration;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::{
    config::{AuthConfig, LoginLimits},
    domain::{
        AccessTokenIssuer, DisplayName, Password, PasswordHasher, RefreshToken, User, Username,
        tokens::jwks_json,
    },
    error::AuthError,
    store::{AuthStore, Rotation, WriteError},
};

/// Largest page of a user search.
pub const MAX_SEARCH_LIMIT: u32 = 200;
/// Page size of a user search when none is asked for.
pub const DEFAULT_SEARCH_LIMIT: u32 = 50;

/// A freshly minted pair of tokens.
#[derive(Debug)]
pub struct Tokens {
    /// Short-lived JWT.
    pub access_token: String,
    /// Opaque, single-use.
    pub refresh_token: String,
    /// Seconds the access token lives.
    pub expires_in: u32,
    /// Whose tokens they are.
    pub user_id: Uuid,
}

/// Users, credentials and tokens.
#[derive(Debug, Clone)]
pub struct Accounts {
    store: AuthStore,
    hasher: PasswordHasher,
    issuer: AccessTokenIssuer,
    jwks: String,
    refresh_ttl: time::Duration,
    limits: LoginLimits,
}

impl Accounts {
    /// Loads (or creates) the signing keys and prepares the hasher.
    pub async fn build(store: AuthStore, config: &AuthConfig) -> Result<Self, AuthError> {
        let keys = store.signing_keys().await?;
        let active = keys.first().expect("signing_keys creates one when empty");
        let tokens = &config.tokens;
        let issuer = AccessTokenIssuer::new(
            active,
            tokens.issuer.clone(),
            tokens.audience.clone(),
            time::Duration::seconds(i64::from(tokens.access_ttl_s)),
        );
        Ok(Self {
            hasher: PasswordHasher::new(&config.argon2)?,
            jwks: jwks_json(&keys),
            issuer,
            refresh_ttl: time::Duration::seconds(i64::from(tokens.refresh_ttl_s)),
            limits: config.login_limits.clone(),
            store,
        })
    }

    /// The published key set (JWKS JSON).
    #[must_use]
    pub fn jwks(&self) -> &str {
        &self.jwks
    }

    /// The issuer, for tests that need tokens with other timestamps.
    #[must_use]
    pub fn issuer(&self) -> &AccessTokenIssuer {
        &self.issuer
    }

    /// Creates an account.
    pub async fn register(
        &self,
        username: &str,
        password: String,
        display_name: Option<&str>,
    ) -> Result<User, AuthError> {
        let username = Username::parse(username).map_err(AuthError::InvalidArgument)?;
        let display_name =
            DisplayName::parse(display_name, &username).map_err(AuthError::InvalidArgument)?;
        let password = Password::parse(password).map_err(AuthError::InvalidArgument)?;
        let hash = self.hasher.hash(password).await?;
        self.store
            .insert_user(username.as_str(), display_name.as_str(), &hash)
            .await
            .map_err(|e| match e {
                WriteError::Duplicate => AuthError::UsernameTaken,
                WriteError::MissingReference => {
                    unreachable!("users reference no other table")
                }
                WriteError::Db(e) => AuthError::Db(e),
            })
    }

    /// Checks a password and starts a token family. Attempts are counted (per username and per
    /// client address) before any hashing, so the limits also bound CPU spent on guesses.
    pub async fn login(
        &self,
        username: &str,
        password: String,
        client_address: &str,
    ) -> Result<Tokens, AuthError> {
        // A name that cannot exist is counted against the address only, so arbitrary input
        // never becomes a throttle key.
        let username = Username::parse(username).ok();
        self.throttle(username.as_ref(), client_address).await?;
        // Malformed input gets the same answer as a wrong password: nothing to probe.
        let (Some(username), Ok(password)) = (username, Password::parse(password)) else {
            return Err(AuthError::BadCredentials);
        };
        let username = username.as_str();
        let found = self.store.credentials(username).await?;
        let (user, hash) = found.map_or((None, None), |(u, h)| (Some(u), Some(h)));
        if !self.hasher.verify(password, hash).await {
            return Err(AuthError::BadCredentials);
        }
        let user = user.expect("verify is false without a stored hash");
        let refresh = RefreshToken::generate();
        self.store
            .start_family(user.user_id, &refresh.hash, self.refresh_expiry())
            .await?;
        self.tokens_for(user.user_id, refresh)
    }

    /// Spends a refresh token for a new pair. A spent token presented again revokes its
    /// family: whoever holds a stolen copy and the rightful owner are both logged out.
    pub async fn refresh(&self, presented: &str) -> Result<Tokens, AuthError> {
        let next = RefreshToken::generate();
        let rotation = self
            .store
            .rotate(
                &RefreshToken::hash_of(presented),
                &next.hash,
                self.refresh_expiry(),
            )
            .await?;
        match rotation {
            Rotation::Rotated { user_id } => self.tokens_for(user_id, next),
            Rotation::ReuseDetected => {
                tracing::warn!(message = "Refresh token reused, family revoked.");
                Err(AuthError::BadRefreshToken)
            }
            Rotation::Rejected => Err(AuthError::BadRefreshToken),
        }
    }

    /// Revokes the family of `presented` if it is `user_id`'s. Idempotent: an unknown or
    /// foreign token changes nothing and is not an error.
    pub async fn logout(&self, presented: &str, user_id: &str) -> Result<(), AuthError> {
        let Ok(user_id) = Uuid::parse_str(user_id) else {
            return Ok(());
        };
        self.store
            .revoke_family(&RefreshToken::hash_of(presented), user_id)
            .await?;
        Ok(())
    }

    /// One user.
    pub async fn user(&self, user_id: &str) -> Result<User, AuthError> {
        let id = parse_user_id(user_id)?;
        self.store
            .users(&[id])
            .await?
            .pop()
            .ok_or(AuthError::UserNotFound)
    }

    /// The existing users among `ids` (unknown or malformed ids are skipped).
    pub async fn users(&self, ids: &[String]) -> Result<Vec<User>, AuthError> {
        if ids.len() > MAX_SEARCH_LIMIT as usize {
            return Err(AuthError::InvalidArgument("at most 200 user ids per call"));
        }
        let ids: Vec<Uuid> = ids.iter().filter_map(|i| Uuid::parse_str(i).ok()).collect();
        Ok(self.store.users(&ids).await?)
    }

    /// Users whose username starts with `query`.
    pub async fn search(&self, query: &str, limit: u32) -> Result<Vec<User>, AuthError> {
        let limit = match limit {
            0 => DEFAULT_SEARCH_LIMIT,
            1..=MAX_SEARCH_LIMIT => limit,
            _ => return Err(AuthError::InvalidArgument("limit must be 1 to 200")),
        };
        if query.chars().count() > 32 {
            return Ok(Vec::new());
        }
        Ok(self.store.search(query, i64::from(limit)).await?)
    }

    /// Adds a contact; returns it and whether it is new.
    pub async fn add_contact(&self, owner: &str, contact: &str) -> Result<(User, bool), AuthError> {
        let owner = parse_user_id(owner)?;
        let contact_id = parse_user_id(contact)?;
        if owner == contact_id {
            return Err(AuthError::InvalidArgument(
                "you cannot add yourself as a contact",
            ));
        }
        let created = self
            .store
            .add_contact(owner, contact_id)
            .await
            .map_err(|e| match e {
                WriteError::MissingReference => AuthError::UserNotFound,
                WriteError::Duplicate => unreachable!("ON CONFLICT DO NOTHING"),
                WriteError::Db(e) => AuthError::Db(e),
            })?;
        let user = self.user(contact).await?;
        Ok((user, created))
    }

    /// Removes a contact.
    pub async fn remove_contact(&self, owner: &str, contact: &str) -> Result<(), AuthError> {
        let owner = parse_user_id(owner)?;
        let Ok(contact) = Uuid::parse_str(contact) else {
            return Err(AuthError::NotAContact);
        };
        if self.store.remove_contact(owner, contact).await? {
            Ok(())
        } else {
            Err(AuthError::NotAContact)
        }
    }

    /// The owner's contacts.
    pub async fn contacts(&self, owner: &str) -> Result<Vec<User>, AuthError> {
        let owner = parse_user_id(owner)?;
        Ok(self.store.contacts(owner).await?)
    }

    /// Deletes throttle windows and refresh tokens that can no longer matter.
    pub async fn sweep(&self) -> Result<u64, AuthError> {
        let window = time::Duration::seconds(i64::from(self.limits.window_s.max(1)));
        Ok(self.store.sweep(OffsetDateTime::now_utc() - window).await?)
    }

    fn refresh_expiry(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc() + self.refresh_ttl
    }

    fn tokens_for(&self, user_id: Uuid, refresh: RefreshToken) -> Result<Tokens, AuthError> {
        Ok(Tokens {
            access_token: self.issuer.issue(&user_id.to_string())?,
            refresh_token: refresh.token,
            expires_in: self.issuer.ttl_seconds(),
            user_id,
        })
    }

    async fn throttle(
        &self,
        username: Option<&Username>,
        client_address: &str,
    ) -> Result<(), AuthError> {
        let window = i64::from(self.limits.window_s.max(1));
        let now = OffsetDateTime::now_utc();
        let start_secs = now.unix_timestamp() - now.unix_timestamp().rem_euclid(window);
        let start =
            OffsetDateTime::from_unix_timestamp(start_secs).expect("a timestamp near now is valid");
        let mut checks = Vec::with_capacity(2);
        if let Some(username) = username {
            checks.push((
                format!("user:{}", username.as_str()),
                self.limits.per_username,
            ));
        }
        if !client_address.is_empty() {
            checks.push((format!("addr:{client_address}"), self.limits.per_address));
        }
        for (key, limit) in checks {
            let attempts = self.store.count_attempt(&key, start).await?;
            if u32::try_from(attempts).unwrap_or(u32::MAX) > limit {
                let left = start_secs + window - now.unix_timestamp();
                return Err(AuthError::RateLimited {
                    retry_after: Duration::from_secs(left.max(1).unsigned_abs()),
                });
            }
        }
        Ok(())
    }
}

/// Ids are opaque to callers: one that cannot be ours names nobody.
fn parse_user_id(raw: &str) -> Result<Uuid, AuthError> {
    Uuid::parse_str(raw).map_err(|_| AuthError::UserNotFound)
}
