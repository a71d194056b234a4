//! svc-auth's tables, over deadpool-postgres. Every function is one round trip or one
//! transaction; none holds a connection across anything but its own statements.

mod migrations;

pub use migrations::MIGRATIONS;

use tertulia_plumbing::postgres::{DbError, PgPool};
use time::OffsetDateTime;
use tokio_postgres::{Row, error::SqlState};
use uuid::Uuid;

use crate::domain::{SigningKey, User};

/// Access to svc-auth's schema.
#[derive(Debug, Clone)]
pub struct AuthStore {
    pool: PgPool,
}

/// What became of a presented refresh token.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// It was live; it is now spent and the new token is stored in its family.
    Rotated {
        /// Whose family it is.
        user_id: Uuid,
    },
    /// It was already spent: the family is now revoked.
    ReuseDetected,
    /// Unknown, expired, or of a revoked family.
    Rejected,
}

/// An insert hit a uniqueness or reference constraint.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The row exists already (unique violation).
    #[error("already exists")]
    Duplicate,
    /// A referenced row does not exist (foreign-key violation).
    #[error("referenced row missing")]
    MissingReference,
    /// Anything else.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for WriteError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code() {
            Some(c) if *c == SqlState::UNIQUE_VIOLATION => Self::Duplicate,
            Some(c) if *c == SqlState::FOREIGN_KEY_VIOLATION => Self::MissingReference,
            _ => Self::Db(DbError::Statement(e)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for WriteError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Self::Db(DbError::Pool(e))
    }
}

const USER_COLUMNS: &str = "user_id, username, display_name, created_at";

fn user_from(row: &Row) -> User {
    User {
        user_id: row.get("user_id"),
        username: row.get("username"),
        display_name: row.get("display_name"),
        created_at: row.get("created_at"),
    }
}

