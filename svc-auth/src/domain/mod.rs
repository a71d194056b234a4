//! The rules of identity: what a valid username, password and display name are, how passwords
//! are hashed, how tokens are minted. Imports no tonic, no database driver, no NATS.

pub mod credentials;
pub mod tokens;

pub use credentials::{DisplayName, Password, PasswordHasher, Username};
pub use tokens::{AccessTokenIssuer, RefreshToken, SigningKey};

use time::OffsetDateTime;
use uuid::Uuid;

/// A user as the rest of the system sees it (never with credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Stable id (UUIDv7).
    pub user_id: Uuid,
    /// Unique login name.
    pub username: String,
    /// Name shown to others.
    pub display_name: String,
    /// When the account was created.
    pub created_at: OffsetDateTime,
}