impl AuthStore {
    /// A store over `pool` (already migrated).
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Inserts a user; `Duplicate` when the username is taken.
    pub async fn insert_user(
        &self,
        username: &str,
        display_name: &str,
        password_hash: &str,
    ) -> Result<User, WriteError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &format!(
                    "INSERT INTO users (user_id, username, display_name, password_hash)
                     VALUES ($1, $2, $3, $4) RETURNING {USER_COLUMNS}"
                ),
                &[&Uuid::now_v7(), &username, &display_name, &password_hash],
            )
            .await?;
        Ok(user_from(&row))
    }

    /// The user and password hash for `username`.
    pub async fn credentials(&self, username: &str) -> Result<Option<(User, String)>, DbError> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE username = $1"),
                &[&username],
            )
            .await?;
        Ok(row.map(|r| (user_from(&r), r.get("password_hash"))))
    }

    /// Users among `ids`, in no particular order.
    pub async fn users(&self, ids: &[Uuid]) -> Result<Vec<User>, DbError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {USER_COLUMNS} FROM users WHERE user_id = ANY($1)"),
                &[&ids],
            )
            .await?;
        Ok(rows.iter().map(user_from).collect())
    }

    /// Users whose username starts with `prefix`, alphabetically.
    pub async fn search(&self, prefix: &str, limit: i64) -> Result<Vec<User>, DbError> {
        let pattern = format!("{}%", escape_like(prefix));
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE username LIKE $1 ESCAPE '\\'
                     ORDER BY username LIMIT $2"
                ),
                &[&pattern, &limit],
            )
            .await?;
        Ok(rows.iter().map(user_from).collect())
    }

    /// Adds `contact` to `owner`'s contacts; `Ok(false)` when already there,
    /// `MissingReference` when the contact does not exist.
    pub async fn add_contact(&self, owner: Uuid, contact: Uuid) -> Result<bool, WriteError> {
        let client = self.pool.get().await?;
        let inserted = client
            .execute(
                "INSERT INTO contacts (owner_id, contact_id) VALUES ($1, $2)
                 ON CONFLICT DO NOTHING",
                &[&owner, &contact],
            )
            .await?;
        Ok(inserted == 1)
    }

    /// Removes a contact; false when it was not one.
    pub async fn remove_contact(&self, owner: Uuid, contact: Uuid) -> Result<bool, DbError> {
        let client = self.pool.get().await?;
        let removed = client
            .execute(
                "DELETE FROM contacts WHERE owner_id = $1 AND contact_id = $2",
                &[&owner, &contact],
            )
            .await?;
        Ok(removed == 1)
    }

    /// `owner`'s contacts, by username.
    pub async fn contacts(&self, owner: Uuid) -> Result<Vec<User>, DbError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT u.user_id, u.username, u.display_name, u.created_at
                 FROM contacts c JOIN users u ON u.user_id = c.contact_id
                 WHERE c.owner_id = $1 ORDER BY u.username",
                &[&owner],
            )
            .await?;
        Ok(rows.iter().map(user_from).collect())
    }

    /// Starts a token family for `user_id` with its first refresh token.
    pub async fn start_family(
        &self,
        user_id: Uuid,
        token_hash: &[u8],
        expires_at: OffsetDateTime,
    ) -> Result<(), DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let family = Uuid::now_v7();
        tx.execute(
            "INSERT INTO token_families (family_id, user_id) VALUES ($1, $2)",
            &[&family, &user_id],
        )
        .await?;
        tx.execute(
            "INSERT INTO refresh_tokens (token_hash, family_id, expires_at) VALUES ($1, $2, $3)",
            &[&token_hash, &family, &expires_at],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Spends the token hashed `presented` and stores `next` in its family, atomically. The row
    /// lock makes two concurrent uses of one token resolve as one rotation and one reuse.
    pub async fn rotate(
        &self,
        presented: &[u8],
        next: &[u8],
        next_expires_at: OffsetDateTime,
    ) -> Result<Rotation, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let row = tx
            .query_opt(
                "SELECT t.family_id, t.spent_at IS NOT NULL AS spent,
                        t.expires_at <= now() AS expired,
                        f.revoked_at IS NOT NULL AS revoked, f.user_id
                 FROM refresh_tokens t JOIN token_families f ON f.family_id = t.family_id
                 WHERE t.token_hash = $1
                 FOR UPDATE OF t, f",
                &[&presented],
            )
            .await?;
        let live = row
            .as_ref()
            .is_some_and(|r| !r.get::<_, bool>("revoked") && !r.get::<_, bool>("expired"));
        let Some(row) = row.filter(|_| live) else {
            tx.rollback().await?;
            return Ok(Rotation::Rejected);
        };
        let family: Uuid = row.get("family_id");
        if row.get::<_, bool>("spent") {
            tx.execute(
                "UPDATE token_families SET revoked_at = now() WHERE family_id = $1",
                &[&family],
            )
            .await?;
            tx.commit().await?;
            return Ok(Rotation::ReuseDetected);
        }
        tx.execute(
            "UPDATE refresh_tokens SET spent_at = now() WHERE token_hash = $1",
            &[&presented],
        )
        .await?;
        tx.execute(
            "INSERT INTO refresh_tokens (token_hash, family_id, expires_at) VALUES ($1, $2, $3)",
            &[&next, &family, &next_expires_at],
        )
        .await?;
        tx.commit().await?;
        Ok(Rotation::Rotated {
            user_id: row.get("user_id"),
        })
    }

    /// Revokes the family of the token hashed `presented`, when it belongs to `user_id`.
    /// Returns whether a family was revoked.
    pub async fn revoke_family(&self, presented: &[u8], user_id: Uuid) -> Result<bool, DbError> {
        let client = self.pool.get().await?;
        let revoked = client
            .execute(
                "UPDATE token_families f SET revoked_at = now()
                 FROM refresh_tokens t
                 WHERE t.token_hash = $1 AND t.family_id = f.family_id
                   AND f.user_id = $2 AND f.revoked_at IS NULL",
                &[&presented, &user_id],
            )
            .await?;
        Ok(revoked == 1)
    }

    /// Counts one attempt against `key` in the window starting at `window_start`, returning
    /// the attempts so far in that window.
    pub async fn count_attempt(
        &self,
        key: &str,
        window_start: OffsetDateTime,
    ) -> Result<i32, DbError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "INSERT INTO login_throttle (throttle_key, window_start, attempts)
                 VALUES ($1, $2, 1)
                 ON CONFLICT (throttle_key) DO UPDATE SET
                   attempts = CASE WHEN login_throttle.window_start = EXCLUDED.window_start
                                   THEN login_throttle.attempts + 1 ELSE 1 END,
                   window_start = EXCLUDED.window_start
                 RETURNING attempts",
                &[&key, &window_start],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Deletes throttle windows that started before `windows_before` and refresh tokens
    /// expired for a day (past expiry they are rejected anyway). Returns the rows deleted.
    pub async fn sweep(&self, windows_before: OffsetDateTime) -> Result<u64, DbError> {
        let client = self.pool.get().await?;
        let windows = client
            .execute(
                "DELETE FROM login_throttle WHERE window_start < $1",
                &[&windows_before],
            )
            .await?;
        let tokens = client
            .execute(
                "DELETE FROM refresh_tokens WHERE expires_at < now() - interval '1 day'",
                &[],
            )
            .await?;
        Ok(windows + tokens)
    }

    /// The published signing keys, newest first, creating the first one when there is none.
    /// Instances racing at first start agree on one key through the advisory lock.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKey>, DbError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.signing_keys'))",
            &[],
        )
        .await?;
        let load = "SELECT kid, private_der, public_raw FROM signing_keys
                    WHERE retired_at IS NULL ORDER BY created_at DESC";
        let mut rows = tx.query(load, &[]).await?;
        if rows.is_empty() {
            let key = SigningKey::generate();
            tx.execute(
                "INSERT INTO signing_keys (kid, private_der, public_raw) VALUES ($1, $2, $3)",
                &[&key.kid, &key.private_der, &key.public_raw],
            )
            .await?;
            tracing::info!(message = "Signing key created.", kid = %key.kid);
            rows = tx.query(load, &[]).await?;
        }
        tx.commit().await?;
        Ok(rows
            .iter()
            .map(|r| SigningKey {
                kid: r.get(0),
                private_der: r.get(1),
                public_raw: r.get(2),
            })
            .collect())
    }
}

/// Escapes LIKE wildcards so a prefix matches literally (`_` is legal in usernames).
fn escape_like(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn like_wildcards_are_escaped() {
        assert_eq!(super::escape_like("a_b%c\\"), "a\\_b\\%c\\\\");
    }
}
